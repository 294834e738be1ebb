"""The static-cache engine (the CPU variant of the CUDA-graph engine) against the eager engine, and row-seeded
sampling."""

import copy
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_same_rollout, build_tiny_model, tiny_config, with_random_lora
from hrpo import HybridGate, SamplingConfig, generate
from hrpo.engines.static import generate_fast
from hrpo.engines.weights import fuse, linear_parts, project, unsupported_reason
from hrpo.models import add_lora
from hrpo.rollout import resolve_engine
from hrpo.sampling import marker_matcher, row_uniforms, sample_tokens
from hrpo.text import left_pad

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


def _qwen3(vocab):
    from transformers import AutoModelForCausalLM, Qwen3Config

    common = tiny_config("qwen2", vocab).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings")
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(Qwen3Config(**{k: common[k] for k in keep}, head_dim=8),
                                             dtype=torch.float32)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    return model


@pytest.fixture(scope="module", params=["llama", "qwen2", "qwen3"])
def lora_model(request, tokenizer):
    """A tiny model of each supported family with a LoRA adapter whose deltas are non-zero."""
    model = _qwen3(len(tokenizer)) if request.param == "qwen3" else build_tiny_model(request.param, len(tokenizer))
    return with_random_lora(model)


def _gate():
    gate = HybridGate(32, r_min=0.5, r_max=0.6)  # a strongly mixing gate, so latents matter
    gate.reset_parameters(torch.Generator().manual_seed(1))
    return gate


def _run(model, tokenizer, mode, sampling, eos, engine, **kw):
    ids, mask = left_pad([p for p in PROMPTS for _ in range(2)], tokenizer.pad_token_id)
    run = generate if engine == "eager" else generate_fast
    extra = {"engine": "eager"} if engine == "eager" else {"engine": "static", **kw}
    return run(model, ids, mask, sampling, gate=_gate() if mode == "hybrid" else None,
               matcher=marker_matcher(tokenizer, "####"), eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id,
               row_seeds=torch.arange(6) * 7 + 3, group_size=2, mode=mode, **extra)


@pytest.mark.parametrize("mode", ["hybrid", "discrete", "latent", "hidden"])
def test_static_engine_equals_eager(lora_model, tokenizer, mode):
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=50)
    eager = _run(lora_model, tokenizer, mode, sampling, [2], "eager")
    assert eager.thinking_mask.any() or mode == "discrete"
    assert_same_rollout(eager, _run(lora_model, tokenizer, mode, sampling, [2], "static"))
    # an "EOS" the model actually samples: rows end at different steps and the rollout is trimmed like eager's
    eos = [int(eager.completion_ids[0, 3]), int(eager.completion_ids[2, 1])]
    eager_eos = _run(lora_model, tokenizer, mode, sampling, eos, "eager")
    assert not eager_eos.completion_mask.all()
    # the CUDA graph's loop checks "all finished" only every few steps, and acts on an earlier check
    for sync_every, check_lag in ((1, 0), (4, 0), (2, 1), (1, 3)):
        assert_same_rollout(eager_eos, _run(lora_model, tokenizer, mode, sampling, eos, "static", sync_every=sync_every,
                                     check_lag=check_lag))


@pytest.mark.parametrize("sampling", [SamplingConfig(max_new_tokens=8, temperature=0.7, top_k=0, top_p=0.9),
                                      SamplingConfig(max_new_tokens=8, greedy=True)], ids=["dense-top-p", "greedy"])
def test_static_engine_equals_eager_dense_latents_and_greedy(lora_model, tokenizer, sampling):
    assert_same_rollout(_run(lora_model, tokenizer, "hybrid", sampling, [2], "eager"),
                 _run(lora_model, tokenizer, "hybrid", sampling, [2], "static"))


def test_fused_projections_match_the_lora_modules(lora_model):
    layer = lora_model.get_base_model().get_decoder().layers[0]
    attn = layer.self_attn
    x = torch.randn(3, attn.q_proj.in_features)
    w = fuse([linear_parts(m) for m in (attn.q_proj, attn.k_proj, attn.v_proj)], "qkv")
    expected = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
    torch.testing.assert_close(project(x, w, "qkv"), expected, atol=1e-5, rtol=0)
    with lora_model.disable_adapter():  # the reference model: base weights, no LoRA path
        parts = linear_parts(attn.q_proj)
    assert not parts.lora_a and torch.equal(parts.weight, attn.q_proj.base_layer.weight)


