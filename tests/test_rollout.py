"""The rollout engine: marker tracking, discrete == model.generate, hybrid inputs, log-prob equivalence."""

from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig

from conftest import ARCHS
from hrpo import HybridGate, MarkerMatcher, SamplingConfig, generate
from hrpo.models import load_model
from hrpo.objective import completion_logprobs, rollout_inputs_embeds
from hrpo.sampling import marker_matcher, rollout_row_seeds, row_uniforms
from hrpo.text import left_pad

EOS = 2


class ScriptedLM(torch.nn.Module):
    """A stand-in causal LM whose call t puts all probability mass on ``script[row][t]``; records its inputs."""

    def __init__(self, script: list[list[int]], vocab_size: int, hidden: int = 8):
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(vocab_size, hidden)
        self.config = LlamaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=1,
                                  num_attention_heads=1, num_key_value_heads=1)
        self.script, self.calls, self.vocab = script, [], vocab_size

    def get_input_embeddings(self):
        return self.embed

    def forward(self, inputs_embeds, attention_mask=None, position_ids=None, use_cache=True, logits_to_keep=0,
                cache=None, output_hidden_states=False):
        t = len(self.calls)
        self.calls.append(inputs_embeds.detach().clone())
        logits = torch.zeros(inputs_embeds.shape[0], 1, self.vocab)
        for row, tokens in enumerate(self.script):
            logits[row, 0, tokens[min(t, len(tokens) - 1)]] = 30.0
        # a recognisable "last hidden state": call t reports the constant t + 1
        last = torch.full((inputs_embeds.shape[0], 1, inputs_embeds.shape[-1]), float(t + 1))
        return SimpleNamespace(logits=logits, hidden_states=(last * 0, last) if output_hidden_states else None)


def _pieces_matcher():
    pieces = ["", "a", "#", "##", "x#", "#x", "###", "b"]
    return MarkerMatcher(pieces, "####")


def test_marker_matcher_states_on_synthetic_pieces():
    m = _pieces_matcher()
    assert m.scan([1, 2, 3, 2]) == 3  # a # ## #
    assert m.scan([4, 6]) == 1  # x# ### -> "x####"
    assert m.scan([2, 5, 3, 3]) == 3  # "# #x ## ##": the 'x' resets, then ## ## completes
    assert m.scan([2, 0, 6]) == 2  # an empty piece keeps the state
    assert m.scan([3, 7, 3]) is None


def test_marker_split_over_several_real_tokens(tokenizer):
    m = marker_matcher(tokenizer, "####")
    hash1, hash2 = tokenizer.convert_tokens_to_ids(["#", "##"])
    words = tokenizer.encode("so the sum is 7", add_special_tokens=False)
    assert m.scan(words + [hash1, hash2, hash1]) == len(words) + 2
    assert m.scan(words + [tokenizer.convert_tokens_to_ids("####")]) == len(words)
    think = marker_matcher(tokenizer, "</think>")
    ids = tokenizer.encode("hmm</think> 7", add_special_tokens=False)
    end = think.scan(ids)
    assert tokenizer.decode(ids[:end + 1]).endswith("</think>") and "</think>" not in tokenizer.decode(ids[:end])


@pytest.mark.parametrize("marker", ["答案:", "\u2705"])
def test_a_marker_split_inside_a_character_is_refused(tokenizer, marker):
    """Byte-level BPE splits these characters over tokens that decode, one at a time, to U+FFFD: a token-level
    matcher would never see the marker and every completion would stay in its thinking span."""
    from hrpo.config import ConfigError

    with pytest.raises(ConfigError, match="cannot be tracked token by token"):
        marker_matcher(tokenizer, marker)
    assert marker_matcher(tokenizer, " answer is").scan(tokenizer.encode("so the answer is 7",
                                                                          add_special_tokens=False)) is not None


