"""Training configuration: one dataclass, defaults from the paper, settable from YAML and CLI flags.

Precedence: dataclass defaults < preset (the embedded quick-start, only for the embedded model) < YAML file
< CLI flags. Every value is validated once by :func:`validate`, which raises :class:`ConfigError` with the
offending key in the message.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .algo import ALGOS, check_algo

EMBEDDED_MODEL = "embedded"
MODES = ("hybrid", "discrete", "latent", "hidden")
DTYPES = ("auto", "float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A configuration value or file is invalid; the message names the key."""


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything `hrpo train` needs. Defaults follow the paper (Qwen2.5 on GSM8K) unless noted."""

    # what to train
    model: str = _f(EMBEDDED_MODEL, "Hub id, local model directory, or 'embedded' (SmolLM2-135M-Instruct).")
    mode: str = _f("hybrid", "hybrid = HRPO (gated latent mixing); discrete = GRPO baseline (gate off); "
                             "latent = the latent alone, no gate (ablation); hidden = last hidden state fed back "
                             "(Coconut-style ablation).",
                   choices=MODES)
    task: str = _f("arithmetic", "Training task: arithmetic (embedded), gsm8k, math, math500, mmlu_stem, arc_c, "
                                 "mmlu_arc_train, nq, triviaqa, hotpotqa, 2wiki, bamboogle.")
    data: str | None = _f(None, "Local training data for the task (jsonl, json, parquet or a saved HF dataset).")
    prompt_format: str = _f("hash", "Prompt format: hash ('####' marker) or think ('</think>' marker).",
                            choices=("hash", "think"))
    output_dir: str | None = _f(None, "Run directory (default: runs/<mode>-<timestamp>).")
    seed: int = _f(42, "Seed for data order, sampling and initialisation.")
    # batch geometry
    max_steps: int = _f(934, "Optimizer steps (the paper's GSM8K run had 934).")
    prompts_per_step: int = _f(8, "Distinct prompts per optimizer step, over all processes (divisible by their "
                                  "number under accelerate launch).")
    group_size: int = _f(4, "Completions per prompt (G); advantages are normalised within each group.")
    micro_batch_size: int = _f(8, "Completions per forward/backward pass in each process (gradient accumulation "
                                  "above it).")
    max_prompt_length: int = _f(1024, "Prompts longer than this (in tokens) are left-truncated.")
    max_new_tokens: int = _f(1024, "Maximum completion length in tokens.")
    # sampling
    temperature: float = _f(0.5, "Sampling temperature (also shapes the latent distribution).")
    top_k: int = _f(50, "Top-k for sampling and the latent (0 = off).")
    top_p: float = _f(1.0, "Nucleus top-p for sampling and the latent (1.0 = off).")
    marker: str | None = _f(None, "Answer marker ending the thinking span (default: the prompt format's).")
    logprob_temperature: float | None = _f(
        None, "Temperature of training log-probs (default: the sampling temperature; 1.0 = reference code).")
    # objective
    beta: float = _f(0.005, "Weight of the KL penalty to the reference (LoRA disabled) model: k3 in the loss (grpo), "
                            "k1 per token in the reward (ppo).")
    algo: str = _f("grpo", "grpo: group advantages, KL in the loss (HRPO in hybrid mode, GRPO in discrete); ppo: value "
                           "head, GAE, KL in the reward; sft: supervised on gold solutions (hrpo sft). "
                           "docs/baselines.md.", choices=ALGOS)
    num_iterations: int | None = _f(None, "Epochs (updates) per rollout batch, the ratio clipped against the batch's "
                                          "old log-probs (default: 1 for grpo, strictly on-policy; 4 for ppo).")
    num_mini_batches: int = _f(1, "Mini-batches per epoch, one optimizer update each (must divide the step's "
                                  "prompts_per_step x group_size sequences).")
    epsilon: float = _f(0.2, "Policy ratio clipped to [1 - epsilon, 1 + epsilon_high] (binds with several updates "
                             "per batch).")
    epsilon_high: float | None = _f(None, "Upper clip of the ratio (default: epsilon; DAPO's clip-higher: 0.28).")
    tis_cap: float | None = _f(None, "Truncated importance sampling: weight each token by min(pi_trainer / "
                                     "pi_rollout, TIS_CAP), e.g. 2 (default: off).")
    gamma: float = _f(1.0, "ppo: GAE discount.")
    lam: float = _f(0.95, "ppo: GAE lambda.")
    vf_coef: float = _f(0.1, "ppo: weight of the value loss.")
    cliprange_value: float = _f(0.2, "ppo: the value prediction clipped to its old value +- this.")
    value_lr: float = _f(1e-4, "ppo: learning rate of the value head.")
    init_adapter: str | None = _f(None, "Start from the LoRA (and gate) of another run or checkpoint, e.g. of "
                                        "hrpo sft (same model and lora_r; optimizer and step start fresh).")
    run_name: str | None = _f(None, "A free label kept in config.yaml (hrpo plot --group-by run_name).")
    # optimiser
    lr: float = _f(5e-6, "Learning rate of the LoRA parameters.")
    gate_lr: float = _f(1e-4, "Learning rate of gate_r and gate_i.")
    lambda_lr: float = _f(1e-3, "Learning rate of Lambda.")
    weight_decay: float = _f(0.1, "AdamW weight decay (all groups, Lambda included, as in the reference).")
    adam_beta1: float = _f(0.9, "AdamW beta1.")
    adam_beta2: float = _f(0.99, "AdamW beta2.")
    warmup_ratio: float = _f(0.1, "Fraction of max_steps with linear warm-up before the cosine decay.")
    max_grad_norm: float = _f(0.1, "Global gradient-norm clip (0 = off).")
    # LoRA and gate
    lora_r: int = _f(32, "LoRA rank.")
    lora_alpha: int = _f(64, "LoRA alpha.")
    lora_dropout: float = _f(0.0, "LoRA dropout.")
    r_min: float = _f(0.99, "Lower bound of the initial gate decay u ~ U[r_min, r_max].")
    r_max: float = _f(0.999, "Upper bound of the initial gate decay.")
    gate_c: float = _f(8.0, "Gate constant c in a = exp(-c softplus(-Lambda) r).")
    # periodic evaluation
    eval_task: str | None = _f(None, "Task evaluated every eval_every steps (greedy); logs eval/<task>/accuracy.")
    eval_data: str | None = _f(None, "Local data for eval_task (default: the task's hub test split).")
    eval_every: int = _f(0, "Evaluate every N steps and at the end (0 = never).")
    eval_limit: int = _f(100, "Examples per periodic evaluation.")
    report_to: str = _f("none", "Live tracking backend: none, tensorboard, wandb or trackio (metrics.jsonl is "
                                "always written).", choices=("none", "tensorboard", "wandb", "trackio"))
    # runtime
    dtype: str = _f("auto", "Model dtype: auto (bf16 on CUDA and on CPUs with native bf16, else fp32; the run "
                            "prints the choice and why, and config.yaml keeps it), float32, bfloat16 (float16 "
                            "only for eval/generate).", choices=DTYPES)
    device: str = _f("auto", "Device: auto, cpu, cuda, cuda:N.")
    rollout_engine: str = _f("auto", "Decode loop for rollouts: auto (for Llama-family models graph on CUDA, "
                                     "static on CPU; else eager), eager (HF forward, dynamic cache), "
                                     "static (own static KV cache), graph (static + torch.compile + CUDA graph).",
                             choices=("auto", "eager", "static", "graph"))
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    save_every: int = _f(50, "Write a checkpoint every N steps (and at the end).")
    keep_checkpoints: int = _f(2, "Checkpoints kept on disk (oldest deleted first; 0 = keep all).")
    num_train_examples: int = _f(2000, "Size of the procedural task's training set.")
    # fault tolerance and safety
    max_nonfinite_steps: int = _f(5, "Stop with an error after this many consecutive steps with a non-finite "
                                     "loss or gradient (their updates are skipped; 0 = never stop).")
    reward_timeout: float = _f(5.0, "Seconds allowed per reward call; a call that raises or runs longer scores 0 "
                                    "(runs in a killable child process; 0 = no limit, in-process).")
    trust_remote_code: bool = _f(False, "Let the model repository run its own Python code when loading (only for "
                                        "models you trust).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The quick-start preset for `hrpo train` on the embedded model: sized for minutes on 2 CPU cores (the README
# gives measured times) and tuned so that learning is visible in 60 steps (the paper's lr 5e-6 moves a 135M
# model too little that fast; at temperature 0.5 most groups of this model agree, so advantages vanish).
EMBEDDED_PRESET: dict[str, Any] = {
    "max_steps": 60,
    "prompts_per_step": 8,
    "group_size": 4,
    "micro_batch_size": 32,
    "temperature": 1.0,
    "max_prompt_length": 512,
    "max_new_tokens": 32,
    "lr": 1e-4,
    "gate_lr": 1e-3,
    "lambda_lr": 1e-2,
    "max_grad_norm": 1.0,
    "save_every": 20,
}


def config_fields() -> list[dataclasses.Field]:
    return list(dataclasses.fields(TrainConfig))


def _field_type(f: dataclasses.Field) -> type:
    hints = typing.get_type_hints(TrainConfig)
    tp = hints[f.name]
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if args else tp


def _coerce(key: str, value: Any, source: str) -> Any:
    fields = {f.name: f for f in config_fields()}
    if key not in fields:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown config key '{key}'. Known keys: {known}")
    f = fields[key]
    tp = _field_type(f)
    if value is None:
        return None
    try:
        if tp is bool:
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "1", "yes"):
                return True
            if str(value).lower() in ("false", "0", "no"):
                return False
            raise ValueError
        if tp is int and isinstance(value, float) and not value.is_integer():
            raise ValueError
        return tp(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{source}: '{key}' must be {tp.__name__}, got {value!r}") from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a dict of typed values; unknown keys and bad types raise ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of key: value, got {type(data).__name__}")
    return {k: _coerce(k, v, str(path)) for k, v in data.items()}


def build_config(yaml_values: dict[str, Any] | None = None, cli_values: dict[str, Any] | None = None,
                 use_preset: bool = True) -> TrainConfig:
    """Merge defaults < embedded preset < YAML < CLI, validate, and return the config."""
    values: dict[str, Any] = {}
    values.update({k: _coerce(k, v, "config") for k, v in (yaml_values or {}).items()})
    values.update({k: _coerce(k, v, "command line") for k, v in (cli_values or {}).items()})
    model = values.get("model", EMBEDDED_MODEL)
    if use_preset and model == EMBEDDED_MODEL:
        values = {**EMBEDDED_PRESET, **values}
    cfg = TrainConfig(**values)
    validate(cfg)
    return cfg


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError naming the first invalid value."""
    def bad(key: str, why: str) -> None:
        raise ConfigError(f"invalid config: {key}={getattr(cfg, key)!r}: {why}")

    if cfg.mode not in MODES:
        bad("mode", f"must be one of {', '.join(MODES)}")
    if cfg.dtype not in DTYPES:
        bad("dtype", f"must be one of {', '.join(DTYPES)}")
    if cfg.dtype == "float16":
        bad("dtype", "float16 cannot be trained here: hrpo trains without loss scaling, and fp16's small LoRA "
                     "gradients then underflow; use bfloat16 or float32 (float16 works for hrpo eval and "
                     "hrpo generate)")
    if cfg.group_size < 2:
        bad("group_size", "needs at least 2 completions per prompt to normalise advantages")
    for key in ("max_steps", "prompts_per_step", "micro_batch_size", "max_prompt_length", "max_new_tokens",
                "lora_r", "save_every", "num_train_examples"):
        if getattr(cfg, key) < 1:
            bad(key, "must be >= 1")
    if cfg.keep_checkpoints < 0:
        bad("keep_checkpoints", "must be >= 0")
    for key in ("lr", "gate_lr", "lambda_lr", "weight_decay", "beta", "max_grad_norm"):
        if getattr(cfg, key) < 0:
            bad(key, "must be >= 0")
    if cfg.temperature <= 0:
        bad("temperature", "must be > 0")
    if cfg.logprob_temperature is not None and cfg.logprob_temperature <= 0:
        bad("logprob_temperature", "must be > 0")
    if cfg.top_k < 0:
        bad("top_k", "must be >= 0 (0 disables top-k)")
    if not 0.0 < cfg.top_p <= 1.0:
        bad("top_p", "must be in (0, 1]")
    if not 0.0 < cfg.r_min < 1.0:
        bad("r_min", "must be in (0, 1)")
    if not 0.0 < cfg.r_max < 1.0:
        bad("r_max", "must be in (0, 1)")
    if cfg.r_min >= cfg.r_max:
        bad("r_min", f"must be < r_max ({cfg.r_max})")
    if not 0.0 <= cfg.warmup_ratio < 1.0:
        bad("warmup_ratio", "must be in [0, 1)")
    if not 0.0 <= cfg.lora_dropout < 1.0:
        bad("lora_dropout", "must be in [0, 1)")
    for key in ("adam_beta1", "adam_beta2"):
        if not 0.0 <= getattr(cfg, key) < 1.0:
            bad(key, "must be in [0, 1)")
    if cfg.marker is not None and not cfg.marker:
        bad("marker", "must be a non-empty string")
    if cfg.prompt_format not in ("hash", "think"):
        bad("prompt_format", "must be hash or think")
    if cfg.eval_every < 0:
        bad("eval_every", "must be >= 0")
    if cfg.eval_limit < 1:
        bad("eval_limit", "must be >= 1")
    if cfg.eval_every > 0 and not cfg.eval_task:
        bad("eval_every", "needs eval_task")
    if cfg.gate_c <= 0:
        bad("gate_c", "must be > 0")
    if cfg.max_nonfinite_steps < 0:
        bad("max_nonfinite_steps", "must be >= 0 (0 = never stop)")
    if cfg.reward_timeout < 0:
        bad("reward_timeout", "must be >= 0 seconds (0 = no limit)")
    check_algo(cfg, bad)
    _validate_generic(cfg, bad)


