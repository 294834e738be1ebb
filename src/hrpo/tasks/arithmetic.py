"""The embedded procedural task: two-number additions and subtractions, answered after the '####' marker.

Sized for the embedded SmolLM2-135M-Instruct: with the 2-shot prompt below its starting reward is clearly
above 0 and below 1, so RL has signal from the first step.
"""

from __future__ import annotations

import random
import re

from ..data import require
from ..scoring import parse_number, text_after_marker, unmarked_number
from .base import Task

# Short on purpose: on CPU most of a step's compute is the prompt, and the 2-shot examples carry the format.
SYSTEM_PROMPT = "Solve the problem. Write the final answer after ####."

SHOTS = (
    ("What is 14 + 23?", "14 + 23 = 37 #### 37"),
    ("What is 52 - 18?", "52 - 18 = 34 #### 34"),
)

# The same prompt for the think format (marker '</think>').
THINK_SYSTEM_PROMPT = "Solve the problem. Think inside <think> </think>, then write the final answer."
THINK_SHOTS = (
    ("What is 14 + 23?", "<think>14 + 23 = 37</think> 37"),
    ("What is 52 - 18?", "<think>52 - 18 = 34</think> 34"),
)
# Every problem (an unordered operand pair and an operation) belongs to exactly one split, decided by this
# fixed seed and never by the run's: test problems are never trained on, whatever the seed or the size.
SPLIT_SEED = 1_000_003
_QUESTION = re.compile(r"What is (-?\d+) ([+-]) (-?\d+)\?")
TEST_FRACTION = 0.25  # of the distinct problems (operands 1-50: 2,550 problems, 638 of them test)


class ArithmeticTask(Task):
    """``a + b`` or ``a - b`` with operands in [lo, hi]; gold answers are integers.

    With ``data_path`` (or ``load(data_path=...)``) rows are read from a file instead: question (str),
    answer (str or int).
    """

    name = "arithmetic"
    marker = "####"
    procedural = True  # examples are generated (train uses the run's seed), no data file needed
    fields = "question (str), answer (str or int)"

    def __init__(self, lo: int = 1, hi: int = 50, require_single_marker: bool = True,
                 prompt_format: str = "hash", data_path: str | None = None):
        super().__init__(prompt_format=prompt_format, data_path=data_path,
                         require_single_marker=require_single_marker)
        self.lo, self.hi = lo, hi

    def problems(self, split: str) -> list[tuple[str, int, int]]:
        """The distinct problems ``(op, a, b)`` (a >= b; op '+' or '-') of ``split`` ('test' or 'train'), in a
        fixed order: the problems with operands in [lo, hi], shuffled by SPLIT_SEED, the first TEST_FRACTION of
        them 'test' and the rest 'train'. ``a + b`` and ``b + a`` are one problem."""
        every = [(op, a, b) for op in "+-" for a in range(self.lo, self.hi + 1) for b in range(self.lo, a + 1)]
        if len(every) < 2:
            raise ValueError(f"operands {self.lo}-{self.hi} give {len(every)} problem(s): too few for two splits")
        random.Random(SPLIT_SEED).shuffle(every)
        n_test = max(1, round(TEST_FRACTION * len(every)))
        return every[:n_test] if split == "test" else every[n_test:]

    def examples(self, n: int, seed: int = 0) -> list[dict]:
        """``n`` training examples ``{"question": str, "answer": str}``, drawn with replacement from the 'train'
        problems, deterministic in ``seed`` (from the data file, shuffled, when the task has a ``data_path``)."""
        if self.data_path:
            return super().examples(n, seed)
        rng = random.Random(seed)
        pool = self.problems("train")
        return [self._example(*rng.choice(pool), swap=rng.random() < 0.5) for _ in range(n)]

    @staticmethod
    def _example(op: str, a: int, b: int, swap: bool = False) -> dict:
        """The row for problem (op, a, b), a >= b; ``swap`` writes an addition as ``b + a``."""
        if op == "+":
            x, y = (b, a) if swap else (a, b)
            return {"question": f"What is {x} + {y}?", "answer": str(a + b)}
        return {"question": f"What is {a} - {b}?", "answer": str(a - b)}

    def solution(self, example: dict) -> str | None:
        """The gold completion ``hrpo sft`` trains on, in the format of the 2-shot prompt: ``14 + 23 = 37 #### 37``
        (think format: ``<think>14 + 23 = 37</think> 37``); None when the question is not 'What is a +/- b?'."""
        match = _QUESTION.fullmatch(example["question"].strip())
        if match is None:
            return None
        line = f"{match[1]} {match[2]} {match[3]} = {example['answer']}"
        return f"{line} #### {example['answer']}" if self.prompt_format == "hash" else \
            f"<think>{line}</think> {example['answer']}"

    def messages(self, example: dict) -> list[dict]:
        """Chat messages: system prompt, two worked examples, then the question."""
        system, shots = (SYSTEM_PROMPT, SHOTS) if self.prompt_format == "hash" else (THINK_SYSTEM_PROMPT,
                                                                                     THINK_SHOTS)
        msgs = [{"role": "system", "content": system}]
        for question, answer in shots:
            msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        msgs.append({"role": "user", "content": example["question"]})
        return msgs

    def extract_answer(self, completion: str, example: dict | None = None) -> str | None:
        return text_after_marker(completion, self.marker)

    # ------------------------------------------------------------------ the common task interface
    def load(self, split: str = "test", data_path: str | None = None, limit: int | None = None) -> list[dict]:
        """Rows of a data file when one is given; else for 'test' the first ``limit`` (default 500; at most the
        638 there are with operands 1-50) distinct test problems, and for any other split ``limit`` (default
        500) examples drawn from the train problems (seed 0). The two never share a problem."""
        if data_path or self.data_path:
            return super().load(split, data_path, limit)
        if split != "test":
            return self.examples(limit or 500, seed=0)
        rng = random.Random(SPLIT_SEED + 1)  # which way round each test addition is written
        test = self.problems("test")[:limit or 500]
        return [self._example(*problem, swap=rng.random() < 0.5) for problem in test]

    def convert(self, row: dict) -> dict:
        question = require(row, "question", str)
        answer = require(row, "answer", (str, int), "str or int")
        return {"question": question.strip(), "answer": str(answer).strip()}

    def gold(self, example: dict) -> str:
        return example["answer"]

    def parse_answer(self, text: str, example: dict | None = None) -> str | None:
        value = parse_number(text)
        return None if value is None else str(value)

    def parse_unmarked(self, completion: str, example: dict | None = None) -> str | None:
        value = unmarked_number(completion)
        return None if value is None else str(value)

    def is_correct(self, answer: str, example: dict) -> bool:
        value = parse_number(answer)
        return value is not None and value == parse_number(example["answer"])
