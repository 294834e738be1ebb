"""Supervised fine-tuning on gold solutions (``hrpo sft``, ``algo sft``): the SFT baseline and a starting point
for RL (``hrpo train --init-adapter RUN``).

Each step takes ``prompts_per_step`` training examples (the same shuffled order as RL), builds the same chat
prompt RL samples from, and trains LoRA by teacher forcing on the example's gold solution written in the task's
answer format (reasoning, then the marker, then the answer; see :func:`gold_solution`), followed by EOS:

    loss = - sum over completion tokens of log p(token) / number of completion tokens in the step

Prompt tokens and padding carry no loss. Log-probs are taken at temperature 1 with plain token embeddings (no
latent mixing: gold text has no sampling distributions), so an SFT run trains in ``mode discrete``. The run
directory, metrics (``loss``, ``grad_norm``, ``learning_rate``, tokens/s), checkpoints, resume, periodic eval and
plots are the RL loop's (:func:`hrpo.trainer.train` calls :func:`sft_step` instead of its RL step).
"""

from __future__ import annotations

import re
import time
import warnings

import torch

from .data import DataError
from .distributed import Prepared, backward, gradient_sync, local_prompts, reduce_metrics
from .objective import completion_logprobs, rollout_inputs_embeds
from .sampling import Rollout
from .text import encode_prompts
from .update import apply_update, micro_batches

_CALCULATOR = re.compile(r"<<[^<>]*>>")  # GSM8K's calculator annotations: 48/2 = <<48/2=24>>24


def _join(reasoning: str, answer: str, marker: str) -> str:
    """``reasoning MARKER answer`` in the marker's format ('</think>' gets '<think>...</think> answer')."""
    reasoning, answer = reasoning.strip(), str(answer).strip()
    if marker == "</think>":
        return f"<think>{reasoning}</think> {answer}"
    return f"{reasoning} {marker} {answer}".strip()


def _gold_answer(task, example: dict):
    gold = task.gold(example) if callable(getattr(task, "gold", None)) else example.get("gold",
                                                                                       example.get("answer"))
    if isinstance(gold, (list, tuple)):
        gold = gold[0] if gold else None
    return None if gold is None else str(gold)


def gold_solution(task, example: dict) -> str:
    """The completion SFT trains on, in the task's answer format (its ``marker``):

    1. ``task.solution(example)`` when the task has it and it returns text (the embedded arithmetic task:
       ``14 + 23 = 37 #### 37``, the format of its 2-shot prompt);
    2. else the example's ``solution`` (GSM8K's answer field: reasoning ``#### N``, calculator annotations
       removed; MATH's solution), as reasoning, then the marker, then the answer;
    3. else the marker and the gold answer alone (a multiple-choice letter, a QA answer, a generic task's answer
       field): nothing to learn about reasoning, only the format and the answer.
    Raises DataError when the example has no gold answer at all.
    """
    marker = task.marker
    own = getattr(task, "solution", None)
    if callable(own):
        text = own(example)
        if isinstance(text, str) and text.strip():
            return text.strip()
    answer = _gold_answer(task, example)
    solution = example.get("solution")
    if isinstance(solution, str) and solution.strip():
        reasoning, sep, tail = _CALCULATOR.sub("", solution).rpartition("####")
        if not sep:
            reasoning, tail = solution, answer
        if tail is not None and str(tail).strip():
            return _join(reasoning, tail, marker)
    if answer is None or not answer.strip():
        raise DataError(f"task '{task.name}': a training example has no solution and no gold answer, so SFT has "
                        f"nothing to train on: {str(example)[:120]}")
    return _join("", answer, marker)


def sft_batch(trainer, examples: list[dict]) -> tuple[Rollout, list[str], float]:
    """A Rollout-shaped batch of ``examples``: the RL prompt (left-padded) and the gold solution + EOS as the
    completion (right-padded, at most ``max_new_tokens``), no thinking positions. Also returns the gold texts
    and the fraction of solutions cut at ``max_new_tokens``."""
    cfg, tok = trainer.cfg, trainer.tokenizer
    prompt_ids, prompt_mask = encode_prompts(tok, [trainer.task.messages(ex) for ex in examples],
                                             cfg.max_prompt_length, trainer.device)
    eos = tok.eos_token_id if tok.eos_token_id in trainer.eos_ids else trainer.eos_ids[0]
    texts = [gold_solution(trainer.task, ex) for ex in examples]
    rows = [tok(text, add_special_tokens=False)["input_ids"] + [eos] for text in texts]
    cut = sum(len(r) > cfg.max_new_tokens for r in rows) / max(len(rows), 1)
    rows = [r[:cfg.max_new_tokens] for r in rows]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = True
    ids, mask = ids.to(trainer.device), mask.to(trainer.device)
    batch = Rollout(prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=ids, completion_mask=mask,
                    thinking_mask=torch.zeros_like(mask), latents=None,
                    logprobs=torch.zeros(mask.shape, device=trainer.device),
                    gate_mean=torch.ones(mask.shape, device=trainer.device))
    return batch, texts, cut


def sft_loss(logprobs: torch.Tensor, completion_mask: torch.Tensor, num_tokens: float) -> torch.Tensor:
    """Negative log-likelihood of the completion tokens (``logprobs`` (B, C), ``completion_mask`` (B, C)) divided
    by ``num_tokens``, the completion tokens of the whole step, so micro-batch losses add up to the step's
    token mean."""
    return -(logprobs * completion_mask.float()).sum() / num_tokens


def sft_step(trainer, examples: list[dict]) -> dict:
    """One supervised step on ``examples`` (the step's prompts); returns its metrics."""
    cfg, model = trainer.cfg, trainer.model
    t0 = time.perf_counter()
    batch, texts, cut = sft_batch(trainer, local_prompts(examples, trainer.dist))
    num_tokens = float(batch.completion_mask.sum().clamp_min(1))
    model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    prepared = trainer.prepared or Prepared(model=model, gate=None, optimizer=trainer.optimizer)
    loss_sum = 0.0
    batches = micro_batches(batch.completion_ids.shape[0], cfg.micro_batch_size)
    for i, mb in enumerate(batches):
        part = batch.select(mb)
        with gradient_sync(trainer.dist, prepared, sync=i == len(batches) - 1):
            embeds, _ = rollout_inputs_embeds(prepared.model, None, part, mode="discrete")
            logprobs = completion_logprobs(prepared.model, part, embeds, 1.0)
            loss = sft_loss(logprobs, part.completion_mask, num_tokens)
            backward(trainer.dist, loss)
        loss_sum += float(loss.detach())
    grad_norm, skipped = apply_update(trainer, loss_sum)
    lr = trainer.scheduler.get_last_lr()[0]
    with warnings.catch_warnings():  # a skipped first update: the schedule still advances, on purpose
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        trainer.scheduler.step()
    trainer.step += 1
    elapsed = time.perf_counter() - t0
    lengths = batch.completion_mask.sum(dim=1).float()
    tokens = int(batch.prompt_mask.sum()) + int(num_tokens)
    metrics = {"step": trainer.step, "loss": loss_sum, "grad_norm": grad_norm, "learning_rate": lr,
               "skipped_update": int(skipped), "completions/mean_length": float(lengths.mean()),
               "completions/truncated_ratio": cut, "num_tokens": int(num_tokens), "timing/step_s": elapsed,
               "tokens_per_s": tokens / max(elapsed, 1e-9), "sample_completion": texts[0][:200]}
    return reduce_metrics(trainer.dist, metrics)
