"""Your own task and rewards: a task class from a file or a factory from a module, the generic task (field and
template), named and user rewards, several weighted rewards (sums, metrics, advantages by hand), the format
reward, config parsing, and a task from a file trained and evaluated through ``hrpo.cli.main``."""

import json
import math
import sys
import textwrap

import pytest
import torch

from hrpo import tasks
from hrpo.cli import build_parser, main
from hrpo.config import ConfigError, build_config, load_yaml, parse_reward
from hrpo.objective import group_advantages
from hrpo.tasks.rewards import build_rewards, format_ok, score_rewards, weighted_sum

# A task with the protocol and nothing else (no hrpo base class): "say N" rows, N the answer after '####'.
TASK_FILE = '''
class SayTask:
    name = "say"
    marker = "####"
    procedural = True

    def __init__(self, prompt_format="hash", data_path=None, top=9):
        self.top = top

    def examples(self, n, seed=0):
        return [{"question": f"Say {i % self.top + 1}.", "gold": str(i % self.top + 1)} for i in range(n)]

    def load(self, split="test", data_path=None, limit=None):
        return self.examples(limit or 4, seed=1)

    def messages(self, example):
        return [{"role": "user", "content": example["question"]}]

    def extract_answer(self, completion, example=None):
        return completion.rsplit("####", 1)[1].strip() if "####" in completion else None

    def reward(self, completion, example):
        return float(self.extract_answer(completion) == example["gold"])

    def score(self, completion, example):
        answer = self.extract_answer(completion)
        return {"answer": answer, "correct": answer == example["gold"], "format_ok": "####" in completion}
'''

REWARDS_FILE = '''
def length_penalty(completion, example):
    """The completion's length in characters (give it a negative weight)."""
    return float(len(completion))


def odd_length(completion, example):
    return float(len(completion) % 2)
'''

ROWS = [{"q": "What is 2 + 3?", "a": 5, "hint": "add", "choices": ["4", "5"], "letter": 1},
        {"q": "What is 7 - 4?", "a": "3", "hint": "subtract", "choices": ["3", "2"], "letter": "A"}]


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _rows(tmp_path, rows=ROWS):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------- loading tasks

def test_a_task_class_loads_from_a_file_with_its_options(tmp_path):
    path = _write(tmp_path, "say_task.py", TASK_FILE)
    task = tasks.get(f"{path}:SayTask", prompt_format="hash", options={"top": 3})
    assert task.name == "say" and task.top == 3
    assert [ex["gold"] for ex in task.examples(4)] == ["1", "2", "3", "1"]
    assert tasks.missing_members(task) == [] and isinstance(task, tasks.TaskProtocol)
    assert tasks.get(f"{path}:SayTask").__class__ is task.__class__  # the file is imported once


def test_a_task_factory_loads_from_a_module(tmp_path, monkeypatch):
    factory = "\n\ndef make_task(top=5, **kwargs):\n    return SayTask(top=top)\n"
    _write(tmp_path, "my_task_pkg_x.py", TASK_FILE + factory)
    monkeypatch.syspath_prepend(str(tmp_path))
    task = tasks.get("my_task_pkg_x:make_task", prompt_format="think", options={"top": 2})
    assert task.top == 2 and task.reward("#### 1", {"gold": "1"}) == 1.0
    sys.modules.pop("my_task_pkg_x", None)


# --------------------------------------------------------------------------------------------- generic task

def test_generic_task_with_a_prompt_field_and_the_number_check(tmp_path):
    task = tasks.from_settings("generic", {"prompt_field": "q", "answer_field": "a", "answer_check": "number"},
                               "hash", str(_rows(tmp_path)))
    examples = task.load("train")
    assert [ex["question"] for ex in examples] == ["What is 2 + 3?", "What is 7 - 4?"]
    assert examples[0]["gold"] == "5" and examples[0]["hint"] == "add"  # the row's columns stay
    assert [m["role"] for m in task.messages(examples[0])] == ["system", "user"]
    assert task.reward("2 + 3 = 5 #### 5", examples[0]) == 1.0
    assert task.reward("#### 5 #### 5", examples[0]) == 0.0  # the marker twice
    assert task.reward("#### 6", examples[0]) == 0.0
    assert task.score("so it is 5", examples[0])["correct"]  # eval reads an unmarked answer


def test_generic_task_with_a_template_a_system_prompt_and_the_default_check(tmp_path):
    settings = {"prompt_template": "{q}\nHint: {hint}.", "answer_field": "a", "system_prompt": "Be brief."}
    task = tasks.from_settings("generic", settings, "think", str(_rows(tmp_path)))
    ex = task.load("test")[1]
    assert task.answer_check == "exact" and task.marker == "</think>"
    assert task.messages(ex) == [{"role": "system", "content": "Be brief."},
                                 {"role": "user", "content": "What is 7 - 4?\nHint: subtract."}]
    assert task.reward("<think>7 - 4</think> 3", ex) == 1.0
    no_system = tasks.from_settings("generic", {**settings, "system_prompt": ""}, "hash", str(_rows(tmp_path)))
    assert [m["role"] for m in no_system.messages(ex)] == ["user"]


