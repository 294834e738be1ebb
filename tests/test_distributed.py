"""Multi-process data-parallel training: 2 CPU processes (gloo) launched through `accelerate launch` make the
same updates as one process with the same global batch; only the main process writes; resume works."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from helpers import register, tiny_train_args
from hrpo.config import ConfigError, build_config
from hrpo.distributed import (MAIN_METRICS, ProcessInfo, check_divisible, local_prompts, local_rows,
                              reduce_metrics)
from hrpo.trainer import train

register()
ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "accelerate"
TIMING = {"timing/rollout_s", "timing/reference_s", "timing/policy_s", "timing/step_s", "rollout_tokens_per_s",
          "tokens_per_s"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flags(values: dict) -> list[str]:
    return [a for k, v in values.items() for a in ("--" + k.replace("_", "-"), str(v))]


def _launch(out: Path, *commands: list[str]) -> subprocess.CompletedProcess:
    """`accelerate launch` (2 processes, CPU) of tests/dist_driver.py running the given hrpo commands."""
    argv = [a for i, c in enumerate(commands) for a in ((["--next"] if i else []) + c)]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "cpu_2proc.yaml"),
           "--main_process_port", str(_free_port()), str(Path(__file__).parent / "dist_driver.py"), str(out),
           *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    try:
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot launch 2 processes on this machine: {exc}")
    if "Address already in use" in result.stderr or "EADDRINUSE" in result.stderr:
        pytest.skip("cannot launch 2 processes: the rendezvous port was taken")
    return result


def _state(checkpoint: Path) -> dict:
    return {**load_file(str(checkpoint / "adapter_model.safetensors")),
            **load_file(str(checkpoint / "gate.safetensors"))}


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def test_two_processes_match_one_process_and_resume(tmp_path, tiny_model_dirs):
    values = {**tiny_train_args(tiny_model_dirs["qwen2"], tmp_path / "single", steps=2), "device": "cpu"}
    single = train(build_config(cli_values=values), quiet=True)

    run = tmp_path / "multi"
    first = _flags({**values, "output_dir": run, "max_steps": 1}) + ["--quiet"]
    result = _launch(tmp_path, ["train", *first], ["train", "--resume", str(run), "--max-steps", "2", "--quiet"])
    assert result.returncode == 0, result.stderr[-4000:]
    assert (run / "checkpoint-1").is_dir() and (run / "checkpoint-2").is_dir()  # step 2 came from a resume

    a, b = _state(single / "checkpoint-2"), _state(run / "checkpoint-2")
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2 + 5  # LoRA A/B of 7 projections x 2 layers + gate
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"max |param(1 process) - param(2 processes)| = {diff:.3g}")
    assert diff <= 1e-5
    moved = _state(run / "checkpoint-1")
    assert max(float((moved[k] - b[k]).abs().max()) for k in b) > 1e-4  # step 2 really updated something

    written = _lines(run / "metrics.jsonl")  # the main process alone writes: one line per step
    assert [m["step"] for m in written] == [1, 2]
    reference = _lines(single / "metrics.jsonl")
    ranks = [_lines(tmp_path / f"metrics-rank{r}.jsonl") for r in (0, 1)]
    for step in range(2):
        for key, value in reference[step].items():
            if key in TIMING or not isinstance(value, (int, float)):
                continue
            for rank in ranks:  # every process holds the global (reduced) metrics of the single-process run
                assert rank[step][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (step, key)
        assert ranks[0][step]["reward"] == ranks[1][step]["reward"] == reference[step]["reward"]


def test_prompts_must_split_evenly_over_processes(tmp_path, tiny_model_dirs, monkeypatch):
    import hrpo.trainer

    with pytest.raises(ConfigError, match=r"prompts_per_step=3.*divisible by the number of processes \(2\)"):
        check_divisible(3, 2)
    check_divisible(4, 2)
    monkeypatch.setattr(hrpo.trainer, "process_info", lambda device: ProcessInfo(rank=0, world_size=4))
    values = {**tiny_train_args(tiny_model_dirs["qwen2"], tmp_path / "run"), "prompts_per_step": 6}
    with pytest.raises(ConfigError, match="prompts_per_step=6"):
        hrpo.trainer.setup(build_config(cli_values=values), log=lambda *a: None)
    assert not (tmp_path / "run").exists()  # rejected before anything was written or loaded


@pytest.mark.parametrize("variable", ["ACCELERATE_USE_FSDP", "ACCELERATE_USE_DEEPSPEED"])
def test_sharded_launches_are_refused_with_a_message(monkeypatch, variable):
    from hrpo.distributed import process_info

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv(variable, "true")
    with pytest.raises(ConfigError, match=r"not supported by hrpo train yet.*ddp\.yaml"):
        process_info("cpu")
    monkeypatch.delenv(variable)
    with pytest.raises(ConfigError, match=r"device='cuda:1'.*each process uses its own device"):
        process_info("cuda:1")


def test_shards_are_whole_groups_with_global_row_indices():
    prompts = list("abcdef")
    shards = [local_prompts(prompts, ProcessInfo(rank=r, world_size=3)) for r in range(3)]
    assert shards == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert [list(local_rows(6, 4, ProcessInfo(rank=r, world_size=3))) for r in (0, 2)] == \
        [list(range(0, 8)), list(range(16, 24))]
    assert local_rows(6, 4, ProcessInfo()) == range(24) and local_prompts(prompts, ProcessInfo()) == prompts


def test_one_process_metrics_pass_through_untouched():
    metrics = {"reward": 0.5, "hidden_ratio": float("nan"), "sample_completion": "x", "step": 3}
    assert reduce_metrics(ProcessInfo(), metrics, {"hidden_ratio": 0}) is metrics
    assert "grad_norm" in MAIN_METRICS and "step" in MAIN_METRICS


@pytest.mark.parametrize("name", ["ddp", "ddp_multinode", "fsdp", "zero2", "zero3", "cpu_2proc"])
def test_accelerate_configs_load(name):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    expected = {"fsdp": "FSDP", "zero2": "DEEPSPEED", "zero3": "DEEPSPEED"}.get(name, "MULTI_GPU")
    assert config.distributed_type.value == expected
    assert config.num_processes == (16 if name == "ddp_multinode" else 2 if name == "cpu_2proc" else 8)
    if name.startswith("zero"):
        assert config.deepspeed_config["zero_stage"] == int(name[-1])


def test_python_dash_m_hrpo_runs():
    result = subprocess.run([sys.executable, "-m", "hrpo", "train", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0 and "--prompts-per-step" in result.stdout
