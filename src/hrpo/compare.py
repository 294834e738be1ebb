"""Compare finished (or running) training runs: one summary row per run directory, as Markdown or JSON.

A run directory holds ``config.yaml`` (the resolved TrainConfig) and ``metrics.jsonl`` (one JSON object per
step). :func:`load_run` reads both leniently (a half-written last line, non-numeric or non-finite values and a
missing config are tolerated); :func:`compare_runs` summarises them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .config import ConfigError

CONFIG_FILE = "config.yaml"    # the same names as hrpo.trainer (not imported: it pulls in torch)
METRICS_FILE = "metrics.jsonl"
WINDOW = 10                    # steps averaged for "final" and "best" reward and for the length columns
EVAL_KEY = re.compile(r"^eval/(.+)/accuracy$")
HEAD_KEYS = ["run", "mode", "model", "task", "steps", "reward_final", "reward_best"]
TAIL_KEYS = ["hidden_ratio_final", "length_first10", "length_last10", "kl_final", "wall_time_s", "path"]


@dataclass
class Run:
    """One run directory: its name, config values and metric rows (sorted by step, one per step)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.resolve().name

    @property
    def mode(self) -> str | None:
        return self.config.get("mode")

    @property
    def label(self) -> str:
        return f"{self.name} ({self.mode})" if self.mode else self.name

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of ``key`` over the rows where it is a finite number."""
        steps, values = [], []
        for row in self.rows:
            v = _number(row.get(key))
            if v is not None:
                steps.append(float(row["step"]))
                values.append(v)
        return steps, values

    def eval_tasks(self) -> list[str]:
        """Task names of every ``eval/<task>/accuracy`` key present, in first-seen order."""
        tasks: dict[str, None] = {}
        for row in self.rows:
            for key in row:
                m = EVAL_KEY.match(key)
                if m and _number(row[key]) is not None:
                    tasks.setdefault(m.group(1))
        return list(tasks)


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None for strings, None, bools, NaN, inf and anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def load_run(run_dir: str | Path) -> Run:
    """Read ``run_dir``; a missing directory or metrics file raises ConfigError naming the path.

    Unparseable lines (e.g. the half-written last line of a live run) are skipped; rows without a
    ``step`` get their line number; a repeated step keeps its last row.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(f"run directory {path} does not exist")
    metrics = path / METRICS_FILE
    if not metrics.is_file():
        raise ConfigError(f"{path} is not a run directory: {metrics} does not exist")
    by_step: dict[float, dict] = {}
    for i, line in enumerate(metrics.read_text(errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if not isinstance(row, dict):
            continue
        step = _number(row.get("step"))
        row["step"] = step if step is not None else float(i)
        by_step[row["step"]] = row
    rows = [by_step[s] for s in sorted(by_step)]
    config: dict[str, Any] = {}
    cfg_path = path / CONFIG_FILE
    if cfg_path.is_file():
        try:
            loaded = yaml.safe_load(cfg_path.read_text())
            config = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            config = {}
    return Run(path=path, config=config, rows=rows)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _best_window_mean(values: list[float], window: int = WINDOW) -> float | None:
    """Max of the ``window``-step moving average over full windows (the mean of all when shorter)."""
    if len(values) <= window:
        return _mean(values)
    return max(sum(values[i:i + window]) for i in range(len(values) - window + 1)) / window


def _last(values: list[float]) -> float | None:
    return values[-1] if values else None


def summarize(run: Run) -> dict[str, Any]:
    """The comparison row of one loaded run (None where a metric is missing)."""
    _, reward = run.series("reward")
    _, length = run.series("completions/mean_length")
    _, step_s = run.series("timing/step_s")
    row: dict[str, Any] = {
        "run": run.name,
        "mode": run.mode,
        "model": run.config.get("model"),
        "task": run.config.get("task"),
        "steps": int(run.rows[-1]["step"]) if run.rows else 0,
        "reward_final": _mean(reward[-WINDOW:]),
        "reward_best": _best_window_mean(reward),
    }
    for task in run.eval_tasks():
        _, acc = run.series(f"eval/{task}/accuracy")
        row[f"eval/{task}/accuracy_last"] = _last(acc)
        row[f"eval/{task}/accuracy_best"] = max(acc) if acc else None
    row.update({
        "hidden_ratio_final": _last(run.series("hidden_ratio")[1]),
        "length_first10": _mean(length[:WINDOW]),
        "length_last10": _mean(length[-WINDOW:]),
        "kl_final": _last(run.series("kl")[1]),
        "wall_time_s": sum(step_s) if step_s else None,
        "path": str(run.path),
    })
    return row


def compare_runs(run_dirs: list[str | Path]) -> list[dict[str, Any]]:
    """One summary row per run directory, in the order given; see :func:`summarize` for the keys.

    Keys: run, mode, model, task, steps, reward_final (mean of the last 10 steps), reward_best (max of the
    10-step moving average), eval/<task>/accuracy_last and _best for every eval task of any run,
    hidden_ratio_final, length_first10, length_last10, kl_final, wall_time_s (sum of timing/step_s), path.
    """
    if not run_dirs:
        raise ConfigError("no run directories given")
    rows = [summarize(load_run(d)) for d in run_dirs]
    eval_keys = list(dict.fromkeys(k for r in rows for k in r if k.startswith("eval/")))
    # every row gets every eval column (None where absent), placed after the reward columns
    order = HEAD_KEYS + eval_keys + TAIL_KEYS
    return [{k: row.get(k) for k in order} for row in rows]


def _fmt(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key == "wall_time_s":
        seconds = int(round(value))
        h, rest = divmod(seconds, 3600)
        m, s = divmod(rest, 60)
        return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"
    if isinstance(value, float):
        if key.startswith("length_"):
            return f"{value:.1f}"
        return f"{value:.4f}" if key == "kl_final" else f"{value:.3f}"
    return str(value).replace("|", "\\|")


def _header(key: str) -> str:
    m = re.match(r"^eval/(.+)/accuracy_(last|best)$", key)
    if m:
        return f"{m.group(1)} acc ({m.group(2)})"
    return {"reward_final": "reward (last 10)", "reward_best": "reward (best 10)",
            "hidden_ratio_final": "hidden_ratio", "length_first10": "len (first 10)",
            "length_last10": "len (last 10)", "kl_final": "kl", "wall_time_s": "wall time"}.get(key, key)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of :func:`compare_runs` rows (every key but ``path``; '-' where missing)."""
    if not rows:
        return ""
    keys = [k for k in dict.fromkeys(k for r in rows for k in r) if k != "path"]
    lines = ["| " + " | ".join(_header(k) for k in keys) + " |",
             "|" + "|".join("---" if k in ("run", "mode", "model", "task") else "---:" for k in keys) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(_fmt(k, row.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def to_json(rows: list[dict[str, Any]]) -> str:
    """The rows as indented JSON (strict: no NaN)."""
    return json.dumps(rows, indent=2, allow_nan=False) + "\n"
