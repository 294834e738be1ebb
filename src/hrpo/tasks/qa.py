"""Retrieval-augmented QA: ``nq``, ``triviaqa``, ``hotpotqa``, ``2wiki``, ``bamboogle`` (local data only).

Row schema (Search-R1 / FlashRAG layout, jsonl or parquet; one row per question):
  question: str
  golden_answers: list[str] (a single str is accepted; Search-R1 parquet rows may instead carry
                  reward_model.ground_truth.target)
  contexts: list of passages, each a string '"Title"\\ntext' (the Wikipedia-2018 passage layout), or an object
            {"contents": '"Title"\\ntext'} (FlashRAG retrieval results) or {"title": ..., "text": ...};
            [] or absent (FlashRAG's own dataset files have no passages) for closed-book. The first 3 go into
            the prompt, as in the reference.
  optional id
Scored by SQuAD-normalised exact match against any gold answer; token F1 is reported as an extra metric (0 when
a yes/no answer differs from a yes/no gold, as HotpotQA's official F1).
"""

from __future__ import annotations

from ..data import FieldError, require, require_str_list
from ..scoring import qa_exact_match, qa_f1, short_answer
from .base import Task

TOP_K = 3
CONTEXT_HEADER = "Context (which may or may not be relevant):"


def format_passage(passage: str | dict, index: int = 0) -> str:
    """One passage as a prompt line: ``Title::::text`` (its lines joined with '::::', title quotes stripped)."""
    if isinstance(passage, dict):
        if isinstance(passage.get("contents"), str):
            passage = passage["contents"]
        elif isinstance(passage.get("text"), str):
            title = passage.get("title")
            passage = f"{title}\n{passage['text']}" if isinstance(title, str) and title else passage["text"]
        else:
            raise FieldError("contexts", f"item {index} is an object without 'contents' or 'text'")
    elif not isinstance(passage, str):
        raise FieldError("contexts", f"item {index} has the wrong type: expected str or object, "
                                     f"got {type(passage).__name__}")
    lines = passage.split("\n")
    lines[0] = lines[0].strip().strip('"')
    return "::::".join(lines)


def _golden_answers(row: dict) -> list[str]:
    if row.get("golden_answers") is None:  # Search-R1 parquet: reward_model.ground_truth.target
        truth = row.get("reward_model", {}).get("ground_truth") if isinstance(row.get("reward_model"), dict) \
            else None
        if isinstance(truth, dict) and truth.get("target") is not None:
            return require_str_list({"golden_answers": truth["target"]}, "golden_answers", allow_str=True)
    return require_str_list(row, "golden_answers", allow_str=True)


class QATask(Task):
    fields = ("question (str), golden_answers (list[str]), contexts (list of '\"Title\"\\ntext' strings or "
              "{contents} / {title, text} objects; [] or absent for closed-book); optional id")

    def __init__(self, prompt_format: str = "hash", data_path: str | None = None,
                 require_single_marker: bool = True, top_k: int = TOP_K):
        super().__init__(prompt_format, data_path, require_single_marker)
        self.top_k = top_k

    def convert(self, row: dict) -> dict:
        question = require(row, "question", str)
        golds = _golden_answers(row)
        contexts = row.get("contexts")
        if contexts is not None:
            contexts = require(row, "contexts", (list, tuple), "a list of passages")
        passages = [format_passage(p, i) for i, p in enumerate(contexts or [])]
        example = {"question": question.strip(), "gold": golds, "contexts": passages[:self.top_k]}
        if row.get("id") is not None:
            example["id"] = str(row["id"])
        return example

    def user_text(self, example: dict) -> str:
        question = f"Question: {example['question']}"
        if not example["contexts"]:
            return question
        return "\n".join([CONTEXT_HEADER, *example["contexts"][:self.top_k], "", question])

    def parse_answer(self, text: str, example: dict | None = None) -> str | None:
        return short_answer(text)

    def is_correct(self, answer: str, example: dict) -> bool:
        return qa_exact_match(answer, example["gold"])

    def score(self, completion: str, example: dict) -> dict:
        result = super().score(completion, example)
        result["f1"] = qa_f1(result["answer"], example["gold"])
        return result


def _qa_task(task_name: str) -> type[QATask]:
    return type(f"QATask_{task_name}", (QATask,), {"name": task_name})


QA_TASKS = {name: _qa_task(name) for name in ("nq", "triviaqa", "hotpotqa", "2wiki", "bamboogle")}
