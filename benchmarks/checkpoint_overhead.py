"""Wall-clock cost of one checkpoint (LoRA adapter + gate + optimizer/scheduler/RNG state) and its size. Prints JSON.

    python benchmarks/checkpoint_overhead.py [--model embedded] [--repeats 5] [--step-seconds 12.4]

Builds the real training state with ``hrpo.trainer.setup`` (the embedded quick-start preset: LoRA r32 on every
projection, the gate, AdamW), fills the optimizer's moment buffers with one update on random gradients (no
training), then times ``save_checkpoint`` ``--repeats`` times into a temporary run directory (retention 2, as in
training, so deleting the oldest checkpoint is included), with the files flushed to disk (fsync, the default)
and without (to show what the flush costs). The per-step overhead is the mean save time divided by
``save_every``; ``--step-seconds`` (the time of one training step; the README passes the one it measured) turns
it into a percentage.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from hrpo import checkpoint
from hrpo.config import TrainConfig, build_config
from hrpo.trainer import setup


def fill_optimizer_state(trainer) -> None:
    """One AdamW update on small random gradients, so exp_avg / exp_avg_sq exist as during training."""
    gen = torch.Generator().manual_seed(0)
    for group in trainer.optimizer.param_groups:
        for p in group["params"]:
            p.grad = (torch.randn(p.shape, generator=gen) * 1e-3).to(p.device, p.dtype)
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def time_saves(trainer, run_dir: Path, repeats: int, first_step: int, keep: int) -> list[float]:
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        checkpoint.save_checkpoint(run_dir, first_step + i, trainer.model, trainer.gate, trainer.optimizer,
                                   trainer.scheduler, keep=keep)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--step-seconds", type=float, default=12.4,
                        help="Seconds per training step to express the overhead in percent (README: 12.4).")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="hrpo-ckpt-bench-") as tmp:
        cfg = build_config(cli_values={"model": args.model, "output_dir": str(Path(tmp) / "run")})
        trainer = setup(cfg, log=lambda *a: None)
        fill_optimizer_state(trainer)
        run_dir = trainer.run_dir
        synced = time_saves(trainer, run_dir, args.repeats, 1, cfg.keep_checkpoints)
        newest = checkpoint.newest_checkpoint(run_dir)
        files = {p.name: p.stat().st_size for p in sorted(newest.iterdir())}
        real_fsync = checkpoint._fsync_tree
        checkpoint._fsync_tree = lambda directory: None
        try:
            unsynced = time_saves(trainer, run_dir, args.repeats, 1000, cfg.keep_checkpoints)
        finally:
            checkpoint._fsync_tree = real_fsync
        start = time.perf_counter()
        checkpoint.check_finite(0, trainer.model, trainer.gate)
        finite_check_s = time.perf_counter() - start

    mean = statistics.mean(synced)
    per_step = {str(every): mean / every for every in sorted({cfg.save_every, TrainConfig().save_every})}
    report = {
        "model": args.model,
        "device": str(trainer.device),
        "dtype": str(next(trainer.model.parameters()).dtype),
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "trainable_parameters": sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]),
        "repeats": args.repeats,
        "save_s": {"mean": mean, "min": min(synced), "max": max(synced), "all": synced},
        "save_without_fsync_s": {"mean": statistics.mean(unsynced), "min": min(unsynced), "max": max(unsynced)},
        "finite_check_s": finite_check_s,
        "checkpoint_bytes": sum(files.values()),
        "checkpoint_files": files,
        "overhead_per_step_s": per_step,
        "overhead_per_step_percent": {k: 100 * v / args.step_seconds for k, v in per_step.items()},
        "step_seconds_assumed": args.step_seconds,
        "save_every_preset": cfg.save_every,
        "save_every_default": TrainConfig().save_every,
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
