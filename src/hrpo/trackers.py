"""Live experiment tracking through standard backends: none, tensorboard, wandb, trackio.

``open_tracker(kind, run_dir, config)`` returns a :class:`Tracker` with ``log(metrics, step)`` (numbers only;
strings such as ``sample_completion`` are skipped) and ``close()``. Backends are imported only when chosen; a
missing package raises ConfigError with the ``pip install`` line. metrics.jsonl stays the source of truth: a
tracker only mirrors it.
"""

from __future__ import annotations

import importlib
import numbers
import os
from pathlib import Path
from typing import Any

from .config import ConfigError

TRACKERS = ("none", "tensorboard", "wandb", "trackio")
DEFAULT_PROJECT = "hrpo"
TENSORBOARD_DIR = "tensorboard"


def numeric_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The real-number entries of ``metrics`` (bools as 0/1, numpy scalars included) as floats; strings and
    anything else are skipped, and so is ``step``."""
    return {str(k): float(v) for k, v in metrics.items() if k != "step" and isinstance(v, numbers.Real)}


class Tracker:
    """The no-op tracker (kind 'none') and the interface of the others."""

    kind = "none"

    def log(self, metrics: dict[str, Any], step: int) -> None:
        """Record the numeric entries of ``metrics`` at ``step``."""

    def close(self) -> None:
        """Flush and release the backend; safe to call twice."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TensorBoardTracker(Tracker):
    """Scalars to ``run_dir/tensorboard/`` with torch's SummaryWriter; the config as a text entry."""

    kind = "tensorboard"

    def __init__(self, run_dir: Path, config: dict[str, Any]):
        _require("tensorboard", "tensorboard")
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / TENSORBOARD_DIR), flush_secs=10)
        if config:
            text = "\n".join(f"    {k}: {v}" for k, v in config.items())  # indented = preformatted in Markdown
            self.writer.add_text("config", text, global_step=0)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        for key, value in numeric_metrics(metrics).items():
            self.writer.add_scalar(key, value, global_step=int(step))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


class WandbTracker(Tracker):
    """A Weights & Biases run named after the run directory (project: $WANDB_PROJECT, else 'hrpo')."""

    kind = "wandb"

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str | None = None):
        self.wandb = _require("wandb", "wandb")
        self.run = self.wandb.init(project=project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
                                   name=Path(run_dir).resolve().name, dir=str(run_dir), config=dict(config))

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.run.log(numeric_metrics(metrics), step=int(step))

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class TrackioTracker(Tracker):
    """A trackio run named after the run directory (project: $TRACKIO_PROJECT, else 'hrpo')."""

    kind = "trackio"

    def __init__(self, run_dir: Path, config: dict[str, Any], project: str | None = None):
        self.trackio = _require("trackio", "trackio")
        self.trackio.init(project=project or os.environ.get("TRACKIO_PROJECT", DEFAULT_PROJECT),
                          name=Path(run_dir).resolve().name, config=dict(config))
        self.open = True

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self.trackio.log(numeric_metrics(metrics), step=int(step))

    def close(self) -> None:
        if self.open:
            self.trackio.finish()
            self.open = False


def _require(module: str, package: str):
    """Import ``module`` or raise ConfigError telling how to install ``package``."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ConfigError(f"tracker '{package}' needs the {package} package, which is not installed "
                          f"({exc}): pip install {package}") from None


def open_tracker(kind: str, run_dir: str | Path, config: dict[str, Any], project: str | None = None) -> Tracker:
    """A tracker of ``kind`` (none | tensorboard | wandb | trackio) for ``run_dir`` with the run's ``config``."""
    kind = (kind or "none").lower()
    if kind == "none":
        return Tracker()
    if kind == "tensorboard":
        return TensorBoardTracker(Path(run_dir), config)
    if kind == "wandb":
        return WandbTracker(Path(run_dir), config, project)
    if kind == "trackio":
        return TrackioTracker(Path(run_dir), config, project)
    raise ConfigError(f"unknown tracker {kind!r}: choose one of {', '.join(TRACKERS)}")
