"""hrpo's kernels for a decode step's small ops (hrpo/engines/cpu_kernels.c via hrpo.engines.native): sampling's
top-k and log-sum-exp (the k largest logits against torch.topk and a hand-ordered tie, the log-sum-exp against
fp64, where it steps aside), the whole draw without top-p (by hand and against torch's), the hybrid step's
latent, gate mix and whole input against hrpo.gate, and the engines' rollouts with them against the same
rollouts on torch's ops."""

import pytest
import torch

from conftest import assert_same_rollout, build_tiny_model, with_random_lora
from hrpo import HybridGate, SamplingConfig, generate
from hrpo.engines import native, options
from hrpo.engines.weights import concatenated_gate
from hrpo.gate import gated_mix, mix_inputs, topk_latent_embeddings
from hrpo.sampling import marker_matcher, row_uniforms, sample_tokens
from hrpo.text import left_pad

if native.library() is None:
    pytest.skip("hrpo's CPU kernels could not be built here (no C compiler)", allow_module_level=True)

PATHS = [0] + ([2] if native.isa() == 2 else [])  # plain C, AVX2


def _topk_lse(logits: torch.Tensor, k: int, temperature: float, path: int, threads: int = 2):
    batch = logits.shape[0]
    values, ids = torch.full((batch, k), float("nan")), torch.full((batch, k), -1, dtype=torch.long)
    lse = torch.full((batch,), float("nan"))
    nans = native.library().hrpo_topk_lse(logits.data_ptr(), batch, logits.shape[1], k, temperature,
                                          values.data_ptr(), ids.data_ptr(), lse.data_ptr(), path, threads)
    return values, ids, lse, nans


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("batch, vocab, k", [(8, 49152, 50), (9, 1003, 1), (1, 7, 7), (3, 300, 256)])
def test_the_kept_logits_are_torch_topks_and_the_lse_is_fp64s(path, batch, vocab, k):
    logits = torch.randn(batch, vocab, generator=torch.Generator().manual_seed(vocab)) * 4  # no ties (a.s.)
    for temperature in (1.0, 0.7):
        for threads in (1, 2):
            values, ids, lse, nans = _topk_lse(logits, k, temperature, path, threads)
            want_values, want_ids = logits.topk(k, dim=-1)
            assert nans == 0 and torch.equal(ids, want_ids) and torch.equal(values, want_values)
            want = torch.logsumexp(logits.double() / temperature, dim=-1)
            torch.testing.assert_close(lse.double(), want, atol=0, rtol=2e-7)


@pytest.mark.parametrize("path", PATHS)
def test_equal_logits_are_kept_in_id_order(path):
    row = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, -float("inf"), 2.0] + [0.0] * 10])
    values, ids, lse, _ = _topk_lse(row, 5, 1.0, path)
    assert ids.tolist() == [[1, 2, 4, 3, 6]] and values.tolist() == [[3.0, 3.0, 3.0, 2.0, 2.0]]
    zeros = torch.zeros(2, 20)
    assert _topk_lse(zeros, 4, 1.0, path)[1].tolist() == [[0, 1, 2, 3]] * 2
    torch.testing.assert_close(lse, torch.logsumexp(row, dim=-1), atol=0, rtol=2e-7)


@pytest.mark.parametrize("path", PATHS)
def test_a_nan_is_reported_and_infinite_rows_keep_torchs_lse(path):
    logits = torch.randn(3, 40)
    logits[1, 17] = float("nan")
    assert _topk_lse(logits, 5, 1.0, path)[3] == 1
    infinite = torch.full((2, 12), -float("inf"))
    infinite[1, 3] = float("inf")
    assert _topk_lse(infinite, 3, 1.0, path)[2].tolist() == torch.logsumexp(infinite, dim=-1).tolist()


def test_topk_lse_steps_aside_where_torch_should_run():
    logits = torch.randn(4, 300)
    assert native.topk_lse(logits, 50, 1.0) is not None or native.isa() != 2
    nan = logits.clone()
    nan[2, 0] = float("nan")
    for case in (native.topk_lse(nan, 5, 1.0), native.topk_lse(logits.bfloat16(), 5, 1.0),
                 native.topk_lse(logits, native.MAX_KEPT + 1, 1.0), native.topk_lse(logits[0], 5, 1.0)):
        assert case is None
    with native.disabled():
        assert native.topk_lse(logits, 5, 1.0) is None


