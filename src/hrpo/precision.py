"""What ``dtype: auto`` means on this machine: bf16 where it is fast, fp32 elsewhere.

On CUDA bf16 is the default wherever the card supports it. On a CPU bf16 is fast only with native bf16
instructions (AVX512-BF16, AMX, Arm BF16); on an AVX2-only CPU its matmuls run on a slow conversion path, about
20x slower than fp32 in a training step. ``torch.backends.cpu.get_cpu_capability()`` does not tell the two
apart (it says ``AVX512`` with or without AVX512-BF16), so the choice comes from a short probe: one matmul with
its backward in each dtype, timed. ``HRPO_CPU_DTYPE=float32`` (or ``bfloat16``) in the environment replaces the
probe (the test suite sets it, so its results do not depend on the CPU).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass

import torch

from .config import ConfigError

NAMES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# bf16 is chosen on a CPU only when its probe matmul takes at most this fraction of the fp32 time.
BF16_MAX_TIME_RATIO = 0.8
# the probe's shape: (tokens x hidden) @ (hidden x MLP width) of a small model, about 0.2 GFLOP with backward
PROBE_SHAPE = (128, 576, 1536)


@dataclass(frozen=True)
class DtypeChoice:
    """The dtype a run uses and one line saying why."""

    dtype: torch.dtype
    reason: str

    @property
    def name(self) -> str:
        """'float32', 'bfloat16' or 'float16'."""
        return str(self.dtype).removeprefix("torch.")

    @property
    def summary(self) -> str:
        """The line a command prints: 'dtype float32 (auto: float32, ...)'."""
        return f"dtype {self.name} ({self.reason})"


def _matmul_seconds(dtype: torch.dtype, repeats: int = 3) -> float:
    """Best time in seconds of one PROBE_SHAPE matmul forward + backward in ``dtype`` on the CPU."""
    n, k, m = PROBE_SHAPE
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, k, generator=gen).to(dtype).requires_grad_()
    b = torch.randn(k, m, generator=gen).to(dtype).requires_grad_()
    best = float("inf")
    for i in range(repeats + 1):  # the first run warms up kernels and allocator and is not counted
        start = time.perf_counter()
        (a @ b).sum().backward()
        if i:
            best = min(best, time.perf_counter() - start)
    return best


@functools.lru_cache(maxsize=1)
def cpu_bf16_time_ratio() -> float:
    """Time of a bf16 matmul (forward + backward) over the fp32 one on this CPU: about 0.3 with native bf16,
    about 20 or more without. Measured once per process (well under a second)."""
    fp32 = _matmul_seconds(torch.float32)
    bf16 = _matmul_seconds(torch.bfloat16)
    fp32 = min(fp32, _matmul_seconds(torch.float32))  # interleaved, so a burst of load does not decide alone
    return bf16 / fp32


def choose_dtype(name: str, device: torch.device | str) -> DtypeChoice:
    """Resolve ``name`` ('auto', 'float32', 'bfloat16', 'float16') for ``device``.

    'auto' is bf16 on a CUDA device that supports it (else fp32), and on a CPU ``$HRPO_CPU_DTYPE`` when set,
    else bf16 only when the probe finds bf16 matmuls at most BF16_MAX_TIME_RATIO of the fp32 time, else fp32.
    """
    device = torch.device(device)
    if name != "auto":
        return DtypeChoice(NAMES[name], f"{name} (set with --dtype)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return DtypeChoice(torch.bfloat16, "auto: bfloat16 on CUDA")
        return DtypeChoice(torch.float32, "auto: float32, this CUDA device has no bf16 support")
    if device.type != "cpu":
        return DtypeChoice(torch.float32, f"auto: float32 on {device.type}")
    preset = os.environ.get("HRPO_CPU_DTYPE")
    if preset:
        if preset not in ("float32", "bfloat16"):
            raise ConfigError(f"HRPO_CPU_DTYPE={preset!r} in the environment: must be float32 or bfloat16")
        return DtypeChoice(NAMES[preset], f"auto: {preset} on CPU, set by HRPO_CPU_DTYPE")
    ratio = cpu_bf16_time_ratio()
    cpu = f"CPU capability {torch.backends.cpu.get_cpu_capability()}"
    if ratio <= BF16_MAX_TIME_RATIO:
        return DtypeChoice(torch.bfloat16, f"auto: bfloat16, {cpu}, a bf16 matmul takes {ratio:.2f}x the fp32 "
                                           f"time here (native bf16)")
    return DtypeChoice(torch.float32, f"auto: float32, {cpu}, a bf16 matmul takes {ratio:.1f}x the fp32 time "
                                      f"here (no native bf16); --dtype bfloat16 forces it")