def test_merged_lora_projections_match_the_lora_modules(lora_model):
    """On a CPU in fp32 the static engine merges LoRA into the fused weights: one GEMM per projection, equal to
    peft's unmerged arithmetic up to fp32 rounding; bf16 weights are refused (the update would round away)."""
    from hrpo.engines.weights import merged

    mlp = lora_model.get_base_model().get_decoder().layers[1].mlp
    x = torch.randn(4, mlp.gate_proj.in_features)
    parts = [linear_parts(m) for m in (mlp.gate_proj, mlp.up_proj)]
    assert all(p.lora_a for p in parts)
    w = fuse([merged(p) for p in parts], "gate_up")
    assert w["gate_up_lora_b"] is None and w["gate_up"].shape[0] == 2 * mlp.gate_proj.out_features
    expected = torch.cat([mlp.gate_proj(x), mlp.up_proj(x)], dim=-1)
    update = expected - torch.cat([mlp.gate_proj.base_layer(x), mlp.up_proj.base_layer(x)], dim=-1)
    assert update.abs().max() > 1e-3  # the adapters change the output: the merge has something to keep
    torch.testing.assert_close(project(x, w, "gate_up"), expected, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="float32"):
        bf16 = parts[0]
        merged(type(bf16)(bf16.weight.bfloat16(), None, [a.bfloat16() for a in bf16.lora_a],
                          [b.bfloat16() for b in bf16.lora_b], bf16.scales))


@pytest.mark.parametrize("merge", [True, False], ids=["merged", "unmerged"])
def test_static_engine_equals_eager_with_lora_merged_or_not(lora_model, tokenizer, monkeypatch, merge):
    from hrpo.engines import static
    from hrpo.engines.options import OPTIONS

    monkeypatch.setattr(OPTIONS, "merge_lora_on_cpu", merge)
    assert static.merge_lora_here(lora_model) is merge
    sampling = SamplingConfig(max_new_tokens=10, temperature=1.0, top_k=50)
    assert_same_rollout(_run(lora_model, tokenizer, "hybrid", sampling, [2], "eager"),
                        _run(lora_model, tokenizer, "hybrid", sampling, [2], "static"))


@pytest.mark.parametrize("adapter_dtype", [torch.bfloat16, torch.float32])
def test_lora_path_survives_bf16(tokenizer, adapter_dtype):
    """A LoRA update far below bf16's rounding step of the base weights still changes the projection, as much
    as in peft's own arithmetic: it is computed apart (A in the base GEMM, B added in fp32 before one rounding),
    not merged into a bf16 copy of W, where most of it would round away."""
    model = add_lora(build_tiny_model("llama", len(tokenizer)), 4, 8).to(torch.bfloat16)
    q_proj = model.get_base_model().get_decoder().layers[0].self_attn.q_proj
    with torch.no_grad():
        for b in q_proj.lora_B.values():
            b.weight.normal_(0.0, 1e-4, generator=torch.Generator().manual_seed(0))
    for module in (q_proj.lora_A, q_proj.lora_B):
        module.to(adapter_dtype)
    x = torch.randn(256, q_proj.in_features, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    parts = linear_parts(q_proj)
    (lora_a,), (lora_b,), (scale,) = parts.lora_a, parts.lora_b, parts.scales
    lora_b = lora_b * scale
    exact_base = F.linear(x.double(), parts.weight.double())
    exact_update = x.double() @ lora_a.double().T @ lora_b.double().T  # fp64 reference
    base = q_proj.base_layer(x).double()

    def update_error(out):  # how far the update an output carries is from the exact one
        return ((out.double() - base) - exact_update).abs().mean()

    peft = q_proj(x)
    ours = project(x, fuse([parts], "q"), "q")
    merged = F.linear(x, (parts.weight.float() + lora_b.float() @ lora_a.float()).to(torch.bfloat16))
    assert exact_update.abs().max() > 0 and update_error(base) > 1.5 * update_error(peft)
    assert update_error(ours) <= 1.05 * update_error(peft)
    assert (ours != peft).float().mean() < 0.02  # the rest differ by one bf16 step (rounding once, in fp32)
    assert update_error(merged) > 1.5 * update_error(ours)  # what merging would do
    assert torch.allclose(ours.double(), exact_base + exact_update, atol=0.05)


def test_engine_resolution(tiny_model_dirs, tokenizer):
    from hrpo.models import load_model

    gemma = load_model(str(tiny_model_dirs["gemma3"]), dtype="float32").model
    llama = load_model(str(tiny_model_dirs["llama"]), dtype="float32").model
    assert "gemma3" in unsupported_reason(gemma)
    assert unsupported_reason(llama) is None
    assert resolve_engine("auto", gemma, "hybrid") == "eager"
    assert resolve_engine("auto", llama, "hybrid") == "static"  # on CPU
    assert resolve_engine("static", llama, "hybrid") == "static"
    with pytest.raises(ValueError, match="gemma3"):
        resolve_engine("static", gemma, "hybrid")
    with pytest.raises(ValueError, match="needs a CUDA device"):
        resolve_engine("graph", llama, "hybrid")


def _peft(model, **lora):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, **lora))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:  # as after training (peft initialises B to zero)
                p.normal_(0.0, 0.3, generator=torch.Generator().manual_seed(len(name)))
    return model.eval()


