"""The paper's other baselines (SFT, PPO) and multi-epoch clipped updates: hand-computed losses, GAE and clip
metrics; the default step bit-identical to the strictly on-policy loop; SFT adapters in eval and as RL's start;
exact resume with a value head; clear errors for bad settings."""

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from helpers import register, tiny_train_args
from hrpo.cli import main
from hrpo.config import ConfigError, build_config
from hrpo.models import lora_parameters
from hrpo.objective import clipped_loss, completion_logprobs, hrpo_loss, rollout_inputs_embeds
from hrpo.ppo import gae, token_rewards, value_loss, whiten
from hrpo.trainer import resume_config, setup, train, train_step
from hrpo.update import UpdateResult

register()


def _trainer(tmp_path, tiny_model_dirs, arch="qwen2", **overrides):
    values = {**tiny_train_args(tiny_model_dirs[arch], tmp_path / "run"), **overrides}
    return setup(build_config(cli_values=values), log=lambda *a: None)


# ----------------------------------------------------------------------------------------------- SFT

class ShortSolutionTask:
    """Gold completion '####7' (two tokens; with EOS a 3-token completion)."""

    name = "short"
    marker = "####"
    procedural = True

    def __init__(self, **kwargs):
        pass

    def examples(self, n, seed=0):
        return [{"question": f"Say seven ({i}).", "answer": "7"} for i in range(n)]

    def messages(self, example):
        return [{"role": "user", "content": example["question"]}]

    def solution(self, example):
        return "####7"

    def reward(self, completion, example):
        return float("7" in completion)

    def extract_answer(self, completion, example=None):
        return completion

    def score(self, completion, example):
        return {"answer": completion, "correct": "7" in completion, "format_ok": True}

    def load(self, split="test", data_path=None, limit=None):
        return self.examples(limit or 4)


