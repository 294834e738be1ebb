"""The Task protocol: what an object must have for `hrpo train` and `hrpo eval` to use it as a task.

Every built-in task (``hrpo.tasks.Task`` and its subclasses) has it, and so must a task of your own given as
``--task path/to/file.py:Class`` or ``--task package.module:factory``. Subclassing :class:`hrpo.tasks.Task` gives
you all of it from four small methods (``convert``, ``user_text``, ``parse_answer``, ``is_correct``); a class of
your own works as well when it has the members below (checked when the task is loaded, before any model loads).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

# what `hrpo train` / `hrpo eval` call; a task loaded from a file or module must have every one
REQUIRED_ATTRIBUTES = ("name", "marker")
REQUIRED_METHODS = ("messages", "reward", "extract_answer", "score", "load")


@runtime_checkable
class TaskProtocol(Protocol):
    """A task: prompts from examples, and rewards and scores from completions.

    An *example* is a plain dict (JSON-serialisable where it goes into reports: ``question`` is shown in eval
    reports). The trainer samples ``group_size`` completions per example; every completion is scored with
    ``reward`` (training) or ``score`` (evaluation). ``reward`` runs in a forked worker with a time limit
    (``--reward-timeout``): an exception, a hang or a non-number scores 0 and is counted in ``rewards/failures``.

    Optional members the trainer and eval use when present:
      * ``procedural = True`` with ``examples(n, seed) -> list[dict]``: training examples are generated (``n`` =
        ``--num-train-examples``, ``seed`` = the run's seed) instead of ``load('train')``;
      * ``gold(example)``: the gold answer shown in eval reports (default: ``example['gold']``, else
        ``example['answer']``);
      * ``hub``: a non-empty value when ``load`` reads a hub dataset (eval reports say where data came from).
    """

    name: str
    """Short name, used in report file names and metric keys (``eval/<name>/accuracy``)."""

    marker: str
    """The answer marker that ends the thinking span ('####' for the hash format, '</think>' for think): latent
    mixing runs from the first completion token until the marker has been generated."""

    def messages(self, example: dict) -> list[dict]:
        """The chat messages of ``example`` (``[{"role": "system" | "user" | "assistant", "content": str}]``);
        the tokenizer's chat template turns them into the prompt."""
        ...

    def reward(self, completion: str, example: dict) -> float:
        """The training reward of ``completion`` (the generated text, without the prompt): usually 1.0 for a
        correct answer after exactly one marker, else 0.0. This is the reward named ``accuracy``."""
        ...

    def extract_answer(self, completion: str, example: dict | None = None) -> str | None:
        """The answer in ``completion`` (normally the text after the marker), or None when there is none."""
        ...

    def score(self, completion: str, example: dict) -> dict:
        """Evaluation scoring: ``{"answer": str | None, "correct": bool, "format_ok": bool}`` (extra keys such as
        ``f1`` or ``score``, a float, are averaged into the report). Usually lenient on format: the whole
        completion is read when the marker is missing."""
        ...

    def load(self, split: str = "test", data_path: str | None = None, limit: int | None = None) -> list[dict]:
        """Examples of ``split`` ('train' for training, 'test' for `hrpo eval` and periodic evaluation) from
        ``data_path`` (``--data``) or the task's own source; the first ``limit`` when given. Raise
        ``hrpo.data.DataError`` with the file, row and field of a bad row."""
        ...


def missing_members(task: object) -> list[str]:
    """The protocol members ``task`` lacks (methods must be callable), in protocol order."""
    missing = [name for name in REQUIRED_ATTRIBUTES if not isinstance(getattr(task, name, None), str)]
    return missing + [name for name in REQUIRED_METHODS if not callable(getattr(task, name, None))]
