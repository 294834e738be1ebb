"""The embedded arithmetic task's test split shares no problem with its training data, by construction."""

import re

import pytest

from hrpo import tasks
from hrpo.tasks.arithmetic import ArithmeticTask


def _problem(question: str) -> tuple[str, int, int]:
    """'What is 12 + 30?' -> ('+', 30, 12): the same key for both orders of an addition."""
    a, b = map(int, re.findall(r"\d+", question))
    return ("+" if "+" in question else "-", max(a, b), min(a, b))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 42, 12345])
def test_training_examples_never_contain_a_test_problem(seed):
    task = tasks.get("arithmetic")
    test = {_problem(row["question"]) for row in task.load("test")}
    assert len(test) == 500  # distinct problems, the default size
    train = task.examples(2000, seed=seed)  # the default num_train_examples
    assert not test & {_problem(row["question"]) for row in train}
    assert not test & {_problem(row["question"]) for row in task.load("train", limit=5000)}


def test_the_whole_problem_space_is_split_in_two():
    task = ArithmeticTask()
    test, train = set(task.problems("test")), set(task.problems("train"))
    assert not test & train and len(test) + len(train) == 2 * (50 * 51 // 2)  # a >= b, both operations
    assert len(test) == len(task.problems("test"))  # no repeats
    assert {_problem(r["question"]) for r in task.examples(20000, seed=7)} == train  # train draws cover it


def test_a_larger_training_set_still_avoids_the_test_problems():
    task = ArithmeticTask(lo=1, hi=9)
    test = {_problem(r["question"]) for r in task.load("test", limit=10**6)}
    assert test and not test & {_problem(r["question"]) for r in task.examples(5000, seed=3)}


def test_answers_are_right():
    for row in tasks.get("arithmetic").load("test", limit=50) + tasks.get("arithmetic").examples(50, seed=1):
        a, b = map(int, re.findall(r"\d+", row["question"]))
        assert int(row["answer"]) == (a + b if "+" in row["question"] else a - b)
