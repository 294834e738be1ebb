"""Fault tolerance: signals, kill -9 during a save, non-finite steps, reward errors and hangs, out-of-memory."""

import json
import multiprocessing
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from helpers import register, tiny_train_args
from hrpo import faults
from hrpo.checkpoint import find_checkpoint, list_checkpoints, load_checkpoint, save_checkpoint
from hrpo.cli import main
from hrpo.config import build_config
from hrpo.faults import GracefulStop, NonFiniteError, TrainingInterrupted, contained_rewards
from hrpo.trainer import setup, train, train_step

register()


def _train_argv(model_dir, out, steps, *extra):
    return ["train", "--model", str(model_dir), "--task", "parity", "--output-dir", str(out), "--max-steps",
            str(steps), "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--save-every",
            "2", "--quiet", *extra]


def _metrics(run_dir):
    return [json.loads(x) for x in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


# ----------------------------------------------------------------------------------------------- rewards

def _flaky_reward(completion, example):
    if completion == "raise":
        raise ValueError("pathological answer")
    if completion == "nan":
        return float("nan")
    if completion == "sleep":
        time.sleep(60)
    if completion == "regex":  # catastrophic backtracking: hangs inside C code
        import re

        re.match(r"(a+)+$", "a" * 40 + "b")
    return float(len(completion))


def test_reward_errors_and_non_finite_values_score_zero_and_are_counted(caplog):
    completions = ["ok", "raise", "four", "nan"]
    with caplog.at_level("WARNING", logger="hrpo"):
        batch = contained_rewards(_flaky_reward, completions, [{}] * 4, timeout=5.0, step=3)
    assert batch.rewards == [2.0, 0.0, 4.0, 0.0]
    assert [i for i, _ in batch.failures] == [1, 3]
    assert "ValueError: pathological answer" in batch.failures[0][1] and "nan" in batch.failures[1][1]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "step 3: 2 of 4 reward calls failed" in lines[0]


@pytest.mark.parametrize("hang", ["sleep", "regex"])
def test_hanging_reward_is_killed_after_the_timeout(hang):
    t0 = time.perf_counter()
    batch = contained_rewards(_flaky_reward, ["a", hang, "abc"], [{}] * 3, timeout=0.5)
    elapsed = time.perf_counter() - t0
    assert batch.rewards == [1.0, 0.0, 3.0]  # the calls after the hung one still run (in a fresh worker)
    assert batch.failures == [(1, "timed out after 0.5 s")]
    assert elapsed < 4.0


def test_reward_timeout_works_off_the_main_thread():
    out = {}
    thread = threading.Thread(target=lambda: out.update(b=contained_rewards(_flaky_reward, ["sleep", "xy"],
                                                                              [{}] * 2, timeout=0.3)))
    thread.start()
    thread.join(10)
    assert out["b"].rewards == [0.0, 2.0] and out["b"].failures[0][0] == 0


def test_reward_timeout_zero_runs_in_process_and_still_contains_errors():
    batch = contained_rewards(_flaky_reward, ["raise", "abc"], [{}] * 2, timeout=0)
    assert batch.rewards == [0.0, 3.0] and batch.failures[0][0] == 0


class _RaisingTask:
    """The parity task, but every odd-length completion makes its reward function raise."""

    name = "raising"
    marker = "####"
    procedural = True

    def __init__(self, **kwargs):
        pass

    def examples(self, n, seed=0):
        return [{"question": f"Count to {i % 7 + 2}.", "answer": ""} for i in range(n)]

    def messages(self, example):
        return [{"role": "user", "content": example["question"]}]

    def reward(self, completion, example):
        if len(completion) % 2:
            raise RecursionError("maximum recursion depth exceeded while parsing LaTeX")
        return 1.0


def test_train_step_reports_reward_failures(tmp_path, tiny_model_dirs):
    from hrpo import tasks

    tasks.register("raising", _RaisingTask)
    cfg = build_config(cli_values={**tiny_train_args(tiny_model_dirs["qwen2"], tmp_path / "run"), "task": "raising"})
    trainer = setup(cfg, log=lambda *a: None)
    metrics = [train_step(trainer) for _ in range(2)]
    failures = [m["rewards/failures"] for m in metrics]
    assert sum(failures) > 0 and all(0 <= f <= 8 for f in failures)
    for m in metrics:  # a failed call scores 0, a good one 1
        assert m["reward"] == pytest.approx(1 - m["rewards/failures"] / 8)


# ----------------------------------------------------------------------------------------------- non-finite

@pytest.fixture
def nan_in_training_forward(monkeypatch):
    """The gate outputs NaN whenever gradients are on (the training forward); rollouts stay finite."""
    from hrpo.gate import HybridGate

    original = HybridGate.forward

    def forward(self, *args, **kwargs):
        mixed, a = original(self, *args, **kwargs)
        return (mixed * float("nan"), a) if torch.is_grad_enabled() else (mixed, a)

    monkeypatch.setattr(HybridGate, "forward", forward)


def test_consecutive_non_finite_steps_stop_with_a_clear_error(tmp_path, tiny_model_dirs, capsys,
                                                              nan_in_training_forward):
    out = tmp_path / "run"
    code = main(_train_argv(tiny_model_dirs["llama"], out, 10, "--max-nonfinite-steps", "2"))
    err = capsys.readouterr().err
    assert code == 1
    assert "2 consecutive steps (up to step 2) had a non-finite loss or gradient" in err
    assert "max_nonfinite_steps=2" in err and "Traceback" not in err
    assert [(m["step"], m["skipped_update"]) for m in _metrics(out)] == [(1, 1), (2, 1)]
    assert not list_checkpoints(out)


def test_max_nonfinite_steps_zero_never_stops_and_saves_finite_weights(tmp_path, tiny_model_dirs,
                                                                      nan_in_training_forward):
    values = {**tiny_train_args(tiny_model_dirs["llama"], tmp_path / "run", steps=2), "max_nonfinite_steps": 0}
    run = train(build_config(cli_values=values), quiet=True)
    assert [m["skipped_update"] for m in _metrics(run)] == [1, 1]
    from safetensors.torch import load_file

    weights = load_file(str(run / "checkpoint-2" / "adapter_model.safetensors"))
    assert weights and all(bool(torch.isfinite(t).all()) for t in weights.values())


def test_checkpoint_with_nan_parameters_is_refused(tmp_path, tiny_model_dirs):
    trainer = setup(build_config(cli_values=tiny_train_args(tiny_model_dirs["qwen2"], tmp_path / "run")),
                    log=lambda *a: None)
    save_checkpoint(trainer.run_dir, 1, trainer.model, trainer.gate, trainer.optimizer, trainer.scheduler)
    with torch.no_grad():
        trainer.gate.Lambda[0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint-2: 1 parameter tensors hold NaN.*"
                                             r"gate\.Lambda.*checkpoint-1"):
        save_checkpoint(trainer.run_dir, 2, trainer.model, trainer.gate, trainer.optimizer, trainer.scheduler)
    assert sorted(p.name for p in trainer.run_dir.iterdir() if "checkpoint" in p.name) == ["checkpoint-1"]


# ----------------------------------------------------------------------------------------------- OOM

def _oom():
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")


def generate(*args, **kwargs):  # stands in for hrpo.trainer.generate (the rollout)
    _oom()


def completion_logprobs(*args, **kwargs):  # stands in for the policy forward of the loss (hrpo.update)
    _oom()


@pytest.mark.parametrize("where, fake, phase", [("trainer", generate, "the rollout"),
                                                 ("update", completion_logprobs, "the policy forward")])
def test_out_of_memory_names_the_settings_to_lower(tmp_path, tiny_model_dirs, capsys, monkeypatch, where, fake,
                                                   phase):
    import importlib

    monkeypatch.setattr(importlib.import_module(f"hrpo.{where}"), fake.__name__, fake)
    code = main(_train_argv(tiny_model_dirs["llama"], tmp_path / "run", 2, "--beta", "0"))  # no reference pass
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert f"out of memory during {phase} of step 1: CUDA out of memory. Tried to allocate 20.00 GiB" in err
    for setting in ("micro_batch_size (now 8)", "group_size (now 2)", "max_new_tokens (now 4)",
                    "max_prompt_length (now 1024)", "--gradient-checkpointing"):
        assert setting in err, setting


# ----------------------------------------------------------------------------------------------- signals

def test_first_signal_requests_a_stop_and_the_second_aborts(tmp_path):
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        with GracefulStop(tmp_path) as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert stop.requested and stop.signum == signal.SIGTERM
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # the handler raises here
    exc = info.value
    assert exc.aborted and exc.exit_code == 130 and exc.checkpoint is None
    assert "before the first checkpoint" in str(exc)
    assert signal.getsignal(signal.SIGTERM) is before  # handlers restored


_LONG_NATIVE_OP = """
import sys, torch
sys.path.insert(0, {src!r})
from hrpo.faults import GracefulStop
torch.set_num_threads(1)
n = 2500
perm = torch.eye(n)[torch.randperm(n, generator=torch.Generator().manual_seed(0))]  # powers stay exact 0/1
with GracefulStop({run_dir!r}):
    print("inside", flush=True)
    torch.linalg.matrix_power(perm, (1 << 62) - 1)  # one ATen call: about 120 matmuls of 2500^2, most of a minute
print("the operation returned", flush=True)
"""


def _wait_for(predicate, seconds: float, what: str, proc) -> None:
    deadline = time.time() + seconds
    while not predicate():
        assert proc.poll() is None, f"exited early while waiting for {what}"
        assert time.time() < deadline, f"no {what} within {seconds} s"
        time.sleep(0.05)


def test_second_signal_stops_a_step_held_inside_one_long_native_op(tmp_path):
    """A Python handler cannot run inside one C++ call; the first signal is still acknowledged within a second,
    the second ends the process (exit 130) long before the call would return, and the last checkpoint stays."""
    ckpt = tmp_path / "run" / "checkpoint-3"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_bytes(b"complete")
    code = _LONG_NATIVE_OP.format(src=str(Path(faults.__file__).parents[1]), run_dir=str(tmp_path / "run"))
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    with out.open("w") as out_f, err.open("w") as err_f:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=out_f, stderr=err_f)
    try:
        _wait_for(lambda: "inside" in out.read_text(), 60, "start", proc)
        time.sleep(0.5)  # well inside matrix_power now
        start = time.time()
        proc.send_signal(signal.SIGINT)
        _wait_for(lambda: "SIGINT received" in err.read_text(), 5, "acknowledgement of the first SIGINT", proc)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
        assert time.time() - start < 12
    finally:
        proc.kill()
    assert "the operation returned" not in out.read_text()  # it really was stopped inside the call
    assert "stopped at once by a second SIGINT" in err.read_text() and "checkpoint-3" in err.read_text()
    assert (ckpt / "trainer_state.pt").read_bytes() == b"complete"