def test_sft_loss_is_the_mean_nll_of_the_completion_tokens_only(tmp_path, tiny_model_dirs):
    from hrpo import tasks
    from hrpo.sft import sft_batch, sft_loss

    tasks.register("short", ShortSolutionTask)
    trainer = _trainer(tmp_path, tiny_model_dirs, task="short", algo="sft", mode="discrete")
    with torch.no_grad():  # a LoRA that changes the outputs, so the test sees the adapter's forward
        for name, p in lora_parameters(trainer.model):
            if "lora_B" in name:
                p.normal_(0.0, 0.05)
    example = trainer.examples[0]
    batch, texts, cut = sft_batch(trainer, [example])
    assert texts == ["####7"] and cut == 0.0
    completion = batch.completion_ids[0].tolist()
    assert completion == trainer.tokenizer("####7", add_special_tokens=False)["input_ids"] + [2]  # + EOS
    assert len(completion) == 3 and batch.completion_mask.all()
    embeds, _ = rollout_inputs_embeds(trainer.model, None, batch, mode="discrete")
    loss = sft_loss(completion_logprobs(trainer.model, batch, embeds, 1.0), batch.completion_mask, 3.0)
    # by hand: one plain forward over prompt + completion; position P-1+j predicts completion token j
    prompt = batch.prompt_ids[0][batch.prompt_mask[0].bool()].tolist()
    with torch.no_grad():
        logits = trainer.model(input_ids=torch.tensor([prompt + completion])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    p = len(prompt)
    nll = [-float(logp[p - 1 + j, completion[j]]) for j in range(3)]
    loss = float(loss.detach())
    assert loss == pytest.approx(sum(nll) / 3, rel=1e-5)
    every_token = -sum(float(logp[t - 1, (prompt + completion)[t]]) for t in range(1, p + 3)) / (p + 2)
    assert abs(loss - every_token) > 1e-3  # the prompt's tokens carry no loss


def test_gold_solutions_of_the_built_in_tasks():
    from hrpo import tasks
    from hrpo.sft import gold_solution

    arithmetic = tasks.get("arithmetic")
    example = arithmetic.examples(1, seed=3)[0]
    a, op, b = example["question"][len("What is "):-1].split()
    assert gold_solution(arithmetic, example) == f"{a} {op} {b} = {example['answer']} #### {example['answer']}"
    think = tasks.get("arithmetic", prompt_format="think")
    assert gold_solution(think, example).startswith("<think>") and gold_solution(think, example).endswith(
        f"</think> {example['answer']}")
    gsm8k = tasks.get("gsm8k")
    row = gsm8k.convert({"question": "q", "answer": "She has 3 * 2 = <<3*2=6>>6 apples.\n#### 6"})
    assert gold_solution(gsm8k, row) == "She has 3 * 2 = 6 apples. #### 6"
    math_task = tasks.get("math")
    row = math_task.convert({"problem": "p", "solution": "So $x = \\boxed{3}$."})
    assert gold_solution(math_task, row) == "So $x = \\boxed{3}$. #### 3"


def test_sft_run_loads_in_eval_and_starts_rl(tmp_path, tiny_model_dirs):
    from hrpo.evaluate import evaluate
    from hrpo.policy import load_policy

    model = tiny_model_dirs["llama"]
    sft_dir = tmp_path / "sft"
    argv = ["sft", "--model", str(model), "--task", "arithmetic", "--output-dir", str(sft_dir), "--max-steps", "2",
            "--prompts-per-step", "4", "--micro-batch-size", "3", "--max-new-tokens", "24", "--lr", "1e-2",
            "--save-every", "2", "--num-train-examples", "16", "--quiet"]
    assert main(argv) == 0
    rows = [json.loads(x) for x in (sft_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and all(math.isfinite(r["loss"]) and r["grad_norm"] > 0 for r in rows)
    assert rows[0]["sample_completion"].endswith(" #### " + rows[0]["sample_completion"].split()[-1])
    assert (sft_dir / "plots" / "loss.png").is_file()
    policy = load_policy(adapter=str(sft_dir))
    assert policy.mode == "discrete" and policy.gate is None
    from hrpo import tasks

    task = tasks.get("arithmetic")
    result = evaluate(policy, task, task.load("test", limit=2), batch_size=2, max_new_tokens=4, progress=False)
    assert result["metrics"]["total"] == 2 and len(result["records"]) == 2
    sft_lora = load_file(str(sft_dir / "checkpoint-2" / "adapter_model.safetensors"))
    trainer = setup(build_config(cli_values={**tiny_train_args(model, tmp_path / "rl"), "init_adapter": str(sft_dir)}),
                    log=lambda *a: None)
    state = {k: v for k, v in trainer.model.state_dict().items() if "lora_" in k}
    assert any(float(v.abs().max()) > 0 for k, v in sft_lora.items() if "lora_B" in k)
    for key, value in sft_lora.items():
        match = [k for k in state if k.replace(".default", "") == key]
        assert len(match) == 1 and torch.equal(state[match[0]], value), key
    assert trainer.gate is not None  # hybrid RL from the SFT adapter: a fresh gate
    train_step(trainer)


# ----------------------------------------------------------------------------------------------- PPO pieces

def test_gae_hand_computed():
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.5, 0.0, 0.0]])
    values = torch.tensor([[0.5, 0.4, 0.2], [0.3, 9.0, 9.0]])  # row 2 has one token: its later values are padding
    mask = torch.tensor([[True, True, True], [True, False, False]])
    adv, returns = gae(rewards, values, mask, gamma=0.9, lam=0.8)
    d2 = 1.0 - 0.2                      # last token: no next value
    d1 = 0.0 + 0.9 * 0.2 - 0.4
    d0 = 0.0 + 0.9 * 0.4 - 0.5
    a2, a1 = d2, d1 + 0.72 * d2
    a0 = d0 + 0.72 * a1
    expected = torch.tensor([[a0, a1, a2], [0.5 - 0.3, 0.0, 0.0]])
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(returns, (expected + torch.tensor([[0.5, 0.4, 0.2], [0.3, 0.0, 0.0]])) * mask)
    # rewards per token: -beta * (old - ref) everywhere, plus the score at each row's last token
    old = torch.log(torch.tensor([[0.5, 0.5, 0.5], [0.4, 0.1, 0.1]]))
    ref = torch.log(torch.tensor([[0.25, 0.5, 0.5], [0.4, 0.1, 0.1]]))
    per_token, k1 = token_rewards(torch.tensor([1.0, 0.0]), old, ref, mask, beta=0.1)
    torch.testing.assert_close(per_token, torch.tensor([[-0.1 * math.log(2), 0.0, 1.0], [0.0, 0.0, 0.0]]))
    assert float(k1[0, 0]) == pytest.approx(math.log(2))
    white = whiten(torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]]), mask)
    std = torch.tensor([1.0, 2.0, 3.0, 4.0]).std()
    torch.testing.assert_close(white[0], (torch.tensor([1.0, 2.0, 3.0]) - 2.5) / std)
    assert float(white[1, 1]) == 0.0


