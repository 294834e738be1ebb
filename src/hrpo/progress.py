"""One progress-bar style for every long loop (training steps, evaluation batches)."""

from __future__ import annotations


def progress_bar(label: str, enabled: bool = True):
    """A rich Progress on stderr: label, bar, done/total, elapsed, remaining, and a ``stats`` text field.

    Add tasks with ``add_task(label, total=N, stats="")`` and update ``stats`` as numbers come in.
    """
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    return Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[stats]}"),
                    console=Console(stderr=True, quiet=not enabled), transient=False)


def quiet_libraries() -> None:
    """Silence library progress bars and deprecation chatter that would break our own progress display."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore", category=FutureWarning)