def test_thinking_span_ends_exactly_at_split_marker(tokenizer):
    hash1, hash2 = tokenizer.convert_tokens_to_ids(["#", "##"])
    words = tokenizer.encode(" so it is", add_special_tokens=False)
    answer = tokenizer.encode(" 7", add_special_tokens=False)
    script = [words + [hash2, hash1, hash1] + answer + [EOS],  # marker split as ## # #
              words + [hash1] + answer + [EOS, EOS, EOS, EOS]]  # never completes the marker
    vocab = len(tokenizer)
    model = ScriptedLM(script, vocab)
    gate = HybridGate(8)
    prompt_ids, prompt_mask = left_pad([[5, 6, 7], [8, 9]], EOS)
    rollout = generate(model, prompt_ids, prompt_mask, SamplingConfig(max_new_tokens=12, greedy=True),
                       gate=gate, matcher=marker_matcher(tokenizer, "####", vocab), eos_token_ids=[EOS],
                       pad_token_id=EOS)
    n = len(words)
    # row 0: thinking through the words, '##' and the first '#'; the '#' completing the marker is plain
    assert rollout.thinking_mask[0].tolist()[: n + 5] == [True] * (n + 2) + [False] * 3
    # row 1: never saw the marker, so every token before EOS is thinking; EOS and later are not
    length1 = n + 1 + len(answer) + 1
    assert rollout.thinking_mask[1].tolist()[:length1] == [True] * (length1 - 1) + [False]
    assert rollout.completion_mask[1].tolist()[:length1 + 1] == [True] * length1 + [False]
    # inputs fed back: the gated mix at thinking positions, the plain embedding elsewhere
    for t in range(n + 4):
        fed = model.calls[t + 1][0, 0]
        token = torch.tensor([script[0][t]])
        plain = model.embed(token)[0]
        mixed, _ = gate(plain[None], rollout.latents[0, t][None])
        expected = mixed[0] if rollout.thinking_mask[0, t] else plain
        assert torch.allclose(fed, expected, atol=1e-6), t
    # the prompt is prefilled with plain embeddings
    assert torch.equal(model.calls[0], model.embed(prompt_ids))


def test_scripted_latent_of_near_one_hot_is_the_token_embedding(tokenizer):
    model = ScriptedLM([[11, 12, EOS]], len(tokenizer))
    prompt_ids, prompt_mask = left_pad([[5, 6]], EOS)
    rollout = generate(model, prompt_ids, prompt_mask, SamplingConfig(max_new_tokens=4, temperature=0.5),
                       gate=HybridGate(8), matcher=marker_matcher(tokenizer, "####", len(tokenizer)),
                       eos_token_ids=[EOS], pad_token_id=EOS)
    assert rollout.completion_ids[0].tolist()[:3] == [11, 12, EOS]
    assert torch.allclose(rollout.latents[0, 0], model.embed.weight[11], atol=1e-4)


def _prompts(tokenizer, texts):
    rows = [tokenizer.encode(t, add_special_tokens=False) for t in texts]
    return left_pad(rows, tokenizer.pad_token_id)


PROMPTS = ["What is 2 + 3?", "Tell me a long story about a cat who lived", "Hi"]
# every architecture on the eager loop, the supported ones also on the static-cache engine
ENGINES = [(arch, "eager") for arch in ARCHS] + [("llama", "static"), ("qwen2", "static")]


@pytest.mark.parametrize("arch,engine", ENGINES)
def test_discrete_greedy_equals_model_generate(arch, engine, tiny_model_dirs, tokenizer):
    lm = load_model(str(tiny_model_dirs[arch]))
    ids, mask = _prompts(tokenizer, PROMPTS)
    assert len(set(mask.sum(1).tolist())) == 3  # really different prompt lengths, left-padded
    rollout = generate(lm.model, ids, mask, SamplingConfig(max_new_tokens=12, greedy=True), gate=None,
                       matcher=None, eos_token_ids=[EOS], pad_token_id=EOS, engine=engine)
    expected = lm.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=12,
                                 eos_token_id=EOS, pad_token_id=EOS)[:, ids.shape[1]:]
    ours = rollout.completion_ids
    width = min(ours.shape[1], expected.shape[1])
    assert width >= 1
    assert torch.equal(ours[:, :width], expected[:, :width])
    # beyond the shorter of the two, both must be padding
    assert (ours[:, width:] == EOS).all() and (expected[:, width:] == EOS).all()


