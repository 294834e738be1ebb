"""What `hrpo tasks` prints: the built-in tasks with their fields, the generic task, your own tasks, and the
reasoning-gym generators when reasoning-gym is installed; `hrpo tasks NAME` shows one task in detail."""

from __future__ import annotations

import inspect
import textwrap

from ..config import ANSWER_CHECKS, REWARD_NAMES, ConfigError
from . import _TASKS, rg

WIDTH = 100


def _source(factory) -> str:
    if getattr(factory, "procedural", False):
        return "generated"
    hub = getattr(factory, "hub", None) or {}
    if any(spec is None for spec in hub.values()):  # a loader of its own (mmlu_arc_train: two hub datasets)
        return "hub"
    repos = sorted({spec[0] for spec in hub.values() if spec})
    return ", ".join(repos) if repos else "local --data only"


def _builtin_rows() -> list[tuple[str, str, str]]:
    """(names, source, fields) of the registered task classes, tasks with the same source and fields together."""
    groups: dict[tuple[str, str], list[str]] = {}
    for name in sorted(_TASKS):
        factory = _TASKS[name]
        if name == "generic" or not isinstance(factory, type):
            continue
        groups.setdefault((_source(factory), getattr(factory, "fields", "") or "-"), []).append(name)
    return sorted((", ".join(names), source, fields) for (source, fields), names in groups.items())


def overview() -> str:
    """The list `hrpo tasks` prints."""
    lines = ["Built-in tasks (--task NAME; --data PATH gives local rows with these fields):", ""]
    rows = _builtin_rows()
    for names, source, fields in rows:
        lines.append(f"  {names}  ({source})")
        lines += textwrap.wrap(f"fields: {fields}", WIDTH, initial_indent="      ", subsequent_indent="        ")
    lines += ["", "Your own data and code:",
              "  generic                          --data rows.jsonl --prompt-field F (or --prompt-template "
              "'..{F}..')",
              f"                                   --answer-field A [--answer-check {'|'.join(ANSWER_CHECKS)}|"
              "file.py:fn]",
              "  path/to/file.py:Class            a class or factory with the Task protocol (hrpo.tasks.TaskProtocol)",
              "  package.module:factory           the same, from an importable module",
              "", f"Rewards (--reward NAME[:WEIGHT], repeatable): {', '.join(REWARD_NAMES)}, file.py:fn, module:fn",
              ""]
    names = rg.generator_names()
    if not names:
        lines.append(f"reasoning-gym generators (--task rg:NAME): reasoning-gym is not installed; "
                     f"{rg.HOW_TO_INSTALL}")
    else:
        lines.append(f"reasoning-gym generators (--task rg:NAME, options with --task-option KEY=VALUE; "
                     f"`hrpo tasks rg:NAME` shows them), {len(names)}:")
        lines += textwrap.wrap(", ".join(names), WIDTH, initial_indent="  ", subsequent_indent="  ")
    return "\n".join(lines) + "\n"


def detail(name: str) -> str:
    """One task: a reasoning-gym generator's options and a sample question, or a built-in task's fields."""
    if name.startswith("rg:"):
        generator = name.split(":", 1)[1]
        task = rg.make(name)  # unknown names raise ConfigError with the close ones
        options = rg.generator_options(generator)
        example = task.load("test", limit=1)[0]
        lines = [f"rg:{generator} (reasoning-gym), scored with its own score_answer", "options (defaults):"]
        lines += [f"  {key} = {value!r}" for key, value in options.items()]
        lines += ["  shots = 2  (hrpo's: worked examples before the question)", "", "a test question:",
                  textwrap.indent(example["question"], "  "), f"gold answer: {example['gold']}"]
        return "\n".join(lines) + "\n"
    key = name if name in _TASKS else name.replace("-", "_").lower()
    if key not in _TASKS:
        raise ConfigError(f"unknown task '{name}' (`hrpo tasks` lists them)")
    factory = _TASKS[key]
    doc = inspect.getdoc(factory) or ""
    fields = getattr(factory, "fields", "") or ("the fields you name (--prompt-field / --prompt-template, "
                                                "--answer-field)" if key == "generic" else "-")
    return f"{key}: {_source(factory)}\nfields: {fields}\n\n{doc}\n"
