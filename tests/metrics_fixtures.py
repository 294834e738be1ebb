"""Synthetic run directories (config.yaml + metrics.jsonl) with values simple enough to check by hand.

- ``hybrid-a`` (hybrid, 30 steps): reward s/20 up to step 20, then (40-s)/20; eval/arithmetic/accuracy 0.2, 0.6,
  0.5 at steps 10, 20, 30; hidden_ratio 0.1 + 0.01 s; length 20 + s; kl 0.001 s; step time 2 s; grad_norm NaN
  at step 5.
- ``discrete-b`` (discrete, 25 steps): reward 0.5, hidden_ratio 0, length 30, kl 0, step time 1.5 s; a
  half-written last line and a blank line.
- ``latent-c`` (latent, 6 steps): reward 0,1,0,1,1,1; eval/gsm8k/accuracy 0.25 at step 6; no timing, no
  grad_norm.
"""

from __future__ import annotations

import json
from pathlib import Path

from hrpo.config import build_config, save_yaml


def _write_run(root: Path, name: str, mode: str, rows: list[dict], tail: str = "") -> Path:
    run = root / name
    run.mkdir(parents=True)
    save_yaml(build_config({}, {"mode": mode, "output_dir": str(run)}), run / "config.yaml")
    text = "".join(json.dumps(r) + "\n" for r in rows) + tail
    (run / "metrics.jsonl").write_text(text)
    return run


def _common(step: int) -> dict:
    return {"step": step, "reward_std": 0.1, "frac_reward_zero_std": 0.5, "completions/clipped_ratio": 0.0,
            "loss": 0.01, "policy_loss": 0.0, "learning_rate": 1e-4, "embeds_ratio": 0.9,
            "thinking/mean_length": 5.0, "tokens_per_s": 100.0, "sample_completion": f"#### {step}"}


def make_runs(root: Path) -> list[Path]:
    a_rows = []
    for s in range(1, 31):
        row = {**_common(s), "reward": (s if s <= 20 else 40 - s) / 20, "hidden_ratio": 0.1 + 0.01 * s,
               "completions/mean_length": 20.0 + s, "kl": 0.001 * s, "timing/step_s": 2.0,
               "grad_norm": float("nan") if s == 5 else 0.5 + 0.01 * s}
        if s % 10 == 0:
            row["eval/arithmetic/accuracy"] = {10: 0.2, 20: 0.6, 30: 0.5}[s]
            row["eval/arithmetic/format_rate"] = 1.0
        a_rows.append(row)
    b_rows = [{**_common(s), "reward": 0.5, "hidden_ratio": 0.0, "completions/mean_length": 30.0, "kl": 0.0,
               "timing/step_s": 1.5, "grad_norm": 0.3} for s in range(1, 26)]
    c_rewards = [0, 1, 0, 1, 1, 1]
    c_rows = [{**_common(s), "reward": float(c_rewards[s - 1]), "hidden_ratio": 0.2,
               "completions/mean_length": 10.0, "kl": 0.002} for s in range(1, 7)]
    c_rows[-1]["eval/gsm8k/accuracy"] = 0.25
    return [_write_run(root, "hybrid-a", "hybrid", a_rows),
            _write_run(root, "discrete-b", "discrete", b_rows, tail='\n{"step": 26, "rewa'),
            _write_run(root, "latent-c", "latent", c_rows)]
