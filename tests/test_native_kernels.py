"""hrpo's CPU kernels (hrpo/engines/cpu_kernels.c via hrpo.engines.native): the few-row product against fp64,
a whole decode step's layers against the aten layers on every code path, and the fallbacks (no compiler, a
failed build, a captured graph)."""

import ctypes
import warnings

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_rollout, build_tiny_model, tiny_config, with_random_lora
from hrpo import SamplingConfig, generate
from hrpo.engines import native, options, static, weights as weights_module
from hrpo.engines.layers import decoder_layers, last_logits, model_modules
from hrpo.engines.state import allocate_state, prefill
from hrpo.engines.weights import decode_weights
from hrpo.text import left_pad

if native.library() is None:
    pytest.skip("hrpo's CPU kernels could not be built here (no C compiler)", allow_module_level=True)

PATHS = [0] + ([2] if torch.backends.cpu.get_cpu_capability() in native.ISA else [])  # plain C, AVX2


def _linear(x, w, b, path: int, threads: int) -> torch.Tensor:
    out = torch.full((x.shape[0], w.shape[0]), float("nan"))
    native.library().hrpo_linear(x.data_ptr(), x.shape[0], x.shape[1], w.data_ptr(),
                                 None if b is None else b.data_ptr(), out.data_ptr(), w.shape[0], path, threads)
    return out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("rows", [1, 3, 8, 9, 32])
def test_the_few_row_product_equals_fp64(path, rows):
    gen = torch.Generator().manual_seed(rows)
    for n, k in ((960, 576), (577, 100), (33, 7), (16, 8)):  # odd K leaves a tail after the vectors; odd N too
        x, w, b = torch.randn(rows, k, generator=gen), torch.randn(n, k, generator=gen), torch.randn(n, generator=gen)
        want = F.linear(x.double(), w.double(), b.double())
        for threads in (1, 2):
            torch.testing.assert_close(_linear(x, w, b, path, threads).double(), want, atol=2e-4, rtol=1e-5)
            torch.testing.assert_close(_linear(x, w, None, path, threads).double(), want - b.double(), atol=2e-4,
                                       rtol=1e-5)


def test_linear_takes_a_decode_steps_rows_and_leaves_the_rest_to_onednn(monkeypatch):
    monkeypatch.setattr(options.OPTIONS, "cpu_linear", "native")
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(960, 576, generator=gen), torch.randn(960, generator=gen)
    with torch.no_grad():
        for x in (torch.randn(8, 1, 576, generator=gen), torch.randn(3, 576, generator=gen)):
            assert native.supports(x, w, b)
            out = torch.empty(*x.shape[:-1], 960)
            got = weights_module.linear(x, w, b, out=out)
            assert got is out
            torch.testing.assert_close(got, F.linear(x, w, b), atol=2e-4, rtol=1e-5)
        many = torch.randn(native.MAX_ROWS + 1, 576, generator=gen)
        assert not native.supports(many, w, b) and not native.supports(many[:8].bfloat16(), w.bfloat16(), None)
        torch.testing.assert_close(weights_module.linear(many, w, b), F.linear(many, w, b), atol=2e-4, rtol=1e-5)
        with native.disabled():  # what the CUDA-graph engine captures under
            assert not native.supports(many[:8], w, b)
    x = torch.randn(8, 576, generator=gen)
    assert not native.supports(x, w, b)  # autograd on: never the kernel


def _qwen3(vocab_size: int, head_dim: int = 8):
    from transformers import AutoModelForCausalLM, Qwen3Config

    common = tiny_config("llama", vocab_size).to_dict()
    config = Qwen3Config(**{k: common[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                   "num_hidden_layers", "num_attention_heads",
                                                   "num_key_value_heads", "tie_word_embeddings")}, head_dim=head_dim)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("arch, group", [("llama", 1), ("qwen2", 1), ("qwen3", 1), ("llama", 2), ("qwen2", 3),
                                         ("qwen3-64", 2), ("qwen3-128", 1)])
