"""Loading a user's task or reward: ``path/to/file.py:Name`` or ``package.module:name``.

Every failure is a :class:`~hrpo.config.ConfigError` naming the file or module and the attribute (the CLI exits
2 with it, before any model loads): a missing file, a module that does not import (its error in one line), a
missing attribute (the names it has are listed), a task lacking part of the protocol, a reward with the wrong
signature.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Any, Callable

from ..config import ConfigError
from .protocol import missing_members

_FILE_MODULES: dict[Path, Any] = {}  # one module per file, however often it is named


def split_spec(spec: str) -> tuple[str, str]:
    """``'a/b.py:Name'`` -> ``('a/b.py', 'Name')``; ConfigError when either side is empty."""
    source, _, attr = spec.rpartition(":")
    if not source or not attr:
        raise ConfigError(f"'{spec}' is not path/to/file.py:NAME or package.module:NAME")
    return source, attr


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, SyntaxError):
        return f"SyntaxError: {exc.msg} (line {exc.lineno})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _import_file(path: Path):
    path = path.expanduser().resolve()
    if path in _FILE_MODULES:
        return _FILE_MODULES[path]
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"hrpo_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"{path}: cannot be imported as a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a class's module up here
    sys.path.insert(0, str(path.parent))  # so that the file can import its neighbours
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - any error while importing the user's file
        sys.modules.pop(name, None)
        raise ConfigError(f"{path}: could not be imported: {_one_line(exc)}") from None
    finally:
        sys.path.remove(str(path.parent))
    _FILE_MODULES[path] = module
    return module


def _import_module(name: str):
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and name.startswith(exc.name):
            raise ConfigError(f"module '{name}' not found (a file is given as path/to/file.py:NAME)") from None
        raise ConfigError(f"module '{name}' could not be imported: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001
        raise ConfigError(f"module '{name}' could not be imported: {_one_line(exc)}") from None


def load_object(spec: str) -> tuple[Any, str]:
    """The object ``spec`` names and a label for messages (``'file.py:Name'`` or ``'module:Name'``)."""
    source, attr = split_spec(spec)
    if source.endswith(".py") or "/" in source or "\\" in source:
        module, where = _import_file(Path(source)), str(Path(source))
    else:
        module, where = _import_module(source), f"module '{source}'"
    if not hasattr(module, attr):
        names = sorted(n for n in vars(module) if not n.startswith("_") and callable(vars(module)[n]))
        raise ConfigError(f"{where} has no attribute '{attr}' (it defines: {', '.join(names) or 'nothing callable'})")
    return getattr(module, attr), f"{where}:{attr}"


def _accepted(factory: Callable, kwargs: dict) -> tuple[dict, list[str]]:
    """The part of ``kwargs`` that ``factory`` accepts, and the names it does not."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return kwargs, []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return kwargs, []
    return ({k: v for k, v in kwargs.items() if k in params}, [k for k in kwargs if k not in params])


def make_task(spec: str, options: dict | None = None, **standard) -> Any:
    """Build the task ``spec`` names (a class or a factory function) and check it has the Task protocol.

    ``standard`` (prompt_format, data_path) is passed where the factory takes it; every one of ``options``
    (``task_options``) must be a parameter of the factory."""
    factory, where = load_object(spec)
    if not callable(factory):
        raise ConfigError(f"{where} is a {type(factory).__name__}, not a task class or factory")
    kwargs, unknown = _accepted(factory, dict(options or {}))
    if unknown:
        raise ConfigError(f"{where} does not take the task option(s) {', '.join(map(repr, unknown))} (its "
                          f"parameters: {', '.join(inspect.signature(factory).parameters) or 'none'})")
    kwargs.update(_accepted(factory, standard)[0])
    try:
        task = factory(**kwargs)
    except Exception as exc:  # noqa: BLE001 - the user's constructor failed
        raise ConfigError(f"{where}: creating the task failed: {_one_line(exc)}") from None
    missing = missing_members(task)
    if missing:
        raise ConfigError(f"{where}: the task lacks {', '.join(missing)} of the Task protocol (hrpo.tasks."
                          f"TaskProtocol: name, marker, messages, reward, extract_answer, score, load; subclass "
                          f"hrpo.tasks.Task to get them)")
    return task


def load_reward_function(spec: str) -> Callable[[str, dict], float]:
    """The function ``spec`` names, checked to take ``(completion, example)``."""
    fn, where = load_object(spec)
    if not callable(fn):
        raise ConfigError(f"{where} is a {type(fn).__name__}, not a function fn(completion, example) -> float")
    try:
        inspect.signature(fn).bind("completion", {})
    except TypeError:
        raise ConfigError(f"{where}: a reward takes (completion: str, example: dict) and returns a float; "
                          f"{getattr(fn, '__name__', where)}{inspect.signature(fn)} does not") from None
    except ValueError:  # no signature (a builtin): trust it
        pass
    return fn
