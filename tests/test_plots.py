"""Training-curve PNGs: which files, valid small PNGs, smoothing maths, grouped runs (mean, band, colours),
`hrpo plot`, and never-raise plotting."""

import json
import struct
import warnings

import pytest

from hrpo.cli import main
from hrpo import plots
from hrpo.compare import load_run
from hrpo.config import ConfigError, build_config, save_yaml
from hrpo.plots import (aggregate, draw_figure, group_color, group_curves, group_runs, plot_runs, smooth,
                        write_run_plots)
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


# --- groups of runs: 2 modes x 3 seeds -------------------------------------------------------------------------
# <mode>-s<k>: reward c + 0.1 s at step s, c = base + 0.1 k (base: hybrid 0.5, discrete 0); seeds 1 and 2 run 5
# steps, seed 3 runs 4. lr 1e-4 for seeds 1, 2 and 2e-4 for seed 3. eval/arithmetic/accuracy at steps 2 and 4:
# hybrid-s1 0.1 k + 0.1 s ... in every run but hybrid-s2 (no eval); discrete-s3 lacks kl.
BASE = {"hybrid": 0.5, "discrete": 0.0}


def make_mode_runs(root):
    dirs = []
    for mode, base in BASE.items():
        for k in (1, 2, 3):
            run = root / f"{mode}-s{k}"
            run.mkdir(parents=True)
            save_yaml(build_config({}, {"mode": mode, "seed": k, "lr": 2e-4 if k == 3 else 1e-4,
                                        "output_dir": str(run)}), run / "config.yaml")
            rows = []
            for s in range(1, 6 if k < 3 else 5):
                row = {"step": s, "reward": base + 0.1 * k + 0.1 * s, "hidden_ratio": 0.1 * k}
                if not (mode == "discrete" and k == 3):
                    row["kl"] = 0.01 * s
                if s % 2 == 0 and not (mode == "hybrid" and k == 2):
                    row["eval/arithmetic/accuracy"] = 0.1 * k + 0.1 * s
                rows.append(row)
            (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
            dirs.append(run)
    return dirs


@pytest.fixture
def mode_runs(tmp_path):
    return make_mode_runs(tmp_path / "modes")


def names(groups):
    return [(name, [r.name for r in members]) for name, members in groups]


def test_aggregate_aligns_by_step_mean_minmax_std():
    curves = [([2, 3, 4], [6.0, 5.0, 7.0]), ([1, 2, 3], [1.0, 2.0, 3.0]), ([1, 2], [3.0, 4.0])]
    steps, mean, lo, hi = aggregate(curves)
    assert steps == [1, 2, 3, 4]
    assert mean == pytest.approx([2.0, 4.0, 4.0, 7.0])  # step 1: (1+3)/2, step 2: (2+4+6)/3, step 4: one run
    assert lo == [1.0, 2.0, 3.0, 7.0] and hi == [3.0, 6.0, 5.0, 7.0]
    _, mean_s, lo_s, hi_s = aggregate(curves, band="std")
    assert mean_s == mean
    sd = [2 ** 0.5, 2.0, 2 ** 0.5, 0.0]  # sample std: step 1 sqrt(((1-2)^2 + (3-2)^2) / 1), a lone run: 0
    assert lo_s == pytest.approx([m - d for m, d in zip(mean, sd)])
    assert hi_s == pytest.approx([m + d for m, d in zip(mean, sd)])
    with pytest.raises(ConfigError, match="band"):
        aggregate(curves, band="iqr")


def test_group_runs_by_mode_config_key_and_none(mode_runs, runs):
    loaded = [load_run(r) for r in mode_runs]
    assert names(group_runs(loaded)) == [("hybrid", ["hybrid-s1", "hybrid-s2", "hybrid-s3"]),
                                         ("discrete", ["discrete-s1", "discrete-s2", "discrete-s3"])]
    assert names(group_runs(loaded, "mode")) == names(group_runs(loaded))
    assert names(group_runs(loaded, "seed")) == [(f"seed={k}", [f"hybrid-s{k}", f"discrete-s{k}"]) for k in (1, 2, 3)]
    assert names(group_runs(loaded, "lr")) == [
        ("lr=0.0001", ["hybrid-s1", "hybrid-s2", "discrete-s1", "discrete-s2"]),
        ("lr=0.0002", ["hybrid-s3", "discrete-s3"])]
    assert names(group_runs(loaded, "none")) == [(r.label, [r.name]) for r in loaded]
    # distinct modes (the default, as before): one group per run, named by the run's label
    assert names(group_runs([load_run(r) for r in runs])) == [
        ("hybrid-a (hybrid)", ["hybrid-a"]), ("discrete-b (discrete)", ["discrete-b"]),
        ("latent-c (latent)", ["latent-c"])]


def test_group_runs_without_mode_by_default_stand_alone(mode_runs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text('{"step": 1, "reward": 1.0}\n')
    loaded = [load_run(mode_runs[0]), load_run(bare), load_run(mode_runs[1])]
    assert names(group_runs(loaded)) == [("hybrid", ["hybrid-s1", "hybrid-s2"]), ("bare", ["bare"])]


def test_group_by_a_bad_key_names_the_key_and_the_run(mode_runs, tmp_path, capsys):
    loaded = [load_run(r) for r in mode_runs]
    with pytest.raises(ConfigError) as info:
        group_runs(loaded, "no_such_key")
    msg = str(info.value)
    assert "'no_such_key'" in msg and str(mode_runs[0]) in msg and "config.yaml" in msg
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "metrics.jsonl").write_text('{"step": 1, "reward": 1.0}\n')
    with pytest.raises(ConfigError, match=r"run .*bare has no config key 'seed' .*does not exist"):
        plot_runs([mode_runs[0], bare], tmp_path / "out", group_by="seed")
    assert not (tmp_path / "out").exists()  # checked before anything is drawn

    assert main(["plot", *map(str, mode_runs), "--group-by", "no_such_key", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "hrpo plot: error:" in err and "no_such_key" in err and str(mode_runs[0]) in err


def test_group_curves_hand_computed_mean_and_min_max(mode_runs):
    groups = group_runs([load_run(r) for r in mode_runs])
    hybrid, discrete = group_curves(groups, "reward")  # raw
    assert hybrid.steps == [1, 2, 3, 4, 5]
    # steps 1-4: c = 0.6, 0.7, 0.8 -> mean 0.7 + 0.1 s; step 5 has only seeds 1, 2: mean 0.65 + 0.5
    assert hybrid.mean == pytest.approx([0.8, 0.9, 1.0, 1.1, 1.15])
    assert hybrid.lo == pytest.approx([0.7, 0.8, 0.9, 1.0, 1.1])
    assert hybrid.hi == pytest.approx([0.9, 1.0, 1.1, 1.2, 1.2])
    assert [label for label, _, _ in hybrid.runs] == ["hybrid-s1 (hybrid)", "hybrid-s2 (hybrid)",
                                                      "hybrid-s3 (hybrid)"]
    assert hybrid.runs[2][1] == [1, 2, 3, 4] and hybrid.runs[2][2] == pytest.approx([0.9, 1.0, 1.1, 1.2])
    assert discrete.mean == pytest.approx([0.3, 0.4, 0.5, 0.6, 0.65])
    # smoothing is per run, before the mean: moving average 2 of c + 0.1 s is c + 0.1 s - 0.05 from step 2 on
    hybrid2, _ = group_curves(groups, "reward", smoothing=2)
    assert hybrid2.mean == pytest.approx([0.8, 0.85, 0.95, 1.05, 1.1])
    assert hybrid2.runs[0][2] == pytest.approx([0.7, 0.75, 0.85, 0.95, 1.05])
    _, discrete_std = group_curves(groups, "reward", band="std")
    assert discrete_std.hi == pytest.approx([0.4, 0.5, 0.6, 0.7, 0.65 + 0.05 * 2 ** 0.5])


def test_group_curves_missing_metrics(mode_runs):
    groups = group_runs([load_run(r) for r in mode_runs])
    hybrid, discrete = group_curves(groups, "eval/arithmetic/accuracy")
    assert len(hybrid.runs) == 2  # hybrid-s2 has no eval
    assert hybrid.steps == [2, 4] and hybrid.mean == pytest.approx([0.4, 0.6])  # (0.1 + 0.3) / 2 + 0.2 ...
    assert len(discrete.runs) == 3 and discrete.mean == pytest.approx([0.4, 0.6])
    assert len(group_curves(groups, "kl")[1].runs) == 2  # discrete-s3 lacks kl
    assert group_curves(groups, "grad_norm") == [None, None]


def legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_grouped_figure_one_colour_mean_band_and_faint_runs_per_group(mode_runs):
    from matplotlib.colors import to_rgba

    groups = group_runs([load_run(r) for r in mode_runs])
    fig = draw_figure(groups, "reward", "Reward", "reward", True, 0.0)
    ax = fig.axes[0]
    assert legend(ax) == ["hybrid (3 runs)", "discrete (3 runs)"]
    colors = [to_rgba(group_color(i, 2)) for i in range(2)]
    assert colors[0] != colors[1]
    handles = ax.get_legend().legend_handles
    assert [to_rgba(h.get_color()) for h in handles] == colors
    assert all(h.get_linewidth() == 2.0 for h in handles)
    bands = ax.collections
    assert len(bands) == 2
    for band, color, (lo, hi) in zip(bands, colors, [(0.7, 1.2), (0.2, 0.7)]):
        assert tuple(band.get_facecolor()[0][:3]) == pytest.approx(color[:3])
        assert band.get_alpha() == pytest.approx(0.15)
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.min() == pytest.approx(lo) and ys.max() == pytest.approx(hi)
    for color, base in zip(colors, BASE.values()):
        lines = [ln for ln in ax.lines if to_rgba(ln.get_color()) == color]
        thin = [ln for ln in lines if ln.get_linewidth() < 1]
        assert len(lines) == 4 and len(thin) == 3  # the mean and the three runs
        assert all(ln.get_alpha() < 0.5 for ln in thin)
        mean = next(ln for ln in lines if ln.get_linewidth() == 2.0)
        assert list(mean.get_ydata()) == pytest.approx([base + 0.3, base + 0.4, base + 0.5, base + 0.6,
                                                        base + 0.65])
    assert "min-max" in " ".join(t.get_text() for t in ax.texts)

    std = draw_figure(groups, "reward", "Reward", "reward", True, 0.0, band="std").axes[0]
    ys = std.collections[0].get_paths()[0].vertices[:, 1]
    assert ys.max() == pytest.approx(1.15 + 0.05 * 2 ** 0.5)  # hybrid: step 5, two runs 1.1, 1.2
    assert "std" in " ".join(t.get_text() for t in std.texts)


def test_grouped_eval_figure_and_a_group_of_one_run(mode_runs):
    groups = group_runs([load_run(r) for r in mode_runs[:2]] + [load_run(mode_runs[3])])
    assert names(groups) == [("hybrid", ["hybrid-s1", "hybrid-s2"]), ("discrete-s1 (discrete)", ["discrete-s1"])]
    ax = draw_figure(groups, "eval/arithmetic/accuracy", "Eval", "accuracy", False, 0.8).axes[0]
    # hybrid-s2 has no eval: hybrid is drawn as hybrid-s1's line alone, like a single run
    assert legend(ax) == ["hybrid-s1 (hybrid)", "discrete-s1 (discrete)"]
    assert len(ax.collections) == 0  # no band
    assert all(ln.get_marker() == "o" for ln in ax.lines) and len(ax.lines) == 2
    ax = draw_figure(groups, "reward", "Reward", "reward", True, 0.8).axes[0]
    assert legend(ax) == ["hybrid (2 runs)", "discrete-s1 (discrete)"]
    assert len(ax.collections) == 1
    single = [ln for ln in ax.lines if ln.get_label() == "discrete-s1 (discrete)"]
    assert len(single) == 1 and single[0].get_linewidth() == 1.6  # smoothed solid over its raw faint line
    assert draw_figure(groups, "grad_norm", "g", "g", True, 0.8) is None


def test_distinct_modes_draw_one_line_per_run_as_before(runs):
    groups = group_runs([load_run(r) for r in runs])
    ax = draw_figure(groups, "reward", "Reward", "reward", True, 0.8).axes[0]
    assert legend(ax) == ["hybrid-a (hybrid)", "discrete-b (discrete)", "latent-c (latent)"]
    assert len(ax.collections) == 0 and len(ax.lines) == 6  # raw faint + smoothed solid per run
    assert [ln.get_alpha() for ln in ax.lines[::2]] == [0.3] * 3
    assert "faint: raw, solid: EMA 0.8" in [t.get_text() for t in ax.texts]


def test_group_colours_are_distinct_hues():
    from matplotlib import colormaps
    from matplotlib.colors import to_rgba

    tab10 = [colormaps["tab10"](i) for i in range(10)]
    assert [group_color(i, 4) for i in range(4)] == tab10[:4]
    for n in (2, 10, 12, 20):
        colors = [to_rgba(group_color(i, n)) for i in range(n)]
        assert len(set(colors)) == n
        assert colors[:10] == tab10[:min(n, 10)]  # never two shades of one hue among the first ten
    # the issue: 12 runs, neighbours used to be dark/light pairs of one hue (tab20 order)
    twelve = [group_color(i, 12) for i in range(12)]
    tab20 = [colormaps["tab20"](i) for i in range(20)]
    assert twelve[10:] == [tab20[1], tab20[3]]


def test_cli_plot_group_by_and_band(mode_runs, tmp_path, monkeypatch, capsys):
    seen = []
    real = plots.draw_figure

    def spy(groups, key, *args):
        fig = real(groups, key, *args)
        if key == "reward":
            seen.append((legend(fig.axes[0]), " ".join(t.get_text() for t in fig.axes[0].texts)))
        return fig

    monkeypatch.setattr(plots, "draw_figure", spy)
    for extra in ([], ["--group-by", "seed", "--band", "std"], ["--group-by", "lr"], ["--group-by", "none"]):
        out = tmp_path / ("out" + "".join(extra))
        assert main(["plot", *map(str, mode_runs), "--out", str(out), *extra]) == 0
        assert_png(out / "reward.png")
    capsys.readouterr()
    assert [labels for labels, _ in seen] == [
        ["hybrid (3 runs)", "discrete (3 runs)"],
        ["seed=1 (2 runs)", "seed=2 (2 runs)", "seed=3 (2 runs)"],
        ["lr=0.0001 (4 runs)", "lr=0.0002 (2 runs)"],
        [f"{m}-s{k} ({m})" for m in BASE for k in (1, 2, 3)]]
    assert "std" in seen[1][1] and "min-max" in seen[0][1]
    with pytest.raises(SystemExit):
        main(["plot", str(mode_runs[0]), "--band", "iqr"])
    assert "--band" in capsys.readouterr().err