def test_decode_layers_equal_the_aten_layers(arch, group, path, tokenizer, monkeypatch):
    """Plain Llama; q/k/v biases; q/k norms; rows in runs of ``group`` sharing a prompt, whose cache slots the
    kernel reads once per run; heads of 64 and 128, whose attention products the kernel compiles for that size."""
    monkeypatch.setattr(native, "isa", lambda: path)
    if arch.startswith("qwen3"):
        model = _qwen3(len(tokenizer), int(arch.partition("-")[2] or 8))
    else:
        model = build_tiny_model(arch, len(tokenizer))
    model = with_random_lora(model)
    weights, modules = decode_weights(model, merge_lora=True), model_modules(model)
    prompts = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]  # left-padded: the pads' slots are invalid
    ids, mask = left_pad([p for p in prompts for _ in range(group)], tokenizer.pad_token_id)
    batch, new, hidden = ids.shape[0], 5, model.config.hidden_size
    with torch.no_grad():
        state = allocate_state(weights, batch, ids.shape[1] + new, new, hidden, len(tokenizer), False,
                               torch.float32, torch.device("cpu"))
        prefill(state, ids, mask, group, weights, modules)
        assert native.layers_unsupported(weights, state.kv, state.valid, modules.act, batch) is None
        aten_kv = [cache.clone() for cache in state.kv]
        logits, normed = torch.empty(batch, len(tokenizer)), torch.empty(batch, hidden)
        layers = native.DecodeLayers(weights, state.kv, state.valid, batch, group, ids.shape[1], logits=logits,
                                     hidden=normed)
        with pytest.raises(ValueError, match="logits must be"):
            native.DecodeLayers(weights, state.kv, state.valid, batch, group, ids.shape[1], logits=logits[:, 1:],
                                hidden=normed)
        gen = torch.Generator().manual_seed(1)
        for t in range(new):
            slot = ids.shape[1] + t
            state.valid[:, slot] = True
            inputs = torch.randn(batch, 1, hidden, generator=gen)
            positions = state.positions + t
            cos, sin = modules.rotary(inputs, positions)
            want_x, want_delta = decoder_layers(inputs, cos, sin, torch.tensor([slot]),
                                                state.valid[:, None, None, :slot + 1], weights, aten_kv, modules.act)
            x, delta = layers(inputs, cos, sin, slot, slot + 1)
            torch.testing.assert_close(x + delta, want_x + want_delta, atol=1e-5, rtol=1e-5)
            want_logits, want_hidden = last_logits(want_x, want_delta, weights)
            torch.testing.assert_close(normed, want_hidden, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(logits, want_logits, atol=1e-5, rtol=1e-5)
        for got, want in zip(state.kv, aten_kv):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_decode_layers_give_the_same_bits_on_any_number_of_threads(tokenizer):
    """The threads take the products' column chunks and the attention tasks from each other (with 7 threads and a
    tiny model most have no part of their own and take all their work from the others); every output is computed
    the same way whichever thread does it."""
    model = with_random_lora(build_tiny_model("llama", len(tokenizer)))
    weights, modules = decode_weights(model, merge_lora=True), model_modules(model)
    ids, mask = left_pad([p for p in ([5, 6, 7, 8, 9], [10, 11]) for _ in range(2)], tokenizer.pad_token_id)
    batch, new, hidden, threads = ids.shape[0], 4, model.config.hidden_size, torch.get_num_threads()
    outputs = []
    try:
        for count in (1, 3, 7):
            torch.set_num_threads(count)
            with torch.no_grad():
                state = allocate_state(weights, batch, ids.shape[1] + new, new, hidden, len(tokenizer), False,
                                       torch.float32, torch.device("cpu"))
                prefill(state, ids, mask, 2, weights, modules)
                logits, normed = torch.empty(batch, len(tokenizer)), torch.empty(batch, hidden)
                layers = native.DecodeLayers(weights, state.kv, state.valid, batch, 2, ids.shape[1], logits=logits,
                                             hidden=normed)
                assert layers.dims.threads == count
                gen, steps = torch.Generator().manual_seed(1), []
                for t in range(new):
                    slot = ids.shape[1] + t
                    state.valid[:, slot] = True
                    inputs = torch.randn(batch, 1, hidden, generator=gen)
                    cos, sin = modules.rotary(inputs, state.positions + t)
                    x, delta = layers(inputs, cos, sin, slot, slot + 1)
                    steps.append((x.clone(), delta.clone(), logits.clone(), normed.clone()))
                outputs.append((steps, [cache.clone() for cache in state.kv]))
    finally:
        torch.set_num_threads(threads)
    (want_steps, want_kv), others = outputs[0], outputs[1:]
    for steps, kv in others:
        for got, want in zip(steps, want_steps):
            assert all(torch.equal(g, w) for g, w in zip(got, want))
        assert all(torch.equal(g, w) for g, w in zip(kv, want_kv))


def test_the_static_engine_runs_its_layers_in_the_kernel(tokenizer, monkeypatch):
    calls = []
    call = native.DecodeLayers.__call__
    monkeypatch.setattr(native.DecodeLayers, "__call__", lambda self, *a: calls.append(1) or call(self, *a))
    model = with_random_lora(build_tiny_model("qwen2", len(tokenizer)))
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11]], tokenizer.pad_token_id)
    kw = dict(gate=None, matcher=None, eos_token_ids=[2], pad_token_id=tokenizer.pad_token_id,
              row_seeds=torch.arange(2), mode="discrete")
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=50)
    fast = static.generate_fast(model, ids, mask, sampling, **kw)
    assert calls  # every decode step but the last column's sample
    assert_same_rollout(generate(model, ids, mask, sampling, engine="eager", **kw), fast)
    monkeypatch.setattr(options.OPTIONS, "native_layers", False)
    calls.clear()
    assert_same_rollout(fast, static.generate_fast(model, ids, mask, sampling, **kw))
    assert not calls


def test_without_a_compiler_there_is_one_warning_and_onednn(tmp_path, monkeypatch):
    monkeypatch.setenv("HRPO_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", str(tmp_path / "no-such-compiler"))
    native.library.cache_clear()
    try:
        with pytest.warns(UserWarning, match="CPU kernels are not available"):
            assert native.library() is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the answer is cached: no second warning
            x, w = torch.randn(8, 64), torch.randn(32, 64)
            with torch.no_grad():
                assert not native.supports(x, w, None)
                torch.testing.assert_close(weights_module.linear(x, w), F.linear(x, w), atol=1e-5, rtol=1e-5)
    finally:
        monkeypatch.undo()
        native.library.cache_clear()
    assert isinstance(native.library(), ctypes.CDLL)


def test_a_failed_build_leaves_no_library_behind(tmp_path, monkeypatch):
    compiler = tmp_path / "cc"
    compiler.write_text("#!/bin/sh\nfor a; do out=$a; done\necho half > \"$out\"\necho 'cpu_kernels.c: error' >&2\n"
                        "exit 1\n")
    compiler.chmod(0o755)
    monkeypatch.setenv("HRPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(compiler))
    with pytest.raises(RuntimeError, match="cpu_kernels.c: error"):
        native.build()
    assert not list((tmp_path / "cache" / "kernels").glob("*.so"))
