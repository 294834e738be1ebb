"""Every task loads its fixture (the dataset's real schema), formats a prompt and scores completions; local
formats (jsonl, json, parquet, saved dataset, Hendrycks directory); malformed data and offline hub errors."""

import json
import time
from pathlib import Path

import pytest

from hrpo import tasks
from hrpo.data import DataError
from hrpo.tasks.base import HASH_SYSTEM_PROMPT

FIXTURES = Path(__file__).parent / "fixtures"

REFERENCE_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. The user asks a question, and the assistant solves it. The "
    "assistant first thinks about the reasoning process in the mind and then provides the user with the answer. "
    "The final answer is provided after the #### tag, i.e., {reasoning process} #### {answer}.")

# task -> (number of fixture rows, a correct final answer for row 0, a wrong one)
FIXTURE_TASKS = {
    "gsm8k": (4, "240", "24"),
    "math": (4, "$\\frac{3}{4}$", "4"),
    "math500": (3, "10", "20"),
    "mmlu_stem": (4, "B", "A"),
    "arc_c": (3, "B", "C"),
    "mmlu_arc_train": (3, "B", "D"),
    "nq": (2, "Jane Austen", "Emma"),
    "triviaqa": (2, "Mars", "Venus"),
    "hotpotqa": (1, "the Beatles", "The Who"),
    "2wiki": (1, "Albert Einstein", "Niels Bohr"),
    "bamboogle": (1, "Benjamin Harrison", "Grover Cleveland"),
    "arithmetic": (2, "37", "36"),
}


def test_registry_names_and_unknown_task():
    assert set(FIXTURE_TASKS) <= set(tasks.names())
    assert tasks.get("mmlu-stem").name == "mmlu_stem"
    with pytest.raises(KeyError, match="unknown task 'nope'.*gsm8k"):
        tasks.get("nope")


@pytest.mark.parametrize("name", sorted(FIXTURE_TASKS))
@pytest.mark.parametrize("prompt_format", ["hash", "think"])
def test_fixture_loads_prompts_and_scores(name, prompt_format):
    n_rows, right, wrong = FIXTURE_TASKS[name]
    task = tasks.get(name, prompt_format=prompt_format)
    marker = {"hash": "####", "think": "</think>"}[prompt_format]
    assert task.marker == marker
    examples = task.load("test", data_path=FIXTURES / f"{name}.jsonl")
    assert len(examples) == n_rows
    json.dumps(examples)  # examples are plain data (they go into reports)
    ex = examples[0]
    msgs = task.messages(ex)
    assert msgs[-1]["role"] == "user" and ex["question"] in msgs[-1]["content"]
    if name != "arithmetic":
        assert [m["role"] for m in msgs] == ["system", "user"]
        assert (msgs[0]["content"] == REFERENCE_SYSTEM_PROMPT) == (prompt_format == "hash")
        assert marker in msgs[0]["content"]
    good = ("<think>reasoning</think> " if prompt_format == "think" else "reasoning #### ") + right
    bad = ("<think>reasoning</think> " if prompt_format == "think" else "reasoning #### ") + wrong
    assert task.reward(good, ex) == 1.0
    assert task.reward(bad, ex) == 0.0
    assert task.reward(good + " " + marker, ex) == 0.0  # marker twice
    assert task.extract_answer("no marker " + right, ex) is None
    scored = task.score(good, ex)
    assert scored["correct"] and scored["format_ok"] and scored["answer"] is not None
    assert len(task.load("test", data_path=FIXTURES / f"{name}.jsonl", limit=1)) == 1


def test_hash_prompt_is_the_reference_verbatim():
    assert HASH_SYSTEM_PROMPT == REFERENCE_SYSTEM_PROMPT


def test_multiple_choice_prompt_and_arc_numeric_keys():
    task = tasks.get("arc_c")
    examples = task.load("test", data_path=FIXTURES / "arc_c.jsonl")
    assert task.messages(examples[0])[1]["content"] == (
        "Question: Which form of energy does a plant store in sugar?\nOptions:\nA. light energy\n"
        "B. chemical energy\nC. sound energy\nD. thermal energy")
    numeric = examples[1]  # labels '1'..'4', answerKey '3' -> third option -> C
    assert numeric["gold"] == "C" and numeric["choices"][2] == "balance"
    assert task.reward("#### C", numeric) == 1.0 and task.reward("#### 3", numeric) == 0.0
    assert task.reward("#### balance", numeric) == 1.0
    assert "E. solar flares" in task.messages(examples[2])[1]["content"]
    mixed = tasks.get("mmlu_arc_train").load("train", data_path=FIXTURES / "mmlu_arc_train.jsonl")
    assert [ex["gold"] for ex in mixed] == ["B", "B", "C"]  # MMLU row, nested aux_train row, ARC row