def _mistral(vocab, sliding_window):
    from transformers import AutoModelForCausalLM, MistralConfig

    common = tiny_config("llama", vocab).to_dict()
    keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings")
    torch.manual_seed(0)
    config = MistralConfig(**{k: common[k] for k in keep}, sliding_window=sliding_window)
    return AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()


@pytest.mark.parametrize("case, reason", [
    ("mistral window", "sliding-window"),
    ("dora", "DoRA"),
    ("kasa", "KasaLinearVariant"),
    ("lm_head lora", "output embeddings"),
    ("embed lora", "input or output embeddings"),
])
def test_the_fast_engine_refuses_what_it_would_compute_differently(tokenizer, case, reason):
    """Models and adapters whose outputs the fused layers would get wrong go to the eager engine under auto."""
    vocab = len(tokenizer)
    if case == "kasa":
        from peft import LoraConfig

        if "kasa_config" not in LoraConfig.__dataclass_fields__:
            pytest.skip("this peft version has no KaSA")
    model = {
        "mistral window": lambda: _mistral(vocab, 4),
        "dora": lambda: _peft(build_tiny_model("llama", vocab), target_modules=["q_proj"], use_dora=True),
        "kasa": lambda: _peft(build_tiny_model("llama", vocab), target_modules=["q_proj"], kasa_config={}),
        "lm_head lora": lambda: _peft(build_tiny_model("llama", vocab), target_modules=["q_proj", "lm_head"]),
        "embed lora": lambda: _peft(build_tiny_model("llama", vocab), target_modules=["q_proj", "embed_tokens"]),
    }[case]()
    assert reason in (unsupported_reason(model) or "")
    assert resolve_engine("auto", model, "hybrid") == "eager"
    if case == "mistral window":
        assert unsupported_reason(_mistral(vocab, None)) is None


def test_static_engine_applies_a_lora_bias(tokenizer):
    """LoraConfig(lora_bias=True): B's bias, times the scaling, is part of the adapter's update."""
    model = _peft(build_tiny_model("llama", len(tokenizer)), target_modules=["q_proj", "v_proj", "down_proj"],
                  lora_bias=True)
    assert unsupported_reason(model) is None
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=20)
    assert_same_rollout(_run(model, tokenizer, "hybrid", sampling, [2], "eager"),
                 _run(model, tokenizer, "hybrid", sampling, [2], "static"))


