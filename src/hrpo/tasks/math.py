"""Math word problems and competition math: ``gsm8k``, ``math`` (all Hendrycks subjects), ``math500``.

Row schemas (the hub datasets' own field names):
  gsm8k   question: str, answer: str ending in '#### N' (or just the number N)
  math    problem: str, solution: str with a \\boxed{} answer (several boxes in one answer are a set of
          answers); optional answer: str (used instead of the boxed solution when present), level: str,
          type: str (the subject)
  math500 problem: str, answer: str; optional solution, subject, level, unique_id
"""

from __future__ import annotations

from ..data import FieldError, require
from ..scoring import (boxed_answer, final_number, format_number, math_answer_text, math_equal, math_unmarked_text,
                       unmarked_number)
from .base import Task

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")


class GSM8KTask(Task):
    """Grade-school math; the answer is a number compared exactly (1,000 == 1000, $18.00 == 18, 3/4 == 0.75)."""

    name = "gsm8k"
    fields = "question (str), answer (str: the solution ending in '#### N', or just N)"
    hub = {"train": ("openai/gsm8k", ["main"], "train"), "test": ("openai/gsm8k", ["main"], "test")}

    def convert(self, row: dict) -> dict:
        question = require(row, "question", str)
        answer = require(row, "answer", (str, int, float), "str")
        final = str(answer).rsplit("####", 1)[-1].strip()
        value = final_number(final)
        if value is None:
            raise FieldError("answer", f"has no final number (expected '... #### N'), got {str(answer)[-60:]!r}")
        example = {"question": question.strip(), "gold": format_number(value)}
        if "####" in str(answer):
            example["solution"] = str(answer)
        return example

    def user_text(self, example: dict) -> str:
        return example["question"]

    def parse_answer(self, text: str, example: dict | None = None) -> str | None:
        return format_number(final_number(text))

    def parse_unmarked(self, completion: str, example: dict | None = None) -> str | None:
        return format_number(unmarked_number(completion))

    def is_correct(self, answer: str, example: dict) -> bool:
        pred, gold = final_number(answer), final_number(example["gold"])
        return pred is not None and pred == gold


class MathTask(Task):
    """Competition math (Hendrycks MATH, all subjects); answers compared by mathematical equivalence."""

    name = "math"
    fields = ("problem (str), solution (str with a \\boxed{} answer) or answer (str); optional level (str), "
              "type or subject (str)")
    hub = {"train": ("EleutherAI/hendrycks_math", list(MATH_SUBJECTS), "train"),
           "test": ("EleutherAI/hendrycks_math", list(MATH_SUBJECTS), "test")}

    def __init__(self, prompt_format: str = "hash", data_path: str | None = None,
                 require_single_marker: bool = True, verify_timeout: float = 5.0):
        super().__init__(prompt_format, data_path, require_single_marker)
        self.verify_timeout = verify_timeout

    def convert(self, row: dict) -> dict:
        problem = require(row, "problem", str)
        if row.get("answer") is not None:
            gold = str(require(row, "answer", (str, int, float), "str"))
        else:
            solution = require(row, "solution", str, "str with a \\boxed{} answer")
            gold = boxed_answer(solution)
            if gold is None:
                raise FieldError("solution", "has no \\boxed{} answer (and the row has no 'answer' field)")
        if not gold.strip():
            raise FieldError("answer", "is empty")
        example = {"question": problem.strip(), "gold": gold.strip()}
        subject = row.get("type", row.get("subject"))
        if subject is not None:
            example["subject"] = str(subject)
        for key in ("level", "unique_id"):
            if row.get(key) is not None:
                example[key] = row[key]
        if isinstance(row.get("solution"), str) and row["solution"].strip():
            example["solution"] = row["solution"]  # what hrpo sft trains on
        return example

    def user_text(self, example: dict) -> str:
        return example["question"]

    def parse_answer(self, text: str, example: dict | None = None) -> str | None:
        return math_answer_text(text)

    def parse_unmarked(self, completion: str, example: dict | None = None) -> str | None:
        return math_unmarked_text(completion)

    def is_correct(self, answer: str, example: dict) -> bool:
        return math_equal(answer, example["gold"], timeout=self.verify_timeout)


class Math500Task(MathTask):
    """The MATH-500 subset (HuggingFaceH4/MATH-500, test only)."""

    name = "math500"
    fields = "problem (str), answer (str); optional solution, subject, level, unique_id"
    hub = {"test": ("HuggingFaceH4/MATH-500", [None], "test")}
