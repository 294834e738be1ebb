"""Task registry: ``get(name)`` returns an object with ``examples``, ``messages``, ``reward`` and
``extract_answer``."""

from __future__ import annotations

from .arithmetic import ArithmeticTask

_TASKS = {"arithmetic": ArithmeticTask}


def get(name: str, **kwargs):
    """The task called ``name`` (see :func:`names`)."""
    if name not in _TASKS:
        raise KeyError(f"unknown task '{name}'. Available tasks: {', '.join(names())}")
    return _TASKS[name](**kwargs)


def register(name: str, factory) -> None:
    """Make ``factory()`` (a class or function returning a task object) available as ``get(name)``."""
    _TASKS[name] = factory


def names() -> list[str]:
    return sorted(_TASKS)
