"""Checkpoints: LoRA adapter (PEFT format), gate (safetensors), optimiser/scheduler/RNG state and step.

A checkpoint is written under a temporary name and renamed into place, so a crash never leaves a directory
called ``checkpoint-N`` that is incomplete.
"""

from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .gate import HybridGate
from .models import GATE_FILE, load_gate, save_gate

STATE_FILE = "trainer_state.pt"
ADAPTER_FILE = "adapter_model.safetensors"
_CKPT = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint or run directory is missing or not ours; the message names the path."""


def rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(), "numpy": [name, keys.tolist(), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, model, gate: HybridGate | None, optimizer, scheduler,
                    keep: int = 0) -> Path:
    """Write ``run_dir/checkpoint-{step}`` atomically; keep the newest ``keep`` checkpoints (0 = all)."""
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    if gate is not None:
        save_gate(gate, tmp)
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state()}, tmp / STATE_FILE)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints in ``run_dir``, oldest first."""
    found = []
    for p in Path(run_dir).iterdir() if Path(run_dir).is_dir() else []:
        m = _CKPT.match(p.name)
        if m and p.is_dir():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest checkpoint inside the run directory ``path``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if (path / ADAPTER_FILE).is_file():
        return path
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise CheckpointError(f"{path} is neither an hrpo checkpoint (no {ADAPTER_FILE}) nor a run directory "
                              f"holding checkpoint-N folders")
    return ckpts[-1]


def load_adapter_weights(model, checkpoint: Path) -> None:
    """Copy the LoRA weights of ``checkpoint`` into the PeftModel ``model`` (same LoRA config)."""
    from peft import set_peft_model_state_dict

    result = set_peft_model_state_dict(model, load_file(str(checkpoint / ADAPTER_FILE)))
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise CheckpointError(f"{checkpoint}: adapter has weights this model does not: {unexpected[:3]}")


def load_checkpoint(checkpoint: Path, model, gate: HybridGate | None, optimizer, scheduler) -> int:
    """Restore everything :func:`save_checkpoint` wrote; returns the step."""
    load_adapter_weights(model, checkpoint)
    if gate is not None:
        if not (checkpoint / GATE_FILE).is_file():
            raise CheckpointError(f"{checkpoint} has no {GATE_FILE} (was it trained with --mode discrete?)")
        load_gate(gate, checkpoint)
    try:
        state = torch.load(checkpoint / STATE_FILE, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{checkpoint / STATE_FILE} could not be read: {exc}") from None
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return int(state["step"])
