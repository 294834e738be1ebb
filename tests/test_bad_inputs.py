"""Bad inputs fail early through the public entry point (`hrpo ...` via ``hrpo.cli.main``) with a message that
names the file / key / row / field, exit code 2 and no traceback.

Each case builds its inputs under ``tmp_path`` and returns ``(argv, [expected texts])``; ``{tmp}`` in an
expected text is replaced by ``tmp_path``.
"""

import json
import shutil

import pytest
import torch

from helpers import register
from hrpo.cli import main

register()

MISSING_MODEL = "{tmp}/no-such-model"  # data is validated before the model is loaded


def _train(tmp, *flags):
    return ["train", "--output-dir", str(tmp / "out"), "--quiet", *flags]


def _yaml(tmp, text):
    path = tmp / "cfg.yaml"
    path.write_text(text)
    return _train(tmp, "--config", str(path))


def _data(tmp, name, text, task="gsm8k"):
    path = tmp / name
    path.write_text(text)
    return _train(tmp, "--model", str(tmp / "no-such-model"), "--task", task, "--data", str(path))


GOOD_ROW = json.dumps({"question": "What is 2 + 2?", "answer": "2 + 2 = 4 #### 4"})


def _copy_run(tmp, run):
    dst = tmp / "run"
    shutil.copytree(run, dst)
    return dst


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def _damaged_run(tmp, run, name):
    dst = _copy_run(tmp, run)
    _truncate(dst / "checkpoint-2" / name)
    return dst


def _pickle_model_dir(tmp, model_dir):
    dst = tmp / "pickled"
    shutil.copytree(model_dir, dst)
    (dst / "model.safetensors").unlink()
    (dst / "pytorch_model.bin").write_bytes(b"not really a pickle")
    return dst


