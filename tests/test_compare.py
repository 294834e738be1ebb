"""`compare_runs` numbers checked by hand on the fixture runs (see metrics_fixtures), Markdown/JSON output and
`hrpo compare`."""

import json

import pytest

from hrpo.cli import main
from hrpo.compare import compare_runs, to_json, to_markdown
from hrpo.config import ConfigError
from metrics_fixtures import make_runs


@pytest.fixture
def runs(tmp_path):
    return make_runs(tmp_path / "runs")


def test_compare_rows_match_hand_computed_values(runs):
    a, b, c = compare_runs(runs)
    assert list(a) == ["run", "mode", "model", "task", "steps", "reward_final", "reward_best",
                       "eval/arithmetic/accuracy_last", "eval/arithmetic/accuracy_best",
                       "eval/gsm8k/accuracy_last", "eval/gsm8k/accuracy_best", "hidden_ratio_final",
                       "length_first10", "length_last10", "kl_final", "wall_time_s", "path"]
    assert list(a) == list(b) == list(c)
    # hybrid-a: rewards 1..20 then 19..10 (over 20); last 10 = 19..10 -> 14.5/20; best window 15..24 or 16..25
    # (sum 175) -> 0.875; eval 0.2, 0.6, 0.5; lengths 21..30 and 41..50; 30 steps x 2 s
    assert a["run"] == "hybrid-a" and a["mode"] == "hybrid" and a["model"] == "embedded"
    assert a["task"] == "arithmetic" and a["steps"] == 30
    assert a["reward_final"] == pytest.approx(0.725)
    assert a["reward_best"] == pytest.approx(0.875)
    assert a["eval/arithmetic/accuracy_last"] == 0.5 and a["eval/arithmetic/accuracy_best"] == 0.6
    assert a["eval/gsm8k/accuracy_last"] is None and a["eval/gsm8k/accuracy_best"] is None
    assert a["hidden_ratio_final"] == pytest.approx(0.4)
    assert a["length_first10"] == pytest.approx(25.5) and a["length_last10"] == pytest.approx(45.5)
    assert a["kl_final"] == pytest.approx(0.03)
    assert a["wall_time_s"] == pytest.approx(60.0)
    # discrete-b: constant values; the half-written 26th line does not count
    assert (b["mode"], b["steps"], b["reward_final"], b["reward_best"]) == ("discrete", 25, 0.5, 0.5)
    assert (b["hidden_ratio_final"], b["length_first10"], b["length_last10"], b["kl_final"]) == (0.0, 30, 30, 0)
    assert b["wall_time_s"] == pytest.approx(37.5)
    assert b["eval/arithmetic/accuracy_last"] is None
    # latent-c: 6 steps (< 10): final and best are both the mean of all, 4/6; no timing -> no wall time
    assert c["steps"] == 6 and c["reward_final"] == pytest.approx(4 / 6) and c["reward_best"] == pytest.approx(4 / 6)
    assert c["eval/gsm8k/accuracy_last"] == 0.25 and c["eval/gsm8k/accuracy_best"] == 0.25
    assert c["wall_time_s"] is None and c["kl_final"] == pytest.approx(0.002)


def test_markdown_table(runs):
    text = to_markdown(compare_runs(runs))
    lines = text.splitlines()
    assert len(lines) == 5
    assert lines[0].startswith("| run | mode | model | task | steps | reward (last 10) | reward (best 10) | "
                               "arithmetic acc (last) | arithmetic acc (best) | gsm8k acc (last) |")
    assert "path" not in lines[0]
    assert lines[2] == ("| hybrid-a | hybrid | embedded | arithmetic | 30 | 0.725 | 0.875 | 0.500 | 0.600 | - | - "
                        "| 0.400 | 25.5 | 45.5 | 0.0300 | 1m00s |")
    assert lines[3].startswith("| discrete-b | discrete | embedded | arithmetic | 25 | 0.500 | 0.500 | - | - | - |")
    assert lines[4].endswith("| 0.667 | 0.667 | - | - | 0.250 | 0.250 | 0.200 | 10.0 | 10.0 | 0.0020 | - |")
    assert all(line.count("|") == lines[0].count("|") for line in lines)
    assert to_markdown([]) == ""


def test_json_is_strict_and_round_trips(runs):
    rows = compare_runs(runs)
    assert json.loads(to_json(rows)) == rows
    with pytest.raises(ValueError):
        to_json([{"x": float("nan")}])


def test_missing_metrics_is_a_config_error(runs, tmp_path):
    bare = tmp_path / "bare"
    bare.mkdir()
    with pytest.raises(ConfigError, match="metrics.jsonl") as info:
        compare_runs([runs[0], bare])
    assert str(bare) in str(info.value)
    with pytest.raises(ConfigError):
        compare_runs([])


def test_empty_metrics_file_gives_an_empty_row(tmp_path):
    (tmp_path / "fresh").mkdir()
    (tmp_path / "fresh" / "metrics.jsonl").write_text("")
    (row,) = compare_runs([tmp_path / "fresh"])
    assert row["run"] == "fresh" and row["steps"] == 0 and row["mode"] is None
    assert row["reward_final"] is None and row["wall_time_s"] is None


def test_cli_compare_markdown_json_and_out(runs, tmp_path, capsys):
    assert main(["compare", *map(str, runs)]) == 0
    out = capsys.readouterr().out
    assert out == to_markdown(compare_runs(runs))

    md = tmp_path / "reports" / "cmp.md"
    assert main(["compare", *map(str, runs), "--out", str(md)]) == 0
    assert md.read_text() == capsys.readouterr().out == out

    assert main(["compare", *map(str, runs[:2]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["run"] for r in rows] == ["hybrid-a", "discrete-b"]
    assert rows[0]["reward_best"] == pytest.approx(0.875) and rows[1]["eval/arithmetic/accuracy_best"] is None
    assert "eval/gsm8k/accuracy_last" not in rows[0]  # only the eval tasks of the runs compared

    js = tmp_path / "cmp.json"
    assert main(["compare", str(runs[2]), "--json", "--out", str(js)]) == 0
    assert json.loads(js.read_text()) == json.loads(capsys.readouterr().out)


def test_cli_compare_error_on_dir_without_metrics(runs, tmp_path, capsys):
    bare = tmp_path / "bare"
    bare.mkdir()
    assert main(["compare", str(runs[0]), str(bare)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "hrpo compare: error:" in captured.err and str(bare / "metrics.jsonl") in captured.err
