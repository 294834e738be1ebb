"""The latent-reasoning family modes (soft, its Gumbel and Gaussian noise, mixture, multiplex): each fed-back
vector against its paper's formula computed independently (numpy, float64), each trainable mode's rollout
log-probs against the training forward's, every engine against the eager one, and bad options refused."""

import math

import numpy as np
import pytest
import torch

from conftest import assert_same_rollout, build_tiny_model, with_random_lora
from helpers import register, tiny_train_args
from hrpo import SamplingConfig, generate
from hrpo.config import ConfigError, build_config
from hrpo.engines import graph
from hrpo.engines.static import generate_fast
from hrpo.latent_options import LatentConfig, latent_config
from hrpo.models import lora_parameters
from hrpo.objective import completion_logprobs, rollout_inputs_embeds
from hrpo.sampling import marker_matcher
from hrpo.text import left_pad
from test_graph_engine_emulated import emulated_cuda_graphs  # noqa: F401 (a fixture)

register()
PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]
CASES = {  # id -> (mode, latent options)
    "soft": ("soft", {}),
    "gumbel": ("soft", {"noise": "gumbel"}),
    "gaussian": ("soft", {"noise": "gaussian"}),
    "mixture": ("mixture", {"mixture_beta": 0.5}),
    "multiplex": ("multiplex", {}),
    "multiplex-uniform": ("multiplex", {"multiplex_uniform": True}),
}
TRAINABLE = ["gumbel", "gaussian", "mixture", "multiplex", "multiplex-uniform"]


@pytest.fixture(scope="module")
def model(tokenizer):
    return with_random_lora(build_tiny_model("llama", len(tokenizer)))


def _rollout(model, tokenizer, case, engine="eager", top_k=50, temperature=1.0, greedy=False, eos=(2,), **extra):
    mode, options = CASES[case]
    ids, mask = left_pad([p for p in PROMPTS for _ in range(2)], tokenizer.pad_token_id)
    sampling = SamplingConfig(max_new_tokens=10, temperature=temperature, top_k=top_k, greedy=greedy)
    kw = dict(gate=None, matcher=marker_matcher(tokenizer, "####"), eos_token_ids=list(eos),
              pad_token_id=tokenizer.pad_token_id, row_seeds=torch.arange(6) * 7 + 3, group_size=2, mode=mode,
              latent=latent_config(options, mode))
    if engine == "eager":
        return generate(model, ids, mask, sampling, engine="eager", **kw)
    return generate_fast(model, ids, mask, sampling, engine=engine, **kw, **extra)


def _kept(model, rollout, mode, top_k, temperature):
    """Per completion position: (kept ids, q) of the distribution the token was drawn from, from a training
    forward over the stored inputs (float64)."""
    with torch.no_grad():
        embeds, _ = rollout_inputs_embeds(model, None, rollout, mode=mode)
        out = model(inputs_embeds=embeds, attention_mask=rollout.attention_mask,
                    position_ids=(rollout.attention_mask.cumsum(-1) - 1).clamp_min(0))
    width = rollout.completion_ids.shape[1]
    logits = out.logits[:, -width - 1:-1].double().numpy() / temperature
    k = top_k or logits.shape[-1]
    ids = np.argsort(-logits, axis=-1, kind="stable")[..., :k]
    kept = np.take_along_axis(logits, ids, -1)
    q = np.exp(kept - kept.max(-1, keepdims=True))
    return ids, q / q.sum(-1, keepdims=True)


