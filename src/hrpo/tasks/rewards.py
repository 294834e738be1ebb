"""Several rewards with weights: ``--reward accuracy --reward format:0.2 --reward my.py:length_penalty:-0.01``.

The reward the advantages use is the weighted sum of the rewards; each is logged as ``rewards/<name>/mean`` and
``rewards/<name>/std`` (TRL's names) next to ``reward``. Built-in rewards:
  * ``accuracy``: the task's own reward (``task.reward``; the default when no reward is given);
  * ``format``: 1.0 when the completion has the answer format, else 0.0 (see :func:`format_ok`);
  * ``number``, ``math``, ``choice``, ``exact``, ``f1``: the answer after the marker checked against the
    example's gold answer (``hrpo.tasks.checks``).
Anything else is a function of yours, ``path/to/file.py:fn`` or ``module:fn``, called as ``fn(completion,
example) -> float``. Every reward runs contained (``hrpo.faults.contained_rewards``: a forked worker with
``--reward-timeout``): one that raises, hangs or returns a non-number or NaN scores 0 and is counted in
``rewards/failures``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..config import ConfigError, is_function_spec
from .checks import CHECKS, check_reward
from .user_code import load_reward_function

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
DEFAULT_REWARDS = [{"name": "accuracy", "weight": 1.0}]


def format_ok(completion: str, marker: str) -> bool:
    """The answer format: the marker exactly once with an answer after it; for the think format (marker
    '</think>') one well-formed ``<think>...</think>`` that opens the completion, then a non-empty answer."""
    if completion.count(marker) != 1:
        return False
    before, after = completion.split(marker, 1)
    if not after.strip():
        return False
    if marker != THINK_CLOSE:
        return True
    return completion.count(THINK_OPEN) == 1 and before.lstrip().startswith(THINK_OPEN)


@dataclass
class Reward:
    """One weighted reward: ``name`` (its metric name), ``spec`` (as given), ``weight`` and ``fn(completion,
    example) -> float``."""

    name: str
    spec: str
    weight: float
    fn: Callable[[str, dict], float]


def _builtin(name: str, task, marker: str) -> Callable[[str, dict], float]:
    if name == "accuracy":
        return task.reward
    if name == "format":
        return lambda completion, example: float(format_ok(completion, marker))
    check, single = CHECKS[name], getattr(task, "require_single_marker", True)
    return lambda completion, example: check_reward(check, completion, example, marker, single)


def build_rewards(specs: list[dict] | None, task, marker: str | None = None) -> list[Reward]:
    """The rewards of ``specs`` (``[{name, weight}]``, as config.parse_reward gives them; None: accuracy alone)
    for ``task``, whose marker (or ``marker``) the format and check rewards read. User functions are imported
    and their signatures checked here: a bad one raises ConfigError naming the file and function."""
    marker = marker or task.marker
    rewards: list[Reward] = []
    for spec in specs or DEFAULT_REWARDS:
        name = spec["name"]
        if is_function_spec(name):
            fn = load_reward_function(name)
            label = getattr(fn, "__name__", name.rpartition(":")[2])
        elif name in CHECKS or name in ("accuracy", "format"):
            fn, label = _builtin(name, task, marker), name
        else:
            raise ConfigError(f"unknown reward '{name}'")
        taken = {r.name for r in rewards}
        if label in taken:  # the same function twice, or two files with one function name
            label = name if name not in taken else f"{label}_{len(rewards) + 1}"
        rewards.append(Reward(name=label, spec=name, weight=float(spec["weight"]), fn=fn))
    return rewards


@dataclass
class ScoredRewards:
    """One batch scored by every reward: ``values[name]`` per completion, ``total`` their weighted sum (what
    the advantages use) and ``failures`` (calls that raised, hung or returned a non-number: scored 0)."""

    total: list[float]
    values: dict[str, list[float]]
    failures: int = 0
    failure_notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """``rewards/<name>/mean`` and ``rewards/<name>/std`` (sample std over the batch's completions)."""
        out = {}
        for name, values in self.values.items():
            mean = sum(values) / len(values) if values else 0.0
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
            out[f"rewards/{name}/mean"] = mean
            out[f"rewards/{name}/std"] = math.sqrt(var)
        return out


    def moments(self) -> dict[str, float]:
        """``rewards/<name>/mean_sq`` (the mean of the squared values): with the means, what a reduction over
        processes (equal shares) needs to give the global std, see :func:`finish_std`."""
        return {f"rewards/{name}/mean_sq": sum(v * v for v in values) / len(values) if values else 0.0
                for name, values in self.values.items()}


def finish_std(metrics: dict, n: int) -> dict:
    """Replace each ``rewards/<name>/std`` by the sample std of all ``n`` completions, from the (process-averaged)
    ``rewards/<name>/mean`` and ``rewards/<name>/mean_sq``, which it removes."""
    for key in [k for k in metrics if k.startswith("rewards/") and k.endswith("/mean_sq")]:
        base = key[:-len("/mean_sq")]
        mean, mean_sq = metrics[f"{base}/mean"], metrics.pop(key)
        var = max(0.0, mean_sq - mean * mean) * n / (n - 1) if n > 1 else 0.0
        metrics[f"{base}/std"] = math.sqrt(var)
    return metrics


def weighted_sum(rewards: Sequence[Reward], values: dict[str, list[float]]) -> list[float]:
    """Per completion, the sum over rewards of weight x value. One reward of weight 1 is its values unchanged
    (the default run's rewards are exactly the task's)."""
    if len(rewards) == 1 and rewards[0].weight == 1.0:
        return list(values[rewards[0].name])
    n = len(next(iter(values.values()))) if values else 0
    return [sum(r.weight * values[r.name][i] for r in rewards) for i in range(n)]


def score_rewards(rewards: Sequence[Reward], completions: Sequence[str], examples: Sequence[dict],
                  timeout: float = 5.0, step: int | None = None) -> ScoredRewards:
    """Score ``completions`` with every reward, each contained (see the module docstring)."""
    from ..faults import contained_rewards

    values, failures, notes = {}, 0, []
    for reward in rewards:
        batch = contained_rewards(reward.fn, completions, examples, timeout, step=step)
        values[reward.name] = batch.rewards
        failures += len(batch.failures)
        notes += [f"{reward.name}: completion {i}: {why}" for i, why in batch.failures[:1]]
    return ScoredRewards(total=weighted_sum(rewards, values), values=values, failures=failures,
                         failure_notes=notes)
