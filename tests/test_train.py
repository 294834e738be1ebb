"""One training step updates what it should (and nothing else); resume is exact."""

import pytest
import torch

from helpers import register, tiny_train_args
from hrpo.config import build_config
from hrpo.trainer import reference_logprobs, setup, train, train_step
from hrpo.rollout import generate
from hrpo.trainer import batch_examples, sampling_config
from hrpo.text import encode_prompts
from hrpo.models import lora_parameters

register()


def _trainer(tmp_path, tiny_model_dirs, **overrides):
    values = {**tiny_train_args(tiny_model_dirs["qwen2"], tmp_path / "run"), **overrides}
    return setup(build_config(cli_values=values), log=lambda *a: None)


def _fixed_rollout(trainer):
    cfg = trainer.cfg
    examples = [ex for ex in batch_examples(trainer, 0) for _ in range(cfg.group_size)]
    ids, mask = encode_prompts(trainer.tokenizer, [trainer.task.messages(e) for e in examples], 64)
    return generate(trainer.model, ids, mask, sampling_config(cfg), gate=trainer.gate, matcher=trainer.matcher,
                    eos_token_ids=trainer.eos_ids, pad_token_id=trainer.tokenizer.pad_token_id,
                    generator=torch.Generator().manual_seed(0))


def test_one_step_changes_every_lora_and_gate_parameter_but_not_the_reference(tmp_path, tiny_model_dirs):
    trainer = _trainer(tmp_path, tiny_model_dirs, weight_decay=0.0, lr=1e-3, gate_lr=1e-3, lambda_lr=1e-3)
    with torch.no_grad():  # LoRA B starts at 0 (so A has no gradient yet); move it to a mid-training state
        for name, p in lora_parameters(trainer.model):
            if "lora_B" in name:
                p.normal_(0.0, 0.01)
    rollout = _fixed_rollout(trainer)
    ref_before = reference_logprobs(trainer, rollout, 1.0)
    lora_before = {n: p.detach().clone() for n, p in lora_parameters(trainer.model)}
    gate_before = {n: p.detach().clone() for n, p in trainer.gate.named_parameters()}
    frozen_before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if not p.requires_grad}

    metrics = train_step(trainer)

    assert metrics["frac_reward_zero_std"] < 1.0 and metrics["grad_norm"] > 0
    unchanged = [n for n, p in lora_parameters(trainer.model) if torch.equal(p, lora_before[n])]
    assert not unchanged, f"LoRA parameters not updated: {unchanged[:5]}"
    assert len(lora_before) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    for name in ("gate_r.weight", "gate_r.bias", "gate_i.weight", "gate_i.bias", "Lambda"):
        assert not torch.equal(dict(trainer.gate.named_parameters())[name], gate_before[name]), name
    for n, p in trainer.model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen_before[n]), n
    assert torch.equal(reference_logprobs(trainer, rollout, 1.0), ref_before)


def test_discrete_mode_has_no_gate_and_trains_lora(tmp_path, tiny_model_dirs):
    trainer = _trainer(tmp_path, tiny_model_dirs, mode="discrete")
    assert trainer.gate is None and len(trainer.optimizer.param_groups) == 1
    metrics = train_step(trainer)
    assert metrics["hidden_ratio"] == 0.0 and metrics["thinking/mean_length"] == 0.0


def test_metrics_have_trl_names_and_hrpo_extras(tmp_path, tiny_model_dirs):
    metrics = train_step(_trainer(tmp_path, tiny_model_dirs))
    for key in ("reward", "reward_std", "frac_reward_zero_std", "completions/mean_length",
                "completions/clipped_ratio", "kl", "loss", "grad_norm", "learning_rate", "hidden_ratio",
                "embeds_ratio", "timing/rollout_s", "timing/reference_s", "timing/policy_s", "tokens_per_s"):
        assert key in metrics, key
    assert 0.0 < metrics["hidden_ratio"] < 0.2  # near-pure token embeddings at init
    assert metrics["sampling/logp_difference/max"] < 1e-4  # fp32: rollout and training agree


