"""The HRPO training loop: rollout -> reward -> advantages -> reference and policy log-probs -> update(s).

By default strictly on-policy: every step samples ``prompts_per_step * group_size`` fresh completions and makes
exactly one gradient update on them (micro-batched with gradient accumulation). ``num_iterations`` /
``num_mini_batches`` reuse a batch for several clipped updates and ``algo ppo`` trains with a value head
(:mod:`hrpo.update`); ``algo sft`` runs the same loop with supervised steps on gold solutions (:mod:`hrpo.sft`).
"""

from __future__ import annotations

import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

from . import tasks
from .checkpoint import (CheckpointError, checkpoint_step, find_checkpoint, list_checkpoints, load_checkpoint,
                         load_initial_weights, newest_checkpoint, save_checkpoint)
from .config import TASK_KEYS, ConfigError, TrainConfig, build_config, load_yaml, save_yaml
from .faults import GracefulStop, NonFiniteGuard, TrainingInterrupted, oom_guard
from .distributed import (ProcessInfo, any_process, broadcast, check_divisible, launched_rank, local_prompts,
                          local_rows, prepare, process_info, reduce_metrics, wait_for_everyone)
from .gate import HybridGate, hidden_ratio
from .models import add_lora, eos_token_ids, load_model, resolve_device
from .optim import apply_optimizer_config, build_optimizer, warmup_cosine  # noqa: F401 - re-exported
from .plots import write_run_plots
from .precision import choose_dtype
from .progress import progress_bar, quiet_libraries
from .tasks.rewards import DEFAULT_REWARDS, build_rewards, finish_std, score_rewards
from .latent_options import FAMILY_MODES, LatentConfig, latent_config
from .objective import completion_logprobs, group_advantages, rollout_inputs_embeds
from .ppo import ValueHead
from .sft import sft_step
from .rollout import generate
from .sampling import Rollout, SamplingConfig, marker_matcher, rollout_row_seeds
from .text import decode_completions, encode_prompts
from .trackers import open_tracker
from .update import micro_batches, update_policy

CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"

# Keys `hrpo train --resume` cannot change: they shape what the checkpoints hold (base model, LoRA, gate,
# optimizer groups, precision) or define what the run trains on (task, prompts, data order, batch geometry).
# Everything else (max_steps, learning rates, sampling, logging, checkpointing, device, ...) may be overridden.
RESUME_FIXED_KEYS = ("model", "mode", "algo", "task", "prompt_format", "marker", "seed", "num_train_examples",
                     "prompts_per_step", "group_size", "lora_r", "lora_alpha", "r_min", "r_max", "gate_c",
                     "dtype", "task_options", "rewards", "latent",
                     "prompt_field", "prompt_template", "answer_field", "system_prompt", "answer_check")


