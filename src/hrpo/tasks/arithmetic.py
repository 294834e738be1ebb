"""The embedded procedural task: two-number additions and subtractions, answered after the '####' marker.

Sized for the embedded SmolLM2-135M-Instruct: with the 2-shot prompt below its starting reward is clearly
above 0 and below 1, so RL has signal from the first step.
"""

from __future__ import annotations

import random

from ..rewards import marker_count_ok, parse_number, text_after_marker

# Short on purpose: on CPU most of a step's compute is the prompt, and the 2-shot examples carry the format.
SYSTEM_PROMPT = "Solve the problem. Write the final answer after ####."

SHOTS = (
    ("What is 14 + 23?", "14 + 23 = 37 #### 37"),
    ("What is 52 - 18?", "52 - 18 = 34 #### 34"),
)


class ArithmeticTask:
    """``a + b`` or ``a - b`` with operands in [lo, hi]; gold answers are integers."""

    name = "arithmetic"
    marker = "####"

    def __init__(self, lo: int = 1, hi: int = 50, require_single_marker: bool = True):
        self.lo, self.hi = lo, hi
        self.require_single_marker = require_single_marker

    def examples(self, n: int, seed: int = 0) -> list[dict]:
        """``n`` examples ``{"question": str, "answer": str}``, deterministic in ``seed``."""
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
        msgs = [{"role": "system", "content": SYSTEM_PROMPT}]
        for question, answer in SHOTS:
            msgs += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        msgs.append({"role": "user", "content": example["question"]})
        return msgs

    def extract_answer(self, completion: str) -> str | None:
        return text_after_marker(completion, self.marker)

    def reward(self, completion: str, example: dict) -> float:
        """1.0 if the number after the last marker equals the answer (and the marker occurs once), else 0.0."""
        if self.require_single_marker and not marker_count_ok(completion, self.marker):
            return 0.0
        value = parse_number(self.extract_answer(completion))
        return float(value is not None and value == parse_number(example["answer"]))
