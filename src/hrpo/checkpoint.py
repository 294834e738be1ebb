"""Checkpoints: LoRA adapter (PEFT format), gate and PPO's value head (safetensors), optimiser/scheduler/RNG
state and step.

A checkpoint is written under a temporary name (``.tmp-checkpoint-N``), its files flushed to disk, and renamed
into place, so a crash or ``kill -9`` at any moment never leaves a directory called ``checkpoint-N`` that is
incomplete. Old checkpoints are renamed away (``.trash-...``) before they are deleted, for the same reason.
Leftover temporary directories are removed by the next save and never count as checkpoints.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .errors import NonFiniteError
from .gate import HybridGate
from .models import GATE_FILE, load_gate, save_gate
# re-exported: trainer, policy and user code find checkpoints through this module
from .run_files import checkpoint_step, list_checkpoints, newest_checkpoint  # noqa: F401

STATE_FILE = "trainer_state.pt"
ADAPTER_FILE = "adapter_model.safetensors"
VALUE_FILE = "value_head.safetensors"  # PPO's value head (hrpo.ppo.ValueHead)


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


def nonfinite_parameters(named: Sequence[tuple[str, torch.Tensor]]) -> list[str]:
    """Names of the tensors in ``named`` ((name, tensor) pairs) holding NaN or inf."""
    return [name for name, t in named if t.is_floating_point() and not bool(torch.isfinite(t.detach()).all())]


def check_finite(step: int, model, gate: HybridGate | None, run_dir: Path | None = None, value_head=None) -> None:
    """Raise NonFiniteError when a trainable parameter (LoRA, gate, value head) holds NaN or inf: never save such
    a state."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if gate is not None:
        named += [(f"gate.{n}", p) for n, p in gate.named_parameters()]
    if value_head is not None:
        named += [(f"value_head.{n}", p) for n, p in value_head.named_parameters()]
    bad = nonfinite_parameters(named)
    if bad:
        last = list_checkpoints(run_dir) if run_dir is not None else []
        raise NonFiniteError(f"refusing to write checkpoint-{step}: {len(bad)} parameter tensors hold NaN or inf "
                             f"(first: {bad[0]}). The last good checkpoint is "
                             f"{last[-1] if last else 'none'}; resume from it with a lower learning rate.")


