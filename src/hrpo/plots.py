"""Training curves as small PNGs: one figure per metric, one line per run or one band per group of runs.

``plot_runs(run_dirs, out_dir)`` draws reward, every ``eval/<task>/accuracy``, hidden_ratio, completion length,
kl and grad_norm; a metric no run has is skipped. Runs sharing a label (by default their config's ``mode``, or
any config key given as ``group_by``) share one colour: their mean curve solid, a min-max (or +- std) band and
the single runs as thin faint lines. A group of one run is drawn as that run's line: raw faint, smoothed solid.
``write_run_plots(run_dir)`` writes one run's plots into ``run_dir/plots/`` and never raises (the trainer calls
it at the end of every run). Figures are drawn on matplotlib's Agg canvas without pyplot, so no global state or
GUI backend is touched.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path
from typing import NamedTuple

from .compare import EVAL_KEY, Run, load_run
from .config import ConfigError

PLOTS_DIR = "plots"
DEFAULT_SMOOTHING = 0.8
BANDS = ("minmax", "std")
FIGSIZE = (6.0, 4.0)
DPI = 100
# (metric key, title, y label); eval accuracy keys are inserted after reward
CURVES = [
    ("reward", "Reward (mean over completions)", "reward"),
    ("hidden_ratio", "Hidden ratio (latent share of thinking inputs)", "hidden_ratio"),
    ("completions/mean_length", "Mean completion length", "tokens"),
    ("kl", "KL to the reference model (k3)", "kl"),
    ("grad_norm", "Gradient norm (before clipping)", "grad_norm"),
]
# drawn from the runs of one algorithm only (an RL run's loss is ~0 by construction and says little)
ALGO_CURVES = {"loss": ("sft", "SFT loss (NLL per gold completion token)", "loss")}


def smooth(values: list[float], smoothing: int | float = DEFAULT_SMOOTHING) -> list[float]:
    """Smoothed copy of ``values``.

    ``0 <= smoothing < 1``: exponential moving average with that weight on the past (bias-corrected, as in
    TensorBoard; 0 = no smoothing). ``smoothing >= 1`` (a whole number): trailing moving average over that many
    points (1 = no smoothing).
    """
    s = check_smoothing(smoothing)
    if s >= 1:
        k = int(s)
        return [sum(values[max(0, i - k + 1):i + 1]) / (i + 1 - max(0, i - k + 1)) for i in range(len(values))]
    out, acc = [], 0.0
    for i, v in enumerate(values, start=1):
        acc = s * acc + (1.0 - s) * v
        out.append(acc / (1.0 - s ** i) if s > 0 else v)
    return out


def check_smoothing(smoothing: int | float) -> float:
    """Validate ``smoothing`` (see :func:`smooth`) and return it as a float; ConfigError when invalid."""
    try:
        s = float(smoothing)
    except (TypeError, ValueError):
        raise ConfigError(f"smoothing must be a number, got {smoothing!r}") from None
    if not math.isfinite(s) or s < 0 or (s >= 1 and not s.is_integer()):
        raise ConfigError(f"smoothing must be an EMA weight in [0, 1) or a whole moving-average window >= 1, "
                          f"got {smoothing!r}")
    return s


def _file_name(key: str) -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key.replace("/", "_"))
    return safe + ".png"


def _curves(runs: list[Run]) -> list[tuple[str, str, str, bool]]:
    """(key, title, y label, smoothed) of every figure to draw, in order."""
    tasks = list(dict.fromkeys(t for run in runs for t in run.eval_tasks()))
    evals = [(f"eval/{t}/accuracy", f"Eval accuracy: {t}", "accuracy", False) for t in tasks]
    main = [(key, title, ylabel, True) for key, title, ylabel in CURVES]
    algos = {run.config.get("algo") for run in runs}
    main += [(key, title, ylabel, True) for key, (algo, title, ylabel) in ALGO_CURVES.items() if algo in algos]
    return main[:1] + evals + main[1:]


def _groups_for(groups: list[tuple[str, list[Run]]], key: str) -> list[tuple[str, list[Run]]]:
    """``groups`` with only the runs a curve is drawn from (groups kept, possibly empty: colours stay)."""
    if key not in ALGO_CURVES:
        return groups
    return [(name, [run for run in members if run.config.get("algo") == ALGO_CURVES[key][0]])
            for name, members in groups]


class GroupCurve(NamedTuple):
    """One group's curve of one metric. ``steps``: the sorted union of its runs' steps; ``mean``, ``lo``, ``hi``:
    per step, over the runs that have that step (same length as ``steps``); ``runs``: (run label, steps, values)
    of each run that has the metric. Values are in the metric's units, smoothed per run when asked."""

    steps: list[float]
    mean: list[float]
    lo: list[float]
    hi: list[float]
    runs: list[tuple[str, list[float], list[float]]]


