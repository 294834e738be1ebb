"""Evaluation: batched decoding with the policy's hybrid mixing, scoring with the task, JSON reports.

``evaluate(policy, task, examples, ...)`` works on any :class:`hrpo.policy.Policy`, so the trainer can call it
on its live model and gate. ``write_report`` writes ``eval_<task>.json`` and ``eval_<task>_examples.jsonl``
(always overwritten).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

EXAMPLES_SUFFIX = "_examples.jsonl"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _records(task, examples, idx, texts, lengths, ids, eos_ids) -> list[dict]:
    """One scored record per decoded completion (``idx``: the examples' positions in the input list)."""
    from .scoring import marker_count_ok
    from .tasks import gold_of

    out = []
    for i, text, n, row_ids in zip(idx, texts, lengths, ids):
        ex, n = examples[i], int(n)
        scored = task.score(text, ex)
        format_ok = scored.get("format_ok", marker_count_ok(text, task.marker))  # a user task may leave it out
        rec = {"index": i, "question": ex.get("question"), "gold": gold_of(task, ex), "answer": scored.get("answer"),
               "correct": bool(scored["correct"]), "format_ok": bool(format_ok), "completion": text,
               "completion_tokens": n, "clipped": not (n and row_ids[n - 1] in eos_ids)}
        for key in ("f1", "score"):  # graded scores besides correct/incorrect: averaged in the metrics
            if key in scored:
                rec[key] = float(scored[key])
        for key in ("subject", "id", "level"):
            if ex.get(key) not in (None, ""):
                rec[key] = ex[key]
        out.append(rec)
    return out


def evaluate(policy, task, examples: list[dict], batch_size: int = 32, max_new_tokens: int = 512,
             greedy: bool = True, temperature: float | None = None, progress: bool = True,
             max_prompt_tokens: int | None = 1024, seed: int = 0) -> dict:
    """Decode every example with ``policy`` (hybrid mixing until the task's marker) and score it.

    Batches of ``batch_size`` prompts (sorted by length, left-padded). ``greedy`` takes the argmax token (the
    latent still uses the policy's temperature); otherwise tokens are sampled at ``temperature`` (default: the
    policy's). Returns ``{"metrics": {...}, "records": [...]}``: metrics has accuracy, correct, total,
    format_rate (marker exactly once), mean_completion_tokens, clipped_ratio, hidden_ratio (hybrid),
    tokens_per_s, elapsed_s, plus f1 (QA), score (graded tasks: reasoning-gym, generic) and by_subject (when
    examples carry a subject). Records, in input order: index, question, gold, answer, correct, format_ok,
    completion, completion_tokens, clipped (no EOS) [, f1, score, subject, id, level].
    """
    from .gate import hidden_ratio
    from .policy import generate_ids
    from .progress import progress_bar
    from .text import chat_prompt_ids, decode_completions

    if not examples:
        raise ValueError(f"no examples to evaluate for task '{task.name}'")
    if policy.mode != "discrete" and policy.marker != task.marker:
        policy = dataclasses.replace(policy, marker=task.marker)  # mix latents until the task's marker
    tok = policy.tokenizer
    prompts = [chat_prompt_ids(tok, task.messages(ex), max_prompt_tokens) for ex in examples]
    order = sorted(range(len(examples)), key=lambda i: -len(prompts[i]))
    records: list[dict | None] = [None] * len(examples)
    ratio_sum, ratio_weight, new_tokens = 0.0, 0, 0
    model = policy.model
    was_training = bool(getattr(model, "training", False))  # called from the trainer: no dropout while decoding
    if was_training:
        model.eval()
    try:
        t0 = time.perf_counter()
        with progress_bar(f"eval {task.name}", enabled=progress) as bar:
            job = bar.add_task("eval", total=len(examples), stats="")
            n_correct = 0
            for b, start in enumerate(range(0, len(order), batch_size)):
                idx = order[start:start + batch_size]
                rollout = generate_ids(policy, [prompts[i] for i in idx], max_new_tokens, greedy=greedy,
                                       temperature=temperature, seed=seed + b)
                texts = decode_completions(tok, rollout.completion_ids, rollout.completion_mask)
                lengths, ids = rollout.completion_mask.sum(dim=1).tolist(), rollout.completion_ids.tolist()
                if policy.gate is not None:
                    n_think = int(rollout.thinking_mask.sum())
                    if n_think:
                        ratio_sum += hidden_ratio(rollout.gate_mean, rollout.thinking_mask) * n_think
                        ratio_weight += n_think
                for rec in _records(task, examples, idx, texts, lengths, ids, policy.eos_ids):
                    records[rec["index"]] = rec
                    n_correct += rec["correct"]
                    new_tokens += rec["completion_tokens"]
                done = start + len(idx)
                bar.update(job, advance=len(idx), stats=f"acc {n_correct / done:.3f}")
    finally:
        if was_training:
            model.train()
    elapsed = time.perf_counter() - t0
    return {"metrics": summarize(records, max_new_tokens, elapsed, new_tokens,
                                 ratio_sum / ratio_weight if ratio_weight else None),
            "records": records}


def summarize(records: list[dict], max_new_tokens: int, elapsed_s: float = math.nan, new_tokens: int = 0,
              hidden: float | None = None) -> dict:
    """Aggregate metrics of scored records (see :func:`evaluate`)."""
    total = len(records)
    correct = sum(r["correct"] for r in records)
    metrics = {
        "accuracy": correct / total, "correct": correct, "total": total,
        "format_rate": _mean([float(r["format_ok"]) for r in records]),
        "mean_completion_tokens": _mean([r["completion_tokens"] for r in records]),
        "clipped_ratio": _mean([float(r.get("clipped", r["completion_tokens"] >= max_new_tokens))
                                for r in records]),
        "hidden_ratio": hidden, "elapsed_s": elapsed_s,
        "tokens_per_s": new_tokens / elapsed_s if elapsed_s and elapsed_s > 0 else None,
    }
    for key in ("f1", "score"):
        if any(key in r for r in records):
            metrics[key] = _mean([r.get(key, 0.0) for r in records])
    subjects = sorted({r["subject"] for r in records if r.get("subject")})
    if subjects:
        by_subject = {}
        for s in subjects:
            rows = [r for r in records if r.get("subject") == s]
            hits = sum(r["correct"] for r in rows)
            by_subject[s] = {"accuracy": hits / len(rows), "correct": hits, "total": len(rows)}
        metrics["by_subject"] = by_subject
    return metrics


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def report_paths(output_dir: str | Path, task_name: str) -> tuple[Path, Path]:
    """``(eval_<task>.json, eval_<task>_examples.jsonl)`` in ``output_dir``."""
    out = Path(output_dir)
    return out / f"eval_{task_name}.json", out / f"eval_{task_name}{EXAMPLES_SUFFIX}"


def write_report(result: dict, output_dir: str | Path, task_name: str, meta: dict | None = None) -> tuple[Path,
                                                                                                           Path]:
    """Write ``eval_<task>.json`` ({task, metrics, meta}) and one JSON line per example; overwrites both."""
    json_path, jsonl_path = report_paths(output_dir, task_name)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    report = {"task": task_name, "metrics": result["metrics"],
              "meta": {"timestamp": time.strftime("%Y-%m-%dT%H:%M:%S"), **(meta or {})}}
    json_path.write_text(json.dumps(_json_safe(report), indent=2) + "\n")
    with jsonl_path.open("w") as f:
        for rec in result["records"]:
            f.write(json.dumps(_json_safe(rec), ensure_ascii=False) + "\n")
    return json_path, jsonl_path


def summary_table(rows: list[dict]):
    """A rich Table with one row per task: ``rows`` = [{task, metrics, path}] (the report's file name shown)."""
    from rich.table import Table

    table = Table(title="hrpo eval", caption=f"reports in {Path(rows[0]['path']).parent}" if rows else None)
    for col in ("task", "n", "accuracy", "format", "F1", "tokens", "report"):
        table.add_column(col, justify="left" if col in ("task", "report") else "right")
    for row in rows:
        m = row["metrics"]
        f1 = f"{m['f1']:.3f}" if m.get("f1") is not None else "-"
        table.add_row(row["task"], str(m["total"]), f"{m['accuracy']:.3f}", f"{m['format_rate']:.3f}", f1,
                      f"{m['mean_completion_tokens']:.0f}", Path(row["path"]).name)
    return table
