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
from .errors import ConfigError  # noqa: F401 (defined below the config, so lower modules can raise it)
from .latent_options import FAMILY_MODES, latent_config, trains_actions

EMBEDDED_MODEL = "embedded"
MODES = ("hybrid", "discrete", "latent", "hidden", *FAMILY_MODES)
DTYPES = ("auto", "float32", "bfloat16", "float16")


# Rewards known by name (hrpo.tasks.rewards implements them); anything else must be file.py:fn or module:fn.
REWARD_NAMES = ("accuracy", "format", "number", "math", "choice", "exact", "f1")
ANSWER_CHECKS = REWARD_NAMES[2:]  # the checks of the generic task: compare the answer with the gold one
# keys of the generic task (--task generic); given with another task they are an error
GENERIC_KEYS = ("prompt_field", "prompt_template", "answer_field", "system_prompt", "answer_check")
# the keys that choose and shape a task and its rewards, which `hrpo eval` takes too
TASK_KEYS = ("task_options", "rewards", *GENERIC_KEYS)


def _f(default: Any, help: str, **kw: Any) -> Any:
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class TrainConfig:
    """Everything `hrpo train` needs. Defaults follow the paper (Qwen2.5 on GSM8K) unless noted."""

    # what to train
    model: str = _f(EMBEDDED_MODEL, "Hub id, local model directory, or 'embedded' (SmolLM2-135M-Instruct).")
    mode: str = _f("hybrid", "hybrid = HRPO (gated latent mixing); discrete = GRPO baseline (gate off); "
                             "latent = the latent alone, no gate (ablation); hidden = last hidden state fed back "
                             "(Coconut-style ablation); soft, mixture, multiplex = the latent-reasoning family "
                             "(docs/methods.md; soft trains with --latent noise=gumbel|gaussian).",
                   choices=MODES)
    task: str = _f("arithmetic", "Training task: a built-in name (arithmetic (embedded), gsm8k, math, math500, "
                                 "mmlu_stem, arc_c, mmlu_arc_train, nq, triviaqa, hotpotqa, 2wiki, bamboogle), "
                                 "generic (your --data with --prompt-field/--prompt-template and --answer-field), "
                                 "rg:NAME (a reasoning-gym generator), or your own: path/to/file.py:Class or "
                                 "package.module:factory. `hrpo tasks` lists them.")
    data: str | None = _f(None, "Local training data for the task (jsonl, json, parquet or a saved HF dataset).")
    prompt_format: str = _f("hash", "Prompt format: hash ('####' marker) or think ('</think>' marker).",
                            choices=("hash", "think"))
    task_options: dict | None = _f(None, "Options of the task: a reasoning-gym generator's config fields (e.g. "
                                         "min_terms=2), or keyword arguments of your task class or factory. YAML: a "
                                         "mapping; CLI: --task-option KEY=VALUE, repeatable (the value read as YAML).",
                                   flag="--task-option", metavar="KEY=VALUE")
    rewards: list | None = _f(None, "Rewards summed with weights into the reward the advantages use: "
                                    f"{', '.join(REWARD_NAMES)}, or your function path/to/file.py:fn or "
                                    "module:fn (fn(completion: str, example: dict) -> float); an optional "
                                    ":WEIGHT after the last colon (default 1). CLI: --reward SPEC, repeatable; YAML: a "
                                    "list of {name, weight}. Each is logged as rewards/<name>/mean and /std "
                                    "(default: accuracy, the task's own reward).",
                              flag="--reward", metavar="SPEC")
    # the generic task (--task generic)
    prompt_field: str | None = _f(None, "generic task: the row field holding the prompt (or use prompt_template).")
    prompt_template: str | None = _f(None, "generic task: the prompt built from row fields, e.g. "
                                           "'Q: {question}\\nContext: {context}' ({field} names).")
    answer_field: str | None = _f(None, "generic task: the row field holding the gold answer (a string, a number, "
                                        "or a list of accepted strings).")
    system_prompt: str | None = _f(None, "generic task: the system message (default: the prompt format's; '' for "
                                         "none).")
    answer_check: str | None = _f(None, "generic task: how an answer is checked (its 'accuracy' reward and eval "
                                        "accuracy): number, math (math-verify), choice, exact, f1, or "
                                        "path/to/file.py:fn / module:fn (correct when it scores >= 1) (default: the "
                                        "first such --reward, else exact).")
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
    latent: dict | None = _f(None, "Options of the latent-reasoning family modes (soft, mixture, multiplex): "
                                   "noise, gumbel_tau, gaussian_sigma, mixture_beta, multiplex_k, multiplex_uniform, "
                                   "cold_stop_entropy, cold_stop_steps (docs/methods.md). YAML: a mapping; CLI: "
                                   "--latent KEY=VALUE, repeatable.", metavar="KEY=VALUE")
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


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def parse_reward(item: Any, source: str = "reward") -> dict[str, Any]:
    """One reward as ``{"name": str, "weight": float}`` from ``'NAME[:WEIGHT]'`` (the weight after the last colon:
    ``format:0.2``, ``my.py:length_penalty:-0.01``; ``module:fn`` alone has weight 1) or ``{name, weight}``."""
    if isinstance(item, dict):
        unknown = set(item) - {"name", "weight"}
        if unknown or "name" not in item:
            raise ConfigError(f"{source}: a reward is {{name, weight}}, got {item!r}")
        name, weight = item["name"], item.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float, str)) or (
                isinstance(weight, str) and not _is_number(weight)):
            raise ConfigError(f"{source}: reward '{name}': weight {weight!r} is not a number")
        weight = float(weight)
    elif isinstance(item, str):
        head, sep, tail = item.strip().rpartition(":")
        if sep and _is_number(tail):
            name, weight = head, float(tail)
        elif sep and (head in REWARD_NAMES or ":" in head):
            raise ConfigError(f"{source}: reward '{item}': weight '{tail}' is not a number (the weight goes after "
                              f"the last colon, e.g. format:0.2)")
        else:
            name, weight = item.strip(), 1.0
    else:
        raise ConfigError(f"{source}: a reward is 'NAME[:WEIGHT]' or {{name, weight}}, got {item!r}")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"{source}: a reward needs a name, got {item!r}")
    if not math.isfinite(weight):
        raise ConfigError(f"{source}: reward '{name}': weight must be a finite number, got {weight}")
    return {"name": name.strip(), "weight": weight}


