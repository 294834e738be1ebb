"""How checkpoints are named in a run directory and how the complete ones are found (no file is read)."""

from __future__ import annotations

import re
from pathlib import Path


_CKPT = re.compile(r"^checkpoint-(\d+)$")


def checkpoint_step(path: Path) -> int | None:
    """N for a directory named checkpoint-N, else None."""
    m = _CKPT.match(Path(path).name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    found = []
    for p in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        step = checkpoint_step(p)
        if step is not None and p.is_dir():
            found.append((step, p))
    return [p for _, p in sorted(found)]


def newest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint in ``run_dir``, or None."""
    found = list_checkpoints(Path(run_dir))
    return found[-1] if found else None
