"""Fault tolerance for training runs: errors the CLI prints without a traceback, a graceful stop on
SIGINT/SIGTERM, a stop after repeated non-finite updates, a clear message on device out-of-memory, and reward
calls contained in a killable child process (errors and hangs give reward 0).

Reward time limits use a forked worker process (POSIX ``fork``), not ``signal.alarm``: an alarm only works on
the main thread and cannot interrupt C code (a huge sympy power, a catastrophic regex), while a child process
can always be killed. The worker inherits the task and the completions, so nothing is pickled but the results.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import signal
import sys
import threading
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

# the errors are importable from here too, as before hrpo.errors existed
from .errors import (RESUME_HINT, DeviceOutOfMemoryError, NonFiniteError, TrainingError,  # noqa: F401
                     TrainingInterrupted)
from .run_files import newest_checkpoint

logger = logging.getLogger("hrpo")


# ----------------------------------------------------------------------------------------------- signals

class GracefulStop:
    """Context manager for the training loop: the first SIGINT/SIGTERM sets ``signum`` (the loop finishes
    the current step, checkpoints and stops); a second one raises :class:`TrainingInterrupted` at once.
    Handlers are installed only on the main thread and restored on exit.

    A Python signal handler runs only between bytecodes, so during one long native operation (a minutes-long
    bf16 backward on a CPU without native bf16) it would wait for the operation to end. A watcher thread
    therefore hears every signal at once through ``signal.set_wakeup_fd``: it acknowledges the first one
    within ``ACK_SECONDS`` if the handler has not, and on a second one that the handler has not turned into
    :class:`TrainingInterrupted` within ``ACK_SECONDS``, it ends the process itself (``os._exit(128 +
    signal)``, as the default action would). Checkpoints are written atomically, so the last complete one
    stays valid.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)
    ACK_SECONDS = 0.5

    def __init__(self, run_dir: Path | None = None) -> None:
        self.run_dir = run_dir
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd = -1  # what set_wakeup_fd had before (-1: none)
        self._wakeup_write_fd: int | None = None  # the pipe's write end; the watcher owns the read end
        self._settled = threading.Event()  # the context exited, or the handler raised
        self._announced = threading.Lock()
        self._announce_done = False

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def should_stop(self, combine: Callable[[bool], bool] = bool) -> bool:
        """Whether to stop before the next step; ``combine`` makes every process agree (any one stops all)."""
        if combine(self.requested) and self.signum is None:
            self.signum = signal.SIGTERM  # another process was signalled
        return self.requested

    def _stopped_at_once(self, signum: int) -> TrainingInterrupted:
        last = newest_checkpoint(self.run_dir) if self.run_dir is not None else None
        return TrainingInterrupted(signum, self.run_dir, last, aborted=True)

    def _announce(self, signum: int) -> None:
        """Say once that the first signal was taken (from the handler or the watcher, whichever is first)."""
        with self._announced:
            if self._announce_done:
                return
            self._announce_done = True
        name = signal.Signals(signum).name
        # os.write: no locks, safe inside a signal handler even while the progress bar holds its console
        os.write(2, f"\n{name} received: finishing this step, then writing a checkpoint "
                    f"(send it again to stop at once without one)\n".encode())

    def _handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            self._settled.set()
            raise self._stopped_at_once(signum)
        self.signum = signum
        self._announce(signum)

    def _watch(self, read_fd: int) -> None:
        """Watcher thread: one byte per signal delivered, written by the C-level handler."""
        count = 0
        with open(read_fd, "rb", buffering=0) as pipe:  # closes the read end when the watcher ends
            while data := pipe.read(64):  # b'' once __exit__ closed the write end
                for signum in data:
                    if signum not in self.SIGNALS:
                        continue
                    count += 1
                    if self._settled.wait(self.ACK_SECONDS):
                        return
                    if count == 1:
                        self._announce(signum)  # the main thread is inside a native operation
                    else:  # the handler could not run: stop the process the way the default action would
                        os.write(2, f"\n{self._stopped_at_once(signum)}\n".encode())
                        os._exit(128 + signum)

    def __enter__(self) -> GracefulStop:
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            read_fd, write_fd = os.pipe()
            os.set_blocking(write_fd, False)  # set_wakeup_fd requires it; the C handler never blocks
            self._wakeup_write_fd = write_fd
            self._previous_wakeup_fd = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
            threading.Thread(target=self._watch, args=(read_fd,), name="hrpo-signal-watcher", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._settled.set()
        if self._wakeup_write_fd is not None:
            signal.set_wakeup_fd(self._previous_wakeup_fd)
            os.close(self._wakeup_write_fd)  # the watcher reads EOF, closes the read end and ends
            self._wakeup_write_fd = None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()


# ----------------------------------------------------------------------------------------------- non-finite

@dataclass
class NonFiniteGuard:
    """Counts consecutive skipped (non-finite) updates; raises :class:`NonFiniteError` at ``limit``
    (0 = never)."""

    limit: int
    consecutive: int = 0

    def update(self, metrics: dict) -> None:
        if not metrics.get("skipped_update"):
            self.consecutive = 0
            return
        self.consecutive += 1
        step = metrics.get("step")
        logger.warning("step %s: non-finite loss or gradient (loss=%s, grad_norm=%s): update skipped (%d in a row)",
                       step, metrics.get("loss"), metrics.get("grad_norm"), self.consecutive)
        if self.limit and self.consecutive >= self.limit:
            raise NonFiniteError(
                f"{self.consecutive} consecutive steps (up to step {step}) had a non-finite loss or gradient "
                f"(loss={metrics.get('loss')}, grad_norm={metrics.get('grad_norm')}); their updates were skipped "
                f"and the run stopped (max_nonfinite_steps={self.limit}). Lower lr / gate_lr / lambda_lr, keep "
                f"max_grad_norm > 0, or use dtype float32; --max-nonfinite-steps 0 never stops.")


# ----------------------------------------------------------------------------------------------- OOM

OOM_SETTINGS = ("micro_batch_size", "group_size", "prompts_per_step", "max_new_tokens", "max_prompt_length")

# function (or hrpo module) in the traceback, outermost first -> phase named in the message (the reference
# forward runs completion_logprobs inside reference_logprobs, the periodic evaluation the rollout inside evaluate)
_ROLLOUT_FILES = ("rollout.py", "sampling.py", "eager.py", "static.py", "graph.py", "state.py", "layers.py",
                  "weights.py", "decode_attention.py")
_PHASES = {"generate": "the rollout", **dict.fromkeys(_ROLLOUT_FILES, "the rollout"),
           "reference_logprobs": "the reference forward", "completion_logprobs": "the policy forward",
           "hrpo_loss": "the loss", "backward": "the backward pass", "periodic_eval": "the periodic evaluation",
           "evaluate": "the periodic evaluation"}


def _oom_phase(exc: BaseException) -> str:
    for frame in traceback.extract_tb(exc.__traceback__):
        for key in (frame.name, Path(frame.filename).name if "hrpo" in frame.filename else None):
            if key in _PHASES:
                return _PHASES[key]
    return "the training step"


def oom_message(cfg, exc: BaseException, step: int) -> str:
    """What ran out of memory and which settings (with their current values) to lower."""
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    values = ", ".join(f"{key} (now {getattr(cfg, key)})" for key in OOM_SETTINGS)
    checkpointing = "" if cfg.gradient_checkpointing else " or turn on --gradient-checkpointing"
    return (f"out of memory during {_oom_phase(exc)} of step {step + 1}: {first}\n"
            f"Lower one of {values}{checkpointing}; a smaller micro_batch_size keeps the results the same "
            f"(up to float rounding; a multiple of group_size keeps sharing each prompt's forward).")


@contextmanager
def oom_guard(cfg, step: int):
    """Turn ``torch.OutOfMemoryError`` (CUDA's included) raised inside into :class:`DeviceOutOfMemoryError`."""
    import torch

    try:
        yield
    except torch.OutOfMemoryError as exc:
        message = oom_message(cfg, exc, step)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise DeviceOutOfMemoryError(message) from None


# ----------------------------------------------------------------------------------------------- rewards

@dataclass
class RewardBatch:
    """Rewards of one step, and ``failures``: (index, reason) of each call that raised, hung or returned
    something that is not a finite number (those got reward 0)."""

    rewards: list[float]
    failures: list[tuple[int, str]] = field(default_factory=list)


def _one_reward(fn: Callable, completion: str, example: dict) -> tuple[float | None, str | None]:
    try:
        value = float(fn(completion, example))
    except Exception as exc:  # noqa: BLE001 - any failure of a reward function means reward 0
        return None, f"{type(exc).__name__}: {exc}"[:300]
    if not math.isfinite(value):
        return None, f"returned {value}"
    return value, None


def _die_with_parent(parent: int) -> None:
    """Linux: have the kernel SIGKILL this process when its parent dies (even by SIGKILL), so a hung reward
    call never outlives the trainer."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _reward_worker(fn, completions, examples, start, conn, parent: int) -> None:
    # Ctrl-C, and the SIGTERM of launchers (torchrun, accelerate, Slurm), reach the whole process group: the
    # parent decides (it finishes the step, then stops this worker with SIGKILL).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:  # the parent's GracefulStop pipe is inherited: this process's signals are not the trainer's
        signal.set_wakeup_fd(-1)
    except ValueError:  # only the main thread may change it; then a stray byte is all it can cost
        pass
    _die_with_parent(parent)
    for i in range(start, len(completions)):
        conn.send((i, *_one_reward(fn, completions[i], examples[i])))
    conn.close()


def _start_worker(ctx, fn, completions, examples, start):
    recv, send = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_reward_worker, args=(fn, completions, examples, start, send, os.getpid()),
                       daemon=True)
    for stream in (sys.stdout, sys.stderr):  # or the child would print the parent's buffered text again
        stream.flush()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # Python >= 3.12 warns on fork with threads
        proc.start()
    send.close()
    return proc, recv


def _rewards_in_child(fn, completions, examples, timeout: float) -> RewardBatch:
    """Score in a forked worker; a call that takes longer than ``timeout`` kills the worker, scores 0, and a
    fresh worker carries on with the next completion."""
    ctx = multiprocessing.get_context("fork")
    n = len(completions)
    batch = RewardBatch(rewards=[0.0] * n)
    i = 0
    while i < n:
        proc, recv = _start_worker(ctx, fn, completions, examples, i)
        try:
            while i < n:
                if not recv.poll(timeout):
                    batch.failures.append((i, f"timed out after {timeout:g} s"))
                    i += 1
                    break
                try:
                    j, value, error = recv.recv()
                except EOFError:
                    proc.join(1.0)
                    batch.failures.append((i, f"the reward process died (exit code {proc.exitcode})"))
                    i += 1
                    break
                if error is None:
                    batch.rewards[j] = value
                else:
                    batch.failures.append((j, error))
                i = j + 1
        finally:
            if proc.is_alive():
                proc.kill()
            proc.join()
            recv.close()
    return batch


def contained_rewards(fn: Callable[[str, dict], float], completions: Sequence[str], examples: Sequence[dict],
                      timeout: float = 5.0, step: int | None = None) -> RewardBatch:
    """``fn(completion, example)`` for every pair, contained: an exception, a non-finite value or a call longer
    than ``timeout`` seconds gives reward 0 and is listed in ``failures`` (one warning line per batch).

    ``timeout > 0`` runs the calls in a forked worker process that is killed on a hang (works from any
    thread); ``timeout == 0`` (or no ``fork`` on this platform) calls ``fn`` in-process, errors still contained.
    """
    completions, examples = list(completions), list(examples)
    if timeout > 0 and "fork" in multiprocessing.get_all_start_methods():
        batch = _rewards_in_child(fn, completions, examples, timeout)
    else:
        batch = RewardBatch(rewards=[0.0] * len(completions))
        for i, (c, ex) in enumerate(zip(completions, examples)):
            value, error = _one_reward(fn, c, ex)
            if error is None:
                batch.rewards[i] = value
            else:
                batch.failures.append((i, error))
    if batch.failures:
        i, why = batch.failures[0]
        where = f"step {step}: " if step is not None else ""
        logger.warning("%s%d of %d reward calls failed and scored 0 (first: completion %d: %s; text %r)", where,
                       len(batch.failures), len(completions), i, why, completions[i][:80])
    return batch