@pytest.mark.parametrize("case", list(CASES))
def test_fed_back_vectors_follow_each_papers_formula(case, model, tokenizer):
    mode, options = CASES[case]
    cfg = latent_config(options, mode)
    rollout = _rollout(model, tokenizer, case)
    E = model.get_input_embeddings().weight.detach().double().numpy()
    ids, q = _kept(model, rollout, mode, 50, 1.0)
    positions = rollout.thinking_mask.nonzero().tolist()
    assert len(positions) > 10
    noise = []
    for b, t in positions:
        x = rollout.latents[b, t].double().numpy()
        token = int(rollout.completion_ids[b, t])
        if mode == "soft" and cfg.noise == "gumbel":
            z = rollout.action_values[b, t].double().numpy()
            assert rollout.action_ids[b, t].tolist() == ids[b, t].tolist()
            g = z - np.log(q[b, t] + 1e-6)
            assert g.min() >= -1.5 - 1e-5 and g.max() <= 3.0 + 1e-5  # SofT-GRPO's clamped Gumbel noise
            w = np.exp((z - z.max()) / cfg.gumbel_tau)
            expected = (w / w.sum()) @ E[ids[b, t]]
            assert token == ids[b, t][np.argmax(z)]  # the Gumbel-max token
        elif mode == "soft":
            mean = q[b, t] @ E[ids[b, t]]  # Soft Thinking: the concept token, weights summing to 1
            assert token == ids[b, t][0]  # the argmax is recorded
            if cfg.noise == "gaussian":
                noise.append((x - mean) / (cfg.gaussian_sigma * math.sqrt((E ** 2).mean())))
                continue
            expected = mean
        elif mode == "mixture":
            onehot = (ids[b, t] == token).astype(float)
            w = (q[b, t] + cfg.mixture_beta * onehot) / (1 + cfg.mixture_beta)
            h = -(q[b, t] * np.log(q[b, t])).sum() / math.log(50)
            expected = h * (w @ E[ids[b, t]]) + (1 - h) * E[token]
        else:
            draws = rollout.action_ids[b, t].tolist()
            assert len(draws) == 3 and draws[0] == token
            p = {int(i): float(v) for i, v in zip(ids[b, t], q[b, t])}
            w = np.ones(3) / 3 if cfg.multiplex_uniform else np.array([p[d] for d in draws])
            expected = (w / w.sum()) @ E[draws]  # duplicates count, as in the authors' code
        np.testing.assert_allclose(x, expected, atol=2e-5, rtol=1e-4)
    if noise:  # what is left after the mean is standard normal noise
        eps = np.concatenate(noise)
        assert abs(eps.mean()) < 0.1 and 0.9 < eps.std() < 1.1


@pytest.mark.parametrize("case", TRAINABLE + ["soft"])
@pytest.mark.parametrize("engine", ["eager", "static"])
def test_rollout_logprobs_equal_training_logprobs(case, engine, model, tokenizer):
    mode, options = CASES[case]
    cfg = latent_config(options, mode)
    rollout = _rollout(model, tokenizer, case, engine)
    assert rollout.thinking_mask.any()
    embeds, _ = rollout_inputs_embeds(model, None, rollout, mode=mode)
    logprobs = completion_logprobs(model, rollout, embeds, 1.0, mode=mode, latent=cfg)
    real = rollout.completion_mask
    tol = 5e-4 if cfg.noise == "gaussian" else 2e-5  # the Gaussian's 1/sigma^2 scales the forward's rounding
    torch.testing.assert_close(logprobs[real], rollout.logprobs[real].detach(), atol=tol, rtol=1e-5)
    think = rollout.thinking_mask
    tokens_only = completion_logprobs(model, rollout, embeds, 1.0)
    if case in ("gumbel", "gaussian", "multiplex", "multiplex-uniform"):  # the step's own log-prob is used
        assert (tokens_only[think] - logprobs[think]).abs().min() > 1e-3
        logprobs[think].sum().backward()  # ... and it has a gradient into the policy
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for _, p in lora_parameters(model))
        model.zero_grad(set_to_none=True)
    else:
        torch.testing.assert_close(tokens_only[real], logprobs[real])