@pytest.mark.parametrize("arch,engine", ENGINES)
@pytest.mark.parametrize("mode", ["hybrid", "discrete"])
def test_rollout_logprobs_equal_training_logprobs(arch, engine, mode, tiny_model_dirs, tokenizer):
    lm = load_model(str(tiny_model_dirs[arch]))
    torch.manual_seed(0)
    gate = HybridGate(lm.model.config.hidden_size, r_min=0.5, r_max=0.9) if mode == "hybrid" else None
    ids, mask = _prompts(tokenizer, PROMPTS)
    sampling = SamplingConfig(max_new_tokens=10, temperature=0.7, top_k=50)
    rollout = generate(lm.model, ids, mask, sampling, gate=gate, matcher=marker_matcher(tokenizer, "####"),
                       eos_token_ids=[EOS], pad_token_id=EOS, generator=torch.Generator().manual_seed(1),
                       engine=engine)
    if mode == "hybrid":
        assert rollout.thinking_mask.any()
    with torch.no_grad():
        embeds, _ = rollout_inputs_embeds(lm.model, gate, rollout)
        logprobs = completion_logprobs(lm.model, rollout, embeds, temperature=0.7)
    real = rollout.completion_mask
    torch.testing.assert_close(logprobs[real], rollout.logprobs[real], atol=2e-5, rtol=1e-5)
    if mode == "hybrid":  # the mix matters: plain inputs give different log-probs
        with torch.no_grad():
            plain, _ = rollout_inputs_embeds(lm.model, None, rollout)
            other = completion_logprobs(lm.model, rollout, plain, temperature=0.7)
        assert (other[real] - rollout.logprobs[real]).abs().max() > 1e-4


def test_sampling_is_reproducible_with_a_seeded_generator(tiny_model_dirs, tokenizer):
    lm = load_model(str(tiny_model_dirs["llama"]))
    ids, mask = _prompts(tokenizer, PROMPTS)
    gate = HybridGate(lm.model.config.hidden_size)
    runs = [generate(lm.model, ids, mask, SamplingConfig(max_new_tokens=8, temperature=1.0), gate=gate,
                     matcher=marker_matcher(tokenizer, "####"), eos_token_ids=[EOS], pad_token_id=EOS,
                     generator=torch.Generator().manual_seed(3)) for _ in range(2)]
    assert torch.equal(runs[0].completion_ids, runs[1].completion_ids)
    assert torch.equal(runs[0].latents, runs[1].latents)


def test_shared_prompt_prefill_matches_per_row_prefill(tiny_model_dirs, tokenizer):
    lm = load_model(str(tiny_model_dirs["gemma3"]))
    ids, mask = _prompts(tokenizer, PROMPTS)
    ids, mask = ids.repeat_interleave(2, dim=0), mask.repeat_interleave(2, dim=0)
    gate = HybridGate(lm.model.config.hidden_size, r_min=0.5, r_max=0.9)
    kwargs = dict(gate=gate, matcher=marker_matcher(tokenizer, "####"), eos_token_ids=[EOS], pad_token_id=EOS)
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0)
    shared = generate(lm.model, ids, mask, sampling, generator=torch.Generator().manual_seed(5), group_size=2,
                      **kwargs)
    single = generate(lm.model, ids, mask, sampling, generator=torch.Generator().manual_seed(5), **kwargs)
    assert torch.equal(shared.completion_ids, single.completion_ids)
    torch.testing.assert_close(shared.logprobs, single.logprobs, atol=1e-5, rtol=1e-5)
    assert shared.completion_ids[0].tolist() != shared.completion_ids[1].tolist()  # samples still differ