def group_runs(runs: list[Run], group_by: str | None = None) -> list[tuple[str, list[Run]]]:
    """[(group name, runs)] in first-seen order.

    ``group_by`` None: by config ``mode`` (a run without one is its own group); ``"none"``: one group per run;
    else that config key (name ``"<key>=<value>"``, or the value for ``mode``), ConfigError naming the key and
    the run when a run's config.yaml lacks it. A one-run group is named by the run's label.
    """
    if group_by == "none":
        return [(run.label, [run]) for run in runs]
    key = group_by or "mode"
    groups: dict[object, list[Run]] = {}  # value name -> runs; a run without the (default) key: its index
    for i, run in enumerate(runs):
        if key in run.config:
            value = run.config[key]
            groups.setdefault(str(value) if key == "mode" else f"{key}={value}", []).append(run)
        elif group_by is None:
            groups[i] = [run]
        else:
            where = run.path / "config.yaml"
            why = "has no such key" if where.is_file() else "does not exist"
            raise ConfigError(f"--group-by {key}: run {run.path} has no config key {key!r} ({where} {why}); "
                              f"give a key of its config.yaml, or 'none' for one line per run")
    return [(members[0].label if len(members) == 1 else name, members) for name, members in groups.items()]


def aggregate(curves: list[tuple[list[float], list[float]]], band: str = "minmax"
              ) -> tuple[list[float], list[float], list[float], list[float]]:
    """(steps, mean, lo, hi) over ``curves`` [(steps, values)], aligned by step: at each step of their union the
    curves that have it. ``band`` "minmax": lo/hi = min/max; "std": mean -+ sample std (0 where one curve)."""
    if band not in BANDS:
        raise ConfigError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    at: dict[float, list[float]] = {}
    for steps, values in curves:
        for step, value in zip(steps, values):
            at.setdefault(step, []).append(value)
    steps = sorted(at)
    mean, lo, hi = [], [], []
    for step in steps:
        vs = at[step]
        m = sum(vs) / len(vs)
        mean.append(m)
        if band == "minmax":
            lo.append(min(vs))
            hi.append(max(vs))
        else:
            sd = math.sqrt(sum((v - m) ** 2 for v in vs) / (len(vs) - 1)) if len(vs) > 1 else 0.0
            lo.append(m - sd)
            hi.append(m + sd)
    return steps, mean, lo, hi


def group_curves(groups: list[tuple[str, list[Run]]], key: str, smoothing: float = 0,
                 band: str = "minmax") -> list[GroupCurve | None]:
    """One :class:`GroupCurve` of ``key`` per group (None for a group where no run has it); each run's values
    are smoothed (see :func:`smooth`; 0 = raw) before the mean and band are taken."""
    out: list[GroupCurve | None] = []
    for _, members in groups:
        per_run = []
        for run in members:
            steps, values = run.series(key)
            if values:
                per_run.append((run.label, steps, smooth(values, smoothing) if smoothing else values))
        if not per_run:
            out.append(None)
            continue
        out.append(GroupCurve(*aggregate([(st, vs) for _, st, vs in per_run], band), runs=per_run))
    return out