@dataclass
class Trainer:
    """Everything one run holds. Build it with :func:`setup`."""

    cfg: TrainConfig
    run_dir: Path
    model: torch.nn.Module
    tokenizer: object
    gate: HybridGate | None
    task: object
    examples: list[dict]
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    matcher: object
    eos_ids: list[int]
    device: torch.device
    eval_task: object = None
    eval_examples: list[dict] | None = None
    rewards: list = field(default_factory=list)  # tasks.rewards.Reward: summed with weights into the reward
    step: int = 0
    dist: ProcessInfo = field(default_factory=ProcessInfo)
    prepared: object = None  # distributed.Prepared: what the policy-gradient pass calls (DDP-wrapped or not)
    value_head: torch.nn.Module | None = None  # ppo.ValueHead with --algo ppo


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def default_run_dir(cfg: TrainConfig) -> Path:
    return Path("runs") / f"{cfg.mode}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def setup(cfg: TrainConfig, resume: str | Path | None = None, log=print) -> Trainer:
    """Load model, LoRA, gate, task data and optimiser; restore the newest checkpoint when resuming. Under a
    multi-process launch, also joins the process group and wraps model, gate and optimizer (DDP)."""
    dist = process_info(cfg.device)
    check_divisible(cfg.prompts_per_step, dist.world_size)
    run_dir = Path(resume) if resume else Path(cfg.output_dir) if cfg.output_dir else default_run_dir(cfg)
    # a clock-named default must be the same in every process; the main process checks it before anyone writes
    refusal = None if resume or not dist.is_main else occupied_run_dir(run_dir)
    run_dir, refusal = broadcast(dist, (run_dir, refusal))
    if refusal:
        raise ConfigError(refusal)
    run_dir.mkdir(parents=True, exist_ok=True)
    cfg.output_dir = str(run_dir)
    seed_everything(cfg.seed)
    quiet_libraries()
    device = dist.device if dist.distributed else resolve_device(cfg.device)
    # every process must train in the main process's dtype, whatever its own probe would say
    precision = broadcast(dist, choose_dtype(cfg.dtype, device) if dist.is_main else None)
    log(precision.summary)
    cfg.dtype = precision.name  # config.yaml keeps what the run trains in, so a resume keeps it too
    task, examples, eval_task, eval_examples = load_task_data(cfg)
    rewards = build_rewards(cfg.rewards, task, cfg.marker)
    log(f"loading model '{cfg.model}' ({precision.name}, {device})")
    loaded = load_model(cfg.model, dtype=precision.dtype, device=device, trust_remote_code=cfg.trust_remote_code)
    model = add_lora(loaded.model, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, seed=cfg.seed)
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    hidden = model.get_input_embeddings().weight.shape[1]
    gate = matcher = None
    if cfg.mode == "hybrid":
        gen = torch.Generator().manual_seed(cfg.seed)
        gate = HybridGate(hidden, cfg.r_min, cfg.r_max, cfg.gate_c)
        gate.reset_parameters(generator=gen)
        gate.to(device)
    if cfg.mode != "discrete":
        matcher = marker_matcher(loaded.tokenizer, cfg.marker, model.get_input_embeddings().weight.shape[0])
    value_head = None
    if cfg.algo == "ppo":
        if dist.distributed:
            raise ConfigError("--algo ppo runs in one process for now (its value head is not wrapped for DDP); "
                              "use --algo grpo under accelerate launch")
        value_head = ValueHead(hidden).to(device)
    if cfg.init_adapter and not resume:
        log(f"starting from the adapter of {load_initial_weights(cfg.init_adapter, model, gate)}")
    optimizer, scheduler = build_optimizer(cfg, model, gate, value_head)
    trainer = Trainer(cfg=cfg, run_dir=run_dir, model=model, tokenizer=loaded.tokenizer, gate=gate, task=task,
                      examples=examples, optimizer=optimizer, scheduler=scheduler, matcher=matcher,
                      eos_ids=eos_token_ids(loaded.model, loaded.tokenizer), device=device, eval_task=eval_task,
                      eval_examples=eval_examples, dist=dist, rewards=rewards, value_head=value_head)
    if resume:
        ckpt = find_checkpoint(run_dir)
        trainer.step = load_checkpoint(ckpt, model, gate, optimizer, scheduler, value_head=value_head)
        check_max_steps(run_dir, trainer.step, cfg.max_steps)
        apply_optimizer_config(cfg, optimizer, scheduler)
        log(f"resumed from {ckpt} (step {trainer.step})")
        changed = changed_settings(run_dir / CONFIG_FILE, cfg)
        if changed:  # config.yaml is rewritten below: say what the run was trained with until now
            log(f"resumed with changed settings: {changed}")
    trainer.prepared = prepare(dist, model, gate, optimizer)
    trainer.optimizer = trainer.prepared.optimizer
    if dist.is_main:
        save_yaml(cfg, run_dir / CONFIG_FILE, notes=(f"dtype {precision.name}: {precision.reason}",))
    return trainer


def changed_settings(saved_config: Path, cfg: TrainConfig) -> str:
    """'key old -> new, ...' for every setting of ``cfg`` that differs from the run's saved config.yaml
    ('' when none does or the file is unreadable; the run directory itself may have moved)."""
    try:
        saved = load_yaml(saved_config)
    except Exception:
        return ""
    return ", ".join(f"{key} {saved[key]!r} -> {value!r}" for key, value in cfg.to_dict().items()
                     if key in saved and key != "output_dir" and not _same_setting(key, saved[key], value))


