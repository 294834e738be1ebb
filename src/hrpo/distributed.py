"""Multi-process data-parallel training through Hugging Face ``accelerate`` (DDP: one replica per process).

Launched with ``accelerate launch [--config_file F] -m hrpo train ...`` (or ``torchrun``), every process rolls
out its own share of the step's prompts (whole groups of G completions, so advantages stay local), computes
the loss as the mean over its own sequences and backpropagates through a DDP-wrapped model and gate, which
average the gradients: with equal shares the mean of the local means is the global mean, so the update equals
the single-process update with the same global batch. Metrics are reduced across processes; only the main
process writes files.

With one process nothing here wraps anything or communicates: :class:`ProcessInfo` is a plain record.
"""

from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass

import torch

from .config import ConfigError

# Launchers set one of these to the number of processes (torchrun / accelerate: WORLD_SIZE; mpirun: the rest).
WORLD_SIZE_VARS = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")

# How per-process metrics combine; any other numeric metric is averaged (equal shares per process).
MIN_METRICS = frozenset({"completions/min_length"})
MAX_METRICS = frozenset({"completions/max_length", "sampling/logp_difference/max", "skipped_update"})
SUM_METRICS = frozenset({"rollout_tokens_per_s", "tokens_per_s", "rewards/failures"})
MAIN_METRICS = frozenset({"step", "grad_norm", "learning_rate", "timing/rollout_s", "timing/reference_s",
                          "timing/policy_s", "timing/step_s"})


@dataclass
class ProcessInfo:
    """Where this process stands: rank, number of processes, its device and, with several processes, the
    ``accelerate.Accelerator`` that set up the process group."""

    rank: int = 0
    world_size: int = 1
    device: torch.device | None = None
    accelerator: object | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def launched_world_size() -> int:
    """Number of processes the launcher started (1 when run plainly), read from the environment."""
    for name in WORLD_SIZE_VARS:
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 1


def launched_rank() -> int:
    """This process's global rank as the launcher set it (0 when run plainly); readable before any setup."""
    for name in ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"):
        if os.environ.get(name, "").strip().isdigit():
            return int(os.environ[name])
    return 0


_ACCELERATOR = None


def process_info(device: str = "auto") -> ProcessInfo:
    """This process's :class:`ProcessInfo`. With several processes, creates (once) the Accelerator, which
    initialises the process group: NCCL with one GPU per process, gloo on CPU (``device`` cpu or no GPU)."""
    global _ACCELERATOR
    if launched_world_size() <= 1:
        return ProcessInfo()
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"invalid config: device={device!r}: with {launched_world_size()} processes each process "
                          f"uses its own device (LOCAL_RANK); use auto, cuda or cpu")
    if _ACCELERATOR is None:
        from accelerate import Accelerator, DistributedType
        from accelerate.utils import DistributedDataParallelKwargs

        _refuse_sharding(os.environ.get("ACCELERATE_USE_FSDP", "") == "true" and "FSDP"
                         or os.environ.get("ACCELERATE_USE_DEEPSPEED", "") == "true" and "DEEPSPEED")
        cpu = device == "cpu" or not torch.cuda.is_available()
        # Precision is hrpo's --dtype: accelerate's autocast would make the policy pass differ from the rollout
        # and reference passes. Buffers (rotary tables) are constant and identical: no per-forward broadcast.
        accelerator = Accelerator(cpu=cpu, mixed_precision="no",
                                  kwargs_handlers=[DistributedDataParallelKwargs(broadcast_buffers=False)])
        if accelerator.distributed_type not in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
            _refuse_sharding(accelerator.distributed_type.value)
        _ACCELERATOR = accelerator
    acc = _ACCELERATOR
    return ProcessInfo(rank=acc.process_index, world_size=acc.num_processes, device=acc.device, accelerator=acc)


def _refuse_sharding(kind) -> None:
    if kind:
        raise ConfigError(
            f"accelerate distributed_type {kind} is not supported by hrpo train yet: the rollout and the reference "
            f"pass read the full, unsharded weights outside the wrapper, so only data-parallel (DDP) configs work "
            f"(configs/accelerate/ddp.yaml, ddp_multinode.yaml, cpu_2proc.yaml); see README, 'Multiple GPUs and "
            f"nodes'")


def check_divisible(prompts_per_step: int, world_size: int) -> None:
    """Raise ConfigError unless the step's prompts split evenly over the processes."""
    if prompts_per_step % world_size:
        raise ConfigError(f"invalid config: prompts_per_step={prompts_per_step!r}: must be divisible by the number "
                          f"of processes ({world_size}); prompts_per_step is global, each process rolls out "
                          f"prompts_per_step / {world_size} of them")


def local_prompts(prompts: list, info: ProcessInfo) -> list:
    """This process's contiguous share of the step's ``prompts`` (all of them with one process)."""
    share = len(prompts) // info.world_size
    return prompts[info.rank * share:(info.rank + 1) * share]


def local_rows(num_prompts: int, group_size: int, info: ProcessInfo) -> range:
    """Global indices of this process's completion rows (whole groups of ``group_size``)."""
    share = num_prompts // info.world_size * group_size
    return range(info.rank * share, (info.rank + 1) * share)