def _fsync_tree(directory: Path) -> None:
    """Flush every file of ``directory`` (and the directory entry) to disk before the rename publishes it."""
    for p in directory.iterdir():
        if p.is_file():
            with p.open("rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(directory)


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. platforms that cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    """Delete a directory so that a crash midway leaves no half-deleted ``checkpoint-N``: rename, then delete."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def _clean_leftovers(run_dir: Path) -> None:
    """Remove temporary and half-deleted directories left by an earlier save that was killed."""
    for p in run_dir.iterdir():
        if p.is_dir() and (p.name.startswith(".tmp-checkpoint-") or p.name.startswith(".trash-checkpoint-")):
            shutil.rmtree(p, ignore_errors=True)


def save_checkpoint(run_dir: Path, step: int, model, gate: HybridGate | None, optimizer, scheduler,
                    keep: int = 0, value_head=None) -> Path:
    """Write ``run_dir/checkpoint-{step}`` atomically; keep the newest ``keep`` checkpoints (0 = all).
    Raises NonFiniteError (and writes nothing) when a trainable parameter is not finite."""
    run_dir = Path(run_dir)
    check_finite(step, model, gate, run_dir, value_head)
    final = run_dir / f"checkpoint-{step}"
    tmp = run_dir / f".tmp-checkpoint-{step}"
    _clean_leftovers(run_dir)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    if gate is not None:
        save_gate(gate, tmp)
    if value_head is not None:
        weights = {k: v.detach().cpu().contiguous() for k, v in value_head.state_dict().items()}
        save_file(weights, str(tmp / VALUE_FILE))
    torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state()}, tmp / STATE_FILE)
    _fsync_tree(tmp)
    if final.exists():
        _remove(final)
    tmp.rename(final)
    _fsync_dir(run_dir)
    if keep > 0:
        for old in list_checkpoints(run_dir)[:-keep]:
            _remove(old)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """``path`` itself if it is a checkpoint, else the newest checkpoint inside the run directory ``path``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.name.startswith((".tmp-checkpoint-", ".trash-checkpoint-")):
        raise CheckpointError(f"{path} is an incomplete checkpoint left by an interrupted save; pass the run "
                              f"directory {path.parent} to use its newest complete checkpoint")
    if not path.is_dir():
        raise CheckpointError(f"{path} is a file; expected an hrpo run directory or a checkpoint-N directory")
    if (path / ADAPTER_FILE).is_file():
        return path
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise CheckpointError(f"{path} is neither an hrpo checkpoint (no {ADAPTER_FILE}) nor a run directory "
                              f"holding checkpoint-N folders")
    return ckpts[-1]


def _unreadable(path: Path, exc: Exception) -> CheckpointError:
    """A CheckpointError for a damaged file, naming older checkpoints to fall back to."""
    older = [p.name for p in list_checkpoints(path.parent.parent) if p != path.parent][-2:]
    hint = (f"; older checkpoints in {path.parent.parent}: {', '.join(older)} (delete {path.parent.name} to "
            f"resume from the newest of them)" if older else "")
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return CheckpointError(f"{path} could not be read (truncated, or not written by hrpo): {first}{hint}")


def load_adapter_weights(model, checkpoint: Path) -> None:
    """Copy the LoRA weights of ``checkpoint`` into the PeftModel ``model`` (same LoRA config)."""
    from peft import set_peft_model_state_dict

    path = checkpoint / ADAPTER_FILE
    try:
        weights = load_file(str(path))
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own error type for a damaged file
        raise _unreadable(path, exc) from None
    try:
        result = set_peft_model_state_dict(model, weights)
    except RuntimeError as exc:  # shape mismatch: another model or LoRA rank
        raise CheckpointError(f"{path} does not fit this model (another base model or LoRA rank?): "
                              f"{str(exc).strip().splitlines()[0]}") from None
    unexpected = list(getattr(result, "unexpected_keys", []))
    if unexpected:
        raise CheckpointError(f"{checkpoint}: adapter has weights this model does not: {unexpected[:3]}")


def load_checkpoint(checkpoint: Path, model, gate: HybridGate | None, optimizer, scheduler,
                    value_head=None) -> int:
    """Restore everything :func:`save_checkpoint` wrote; returns the step. Only safetensors and
    ``torch.load(weights_only=True)`` are used, so a checkpoint file cannot run code."""
    from .models import ModelLoadError

    load_adapter_weights(model, checkpoint)
    if value_head is not None:
        _load_value_head(value_head, checkpoint)
    if gate is not None:
        if not (checkpoint / GATE_FILE).is_file():
            raise CheckpointError(f"{checkpoint} has no {GATE_FILE} (was it trained with --mode discrete?)")
        try:
            load_gate(gate, checkpoint)
        except ModelLoadError as exc:
            raise CheckpointError(str(exc)) from None
    path = checkpoint / STATE_FILE
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        optimizer_state, scheduler_state, rng, step = (state["optimizer"], state["scheduler"], state["rng"],
                                                       int(state["step"]))
    except Exception as exc:  # noqa: BLE001 - a truncated or foreign file
        raise _unreadable(path, exc) from None
    _check_optimizer_fits(path, optimizer_state, optimizer)
    try:
        optimizer.load_state_dict(optimizer_state)
        scheduler.load_state_dict(scheduler_state)
        set_rng_state(rng)
    except Exception as exc:  # noqa: BLE001 - a damaged state
        raise _unreadable(path, exc) from None
    return step


def _check_optimizer_fits(path: Path, saved: dict, optimizer) -> None:
    """Raise CheckpointError when the saved optimizer state has other parameter groups or sizes than this run's
    (a checkpoint of another mode, LoRA rank or model), instead of calling a good file unreadable."""
    try:
        saved_sizes = [len(g["params"]) for g in saved["param_groups"]]
    except (KeyError, TypeError) as exc:
        raise _unreadable(path, exc) from None
    sizes = [len(g["params"]) for g in optimizer.param_groups]
    if saved_sizes != sizes:
        names = [g.get("name", "?") for g in optimizer.param_groups]
        raise CheckpointError(f"{path} does not fit this run: its optimizer state has parameter groups of "
                              f"sizes {saved_sizes}, this run has {sizes} ({', '.join(names)}). It was saved by "
                              f"a run with another mode (hybrid has a gate, discrete/latent/hidden do not), LoRA "
                              f"rank or model; resume with that run's own config.yaml")


def _load_value_head(value_head, checkpoint: Path) -> None:
    path = checkpoint / VALUE_FILE
    if not path.is_file():
        raise CheckpointError(f"{checkpoint} has no {VALUE_FILE}: it was not trained with --algo ppo")
    try:
        weights = load_file(str(path))
        device = next(value_head.parameters()).device
        value_head.load_state_dict({k: v.to(device) for k, v in weights.items()})
    except Exception as exc:  # noqa: BLE001 - damaged, or a head of another hidden size
        raise _unreadable(path, exc) from None


def load_initial_weights(path: str | Path, model, gate: HybridGate | None = None) -> Path:
    """``hrpo train --init-adapter RUN``: copy the LoRA weights of RUN's newest checkpoint (or of the checkpoint
    ``path``) into ``model`` (same base model and LoRA rank), and its gate into ``gate`` when both have one.
    Optimizer state, step and value head start fresh. Returns the checkpoint used."""
    checkpoint = find_checkpoint(path)
    load_adapter_weights(model, checkpoint)
    if gate is not None and (checkpoint / GATE_FILE).is_file():
        from .models import ModelLoadError

        try:
            load_gate(gate, checkpoint)
        except ModelLoadError as exc:
            raise CheckpointError(str(exc)) from None
    return checkpoint
