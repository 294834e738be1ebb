"""The errors a training run stops with: the CLI prints their message (no traceback) and exits with their code."""

from __future__ import annotations

import signal
from pathlib import Path


RESUME_HINT = "hrpo train --resume {run_dir}"


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key (re-exported by hrpo.config)."""


class TrainingError(RuntimeError):
    """A run stopped for a reason the user can act on; the CLI prints the message (no traceback) and exits
    with ``exit_code``."""

    exit_code = 1
    label = "error: "


class NonFiniteError(TrainingError):
    """Too many consecutive non-finite updates, or non-finite parameters about to be saved."""


class DeviceOutOfMemoryError(TrainingError):
    """The accelerator ran out of memory; the message names the settings to lower."""

    exit_code = 2


class TrainingInterrupted(TrainingError):
    """SIGINT/SIGTERM stopped the run; ``checkpoint`` is what it wrote (None when it aborted without one)."""

    label = ""

    def __init__(self, signum: int, run_dir: Path | None = None, checkpoint: Path | None = None,
                 aborted: bool = False):
        self.signum, self.run_dir, self.checkpoint, self.aborted = signum, run_dir, checkpoint, aborted
        super().__init__(signum)

    @property
    def exit_code(self) -> int:  # the shell convention: 128 + signal number (130 SIGINT, 143 SIGTERM)
        return 128 + self.signum

    def __str__(self) -> str:
        name = signal.Signals(self.signum).name
        if self.run_dir is None:
            return f"interrupted by {name}"
        if self.checkpoint is not None and not self.aborted:
            what = f"stopped by {name}; checkpoint written: {self.checkpoint}"
        elif self.checkpoint is not None:
            what = f"stopped at once by a second {name}, without a new checkpoint; the last one is {self.checkpoint}"
        else:
            return f"stopped by {name} before the first checkpoint; nothing to resume (start the run again)"
        return f"{what}\nResume with: {RESUME_HINT.format(run_dir=self.run_dir)}"
