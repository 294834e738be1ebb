"""The eval harness: scoring/ordering with a scripted generator, a real tiny hybrid model, reports, and
`hrpo eval` end to end on a tiny random model with fixture files."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hrpo import tasks
from hrpo.cli import main
from hrpo.evaluate import evaluate, report_paths, write_report
from hrpo.policy import Policy

FIXTURES = Path(__file__).parent / "fixtures"


def _scripted_policy(tokenizer, marker="####", gate=None, model=None):
    return Policy(model=model, tokenizer=tokenizer, gate=gate, marker=marker, temperature=0.5, top_k=50, top_p=1.0,
                  eos_ids=[tokenizer.eos_token_id], device=torch.device("cpu"),
                  mode="hybrid" if gate is not None else "discrete")


def _script_generate(monkeypatch, tokenizer, answers: dict, calls: list):
    """Replace hrpo.policy.generate_ids: the completion for a prompt is answers[question in the prompt]."""
    import hrpo.policy

    def fake(policy, prompt_ids, max_new_tokens, greedy=False, temperature=None, seed=0):
        calls.append({"n": len(prompt_ids), "marker": policy.marker, "greedy": greedy,
                      "lens": [len(p) for p in prompt_ids], "training": getattr(policy.model, "training", None)})
        rows = []
        for ids in prompt_ids:
            prompt = tokenizer.decode(ids)
            text = next(a for q, a in answers.items() if q in prompt)
            rows.append(tokenizer(text, add_special_tokens=False)["input_ids"][:max_new_tokens - 1]
                        + [tokenizer.eos_token_id])
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), tokenizer.pad_token_id)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, r in enumerate(rows):
            ids[i, :len(r)] = torch.tensor(r)
            mask[i, :len(r)] = True
        return SimpleNamespace(completion_ids=ids, completion_mask=mask, thinking_mask=torch.zeros_like(mask),
                               gate_mean=torch.ones(mask.shape))

    monkeypatch.setattr(hrpo.policy, "generate_ids", fake)


def test_evaluate_scores_every_example_in_input_order(monkeypatch, tokenizer):
    task = tasks.get("mmlu_stem")
    examples = task.load("test", data_path=FIXTURES / "mmlu_stem.jsonl")
    answers = {"organelle": "Energy comes from mitochondria. #### B",  # right
               "derivative": "Power rule. #### A",  # wrong
               "negative charge": "Electrons are negative, so the answer is A",  # right answer, no marker
               "7 * 8": "7 * 8 = 56 #### B #### B"}  # right, but the marker twice
    calls = []
    _script_generate(monkeypatch, tokenizer, answers, calls)
    model = torch.nn.Linear(1, 1).train()  # as when the trainer calls evaluate mid-run
    result = evaluate(_scripted_policy(tokenizer, model=model), task, examples, batch_size=3, max_new_tokens=64,
                      progress=False)
    assert model.training and all(c["training"] is False for c in calls)  # decoded in eval mode, then restored
    records, metrics = result["records"], result["metrics"]
    assert [r["index"] for r in records] == [0, 1, 2, 3]
    assert [r["question"] for r in records] == [ex["question"] for ex in examples]
    assert [r["correct"] for r in records] == [True, False, True, True]  # eval is lenient on format
    assert [r["format_ok"] for r in records] == [True, True, False, False]
    assert [r["answer"] for r in records] == ["B", "A", "A", "B"]
    assert records[0]["gold"] == "B" and records[0]["subject"] == "college_biology"
    assert records[0]["completion"] == answers["organelle"] and not records[0]["clipped"]
    assert metrics["accuracy"] == 0.75 and metrics["correct"] == 3 and metrics["total"] == 4
    assert metrics["format_rate"] == 0.5
    assert metrics["by_subject"]["college_mathematics"] == {"accuracy": 0.5, "correct": 1, "total": 2}
    assert [c["n"] for c in calls] == [3, 1] and all(c["greedy"] for c in calls)
    assert calls[0]["lens"] == sorted(calls[0]["lens"], reverse=True)  # longest prompts first


def test_evaluate_qa_f1_and_think_marker(monkeypatch, tokenizer):
    task = tasks.get("nq", prompt_format="think")
    examples = task.load("test", data_path=FIXTURES / "nq.jsonl")
    answers = {"pride and prejudice": "<think>The passage says so.</think> Jane Austen",
               "capital city of australia": "<think>Hmm.</think> Sydney, Australia"}
    calls = []
    _script_generate(monkeypatch, tokenizer, answers, calls)
    gate = object()  # a hybrid policy: evaluate must switch its marker to the task's
    result = evaluate(_scripted_policy(tokenizer, gate=gate), task, examples, batch_size=8, max_new_tokens=64,
                      progress=False, greedy=False, temperature=0.7)
    assert calls[0]["marker"] == "</think>" and calls[0]["greedy"] is False
    assert [r["correct"] for r in result["records"]] == [True, False]
    assert result["records"][1]["f1"] == pytest.approx(0.0)
    assert result["metrics"]["f1"] == pytest.approx(0.5)
    assert result["records"][0]["gold"] == ["Jane Austen"]


def test_evaluate_on_a_tiny_hybrid_model(tiny_model_dirs):
    from hrpo.policy import load_policy

    policy = load_policy(str(tiny_model_dirs["llama"]), mode="hybrid")
    task = tasks.get("arithmetic")
    examples = task.load("test", limit=3)
    result = evaluate(policy, task, examples, batch_size=2, max_new_tokens=5, progress=False)
    records, metrics = result["records"], result["metrics"]
    assert len(records) == 3 and metrics["total"] == 3
    for rec, ex in zip(records, examples):
        assert 1 <= rec["completion_tokens"] <= 5
        assert rec["correct"] == task.score(rec["completion"], ex)["correct"]
    assert 0.0 < metrics["hidden_ratio"] < 1.0  # latents were mixed in while no marker had been generated
    assert 0.0 <= metrics["clipped_ratio"] <= 1.0 and metrics["tokens_per_s"] > 0


def test_write_report_always_overwrites(tmp_path):
    first = {"metrics": {"accuracy": 1.0, "hidden_ratio": math.nan}, "records": [{"index": 0}, {"index": 1}]}
    second = {"metrics": {"accuracy": 0.5}, "records": [{"index": 0}]}
    json_path, jsonl_path = write_report(first, tmp_path, "gsm8k", {"model": "m"})
    assert (json_path, jsonl_path) == report_paths(tmp_path, "gsm8k")
    assert json.loads(json_path.read_text())["metrics"]["hidden_ratio"] is None  # NaN -> null (valid JSON)
    write_report(second, tmp_path, "gsm8k")
    assert json.loads(json_path.read_text())["metrics"]["accuracy"] == 0.5
    assert len(jsonl_path.read_text().splitlines()) == 1
    other, _ = write_report(second, tmp_path, "math")
    assert other.name == "eval_math.json" and json_path.name == "eval_gsm8k.json"


def test_cli_eval_end_to_end(tmp_path, tiny_model_dirs, capsys):
    out = tmp_path / "report"
    argv = ["eval", "--model", str(tiny_model_dirs["qwen2"]), "--task", "gsm8k", "--task", "mmlu_stem",
            "--data", str(FIXTURES / "gsm8k.jsonl"), "--data", str(FIXTURES / "mmlu_stem.jsonl"),
            "--limit", "3", "--batch-size", "2", "--max-new-tokens", "4", "--output-dir", str(out), "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "gsm8k" in printed and "mmlu_stem" in printed and "accuracy" in printed
    for name in ("gsm8k", "mmlu_stem"):
        report = json.loads((out / f"eval_{name}.json").read_text())
        assert report["task"] == name and report["metrics"]["total"] == 3
        assert report["meta"]["greedy"] is True and report["meta"]["mode"] == "hybrid"
        assert report["meta"]["prompt_format"] == "hash" and report["meta"]["marker"] == "####"
        assert report["meta"]["model"] == str(tiny_model_dirs["qwen2"])
        assert report["meta"]["data"] == str(FIXTURES / f"{name}.jsonl")
        lines = [json.loads(x) for x in (out / f"eval_{name}_examples.jsonl").read_text().splitlines()]
        assert len(lines) == 3 and {"question", "gold", "answer", "completion", "correct"} <= lines[0].keys()
    assert "by_subject" in json.loads((out / "eval_mmlu_stem.json").read_text())["metrics"]


def test_cli_eval_bad_data_fails_before_loading_the_model(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "#### 1"}\n{"question": 5, "answer": "#### 2"}\n')
    rc = main(["eval", "--model", str(tmp_path / "no-such-model"), "--task", "gsm8k", "--data", str(bad)])
    err = capsys.readouterr().err
    assert rc == 2
    assert str(bad) in err and "line 2" in err and "field 'question'" in err
    assert main(["eval", "--task", "no_such_task"]) == 2
    assert "unknown task" in capsys.readouterr().err


@pytest.mark.parametrize("mode, marker", [("latent", "</think>"), ("hidden", "</think>"), ("discrete", "####")])
def test_evaluate_mixes_until_the_tasks_marker_in_every_mixing_mode(monkeypatch, tokenizer, mode, marker):
    """The ablation modes have no gate but still mix until the marker: it must be the task's, not the run's."""
    import dataclasses

    task = tasks.get("nq", prompt_format="think")
    examples = task.load("test", data_path=FIXTURES / "nq.jsonl")
    calls = []
    _script_generate(monkeypatch, tokenizer, {"pride and prejudice": "Jane Austen", "australia": "Canberra"}, calls)
    policy = dataclasses.replace(_scripted_policy(tokenizer), mode=mode)
    evaluate(policy, task, examples, batch_size=8, max_new_tokens=16, progress=False)
    assert calls[0]["marker"] == marker