def test_generic_answer_check_defaults_to_the_first_checking_reward(tmp_path):
    settings = {"prompt_field": "q", "answer_field": "a", "rewards": [parse_reward("format:0.5"),
                                                                      parse_reward("math")]}
    assert tasks.from_settings("generic", settings, "hash", str(_rows(tmp_path))).answer_check == "math"


# --------------------------------------------------------------------------------------------- named rewards

def _generic(tmp_path, check, answer_field="a"):
    return tasks.from_settings("generic", {"prompt_field": "q", "answer_field": answer_field,
                                           "answer_check": check}, "hash", str(_rows(tmp_path)))


@pytest.mark.parametrize("name, completion, row, expected", [
    ("number", "2 + 3 = 5 #### $5.00", 0, 1.0),
    ("number", "#### 6", 0, 0.0),
    ("math", "#### \\frac{10}{2}", 0, 1.0),
    ("math", "#### 4", 0, 0.0),
    ("exact", "#### The 3.", 1, 1.0),
    ("exact", "#### three", 1, 0.0),
    ("f1", "#### 3 apples", 1, 2 / 3),
    ("choice", "#### (B)", 0, 1.0),  # gold is index 1
    ("choice", "#### A", 1, 1.0),  # gold is the letter A
    ("choice", "#### B", 1, 0.0),
])
def test_each_named_reward_on_hand_written_rows(tmp_path, name, completion, row, expected):
    field = "letter" if name == "choice" else "a"
    task = _generic(tmp_path, name, field)
    example = task.load("test")[row]
    [reward] = build_rewards([{"name": name, "weight": 1.0}], task)
    assert reward.fn(completion, example) == pytest.approx(expected)
    assert task.reward(completion, example) == pytest.approx(expected)  # the same check as the task's accuracy


def test_named_rewards_work_on_a_built_in_task():
    task = tasks.get("arithmetic")
    example = task.load("test", limit=1)[0]
    rewards = build_rewards([{"name": "number", "weight": 1.0}, {"name": "format", "weight": 1.0}], task)
    right = f"#### {example['answer']}"
    assert [r.fn(right, example) for r in rewards] == [1.0, 1.0]
    assert [r.fn("no answer", example) for r in rewards] == [0.0, 0.0]


@pytest.mark.parametrize("completion, marker, expected", [
    ("12 + 5 = 17 #### 17", "####", True),
    ("#### 17", "####", True),
    ("17", "####", False),  # no marker
    ("#### 17 #### 17", "####", False),  # twice
    ("12 + 5 = 17 ####", "####", False),  # nothing after it
    ("<think>12 + 5 = 17</think> 17", "</think>", True),
    ("  <think></think>17", "</think>", True),
    ("12 + 5 = 17</think> 17", "</think>", False),  # no opening tag
    ("<think>a</think> 17 </think>", "</think>", False),
    ("<think>a <think> b</think> 17", "</think>", False),
    ("Sure. <think>a</think> 17", "</think>", False),  # text before the think block
    ("<think>a</think>", "</think>", False),  # no answer
])
def test_format_reward_cases(completion, marker, expected):
    assert format_ok(completion, marker) is expected


# --------------------------------------------------------------------------------------------- weights

def test_weighted_sum_metrics_and_advantages_by_hand(tmp_path):
    rewards_file = _write(tmp_path, "my_rewards.py", REWARDS_FILE)
    task = _generic(tmp_path, "number")
    specs = [parse_reward("accuracy"), parse_reward("format:0.5"), parse_reward(f"{rewards_file}:length_penalty:-0.1")]
    rewards = build_rewards(specs, task)
    assert [(r.name, r.weight) for r in rewards] == [("accuracy", 1.0), ("format", 0.5), ("length_penalty", -0.1)]
    ex = task.load("test")[0]  # gold 5
    completions = ["#### 5", "#### 6", "5", "#### 5 ok"]  # lengths 6, 6, 1, 9
    scored = score_rewards(rewards, completions, [ex] * 4, timeout=0)
    assert scored.values == {"accuracy": [1.0, 0.0, 0.0, 1.0], "format": [1.0, 1.0, 0.0, 1.0],
                             "length_penalty": [6.0, 6.0, 1.0, 9.0]}
    expected = [1 + 0.5 - 0.6, 0 + 0.5 - 0.6, 0 + 0 - 0.1, 1 + 0.5 - 0.9]  # 0.9, -0.1, -0.1, 0.6
    assert scored.total == pytest.approx(expected)
    metrics = scored.metrics()
    assert metrics["rewards/accuracy/mean"] == 0.5 and metrics["rewards/format/mean"] == 0.75
    assert metrics["rewards/length_penalty/mean"] == 5.5
    assert metrics["rewards/accuracy/std"] == pytest.approx(math.sqrt(1 / 3))  # sample std of 1, 0, 0, 1
    # groups of 2: (0.9, -0.1) and (-0.1, 0.6); advantage = (r - mean) / (sample std + 1e-4)
    adv = group_advantages(torch.tensor(scored.total), 2)
    s1, s2 = math.sqrt(0.5), math.sqrt(0.245)
    assert adv.tolist() == pytest.approx([0.5 / (s1 + 1e-4), -0.5 / (s1 + 1e-4), -0.35 / (s2 + 1e-4),
                                          0.35 / (s2 + 1e-4)], rel=1e-5)