def test_ppo_clipped_policy_and_value_losses_hand_computed():
    # tokens: ratio 1.5 with A = +1 (clipped above), 0.5 with A = -2 (clipped below), 1.1 with A = +1 (inside)
    old = torch.zeros(1, 3)
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]])).requires_grad_(True)
    adv = torch.tensor([[1.0, -2.0, 1.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, stats = clipped_loss(logp, old, None, adv, mask, beta=0.0, epsilon=0.2)
    # -min(r A, clip(r) A): -1.2, -min(-1.0, -1.6) = 1.6, -1.1; mean over the 3 tokens
    assert float(loss) == pytest.approx((-1.2 + 1.6 - 1.1) / 3, rel=1e-6)
    assert (stats.low_clipped, stats.high_clipped, stats.region_clipped, stats.num_tokens) == (1, 1, 2, 3)
    assert stats.approx_kl_sum == pytest.approx(0.5 * sum(math.log(r) ** 2 for r in (1.5, 0.5, 1.1)), rel=1e-6)
    loss.backward()  # clipped tokens have no gradient; the third: -A * ratio / 3
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0, 0.0, -1.1 / 3]]))
    # asymmetric: epsilon_high 0.6 lets ratio 1.5 through
    _, stats = clipped_loss(logp.detach(), old, None, adv, mask, beta=0.0, epsilon=0.2, epsilon_high=0.6)
    assert (stats.low_clipped, stats.high_clipped) == (1, 0)
    # value: V 0.9 (old 0.5, clipped to 0.7), return 1.0 -> max((0.1)^2, (0.3)^2) = 0.09 -> 0.5 * 0.09
    values = torch.tensor([[0.9, 0.5]])
    v_loss, v_stats = value_loss(values, torch.tensor([[0.5, 0.5]]), torch.tensor([[1.0, 0.0]]),
                                 torch.tensor([[True, True]]), cliprange_value=0.2)
    assert float(v_loss) == pytest.approx((0.5 * 0.09 + 0.5 * 0.25) / 2, rel=1e-6)
    assert v_stats.clipped == 1 and v_stats.vpred_sum == pytest.approx(1.4)


def test_clipped_loss_with_its_own_old_logprobs_is_the_on_policy_loss_bit_for_bit():
    torch.manual_seed(0)
    logp = (torch.randn(4, 5) - 2).requires_grad_(True)
    ref, adv, mask = torch.randn(4, 5) - 2, torch.randn(4), torch.rand(4, 5) > 0.3
    today, _ = hrpo_loss(logp, ref, adv, mask, 0.005)
    clipped, stats = clipped_loss(logp, logp.detach(), ref, adv, mask, 0.005, epsilon=0.2)
    assert torch.equal(today, clipped) and stats.region_clipped == 0
    assert torch.equal(torch.autograd.grad(today, logp)[0], torch.autograd.grad(clipped, logp)[0])


