"""Bad arguments to `hrpo generate / eval / bench / train --model` fail before any model is loaded or built, with
exit code 2 and a one-line message (no traceback); help text states each default once."""

import json
import re

import pytest
import torch

import hrpo.bench
import hrpo.policy
from hrpo.cli import build_parser, main

NO_CUDA = not torch.cuda.is_available()

GEN = ["generate", "--prompt", "hi"]
EVAL = ["eval", "--task", "arithmetic", "--limit", "2"]
BENCH = ["bench", "rollout", "--shape", "embedded"]

CASES = {
    "generate_max_new_tokens_0": (GEN + ["--max-new-tokens", "0"], ["--max-new-tokens", "must be >= 1, got 0"]),
    "generate_max_new_tokens_neg": (GEN + ["--max-new-tokens", "-5"], ["--max-new-tokens", "must be >= 1"]),
    "generate_max_new_tokens_text": (GEN + ["--max-new-tokens", "many"], ["must be an integer >= 1, got 'many'"]),
    "generate_temperature_neg": (GEN + ["--temperature", "-1"], ["--temperature", "must be a finite number > 0"]),
    "generate_temperature_0": (GEN + ["--temperature", "0"], ["--temperature", "must be > 0", "--greedy"]),
    "generate_temperature_nan": (GEN + ["--temperature", "nan"], ["--temperature", "finite"]),
    "generate_device_tpu": (GEN + ["--device", "tpu"], ["device='tpu'", "is not a device name"]),
    "generate_latents_json_parent_is_file": (GEN + ["--latents-json", "{tmp}/file/l.json"],
                                             ["--latents-json {tmp}/file/l.json", "cannot create its directory"]),
    "generate_latents_json_is_dir": (GEN + ["--latents-json", "{tmp}"], ["is a directory"]),
    "eval_max_new_tokens_0": (EVAL + ["--max-new-tokens", "0"], ["--max-new-tokens", "must be >= 1"]),
    "eval_batch_size_0": (EVAL + ["--batch-size", "0"], ["--batch-size", "must be >= 1, got 0"]),
    "eval_batch_size_neg": (EVAL + ["--batch-size", "-1"], ["--batch-size", "must be >= 1, got -1"]),
    "eval_limit_neg": (["eval", "--task", "arithmetic", "--limit", "-1"], ["--limit", "must be >= 1, got -1"]),
    "eval_limit_0": (["eval", "--task", "arithmetic", "--limit", "0"], ["--limit", "must be >= 1, got 0"]),
    "eval_max_prompt_tokens_0": (EVAL + ["--max-prompt-tokens", "0"], ["--max-prompt-tokens", "must be >= 1"]),
    "eval_temperature_0": (EVAL + ["--temperature", "0"], ["--temperature", "must be > 0", "--greedy"]),
    "eval_temperature_neg": (EVAL + ["--temperature", "-0.5"], ["--temperature", "must be a finite number > 0"]),
    "eval_device_tpu": (EVAL + ["--device", "tpu"], ["device='tpu'", "is not a device name"]),
    "bench_unknown_engine": (BENCH + ["--engines", "eager,turbo"], ["unknown rollout engine 'turbo'"]),
    "bench_empty_engines": (BENCH + ["--engines", ","], ["--engines is empty"]),
    "bench_graph_on_cpu": (BENCH + ["--engines", "graph", "--device", "cpu"], ["graph needs a CUDA device"]),
    "bench_unknown_baseline": (BENCH + ["--baselines", "hf_foo"], ["unknown baseline 'hf_foo'"]),
    "bench_batch_neg": (BENCH + ["--batch", "-2"], ["--batch", "must be >= 1, got -2"]),
    "bench_batch_0": (BENCH + ["--batch", "0"], ["--batch", "must be >= 1, got 0"]),
    "bench_new_tokens_0": (BENCH + ["--new-tokens", "0"], ["--new-tokens", "must be >= 1"]),
    "bench_repeats_0": (BENCH + ["--repeats", "0"], ["--repeats", "must be >= 1"]),
    "bench_lora_r_neg": (BENCH + ["--lora-r", "-1"], ["--lora-r", "must be >= 0"]),
    "bench_train_prompt_len_0": (["bench", "train", "--shape", "embedded", "--prompt-len", "0"], ["--prompt-len"]),
    "bench_device_tpu": (BENCH + ["--device", "tpu"], ["device='tpu'", "is not a device name"]),
}
if NO_CUDA:
    CASES["generate_cuda_without_cuda"] = (GEN + ["--device", "cuda"], ["device='cuda'", "CUDA is not available"])
    CASES["eval_cuda_without_cuda"] = (EVAL + ["--device", "cuda"], ["device='cuda'", "CUDA is not available"])
    CASES["bench_cuda_without_cuda"] = (BENCH + ["--device", "cuda"], ["device='cuda'", "CUDA is not available"])
    CASES["bench_graph_default_device"] = (BENCH + ["--engines", "eager,graph"], ["graph needs a CUDA device"])