def occupied_run_dir(run_dir: Path) -> str | None:
    """Why a fresh run may not write into ``run_dir`` (it already holds a run's checkpoints or metrics), or None.
    A fresh run there would mix its files with the old run's, and checkpoint pruning would delete its own."""
    if not run_dir.exists():
        return None
    if not run_dir.is_dir():
        return f"--output-dir {run_dir} is a file, not a directory; pass another --output-dir"
    held = [p.name for p in list_checkpoints(run_dir)]
    if (run_dir / METRICS_FILE).exists():
        held.append(METRICS_FILE)
    if not held:
        return None
    has_run = (run_dir / CONFIG_FILE).is_file() and newest_checkpoint(run_dir) is not None
    cont = f"To continue that run use --resume {run_dir} (not --output-dir); to" if has_run else "To"
    return (f"--output-dir {run_dir} already holds a training run ({', '.join(held)}); a new run would mix its "
            f"files with it. {cont} start a new run pass a new --output-dir (or delete {run_dir} first)")


def check_max_steps(run_dir: Path, step: int, max_steps: int) -> None:
    """Raise ConfigError when a resumed run is already past ``max_steps`` (there is nothing to train)."""
    if step > max_steps:
        raise ConfigError(f"{run_dir} is already at step {step} (checkpoint-{step}); max_steps={max_steps} is "
                          f"below it. Pass --max-steps larger than {step} to train further, or use the run as it "
                          f"is (hrpo eval / generate --adapter {run_dir})")


def task_settings(cfg: TrainConfig) -> dict:
    """The config keys that choose and shape the task and its rewards (config.TASK_KEYS)."""
    return {key: getattr(cfg, key) for key in TASK_KEYS}


def load_task_data(cfg: TrainConfig):
    """(task, training examples, eval task or None, eval examples or None); resolves ``cfg.marker``,
    ``cfg.rewards`` (default: accuracy alone) and the generic task's ``cfg.answer_check``, so that config.yaml
    records what the run trains with. Bad data raises DataError here, before the model is loaded."""
    settings = task_settings(cfg)
    task = tasks.from_settings(cfg.task, settings, cfg.prompt_format, cfg.data)
    cfg.marker = cfg.marker or task.marker
    cfg.rewards = cfg.rewards or [dict(r) for r in DEFAULT_REWARDS]
    if isinstance(task, tasks.GenericTask):
        cfg.answer_check = task.answer_check
    eval_task = eval_examples = None
    if cfg.eval_task:
        eval_task = tasks.from_settings(cfg.eval_task, settings, cfg.prompt_format, cfg.eval_data,
                                        own_options=cfg.eval_task == cfg.task)
        eval_examples = eval_task.load("test", limit=cfg.eval_limit)
    return task, training_examples(task, cfg), eval_task, eval_examples


def training_examples(task, cfg: TrainConfig) -> list[dict]:
    """The training set: ``num_train_examples`` generated rows for a procedural task without --data, else the
    task's whole train split (validated before any training starts)."""
    if getattr(task, "procedural", False) and not cfg.data and callable(getattr(task, "examples", None)):
        return task.examples(cfg.num_train_examples, seed=cfg.seed)
    return task.load("train")


def batch_examples(trainer: Trainer, step: int) -> list[dict]:
    """The prompts of ``step``: a per-epoch shuffle of the training set, deterministic in (seed, step)."""
    n, k = len(trainer.examples), trainer.cfg.prompts_per_step
    out = []
    for j in range(step * k, step * k + k):
        epoch, idx = divmod(j, n)
        order = list(range(n))
        random.Random(trainer.cfg.seed * 1_000_003 + epoch).shuffle(order)
        out.append(trainer.examples[order[idx]])
    return out


def sampling_config(cfg: TrainConfig) -> SamplingConfig:
    return SamplingConfig(max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_k=cfg.top_k,
                          top_p=cfg.top_p, logprob_temperature=cfg.logprob_temperature)


def latent_options(cfg: TrainConfig) -> LatentConfig:
    """The run's :class:`LatentConfig` (the family modes' options; validated with the config)."""
    return latent_config(cfg.latent, cfg.mode, cfg.top_k, cfg.top_p)


def reference_logprobs(trainer: Trainer, rollout: Rollout, temperature: float) -> torch.Tensor:
    """(B, C) log-probs of the recorded tokens under the frozen base model (LoRA disabled) reading plain token
    embeddings, or in a family mode (soft, mixture, multiplex) the rollout's fed-back vectors: they hold no
    trained part (HRPO's mix holds the trained gate), so the KL compares the two models on the same inputs."""
    model, mode = trainer.model, trainer.cfg.mode
    rows = []
    with torch.no_grad(), model.disable_adapter():
        for mb in micro_batches(rollout.completion_ids.shape[0], trainer.cfg.micro_batch_size):
            part = rollout.select(mb)
            embeds, _ = rollout_inputs_embeds(model, None, part, mode=mode if mode in FAMILY_MODES else "discrete")
            rows.append(completion_logprobs(model, part, embeds, temperature, trainer.cfg.group_size))
    return torch.cat(rows)


