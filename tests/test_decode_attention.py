"""The split-KV decode attention kernel (Triton; on CPU in Triton's interpreter) against fp64 attention, and the
static engine on it against the eager engine."""

import math

import pytest
import torch

from hrpo.engines import decode_attention as da

pytestmark = pytest.mark.skipif(not da.available(), reason="triton is not installed")


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("dim", [16, 64])
def test_decode_attention_matches_fp64_attention(dtype, tolerance, dim):
    g = torch.Generator().manual_seed(dim)
    batch, kv_heads, group, cache_len, n_keys = 3, 2, 3, 200, 150
    cache = torch.randn(2, batch, kv_heads, cache_len, dim, generator=g).to(dtype)
    keys, values = cache[0, :, :, :n_keys], cache[1, :, :, :n_keys]  # strided views, as the engine passes
    q = torch.randn(batch, kv_heads * group, 1, dim, generator=g).to(dtype)
    valid = torch.zeros(batch, cache_len, dtype=torch.bool)
    valid[0, :140] = True  # trailing slots not written yet
    valid[1, 70:141] = True  # left padding longer than a whole chunk of keys
    valid[2, 5:6] = True  # a single key
    valid = valid[:, :n_keys]
    splits, chunk = da.split_plan(batch * kv_heads, n_keys)
    assert splits == 3 and chunk == da.BLOCK_N  # several chunks to merge, one of them (row 1) all masked
    scale = 1 / math.sqrt(dim)
    out = da.decode_attention(q, keys, values, valid, scale)
    assert out.shape == q.shape and out.dtype == dtype
    expected = da.reference_attention(q, keys, values, valid, scale)
    error = (out.double() - expected).abs().max() / expected.abs().max()
    assert error < tolerance
    torch.testing.assert_close(out[2].double(), values[2, :, 5].double().repeat_interleave(group, 0)[:, None],
                               atol=tolerance, rtol=0)  # one valid key: its value, exactly up to rounding


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("slot", [5, 130])  # in the first and in the last of three chunks
def test_decode_attention_writes_the_new_key_and_value_and_attends_them(dtype, slot):
    """With ``new``/``slot`` the kernel stores this step's key and value at the slot (and nowhere else) and the
    output is attention over the cache holding them, though the slot held something else when it started."""
    g = torch.Generator().manual_seed(slot)
    batch, kv_heads, group, cache_len, n_keys, dim = 3, 2, 3, 200, 150, 16
    cache = torch.randn(2, batch, kv_heads, cache_len, dim, generator=g).to(dtype)
    new = torch.randn(2, batch, kv_heads, 1, dim, generator=g).to(dtype)
    q = torch.randn(batch, kv_heads * group, 1, dim, generator=g).to(dtype)
    valid = torch.zeros(batch, n_keys, dtype=torch.bool)
    valid[:, :slot + 1] = True
    valid[1, :3] = False  # left padding
    expected_cache = cache.clone()
    expected_cache[:, :, :, slot] = new[:, :, :, 0]
    scale = 1 / math.sqrt(dim)
    out = da.decode_attention(q, cache[0, :, :, :n_keys], cache[1, :, :, :n_keys], valid, scale, new=new,
                              slot=torch.tensor([slot]))
    assert torch.equal(cache, expected_cache)
    expected = da.reference_attention(q, expected_cache[0, :, :, :n_keys], expected_cache[1, :, :, :n_keys], valid,
                                      scale)
    error = (out.double() - expected).abs().max() / expected.abs().max()
    assert error < (1e-5 if dtype == torch.float32 else 2e-2)
    stale = da.reference_attention(q, cache[0, :, :, :n_keys].clone().index_fill_(2, torch.tensor([slot]), 0),
                                   cache[1, :, :, :n_keys], valid, scale)
    assert (stale - expected).abs().max() > 10 * (out.double() - expected).abs().max()  # the new key mattered
    with pytest.raises(ValueError, match="new must be"):
        da.decode_attention(q, cache[0], cache[1], valid, scale, new=new[:, :, :1], slot=torch.tensor([slot]))


def test_split_plan_covers_every_key_in_whole_blocks():
    for rows, n_keys in [(128, 512), (128, 64), (6, 1000), (4096, 3000), (1, 1)]:
        splits, chunk = da.split_plan(rows, n_keys)
        assert chunk % da.BLOCK_N == 0 and (splits - 1) * chunk < n_keys <= splits * chunk
        assert rows * splits <= max(rows, da.TARGET_PROGRAMS) or splits == 1


def test_static_engine_on_the_kernel_equals_eager(tokenizer, monkeypatch):
    from transformers import AutoModelForCausalLM, LlamaConfig

    from hrpo.engines import layers, options
    from hrpo import HybridGate, SamplingConfig, generate
    from hrpo.sampling import marker_matcher
    from hrpo.text import left_pad

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=512,
                         tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    gate = HybridGate(32, r_min=0.5, r_max=0.6)
    ids, mask = left_pad([p for p in [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]] for _ in range(2)],
                         tokenizer.pad_token_id)
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0, top_k=50)

    def run(engine, eos):
        return generate(model, ids, mask, sampling, gate=gate, matcher=marker_matcher(tokenizer, "####"),
                        eos_token_ids=eos, pad_token_id=tokenizer.pad_token_id, row_seeds=torch.arange(6) * 7 + 3,
                        group_size=2, mode="hybrid", engine=engine)

    eager = run("eager", [2])
    eos = [int(eager.completion_ids[0, 3]), int(eager.completion_ids[2, 1])]
    eager = run("eager", eos)
    calls = []
    monkeypatch.setattr(options.OPTIONS, "attention", "triton")
    monkeypatch.setattr(layers, "decode_attention",
                        lambda *a, **kw: calls.append(kw["new"] is not None) or da.decode_attention(*a, **kw))
    fast = run("static", eos)
    assert calls and all(calls)  # the decode steps ran on the kernel, which wrote their keys and values
    assert torch.equal(eager.completion_ids, fast.completion_ids)
    assert torch.equal(eager.thinking_mask, fast.thinking_mask)
    torch.testing.assert_close(eager.logprobs, fast.logprobs, atol=1e-5, rtol=0)
    torch.testing.assert_close(eager.latents, fast.latents, atol=1e-5, rtol=0)