@pytest.mark.parametrize("arch, checkpointing", [("qwen2", False), ("gemma3", False), ("llama", True)])
def test_shared_prompt_training_forward_matches_full_forward(arch, checkpointing, tiny_model_dirs, tokenizer):
    """Also in training mode under gradient checkpointing, where transformers drops the KV cache a shared prompt
    would need (the completions must still see their prompt)."""
    lm = load_model(str(tiny_model_dirs[arch]))
    ids, mask = _prompts(tokenizer, PROMPTS)
    ids, mask = ids.repeat_interleave(3, dim=0), mask.repeat_interleave(3, dim=0)
    gate = HybridGate(lm.model.config.hidden_size, r_min=0.5, r_max=0.9)
    rollout = generate(lm.model, ids, mask, SamplingConfig(max_new_tokens=7, temperature=1.0), gate=gate,
                       matcher=marker_matcher(tokenizer, "####"), eos_token_ids=[EOS], pad_token_id=EOS,
                       generator=torch.Generator().manual_seed(2), group_size=3)
    if checkpointing:
        lm.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        lm.model.train()
    results = []
    for group_size in (1, 3):
        gate.zero_grad()
        embeds, _ = rollout_inputs_embeds(lm.model, gate, rollout)
        logprobs = completion_logprobs(lm.model, rollout, embeds, 1.0, group_size=group_size)
        (logprobs * rollout.completion_mask).sum().backward()
        results.append((logprobs.detach(), gate.Lambda.grad.clone(), gate.gate_r.weight.grad.clone()))
    (lp1, l1, w1), (lp3, l3, w3) = results
    real = rollout.completion_mask
    torch.testing.assert_close(lp3[real], lp1[real], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(lp3[real], rollout.logprobs[real], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(l3, l1, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(w3, w1, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("mode", ["latent", "hidden"])
def test_ablation_modes_feed_the_latent_or_hidden_state_alone(mode, tokenizer):
    hash1 = tokenizer.convert_tokens_to_ids("####")
    script = [[11, 12, hash1, 13, EOS]]
    model = ScriptedLM(script, len(tokenizer))
    prompt_ids, prompt_mask = left_pad([[5, 6]], EOS)
    sampling = SamplingConfig(max_new_tokens=6, greedy=True, temperature=5.0)  # a latent far from one-hot
    rollout = generate(model, prompt_ids, prompt_mask, sampling, gate=None,
                       matcher=marker_matcher(tokenizer, "####", len(tokenizer)), eos_token_ids=[EOS],
                       pad_token_id=EOS, mode=mode)
    assert rollout.thinking_mask[0].tolist()[:4] == [True, True, False, False]
    for t in range(4):
        fed = model.calls[t + 1][0, 0]
        if rollout.thinking_mask[0, t]:
            expected = torch.full((8,), float(t + 1)) if mode == "hidden" else rollout.latents[0, t]
            assert torch.allclose(fed, expected, atol=1e-6)  # no token embedding, no gate
            assert not torch.allclose(fed, model.embed.weight[script[0][t]], atol=1e-3)
        else:
            assert torch.allclose(fed, model.embed.weight[script[0][t]])
    assert rollout.gate_mean[0, 0] == 0.0 and rollout.gate_mean[0, 2] == 1.0


@pytest.mark.parametrize("mode", ["latent", "hidden"])
def test_ablation_modes_rollout_logprobs_equal_training_logprobs(mode, tiny_model_dirs, tokenizer):
    lm = load_model(str(tiny_model_dirs["llama"]))
    ids, mask = _prompts(tokenizer, PROMPTS)
    rollout = generate(lm.model, ids, mask, SamplingConfig(max_new_tokens=8, temperature=0.7), gate=None,
                       matcher=marker_matcher(tokenizer, "####"), eos_token_ids=[EOS], pad_token_id=EOS,
                       generator=torch.Generator().manual_seed(1), mode=mode)
    assert rollout.thinking_mask.any()
    with torch.no_grad():
        embeds, _ = rollout_inputs_embeds(lm.model, None, rollout, mode=mode)
        logprobs = completion_logprobs(lm.model, rollout, embeds, temperature=0.7)
    real = rollout.completion_mask
    torch.testing.assert_close(logprobs[real], rollout.logprobs[real], atol=5e-5, rtol=1e-5)


@pytest.mark.parametrize("engine", ["eager", "static"])
def test_right_padded_prompts_are_refused_with_the_row(engine, tiny_model_dirs, tokenizer):
    """Every engine reads the prompt's next-token logits at the last column: a right-padded row would sample from
    a pad position, so it is an error naming the row, not a silently wrong rollout."""
    model = load_model(str(tiny_model_dirs["llama"])).model
    ids, mask = left_pad([[5, 6, 7], [8, 9]], tokenizer.pad_token_id)
    right_ids, right_mask = ids.clone(), mask.clone()
    right_ids[1], right_mask[1] = torch.tensor([8, 9, tokenizer.pad_token_id]), torch.tensor([1, 1, 0])
    kw = dict(gate=None, matcher=None, eos_token_ids=[2], pad_token_id=tokenizer.pad_token_id, engine=engine,
              row_seeds=torch.arange(2))
    sampling = SamplingConfig(max_new_tokens=2)
    assert generate(model, ids, mask, sampling, **kw).completion_ids.shape == (2, 2)
    with pytest.raises(ValueError, match="left-padded.*row 1 of prompt_mask ends in padding"):
        generate(model, right_ids, right_mask, sampling, **kw)
    with pytest.raises(ValueError, match="at least one token"):
        generate(model, ids[:, :0], mask[:, :0], sampling, **kw)


# ------------------------------------------------------------------------------------------- sampling streams

def _streams(seeds: torch.Tensor, decode_steps: int = 4) -> torch.Tensor:
    """(N, decode_steps) the uniforms each row seed draws at decode steps 0, 1, ..."""
    return torch.stack([row_uniforms(seeds, t) for t in range(decode_steps)], dim=1)


def test_training_row_streams_do_not_repeat_across_steps():
    """With seeds folded to 31 bits, step 0 row r and step 1024 row 15 - r drew the same uniforms at every
    decode step (seed 42); no two (step, row) of 4,096 steps x 64 rows may share a seed or a stream now."""
    seeds = torch.cat([rollout_row_seeds(42, step, range(64)) for step in range(4096)])
    assert seeds.unique().numel() == seeds.numel() and bool((seeds >= 0).all())
    streams = _streams(seeds)
    assert streams.unique(dim=0).shape[0] == streams.shape[0]
    first, later = rollout_row_seeds(42, 0, range(16)), rollout_row_seeds(42, 1024, range(15, -1, -1))
    assert not torch.equal(_streams(first), _streams(later))


def test_every_bit_of_seed_and_step_counts():
    """Seeds that differ only above bit 31 (the old fold dropped them) give different rows and streams."""
    for a, b in [(42, 42 + (1 << 31)), (42, 42 + (1 << 40)), (7, 7 + (1 << 63))]:
        assert not torch.equal(rollout_row_seeds(a, 3, range(8)), rollout_row_seeds(b, 3, range(8)))
    assert not torch.equal(rollout_row_seeds(42, 5, range(8)), rollout_row_seeds(42, 5 + (1 << 31), range(8)))
    raw = torch.tensor([5, 5 + (1 << 31), 5 + (1 << 62), 5 - (1 << 63)])  # distinct int64 row seeds
    assert _streams(raw, 8).unique(dim=0).shape[0] == 4


def test_row_seeds_depend_on_the_row_only_not_on_the_batch():
    """A row's seed (and so its tokens) is the same whether it is computed alone, in a batch or in a slice."""
    whole = rollout_row_seeds(3, 17, range(32))
    assert torch.equal(whole[10:20], rollout_row_seeds(3, 17, range(10, 20)))
    assert torch.equal(whole[[5, 2]], rollout_row_seeds(3, 17, torch.tensor([5, 2])))
    assert torch.equal(_streams(whole)[10:20], _streams(whole[10:20]))