def _run(argv, capsys) -> tuple[int, str]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse errors
        code = exc.code
    return code, capsys.readouterr().err


@pytest.fixture
def no_model(monkeypatch):
    """Loading or building a model fails the test: the argument errors must come first."""
    def refuse(*a, **k):
        raise AssertionError("a model was loaded before the arguments were checked")
    monkeypatch.setattr(hrpo.policy, "load_policy", refuse)
    monkeypatch.setattr(hrpo.bench, "random_model", refuse)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_argument_exits_2_with_one_clear_line(name, tmp_path, capsys, no_model):
    (tmp_path / "file").write_text("")
    argv, expected = CASES[name]
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"hrpo {argv[0]}: error: "), err
    for text in expected:
        assert text.replace("{tmp}", str(tmp_path)) in last, err


@pytest.mark.parametrize("model", ["{tmp}/no-such-dir", "./no-such-dir", "~/no-such-dir-hrpo", "runs/no-such-run"])
def test_missing_local_model_path_says_no_such_directory(model, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    code, err = _run(["generate", "--model", model.replace("{tmp}", str(tmp_path)), "--prompt", "hi"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "error: no such directory: " in err and "no-such-" in err and "not reachable" not in err


def test_generate_latents_json_without_show_latents_writes_the_file(tiny_model_dirs, tmp_path, capsys):
    out = tmp_path / "new" / "dir" / "latents.json"
    assert main(["generate", "--model", str(tiny_model_dirs["llama"]), "--prompt", "Think about cats",
                 "--max-new-tokens", "3", "--json", "--latents-json", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert "latents" not in result  # the printed output is unchanged without --show-latents
    rows = json.loads(out.read_text())
    assert len(rows) == result["thinking_tokens"] >= 1


@pytest.mark.parametrize("command", ["train", "generate", "eval", "bench"])
def test_help_states_each_default_once(command, capsys):
    with pytest.raises(SystemExit):
        main([command] + (["rollout"] if command == "bench" else []) + ["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert not re.search(r"\(default: [^()]*\)\.?\s*\(default: ", text), text
    assert "(default: None)" not in text


def test_valid_arguments_still_parse():
    args = build_parser().parse_args(["generate", "--prompt", "hi", "--temperature", "0.7", "--max-new-tokens", "1"])
    assert args.temperature == 0.7 and args.max_new_tokens == 1
    args = build_parser().parse_args(["bench", "rollout", "--lora-r", "0", "--batch", "4", "--group", "2"])
    assert args.lora_r == 0 and args.batch == 4


def test_a_hub_id_next_to_a_directory_of_its_owner_name_still_goes_to_the_hub(tmp_path, monkeypatch):
    """With ./Qwen present (say, another Qwen model downloaded there), Qwen/X is still a hub id when the hub
    answers; offline it is reported as a missing directory that is not cached either."""
    from hrpo import models
    from hrpo.models import ModelLoadError, resolve_model_path

    monkeypatch.chdir(tmp_path)
    (tmp_path / "Qwen").mkdir()
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: True)
    assert resolve_model_path("Qwen/Qwen2.5-1.5B-Instruct") == ("Qwen/Qwen2.5-1.5B-Instruct", False)
    with pytest.raises(ModelLoadError, match="no such directory: ./Qwen/X"):
        resolve_model_path("./Qwen/X")  # written as a path: never a hub id
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(ModelLoadError, match="no such directory: Qwen/X, nor a hub model cached"):
        resolve_model_path("Qwen/X")
