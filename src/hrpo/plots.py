"""Training curves as small PNGs: one figure per metric, one line per run (raw faint, smoothed solid).

``plot_runs(run_dirs, out_dir)`` draws reward, every ``eval/<task>/accuracy``, hidden_ratio, completion length,
kl and grad_norm; a metric no run has is skipped. ``write_run_plots(run_dir)`` writes one run's plots into
``run_dir/plots/`` and never raises (the trainer calls it at the end of every run). Figures are drawn on
matplotlib's Agg canvas without pyplot, so no global state or GUI backend is touched.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

from .compare import EVAL_KEY, Run, load_run
from .config import ConfigError

PLOTS_DIR = "plots"
DEFAULT_SMOOTHING = 0.8
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
    return main[:1] + evals + main[1:]


def _draw(runs: list[Run], key: str, title: str, ylabel: str, smoothed: bool, smoothing: float,
          path: Path) -> bool:
    """Draw one figure into ``path``; False (nothing written) when no run has ``key``."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    ax = fig.add_subplot()
    drawn = False
    for i, run in enumerate(runs):
        steps, values = run.series(key)
        if not values:
            continue
        drawn = True
        color = _run_color(i, len(runs))
        if not smoothed:  # sparse points (periodic eval): markers, no smoothing
            ax.plot(steps, values, color=color, marker="o", markersize=3, linewidth=1.5, label=run.label)
        elif smoothing == 0 or smoothing == 1 or len(values) < 3:
            ax.plot(steps, values, color=color, linewidth=1.5, label=run.label)
        else:
            ax.plot(steps, values, color=color, linewidth=0.8, alpha=0.3)
            ax.plot(steps, smooth(values, smoothing), color=color, linewidth=1.6, label=run.label)
    if not drawn:
        return False
    if EVAL_KEY.match(key):
        ax.set_ylim(-0.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step", fontsize=9)
    ax.set_ylabel(ylabel, fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(labelsize=8)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, loc="best", frameon=False)
    if smoothed and smoothing not in (0, 1):
        how = f"EMA {smoothing:g}" if smoothing < 1 else f"moving average {int(smoothing)}"
        ax.text(0.99, 0.01, f"faint: raw, solid: {how}", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=6, alpha=0.6)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=DPI)
    os.replace(tmp, path)
    return True


def _run_color(i: int, n: int):
    """Distinct colours: matplotlib's 10-colour cycle, or tab20 for up to 20 runs."""
    if n <= 10:
        return f"C{i}"
    from matplotlib import colormaps

    return colormaps["tab20"](i % 20)


def plot_runs(run_dirs: list[Path], out_dir: Path, smoothing: int | float = DEFAULT_SMOOTHING) -> list[Path]:
    """Write one PNG per metric that any run has into ``out_dir``; returns the paths written.

    Files: reward.png, eval_<task>_accuracy.png (one per eval task; markers, unsmoothed), hidden_ratio.png,
    completions_mean_length.png, kl.png, grad_norm.png. Lines are labelled ``<run dir name> (<mode>)``.
    A run directory without metrics.jsonl raises ConfigError; so do a bad ``smoothing`` and a missing matplotlib.
    """
    s = check_smoothing(smoothing)
    if not run_dirs:
        raise ConfigError("no run directories given")
    runs = [load_run(d) for d in run_dirs]
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError("plotting needs matplotlib: pip install matplotlib") from None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for key, title, ylabel, smoothed in _curves(runs):
        path = out_dir / _file_name(key)
        if _draw(runs, key, title, ylabel, smoothed, s, path):
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