def draw_figure(groups: list[tuple[str, list[Run]]], key: str, title: str, ylabel: str, smoothed: bool,
                smoothing: float, band: str = "minmax"):
    """One metric's matplotlib Figure (Agg, no pyplot), or None when no run has ``key``. ``smoothed`` False:
    sparse points (periodic eval), markers and no smoothing. Group ``i`` gets colour ``group_color(i)``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    smoothing = smoothing if smoothed and smoothing not in (0, 1) else 0
    curves = group_curves(groups, key, smoothing, band)
    if all(c is None for c in curves):
        return None
    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_subplot()
    marker = {} if smoothed else {"marker": "o", "markersize": 3}
    banded = False
    for i, (group, curve) in enumerate(zip(groups, curves)):
        if curve is None:
            continue
        color = group_color(i, len(groups))
        if len(curve.runs) == 1:  # as one run was always drawn: raw faint, smoothed solid
            label, steps, values = group_curves([group], key)[0].runs[0]
            if smoothing and len(values) >= 3:
                ax.plot(steps, values, color=color, linewidth=0.8, alpha=0.3)
                ax.plot(steps, curve.runs[0][2], color=color, linewidth=1.6, label=label)
            else:
                ax.plot(steps, values, color=color, linewidth=1.5, label=label, **marker)
            continue
        banded = True
        ax.fill_between(curve.steps, curve.lo, curve.hi, color=color, alpha=0.15, linewidth=0, zorder=1)
        for _, steps, values in curve.runs:
            ax.plot(steps, values, color=color, linewidth=0.7, alpha=0.45, zorder=2)
        ax.plot(curve.steps, curve.mean, color=color, linewidth=2.0, zorder=3,
                label=f"{group[0]} ({len(curve.runs)} runs)", **marker)
    if EVAL_KEY.match(key):
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best", frameon=False)
    notes = []
    if banded:
        notes.append("solid: group mean, band: " + ("min-max" if band == "minmax" else "\u00b1 1 std")
                     + ", thin: runs")
    if smoothing:
        how = f"EMA {smoothing:g}" if smoothing < 1 else f"moving average {int(smoothing)}"
        notes.append(f"{how} per run" if banded else f"faint: raw, solid: {how}")
    if notes:
        ax.text(0.99, 0.01, "; ".join(notes), transform=ax.transAxes, ha="right", va="bottom", fontsize=6,
                alpha=0.6)
    fig.tight_layout()
    return fig


def _save(fig, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)


def group_color(i: int, n: int):
    """Colour of group ``i`` of ``n``: tab10's well separated hues; past 10, tab20's dark hues first (the same
    as tab10), then its light ones, so neighbours never get two shades of one hue."""
    from matplotlib import colormaps

    if n <= 10:
        return colormaps["tab10"](i % 10)
    return colormaps["tab20"]((2 * i) % 20 + (i // 10) % 2)


def plot_runs(run_dirs: list[Path], out_dir: Path, smoothing: int | float = DEFAULT_SMOOTHING,
              group_by: str | None = None, band: str = "minmax") -> list[Path]:
    """Write one PNG per metric that any run has into ``out_dir``; returns the paths written.

    Files: reward.png, eval_<task>_accuracy.png (one per eval task; markers, unsmoothed), hidden_ratio.png,
    completions_mean_length.png, kl.png, grad_norm.png. Runs are grouped by :func:`group_runs` (``group_by``);
    a group of several is labelled ``<name> (<n> runs)``, a single run ``<run dir name> (<mode>)``. ``band``:
    "minmax" or "std". A run directory without metrics.jsonl raises ConfigError; so do a bad ``smoothing``,
    ``group_by`` or ``band`` and a missing matplotlib.
    """
    s = check_smoothing(smoothing)
    if band not in BANDS:
        raise ConfigError(f"band must be one of {', '.join(BANDS)}, got {band!r}")
    if not run_dirs:
        raise ConfigError("no run directories given")
    runs = [load_run(d) for d in run_dirs]
    groups = group_runs(runs, group_by)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install matplotlib") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, title, ylabel, smoothed in _curves(runs):
        path = out_dir / _file_name(key)
        fig = draw_figure(_groups_for(groups, key), key, title, ylabel, smoothed, s, band)
        if fig is not None:
            _save(fig, path)
            written.append(path)
    return written


def write_run_plots(run_dir: str | Path, smoothing: int | float = DEFAULT_SMOOTHING) -> list[Path]:
    """Write ``run_dir``'s plots into ``run_dir/plots/`` and return their paths; on any failure warn (a
    RuntimeWarning) and return []. Never raises."""
    try:
        return plot_runs([Path(run_dir)], Path(run_dir) / PLOTS_DIR, smoothing)
    except Exception as exc:  # plotting must never break a finished training run
        warnings.warn(f"could not write plots for {run_dir}: {type(exc).__name__}: {exc}", RuntimeWarning,
                      stacklevel=2)
        return []