CASES = {
    # configuration values (flags)
    "group_size_1": lambda t, f: (_train(t, "--group-size", "1"), ["invalid config: group_size=1", "at least 2"]),
    "negative_lr": lambda t, f: (_train(t, "--lr", "-1"), ["lr=-1.0", "must be >= 0"]),
    "nan_lr": lambda t, f: (_train(t, "--lr", "nan"), ["lr=nan", "must be a finite number"]),
    "top_p_zero": lambda t, f: (_train(t, "--top-p", "0"), ["top_p=0.0", "must be in (0, 1]"]),
    "r_min_above_r_max": lambda t, f: (_train(t, "--r-min", "0.999", "--r-max", "0.99"), ["r_min=0.999", "< r_max"]),
    "eval_every_without_task": lambda t, f: (_train(t, "--eval-every", "5"), ["eval_every=5", "needs eval_task"]),
    "negative_reward_timeout": lambda t, f: (_train(t, "--reward-timeout", "-1"), ["reward_timeout=-1.0"]),
    "negative_max_nonfinite": lambda t, f: (_train(t, "--max-nonfinite-steps", "-2"), ["max_nonfinite_steps=-2"]),
    "unknown_device": lambda t, f: (_train(t, "--device", "gpu"), ["device='gpu'", "is not a device name"]),
    # YAML config files
    "yaml_unknown_key": lambda t, f: (_yaml(t, "lerning_rate: 0.1\n"),
                                      ["{tmp}/cfg.yaml", "unknown config key 'lerning_rate'"]),
    "yaml_wrong_type": lambda t, f: (_yaml(t, "max_steps: many\n"), ["{tmp}/cfg.yaml", "'max_steps' must be int"]),
    "yaml_fractional_int": lambda t, f: (_yaml(t, "group_size: 2.5\n"), ["'group_size' must be int, got 2.5"]),
    "yaml_not_a_mapping": lambda t, f: (_yaml(t, "- lr\n- 0.1\n"), ["{tmp}/cfg.yaml", "must hold a mapping"]),
    "yaml_syntax_error": lambda t, f: (_yaml(t, "max_steps: [1, 2\n"), ["{tmp}/cfg.yaml", "not valid YAML"]),
    "yaml_missing_file": lambda t, f: (_train(t, "--config", str(t / "nope.yaml")),
                                       ["config file {tmp}/nope.yaml does not exist"]),
    "yaml_bad_choice": lambda t, f: (_yaml(t, "report_to: slack\n"), ["report_to='slack'", "must be one of"]),
    "yaml_nan_temperature": lambda t, f: (_yaml(t, "temperature: .nan\n"), ["temperature=nan", "finite"]),
    # data files
    "row_missing_field": lambda t, f: (_data(t, "train.jsonl", GOOD_ROW + '\n{"question": "q"}\n'),
                                       ["{tmp}/train.jsonl: line 2: field 'answer' is missing"]),
    "row_wrong_type": lambda t, f: (_data(t, "train.jsonl", GOOD_ROW + '\n{"question": 5, "answer": "#### 4"}\n'),
                                    ["{tmp}/train.jsonl: line 2: field 'question' has the wrong type"]),
    "row_no_final_number": lambda t, f: (_data(t, "train.jsonl", '{"question": "q", "answer": "four"}\n'),
                                         ["train.jsonl: line 1: field 'answer' has no final number"]),
    "row_invalid_json": lambda t, f: (_data(t, "train.jsonl", GOOD_ROW + "\n{not json\n"),
                                      ["{tmp}/train.jsonl: line 2: invalid JSON"]),
    "row_not_an_object": lambda t, f: (_data(t, "train.json", "[1, 2]"),
                                       ["{tmp}/train.json: item 1: expected a JSON object, got int"]),
    "mc_answer_out_of_range": lambda t, f: (
        _data(t, "mc.jsonl", json.dumps({"question": "q", "choices": ["a", "b"], "answer": 7}) + "\n", "mmlu_stem"),
        ["{tmp}/mc.jsonl: line 1: field 'answer' index 7 is out of range for 2 choices"]),
    "data_path_missing": lambda t, f: (_train(t, "--model", str(t / "m"), "--task", "gsm8k", "--data",
                                              str(t / "nope.jsonl")),
                                       ["{tmp}/nope.jsonl: no such file or directory"]),
    "data_file_empty": lambda t, f: (_data(t, "train.jsonl", ""), ["{tmp}/train.jsonl: the file is empty"]),
    "data_unsupported_type": lambda t, f: (_data(t, "train.csv", "question,answer\n"),
                                           ["{tmp}/train.csv: unsupported file type '.csv'"]),
    "eval_data_bad_row": lambda t, f: (
        ["eval", "--task", "gsm8k", "--data", str(_data(t, "test.jsonl", '{"answer": "#### 1"}\n')[-1])],
        ["{tmp}/test.jsonl: line 1: field 'question' is missing"]),
    "unknown_task": lambda t, f: (_train(t, "--task", "nope"), ["unknown task 'nope'", "Available tasks:"]),
    # models
    "model_dir_without_config": lambda t, f: (["generate", "--model", str(t), "--prompt", "hi"],
                                              ["{tmp} is a path but has no config.json"]),
    "model_pickle_weights_only": lambda t, f: (
        ["generate", "--model", str(_pickle_model_dir(t, f["model"])), "--prompt", "hi"],
        ["{tmp}/pickled holds its weights only as PyTorch pickle files (pytorch_model.bin)", "safetensors only"]),
    # run directories, adapters and damaged checkpoints
    "resume_not_a_run": lambda t, f: (["train", "--resume", str(t)],
                                      ["{tmp} is not an hrpo run directory (it has no config.yaml)"]),
    "resume_without_checkpoint": lambda t, f: (
        ["train", "--resume", str(_without_checkpoints(_copy_run(t, f["run"])))],
        ["{tmp}/run has no checkpoint-N directory yet"]),
    "adapter_not_ours": lambda t, f: (["generate", "--adapter", str(t), "--prompt", "hi"],
                                      ["{tmp} is neither an hrpo checkpoint"]),
    "adapter_temp_dir": lambda t, f: (
        ["generate", "--adapter", str(_temp_dir(_copy_run(t, f["run"]))), "--prompt", "hi"],
        ["{tmp}/run/.tmp-checkpoint-3 is an incomplete checkpoint"]),
    "truncated_trainer_state": lambda t, f: (
        ["train", "--resume", str(_damaged_run(t, f["run"], "trainer_state.pt")), "--quiet"],
        ["{tmp}/run/checkpoint-2/trainer_state.pt could not be read (truncated, or not written by hrpo)"]),
    "truncated_adapter_resume": lambda t, f: (
        ["train", "--resume", str(_damaged_run(t, f["run"], "adapter_model.safetensors")), "--quiet"],
        ["{tmp}/run/checkpoint-2/adapter_model.safetensors could not be read"]),
    "truncated_adapter_generate": lambda t, f: (
        ["generate", "--adapter", str(_damaged_run(t, f["run"], "adapter_model.safetensors")), "--prompt", "hi"],
        ["{tmp}/run/checkpoint-2: could not load the LoRA adapter"]),
    "truncated_gate": lambda t, f: (
        ["train", "--resume", str(_damaged_run(t, f["run"], "gate.safetensors")), "--quiet"],
        ["{tmp}/run/checkpoint-2/gate.safetensors could not be read"]),
}



