"""Run directories are never mixed up: a fresh `hrpo train` refuses a directory that already holds a run, and
`--resume` refuses overrides that would not continue the same run (another mode, model, LoRA rank, ...) or a
``--max-steps`` below the step the run is already at. Every refusal is a usage error (exit 2, no traceback)
that writes nothing."""

import json
import shutil

import pytest
import torch

from helpers import register
from hrpo.cli import main
from hrpo.config import ConfigError, build_config, load_yaml

register()


def _argv(model_dir, out, steps, *extra):
    return ["train", "--model", str(model_dir), "--task", "parity", "--output-dir", str(out),
            "--max-steps", str(steps), "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4",
            "--save-every", "1", "--quiet", *extra]


@pytest.fixture(scope="module")
def run3(tmp_path_factory, tiny_model_dirs):
    """A finished 3-step hybrid run (keeps checkpoint-2 and checkpoint-3)."""
    run = tmp_path_factory.mktemp("run-dir") / "run1"
    assert main(_argv(tiny_model_dirs["llama"], run, 3)) == 0
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    return run


def _snapshot(run):
    """Every file of the run directory (plots aside) and its bytes."""
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*"))
            if p.is_file() and "plots" not in p.parts}


def _copy(run, dst):
    shutil.copytree(run, dst)
    return dst


def _fails(argv, capsys):
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("hrpo train: error: ") and "Traceback" not in err
    return err


# ------------------------------------------------------------------------------------- fresh runs


def test_fresh_train_refuses_a_directory_holding_checkpoints(run3, tmp_path, tiny_model_dirs, capsys):
    run2 = _copy(run3, tmp_path / "run2")
    before = _snapshot(run2)
    err = _fails(_argv(tiny_model_dirs["llama"], run2, 1, "--mode", "discrete"), capsys)
    assert str(run2) in err and "checkpoint-3" in err
    assert f"--resume {run2}" in err and "--output-dir" in err
    assert _snapshot(run2) == before  # the old run is untouched: config, metrics and both checkpoints


def test_fresh_train_refuses_a_directory_holding_metrics(tmp_path, tiny_model_dirs, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1, "reward": 0.5}\n')
    err = _fails(_argv(tiny_model_dirs["llama"], out, 1), capsys)
    assert str(out) in err and "metrics.jsonl" in err and "--output-dir" in err
    assert (out / "metrics.jsonl").read_text() == '{"step": 1, "reward": 0.5}\n'
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_fresh_train_into_an_existing_empty_directory_is_fine(tmp_path, tiny_model_dirs):
    out = tmp_path / "empty"
    out.mkdir()
    assert main(_argv(tiny_model_dirs["llama"], out, 1, "--mode", "discrete")) == 0
    assert (out / "checkpoint-1").is_dir() and len((out / "metrics.jsonl").read_text().splitlines()) == 1


# ------------------------------------------------------------------------------------- resume overrides


@pytest.mark.parametrize("flag, value, key, saved", [
    ("--mode", "discrete", "mode", "hybrid"),
    ("--lora-r", "8", "lora_r", "32"),
    ("--lora-alpha", "16", "lora_alpha", "64"),
    ("--r-min", "0.5", "r_min", "0.99"),
    ("--gate-c", "2.0", "gate_c", "8.0"),
    ("--dtype", "bfloat16", "dtype", "float32"),  # auto resolved (HRPO_CPU_DTYPE=float32 in the suite)
    ("--seed", "7", "seed", "42"),
    ("--group-size", "4", "group_size", "2"),
    ("--task", "arithmetic", "task", "parity"),
])
def test_resume_refuses_overrides_that_change_the_run(run3, tmp_path, capsys, flag, value, key, saved):
    run = _copy(run3, tmp_path / "run")
    before = _snapshot(run)
    err = _fails(["train", "--resume", str(run), flag, value, "--max-steps", "4", "--quiet"], capsys)
    assert key in err and saved in err and value in err and str(run) in err
    assert "trainer_state.pt" not in err and "truncated" not in err
    assert _snapshot(run) == before


def test_resume_refuses_another_model(run3, tmp_path, tiny_model_dirs, capsys):
    run = _copy(run3, tmp_path / "run")
    err = _fails(["train", "--resume", str(run), "--model", str(tiny_model_dirs["qwen2"]), "--quiet"], capsys)
    assert "model" in err and str(tiny_model_dirs["qwen2"]) in err and str(tiny_model_dirs["llama"]) in err


