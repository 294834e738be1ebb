"""What `hrpo eval` evaluates: each --task with its data, task options and rewards, taken from the flags and,
for the task an --adapter run was trained on, from the run's config.yaml (its task options, generic-task keys,
rewards and eval data), so that `hrpo eval --adapter RUN` scores with what the run trained with."""

from __future__ import annotations

from .config import GENERIC_KEYS, TASK_KEYS, ConfigError, load_yaml


def run_config(adapter: str | None) -> dict:
    """The config.yaml values of the --adapter run ({} without an adapter or a config.yaml)."""
    if adapter is None:
        return {}
    from .checkpoint import find_checkpoint

    ckpt = find_checkpoint(adapter)
    for candidate in (ckpt / "config.yaml", ckpt.parent / "config.yaml"):
        if candidate.is_file():
            return load_yaml(candidate)
    return {}


def eval_jobs(names: list[str] | None, data: list[str] | None, split: str, limit: int | None, given: dict,
              run: dict, prompt_format: str) -> list[tuple]:
    """(task name, data path, task, examples, rewards or None) per task, all checked and loaded before the
    model: a bad task, option, reward or row fails here. ``given``: the TASK_KEYS set by flags."""
    from . import tasks
    from .tasks.rewards import build_rewards

    names = names or ([run["task"]] if run.get("task") else [])
    if not names:
        raise ConfigError("--task is required (or --adapter RUN_DIR of a run whose config.yaml names its task)")
    data = data or []
    if len(data) > 1 and len(data) != len(names):
        raise ConfigError(f"--data was given {len(data)} times for {len(names)} tasks: give it once for all "
                          f"tasks or once per --task, in the same order")
    generic = [key for key in GENERIC_KEYS if given.get(key) is not None]
    if generic and "generic" not in names:
        raise ConfigError(f"--{generic[0].replace('_', '-')} is an option of the generic task (--task generic)")
    jobs = []
    for i, name in enumerate(names):
        path = data[i] if len(data) > 1 else (data[0] if data else None)
        own = name == run.get("task")  # the run's task: its options and rewards apply unless flags replace them
        settings = {**({key: run.get(key) for key in TASK_KEYS} if own else {}), **given}
        if path is None and own and run.get("eval_task") == name:
            path = run.get("eval_data")
        task = tasks.from_settings(name, settings, prompt_format, path)
        rewards = build_rewards(settings["rewards"], task) if settings.get("rewards") else None
        jobs.append((name, path, task, task.load(split, data_path=path, limit=limit), rewards))
    return jobs


def score_with_rewards(rewards, result: dict, examples: list[dict]) -> dict:
    """Each reward's mean over the evaluated completions (and their weighted sum); per record too."""
    from .tasks.rewards import score_rewards

    completions = [rec["completion"] for rec in result["records"]]
    scored = score_rewards(rewards, completions, examples)
    for j, rec in enumerate(result["records"]):
        rec["rewards"] = {name: values[j] for name, values in scored.values.items()}
    means = {name: sum(values) / len(values) for name, values in scored.values.items()}
    return {"rewards": means, "reward": sum(scored.total) / len(scored.total), "reward_failures": scored.failures}