# your own tasks and rewards (issue: bring your own task and reward); each fails before any model loads
def _user_file(tmp, name, text):
    path = tmp / name
    path.write_text(text)
    return path


def _user(tmp, *flags):
    return _train(tmp, "--model", str(tmp / "no-such-model"), *flags)


def _generic(tmp, rows, *flags):
    data = _user_file(tmp, "rows.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    return _user(tmp, "--task", "generic", "--data", str(data), *flags)


HALF_TASK = "class Half:\n    name = 'half'\n    marker = '####'\n    def messages(self, ex): return []\n" \
            "    def reward(self, c, ex): return 0.0\n    def extract_answer(self, c, ex=None): return None\n"
REWARDS = "def one_arg(completion):\n    return 1.0\n\ndef ok(completion, example):\n    return 1.0\n"
ROW = {"q": "What is 1 + 1?", "a": "2"}
try:
    import reasoning_gym  # noqa: F401
    RG_UNKNOWN = ["unknown reasoning-gym generator 'chain_sums'", "Close names: chain_sum"]
except ImportError:
    RG_UNKNOWN = ["reasoning-gym tasks need the reasoning-gym package", "pip install"]

CASES.update({
    "task_file_missing": lambda t, f: (_user(t, "--task", f"{t}/nope.py:Task"), ["{tmp}/nope.py: no such file"]),
    "task_file_does_not_import": lambda t, f: (
        _user(t, "--task", f"{_user_file(t, 'broken.py', 'import os' + chr(10) + 'raise ValueError(42)')}:T"),
        ["{tmp}/broken.py: could not be imported: ValueError: 42"]),
    "task_file_syntax_error": lambda t, f: (_user(t, "--task", f"{_user_file(t, 'syn.py', 'def (:')}:T"),
                                            ["{tmp}/syn.py: could not be imported: SyntaxError", "(line 1)"]),
    "task_attribute_missing": lambda t, f: (_user(t, "--task", f"{_user_file(t, 'half.py', HALF_TASK)}:Whole"),
                                            ["{tmp}/half.py has no attribute 'Whole' (it defines: Half)"]),
    "task_lacks_protocol_methods": lambda t, f: (_user(t, "--task", f"{_user_file(t, 'half.py', HALF_TASK)}:Half"),
                                                 ["{tmp}/half.py:Half: the task lacks score, load of the Task"]),
    "task_module_missing": lambda t, f: (_user(t, "--task", "no_such_pkg_xyz.tasks:make"),
                                         ["module 'no_such_pkg_xyz.tasks' not found"]),
    "task_option_not_taken": lambda t, f: (_user(t, "--task", "arithmetic", "--task-option", "digits=3"),
                                           ["task 'arithmetic' does not take the task option(s) 'digits'"]),
    "rg_unknown_generator": lambda t, f: (_user(t, "--task", "rg:chain_sums"), RG_UNKNOWN),
    "reward_unknown_name": lambda t, f: (_user(t, "--reward", "acuracy"),
                                         ["unknown reward 'acuracy'", "Did you mean accuracy?"]),
    "reward_weight_not_a_number": lambda t, f: (_user(t, "--reward", "format:lots"),
                                                ["reward 'format:lots': weight 'lots' is not a number"]),
    "reward_yaml_weight_not_a_number": lambda t, f: (
        _yaml(t, "rewards:\n  - {name: format, weight: high}\n"),
        ["{tmp}/cfg.yaml: reward 'format': weight 'high' is not a number"]),
    "reward_file_without_the_function": lambda t, f: (
        _user(t, "--reward", f"{_user_file(t, 'r.py', REWARDS)}:length_penalty:-0.01"),
        ["{tmp}/r.py has no attribute 'length_penalty' (it defines: ok, one_arg)"]),
    "reward_wrong_signature": lambda t, f: (_user(t, "--reward", f"{_user_file(t, 'r.py', REWARDS)}:one_arg"),
                                            ["{tmp}/r.py:one_arg: a reward takes (completion: str, example: dict)"]),
    "generic_row_missing_field": lambda t, f: (
        _generic(t, [ROW, {"q": "What is 2 + 2?"}], "--prompt-field", "q", "--answer-field", "a"),
        ["{tmp}/rows.jsonl: line 2: field 'a' is missing"]),
    "generic_template_names_a_missing_field": lambda t, f: (
        _generic(t, [ROW], "--prompt-template", "{q} Hint: {hint}", "--answer-field", "a"),
        ["{tmp}/rows.jsonl: line 1: field 'hint' is missing (the prompt template names it"]),
    "generic_template_malformed": lambda t, f: (
        _generic(t, [ROW], "--prompt-template", "{q", "--answer-field", "a"), ["prompt_template '{q'", "brace"]),
    "generic_without_answer_field": lambda t, f: (_generic(t, [ROW], "--prompt-field", "q"),
                                                  ["task generic needs --answer-field"]),
    "generic_key_with_another_task": lambda t, f: (_user(t, "--task", "gsm8k", "--prompt-field", "q"),
                                                   ["prompt_field='q'", "option of the generic task"]),
    "eval_generic_bad_row": lambda t, f: (
        ["eval", "--model", str(t / "m"), *_generic(t, [{"a": "1"}], "--prompt-field", "q", "--answer-field",
                                                    "a")[6:]],
        ["{tmp}/rows.jsonl: line 1: field 'q' is missing"]),
})

if not torch.cuda.is_available():
    CASES["cuda_without_cuda"] = lambda t, f: (_train(t, "--device", "cuda"),
                                               ["device='cuda'", "CUDA is not available"])


def _without_checkpoints(run):
    for ckpt in run.glob("checkpoint-*"):
        shutil.rmtree(ckpt)
    return run


def _temp_dir(run):
    shutil.copytree(run / "checkpoint-2", run / ".tmp-checkpoint-3")
    return run / ".tmp-checkpoint-3"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory, tiny_model_dirs):
    """A finished 2-step run on a tiny model (for damaged copies) and the tiny model directory."""
    run = tmp_path_factory.mktemp("bad-inputs") / "run"
    assert main(["train", "--model", str(tiny_model_dirs["llama"]), "--task", "parity", "--output-dir", str(run),
                 "--max-steps", "2", "--prompts-per-step", "1", "--group-size", "2", "--max-new-tokens", "3",
                 "--save-every", "2", "--quiet"]) == 0
    return {"run": run, "model": tiny_model_dirs["llama"]}


def test_the_table_is_large_enough():
    assert len(CASES) >= 15


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input_fails_with_a_clear_message(name, tmp_path, fixtures, capsys):
    argv, expected = CASES[name](tmp_path, fixtures)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith(f"hrpo {argv[0]}: error: ") and "Traceback" not in err
    for text in expected:
        assert text.replace("{tmp}", str(tmp_path)) in err


def test_invalid_choice_on_the_command_line_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as info:
        main(["train", "--mode", "latentish"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "invalid choice: 'latentish'" in err and "Traceback" not in err