def test_qa_prompt_uses_first_three_passages():
    task = tasks.get("nq")
    ex = task.load("test", data_path=FIXTURES / "nq.jsonl")[0]
    text = task.messages(ex)[1]["content"]
    lines = text.split("\n")
    assert lines[0] == "Context (which may or may not be relevant):"
    assert lines[1] == ("Pride and Prejudice::::Pride and Prejudice is an 1813 novel of manners written by "
                        "Jane Austen.")
    assert len(lines) == 6 and lines[4] == "" and lines[5] == f"Question: {ex['question']}"
    assert "must not appear" not in text
    closed = tasks.get("bamboogle").load("test", data_path=FIXTURES / "bamboogle.jsonl")[0]
    assert tasks.get("bamboogle").messages(closed)[1]["content"].startswith("Question: ")
    tq = tasks.get("triviaqa").load("test", data_path=FIXTURES / "triviaqa.jsonl")[0]
    assert tq["contexts"][0].startswith("Mars::::Mars is")  # FlashRAG {"contents": ...} passages
    scored = tasks.get("triviaqa").score("#### the red planet mars", tq)
    assert scored["correct"] and scored["f1"] == 1.0


def test_qa_row_without_contexts_is_closed_book(tmp_path):
    rows = [{"id": "q1", "question": "Which river flows through Cairo?", "golden_answers": ["Nile", "River Nile"]},
            {"question": "Who painted Guernica?", "golden_answers": ["Picasso"], "contexts": None}]
    path = _write(tmp_path, "flashrag.jsonl", [json.dumps(r) for r in rows])
    task = tasks.get("nq")
    first, second = task.load("test", data_path=path)
    assert first["contexts"] == [] and second["contexts"] == []
    assert task.messages(first)[1]["content"] == "Question: Which river flows through Cairo?"
    assert task.reward("#### the Nile", first) == 1.0 and task.reward("#### Amazon", first) == 0.0
    bad = _write(tmp_path, "bad.jsonl", [json.dumps({**rows[0], "contexts": "not a list"})])
    with pytest.raises(DataError, match="field 'contexts'"):
        task.load("test", data_path=bad)


def test_math_gold_with_several_boxes_is_a_set(tmp_path):
    row = {"problem": "Solve x^2 - 2x - 3 = 0.", "solution": "It factors: $x = \\boxed{3}$ or $x = \\boxed{-1}$."}
    path = _write(tmp_path, "m.jsonl", [json.dumps(row)])
    task = tasks.get("math")
    (example,) = task.load("test", data_path=path)
    assert task.reward("#### $-1, 3$", example) == 1.0
    assert task.reward("#### $\\boxed{3}$", example) == 0.0


def test_math_gold_from_boxed_solution_and_subjects():
    examples = tasks.get("math").load("test", data_path=FIXTURES / "math.jsonl")
    assert [ex["gold"] for ex in examples] == ["\\frac{3}{4}", "4", "2\\sqrt{3}", "(-2, 2)"]
    assert examples[0]["subject"] == "Prealgebra" and examples[0]["level"] == "Level 1"
    polar = tasks.get("math500").load("test", data_path=FIXTURES / "math500.jsonl")[2]
    assert tasks.get("math500").reward("#### $(3, \\frac{\\pi}{2})$", polar) == 1.0


def test_examples_shuffle_train_rows_deterministically():
    task = tasks.get("gsm8k", data_path=str(FIXTURES / "gsm8k.jsonl"))
    a, b = task.examples(6, seed=1), task.examples(6, seed=1)
    assert a == b and len(a) == 6
    assert {ex["gold"] for ex in a} == {"240", "1750", "0.75", "400"}
    arith = tasks.get("arithmetic")
    assert len(arith.load("test", limit=5)) == 5 and arith.load("test", limit=5) != arith.examples(5, seed=0)


# --------------------------------------------------------------------------------------- local formats
def _rows(name):
    return [json.loads(x) for x in (FIXTURES / f"{name}.jsonl").read_text().splitlines()]