def train_step(trainer: Trainer) -> dict:
    """Run one HRPO step (rollout, rewards, one update) and return its metrics."""
    cfg, model, step = trainer.cfg, trainer.model, trainer.step
    t0 = time.perf_counter()
    prompts = local_prompts(batch_examples(trainer, step), trainer.dist)  # whole groups per process
    examples = [ex for ex in prompts for _ in range(cfg.group_size)]
    prompt_ids, prompt_mask = encode_prompts(trainer.tokenizer, [trainer.task.messages(ex) for ex in examples],
                                             cfg.max_prompt_length, trainer.device)
    rows = local_rows(cfg.prompts_per_step, cfg.group_size, trainer.dist)  # global row indices
    row_seeds = rollout_row_seeds(cfg.seed, step, rows, device=trainer.device)
    model.eval()
    rollout = generate(model, prompt_ids, prompt_mask, sampling_config(cfg), gate=trainer.gate,
                       matcher=trainer.matcher, eos_token_ids=trainer.eos_ids,
                       pad_token_id=trainer.tokenizer.pad_token_id, row_seeds=row_seeds,
                       group_size=cfg.group_size, mode=cfg.mode, engine=cfg.rollout_engine,
                       latent=latent_options(cfg))
    t_rollout = time.perf_counter()

    completions = decode_completions(trainer.tokenizer, rollout.completion_ids, rollout.completion_mask)
    scored = score_rewards(trainer.rewards or build_rewards(None, trainer.task), completions, examples,
                           cfg.reward_timeout, step=step + 1)
    rewards = torch.tensor(scored.total)  # the weighted sum of the rewards
    advantages = group_advantages(rewards, cfg.group_size).to(trainer.device)
    lp_temperature = cfg.logprob_temperature or cfg.temperature
    ref_logprobs = reference_logprobs(trainer, rollout, lp_temperature) if cfg.beta > 0 else None
    t_ref = time.perf_counter()

    result = update_policy(trainer, rollout, rewards, advantages, ref_logprobs, lp_temperature)
    loss_sum, grad_norm, skipped, diffs = result.loss, result.grad_norm, result.skipped, result.logp_diffs
    lr = trainer.scheduler.get_last_lr()[0]
    with warnings.catch_warnings():  # a skipped first update: the schedule still advances, on purpose
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        trainer.scheduler.step()
    trainer.step += 1
    t_end = time.perf_counter()

    grouped = rewards.view(-1, cfg.group_size)
    lengths = rollout.completion_mask.sum(dim=1).float()
    ended = (rollout.completion_mask & torch.isin(rollout.completion_ids,
                                                  torch.tensor(trainer.eos_ids, device=trainer.device))).any(1)
    think_len = rollout.thinking_mask.sum(dim=1).float()
    new_tokens = int(rollout.completion_mask.sum())
    mixed = rollout.thinking_mask
    metrics = {
        "step": trainer.step,
        "loss": loss_sum,
        "policy_loss": result.policy_loss,
        "kl": result.kl,
        "reward": float(rewards.mean()),
        "reward_std": float(grouped.std(dim=1).mean()),
        "frac_reward_zero_std": float((grouped.std(dim=1) == 0).float().mean()),
        "completions/mean_length": float(lengths.mean()),
        "completions/min_length": float(lengths.min()),
        "completions/max_length": float(lengths.max()),
        "completions/clipped_ratio": float((~ended).float().mean()),
        "thinking/mean_length": float(think_len.mean()),
        "hidden_ratio": hidden_ratio(rollout.gate_mean, mixed) if cfg.mode != "discrete" else 0.0,
        "embeds_ratio": float(rollout.gate_mean[mixed].mean()) if bool(mixed.any()) else 1.0,
        "grad_norm": grad_norm,
        "learning_rate": lr,
        "skipped_update": int(skipped),
        "rewards/failures": scored.failures,
        **scored.metrics(),
        **(scored.moments() if trainer.dist.distributed else {}),  # for the global std, after the reduction
        "sampling/logp_difference/mean": float(diffs.mean()) if diffs.numel() else 0.0,
        "sampling/logp_difference/max": float(diffs.max()) if diffs.numel() else 0.0,
        "timing/rollout_s": t_rollout - t0,
        "timing/reference_s": t_ref - t_rollout,
        "timing/policy_s": t_end - t_ref,
        "timing/step_s": t_end - t0,
        "rollout_tokens_per_s": new_tokens / max(t_rollout - t0, 1e-9),
        "tokens_per_s": (new_tokens + int(rollout.prompt_mask.sum())) / max(t_end - t0, 1e-9),
        "sample_completion": completions[0][:200],
        **result.extra,
    }
    mixed_count = int(mixed.sum())  # weights of the token-level means when reducing over processes
    token_weights = {"hidden_ratio": mixed_count, "embeds_ratio": mixed_count,
                     "sampling/logp_difference/mean": diffs.numel()}
    reduced = reduce_metrics(trainer.dist, metrics, token_weights)
    return finish_std(reduced, cfg.prompts_per_step * cfg.group_size) if trainer.dist.distributed else reduced