def _spawn_train(model_dir, out):
    """A real `hrpo train` in a child process: a tiny model on the embedded arithmetic task, many steps."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "hrpo", "train", "--model", str(model_dir), "--task", "arithmetic",
            "--output-dir", str(out), "--max-steps", "500", "--prompts-per-step", "1", "--group-size", "2",
            "--max-new-tokens", "3", "--max-prompt-length", "64", "--save-every", "500", "--num-train-examples",
            "8", "--quiet"]
    return subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_checkpoints_exits_and_resume_continues(tmp_path, tiny_model_dirs, signum, code):
    out = tmp_path / "run"
    proc = _spawn_train(tiny_model_dirs["llama"], out)
    try:
        deadline = time.time() + 120
        while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").read_text().strip()):
            assert proc.poll() is None, proc.communicate()[1]
            assert time.time() < deadline, "no step logged"
            time.sleep(0.1)
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == code, err
    steps = len(_metrics(out))
    assert steps >= 1 and f"checkpoint written: {out / f'checkpoint-{steps}'}" in err
    assert f"Resume with: hrpo train --resume {out}" in err and "Traceback" not in err
    assert find_checkpoint(out) == out / f"checkpoint-{steps}"
    assert (out / "plots" / "reward.png").is_file()  # the plots of the steps done
    assert main(["train", "--resume", str(out), "--max-steps", str(steps + 1), "--quiet"]) == 0
    assert [m["step"] for m in _metrics(out)] == list(range(1, steps + 2))
    assert find_checkpoint(out) == out / f"checkpoint-{steps + 1}"


# ----------------------------------------------------------------------------------------------- kill -9

def _tiny_state(model_dir):
    from hrpo.gate import HybridGate
    from hrpo.models import add_lora, load_model, lora_parameters

    model = add_lora(load_model(str(model_dir)).model, r=4, alpha=8)
    gate = HybridGate(32, 0.99, 0.999, 8.0)
    params = [p for _, p in lora_parameters(model)] + list(gate.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    return model, gate, optimizer, scheduler, params


def _fill(params, value):
    with torch.no_grad():
        for p in params:
            p.fill_(value)


def _save_forever(run_dir, state, first_step, conn):
    """Child process: save checkpoints (every trainable value = the step) in a loop, each save slowed down."""
    import hrpo.checkpoint as ck

    model, gate, optimizer, scheduler, params = state
    real_save, real_gate = ck.torch.save, ck.save_gate
    ck.torch.save = lambda *a, **k: (real_save(*a, **k), time.sleep(0.03))
    ck.save_gate = lambda *a, **k: (real_gate(*a, **k), time.sleep(0.03))
    step = first_step
    while True:
        _fill(params, float(step))
        save_checkpoint(run_dir, step, model, gate, optimizer, scheduler, keep=2)
        conn.send(step)
        step += 1


def test_kill_9_during_saves_leaves_the_last_complete_checkpoint(tmp_path, tiny_model_dirs):
    state = _tiny_state(tiny_model_dirs["llama"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    ctx = multiprocessing.get_context("fork")
    last, leftovers = None, []
    for round_, delay in enumerate((0.05, 0.17, 0.29, 0.41)):
        recv, send = ctx.Pipe(duplex=False)
        proc = ctx.Process(target=_save_forever, args=(run_dir, state, 100 * (round_ + 1), send), daemon=True)
        proc.start()
        send.close()
        assert recv.poll(30), "the child never saved"
        last = recv.recv()
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.join()
        try:
            while recv.poll():
                last = recv.recv()
        except EOFError:
            pass
        leftovers += [p.name for p in run_dir.iterdir() if p.name.startswith((".tmp-", ".trash-"))]

        ckpt = find_checkpoint(run_dir)
        step = int(ckpt.name.split("-")[1])
        assert step in (last, last + 1)  # +1: killed after the rename, before it reported
        model, gate, optimizer, scheduler, params = _tiny_state(tiny_model_dirs["llama"])
        assert load_checkpoint(ckpt, model, gate, optimizer, scheduler) == step
        assert all(bool((p == float(step)).all()) for p in params)  # one consistent state, not a mix
        assert all(p.name.startswith("checkpoint-") for p in list_checkpoints(run_dir))
    assert leftovers, "no kill landed inside a save"
    model, gate, optimizer, scheduler, params = state
    save_checkpoint(run_dir, 999, model, gate, optimizer, scheduler, keep=2)  # the next save cleans up
    assert len(list_checkpoints(run_dir)) == 2 and find_checkpoint(run_dir).name == "checkpoint-999"
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".")]


def test_half_written_metrics_line_is_dropped_on_resume(tmp_path):
    from hrpo.trainer import _truncate_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "reward": 0.5}\n{"step": 2, "reward": 0.25}\n{"step": 3, "rew')
    _truncate_metrics(path, 2)
    assert [json.loads(x)["step"] for x in path.read_text().splitlines()] == [1, 2]


def test_interrupted_message_and_exit_codes(tmp_path):
    exc = TrainingInterrupted(signal.SIGTERM, tmp_path, tmp_path / "checkpoint-7")
    assert exc.exit_code == 143
    assert str(exc) == (f"stopped by SIGTERM; checkpoint written: {tmp_path / 'checkpoint-7'}\n"
                        f"Resume with: hrpo train --resume {tmp_path}")
    assert faults.DeviceOutOfMemoryError("x").exit_code == 2 and NonFiniteError("x").exit_code == 1


@pytest.mark.parametrize("target, phase", [("reference_logprobs", "the reference forward"),
                                           ("periodic_eval", "the periodic evaluation")])
def test_out_of_memory_inside_the_model_names_the_outer_phase(tmp_path, tiny_model_dirs, capsys, monkeypatch,
                                                               target, phase):
    """Raised deep inside a Linear or Embedding layer (the fast rollout engine calls only the embedding as a
    module): the reference forward runs completion_logprobs and the evaluation the rollout, so the phase is the
    outermost one found in the traceback."""
    import hrpo.trainer

    inside = {"on": False}

    def failing(module_forward):
        def forward(self, *args, **kwargs):
            if inside["on"]:
                _oom()
            return module_forward(self, *args, **kwargs)
        return forward

    original = getattr(hrpo.trainer, target)

    def during(*args, **kwargs):
        inside["on"] = True
        try:
            return original(*args, **kwargs)
        finally:
            inside["on"] = False

    for layer in (torch.nn.Linear, torch.nn.Embedding):
        monkeypatch.setattr(layer, "forward", failing(layer.forward))
    monkeypatch.setattr(hrpo.trainer, target, during)
    argv = _train_argv(tiny_model_dirs["llama"], tmp_path / "run", 1) + ["--beta", "0.01"]
    if target == "periodic_eval":
        argv += ["--eval-task", "arithmetic", "--eval-every", "1", "--eval-limit", "2"]
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and f"out of memory during {phase} of step 1" in err


_SLOW_REWARDS = """
import os, signal, sys, time
sys.path.insert(0, {src!r})
from hrpo.faults import GracefulStop, contained_rewards
def reward(completion, example):
    open({pids!r}, "a").write(f"{{os.getpid()}}\\n")
    time.sleep({sleep})
    return 1.0
