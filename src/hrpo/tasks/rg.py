"""reasoning-gym tasks: ``--task rg:<generator>`` (``rg:chain_sum``, ``rg:countdown``, ``rg:basic_arithmetic``, ...).

reasoning-gym (an optional dependency: ``pip install 'hrpo[rg]'``) generates questions procedurally and scores
answers with each generator's own ``score_answer`` (1.0 right; some give partial credit, e.g. 0.01 for a
well-formed wrong answer). Its options are the generator's config fields, from ``task_options`` (YAML) or
``--task-option KEY=VALUE``; ``shots`` (default 2) is hrpo's own: worked examples before the question.

Splits. Every question belongs to exactly one split, decided by a hash of its text (SHA-256 of the question with
whitespace collapsed; a quarter of all questions are test questions) and never by the run's seed or sizes, so a
test question is never trained on. Training examples are drawn from the generator with the run's seed, lazily,
skipping test questions (repeats are possible, as in any sampling with replacement); the test split is drawn
with a fixed seed, test questions only, without duplicates. The shots come from a third fixed seed and are
training questions.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Sequence

from ..config import ConfigError
from ..data import DataError
from ..scoring import before_special_token, marker_count_ok, text_after_marker
from .base import PROMPT_FORMATS, check_prompt_format

TEST_SEED = 1_000_003  # the test split's stream (fixed: the same test questions for every run)
SHOT_SEED = 2_000_003  # the shots' stream
TEST_SHARE = 4  # one question in TEST_SHARE is a test question
RETRIES = 16  # draws for one training example before giving up (a generator with almost only test questions)
STREAM_SIZE = 10 ** 9  # reasoning-gym items are generated on demand from (seed, index); size only bounds indices
HOW_TO_INSTALL = "pip install 'reasoning-gym>=0.1.25,<0.2' (or pip install -e '.[rg]')"

SYSTEM_PROMPTS = {"hash": "Solve the problem. Write the final answer after ####.",
                  "think": "Solve the problem. Think inside <think> </think>, then write the final answer."}
OWN_OPTIONS = ("shots",)


def import_rg():
    """The reasoning_gym module; ConfigError saying how to install it when it is missing."""
    try:
        import reasoning_gym
    except ImportError as exc:
        raise ConfigError(f"reasoning-gym tasks need the reasoning-gym package ({exc}); install it with "
                          f"{HOW_TO_INSTALL}") from None
    return reasoning_gym


def generator_names() -> list[str]:
    """Every reasoning-gym generator name, sorted ([] when reasoning-gym is not installed)."""
    try:
        from reasoning_gym.factory import DATASETS
    except ImportError:
        return []
    return sorted(DATASETS)


def generator_options(name: str) -> dict:
    """The config fields of generator ``name`` and their defaults (seed and size excluded)."""
    import dataclasses

    import_rg()
    from reasoning_gym.factory import DATASETS

    config = DATASETS[name][1]
    return {f.name: (f.default if f.default is not dataclasses.MISSING else None)
            for f in dataclasses.fields(config) if f.name not in ("seed", "size")}


def is_test_question(question: str) -> bool:
    """Whether ``question`` belongs to the test split (a fixed hash of its text)."""
    digest = hashlib.sha256(" ".join(question.split()).encode()).digest()
    return int.from_bytes(digest[:8], "big") % TEST_SHARE == 0


class _TrainSet(Sequence):
    """``n`` training examples, each generated when first read: example j is item j of the seed's stream, or,
    when that is a test question, item j of the next stream (seed + k * 7919, k < RETRIES)."""

    def __init__(self, task: "ReasoningGymTask", n: int, seed: int):
        self.task, self.n, self.seed, self._cache = task, n, seed, {}

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, j):
        if isinstance(j, slice):
            return [self[i] for i in range(*j.indices(self.n))]
        if not -self.n <= j < self.n:
            raise IndexError(j)
        j %= self.n
        if j not in self._cache:
            for k in range(RETRIES):
                entry = self.task.dataset(self.seed + k * 7919)[j]
                if not is_test_question(entry["question"]):
                    self._cache[j] = self.task.example(entry)
                    break
            else:
                raise DataError(f"task {self.task.name}: {RETRIES} draws in a row were test questions; the options "
                                f"{self.task.options} leave too few distinct questions to split")
        return self._cache[j]


class ReasoningGymTask:
    """One reasoning-gym generator as an hrpo task (see the module docstring for the prompt and the splits)."""

    procedural = True
    hub: dict = {}

    def __init__(self, generator: str, prompt_format: str = "hash", data_path: str | None = None,
                 require_single_marker: bool = True, **options):
        rg = import_rg()
        from reasoning_gym.factory import DATASETS

        if generator not in DATASETS:
            close = difflib.get_close_matches(generator, DATASETS, n=3, cutoff=0.5)
            hint = f" Close names: {', '.join(close)}." if close else ""
            raise ConfigError(f"unknown reasoning-gym generator '{generator}'.{hint} `hrpo tasks` lists all "
                              f"{len(DATASETS)}.")
        if data_path:
            raise ConfigError(f"task rg:{generator} generates its questions: --data is not used with it")
        for key in ("seed", "size"):
            if key in options:
                raise ConfigError(f"task rg:{generator}: option '{key}' is set by hrpo (the run's --seed; the "
                                  f"sizes from --num-train-examples and --limit / --eval-limit)")
        self.generator, self.name = generator, f"rg_{generator}"
        self.prompt_format = check_prompt_format(prompt_format)
        self.marker = PROMPT_FORMATS[prompt_format][1]
        self.require_single_marker = require_single_marker
        self.shots_count = int(options.pop("shots", 2))
        self.options = options
        self.fields = f"generated by reasoning-gym's {generator} (question, answer, metadata)"
        self._rg, self._datasets = rg, {}
        try:
            self.dataset(0)[0]
        except (TypeError, ValueError, AssertionError, KeyError) as exc:
            known = ", ".join(f"{k}={v!r}" for k, v in generator_options(generator).items())
            raise ConfigError(f"task rg:{generator}: bad task_options {options}: {exc}. Its options (defaults): "
                              f"{known}") from None
        self.shots = self._shots()

    # ------------------------------------------------------------------ data
    def dataset(self, seed: int):
        """The generator's stream for ``seed`` (items generated on demand)."""
        if seed not in self._datasets:
            self._datasets[seed] = self._rg.create_dataset(self.generator, seed=seed, size=STREAM_SIZE,
                                                           **self.options)
        return self._datasets[seed]

    def example(self, entry: dict) -> dict:
        return {"question": entry["question"], "gold": str(entry["answer"]), "entry": entry}

    def _shots(self) -> list[dict]:
        shots, stream = [], self.dataset(SHOT_SEED)
        for i in range(200):
            if len(shots) == self.shots_count:
                break
            entry = stream[i]
            if not is_test_question(entry["question"]) and entry["question"] not in {s["question"] for s in shots}:
                shots.append(self.example(entry))
        return shots

    def examples(self, n: int, seed: int = 0) -> Sequence:
        """``n`` training examples for the run's ``seed``, generated when read (never a test question)."""
        train = _TrainSet(self, n, seed)
        train[0]  # fail now, not in the first step, when the options leave no training question
        return train

    def load(self, split: str = "test", data_path: str | None = None, limit: int | None = None) -> list[dict]:
        """'test': the first ``limit`` (default 500) distinct test questions of the fixed test stream (fewer when
        the generator has fewer); any other split: ``limit`` (default 500) training examples (seed 0)."""
        if data_path:
            raise ConfigError(f"task rg:{self.generator} generates its questions: --data is not used with it")
        want = limit or 500
        if split != "test":
            return list(self.examples(want, seed=0))
        stream, out, seen = self.dataset(TEST_SEED), [], set()
        for i in range(40 * want + 1000):
            entry = stream[i]
            question = entry["question"]
            if is_test_question(question) and question not in seen:
                seen.add(question)
                out.append(self.example(entry))
                if len(out) == want:
                    break
        if not out:
            raise DataError(f"task rg:{self.generator}: no test question found with options {self.options}")
        return out

    # ------------------------------------------------------------------ prompts and answers
    def messages(self, example: dict) -> list[dict]:
        """A short system prompt, ``shots`` worked examples (answer after the marker), then the question."""
        msgs = [{"role": "system", "content": SYSTEM_PROMPTS[self.prompt_format]}]
        for shot in self.shots:
            answer = f"#### {shot['gold']}" if self.prompt_format == "hash" else f"<think></think> {shot['gold']}"
            msgs += [{"role": "user", "content": shot["question"]}, {"role": "assistant", "content": answer}]
        return msgs + [{"role": "user", "content": example["question"]}]

    @staticmethod
    def _answer_lines(text: str, example: dict, last: bool) -> str | None:
        """The answer in ``text``: all of it when the gold answer spans lines, else its first (or last) line."""
        text = before_special_token(text).strip()
        if "\n" in example["gold"]:
            return text or None
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        return (lines[-1] if last else lines[0]) if lines else None

    def extract_answer(self, completion: str, example: dict | None = None) -> str | None:
        text = text_after_marker(completion, self.marker)
        return None if text is None else self._answer_lines(text, example or {"gold": ""}, last=False)

    def gold(self, example: dict) -> str:
        return example["gold"]

    def _score(self, answer: str | None, example: dict) -> float:
        if answer is None:
            return 0.0
        try:
            value = float(self.dataset(TEST_SEED).score_answer(answer, example["entry"]))
        except Exception:  # noqa: BLE001 - a generator's scorer failing on odd text means "not right"
            return 0.0
        return value if value == value else 0.0

    def reward(self, completion: str, example: dict) -> float:
        """reasoning-gym's score of the answer after the marker (0.0 unless the marker occurs exactly once)."""
        if self.require_single_marker and not marker_count_ok(completion, self.marker):
            return 0.0
        return self._score(self.extract_answer(completion, example), example)

    def score(self, completion: str, example: dict) -> dict:
        """Eval: the answer after the last marker, else the last line of the completion; correct at score 1."""
        text = text_after_marker(completion, self.marker)
        answer = self._answer_lines(completion if text is None else text, example, last=text is None)
        value = self._score(answer, example)
        return {"answer": answer, "correct": value >= 1.0, "format_ok": marker_count_ok(completion, self.marker),
                "score": value}


def make(spec: str, **kwargs) -> ReasoningGymTask:
    """``make('rg:chain_sum', prompt_format='hash', min_terms=2)``."""
    return ReasoningGymTask(spec.split(":", 1)[1], **kwargs)