def test_action_logprobs_by_hand():
    """multiplex: the K draws' joint log-prob; gumbel: SofT-GRPO's clamped, averaged Gumbel log-density;
    gaussian: the Gaussian log-density of the fed-back input around the policy's mean (constant dropped)."""
    from hrpo.latent import action_logprob

    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    lse = torch.logsumexp(scores, -1)
    joint = action_logprob("multiplex", LatentConfig(), scores[:, [0, 0, 2]], lse, None, None, None, None, 1.0)
    logp = scores - lse
    torch.testing.assert_close(joint, logp[:, 0] * 2 + logp[:, 2])

    q = torch.softmax(scores, -1).numpy()[0]
    z = np.log(q + 1e-6) + np.array([0.3, -2.0, 5.0, 0.0])  # two slots clamped
    g = np.clip(z - np.log(q + 1e-6), -1.5, 3.0)
    keep = np.log(q + 1e-6) > -3
    expected = ((-g - np.exp(-g)) * keep).sum() / keep.sum()
    got = action_logprob("soft", LatentConfig(noise="gumbel"), scores, lse, None, torch.tensor([z]).float(), None,
                         None, 1.0)
    assert keep.sum() == 3 and got.item() == pytest.approx(expected, rel=1e-5)

    E = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, -1.0]])
    x = torch.tensor([[0.5, 0.5]])
    mu = q @ E.numpy()
    got = action_logprob("soft", LatentConfig(noise="gaussian"), scores, lse, None, None, x, E, 0.5)
    assert got.item() == pytest.approx(-((x.numpy()[0] - mu) ** 2).sum() / (2 * 0.25), rel=1e-5)


@pytest.mark.parametrize("case", list(CASES))
def test_static_engine_equals_eager(case, model, tokenizer):
    # the whole vocabulary kept (top_k 0) only where the token is an argmax: a sample from 49k near-uniform
    # probabilities flips with fp32 summation order (both engines are right; the eager one sums differently)
    for top_k in (50, 0) if case in ("soft", "gaussian") else (50,):
        eager = _rollout(model, tokenizer, case, top_k=top_k)
        eos = (int(eager.completion_ids[0, 3]), int(eager.completion_ids[2, 1]))  # rows end at different steps
        eager = _rollout(model, tokenizer, case, top_k=top_k, eos=eos)
        static = _rollout(model, tokenizer, case, "static", top_k=top_k, eos=eos, sync_every=2, check_lag=1)
        assert_same_rollout(eager, static)
        assert (eager.action_ids is None) == (static.action_ids is None)
        assert eager.action_ids is None or torch.equal(eager.action_ids, static.action_ids)
        assert (eager.action_values is None) == (static.action_values is None)
        if eager.action_values is not None:
            torch.testing.assert_close(eager.action_values, static.action_values, atol=1e-3, rtol=1e-3)  # log q


@pytest.mark.parametrize("case", list(CASES))
def test_each_mode_on_the_emulated_graph_engine(case, tokenizer, emulated_cuda_graphs):  # noqa: F811
    model = with_random_lora(build_tiny_model("qwen2", len(tokenizer)))
    eager = _rollout(model, tokenizer, case)
    captured = _rollout(model, tokenizer, case, "graph")
    assert_same_rollout(eager, captured)
    assert (eager.action_ids is None) or torch.equal(eager.action_ids, captured.action_ids)
    assert graph._GRAPHS[id(model)].spec.mode == CASES[case][0]


def test_greedy_soft_and_multiplex_draw_no_noise(model, tokenizer):
    plain = _rollout(model, tokenizer, "soft", greedy=True)
    for case in ("gumbel", "gaussian"):
        noisy = _rollout(model, tokenizer, case, greedy=True)
        assert torch.equal(noisy.completion_ids, plain.completion_ids)
        torch.testing.assert_close(noisy.latents, plain.latents)
    discrete = generate(model, *left_pad([p for p in PROMPTS for _ in range(2)], tokenizer.pad_token_id),
                        SamplingConfig(max_new_tokens=10, greedy=True), gate=None, matcher=None, eos_token_ids=[2],
                        pad_token_id=tokenizer.pad_token_id, mode="discrete")
    assert torch.equal(_rollout(model, tokenizer, "multiplex", greedy=True).completion_ids, discrete.completion_ids)


