"""Task registry: ``get(name, prompt_format='hash', ...)`` returns a task object.

Every task has ``name``, ``marker`` (from its prompt format), ``messages(example)``, ``reward(completion,
example) -> float``, ``extract_answer(completion, example=None) -> str | None``, ``score(completion, example)
-> dict`` (eval), ``load(split, data_path=None, limit=None) -> list[dict]`` and ``examples(n, seed)``.

Names: math ``gsm8k``, ``math``, ``math500``; multiple choice ``mmlu_stem``, ``arc_c``, ``mmlu_arc_train``;
retrieval QA ``nq``, ``triviaqa``, ``hotpotqa``, ``2wiki``, ``bamboogle``; procedural ``arithmetic``.
The row schema of each is in its module docstring (math.py, multiple_choice.py, qa.py) and in ``hrpo eval -h``.
"""

from __future__ import annotations

from ..config import ConfigError
from .arithmetic import ArithmeticTask
from .base import PROMPT_FORMATS, Task
from .math import GSM8KTask, Math500Task, MathTask
from .multiple_choice import ARCChallengeTask, MMLUArcTrainTask, MMLUStemTask
from .qa import QA_TASKS

DATA_HELP = """\
--data PATH: a .jsonl, .json or .parquet file, a directory saved with datasets' save_to_disk, or a directory
with PATH/<split>/ files (e.g. Hendrycks MATH/test/<subject>/*.json) or <split>.* / <split>-* files.
Fields per task (the hub datasets' own names):
  gsm8k           question, answer ('... #### N')
  math            problem, solution (with \\boxed{}) or answer; optional type, level
  math500         problem, answer; optional subject, level, unique_id
  mmlu_stem, arc_c, mmlu_arc_train
                  question, choices (list) + answer (int or letter) [+ subject],
                  or ARC's choices {text, label} + answerKey
  nq, triviaqa, hotpotqa, 2wiki, bamboogle
                  question, golden_answers (list), contexts (list of '"Title"\\ntext' passages; first 3 used;
                  optional: without it the prompt has no passages)
  arithmetic      question, answer (generated when --data is not given)
One --data for all tasks, or one per --task in the same order.
"""

_TASKS = {"arithmetic": ArithmeticTask, "gsm8k": GSM8KTask, "math": MathTask, "math500": Math500Task,
          "mmlu_stem": MMLUStemTask, "arc_c": ARCChallengeTask, "mmlu_arc_train": MMLUArcTrainTask, **QA_TASKS}


class UnknownTaskError(ConfigError, KeyError):
    """``get`` was given a name that is not registered (a KeyError, and a ConfigError for the CLI)."""

    def __str__(self) -> str:
        return str(self.args[0])


def get(name: str, prompt_format: str | None = None, **kwargs):
    """The task called ``name`` (see :func:`names`); ``prompt_format`` is 'hash' (marker '####', default) or
    'think' (marker '</think>'); other keyword arguments go to the task (e.g. ``data_path``,
    ``require_single_marker``)."""
    key = name if name in _TASKS else name.replace("-", "_").lower()
    if key not in _TASKS:
        raise UnknownTaskError(f"unknown task '{name}'. Available tasks: {', '.join(names())}")
    if prompt_format is not None:
        kwargs["prompt_format"] = prompt_format
    return _TASKS[key](**kwargs)


def register(name: str, factory) -> None:
    """Make ``factory(**kwargs)`` (a class or function returning a task object) available as ``get(name)``."""
    _TASKS[name] = factory


def names() -> list[str]:
    return sorted(_TASKS)


__all__ = ["get", "register", "names", "Task", "PROMPT_FORMATS", "UnknownTaskError", "DATA_HELP", "ArithmeticTask",
           "GSM8KTask", "MathTask", "Math500Task", "MMLUStemTask", "ARCChallengeTask", "MMLUArcTrainTask"]