def test_one_reward_of_weight_one_is_the_task_reward_unchanged(tmp_path):
    task = tasks.get("arithmetic")
    [reward] = build_rewards(None, task)
    values = {"accuracy": [0.1 + 0.2, 1.0, 0.0]}
    assert weighted_sum([reward], values) == values["accuracy"]  # not 1.0 * x + 0.0: the default run is unchanged


def test_a_failing_reward_scores_zero_and_is_counted(tmp_path):
    bad = _write(tmp_path, "bad_rewards.py", """
        def nan(completion, example):
            return float("nan")
        def boom(completion, example):
            raise RuntimeError("boom")
        def text(completion, example):
            return "high"
    """)
    task = tasks.get("arithmetic")
    rewards = build_rewards([{"name": f"{bad}:{fn}", "weight": 1.0} for fn in ("nan", "boom", "text")], task)
    scored = score_rewards(rewards, ["a", "b"], [{}, {}], timeout=5.0)
    assert scored.total == [0.0, 0.0] and scored.failures == 6


# --------------------------------------------------------------------------------------------- config and CLI

def test_reward_and_task_option_flags_parse_into_the_config(tmp_path):
    args = build_parser().parse_args(["train", "--reward", "accuracy", "--reward", "format:0.2", "--reward",
                                      "my_rewards.py:length_penalty:-0.01", "--task-option", "min_terms=2",
                                      "--task-option", "name=a b"])
    cli = {k: v for k, v in vars(args).items() if k in ("rewards", "task_options")}
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("rewards:\n  - {name: accuracy}\n  - {name: format, weight: 0.5}\n"
                         "task_options: {max_terms: 3, min_terms: 1}\n")
    cfg = build_config(load_yaml(yaml_file), cli)
    assert cfg.rewards == [{"name": "accuracy", "weight": 1.0}, {"name": "format", "weight": 0.2},
                           {"name": "my_rewards.py:length_penalty", "weight": -0.01}]  # the flags replace YAML's
    assert cfg.task_options == {"max_terms": 3, "min_terms": 2, "name": "a b"}  # the flags add to YAML's
    assert build_config(load_yaml(yaml_file)).rewards[1] == {"name": "format", "weight": 0.5}
    with pytest.raises(ConfigError, match="weight 'x' is not a number"):
        parse_reward("format:x")


def test_a_task_from_a_file_trains_evaluates_and_resume_keeps_its_rewards(tmp_path, tiny_model_dirs, capsys):
    task_file = _write(tmp_path, "say_task.py", TASK_FILE)
    rewards_file = _write(tmp_path, "my_rewards.py", REWARDS_FILE)
    run = tmp_path / "run"
    argv = ["train", "--model", str(tiny_model_dirs["llama"]), "--task", f"{task_file}:SayTask", "--task-option",
            "top=4", "--reward", "accuracy", "--reward", f"{rewards_file}:odd_length:0.5", "--reward",
            f"{rewards_file}:length_penalty:-0.01", "--output-dir", str(run), "--max-steps", "1",
            "--prompts-per-step", "2", "--group-size", "2", "--max-new-tokens", "4", "--quiet"]
    assert main(argv) == 0
    [metrics] = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    for name in ("accuracy", "odd_length", "length_penalty"):
        assert f"rewards/{name}/mean" in metrics and f"rewards/{name}/std" in metrics
    weighted = (metrics["rewards/accuracy/mean"] + 0.5 * metrics["rewards/odd_length/mean"]
                - 0.01 * metrics["rewards/length_penalty/mean"])
    assert metrics["reward"] == pytest.approx(weighted, abs=1e-6)
    saved = load_yaml(run / "config.yaml")
    assert saved["task"] == f"{task_file}:SayTask" and saved["task_options"] == {"top": 4}
    assert [r["weight"] for r in saved["rewards"]] == [1.0, 0.5, -0.01]

    capsys.readouterr()
    assert main(["eval", "--adapter", str(run), "--limit", "2", "--max-new-tokens", "4", "--quiet"]) == 0
    report = json.loads((run / "eval_say.json").read_text())
    assert report["metrics"]["total"] == 2 and set(report["metrics"]["rewards"]) == {"accuracy", "odd_length",
                                                                                      "length_penalty"}
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--max-steps", "2", "--reward", "accuracy", "--quiet"]) == 2
    assert "was trained with rewards=" in capsys.readouterr().err
