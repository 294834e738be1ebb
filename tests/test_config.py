"""Config defaults, precedence and validation."""

import pytest

from hrpo.config import EMBEDDED_PRESET, ConfigError, TrainConfig, build_config, load_yaml


def test_paper_defaults():
    cfg = TrainConfig()
    assert (cfg.lr, cfg.gate_lr, cfg.lambda_lr, cfg.beta) == (5e-6, 1e-4, 1e-3, 0.005)
    assert (cfg.lora_r, cfg.lora_alpha, cfg.r_min, cfg.r_max, cfg.temperature, cfg.top_k) == \
        (32, 64, 0.99, 0.999, 0.5, 50)
    assert (cfg.weight_decay, cfg.max_grad_norm, cfg.warmup_ratio) == (0.1, 0.1, 0.1)


def test_preset_only_for_embedded_and_cli_beats_yaml(tmp_path):
    assert build_config().max_steps == EMBEDDED_PRESET["max_steps"]
    assert build_config(cli_values={"model": "some/model"}).lr == 5e-6
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1.0e-3\ngroup_size: 8\n")
    cfg = build_config(load_yaml(path), {"group_size": 3})
    assert cfg.lr == 1e-3 and cfg.group_size == 3


@pytest.mark.parametrize("values, needle", [
    ({"group_size": 1}, "group_size"),
    ({"r_min": 0.999, "r_max": 0.99}, "r_min"),
    ({"lr": -1.0}, "lr"),
    ({"gate_lr": -1e-3}, "gate_lr"),
    ({"temperature": 0.0}, "temperature"),
    ({"top_p": 1.5}, "top_p"),
    ({"mode": "latent-only"}, "mode"),
    ({"max_new_tokens": 0}, "max_new_tokens"),
    ({"warmup_ratio": 1.0}, "warmup_ratio"),
    ({"marker": ""}, "marker"),
    ({"max_steps": "ten"}, "max_steps"),
    ({"no_such_key": 1}, "unknown config key 'no_such_key'"),
])
def test_invalid_values_are_rejected(values, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(cli_values=values)


def test_yaml_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_yaml(bad)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="unknown.yaml.*learning_rate"):
        load_yaml(unknown)
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "missing.yaml")