def _validate_generic(cfg: TrainConfig, bad) -> None:
    """Checks every field shares: floats are finite, values with choices are one of them, the device exists."""
    for f in config_fields():
        value = getattr(cfg, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            bad(f.name, "must be a finite number")
        if "choices" in f.metadata and value not in f.metadata["choices"]:
            bad(f.name, f"must be one of {', '.join(f.metadata['choices'])}")
    if cfg.device != "auto":
        import torch

        try:
            device = torch.device(cfg.device)
        except (RuntimeError, ValueError):
            bad("device", "is not a device name (use auto, cpu, cuda or cuda:N)")
        if device.type == "cuda" and not torch.cuda.is_available():
            bad("device", "CUDA is not available on this machine (torch.cuda.is_available() is False)")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--flag` per TrainConfig field; unset flags are absent from the parsed namespace."""
    for f in config_fields():
        flag = "--" + f.name.replace("_", "-")
        tp = _field_type(f)
        text = f.metadata["help"]
        if "(default" not in text and f.default is not None:  # else the help says what happens without it
            text += f" (default: {f.default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp
            kwargs["metavar"] = f.name.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(flag, **kwargs)


def save_yaml(cfg: TrainConfig, path: Path, notes: tuple[str, ...] = ()) -> None:
    """Write the config as YAML atomically (a temporary file renamed into place: never half-written), after
    ``notes`` as '# ' comment lines."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"# {note}\n" for note in notes) + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)
