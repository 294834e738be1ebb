"""Trackers: 'none' is a no-op, missing backends give a ConfigError with the pip line, and the adapters pass
numbers only (checked against stand-in wandb/trackio modules; tensorboard for real when installed)."""

import importlib.util
import sys
import types

import numpy as np
import pytest

from hrpo.config import ConfigError
from hrpo.trackers import TRACKERS, Tracker, numeric_metrics, open_tracker

METRICS = {"step": 3, "reward": 0.5, "kl": np.float32(0.25), "skipped_update": 0, "flag": True,
           "sample_completion": "#### 4", "nothing": None, "lengths": [1, 2]}
NUMBERS = {"reward": 0.5, "kl": 0.25, "skipped_update": 0.0, "flag": 1.0}


def test_numeric_metrics_keeps_numbers_only():
    out = numeric_metrics(METRICS)
    assert out == NUMBERS and all(type(v) is float for v in out.values())


def test_none_tracker_is_a_no_op(tmp_path):
    tracker = open_tracker("none", tmp_path, {"mode": "hybrid"})
    assert type(tracker) is Tracker and tracker.kind == "none"
    with tracker:
        tracker.log(METRICS, step=1)
    tracker.close()
    assert list(tmp_path.iterdir()) == []


def test_unknown_kind(tmp_path):
    with pytest.raises(ConfigError, match="unknown tracker 'mlflow'.*none, tensorboard, wandb, trackio"):
        open_tracker("mlflow", tmp_path, {})
    assert TRACKERS == ("none", "tensorboard", "wandb", "trackio")


@pytest.mark.parametrize("kind", ["tensorboard", "wandb", "trackio"])
def test_missing_package_error(kind, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, kind, None)  # makes `import <kind>` fail, installed or not
    with pytest.raises(ConfigError, match=f"pip install {kind}"):
        open_tracker(kind, tmp_path, {})


def test_tensorboard(tmp_path):
    if importlib.util.find_spec("tensorboard") is None:
        with pytest.raises(ConfigError, match="tracker 'tensorboard' needs the tensorboard package.*"
                                              "pip install tensorboard"):
            open_tracker("tensorboard", tmp_path, {"mode": "hybrid"})
        assert not (tmp_path / "tensorboard").exists()
        return
    tracker = open_tracker("tensorboard", tmp_path, {"mode": "hybrid"})
    for step in (1, 2):
        tracker.log(METRICS, step=step)
    tracker.close()
    tracker.close()
    events = list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert events and events[0].stat().st_size > 0
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert set(acc.Tags()["scalars"]) == set(NUMBERS)
    assert [(e.step, e.value) for e in acc.Scalars("reward")] == [(1, 0.5), (2, 0.5)]


def _fake_backend(monkeypatch, name):
    calls = []
    mod = types.ModuleType(name)
    run = types.SimpleNamespace(log=lambda m, step: calls.append(("log", m, step)),
                                finish=lambda: calls.append(("finish",)))
    mod.init = lambda **kw: calls.append(("init", kw)) or run
    mod.log = run.log
    mod.finish = run.finish
    monkeypatch.setitem(sys.modules, name, mod)
    return calls


@pytest.mark.parametrize("kind", ["wandb", "trackio"])
def test_wandb_and_trackio_adapters(kind, tmp_path, monkeypatch):
    calls = _fake_backend(monkeypatch, kind)
    run_dir = tmp_path / "hybrid-1"
    tracker = open_tracker(kind, run_dir, {"mode": "hybrid", "lr": 1e-4}, project="proj")
    tracker.log(METRICS, step=7)
    tracker.close()
    tracker.close()
    init = calls[0]
    assert init[0] == "init" and init[1]["project"] == "proj" and init[1]["name"] == "hybrid-1"
    assert init[1]["config"] == {"mode": "hybrid", "lr": 1e-4}
    assert calls[1:] == [("log", NUMBERS, 7), ("finish",)]
