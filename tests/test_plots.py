"""Training-curve PNGs: which files, valid small PNGs, smoothing maths, `hrpo plot`, and never-raise plotting."""

import struct
import warnings

import pytest

from hrpo.cli import main
from hrpo.compare import load_run
from hrpo.config import ConfigError
from hrpo.plots import plot_runs, smooth, write_run_plots
from metrics_fixtures import make_runs

ALL = {"reward.png", "eval_arithmetic_accuracy.png", "eval_gsm8k_accuracy.png", "hidden_ratio.png",
       "completions_mean_length.png", "kl.png", "grad_norm.png"}


def assert_png(path, size=(600, 400)):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    assert len(data) > 1024, path
    assert data[12:16] == b"IHDR"
    assert struct.unpack(">II", data[16:24]) == size  # 6x4 in at dpi 100


@pytest.fixture
def runs(tmp_path):
    return make_runs(tmp_path / "runs")


def test_plot_runs_writes_one_png_per_metric(runs, tmp_path):
    out = tmp_path / "out"
    written = plot_runs(runs, out)
    assert {p.name for p in written} == ALL
    assert sorted(p.name for p in out.iterdir()) == sorted(ALL)  # no temporary files left
    for path in written:
        assert path.parent == out
        assert_png(path)


def test_plot_skips_metrics_no_run_has(runs, tmp_path):
    # latent-c has neither grad_norm nor arithmetic eval; discrete-b has no eval at all
    assert {p.name for p in plot_runs([runs[2]], tmp_path / "c")} == ALL - {"grad_norm.png",
                                                                            "eval_arithmetic_accuracy.png"}
    assert {p.name for p in plot_runs([runs[1]], tmp_path / "b", smoothing=5)} == \
        ALL - {"eval_arithmetic_accuracy.png", "eval_gsm8k_accuracy.png"}


def test_run_labels_and_tolerant_loading(runs):
    a, b, c = (load_run(r) for r in runs)
    assert [a.label, b.label, c.label] == ["hybrid-a (hybrid)", "discrete-b (discrete)", "latent-c (latent)"]
    assert len(b.rows) == 25  # the half-written last line is skipped
    steps, values = a.series("grad_norm")
    assert 5.0 not in steps and len(values) == 29  # NaN dropped
    assert a.series("sample_completion") == ([], [])  # strings are not numbers
    assert c.eval_tasks() == ["gsm8k"] and a.eval_tasks() == ["arithmetic"]


def test_smooth_ema_and_moving_average():
    assert smooth([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert smooth([1.0, 2.0, 3.0], 1) == [1.0, 2.0, 3.0]
    assert smooth([1.0, 2.0, 3.0], 0) == [1.0, 2.0, 3.0]
    # bias-corrected EMA, weight 0.5: [2, (0.5*1 + 0.5*4) / 0.75]
    assert smooth([2.0, 4.0], 0.5) == pytest.approx([2.0, 2.5 / 0.75])
    assert smooth([3.0] * 5, 0.9) == pytest.approx([3.0] * 5)
    for bad in (-0.1, 1.5, float("nan"), "x"):
        with pytest.raises(ConfigError, match="smoothing"):
            smooth([1.0], bad)


def test_missing_metrics_is_a_config_error(tmp_path, runs):
    empty = tmp_path / "not-a-run"
    empty.mkdir()
    with pytest.raises(ConfigError, match="metrics.jsonl") as info:
        plot_runs([runs[0], empty], tmp_path / "out")
    assert str(empty) in str(info.value)
    with pytest.raises(ConfigError, match="does not exist"):
        plot_runs([tmp_path / "nowhere"], tmp_path / "out")


def test_write_run_plots_into_run_dir(runs):
    written = write_run_plots(runs[0])
    assert {p.name for p in written} == ALL - {"eval_gsm8k_accuracy.png"}
    assert all(p.parent == runs[0] / "plots" for p in written)
    for path in written:
        assert_png(path)


def test_write_run_plots_never_raises(tmp_path):
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "config.yaml").write_text(": not yaml : [")
    (odd / "metrics.jsonl").write_text('garbage\n[1, 2]\n{"reward": "high", "kl": null}\n'
                                       '{"step": 3, "reward": Infinity, "hidden_ratio": true}\n'
                                       '{"step": "x", "reward": 0.5}\n')
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to warn about: odd values are skipped
        written = write_run_plots(odd)
    assert [p.name for p in written] == ["reward.png"]  # the one finite reward (the row without a valid step)
    assert load_run(odd).label == "odd"

    (tmp_path / "bare").mkdir()
    with pytest.warns(RuntimeWarning, match="metrics.jsonl"):
        assert write_run_plots(tmp_path / "bare") == []
    with pytest.warns(RuntimeWarning, match="smoothing"):
        assert write_run_plots(odd, smoothing=2.5) == []


def test_cli_plot(runs, tmp_path, monkeypatch, capsys):
    assert main(["plot", str(runs[0])]) == 0
    printed = capsys.readouterr().out.split()
    assert {p.rsplit("/", 1)[-1] for p in printed} == ALL - {"eval_gsm8k_accuracy.png"}
    assert all(p.startswith(str(runs[0] / "plots")) for p in printed)

    monkeypatch.chdir(tmp_path)
    assert main(["plot", *map(str, runs), "--smoothing", "5"]) == 0
    assert {p.name for p in (tmp_path / "plots").iterdir()} == ALL
    capsys.readouterr()

    assert main(["plot", *map(str, runs[:2]), "--out", str(tmp_path / "two"), "--smoothing", "0"]) == 0
    assert len(capsys.readouterr().out.split()) == len(ALL) - 1
    assert_png(tmp_path / "two" / "reward.png")


def test_cli_plot_errors(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert "hrpo plot: error:" in err and str(tmp_path / "empty" / "metrics.jsonl") in err

    (tmp_path / "new").mkdir()
    (tmp_path / "new" / "metrics.jsonl").write_text("")
    assert main(["plot", str(tmp_path / "new")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "new"), "--smoothing", "-1"]) == 2
    assert "smoothing" in capsys.readouterr().err
