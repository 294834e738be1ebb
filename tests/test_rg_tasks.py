"""reasoning-gym tasks (``--task rg:NAME``): options, disjoint train/test splits, scoring with the generator's
own score_answer, `hrpo tasks`, and one training step plus an evaluation on a tiny model. Skipped when
reasoning-gym is not installed (scripts/setup.sh installs it)."""

import json

import pytest

pytest.importorskip("reasoning_gym")

from hrpo import tasks  # noqa: E402
from hrpo.cli import main  # noqa: E402
from hrpo.config import ConfigError  # noqa: E402
from hrpo.tasks.rg import is_test_question  # noqa: E402

OPTIONS = {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 1}  # 200 distinct questions


def _task(**kwargs):
    return tasks.get("rg:chain_sum", options=dict(OPTIONS), **kwargs)


@pytest.mark.parametrize("seed", [0, 1, 42])
def test_train_and_test_splits_share_no_question(seed):
    task = _task()
    test = task.load("test", limit=1000)
    questions = [ex["question"] for ex in test]
    assert len(questions) == len(set(questions))  # no duplicates
    assert 20 < len(test) < 100  # about a quarter of the 200 questions; fewer than asked for
    train = {ex["question"] for ex in task.examples(600, seed=seed)}
    assert len(train) > 100 and not train & set(questions)
    assert all(is_test_question(q) for q in questions) and not any(is_test_question(q) for q in train)
    assert not {s["question"] for s in task.shots} & set(questions)


def test_the_test_split_does_not_depend_on_the_run():
    a, b = _task().load("test", limit=30), _task(prompt_format="think").load("test", limit=30)
    assert [ex["question"] for ex in a] == [ex["question"] for ex in b]
    assert [ex["question"] for ex in _task().load("test", limit=10)] == [ex["question"] for ex in a[:10]]


def test_rewards_and_scores_use_reasoning_gyms_score_answer():
    task = _task()
    ex = task.load("test", limit=1)[0]
    gold = ex["gold"]
    assert task.reward(f"{ex['question']} #### {gold}", ex) == 1.0
    assert task.reward(f"#### {gold}\nand then more text", ex) == 1.0  # a one-line answer: its first line
    assert task.reward(f"#### {int(gold) + 1}", ex) == 0.0
    assert task.reward(f"#### {gold} #### {gold}", ex) == 0.0  # the marker twice
    assert task.reward(gold, ex) == 0.0  # no marker
    scored = task.score(f"I add them.\n{gold}", ex)  # eval without the marker: the last line
    assert scored["correct"] and scored["score"] == 1.0 and not scored["format_ok"]
    msgs = task.messages(ex)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[2]["content"].startswith("#### ") and msgs[-1]["content"] == ex["question"]
    assert len(_task(shots=0).messages(ex)) == 2


def test_partial_credit_is_the_generators_own():
    task = tasks.get("rg:countdown", options={"min_numbers": 3, "max_numbers": 3})
    ex = task.load("test", limit=1)[0]
    assert task.reward(f"#### {ex['gold']}", ex) == 1.0
    assert 0.0 < task.reward("#### 1 + 1", ex) < 1.0  # countdown gives 0.01 for a wrong expression


def test_options_and_generators_are_checked():
    with pytest.raises(ConfigError, match="unknown reasoning-gym generator 'chain_sums'. Close names: chain_sum"):
        tasks.get("rg:chain_sums")
    with pytest.raises(ConfigError, match="bad task_options.*unexpected keyword argument 'terms'.*min_terms=2"):
        tasks.get("rg:chain_sum", options={"terms": 2})
    with pytest.raises(ConfigError, match="option 'seed' is set by hrpo"):
        tasks.get("rg:chain_sum", options={"seed": 3})


def test_hrpo_tasks_lists_generators_and_shows_options(capsys):
    assert main(["tasks"]) == 0
    out = capsys.readouterr().out
    assert "chain_sum" in out and "countdown" in out and "gsm8k" in out and "question (str)" in out
    assert main(["tasks", "rg:chain_sum"]) == 0
    out = capsys.readouterr().out
    assert "min_terms = 2" in out and "a test question:" in out


def test_an_rg_task_trains_one_step_and_evaluates(tmp_path, tiny_model_dirs, capsys):
    run = tmp_path / "run"
    assert main(["train", "--model", str(tiny_model_dirs["qwen2"]), "--task", "rg:chain_sum", "--task-option",
                 "max_terms=2", "--task-option", "shots=0", "--reward", "accuracy", "--reward", "format:0.2",
                 "--output-dir", str(run), "--max-steps", "1", "--prompts-per-step", "2", "--group-size", "2",
                 "--max-new-tokens", "4", "--eval-task", "rg:chain_sum", "--eval-every", "1", "--eval-limit", "3",
                 "--quiet"]) == 0
    [metrics] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"rewards/accuracy/mean", "rewards/format/mean", "eval/rg_chain_sum/accuracy"} <= metrics.keys()
    assert main(["eval", "--adapter", str(run), "--limit", "3", "--max-new-tokens", "4", "--quiet"]) == 0
    report = json.loads((run / "eval_rg_chain_sum.json").read_text())
    assert report["metrics"]["total"] == 3 and "score" in report["metrics"]
    assert report["meta"]["rewards"] == [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.2}]