# ----------------------------------------------------------------------------------------------- training steps

def _todays_update(trainer, rollout, rewards, advantages, ref_logprobs, temperature):
    """The policy update of train_step as it was before num_iterations/algo existed (one process)."""
    cfg, model = trainer.cfg, trainer.model
    model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    n = rollout.completion_ids.shape[0]
    policy_sum = kl_sum = loss_sum = 0.0
    diffs = []
    for i in range(0, n, cfg.micro_batch_size):
        mb = slice(i, min(n, i + cfg.micro_batch_size))
        part = rollout.select(mb)
        embeds, _ = rollout_inputs_embeds(model, trainer.gate, part, mode=cfg.mode)
        logprobs = completion_logprobs(model, part, embeds, temperature, cfg.group_size)
        loss, stats = hrpo_loss(logprobs, None if ref_logprobs is None else ref_logprobs[mb], advantages[mb],
                                part.completion_mask, cfg.beta, num_sequences=n)
        loss.backward()
        loss_sum += float(loss.detach())
        policy_sum += stats.policy_loss_sum
        kl_sum += stats.kl_sum
        diffs.append((logprobs.detach() - part.logprobs).abs()[part.completion_mask])
    params = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm))
    skipped = not (math.isfinite(grad_norm) and math.isfinite(loss_sum))
    trainer.optimizer.zero_grad(set_to_none=True) if skipped else trainer.optimizer.step()
    return UpdateResult(loss=loss_sum, policy_loss=policy_sum / n, kl=kl_sum / n, grad_norm=grad_norm,
                        skipped=int(skipped), logp_diffs=torch.cat(diffs))


def _trainable(trainer):
    out = {n: p.detach().clone() for n, p in lora_parameters(trainer.model)}
    if trainer.gate is not None:
        out.update({f"gate.{n}": p.detach().clone() for n, p in trainer.gate.named_parameters()})
    return out


def test_default_step_is_todays_step_bit_for_bit(tmp_path, tiny_model_dirs, monkeypatch):
    import hrpo.trainer

    settings = dict(beta=0.05, lr=1e-2, gate_lr=1e-2, micro_batch_size=3)  # 3 micro-batches, ragged
    new = _trainer(tmp_path / "new", tiny_model_dirs, **settings)
    new_metrics = [train_step(new) for _ in range(2)]
    old = _trainer(tmp_path / "old", tiny_model_dirs, **settings)
    monkeypatch.setattr(hrpo.trainer, "update_policy", _todays_update)
    old_metrics = [train_step(old) for _ in range(2)]
    a, b = _trainable(new), _trainable(old)
    assert a.keys() == b.keys() and any("lora_B" in k and float(v.abs().max()) > 0 for k, v in a.items())
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for m_new, m_old in zip(new_metrics, old_metrics):
        for key in ("loss", "policy_loss", "kl", "grad_norm", "reward", "sampling/logp_difference/max"):
            assert m_new[key] == m_old[key], key
        assert not any(k.startswith(("clip_ratio/", "policy/", "val/")) for k in m_new)


def test_two_iterations_clip_where_the_ratio_leaves_the_range(tmp_path, tiny_model_dirs):
    # a large learning rate and a tiny epsilon: after the first update almost every ratio is outside [1-e, 1+e]
    trainer = _trainer(tmp_path, tiny_model_dirs, num_iterations=2, epsilon=1e-4, lr=5e-2, gate_lr=5e-2,
                       beta=0.0, max_grad_norm=0.0, tis_cap=2.0)
    before = _trainable(trainer)
    metrics = train_step(trainer)
    assert metrics["frac_reward_zero_std"] < 1.0
    low, high, region = (metrics[f"clip_ratio/{k}_mean"] for k in ("low", "high", "region"))
    assert region == pytest.approx(low + high) and region > 0.1  # of both updates' tokens: the second clips
    assert region <= 0.5 + 1e-6  # the first update is at ratio 1 and never clips
    assert metrics["policy/approxkl"] > 0
    is_min, is_mean, is_max = (metrics[f"sampling/importance_sampling_ratio/{k}"] for k in ("min", "mean", "max"))
    assert 0.99 < is_min <= is_mean <= is_max <= 2.0  # fp32: sampler and trainer agree, weights ~1
    assert any(not torch.equal(v, before[k]) for k, v in _trainable(trainer).items())


