"""The generic task: any local data file, a prompt from one field or a template, a gold answer from another.

    hrpo train --task generic --data rows.jsonl --prompt-field question --answer-field answer --answer-check number
    hrpo train --task generic --data rows.jsonl --prompt-template 'Q: {question}\\nHint: {hint}' --answer-field a

Each example is the row's fields plus ``question`` (the prompt text) and ``gold`` (the answer field), so a reward
function of your own sees every column. The answer check (``number``, ``math``, ``choice``, ``exact``, ``f1`` or
a function ``fn(completion, example) -> float``) gives both the training reward (named ``accuracy``) and the eval
score (correct when it scores at least 1).
"""

from __future__ import annotations

import string

from ..config import ANSWER_CHECKS, ConfigError, is_function_spec
from ..data import DataError, FieldError, require
from ..scoring import marker_count_ok, text_after_marker
from .base import Task
from .checks import CHECKS, check_reward, check_score, choice_gold
from .user_code import load_reward_function


def template_fields(template: str) -> list[str]:
    """The field names a ``{field}`` template uses; ConfigError for a malformed one or a positional ``{}``."""
    names = []
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(f"prompt_template {template!r}: {exc} (write a literal brace as {{{{ or }}}})") from None
    for _, field, _, _ in parsed:
        if field is None:
            continue
        base = field.split(".")[0].split("[")[0]
        if not base or base.isdigit():
            raise ConfigError(f"prompt_template {template!r}: '{{{field}}}' is positional; name a row field, e.g. "
                              f"{{question}}")
        names.append(base)
    return list(dict.fromkeys(names))


def default_answer_check(rewards: list[dict] | None) -> str:
    """The first --reward that checks an answer (a named check or a function), else 'exact'."""
    for reward in rewards or []:
        if reward["name"] in ANSWER_CHECKS or is_function_spec(reward["name"]):
            return reward["name"]
    return "exact"


class GenericTask(Task):
    """Rows of a local file; the prompt from ``prompt_field`` or ``prompt_template``, the gold answer from
    ``answer_field`` (a string, a number, or a list of accepted answers)."""

    name = "generic"

    def __init__(self, prompt_format: str = "hash", data_path: str | None = None,
                 require_single_marker: bool = True, prompt_field: str | None = None,
                 prompt_template: str | None = None, answer_field: str | None = None,
                 system_prompt: str | None = None, answer_check: str | None = None):
        super().__init__(prompt_format, data_path, require_single_marker)
        if (prompt_field is None) == (prompt_template is None):
            raise ConfigError("task generic needs exactly one of --prompt-field FIELD or --prompt-template TEXT "
                              "(YAML: prompt_field / prompt_template)")
        if not answer_field:
            raise ConfigError("task generic needs --answer-field FIELD (YAML: answer_field): the row field with "
                              "the gold answer")
        self.prompt_field, self.prompt_template, self.answer_field = prompt_field, prompt_template, answer_field
        self.template_fields = template_fields(prompt_template) if prompt_template is not None else [prompt_field]
        if system_prompt is not None:
            self.system_prompt = system_prompt
        self.answer_check = answer_check or "exact"
        if self.answer_check in CHECKS:
            self.check, self.check_fn = CHECKS[self.answer_check], None
        elif is_function_spec(self.answer_check):
            self.check, self.check_fn = None, load_reward_function(self.answer_check)
        else:
            raise ConfigError(f"answer_check '{self.answer_check}' is not one of {', '.join(CHECKS)} or "
                              f"path/to/file.py:fn / module:fn")
        prompt = f"prompt_template {prompt_template!r}" if prompt_template is not None else prompt_field
        self.fields = (f"{', '.join(self.template_fields)} (for the prompt: {prompt}), {answer_field} (the gold "
                       f"answer: str, number or list of str)")

    def load(self, split: str = "test", data_path: str | None = None, limit: int | None = None) -> list[dict]:
        if not (data_path or self.data_path):
            raise DataError("task generic reads your data: pass --data PATH (a .jsonl, .json or .parquet file, or a "
                            f"directory with {split}.* files)")
        return super().load(split, data_path, limit)

    # ------------------------------------------------------------------ rows and prompts
    def convert(self, row: dict) -> dict:
        if self.prompt_template is None:
            prompt = require(row, self.prompt_field, str)
        else:
            for field in self.template_fields:
                if field not in row or row[field] is None:
                    raise FieldError(field, f"is missing (the prompt template names it: {self.prompt_template!r})")
            try:
                prompt = self.prompt_template.format(**row)
            except (KeyError, IndexError, AttributeError, ValueError, TypeError) as exc:
                raise FieldError(self.template_fields[0], f"does not fit the prompt template ({exc})") from None
        gold = require(row, self.answer_field, (str, int, float, list, tuple), "str, number or list of str")
        if isinstance(gold, (list, tuple)):
            if not gold or any(isinstance(g, bool) or not isinstance(g, (str, int, float)) for g in gold):
                raise FieldError(self.answer_field, "must be a non-empty list of strings or numbers")
            gold = [str(g).strip() for g in gold]
        elif self.answer_check == "choice":
            gold = choice_gold(gold)
        else:
            gold = str(gold).strip()
        if gold == "" or gold == []:
            raise FieldError(self.answer_field, "is empty")
        return {**row, "question": prompt.strip(), "gold": gold}

    def user_text(self, example: dict) -> str:
        return example["question"]

    def messages(self, example: dict) -> list[dict]:
        """The system prompt (the format's unless ``system_prompt`` was given; none when it is '') and the prompt."""
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return system + [{"role": "user", "content": example["question"]}]

    # ------------------------------------------------------------------ answers
    def parse_answer(self, text: str, example: dict | None = None) -> str | None:
        return text if self.check is None else self.check.parse(text, example)

    def parse_unmarked(self, completion: str, example: dict | None = None) -> str | None:
        return completion if self.check is None else self.check.parse_unmarked(completion, example)

    def is_correct(self, answer: str, example: dict) -> bool:
        return self.check is not None and self.check.value(answer, example) >= 1.0

    def reward(self, completion: str, example: dict) -> float:
        if self.check_fn is not None:
            return float(self.check_fn(completion, example))
        return check_reward(self.check, completion, example, self.marker, self.require_single_marker)

    def score(self, completion: str, example: dict) -> dict:
        if self.check is not None:
            return check_score(self.check, completion, example, self.marker)
        try:
            value = float(self.check_fn(completion, example))
        except Exception:  # noqa: BLE001 - a failing user check scores 0, as in training
            value = 0.0
        value = value if value == value else 0.0  # NaN scores 0
        return {"answer": text_after_marker(completion, self.marker), "correct": value >= 1.0,
                "format_ok": marker_count_ok(completion, self.marker), "score": value}

