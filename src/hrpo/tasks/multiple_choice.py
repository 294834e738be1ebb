"""Multiple choice: ``mmlu_stem`` (eval), ``arc_c`` (ARC-Challenge) and ``mmlu_arc_train`` (MMLU auxiliary_train
+ ARC-Challenge train in one schema).

Every task accepts rows in either schema (mixed in one file is fine):
  MMLU  question: str, choices: list[str], answer: int (0-based index) or a letter 'A'..'J'; optional subject
  ARC   question: str, choices: {text: list[str], label: list[str]}, answerKey: str (a letter or '1'-'4')
Options are lettered A, B, C, ... by position, so ARC's numeric keys map to the right letter.
"""

from __future__ import annotations

from ..data import FieldError, load_hub, require, require_str_list
from ..scoring import LETTERS, choice_letter
from .base import Task

FIELDS = ("question (str) and either choices (list[str]) + answer (int index or letter) [+ subject (str)], "
          "or ARC's choices ({text: [...], label: [...]}) + answerKey (str)")


def convert_choice_row(row: dict) -> dict:
    """An MMLU- or ARC-schema row -> ``{question, choices, answer_index, gold (letter), subject[, id]}``."""
    if set(row) == {"train"} and isinstance(row["train"], dict):  # cais/mmlu auxiliary_train nests each row
        row = row["train"]
    question = require(row, "question", str)
    raw = require(row, "choices", (list, tuple, dict), "list[str] or {text, label}")
    if isinstance(raw, dict):
        texts = require_str_list(raw, "text")
        labels = [str(x) for x in require(raw, "label", (list, tuple), "list[str]")]
        key = str(require(row, "answerKey", (str, int), "str")).strip()
        if len(labels) != len(texts):
            raise FieldError("choices", f"has {len(texts)} texts but {len(labels)} labels")
        if key not in labels:
            raise FieldError("answerKey", f"'{key}' is not one of the choice labels {labels}")
        index = labels.index(key)
    else:
        texts = require_str_list(row, "choices")
        answer = require(row, "answer", (int, str), "int index or a letter")
        if isinstance(answer, str):
            if answer.strip().upper() not in LETTERS[:len(texts)]:
                raise FieldError("answer", f"'{answer}' is not a letter among {LETTERS[:len(texts)]}")
            index = LETTERS.index(answer.strip().upper())
        else:
            index = answer
    if len(texts) > len(LETTERS):
        raise FieldError("choices", f"has {len(texts)} options (at most {len(LETTERS)})")
    if not 0 <= index < len(texts):
        raise FieldError("answer", f"index {index} is out of range for {len(texts)} choices")
    example = {"question": question.strip(), "choices": [t.strip() for t in texts], "answer_index": index,
               "gold": LETTERS[index], "subject": str(row.get("subject") or "")}
    if row.get("id") is not None:
        example["id"] = str(row["id"])
    return example


class MultipleChoiceTask(Task):
    """Shared prompt ('Question: ...', 'Options:', 'A. ...') and letter scoring."""

    fields = FIELDS

    def convert(self, row: dict) -> dict:
        return convert_choice_row(row)

    def user_text(self, example: dict) -> str:
        options = "\n".join(f"{LETTERS[i]}. {c}" for i, c in enumerate(example["choices"]))
        return f"Question: {example['question']}\nOptions:\n{options}".strip()

    def parse_answer(self, text: str, example: dict | None = None) -> str | None:
        return choice_letter(text, example["choices"] if example else None)

    def is_correct(self, answer: str, example: dict) -> bool:
        return answer == example["gold"]


class MMLUStemTask(MultipleChoiceTask):
    name = "mmlu_stem"
    hub = {"test": ("TIGER-Lab/MMLU-STEM", [None], "test")}


class ARCChallengeTask(MultipleChoiceTask):
    name = "arc_c"
    hub = {split: ("allenai/ai2_arc", ["ARC-Challenge"], split) for split in ("train", "validation", "test")}


class MMLUArcTrainTask(MultipleChoiceTask):
    """Training mix of the paper: MMLU auxiliary_train + ARC-Challenge train, ARC converted to MMLU's schema."""

    name = "mmlu_arc_train"
    hub = {"train": None}

    def _hub_records(self, split: str):
        if split != "train":
            return super()._hub_records(split)
        hint = self.local_data_hint()
        return (load_hub("cais/mmlu", "auxiliary_train", "train", hint)
                + load_hub("allenai/ai2_arc", "ARC-Challenge", "train", hint))
