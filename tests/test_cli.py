"""`hrpo train` / `hrpo generate` end to end on a tiny model; offline hub ids fail with a clear message."""

import json

import pytest

from helpers import register
from hrpo.cli import main

register()


def _train_argv(model_dir, out, steps):
    return ["train", "--model", str(model_dir), "--task", "parity", "--output-dir", str(out),
            "--max-steps", str(steps), "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "5",
            "--save-every", "2", "--quiet"]


def test_train_writes_run_dir_and_resume_continues(tmp_path, tiny_model_dirs, capsys):
    out = tmp_path / "run"
    assert main(_train_argv(tiny_model_dirs["llama"], out, 2)) == 0
    assert (out / "config.yaml").is_file()
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2]
    assert {"reward", "kl", "hidden_ratio", "loss", "timing/step_s"} <= lines[0].keys()
    ckpt = out / "checkpoint-2"
    for name in ("adapter_model.safetensors", "adapter_config.json", "gate.safetensors", "trainer_state.pt"):
        assert (ckpt / name).is_file(), name
    assert not list(out.glob(".tmp-*"))
    assert (out / "plots" / "reward.png").stat().st_size > 1000  # curves written at the end of every run

    assert main(["train", "--resume", str(out), "--max-steps", "3", "--quiet"]) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2, 3]
    assert (out / "checkpoint-3" / "gate.safetensors").is_file()

    capsys.readouterr()
    assert main(["generate", "--adapter", str(out), "--prompt", "What is 2 + 2?", "--max-new-tokens", "4",
                 "--greedy", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"prompt_tokens", "tokens", "completion", "hidden_ratio"} <= result.keys()
    assert result["mode"] == "hybrid" and 1 <= len(result["tokens"]) <= 4 and len(result["prompt_tokens"]) > 5


def test_generate_discrete_matches_greedy_generate(tiny_model_dirs, capsys):
    from hrpo.models import load_model

    assert main(["generate", "--model", str(tiny_model_dirs["qwen2"]), "--prompt", "Hello there",
                 "--max-new-tokens", "6", "--greedy", "--mode", "discrete", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    lm = load_model(str(tiny_model_dirs["qwen2"]))
    import torch

    ids = torch.tensor([result["prompt_tokens"]])
    expected = lm.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=6, pad_token_id=2, eos_token_id=2)[0, ids.shape[1]:].tolist()
    assert result["tokens"] == expected[:len(result["tokens"])]


def test_offline_hub_id_fails_with_clear_message(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = main(["generate", "--model", "Qwen/Qwen2.5-1.5B-Instruct", "--prompt", "hi"])
    err = capsys.readouterr().err
    assert code == 2
    assert "Qwen/Qwen2.5-1.5B-Instruct" in err and "offline" in err and "Traceback" not in err


def test_bad_config_value_fails_with_key_in_message(tmp_path, capsys):
    code = main(["train", "--group-size", "1", "--output-dir", str(tmp_path / "x")])
    assert code == 2 and "group_size" in capsys.readouterr().err


def test_help_documents_every_config_key(capsys):
    from hrpo.config import config_fields

    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for f in config_fields():
        assert "--" + f.name.replace("_", "-") in text, f.name


def test_generate_show_latents_lists_thinking_positions(tiny_model_dirs, capsys, tmp_path):
    out = tmp_path / "latents.json"
    assert main(["generate", "--model", str(tiny_model_dirs["llama"]), "--prompt", "Think about cats",
                 "--max-new-tokens", "5", "--show-latents", "--json", "--latents-json", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    rows = result["latents"]
    assert len(rows) == result["thinking_tokens"] >= 1
    first = rows[0]
    assert first["token_id"] == result["tokens"][first["position"]]
    assert len(first["nearest"]) == 5 and 0.9 < first["gate_a"] < 1.0
    cos = [n["cosine"] for n in first["nearest"]]
    assert cos == sorted(cos, reverse=True) and all(-1.0 <= c <= 1.0 + 1e-6 for c in cos)
    assert json.loads(out.read_text()) == rows