class _Forwarding:
    """Calls go through the wrapper (so DDP records the forward for its gradient hooks); attribute reads
    (``config``, ``get_input_embeddings``, ...) go to the unwrapped module."""

    def __init__(self, wrapped: torch.nn.Module, module: torch.nn.Module):
        self._wrapped, self._module = wrapped, module

    def __call__(self, *args, **kwargs):
        return self._wrapped(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._module, name)


@dataclass
class Prepared:
    """What the policy-gradient pass uses: the model and gate to call (wrapped with several processes) and the
    optimizer, plus the wrappers themselves (for ``no_sync``)."""

    model: object
    gate: object
    optimizer: torch.optim.Optimizer
    wrappers: tuple = ()


def prepare(info: ProcessInfo, model, gate, optimizer) -> Prepared:
    """Wrap the (peft) model, the gate and the optimizer with ``accelerator.prepare`` (DDP) when distributed;
    with one process return them unchanged. The scheduler stays unwrapped: it steps once per update."""
    if not info.distributed:
        return Prepared(model=model, gate=gate, optimizer=optimizer)
    acc = info.accelerator
    if gate is None:
        wrapped_model, optimizer = acc.prepare(model, optimizer)
        return Prepared(model=_Forwarding(wrapped_model, model), gate=None, optimizer=optimizer,
                        wrappers=(wrapped_model,))
    wrapped_model, wrapped_gate, optimizer = acc.prepare(model, gate, optimizer)
    return Prepared(model=_Forwarding(wrapped_model, model), gate=_Forwarding(wrapped_gate, gate),
                    optimizer=optimizer, wrappers=(wrapped_model, wrapped_gate))


def gradient_sync(info: ProcessInfo, prepared: Prepared, sync: bool):
    """Context for one micro-batch's forward and backward: gradients are all-reduced only when ``sync`` (the
    step's last micro-batch); earlier ones accumulate locally (``accelerator.no_sync``)."""
    if sync or not info.distributed:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    for wrapper in prepared.wrappers:
        stack.enter_context(info.accelerator.no_sync(wrapper))
    return stack


def backward(info: ProcessInfo, loss: torch.Tensor) -> None:
    """``loss.backward()``, through ``accelerator.backward`` when distributed."""
    if info.distributed:
        info.accelerator.backward(loss)
    else:
        loss.backward()


def any_process(info: ProcessInfo, flag: bool) -> bool:
    """True when ``flag`` is true in any process (so every process takes the same branch)."""
    if not info.distributed:
        return flag
    value = torch.tensor([float(flag)], device=info.device)
    torch.distributed.all_reduce(value, op=torch.distributed.ReduceOp.MAX)
    return bool(value.item() > 0)


def reduce_metrics(info: ProcessInfo, metrics: dict, weights: dict[str, float] | None = None) -> dict:
    """Combine one step's per-process ``metrics`` into global ones (identity with one process).

    Means over equal shares for per-sequence metrics, min/max of extrema, sums of throughputs, weighted means
    for keys in ``weights`` (e.g. a mean over thinking tokens weighted by this process's token count; where no
    process has any weight the local value is kept). Timings, grad norm and learning rate are this process's.
    Non-numeric values (sample text) are left as they are.
    """
    if not info.distributed:
        return metrics
    weights = weights or {}
    sums, maxes, plan = [], [], []
    for key, value in metrics.items():
        if key in MAIN_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if key in MAX_METRICS or key in MIN_METRICS:
            plan.append((key, "max" if key in MAX_METRICS else "min", len(maxes)))
            maxes.append(value if key in MAX_METRICS else -value)
        elif key in weights:
            w = float(weights[key])
            plan.append((key, "weighted", len(sums)))
            sums += [value * w if w > 0 else 0.0, w]
        else:
            plan.append((key, "sum" if key in SUM_METRICS else "mean", len(sums)))
            sums.append(value)
    summed = _all_reduce(sums, info, torch.distributed.ReduceOp.SUM)
    maxed = _all_reduce(maxes, info, torch.distributed.ReduceOp.MAX)
    out = dict(metrics)
    for key, how, i in plan:
        if how == "max":
            out[key] = _same_type(metrics[key], maxed[i])
        elif how == "min":
            out[key] = _same_type(metrics[key], -maxed[i])
        elif how == "sum":
            out[key] = _same_type(metrics[key], summed[i])
        elif how == "mean":
            out[key] = summed[i] / info.world_size
        elif summed[i + 1] > 0:
            out[key] = summed[i] / summed[i + 1]
    return out


def _all_reduce(values: list[float], info: ProcessInfo, op) -> list[float]:
    if not values:
        return []
    tensor = torch.tensor(values, dtype=torch.float64, device=info.device)
    torch.distributed.all_reduce(tensor, op=op)
    return tensor.tolist()


def _same_type(like, value: float):
    return int(value) if isinstance(like, int) and math.isfinite(value) else value


def broadcast(info: ProcessInfo, obj):
    """The main process's ``obj`` in every process (e.g. a run directory named after the clock)."""
    if not info.distributed:
        return obj
    from accelerate.utils import broadcast_object_list

    return broadcast_object_list([obj], from_process=0)[0]


def wait_for_everyone(info: ProcessInfo) -> None:
    """Barrier (no-op with one process): e.g. nobody goes on before the main process's checkpoint exists."""
    if info.distributed:
        info.accelerator.wait_for_everyone()