def periodic_eval(trainer: Trainer) -> dict:
    """Greedy evaluation of the live policy on the eval task: ``eval/<task>/{accuracy,format_rate}``."""
    from .evaluate import evaluate
    from .policy import Policy

    cfg = trainer.cfg
    policy = Policy(model=trainer.model, tokenizer=trainer.tokenizer, gate=trainer.gate, marker=cfg.marker,
                    temperature=cfg.temperature, top_k=cfg.top_k, top_p=cfg.top_p, eos_ids=trainer.eos_ids,
                    device=trainer.device, mode=cfg.mode)
    result = evaluate(policy, trainer.eval_task, trainer.eval_examples, batch_size=cfg.micro_batch_size,
                      max_new_tokens=cfg.max_new_tokens, greedy=True, progress=False,
                      max_prompt_tokens=cfg.max_prompt_length, seed=cfg.seed)
    metrics = result["metrics"]
    name = cfg.eval_task if ":" not in cfg.eval_task else trainer.eval_task.name  # a file or rg: spec
    return {f"eval/{name}/accuracy": metrics["accuracy"], f"eval/{name}/format_rate": metrics["format_rate"]}


def train(cfg: TrainConfig, resume: str | Path | None = None, quiet: bool = False,
          stop_at: int | None = None) -> Path:
    """Train until ``cfg.max_steps`` (or step ``stop_at``, checkpointing there, as if interrupted); returns the
    run directory (config.yaml, metrics.jsonl, checkpoint-N/)."""
    from rich.console import Console

    console = Console(stderr=True, quiet=quiet or launched_rank() != 0)  # only the main process talks and writes
    trainer = setup(cfg, resume=resume, log=console.print)
    main = trainer.dist.is_main
    metrics_path = trainer.run_dir / METRICS_FILE
    if main and resume:
        _truncate_metrics(metrics_path, trainer.step)
    options = latent_options(cfg).describe(cfg.mode)
    mode = f"mode {cfg.mode}" + (f" {options}" if options else "")
    console.print(f"run directory: [bold]{trainer.run_dir}[/bold]  ({mode}, {cfg.max_steps} steps, "
                  f"{cfg.prompts_per_step}x{cfg.group_size} completions per step)")
    if trainer.step >= cfg.max_steps:
        console.print(f"nothing to train: the run is already at step {trainer.step} = max_steps; pass --max-steps "
                      f"larger than {trainer.step} to train further")
    last_saved = trainer.step
    tracker = open_tracker(cfg.report_to if main else "none", trainer.run_dir, cfg.to_dict())
    sink_path = metrics_path if main else Path(os.devnull)
    nonfinite = NonFiniteGuard(cfg.max_nonfinite_steps)
    # SIGINT/SIGTERM: finish the step, checkpoint, raise TrainingInterrupted (a second signal aborts at once)
    with GracefulStop(trainer.run_dir) as stop, progress_bar("train", enabled=not quiet and main) as progress, \
            sink_path.open("a") as sink, tracker:
        bar = progress.add_task("train", total=cfg.max_steps, completed=trainer.step, stats="")
        while (trainer.step < min(cfg.max_steps, stop_at or cfg.max_steps)
               and not stop.should_stop(lambda flag: any_process(trainer.dist, flag))):
            with oom_guard(cfg, trainer.step):
                sft = cfg.algo == "sft"
                metrics = sft_step(trainer, batch_examples(trainer, trainer.step)) if sft else train_step(trainer)
                if cfg.eval_every and (trainer.step % cfg.eval_every == 0 or trainer.step == cfg.max_steps):
                    metrics.update(periodic_eval(trainer))
            sink.write(json.dumps(metrics) + "\n")
            sink.flush()
            tracker.log(metrics, trainer.step)
            nonfinite.update(metrics)
            stats = (f"loss {metrics['loss']:.3f}" if sft else f"reward {metrics['reward']:.2f}  hidden "
                     f"{metrics['hidden_ratio']:.3f}  kl {metrics['kl']:.4f}") + \
                f"  len {metrics['completions/mean_length']:.0f}"
            progress.update(bar, advance=1, stats=stats)
            if trainer.step % cfg.save_every == 0 or trainer.step == cfg.max_steps:
                if main:
                    save_checkpoint(trainer.run_dir, trainer.step, trainer.model, trainer.gate, trainer.optimizer,
                                    trainer.scheduler, keep=cfg.keep_checkpoints, value_head=trainer.value_head)
                last_saved = trainer.step
        if last_saved != trainer.step and main:
            save_checkpoint(trainer.run_dir, trainer.step, trainer.model, trainer.gate, trainer.optimizer,
                            trainer.scheduler, keep=cfg.keep_checkpoints, value_head=trainer.value_head)
        wait_for_everyone(trainer.dist)  # the checkpoint exists before any process returns (or resumes)
    plots = write_run_plots(trainer.run_dir) if main else []  # also for a run stopped by a signal
    if stop.requested:
        raise TrainingInterrupted(stop.signum, trainer.run_dir, newest_checkpoint(trainer.run_dir))
    console.print(f"done: {trainer.step} steps. Run directory: [bold]{trainer.run_dir}[/bold]"
                  + (f" (plots in {trainer.run_dir / 'plots'})" if plots else ""))
    return trainer.run_dir


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines past ``step`` (written after the checkpoint we resume from)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if _metric_step(line) <= step]
    path.write_text("".join(line + "\n" for line in keep))


