"""Reading task data: local files (jsonl, json, parquet, a saved HF dataset directory) or hub datasets.

Every row comes back as a :class:`Record` that knows where it came from (file and 1-based line / row / item),
so a task can report a malformed row as ``path: line 7: field 'answer' is missing``.

Accepted local layouts for ``--data PATH``:
  * ``x.jsonl``: one JSON object per line (blank lines skipped);
  * ``x.json``: a list of objects, an object ``{split: [objects]}`` (or one key, e.g. ``{"data": [...]}``),
    a single object (one row, as in the Hendrycks MATH per-problem files), or JSON lines under a .json name;
  * ``x.parquet``: one row per table row;
  * a directory saved with ``datasets``' ``save_to_disk`` (a ``DatasetDict`` uses the split);
  * any other directory: the files under ``PATH/<split>/`` (e.g. Hendrycks ``MATH/test/algebra/*.json``),
    else the files under PATH whose name starts with the split (``test.jsonl``, ``test-00000-of-00001.parquet``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from .config import ConfigError

SUFFIXES = (".jsonl", ".json", ".parquet")
SPLIT_NAMES = ("train", "test", "validation", "valid", "dev", "val")  # a lone key named so is a split, not a wrapper


class DataError(ConfigError):
    """Task data is missing, unreadable or malformed; the message names the file, the row and the field."""


class FieldError(ValueError):
    """One field of one row is wrong; the loader adds the file and row to the message."""

    def __init__(self, field: str, problem: str):
        super().__init__(f"field '{field}' {problem}")
        self.field, self.problem = field, problem


@dataclass
class Record:
    source: str  # file path or hub id
    where: str  # "line 3", "row 4", "item 2" (1-based)
    row: dict

    def error(self, exc: Exception, hint: str = "") -> DataError:
        return DataError(f"{self.source}: {self.where}: {exc}" + (f". {hint}" if hint else ""))


# ----------------------------------------------------------------------------------------------- field checks

def _type_name(value) -> str:
    return "null" if value is None else type(value).__name__


def require(row: dict, field: str, kind: type | tuple, what: str = ""):
    """``row[field]`` checked to be an instance of ``kind`` (bool never counts as int); raises FieldError."""
    if field not in row or row[field] is None:
        raise FieldError(field, "is missing" + (f" (expected {what})" if what else ""))
    value = row[field]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
        expected = what or " or ".join(k.__name__ for k in kinds)
        raise FieldError(field, f"has the wrong type: expected {expected}, got {_type_name(value)} {value!r:.60}")
    return value


def require_str_list(row: dict, field: str, allow_str: bool = False, allow_empty: bool = False) -> list[str]:
    """``row[field]`` as a list of strings (a lone string becomes ``[s]`` when ``allow_str``)."""
    value = require(row, field, (list, tuple, str) if allow_str else (list, tuple), "a list of strings")
    if isinstance(value, str):
        value = [value]
    value = list(value)
    if not value and not allow_empty:
        raise FieldError(field, "is an empty list")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise FieldError(field, f"item {i} has the wrong type: expected str, got {_type_name(item)}")
    return value


# ----------------------------------------------------------------------------------------------- local files

def _records_from_jsonl(path: Path, text: str) -> list[Record]:
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: invalid JSON ({exc.msg}, column {exc.colno})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}: line {lineno}: expected a JSON object, got {_type_name(row)}")
        out.append(Record(str(path), f"line {lineno}", row))
    return out


def _records_from_json(path: Path, text: str, split: str) -> list[Record]:
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # JSON lines under a .json name
            return _records_from_jsonl(path, text)
        raise DataError(f"{path}: line {exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})") from None
    if isinstance(obj, dict):
        list_values = {k: v for k, v in obj.items() if isinstance(v, list) and v and isinstance(v[0], dict)}
        if list_values and len(list_values) == len(obj):  # {split: [rows]} or {"data": [rows]}
            if split not in obj and (len(obj) > 1 or next(iter(obj)) in SPLIT_NAMES):
                raise DataError(f"{path}: has no split '{split}' (it has: {', '.join(obj)})")
            obj = obj[split] if split in obj else next(iter(obj.values()))
        else:
            return [Record(str(path), "object", obj)]
    if not isinstance(obj, list):
        raise DataError(f"{path}: expected a list of objects, got {_type_name(obj)}")
    out = []
    for i, row in enumerate(obj, 1):
        if not isinstance(row, dict):
            raise DataError(f"{path}: item {i}: expected a JSON object, got {_type_name(row)}")
        out.append(Record(str(path), f"item {i}", row))
    return out


def _records_from_parquet(path: Path) -> list[Record]:
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad file
        raise DataError(f"{path}: not a readable parquet file ({exc})") from None
    return [Record(str(path), f"row {i}", row) for i, row in enumerate(rows, 1)]


def read_file(path: str | Path, split: str = "test") -> list[Record]:
    """Rows of one jsonl/json/parquet file (the split only picks a key of a ``{split: [...]}`` JSON object)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        records = _records_from_parquet(path)
    elif suffix in (".jsonl", ".json"):
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{path}: not UTF-8 text ({exc})") from None
        if not text.strip():
            raise DataError(f"{path}: the file is empty (no rows)")
        records = _records_from_jsonl(path, text) if suffix == ".jsonl" else _records_from_json(path, text, split)
    else:
        raise DataError(f"{path}: unsupported file type '{path.suffix}' (use .jsonl, .json, .parquet or a saved "
                        f"dataset directory)")
    if not records:
        raise DataError(f"{path}: the file is empty (no rows)")
    return records