def test_cold_stop_ends_the_soft_span(model, tokenizer):
    """Every step's entropy is under a huge threshold: the span ends after cold_stop_steps steps."""
    ids, mask = left_pad(PROMPTS, tokenizer.pad_token_id)
    kw = dict(gate=None, matcher=marker_matcher(tokenizer, "####"), eos_token_ids=[], pad_token_id=0, mode="soft",
              row_seeds=torch.arange(3))
    sampling = SamplingConfig(max_new_tokens=8, temperature=1.0)
    free = generate(model, ids, mask, sampling, latent=latent_config({"cold_stop_entropy": 0.0}, "soft"), **kw)
    stopped = generate(model, ids, mask, sampling, latent=latent_config(
        {"cold_stop_entropy": 100.0, "cold_stop_steps": 3}, "soft"), **kw)
    assert free.thinking_mask[:, :4].all()
    assert stopped.thinking_mask[:, :2].all() and not stopped.thinking_mask[:, 2:].any()
    assert torch.equal(stopped.completion_ids[:, :3], free.completion_ids[:, :3])


@pytest.mark.parametrize("options, mode, match", [
    ({"multiplex_k": 0}, "multiplex", r"latent\.multiplex_k: must be >= 1"),
    ({"mixture_beta": -0.5}, "mixture", r"latent\.mixture_beta: must be a number >= 0"),
    ({"mixture_beta": "nan"}, "mixture", r"latent\.mixture_beta"),
    ({"noise": "laplace"}, "soft", r"latent\.noise: unknown noise kind 'laplace'"),
    ({"nosie": "gumbel"}, "soft", r"latent\.nosie: unknown option"),
    ({"mixture_beta": 0.5}, "multiplex", r"latent\.mixture_beta: is an option of mode mixture"),
    ({"noise": "gumbel"}, "hybrid", r"latent\.noise: is an option of mode soft, not of mode hybrid"),
    ({"multiplex_k": 2.5}, "multiplex", r"latent\.multiplex_k: 2\.5 is not an integer"),
    ({"gumbel_tau": 0}, "soft", r"latent\.gumbel_tau: must be > 0"),
])
def test_bad_options_are_refused(options, mode, match):
    with pytest.raises(ConfigError, match=match):
        latent_config(options, mode)


def test_the_train_config_refuses_what_rl_cannot_train(tmp_path, tiny_model_dirs):
    base = tiny_train_args(tiny_model_dirs["qwen2"], tmp_path / "run")
    for values, match in ((dict(mode="soft"), r"latent\.noise: soft mode without noise"),
                          (dict(mode="soft", latent={"noise": "gumbel"}, top_k=0), r"needs top_k > 0"),
                          (dict(mode="soft", latent={"noise": "gaussian"}, top_p=0.9), r"needs top_p = 1"),
                          (dict(mode="multiplex", latent=["multiplex_k=0"]), r"multiplex_k: must be >= 1"),
                          (dict(mode="multiplex", algo="ppo"), r"algo='ppo'.*use --algo grpo")):
        with pytest.raises(ConfigError, match=match):
            build_config(cli_values={**base, **values})
    cfg = build_config(yaml_values={"latent": {"noise": "gumbel"}}, cli_values={**base, "mode": "soft",
                                                                                "latent": ["gumbel_tau=0.5"]})
    assert cfg.latent == {"noise": "gumbel", "gumbel_tau": 0.5}  # the flag adds to the YAML's mapping