def parse_task_options(value: Any, source: str = "task_options") -> dict[str, Any]:
    """``task_options`` from a YAML mapping or from ``KEY=VALUE`` strings (each value read as YAML: 2 -> int,
    true -> bool, [1, 2] -> list, anything else a string)."""
    if isinstance(value, dict):
        return {str(k): v for k, v in value.items()}
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"{source}: options must be a mapping of option: value, got {value!r}")
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = str(item).partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{source}: option {item!r} is not KEY=VALUE")
        try:
            out[key.strip()] = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError:
            out[key.strip()] = text
    return out


def _coerce(key: str, value: Any, source: str) -> Any:
    fields = {f.name: f for f in config_fields()}
    if key not in fields:
        known = ", ".join(sorted(fields))
        raise ConfigError(f"{source}: unknown config key '{key}'. Known keys: {known}")
    f = fields[key]
    tp = _field_type(f)
    if value is None:
        return None
    if key in ("task_options", "latent"):
        return parse_task_options(value, source)
    if key == "rewards":
        items = [value] if isinstance(value, (str, dict)) else value
        if not isinstance(items, (list, tuple)) or not items:
            raise ConfigError(f"{source}: 'rewards' must be a non-empty list of {{name, weight}}, got {value!r}")
        return [parse_reward(item, source) for item in items]
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
    cli = {k: _coerce(k, v, "command line") for k, v in (cli_values or {}).items()}
    for key in ("task_options", "latent"):  # --task-option / --latent add to / override the YAML's
        if cli.get(key) and values.get(key):
            cli[key] = {**values[key], **cli[key]}
    values.update(cli)
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
    if cfg.algo != "sft":
        latent = latent_config(cfg.latent, cfg.mode, cfg.top_k, cfg.top_p, training=True)
        if cfg.algo == "ppo" and trains_actions(cfg.mode, latent):
            bad("algo", f"ppo puts a per-token KL into the reward from token log-probs, and a thinking step of mode "
                        f"{cfg.mode} ({latent.describe(cfg.mode)}) has another log-prob; use --algo grpo")
    _validate_task_keys(cfg, bad)
    _validate_generic(cfg, bad)