def test_a_rollouts_rope_filled_once_equals_the_rotary_module_step_by_step(tokenizer):
    """fill_rope's table at step t is what the model's rotary module gives for the positions after the prefill
    plus t; a RoPE whose frequencies follow the positions asked for is computed step by step instead."""
    from hrpo.engines.layers import model_modules
    from hrpo.engines.state import allocate_state, fill_rope
    from hrpo.engines.static import rope_is_static
    from hrpo.engines.weights import decode_weights

    model = build_tiny_model("llama", len(tokenizer))
    weights, modules = decode_weights(model), model_modules(model)
    state = allocate_state(weights, 3, 16, 7, model.config.hidden_size, len(tokenizer), False, torch.float32,
                           torch.device("cpu"), rope_table=True)
    state.positions.copy_(torch.tensor([[4], [9], [1]]))
    fill_rope(state, modules.rotary)
    for t in range(7):
        cos, sin = modules.rotary(state.rope_cos[:, :1], state.positions + t)
        assert torch.equal(state.rope_cos[:, t:t + 1], cos) and torch.equal(state.rope_sin[:, t:t + 1], sin)
    assert rope_is_static(modules.rotary)
    modules.rotary.rope_type = "dynamic"
    assert not rope_is_static(modules.rotary)


def test_row_uniforms_are_a_pure_function_of_seed_and_step():
    seeds = torch.arange(20000, dtype=torch.long) * 7919 + (1 << 40)
    u = row_uniforms(seeds, 3)
    assert torch.equal(u, row_uniforms(seeds, 3))
    assert torch.equal(u[5:9], row_uniforms(seeds[5:9], torch.tensor(3)))
    assert not torch.equal(u, row_uniforms(seeds, 4))
    assert float(u.min()) >= 0.0 and float(u.max()) < 1.0
    counts = torch.histc(u, bins=10, min=0.0, max=1.0)
    chi2 = float(((counts - 2000.0) ** 2 / 2000.0).sum())
    assert chi2 < 27.9  # 9 degrees of freedom, p = 0.001
    assert abs(float(torch.corrcoef(torch.stack([u, row_uniforms(seeds, 4)]))[0, 1])) < 0.03


def test_inverse_cdf_sampling_follows_the_kept_distribution():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(40000, 4)
    seeds = torch.arange(40000, dtype=torch.long)
    tokens, logprobs, kept, _ = sample_tokens(logits, SamplingConfig(temperature=1.0, top_k=3), row_uniforms(seeds, 0))
    freq = torch.bincount(tokens, minlength=4).float() / 40000
    torch.testing.assert_close(freq, torch.tensor([0.5, 0.3, 0.15, 0.0]) / 0.95, atol=0.01, rtol=0)
    torch.testing.assert_close(logprobs, probs.log()[tokens], atol=1e-6, rtol=0)  # under the full distribution


@pytest.mark.parametrize("engine", ["eager", "static"])
def test_a_row_samples_the_same_tokens_in_any_batch(engine, tiny_model_dirs, tokenizer):
    from hrpo.models import load_model

    model = load_model(str(tiny_model_dirs["llama"]), dtype="float32").model
    ids, mask = left_pad(PROMPTS, tokenizer.pad_token_id)
    seeds = torch.tensor([11, 22, 33])
    kw = dict(gate=None, matcher=None, eos_token_ids=[2], pad_token_id=tokenizer.pad_token_id, engine=engine)
    full = generate(model, ids, mask, SamplingConfig(max_new_tokens=8, temperature=1.0), row_seeds=seeds, **kw)
    alone = generate(model, ids[1:2, -2:], mask[1:2, -2:], SamplingConfig(max_new_tokens=8, temperature=1.0),
                     row_seeds=seeds[1:2], **kw)
    n = int(alone.completion_mask.sum())
    assert torch.equal(full.completion_ids[1, :n], alone.completion_ids[0, :n])


def _weights_equal(a, b):
    for old, new in zip(a.tensors, b.tensors):
        assert old.keys() == new.keys()
        for key, value in new.items():
            assert (value is None) == (old[key] is None), key
            if value is not None:
                assert torch.equal(old[key], value), key
    assert torch.equal(a.final_norm, b.final_norm) and torch.equal(a.lm_head, b.lm_head)