def _final_state(run_dir):
    from safetensors.torch import load_file

    state = {**load_file(str(run_dir / "checkpoint-4" / "adapter_model.safetensors")),
             **load_file(str(run_dir / "checkpoint-4" / "gate.safetensors"))}
    if (run_dir / "checkpoint-4" / "value_head.safetensors").is_file():
        state.update({f"value.{k}": v for k, v in
                      load_file(str(run_dir / "checkpoint-4" / "value_head.safetensors")).items()})
    optimizer = torch.load(run_dir / "checkpoint-4" / "trainer_state.pt", weights_only=True)["optimizer"]
    for i, moments in optimizer["state"].items():
        state.update({f"adam.{i}.{k}": v for k, v in moments.items()})
    return state


# PPO: a value head and its optimizer state; one epoch of two mini-batches (two updates per step)
@pytest.mark.parametrize("algo", [{}, {"algo": "ppo", "num_iterations": 1, "num_mini_batches": 2,
                                       "value_lr": 1e-2}], ids=["grpo", "ppo"])
def test_resume_is_exact(tmp_path, tiny_model_dirs, algo):
    base = {**tiny_train_args(tiny_model_dirs["llama"], tmp_path / "straight", steps=4), **algo}
    straight = train(build_config(cli_values=base), quiet=True)
    split_args = {**base, "output_dir": str(tmp_path / "split")}
    split = train(build_config(cli_values=split_args), quiet=True, stop_at=2)  # "interrupted" after step 2
    assert (split / "checkpoint-2").is_dir() and not (split / "checkpoint-4").exists()
    from hrpo.trainer import resume_config

    train(resume_config(split, {}), resume=split, quiet=True)
    a, b = _final_state(straight), _final_state(split)
    assert a.keys() == b.keys() and ("value.linear.weight" in a) == bool(algo)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)
    lines_a = (straight / "metrics.jsonl").read_text().splitlines()
    lines_b = (split / "metrics.jsonl").read_text().splitlines()
    assert len(lines_a) == len(lines_b) == 4
    import json

    for la, lb in zip(lines_a, lines_b):
        ma, mb = json.loads(la), json.loads(lb)
        assert ma["reward"] == mb["reward"] and ma["loss"] == mb["loss"]
        assert ma.get("loss/value") == mb.get("loss/value")


def test_periodic_eval_logs_accuracy(tmp_path, tiny_model_dirs):
    from pathlib import Path
    import json

    fixture = Path(__file__).parent / "fixtures" / "gsm8k.jsonl"
    values = {**tiny_train_args(tiny_model_dirs["llama"], tmp_path / "run", steps=2), "eval_task": "gsm8k",
              "eval_data": str(fixture), "eval_every": 1, "eval_limit": 3}
    run = train(build_config(cli_values=values), quiet=True)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= m["eval/gsm8k/accuracy"] <= 1.0 for m in lines) and len(lines) == 2


def test_bad_training_data_fails_before_model_load(tmp_path):
    from hrpo.data import DataError
    import pytest

    bad = tmp_path / "train.jsonl"
    bad.write_text('{"question": "q1", "answer": "#### 3"}\n{"question": 5, "answer": "#### 4"}\n')
    cfg = build_config(cli_values={"model": str(tmp_path / "no-such-model"), "task": "gsm8k", "data": str(bad),
                                   "output_dir": str(tmp_path / "run")})
    with pytest.raises(DataError, match=r"train.jsonl.*line 2.*question"):
        setup(cfg, log=lambda *a: None)


def test_ablation_modes_train_without_a_gate(tmp_path, tiny_model_dirs):
    import math
    import pytest

    for mode in ("latent", "hidden"):
        trainer = _trainer(tmp_path / mode, tiny_model_dirs, mode=mode)
        assert trainer.gate is None and len(trainer.optimizer.param_groups) == 1
        before = {n: p.detach().clone() for n, p in lora_parameters(trainer.model) if "lora_B" in n}
        metrics = [train_step(trainer) for _ in range(2)]
        assert metrics[0]["thinking/mean_length"] > 0
        assert metrics[0]["hidden_ratio"] == pytest.approx(1.0)  # no token embedding at thinking positions
        assert all(math.isfinite(m["loss"]) for m in metrics)
        assert any(not torch.equal(p, before[n]) for n, p in lora_parameters(trainer.model) if n in before)