def _metric_step(line: str) -> float:
    """The step of one metrics.jsonl line; inf (dropped) for a blank or half-written line from a killed run."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf


def resume_config(run_dir: str | Path, overrides: dict) -> TrainConfig:
    """The saved config of ``run_dir`` with CLI ``overrides`` (e.g. a larger max_steps) applied."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not an hrpo run directory (it has no {CONFIG_FILE}); --resume takes "
                              f"the output directory of an earlier `hrpo train`")
    newest = newest_checkpoint(run_dir)
    if newest is None:
        raise CheckpointError(f"{run_dir} has no checkpoint-N directory yet (the run stopped before its first "
                              f"save): nothing to resume; start a new run without --resume, with a new "
                              f"--output-dir (or delete {run_dir} first)")
    saved_values = load_yaml(path)
    saved = build_config(saved_values, {}, use_preset=False)
    cfg = build_config(saved_values, overrides, use_preset=False)
    for key in RESUME_FIXED_KEYS:
        if key in overrides and not _same_setting(key, getattr(saved, key), getattr(cfg, key)):
            flag = "--" + key.replace("_", "-")
            raise ConfigError(f"{run_dir} was trained with {key}={getattr(saved, key)!r}; --resume cannot change "
                              f"it to {getattr(cfg, key)!r} (a resumed run keeps the {key} its checkpoints were "
                              f"trained with). Drop {flag} to continue the run, or start a new run with a new "
                              f"--output-dir")
    out = overrides.get("output_dir")
    if out is not None and Path(out).resolve() != Path(run_dir).resolve():
        raise ConfigError(f"--output-dir {out} with --resume {run_dir}: a resumed run goes on writing into "
                          f"{run_dir}; drop --output-dir (or copy the run directory first and resume the copy)")
    check_max_steps(Path(run_dir), checkpoint_step(newest), cfg.max_steps)
    return cfg


def _same_setting(key: str, saved, requested) -> bool:
    """Equal values; for ``model`` also two spellings of one local directory."""
    if saved == requested:
        return True
    if key == "model" and saved and requested and Path(saved).exists() and Path(requested).exists():
        return Path(saved).resolve() == Path(requested).resolve()
    return False