def test_decode_weights_into_rewrites_the_captured_tensors_in_place(lora_model):
    """What the CUDA-graph engine does before each rollout: the tensors its graphs read take this call's weights
    (a trained adapter, and any base weight or norm changed since), at unchanged addresses."""
    from hrpo.engines.weights import decode_weights, weights_signature

    captured = decode_weights(lora_model)
    pointers = [{k: v.data_ptr() for k, v in layer.items() if v is not None} for layer in captured.tensors]
    named = dict(lora_model.named_parameters())
    changed = [next(p for n, p in named.items() if "lora_B" in n),
               next(p for n, p in named.items() if "gate_proj.base_layer" in n),
               next(p for n, p in named.items() if "post_attention_layernorm" in n)]
    saved = [p.detach().clone() for p in changed]
    signature = weights_signature(lora_model)
    with torch.no_grad():
        for p in changed:
            p.add_(0.5)  # an optimizer step
    try:
        assert weights_signature(lora_model) == signature
        fresh = decode_weights(lora_model)
        assert not all(torch.equal(a["qkv_lora_b"], b["qkv_lora_b"]) for a, b in zip(captured.tensors, fresh.tensors))
        assert not torch.equal(captured.tensors[0]["gate_up"], fresh.tensors[0]["gate_up"])
        assert decode_weights(lora_model, into=captured) is captured
        assert [{k: v.data_ptr() for k, v in layer.items() if v is not None} for layer in captured.tensors] == pointers
        _weights_equal(captured, fresh)
    finally:
        with torch.no_grad():
            for p, value in zip(changed, saved):
                p.copy_(value)
    with lora_model.disable_adapter():  # no adapter: a different signature, so the graph is captured again
        assert weights_signature(lora_model) != signature


def test_a_lone_plain_projection_is_read_from_the_parameter(tokenizer):
    """Without an adapter, o and down (no partner to fuse with) are the parameters themselves: no copy, and an
    in-place update is what the step reads; q/k/v and gate/up are fused copies, rewritten by ``into``."""
    from hrpo.engines.weights import decode_weights

    model = build_tiny_model("qwen2", len(tokenizer))
    layer = model.get_decoder().layers[0]
    weights = decode_weights(model)
    w = weights.tensors[0]
    assert w["o"].data_ptr() == layer.self_attn.o_proj.weight.data_ptr()
    assert w["down"].data_ptr() == layer.mlp.down_proj.weight.data_ptr()
    assert w["qkv_bias"] is not None and w["qkv_lora_b"] is None  # qwen2: q/k/v biases, fused too
    x = torch.randn(2, 3, layer.self_attn.q_proj.in_features)
    with torch.no_grad():
        layer.self_attn.k_proj.bias.add_(1.0)
        layer.mlp.up_proj.weight.mul_(2.0)
        decode_weights(model, into=weights)
        expected = torch.cat([layer.self_attn.q_proj(x), layer.self_attn.k_proj(x), layer.self_attn.v_proj(x)], -1)
        torch.testing.assert_close(project(x, w, "qkv"), expected)
        torch.testing.assert_close(project(x, w, "gate_up"),
                                   torch.cat([layer.mlp.gate_proj(x), layer.mlp.up_proj(x)], -1))


def _prefilled(model, prompts, pad_id, layer_fn, group=1):
    from hrpo.engines.layers import model_modules
    from hrpo.engines.state import allocate_state, prefill
    from hrpo.engines.weights import decode_weights

    ids, mask = left_pad([p for p in prompts for _ in range(group)], pad_id)
    weights, modules = decode_weights(model), model_modules(model)
    state = allocate_state(weights, ids.shape[0], ids.shape[1] + 4, 4, modules.embed.weight.shape[1],
                           weights.lm_head.shape[0], True, torch.float32, ids.device)
    prefill(state, ids, mask, group, weights, modules, layer_fn)
    return state


