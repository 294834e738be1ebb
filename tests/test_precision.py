"""dtype 'auto': bf16 only where this CPU runs it fast; the choice is printed and kept in config.yaml; float16
training is refused."""

import math

import pytest
import torch
import yaml

from helpers import register, tiny_train_args
from hrpo import precision
from hrpo.cli import main
from hrpo.config import ConfigError, build_config
from hrpo.precision import choose_dtype
from hrpo.trainer import setup

register()


@pytest.fixture
def probe(monkeypatch):
    """Let the probe decide (the suite presets HRPO_CPU_DTYPE) and fake its measured bf16/fp32 time ratio."""
    monkeypatch.delenv("HRPO_CPU_DTYPE", raising=False)

    def fake(ratio: float) -> None:
        monkeypatch.setattr(precision, "cpu_bf16_time_ratio", lambda: ratio)
    return fake


def test_auto_on_a_cpu_with_native_bf16_picks_bf16(probe):
    probe(0.4)
    choice = choose_dtype("auto", "cpu")
    assert choice.dtype == torch.bfloat16 and choice.name == "bfloat16"
    assert "0.40x" in choice.reason and "native bf16" in choice.reason


def test_auto_on_a_cpu_without_native_bf16_picks_fp32_and_says_why(probe):
    probe(21.0)
    choice = choose_dtype("auto", "cpu")
    assert choice.dtype == torch.float32
    assert "21.0x" in choice.reason and "no native bf16" in choice.reason and "--dtype bfloat16" in choice.reason
    assert "CPU capability" in choice.reason


def test_the_threshold_between_the_two(probe):
    probe(precision.BF16_MAX_TIME_RATIO)
    assert choose_dtype("auto", "cpu").dtype == torch.bfloat16
    probe(precision.BF16_MAX_TIME_RATIO + 0.01)
    assert choose_dtype("auto", "cpu").dtype == torch.float32


def test_an_explicit_dtype_wins_over_the_probe(probe):
    probe(21.0)
    assert choose_dtype("bfloat16", "cpu").dtype == torch.bfloat16
    probe(0.4)
    assert choose_dtype("float32", "cpu").dtype == torch.float32
    assert "--dtype" in choose_dtype("float32", "cpu").reason


def test_environment_preset_replaces_the_probe(monkeypatch):
    monkeypatch.setattr(precision, "cpu_bf16_time_ratio", lambda: pytest.fail("the probe ran"))
    monkeypatch.setenv("HRPO_CPU_DTYPE", "bfloat16")
    assert choose_dtype("auto", "cpu").dtype == torch.bfloat16
    monkeypatch.setenv("HRPO_CPU_DTYPE", "float64")
    with pytest.raises(ConfigError, match="HRPO_CPU_DTYPE"):
        choose_dtype("auto", "cpu")


def test_the_real_probe_measures_a_ratio():
    ratio = precision.cpu_bf16_time_ratio.__wrapped__()
    assert math.isfinite(ratio) and ratio > 0


def test_a_run_prints_the_choice_first_and_keeps_it_in_config_yaml(tmp_path, tiny_model_dirs, probe):
    probe(21.0)
    lines = []
    cfg = build_config(cli_values=tiny_train_args(tiny_model_dirs["llama"], tmp_path / "run", 1))
    assert cfg.dtype == "auto"
    trainer = setup(cfg, log=lines.append)
    assert lines[0].startswith("dtype float32 (auto: float32") and "21.0x" in lines[0]
    text = (trainer.run_dir / "config.yaml").read_text()
    assert text.startswith("# dtype float32: auto: float32")
    assert yaml.safe_load(text)["dtype"] == "float32"  # a resume keeps what the run trained in


def test_the_embedded_preset_leaves_the_dtype_to_auto():
    assert build_config(cli_values={"model": "embedded"}).dtype == "auto"


def test_float16_training_is_refused_before_any_model_loads(tmp_path, capsys):
    with pytest.raises(ConfigError, match="float16.*bfloat16 or float32"):
        build_config(cli_values={"dtype": "float16"})
    code = main(["train", "--model", str(tmp_path / "no-such-model"), "--dtype", "float16",
                 "--output-dir", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "float16" in err and "loss scaling" in err
    assert not (tmp_path / "run").exists()