def test_sample_tokens_draws_the_same_tokens_with_the_kernel():
    if native.isa() != 2:
        pytest.skip("the kernel samples only with AVX2")
    gen = torch.Generator().manual_seed(3)
    logits, seeds = torch.randn(16, 5000, generator=gen) * 3, torch.arange(16)
    for sampling in (SamplingConfig(temperature=0.5, top_k=50), SamplingConfig(temperature=1.0, top_k=20, top_p=0.9),
                     SamplingConfig(temperature=0.8, top_k=8, logprob_temperature=1.0)):
        for step in range(5):
            uniforms = row_uniforms(seeds, step)
            want = sample_tokens(logits, sampling, uniforms)
            got = sample_tokens(logits, sampling, uniforms, native.topk_lse)
            for a, b in zip(got, want):
                assert torch.equal(a, b) if a.dtype == torch.long else torch.allclose(a, b, atol=2e-6, rtol=0)


def test_the_fused_draw_samples_by_hand():
    if native.isa() != 2:
        pytest.skip("the kernel samples only with AVX2")
    # kept at T = 0.5: logits 2, 1.5, 1, -inf (ids 3, 0, 5, 1) -> softmax of 4, 3, 2 and 0
    row = torch.tensor([[1.5, -float("inf"), -float("inf"), 2.0, -float("inf"), 1.0]])
    e = torch.tensor([1.0, torch.e ** -1, torch.e ** -2, 0.0], dtype=torch.float64)
    probs = e / e.sum()  # 0.6652, 0.2447, 0.0900, 0
    lse = torch.logsumexp(row.double() / 0.5, dim=-1)
    for u, choice in ((0.0, 0), (0.66, 0), (0.67, 1), (0.9, 1), (0.92, 2), (0.999, 2)):
        tokens, logprobs, kept_probs, kept_ids = native.topk_sample(row, 4, 0.5, 0.5, torch.tensor([u]))
        assert kept_ids.tolist() == [[3, 0, 5, 1]] and tokens.tolist() == [[3, 0, 5][choice]]
        torch.testing.assert_close(kept_probs[0].double(), probs, atol=1e-7, rtol=0)
        assert kept_probs[0, 3] == 0.0  # a kept logit of -inf
        want = row[0, tokens[0]].double() / 0.5 - lse
        torch.testing.assert_close(logprobs.double(), want, atol=2e-6, rtol=0)
    # the log-probs at another temperature than the draw's
    _, logprobs, _, _ = native.topk_sample(row, 2, 0.5, 1.0, torch.tensor([0.1]))
    want = row[0, 3].double() - torch.logsumexp(row.double(), dim=-1)
    torch.testing.assert_close(logprobs.double(), want, atol=2e-6, rtol=0)


def test_the_fused_draw_steps_aside_where_torch_should_run():
    logits, uniforms = torch.randn(4, 300), torch.rand(4)
    assert native.topk_sample(logits, 50, 0.7, 0.7, uniforms) is not None or native.isa() != 2
    nan, infinite, empty = logits.clone(), logits.clone(), logits.clone()
    nan[2, 0], infinite[1, 7] = float("nan"), float("inf")
    empty[3] = -float("inf")
    for case in (nan, infinite, empty):
        assert native.topk_sample(case, 5, 1.0, 1.0, uniforms) is None
    assert native.topk_sample(logits, 5, 1.0, 1.0, uniforms.double()) is None
    assert native.topk_sample(logits, native.MAX_KEPT + 1, 1.0, 1.0, uniforms) is None
    with native.disabled():
        assert native.topk_sample(logits, 5, 1.0, 1.0, uniforms) is None
    calls = []
    count = lambda *a: calls.append(1)  # noqa: E731
    for sampling in (SamplingConfig(temperature=1.0, top_k=20, top_p=0.9), SamplingConfig(greedy=True, top_k=5)):
        sample_tokens(logits, sampling, uniforms, native.topk_lse, count)
    assert not calls  # top-p and greedy draw on torch's ops