def test_ppo_in_hybrid_mode_trains_lora_gate_and_value_head(tmp_path, tiny_model_dirs):
    trainer = _trainer(tmp_path, tiny_model_dirs, algo="ppo", num_iterations=2, num_mini_batches=2, lr=1e-2,
                       gate_lr=1e-2, lambda_lr=1e-2, value_lr=1e-2, beta=0.05)
    assert [g["name"] for g in trainer.optimizer.param_groups] == ["lora", "gate", "Lambda", "value"]
    with torch.no_grad():
        for name, p in lora_parameters(trainer.model):
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    gate_before = {n: p.detach().clone() for n, p in trainer.gate.named_parameters()}
    metrics = train_step(trainer)
    for key in ("objective/kl", "policy/clipfrac", "val/clipfrac", "loss/value", "val/vpred", "policy/approxkl",
                "clip_ratio/region_mean", "kl", "loss", "grad_norm"):
        assert math.isfinite(metrics[key]), key
    assert metrics["loss/value"] > 0  # V starts at 0 and the rewards are not all 0
    assert float(trainer.value_head.linear.weight.detach().abs().max()) > 0
    for name, p in trainer.gate.named_parameters():
        assert not torch.equal(p, gate_before[name]), name


# ----------------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("flags, message", [
    (["--epsilon", "0"], "epsilon=0.0: must be > 0"),
    (["--epsilon", "-0.1"], "epsilon=-0.1: must be > 0"),
    (["--epsilon-high", "0"], "epsilon_high=0.0: must be > 0"),
    (["--gamma", "1.5"], "gamma=1.5: must be in [0, 1]"),
    (["--lam", "-0.1"], "lam=-0.1: must be in [0, 1]"),
    (["--num-iterations", "0"], "num_iterations=0: must be >= 1"),
    (["--num-mini-batches", "3"], "must divide the 8 sequences"),
    (["--tis-cap", "0.5"], "tis_cap=0.5: must be >= 1"),
    (["--cliprange-value", "0"], "cliprange_value=0.0: must be > 0"),
    (["--vf-coef", "-1"], "vf_coef=-1.0: must be >= 0"),
    (["--algo", "sft", "--mode", "hybrid"], "mode='hybrid': SFT trains on gold text"),
])
def test_bad_algorithm_settings_fail_with_a_clear_error(tmp_path, capsys, flags, message):
    argv = ["train", "--model", str(tmp_path / "absent"), "--prompts-per-step", "2", "--group-size", "4",
            "--output-dir", str(tmp_path / "run"), *flags]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not (tmp_path / "run").exists()


def test_unknown_algo_is_refused_by_the_parser(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--algo", "dpo"])
    assert exit_info.value.code == 2 and "invalid choice: 'dpo'" in capsys.readouterr().err


def test_resume_cannot_change_the_algorithm(tmp_path):
    from hrpo.config import save_yaml

    run = tmp_path / "run"  # what resume_config reads: config.yaml and a checkpoint directory
    (run / "checkpoint-2").mkdir(parents=True)
    save_yaml(build_config(cli_values={"output_dir": str(run), "max_steps": 2}), run / "config.yaml")
    with pytest.raises(ConfigError, match="algo='grpo'; --resume cannot change it to 'ppo'"):
        resume_config(run, {"algo": "ppo", "max_steps": 3})
    assert resume_config(run, {"num_iterations": 2, "max_steps": 3}).num_iterations == 2  # K may change
