"""The embedded procedural task: two-number additions and subtractions, answered after the '####' marker.

Sized for the embedded SmolLM2-135M-Instruct: with the 2-shot prompt below its starting reward is clearly
above 0 and below 1, so RL has signal from the first step.
"""

from __future__ import annotations

import random

from ..data import require
from ..rewards import parse_number, text_after_marker, unmarked_number
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
TEST_SEED = 1_000_003  # seed of the generated 'test' split (train examples use the run's seed)


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

    def examples(self, n: int, seed: int = 0) -> list[dict]:
        """``n`` examples ``{"question": str, "answer": str}``, deterministic in ``seed`` (from the data file,
        shuffled, when the task has a ``data_path``)."""
        if self.data_path:
            return super().examples(n, seed)
        rng = random.Random(seed)
        rows = []
        for _ in range(n):
            a, b = rng.randint(self.lo, self.hi), rng.randint(self.lo, self.hi)
            if rng.random() < 0.5:
                rows.append({"question": f"What is {a} + {b}?", "answer": str(a + b)})
            else:
                a, b = max(a, b), min(a, b)
                rows.append({"question": f"What is {a} - {b}?", "answer": str(a - b)})
        return rows

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
        """Rows of a data file when one is given, else ``limit`` (default 500) generated examples; the
        'test' split uses its own fixed seed."""
        if data_path or self.data_path:
            return super().load(split, data_path, limit)
        return self.examples(limit or 500, seed=TEST_SEED if split == "test" else 0)

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