def is_function_spec(name: str) -> bool:
    """``name`` names a user function (``file.py:fn`` or ``module:fn``) rather than a built-in reward."""
    return ":" in name


def check_reward_names(rewards: list[dict] | None, key: str = "rewards") -> None:
    """Each reward is a built-in name or a ``file.py:fn`` / ``module:fn`` spec; raises ConfigError naming it."""
    import difflib

    for reward in rewards or []:
        name = reward["name"]
        if name not in REWARD_NAMES and not is_function_spec(name):
            close = difflib.get_close_matches(name, REWARD_NAMES, n=2)
            hint = f" Did you mean {' or '.join(close)}?" if close else ""
            raise ConfigError(f"invalid config: {key}: unknown reward '{name}' (built-in: {', '.join(REWARD_NAMES)}; "
                              f"or your function as path/to/file.py:fn or module:fn).{hint}")


def task_settings_from(values: dict[str, Any], source: str = "command line") -> dict[str, Any]:
    """The TASK_KEYS among ``values`` (e.g. `hrpo eval`'s flags), typed and checked like train's config keys."""
    out = {key: _coerce(key, values[key], source) for key in TASK_KEYS if values.get(key) is not None}
    check_reward_names(out.get("rewards"))
    if out.get("answer_check") is not None and out["answer_check"] not in ANSWER_CHECKS and not is_function_spec(
            out["answer_check"]):
        raise ConfigError(f"{source}: answer_check {out['answer_check']!r} must be one of "
                          f"{', '.join(ANSWER_CHECKS)}, or path/to/file.py:fn / module:fn")
    return out


def _validate_task_keys(cfg: TrainConfig, bad) -> None:
    """The reward names, and the generic task's keys only with the generic task."""
    check_reward_names(cfg.rewards)
    generic = [key for key in GENERIC_KEYS if getattr(cfg, key) is not None]
    if generic and "generic" not in (cfg.task, cfg.eval_task):
        bad(generic[0], f"is an option of the generic task (--task generic), not of task '{cfg.task}'")
    if cfg.answer_check is not None and cfg.answer_check not in ANSWER_CHECKS and not is_function_spec(
            cfg.answer_check):
        bad("answer_check", f"must be one of {', '.join(ANSWER_CHECKS)}, or path/to/file.py:fn / module:fn")


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


def add_config_arguments(parser: argparse.ArgumentParser, only: tuple[str, ...] | None = None) -> None:
    """Add one `--flag` per TrainConfig field (or per field named in ``only``); unset flags are absent from the
    parsed namespace."""
    for f in config_fields():
        if only is not None and f.name not in only:
            continue
        flag = "--" + f.name.replace("_", "-")
        tp = _field_type(f)
        text = f.metadata["help"]
        if "(default" not in text and f.default is not None:  # else the help says what happens without it
            text += f" (default: {f.default})"
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS, "help": text}
        flags = [f.metadata["flag"], flag] if "flag" in f.metadata else [flag]  # --reward, alias --rewards
        if tp in (list, dict):  # repeatable: --reward A --reward B, --task-option K=V ...
            kwargs.update(action="append", metavar=f.metadata.get("metavar", f.name.upper()))
        elif tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = tp
            kwargs["metavar"] = f.name.upper()
            if "choices" in f.metadata:
                kwargs["choices"] = f.metadata["choices"]
        parser.add_argument(*flags, **kwargs)


def save_yaml(cfg: TrainConfig, path: Path, notes: tuple[str, ...] = ()) -> None:
    """Write the config as YAML atomically (a temporary file renamed into place: never half-written), after
    ``notes`` as '# ' comment lines."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"# {note}\n" for note in notes) + yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    os.replace(tmp, path)