def test_json_parquet_and_saved_dataset(tmp_path):
    rows = _rows("mmlu_stem")
    (tmp_path / "list.json").write_text(json.dumps(rows))
    (tmp_path / "splits.json").write_text(json.dumps({"train": rows[:1], "test": rows}))
    (tmp_path / "lines.json").write_text("\n".join(json.dumps(r) for r in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "data.json").write_text(json.dumps({"data": rows}))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "x.parquet")
    snapshot = tmp_path / "snapshot" / "default"  # a hub snapshot: <config>/<split>-00000-of-00001.parquet
    snapshot.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(rows), snapshot / "test-00000-of-00001.parquet")
    pq.write_table(pa.Table.from_pylist(rows[:2]), snapshot / "train-00000-of-00001.parquet")
    task = tasks.get("mmlu_stem")
    expected = task.load("test", data_path=FIXTURES / "mmlu_stem.jsonl")
    for name in ("list.json", "splits.json", "lines.json", "data.json", "x.parquet", "snapshot"):
        assert task.load("test", data_path=tmp_path / name) == expected, name
    assert len(task.load("train", data_path=tmp_path / "splits.json")) == 1
    (tmp_path / "only_train.json").write_text(json.dumps({"train": rows}))  # a lone split is not a wrapper
    with pytest.raises(DataError, match="has no split 'test' \\(it has: train\\)"):
        task.load("test", data_path=tmp_path / "only_train.json")
    assert len(task.load("train", data_path=tmp_path / "snapshot")) == 2

    datasets = pytest.importorskip("datasets")
    datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)}).save_to_disk(tmp_path / "saved")
    assert task.load("test", data_path=tmp_path / "saved") == expected
    with pytest.raises(DataError, match="no split 'train'"):
        task.load("train", data_path=tmp_path / "saved")


def test_hendrycks_directory_layout(tmp_path):
    for i, row in enumerate(_rows("math")):
        folder = tmp_path / "MATH" / "test" / row["type"].lower().replace(" ", "_")
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.json").write_text(json.dumps(row))
    examples = tasks.get("math").load("test", data_path=tmp_path / "MATH")
    assert sorted(ex["gold"] for ex in examples) == sorted(["\\frac{3}{4}", "4", "2\\sqrt{3}", "(-2, 2)"])
    with pytest.raises(DataError, match="no data files for split 'train'"):
        tasks.get("math").load("train", data_path=tmp_path / "MATH")


# --------------------------------------------------------------------------------------- malformed data
def _write(tmp_path, name, lines):
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n")
    return path


def test_missing_field_names_file_line_and_field(tmp_path):
    path = _write(tmp_path, "g.jsonl", ['{"question": "a", "answer": "#### 1"}', '{"question": "b"}'])
    with pytest.raises(DataError) as err:
        tasks.get("gsm8k").load("test", data_path=path)
    msg = str(err.value)
    assert str(path) in msg and "line 2" in msg and "field 'answer' is missing" in msg


def test_wrong_type_names_file_line_and_field(tmp_path):
    good = json.dumps(_rows("mmlu_stem")[0])
    path = _write(tmp_path, "m.jsonl", [good, good, json.dumps({**_rows("mmlu_stem")[0], "choices": "A, B"})])
    with pytest.raises(DataError) as err:
        tasks.get("mmlu_stem").load("test", data_path=path)
    msg = str(err.value)
    assert str(path) in msg and "line 3" in msg and "field 'choices'" in msg and "wrong type" in msg
    path = _write(tmp_path, "q.jsonl", [json.dumps({"question": "q", "golden_answers": [1], "contexts": []})])
    with pytest.raises(DataError, match=r"q\.jsonl: line 1: field 'golden_answers' item 0 has the wrong type"):
        tasks.get("nq").load("test", data_path=path)
    path = _write(tmp_path, "b.jsonl", [json.dumps({"question": "q", "choices": ["x", "y"], "answer": True})])
    with pytest.raises(DataError, match="line 1: field 'answer' has the wrong type"):
        tasks.get("mmlu_stem").load("test", data_path=path)