def test_compiled_prefill_equals_the_eager_one_for_any_prompt_shape(lora_model, tokenizer):
    """The prefill layer the graph engine builds (compiled with dynamic shapes, warmed up on 2 prompts of 8
    tokens) serves other prompt counts and lengths without recompiling (a recompilation raises here) and fills
    the same cache, logits, hidden states and positions as the eager layer."""
    import torch._dynamo

    from hrpo.engines.graph import _prefill_layer_for
    from hrpo.engines.layers import decoder_layer, model_modules
    from hrpo.engines.weights import decode_weights

    torch._dynamo.reset()
    with torch.no_grad():
        compiled = _prefill_layer_for(decode_weights(lora_model), model_modules(lora_model), torch.float32,
                                      torch.device("cpu"))
    assert compiled is not decoder_layer
    shapes = [(PROMPTS, 2), ([[3, 4, 5, 6, 7, 8, 9, 10, 11], [12, 13], [14, 15, 16, 17], [18, 19, 20]], 1)]
    for prompts, group in shapes:
        with torch._dynamo.config.patch(error_on_recompile=True), torch.no_grad():
            fast = _prefilled(lora_model, prompts, tokenizer.pad_token_id, compiled, group)
        with torch.no_grad():
            eager = _prefilled(lora_model, prompts, tokenizer.pad_token_id, decoder_layer, group)
        for a, b in zip(fast.kv, eager.kv):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(fast.logits, eager.logits, atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(fast.hidden, eager.hidden, atol=1e-5, rtol=1e-5)
        assert torch.equal(fast.positions, eager.positions) and torch.equal(fast.valid, eager.valid)


def test_concatenated_gate_mixes_as_the_gate_and_follows_its_updates():
    """The decode step's gate (W_r and W_i as one GEMM) gives the gate's mix and a; after a training step,
    rewriting it in place (what the graph engine does each call) brings it back to the gate's output at the
    same addresses, and a stale copy would differ."""
    from hrpo.engines.options import OPTIONS
    from hrpo.engines.weights import ConcatenatedGate, concatenated_gate, step_gate

    gate = _gate()
    e, h = torch.randn(4, 1, 32), torch.randn(4, 1, 32)
    step = concatenated_gate(gate)
    for got, expected in zip(step(e, h), gate(e, h)):
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    pointers = (step.weight.data_ptr(), step.bias.data_ptr())
    with torch.no_grad():
        gate.gate_i.weight.add_(0.3)
        gate.gate_r.bias.add_(1.0)
        gate.Lambda.add_(0.5)
    stale, expected = step(e, h), gate(e, h)
    assert not torch.allclose(stale[0], expected[0], atol=1e-3)
    assert concatenated_gate(gate, into=step) is step
    assert (step.weight.data_ptr(), step.bias.data_ptr()) == pointers
    for got, want in zip(step(e, h), expected):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=0)
    assert isinstance(step_gate(gate), ConcatenatedGate) and step_gate(None) is None
    OPTIONS.concatenate_gate = False
    try:
        assert step_gate(gate) is gate
    finally:
        OPTIONS.concatenate_gate = True


def test_the_compiled_sampler_takes_the_concatenated_gate_in_one_graph(tokenizer):
    """The graph engine compiles sample + latent + gate as one function; the concatenated gate must not break
    that graph (fullgraph=True raises on a break)."""
    from hrpo.engines.layers import model_modules
    from hrpo.engines.state import StepSpec, allocate_state, next_inputs
    from hrpo.engines.weights import concatenated_gate, decode_weights

    model = build_tiny_model("llama", len(tokenizer)).eval()
    weights, modules = decode_weights(model), model_modules(model)
    gate = _gate()
    state = allocate_state(weights, 3, 8, 4, 32, weights.lm_head.shape[0], True, torch.float32, torch.device("cpu"))
    state.logits.normal_(generator=torch.Generator().manual_seed(0))
    state.row_seeds.copy_(torch.arange(3))
    spec = StepSpec(sampling=SamplingConfig(max_new_tokens=4, temperature=0.7, top_k=5), mode="hybrid",
                    gate=concatenated_gate(gate), matcher=marker_matcher(tokenizer, "####"),
                    eos=torch.tensor([2]), pad_token_id=tokenizer.pad_token_id, max_new=4)
    eager_state = copy.deepcopy(state)  # a step writes its state: each run starts from the same one
    with torch.no_grad():
        eager = next_inputs(eager_state, replace(spec, gate=gate), modules.embed)
        compiled = torch.compile(next_inputs, fullgraph=True)(state, spec, modules.embed)
    assert state.thinking.any()
    torch.testing.assert_close(compiled, eager, atol=1e-5, rtol=0)
    torch.testing.assert_close(state.gate_mean, eager_state.gate_mean, atol=1e-6, rtol=0)


