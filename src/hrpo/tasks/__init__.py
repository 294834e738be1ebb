"""Tasks: ``get(spec, prompt_format='hash', options=None, ...)`` returns a task object.

Every task has the Task protocol (:class:`TaskProtocol`, in protocol.py: ``name``, ``marker``,
``messages(example)``, ``reward(completion, example) -> float``, ``extract_answer(completion, example=None)``,
``score(completion, example) -> dict`` (eval) and ``load(split, data_path=None, limit=None) -> list[dict]``).

Specs: built-in names, math ``gsm8k``, ``math``, ``math500``; multiple choice ``mmlu_stem``, ``arc_c``,
``mmlu_arc_train``; retrieval QA ``nq``, ``triviaqa``, ``hotpotqa``, ``2wiki``, ``bamboogle``; procedural
``arithmetic``; ``generic`` (any local file, generic.py); ``rg:<generator>`` (reasoning-gym, rg.py); and your own
``path/to/file.py:Class`` or ``package.module:factory`` (user_code.py). The row schema of each built-in is in its
module docstring (math.py, multiple_choice.py, qa.py), in ``hrpo tasks`` and in ``hrpo eval -h``.
"""

from __future__ import annotations

import inspect

from ..config import GENERIC_KEYS, ConfigError
from .arithmetic import ArithmeticTask
from .base import PROMPT_FORMATS, Task
from .generic import GenericTask, default_answer_check
from .math import GSM8KTask, Math500Task, MathTask
from .multiple_choice import ARCChallengeTask, MMLUArcTrainTask, MMLUStemTask
from .protocol import TaskProtocol, missing_members
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
  generic         the fields you name: --prompt-field F (or --prompt-template '..{F}..'), --answer-field A
One --data for all tasks, or one per --task in the same order.
"""

_TASKS = {"arithmetic": ArithmeticTask, "generic": GenericTask, "gsm8k": GSM8KTask, "math": MathTask,
          "math500": Math500Task, "mmlu_stem": MMLUStemTask, "arc_c": ARCChallengeTask,
          "mmlu_arc_train": MMLUArcTrainTask, **QA_TASKS}


class UnknownTaskError(ConfigError, KeyError):
    """``get`` was given a name that is not registered (a KeyError, and a ConfigError for the CLI)."""

    def __str__(self) -> str:
        return str(self.args[0])


def get(name: str, prompt_format: str | None = None, options: dict | None = None, **kwargs):
    """The task ``name`` names: a registered name (see :func:`names`), ``generic``, ``rg:<generator>``, or
    ``path/to/file.py:Class`` / ``package.module:factory``. ``prompt_format`` is 'hash' (marker '####', default)
    or 'think' (marker '</think>'); ``options`` (``task_options``) and other keyword arguments go to the task
    (e.g. ``data_path``, ``require_single_marker``, the generic task's ``prompt_field``). Raises ConfigError for a
    name, file, module, option or protocol problem."""
    if prompt_format is not None:
        kwargs["prompt_format"] = prompt_format
    if name.startswith("rg:"):
        from . import rg

        return rg.make(name, **kwargs, **(options or {}))
    if ":" in name:
        from .user_code import make_task

        return make_task(name, options, **kwargs)
    key = name if name in _TASKS else name.replace("-", "_").lower()
    if key not in _TASKS:
        raise UnknownTaskError(f"unknown task '{name}'. Available tasks: {', '.join(names())}; also "
                               f"rg:<generator> (reasoning-gym) and your own path/to/file.py:Class or "
                               f"module:factory (`hrpo tasks` lists them)")
    factory = _TASKS[key]
    if options:
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        unknown = [k for k in options if k not in params] if not any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()) else []
        if unknown:
            own = [k for k in params if k not in ("prompt_format", "data_path")]
            raise ConfigError(f"task '{name}' does not take the task option(s) {', '.join(map(repr, unknown))} "
                              f"(its options: {', '.join(own) or 'none'})")
    return factory(**kwargs, **(options or {}))


def from_settings(name: str, settings: dict, prompt_format: str | None = None, data_path: str | None = None,
                  own_options: bool = True):
    """The task ``name`` with the run's task settings: ``settings`` holds config.TASK_KEYS (task_options,
    rewards and the generic task's keys; missing ones are None). ``own_options``: pass task_options (they belong
    to the training task; a different eval task gets none)."""
    kwargs: dict = {"data_path": data_path}
    if name == "generic":
        kwargs.update({key: settings.get(key) for key in GENERIC_KEYS})
        kwargs["answer_check"] = settings.get("answer_check") or default_answer_check(settings.get("rewards"))
    options = settings.get("task_options") if own_options else None
    return get(name, prompt_format=prompt_format, options=options, **kwargs)


def gold_of(task, example: dict):
    """The gold answer shown in reports: ``task.gold(example)`` where the task has it, else the example's
    ``gold`` or ``answer``."""
    gold = getattr(task, "gold", None)
    return gold(example) if callable(gold) else example.get("gold", example.get("answer"))


def register(name: str, factory) -> None:
    """Make ``factory(**kwargs)`` (a class or function returning a task object) available as ``get(name)``."""
    _TASKS[name] = factory


def names() -> list[str]:
    return sorted(_TASKS)


__all__ = ["get", "from_settings", "gold_of", "register", "names", "Task", "TaskProtocol", "missing_members",
           "GenericTask", "PROMPT_FORMATS", "UnknownTaskError", "DATA_HELP", "ArithmeticTask",
           "GSM8KTask", "MathTask", "Math500Task", "MMLUStemTask", "ARCChallengeTask", "MMLUArcTrainTask"]