def test_resume_refuses_another_output_dir(run3, tmp_path, capsys):
    run = _copy(run3, tmp_path / "run")
    err = _fails(["train", "--resume", str(run), "--output-dir", str(tmp_path / "elsewhere"), "--max-steps", "4",
                  "--quiet"], capsys)
    assert f"--output-dir {tmp_path / 'elsewhere'} with --resume {run}" in err
    assert not (tmp_path / "elsewhere").exists()


def test_resume_accepts_overrides_equal_to_the_saved_values(run3, tmp_path, tiny_model_dirs):
    run = _copy(run3, tmp_path / "run")
    assert main(["train", "--resume", str(run), "--mode", "hybrid", "--lora-r", "32", "--seed", "42",
                 "--model", str(tiny_model_dirs["llama"]), "--output-dir", str(run), "--max-steps", "4",
                 "--save-every", "5", "--quiet"]) == 0
    assert [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3, 4]
    cfg = load_yaml(run / "config.yaml")
    assert cfg["max_steps"] == 4 and cfg["save_every"] == 5 and cfg["mode"] == "hybrid"


def test_checkpoint_of_another_mode_is_named_as_such(run3, tmp_path):
    """Past resume_config (an edited config.yaml, or the API): the optimizer state does not fit; say so."""
    from hrpo.checkpoint import CheckpointError
    from hrpo.trainer import train

    run = _copy(run3, tmp_path / "run")
    cfg = build_config({**load_yaml(run / "config.yaml"), "mode": "discrete", "max_steps": 4}, use_preset=False)
    with pytest.raises(CheckpointError, match=r"checkpoint-3.*does not fit.*mode") as info:
        train(cfg, resume=run, quiet=True)
    assert "truncated" not in str(info.value)


# ------------------------------------------------------------------------------------- resume max_steps


def test_resume_refuses_max_steps_below_the_current_step(run3, tmp_path, capsys):
    run = _copy(run3, tmp_path / "run")
    before = _snapshot(run)
    err = _fails(["train", "--resume", str(run), "--max-steps", "2", "--quiet"], capsys)
    assert f"{run} is already at step 3" in err and "--max-steps" in err
    assert _snapshot(run) == before and load_yaml(run / "config.yaml")["max_steps"] == 3


def test_resume_at_max_steps_says_there_is_nothing_to_train(run3, tmp_path, capsys):
    run = _copy(run3, tmp_path / "run")
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "nothing to train: the run is already at step 3 = max_steps; pass --max-steps larger than 3" in err
    assert sorted(p.name for p in run.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]


def test_train_api_refuses_max_steps_below_the_current_step(run3, tmp_path):
    from hrpo.trainer import train

    run = _copy(run3, tmp_path / "run")
    before = _snapshot(run)
    cfg = build_config({**load_yaml(run / "config.yaml"), "max_steps": 2}, use_preset=False)
    with pytest.raises(ConfigError, match="already at step 3"):
        train(cfg, resume=run, quiet=True)
    assert _snapshot(run) == before


def test_resume_applies_a_new_learning_rate(run3, tmp_path):
    """--lr on resume (what a non-finite stop advises) reaches the optimizer, not only config.yaml, and the
    resume says which settings changed (config.yaml then holds only the new values)."""
    from hrpo.trainer import resume_config, setup, warmup_cosine

    run = _copy(run3, tmp_path / "run")
    cfg = resume_config(run, {"lr": 1e-2, "max_steps": 6, "weight_decay": 0.0})
    said = []
    trainer = setup(cfg, resume=run, log=said.append)
    assert said[-1] == "resumed with changed settings: max_steps 3 -> 6, lr 5e-06 -> 0.01, weight_decay 0.1 -> 0.0"
    lora = next(g for g in trainer.optimizer.param_groups if g["name"] == "lora")
    assert trainer.step == 3 and lora["weight_decay"] == 0.0
    assert lora["lr"] == pytest.approx(1e-2 * warmup_cosine(6, cfg.warmup_ratio)(3))
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(lora["lr"])
    gate = next(g for g in trainer.optimizer.param_groups if g["name"] == "gate")
    assert gate["lr"] == pytest.approx(cfg.gate_lr * warmup_cosine(6, cfg.warmup_ratio)(3))
    torch.testing.assert_close(torch.tensor(trainer.scheduler.base_lrs), torch.tensor([1e-2, cfg.gate_lr,
                                                                                       cfg.lambda_lr]))
