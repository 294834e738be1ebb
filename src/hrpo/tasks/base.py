"""What every task shares: prompt formats, the answer marker, loading rows (local file or hub), reward/score.

A task turns a dataset row into an *example* (a plain, JSON-serialisable dict with at least ``question`` and
``gold``), an example into chat messages, and a completion into an extracted answer and a reward.
Subclasses implement ``convert``, ``user_text``, ``parse_answer`` and ``is_correct``.
"""

from __future__ import annotations

import random

from ..data import DataError, FieldError, Record, load_hub, read_local
from ..scoring import marker_count_ok, text_after_marker

# The reference's system prompt, verbatim (hrpo-reference.md section 7).
HASH_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The final answer is provided after the #### tag, i.e., {reasoning process} #### {answer}.")

THINK_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the assistant solves it. The "
    "assistant first thinks about the reasoning process inside <think> </think> tags and then gives the user "
    "the final answer right after the closing tag, i.e., <think> {reasoning process} </think> {answer}.")

# prompt format -> (system prompt, answer marker)
PROMPT_FORMATS = {"hash": (HASH_SYSTEM_PROMPT, "####"), "think": (THINK_SYSTEM_PROMPT, "</think>")}


def check_prompt_format(prompt_format: str) -> str:
    if prompt_format not in PROMPT_FORMATS:
        raise DataError(f"unknown prompt format '{prompt_format}' (choose from: {', '.join(PROMPT_FORMATS)})")
    return prompt_format


class Task:
    """Base class. Class attributes: ``name``; ``fields`` (the row schema, for messages and docs);
    ``hub`` = {split: (repo, [configs], hub_split)} for hub-backed tasks (empty: local data only)."""

    name = "task"
    fields = ""
    hub: dict = {}

    def __init__(self, prompt_format: str = "hash", data_path: str | None = None,
                 require_single_marker: bool = True):
        self.prompt_format = check_prompt_format(prompt_format)
        self.system_prompt, self.marker = PROMPT_FORMATS[prompt_format]
        self.data_path = data_path
        self.require_single_marker = require_single_marker

    # ------------------------------------------------------------------ implemented by subclasses
    def convert(self, row: dict) -> dict:
        """A dataset row -> an example dict; raises ``FieldError`` for a missing or mistyped field."""
        raise NotImplementedError

    def user_text(self, example: dict) -> str:
        raise NotImplementedError

    def parse_answer(self, text: str, example: dict | None = None) -> str | None:
        """The answer in the text after the marker (canonical form), or None."""
        raise NotImplementedError

    def is_correct(self, answer: str, example: dict) -> bool:
        raise NotImplementedError

    def parse_unmarked(self, completion: str, example: dict | None = None) -> str | None:
        """The answer in a whole completion without the marker (evaluation only); default as after it."""
        return self.parse_answer(completion, example)

    # ------------------------------------------------------------------ the common interface
    def gold(self, example: dict):
        """The gold answer as shown in reports (a string, or a list of strings for QA)."""
        return example["gold"]

    def messages(self, example: dict) -> list[dict]:
        """``[system prompt of the format, user text]`` (no few-shot examples, as in the reference)."""
        return [{"role": "system", "content": self.system_prompt},
                {"role": "user", "content": self.user_text(example)}]

    def extract_answer(self, completion: str, example: dict | None = None) -> str | None:
        """The answer after the last marker, or None when the marker is missing or no answer is found."""
        text = text_after_marker(completion, self.marker)
        return None if text is None else self.parse_answer(text, example)

    def reward(self, completion: str, example: dict) -> float:
        """1.0 if the extracted answer is correct (and, when ``require_single_marker``, the marker occurs
        exactly once), else 0.0."""
        if self.require_single_marker and not marker_count_ok(completion, self.marker):
            return 0.0
        answer = self.extract_answer(completion, example)
        return float(answer is not None and self.is_correct(answer, example))

    def score(self, completion: str, example: dict) -> dict:
        """Evaluation scoring, lenient on format as the reference's eval: the text after the last marker, or
        the whole completion when there is none. ``{answer, correct, format_ok}`` (+ task extras)."""
        text = text_after_marker(completion, self.marker)
        answer = self.parse_unmarked(completion, example) if text is None else self.parse_answer(text, example)
        correct = answer is not None and self.is_correct(answer, example)
        return {"answer": answer, "correct": bool(correct), "format_ok": marker_count_ok(completion, self.marker)}

    def load(self, split: str = "test", data_path: str | None = None, limit: int | None = None) -> list[dict]:
        """Validated examples of ``split`` from ``data_path`` (default: the one given at construction) or the
        hub; the first ``limit`` when given. Raises DataError naming the file, row and field of a bad row."""
        path = data_path or self.data_path
        records = read_local(path, split) if path else self._hub_records(split)
        examples = [self._convert(rec) for rec in records]
        return examples[:limit] if limit else examples

    def examples(self, n: int, seed: int = 0) -> list[dict]:
        """``n`` training examples: the train split shuffled with ``seed`` (cycled when ``n`` exceeds it)."""
        rows = self.load("train")
        rng = random.Random(seed)
        out: list[dict] = []
        while len(out) < n:
            order = list(rows)
            rng.shuffle(order)
            out += order[:n - len(out)]
        return out

    # ------------------------------------------------------------------ helpers
    def _convert(self, rec: Record) -> dict:
        try:
            return self.convert(rec.row)
        except FieldError as exc:
            raise rec.error(exc, f"Task '{self.name}' expects {self.fields}") from None

    def local_data_hint(self) -> str:
        return (f"Pass local data with --data PATH (a .jsonl, .json or .parquet file, or a directory saved with "
                f"datasets' save_to_disk); task '{self.name}' reads the fields: {self.fields}.")

    def _hub_records(self, split: str) -> list[Record]:
        if not self.hub:
            raise DataError(f"task '{self.name}' has no hub dataset. {self.local_data_hint()}")
        if split not in self.hub:
            raise DataError(f"task '{self.name}' has no '{split}' split on the hub (it has: "
                            f"{', '.join(self.hub)}). {self.local_data_hint()}")
        repo, configs, hub_split = self.hub[split]
        records: list[Record] = []
        for config in configs:
            records += load_hub(repo, config, hub_split, self.local_data_hint())
        return records