def test_bad_values_name_the_field(tmp_path):
    arc = json.loads((FIXTURES / "arc_c.jsonl").read_text().splitlines()[0])
    path = _write(tmp_path, "a.jsonl", [json.dumps({**arc, "answerKey": "F"})])
    with pytest.raises(DataError, match="line 1: field 'answerKey' 'F' is not one of the choice labels"):
        tasks.get("arc_c").load("test", data_path=path)
    path = _write(tmp_path, "m.jsonl", [json.dumps({"problem": "p", "solution": "no box here"})])
    with pytest.raises(DataError, match=r"line 1: field 'solution' has no \\boxed"):
        tasks.get("math").load("test", data_path=path)
    path = _write(tmp_path, "g.jsonl", [json.dumps({"question": "p", "answer": "no number"})])
    with pytest.raises(DataError, match="line 1: field 'answer' has no final number"):
        tasks.get("gsm8k").load("test", data_path=path)


def test_empty_file_and_bad_json_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: the file is empty"):
        tasks.get("gsm8k").load("test", data_path=empty)
    bad = _write(tmp_path, "bad.jsonl", ['{"question": "a", "answer": "#### 1"}', '{"question": "b", answer}'])
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2: invalid JSON"):
        tasks.get("gsm8k").load("test", data_path=bad)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('[{"question": "a",\n "answer": ]')
    with pytest.raises(DataError, match=r"bad\.json: line 2: invalid JSON"):
        tasks.get("gsm8k").load("test", data_path=bad_json)
    not_obj = _write(tmp_path, "list.jsonl", ['[1, 2]'])
    with pytest.raises(DataError, match="line 1: expected a JSON object"):
        tasks.get("gsm8k").load("test", data_path=not_obj)
    with pytest.raises(DataError, match="no such file"):
        tasks.get("gsm8k").load("test", data_path=tmp_path / "missing.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        tasks.get("gsm8k").load("test", data_path=tmp_path / "x.csv")


# --------------------------------------------------------------------------------------- hub / offline
def test_offline_hub_task_fails_fast_with_data_hint(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    with pytest.raises(DataError) as err:
        tasks.get("gsm8k").load("test")
    assert time.perf_counter() - t0 < 20
    msg = str(err.value)
    assert "openai/gsm8k" in msg and "--data PATH" in msg and "question" in msg and "answer" in msg


def test_unreachable_hub_fails_without_trying(monkeypatch):
    import hrpo.models

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.setattr(hrpo.models, "_hub_reachable", lambda timeout=3.0: False)
    with pytest.raises(DataError, match="not reachable.*--data PATH"):
        tasks.get("mmlu_stem").load("test")


def test_local_only_and_missing_split_messages():
    with pytest.raises(DataError, match="task 'nq' has no hub dataset.*--data PATH.*golden_answers"):
        tasks.get("nq").load("test")
    with pytest.raises(DataError, match="no 'train' split on the hub"):
        tasks.get("math500").load("train")


def test_parquet_bad_row_names_the_row(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"question": "q1", "choices": ["x", "y"], "answer": "B"},
            {"question": "q2", "choices": ["x", "y"], "answer": "Z"}]
    path = tmp_path / "mc.parquet"
    pq.write_table(pa.Table.from_pylist(rows), path)
    with pytest.raises(DataError, match=r"mc\.parquet: row 2: field 'answer' 'Z' is not a letter"):
        tasks.get("mmlu_stem").load("test", data_path=path)
    (tmp_path / "broken.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet file"):
        tasks.get("mmlu_stem").load("test", data_path=tmp_path / "broken.parquet")


@pytest.mark.parametrize("completion, answer", [
    ("16 eggs, eats 3, bakes 4: 9 eggs at $2 each, so she makes $18 every day.", "18"),  # last number
    ("16 - 3 - 4 = 9. The answer is 18 (9 x 2).", "18"),  # the text after 'answer is'
    (r"so \boxed{18} (from 9 eggs at 2)", "18"),
    ("no digits here", None),
])
def test_eval_reads_an_unmarked_numeric_answer_as_the_reference_does(completion, answer):
    """Without the marker, eval scores the whole completion by its last number (the reference's normaliser),
    not its first."""
    for name, example in (("gsm8k", {"question": "q", "gold": "18"}), ("arithmetic", {"question": "q", "answer": "18"})):
        scored = tasks.get(name).score(completion, example)
        assert scored["answer"] == answer and scored["correct"] == (answer == "18") and not scored["format_ok"]
    marked = tasks.get("gsm8k").score("9 eggs at $2 #### 18 dollars from 9 eggs", {"question": "q", "gold": "18"})
    assert marked["answer"] == "18" and marked["format_ok"]  # after the marker: its first number