@pytest.mark.parametrize("sync_every, check_lag, steps_run", [(1, 0, 6), (4, 0, 8), (4, 1, 12), (2, 2, 10)])
def test_the_decode_loop_stops_after_the_lagged_check_that_saw_every_row_finished(sync_every, check_lag, steps_run):
    """Every row has finished after step 5: the loop checks after every ``sync_every`` steps and stops on the
    check made ``check_lag`` checks before (so a GPU has the steps after it queued while the host waits)."""
    from types import SimpleNamespace

    from hrpo.engines.state import run_steps

    state = SimpleNamespace(finished=torch.zeros(3, dtype=torch.bool))
    ran = []

    def step(t):
        ran.append(t)
        state.finished.fill_(t >= 5)

    run_steps(state, SimpleNamespace(max_new=40), None, step, sync_every, check_lag)
    assert ran == list(range(steps_run))


def test_the_compiled_step_equals_the_eager_one(lora_model, tokenizer):
    """What the graph engine captures: the layer halves and the step's start (sample, gate, RoPE, slot) and end
    (final norm, lm_head, counters) compiled, each without a graph break; steps from one prefill give the eager
    step's tokens, latents, logits and cache."""
    import torch._dynamo

    from hrpo.engines.graph import step_functions
    from hrpo.engines.layers import decoder_layer, model_modules
    from hrpo.engines.state import StepSpec, allocate_state, decode_step, prefill, reset_outputs
    from hrpo.engines.weights import decode_weights, step_gate

    ids, mask = left_pad(PROMPTS, tokenizer.pad_token_id)
    weights, modules = decode_weights(lora_model), model_modules(lora_model)
    state = allocate_state(weights, 3, ids.shape[1] + 6, 6, modules.embed.weight.shape[1], weights.lm_head.shape[0],
                           True, torch.float32, ids.device)
    spec = StepSpec(sampling=SamplingConfig(max_new_tokens=6, temperature=0.7, top_k=8), mode="hybrid",
                    gate=step_gate(_gate()), matcher=marker_matcher(tokenizer, "####"), eos=torch.tensor([2]),
                    pad_token_id=tokenizer.pad_token_id, max_new=6)
    with torch.no_grad():
        prefill(state, ids, mask, 1, weights, modules)
        reset_outputs(state, torch.arange(3) * 5 + 1)
        eager_state = copy.deepcopy(state)
        layer_fn, start, finish = step_functions(True, True)
        with torch._dynamo.error_on_graph_break(True):
            for _ in range(5):
                decode_step(state, spec, weights, modules, layer_fn, start, finish)
                decode_step(eager_state, spec, weights, modules, decoder_layer)
    assert int(state.step) == 5 and state.thinking.any()
    for name in ("tokens", "real", "thinking", "valid", "positions", "finished"):
        assert torch.equal(getattr(state, name), getattr(eager_state, name)), name
    for name in ("logits", "hidden", "latents", "logprobs", "gate_mean"):
        torch.testing.assert_close(getattr(state, name), getattr(eager_state, name), atol=1e-4, rtol=0)
    for compiled, eager in zip(state.kv, eager_state.kv):
        torch.testing.assert_close(compiled, eager, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kernel", ["onednn", "aten"])
def test_the_cpu_linear_equals_f_linear(kernel, monkeypatch):
    from hrpo.engines import options
    from hrpo.engines.weights import linear

    monkeypatch.setattr(options.OPTIONS, "cpu_linear", kernel)
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(8, 1, 576, generator=gen), torch.randn(960, 576, generator=gen)
    b = torch.randn(960, generator=gen)
    for args in ((x, w, b), (x, w[:500], None), (x[:3, 0], w, b)):  # biases, a weight slice, 2-d inputs
        out = linear(*args)
        if kernel == "aten":
            assert torch.equal(out, F.linear(*args))
        else:
            torch.testing.assert_close(out, F.linear(*args), atol=2e-4, rtol=1e-5)
    assert torch.equal(linear(x.bfloat16(), w.bfloat16()), F.linear(x.bfloat16(), w.bfloat16()))  # fp32 only