def _saved_dataset(path: Path, split: str) -> list[Record]:
    try:
        from datasets import DatasetDict, load_from_disk
    except ImportError:
        raise DataError(f"{path}: reading a saved dataset directory needs the 'datasets' package") from None
    try:
        ds = load_from_disk(str(path))
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{path}: not a readable saved dataset ({exc})") from None
    if isinstance(ds, DatasetDict):
        if split not in ds:
            raise DataError(f"{path}: has no split '{split}' (it has: {', '.join(ds)})")
        ds, source = ds[split], f"{path} [{split}]"
    else:
        source = str(path)
    records = [Record(source, f"row {i}", row) for i, row in enumerate(ds, 1)]
    if not records:
        raise DataError(f"{source}: the dataset is empty (no rows)")
    return records


def _split_files(path: Path, split: str) -> list[Path]:
    def data_files(root: Path):
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)

    if (path / split).is_dir():
        return data_files(path / split)
    return [p for p in data_files(path) if p.name.startswith(split) and p.name[len(split):][:1] in (".", "-", "_")]


def read_local(path: str | Path, split: str = "test") -> list[Record]:
    """All rows of ``path`` (a file or a directory, see the module docstring) for ``split``."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: no such file or directory")
    if path.is_file():
        return read_file(path, split)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():  # datasets' save_to_disk
        return _saved_dataset(path, split)
    files = _split_files(path, split)
    if not files:
        raise DataError(f"{path}: no data files for split '{split}' (expected {path / split}/ with "
                        f"{'/'.join(SUFFIXES)} files, files named '{split}.*' or '{split}-*', or a directory "
                        f"written by datasets' save_to_disk)")
    return [rec for f in files for rec in read_file(f, split)]


# ----------------------------------------------------------------------------------------------- hub

def _offline_env() -> bool:
    return any(os.environ.get(k, "0").lower() in ("1", "true", "yes") for k in ("HF_HUB_OFFLINE",
                                                                                 "HF_DATASETS_OFFLINE"))


def load_hub(repo: str, config: str | None, split: str, hint: str) -> list[Record]:
    """Rows of a hub dataset. Offline (HF_HUB_OFFLINE=1 or the hub unreachable) it fails at once with ``hint``
    (how to pass local data), unless HF_HUB_OFFLINE=1 and the dataset is in the local cache."""
    from .models import _hub_reachable

    label = f"{repo}" + (f" ({config})" if config else "") + f" split '{split}'"
    offline_env = _offline_env()
    if not offline_env and not _hub_reachable():
        raise DataError(f"cannot load {label}: the Hugging Face hub is not reachable from this machine "
                        f"(offline). {hint}")
    try:
        from datasets import load_dataset
    except ImportError:
        raise DataError(f"cannot load {label}: the 'datasets' package is not installed. {hint}") from None
    try:
        ds = load_dataset(repo, config, split=split)
    except Exception as exc:  # noqa: BLE001 - datasets raises many types (offline, missing split, network)
        why = "offline mode (HF_HUB_OFFLINE=1) and not in the local cache" if offline_env else str(exc)[:300]
        raise DataError(f"cannot load {label}: {why}. {hint}") from None
    return [Record(f"{repo}[{split}]", f"row {i}", row) for i, row in enumerate(ds, 1)]