with GracefulStop({run_dir!r}) as stop:
    batch = contained_rewards(reward, ["a", "b", "c"], [{{}}] * 3, timeout={timeout})
print(batch.rewards, batch.failures, stop.requested, flush=True)
"""


def _slow_rewards(tmp_path, sleep, timeout):
    pids = tmp_path / "pids"
    code = _SLOW_REWARDS.format(src=str(Path(faults.__file__).parents[1]), pids=str(pids), sleep=sleep,
                                run_dir=str(tmp_path), timeout=timeout)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # its own process group, as under torchrun
    deadline = time.time() + 60
    while not (pids.is_file() and pids.read_text().strip()):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    return proc, int(pids.read_text().split()[0])


def test_a_launcher_sigterm_to_the_process_group_does_not_fail_a_reward_call(tmp_path):
    """torchrun, accelerate and Slurm signal the whole group: the step still finishes with every reward."""
    proc, _ = _slow_rewards(tmp_path, sleep=0.5, timeout=30)
    os.killpg(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert out.strip() == "[1.0, 1.0, 1.0] [] True", err


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux only")
def test_a_hung_reward_process_dies_with_a_killed_trainer(tmp_path):
    proc, worker = _slow_rewards(tmp_path, sleep=600, timeout=600)
    assert _alive(worker)
    proc.kill()  # kill -9 of the trainer alone
    proc.communicate(timeout=30)
    deadline = time.time() + 10
    while _alive(worker) and time.time() < deadline:
        time.sleep(0.05)
    if _alive(worker):
        os.kill(worker, signal.SIGKILL)
        pytest.fail("the reward worker outlived its parent")