def test_the_fused_draw_equals_torchs_draw():
    if native.isa() != 2:
        pytest.skip("the kernel samples only with AVX2")
    gen = torch.Generator().manual_seed(4)
    for trial in range(4):
        logits = torch.randn(16, 5000, generator=gen) * 3
        logits[:, :40] = -float("inf") if trial == 0 else logits[:, :40]
        for sampling in (SamplingConfig(temperature=0.5, top_k=50), SamplingConfig(temperature=1.3, top_k=256),
                         SamplingConfig(temperature=0.8, top_k=8, logprob_temperature=1.0)):
            uniforms = row_uniforms(torch.arange(16) + 100 * trial, trial)
            want = sample_tokens(logits, sampling, uniforms, native.topk_lse)
            got = sample_tokens(logits, sampling, uniforms, native.topk_lse, native.topk_sample)
            assert torch.equal(got[0], want[0]) and torch.equal(got[3], want[3])
            torch.testing.assert_close(got[1], want[1], atol=0, rtol=0)
            torch.testing.assert_close(got[2], want[2], atol=1e-6, rtol=0)


def test_a_rows_uniforms_for_every_step_at_once_are_its_uniforms_step_by_step():
    seeds = torch.tensor([0, 1, 2 ** 62 + 5, 2 ** 63 - 1, 12345678901234])
    table = row_uniforms(seeds[:, None], torch.arange(40))
    assert torch.equal(table, torch.stack([row_uniforms(seeds, step) for step in range(40)], dim=1))


@pytest.mark.parametrize("engine", ["eager", "static"])
def test_rollouts_with_the_kernel_equal_those_on_torchs_ops(engine, tokenizer, monkeypatch):
    calls = []
    for name in ("topk_lse", "topk_sample"):  # the draw without top-p runs topk_sample, which makes topk_lse's passes
        kernel = getattr(native, name)
        monkeypatch.setattr(native, name, lambda *a, kernel=kernel: calls.append(1) or kernel(*a))
    model = with_random_lora(build_tiny_model("llama", len(tokenizer)))
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11]], tokenizer.pad_token_id)
    kw = dict(gate=None, matcher=None, eos_token_ids=[2], pad_token_id=tokenizer.pad_token_id,
              row_seeds=torch.arange(2), mode="discrete", engine=engine)
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.7, top_k=50)
    fast = generate(model, ids, mask, sampling, **kw)
    assert len(calls) >= (12 if native.isa() == 2 else 0)  # one a step
    monkeypatch.setattr(options.OPTIONS, "native_sampling", False)
    calls.clear()
    assert_same_rollout(fast, generate(model, ids, mask, sampling, **kw), atol=2e-6)
    assert not calls


def test_the_latent_kernel_equals_the_gathered_latent():
    if native.isa() != 2:
        pytest.skip("the hybrid kernels run only with AVX2")
    gen = torch.Generator().manual_seed(5)
    embedding = torch.randn(300, 37, generator=gen)
    probs = torch.softmax(torch.randn(6, 9, generator=gen), dim=-1)
    ids = torch.randint(0, 300, (6, 9), generator=gen)
    with torch.no_grad():
        got = native.topk_latent(probs, ids, embedding)
        want = topk_latent_embeddings(probs, embedding[ids])
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
        for path in PATHS:  # plain C and AVX2 (H = 37: eight lanes and a tail)
            out = torch.full((6, 37), float("nan"))
            native.library().hrpo_topk_latent(probs.data_ptr(), ids.data_ptr(), 6, 9, embedding.data_ptr(), 37,
                                              out.data_ptr(), path, 2)
            torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)
        assert native.topk_latent(probs.double(), ids, embedding.double()) is None
    assert native.topk_latent(probs, ids, embedding) is None  # grad on: the step runs under no_grad only


