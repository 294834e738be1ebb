"""The optimizer and learning-rate schedule of a run: AdamW with one parameter group per kind of parameter and a
warm-up + cosine schedule (stepped once per training step)."""

from __future__ import annotations

import math

import torch

from .config import TrainConfig
from .models import lora_parameters


def warmup_cosine(max_steps: int, warmup_ratio: float):
    """LR multiplier: linear warm-up over ceil(warmup_ratio * max_steps) steps, then cosine decay to 0."""
    warmup = math.ceil(warmup_ratio * max_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, max_steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


def base_learning_rates(cfg: TrainConfig) -> dict[str, float]:
    """Parameter group name -> its learning rate in ``cfg``."""
    return {"lora": cfg.lr, "gate": cfg.gate_lr, "Lambda": cfg.lambda_lr, "value": cfg.value_lr}


def build_optimizer(cfg: TrainConfig, model, gate=None, value_head=None):
    """AdamW with groups: LoRA (lr), gate_r/gate_i (gate_lr), Lambda (lambda_lr), PPO's value head (value_lr);
    all with weight decay. Returns (optimizer, scheduler)."""
    groups = [{"params": [p for _, p in lora_parameters(model)], "lr": cfg.lr, "name": "lora"}]
    if gate is not None:
        groups.append({"params": list(gate.gate_r.parameters()) + list(gate.gate_i.parameters()),
                       "lr": cfg.gate_lr, "name": "gate"})
        groups.append({"params": [gate.Lambda], "lr": cfg.lambda_lr, "name": "Lambda"})
    if value_head is not None:
        groups.append({"params": list(value_head.parameters()), "lr": cfg.value_lr, "name": "value"})
    optimizer = torch.optim.AdamW(groups, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(cfg.max_steps, cfg.warmup_ratio))
    return optimizer, scheduler


def apply_optimizer_config(cfg: TrainConfig, optimizer, scheduler) -> None:
    """After loading a checkpoint: use this config's learning rates, AdamW betas and weight decay (restored from
    the checkpoint otherwise, so `--resume RUN --lr X` would be ignored) and its max_steps / warmup schedule for
    the current step's learning rate. With unchanged values this reproduces the saved state exactly."""
    base = base_learning_rates(cfg)
    for i, (group, factor) in enumerate(zip(optimizer.param_groups, scheduler.lr_lambdas)):
        group["initial_lr"] = scheduler.base_lrs[i] = base[group["name"]]
        group["lr"] = base[group["name"]] * factor(scheduler.last_epoch)  # LambdaLR's own formula, this step
        group["betas"] = (cfg.adam_beta1, cfg.adam_beta2)
        group["weight_decay"] = cfg.weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
