"""Safety: weights as safetensors only, trust_remote_code off unless asked for, no eval of model output,
torch.load only with weights_only=True."""

import ast
from pathlib import Path

import pytest

import hrpo
from hrpo.config import TrainConfig, build_config
from hrpo.models import ModelLoadError, load_model

SRC = Path(hrpo.__file__).parent


@pytest.fixture
def loads(monkeypatch):
    """Record the keyword arguments of every AutoTokenizer / AutoModelForCausalLM.from_pretrained call."""
    import transformers

    calls = {"tokenizer": [], "model": []}
    for key, cls in (("tokenizer", transformers.AutoTokenizer), ("model", transformers.AutoModelForCausalLM)):
        original = cls.from_pretrained

        def record(*args, _original=original, _key=key, **kwargs):
            calls[_key].append(kwargs)
            return _original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", record)
    return calls


def test_trust_remote_code_is_off_by_default_and_models_load_as_safetensors(tiny_model_dirs, loads):
    assert TrainConfig().trust_remote_code is False
    load_model(str(tiny_model_dirs["llama"]))
    assert loads["model"][-1]["trust_remote_code"] is False and loads["model"][-1]["use_safetensors"] is True
    assert loads["tokenizer"][-1]["trust_remote_code"] is False


def test_trust_remote_code_reaches_from_pretrained_when_set(tiny_model_dirs, loads, tmp_path):
    from helpers import register, tiny_train_args
    from hrpo.trainer import setup

    register()
    cfg = build_config(cli_values={**tiny_train_args(tiny_model_dirs["qwen2"], tmp_path / "run"),
                                   "trust_remote_code": True})
    setup(cfg, log=lambda *a: None)
    assert loads["model"][-1]["trust_remote_code"] is True and loads["model"][-1]["use_safetensors"] is True
    assert loads["tokenizer"][-1]["trust_remote_code"] is True


@pytest.mark.parametrize("flag, expected", [([], False), (["--trust-remote-code"], True)])
def test_generate_passes_trust_remote_code_only_when_asked(tiny_model_dirs, loads, capsys, flag, expected):
    from hrpo.cli import main

    assert main(["generate", "--model", str(tiny_model_dirs["llama"]), "--prompt", "hi", "--max-new-tokens", "2",
                 "--mode", "discrete", *flag]) == 0
    assert loads["model"][-1]["trust_remote_code"] is expected


def test_a_model_directory_with_only_pickle_weights_is_refused(tiny_model_dirs, tmp_path):
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dirs["llama"], model_dir)
    (model_dir / "model.safetensors").rename(model_dir / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match=r"holds its weights only as PyTorch pickle files \(pytorch_model.bin\)"
                                             r"; hrpo loads safetensors only"):
        load_model(str(model_dir))


def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            yield name, node


def test_the_package_never_evals_and_torch_load_is_weights_only():
    files = sorted(SRC.rglob("*.py"))
    assert len(files) > 15
    torch_loads = []
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for name, node in _calls(tree):
            is_builtin = isinstance(node.func, ast.Name)
            assert not (is_builtin and name in ("eval", "exec", "compile")), f"{path}:{node.lineno}: {name}()"
            assert name not in ("sympify", "parse_expr"), f"{path}:{node.lineno}: {name}() evaluates its input"
            if name == "load" and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
                kwargs = {k.arg: k.value for k in node.keywords}
                assert isinstance(kwargs.get("weights_only"), ast.Constant) and kwargs["weights_only"].value is True, \
                    f"{path}:{node.lineno}: torch.load without weights_only=True"
                torch_loads.append(path.name)
        assert "import pickle" not in path.read_text(), path
    assert "checkpoint.py" in torch_loads


def test_math_answers_are_parsed_never_evaluated(monkeypatch):
    import math_verify.parser

    from hrpo.scoring import math_equal

    evaluated = []
    monkeypatch.setattr(math_verify.parser, "parse_expr", lambda *a, **k: evaluated.append(a) or 0)
    math_verify.parser.parse_expr_cached.cache_clear()
    assert math_equal("x^2 + 2x + 1", "(x+1)^2")  # still checked by mathematical equivalence
    assert not math_equal("__import__('os').getcwd()", "1")
    assert not math_equal("(lambda: 1)()", "1")
    assert evaluated == []