def test_the_mix_kernel_equals_the_gates_mix():
    if native.isa() != 2:
        pytest.skip("the hybrid kernels run only with AVX2")
    gen = torch.Generator().manual_seed(6)
    gate = HybridGate(37)
    torch.nn.init.normal_(gate.Lambda, std=2.0, generator=gen)  # a wide range of decays, not just the initial one
    e, latents = torch.randn(4, 1, 37, generator=gen), torch.randn(4, 1, 37, generator=gen)
    logits = torch.randn(4, 1, 74, generator=gen) * 3
    with torch.no_grad():
        mixed, a = native.gated_mix(e, latents, logits, gate.Lambda, gate.c)
        want_mixed, want_a = gated_mix(e, latents, *logits.chunk(2, dim=-1), gate.Lambda, gate.c, torch.float32)
    torch.testing.assert_close(mixed, want_mixed, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(a, want_a, atol=1e-6, rtol=1e-5)


def test_the_gate_inputs_kernel_equals_the_gates_mix_inputs():
    if native.isa() != 2:
        pytest.skip("the hybrid kernels run only with AVX2")
    gen = torch.Generator().manual_seed(7)
    gate = HybridGate(37)
    torch.nn.init.normal_(gate.Lambda, std=2.0, generator=gen)
    torch.nn.init.normal_(gate.gate_r.weight, std=0.5, generator=gen)  # pre-activations far from 0
    torch.nn.init.normal_(gate.gate_i.bias, std=1.0, generator=gen)
    e, latents = torch.randn(5, 1, 37, generator=gen), torch.randn(5, 1, 37, generator=gen)
    thinking = torch.tensor([[True], [False], [True], [True], [False]])
    with torch.no_grad():
        stacked = concatenated_gate(gate)
        got = native.gate_inputs(e, latents, thinking, stacked.weight, stacked.bias, gate.Lambda, gate.c)
        want = mix_inputs(gate, e, latents, thinking)
        via_gate = stacked.mix_inputs(e, latents, thinking)  # the engines' call: the kernel where it applies
    assert torch.equal(via_gate[0], got[0]) and torch.equal(via_gate[1], got[1])
    torch.testing.assert_close(got[0], want[0], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-6, rtol=1e-5)
    assert torch.equal(got[0][~thinking[:, 0]], e[~thinking[:, 0]]) and got[1][~thinking].tolist() == [1.0, 1.0]
    assert got[1][thinking].lt(1.0).all()  # the mix took latent information where thinking
    with torch.no_grad():
        assert native.gate_inputs(e.double(), latents.double(), thinking, stacked.weight.double(),
                                  stacked.bias.double(), gate.Lambda.double(), gate.c) is None
        assert native.gate_inputs(e, latents, thinking.long(), stacked.weight, stacked.bias, gate.Lambda,
                                  gate.c) is None


def test_the_static_hybrid_step_runs_the_kernels_and_equals_the_aten_step(tokenizer, monkeypatch):
    calls = []
    for name in ("topk_latent", "gate_inputs"):
        kernel = getattr(native, name)
        def counted(*args, kernel=kernel, name=name):
            out = kernel(*args)
            calls.extend([name] if out is not None else [])  # the calls that ran the kernel
            return out
        monkeypatch.setattr(native, name, counted)
    model = with_random_lora(build_tiny_model("llama", len(tokenizer)))
    ids, mask = left_pad([[5, 6, 7, 8, 9], [10, 11]], tokenizer.pad_token_id)
    gate = HybridGate(model.config.hidden_size)
    torch.nn.init.normal_(gate.Lambda, std=2.0)  # far from discrete, so that the mix matters
    kw = dict(gate=gate, matcher=marker_matcher(tokenizer, "####"), eos_token_ids=[2],
              pad_token_id=tokenizer.pad_token_id, row_seeds=torch.arange(2), mode="hybrid", engine="static")
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.7, top_k=50)
    fast = generate(model, ids, mask, sampling, **kw)
    assert fast.thinking_mask.any()
    assert native.isa() != 2 or {"topk_latent", "gate_inputs"} <= set(calls)
    monkeypatch.setattr(options.OPTIONS, "native_hybrid", False)
    calls.clear()
    assert_same_rollout(fast, generate(model, ids, mask, sampling, **kw), atol=1e-5)
    assert not calls