@pytest.mark.parametrize("case", TRAINABLE)
def test_each_trainable_mode_trains_lora(case, tmp_path, tiny_model_dirs):
    from hrpo.trainer import batch_examples, latent_options, reference_logprobs, sampling_config, setup, train_step
    from hrpo.text import encode_prompts

    mode, options = CASES[case]
    values = {**tiny_train_args(tiny_model_dirs["qwen2"], tmp_path / "run"), "mode": mode, "latent": options}
    trainer = setup(build_config(cli_values=values), log=lambda *a: None)
    # the reference reads the same fed-back vectors: with LoRA B still 0 its token log-probs are the policy's
    # (the KL's two sides), so the KL is 0
    examples = [ex for ex in batch_examples(trainer, 0) for _ in range(trainer.cfg.group_size)]
    ids, mask = encode_prompts(trainer.tokenizer, [trainer.task.messages(e) for e in examples], 64)
    rollout = generate(trainer.model, ids, mask, sampling_config(trainer.cfg), gate=None, matcher=trainer.matcher,
                       eos_token_ids=trainer.eos_ids, pad_token_id=trainer.tokenizer.pad_token_id, mode=mode,
                       latent=latent_options(trainer.cfg), generator=torch.Generator().manual_seed(0))
    assert rollout.thinking_mask.any()
    tokens: list = []
    with torch.no_grad():
        embeds, _ = rollout_inputs_embeds(trainer.model, None, rollout, mode=mode)
        completion_logprobs(trainer.model, rollout, embeds, 1.0, mode=mode, latent=latent_options(trainer.cfg),
                            token_logprobs=tokens)
    real = rollout.completion_mask
    torch.testing.assert_close(reference_logprobs(trainer, rollout, 1.0)[real], tokens[0][real])
    with torch.no_grad():
        for name, p in lora_parameters(trainer.model):
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    before = {n: p.detach().clone() for n, p in lora_parameters(trainer.model)}
    metrics = train_step(trainer)
    assert metrics["thinking/mean_length"] > 0 and math.isfinite(metrics["loss"]) and math.isfinite(metrics["kl"])
    assert metrics["sampling/logp_difference/max"] < 1e-3  # rollout and training agree on the step's log-prob
    unchanged = [n for n, p in lora_parameters(trainer.model) if torch.equal(p, before[n])]
    assert not unchanged


def test_a_run_decodes_with_its_latent_options_or_hard(tmp_path, tiny_model_dirs):
    import argparse

    from hrpo.cli import _decode_mode
    from hrpo.policy import generate_ids, load_policy
    from hrpo.trainer import train

    values = {**tiny_train_args(tiny_model_dirs["qwen2"], tmp_path / "run"), "mode": "soft",
              "latent": {"noise": "gumbel", "gumbel_tau": 0.5}}
    train(build_config(cli_values=values), quiet=True)
    policy = load_policy(adapter=tmp_path / "run", device="cpu")
    assert policy.mode == "soft" and policy.latent == LatentConfig(noise="gumbel", gumbel_tau=0.5)
    rollout = generate_ids(policy, [[5, 6, 7]], 6, temperature=1.0)
    assert rollout.action_values is not None  # decoded with the run's Gumbel noise
    override = load_policy(adapter=tmp_path / "run", device="cpu", latent=["gumbel_tau=2"], top_k=5)
    assert override.latent.gumbel_tau == 2.0 and override.top_k == 5
    hard = load_policy(adapter=tmp_path / "run", device="cpu",
                       mode=_decode_mode(argparse.Namespace(infer="hard", mode=None)))
    assert hard.mode == "discrete" and hard.latent == LatentConfig()
    with pytest.raises(ConfigError, match="--infer hard"):
        _decode_mode(argparse.Namespace(infer="hard", mode="soft"))


def test_the_kl_reads_the_token_log_probs_and_the_ratio_the_steps():
    from hrpo.objective import hrpo_loss, k3_kl

    step_lp = torch.tensor([[-40.0, -1.0]], requires_grad=True)  # e.g. a Gaussian log-density, then a token
    token_lp = torch.tensor([[-0.5, -1.0]], requires_grad=True)
    ref = torch.tensor([[-0.7, -1.2]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    loss, stats = hrpo_loss(step_lp, ref, torch.tensor([2.0]), mask, beta=0.1, kl_logprobs=token_lp)
    loss.backward()
    kl = k3_kl(ref, token_lp.detach())
    assert loss.item() == pytest.approx(-2.0 + 0.1 * kl.mean().item(), rel=1e-6)
    torch.testing.assert_close(step_lp.grad, torch.tensor([[-1.0, -1.0]]))  # -A / length per token
    torch.testing.assert_close(token_lp.grad, 0.1 * (1 - torch.exp(ref - token_lp.detach())) / 2)
