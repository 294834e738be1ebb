"""`hrpo bench` on a tiny random model (a config directory as --shape): the report has every run and ratio."""

import json

from hrpo.cli import main


def test_bench_rollout_json(tiny_model_dirs, capsys):
    argv = ["bench", "rollout", "--shape", str(tiny_model_dirs["llama"]), "--batch", "4", "--prompt-len", "4",
            "--new-tokens", "3", "--repeats", "1", "--dtype", "float32", "--engines", "eager,static",
            "--lora-r", "4", "--group", "2", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report["results"]) == {"hybrid_eager", "discrete_eager", "hybrid_static", "discrete_static",
                                      "hf_dynamic"}
    assert report["fast"] == "hybrid_static" and report["lora_r"] == 4 and report["group"] == 2
    assert report["device"] == "cpu"
    for name, run in report["results"].items():
        assert run["steps_per_s"] > 0
        assert abs(run["new_tokens_per_s"] - 4 * run["steps_per_s"]) < 1e-6 * run["new_tokens_per_s"]
        if name != "hybrid_static":
            ratio = report["ratios"][f"hybrid_static_over_{name}"]
            assert abs(ratio - report["results"]["hybrid_static"]["steps_per_s"] / run["steps_per_s"]) < 1e-9
    assert set(report["hybrid_cost_over_discrete"]) == {"eager", "static"}


def test_bench_train_reports_memory(tiny_model_dirs, capsys):
    argv = ["bench", "train", "--shape", str(tiny_model_dirs["qwen2"]), "--batch", "2", "--prompt-len", "4",
            "--new-tokens", "4", "--dtype", "float32", "--json"]
    assert main(argv) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["sequences"] == 2 and report["lora_r"] == 32 and report["gradient_checkpointing"] is True
    assert report["peak_memory_gb"] > 0 and report["seconds"] > 0


def test_bench_unknown_shape_is_a_clear_error(capsys):
    assert main(["bench", "rollout", "--shape", "no-such-shape"]) == 2
    assert "not a named shape" in capsys.readouterr().err


def test_bench_group_must_divide_the_batch(tiny_model_dirs, capsys):
    argv = ["bench", "rollout", "--shape", str(tiny_model_dirs["llama"]), "--batch", "4", "--group", "3"]
    assert main(argv) == 2
    assert "--group 3 must be >= 1 and divide --batch 4" in capsys.readouterr().err


def test_bench_sizes_default_by_device_and_flags_win():
    from argparse import Namespace

    from hrpo.cli import _bench_sizes

    def sizes(what, device, **given):
        return _bench_sizes(Namespace(what=what, device=device, batch=given.get("batch"),
                                      prompt_len=given.get("prompt_len"), new_tokens=given.get("new_tokens")))
    assert sizes("rollout", "cuda:1") == (64, 256, 256) and sizes("train", "cuda") == (8, 1024, 1024)
    assert sizes("rollout", "cpu") == (8, 64, 64) and sizes("train", "cpu") == (2, 128, 128)
    assert sizes("rollout", "cpu", batch=16, new_tokens=32) == (16, 64, 32)
