"""One RL step of TRL's GRPOTrainer and of `hrpo train` (discrete and hybrid), side by side on the same work. JSON.

    pip install -e ".[bench]"          # TRL, for this benchmark only
    python benchmarks/vs_trl.py [--steps 6] [--new-tokens 64] [--prompts 2] [--group 4]
                                [--only trl,discrete,hybrid,roofline]

``roofline`` runs benchmarks/decode_roofline.py on the same rollout: the decode step against this machine's
measured roofline. ``--only ...,discrete_onednn,hybrid_onednn`` (or ``_aten``) adds hrpo with the decode step on
the aten layers and oneDNN's GEMMs (or F.linear) and sampling, latent and gate on aten ops:
``OPTIONS.native_layers``, ``.native_sampling`` and ``.native_hybrid`` False and ``OPTIONS.cpu_linear``, what hrpo's
own CPU kernels are worth, in the same invocation.

The work (the issue's): the embedded SmolLM2-135M-Instruct in fp32, LoRA r32 / alpha 64 on all seven projections,
2 prompts x 4 completions of the arithmetic task in the model's chat template, every completion exactly
--new-tokens tokens (EOS suppressed on both sides: TRL with ``min_new_tokens``, hrpo with no EOS id),
temperature 0.5, top-k 50, beta 0.005 (so both run the reference forward), one update per batch, no gradient
checkpointing. Each trainer runs in its own subprocess, one after the other; per-phase figures are medians over
steps 2..N (step 1 warms up). "rollout" is TRL's ``model.generate`` / hrpo's rollout; "rest" is the step minus
it (reference + policy forward/backward + optimizer). Ratios are TRL's time over hrpo's (> 1: hrpo faster).
``hybrid_rollout_cost_over_discrete`` compares the two trainers' rollouts, run minutes apart;
``..._paired`` is decode_roofline.py's, from rollouts that take turns (a change in the host's load falls on both).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import torch

from decode_roofline import cpu_name  # this directory

TRAINERS = ("trl", "discrete", "hybrid", "discrete_onednn", "hybrid_onednn", "discrete_aten", "hybrid_aten")
LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _prompts(n: int) -> list[list[dict]]:
    from hrpo import tasks

    task = tasks.get("arithmetic")
    return [task.messages(e) for e in task.examples(n, seed=0)]


def _medians(steps: list[dict]) -> dict:
    keep = steps[1:] if len(steps) > 1 else steps
    out = {key: statistics.median(s[key] for s in keep) for key in keep[0]}
    out["rest_s"] = out["step_s"] - out["rollout_s"]
    return out


def run_trl(args) -> dict:
    """TRL's GRPOTrainer on the work above; the rollout is timed around the policy's own ``generate``."""
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from hrpo.models import load_model

    loaded = load_model("embedded", dtype=torch.float32, device=torch.device("cpu"))
    model, tokenizer = loaded.model, loaded.tokenizer
    prompts = _prompts(args.prompts * args.steps)
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])
    steps: list[dict] = []
    generate_s = [0.0]

    def timed_generate(generate):
        def run(*a, **kw):
            start = time.perf_counter()
            try:
                return generate(*a, **kw)
            finally:
                generate_s[0] += time.perf_counter() - start
        return run

    class StepTimes(TrainerCallback):
        def on_step_begin(self, *_, **__):
            generate_s[0], self.start = 0.0, time.perf_counter()

        def on_step_end(self, *_, **__):
            steps.append({"step_s": time.perf_counter() - self.start, "rollout_s": generate_s[0]})

    def reward(completions, **_):
        return [float(len(c[0]["content"]) % 3) for c in completions]  # any number: the work is the same

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(output_dir=out, per_device_train_batch_size=args.prompts * args.group,
                            num_generations=args.group, max_completion_length=args.new_tokens, temperature=0.5,
                            top_k=50, top_p=1.0, beta=0.005, learning_rate=1e-5, max_steps=args.steps,
                            gradient_accumulation_steps=1, num_iterations=1, logging_steps=1, report_to="none",
                            save_strategy="no", use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False,
                            generation_kwargs={"min_new_tokens": args.new_tokens}, dataloader_num_workers=0,
                            disable_tqdm=True, seed=0, shuffle_dataset=False)
        trainer = GRPOTrainer(model=model, reward_funcs=reward, args=config, train_dataset=dataset,
                              processing_class=tokenizer,
                              peft_config=LoraConfig(r=32, lora_alpha=64, lora_dropout=0.0,
                                                     target_modules=LORA_TARGETS, task_type="CAUSAL_LM"),
                              callbacks=[StepTimes()])
        policy = trainer.model
        policy.generate = timed_generate(policy.generate)  # this benchmark's stopwatch, on this object only
        trainer.train()
    return {"version": trl.__version__, **_medians(steps), "steps": steps}


def run_hrpo(args, name: str) -> dict:
    """`hrpo train`'s step on the same work (the trainer's own per-phase timings)."""
    from importlib.metadata import version

    from hrpo.config import build_config
    from hrpo.engines.options import OPTIONS
    from hrpo.trainer import setup, train_step

    mode, _, kernel = name.partition("_")
    if kernel:  # the decode step on aten ops, its GEMMs on oneDNN or F.linear: no hrpo kernel anywhere
        OPTIONS.native_layers, OPTIONS.cpu_linear = False, kernel
        OPTIONS.native_sampling = OPTIONS.native_hybrid = False

    with tempfile.TemporaryDirectory() as out:
        cfg = build_config(cli_values={
            "model": "embedded", "dtype": "float32", "mode": mode, "max_new_tokens": args.new_tokens,
            "prompts_per_step": args.prompts, "group_size": args.group, "micro_batch_size": args.prompts * args.group,
            "temperature": 0.5, "top_k": 50, "top_p": 1.0, "beta": 0.005, "lora_r": 32, "lora_alpha": 64,
            "max_steps": args.steps, "save_every": 10 ** 6, "eval_every": 0, "gradient_checkpointing": False,
            "output_dir": os.path.join(out, "run")})
        trainer = setup(cfg, log=lambda *a: None)
        trainer.eos_ids = [-1]  # no EOS: every completion has exactly max_new_tokens tokens, as on TRL's side
        steps = []
        for _ in range(args.steps):
            row = train_step(trainer)
            steps.append({"step_s": row["timing/step_s"], "rollout_s": row["timing/rollout_s"],
                          "reference_s": row["timing/reference_s"], "policy_s": row["timing/policy_s"]})
            assert row["completions/mean_length"] == args.new_tokens, row["completions/mean_length"]
    return {"version": version("hrpo"), "cpu_linear": OPTIONS.cpu_linear, "native_layers": OPTIONS.native_layers,
            "native_sampling": OPTIONS.native_sampling, "native_hybrid": OPTIONS.native_hybrid,
            **_medians(steps), "steps": steps}


def worker(args) -> None:
    torch.manual_seed(0)
    from hrpo.progress import quiet_libraries

    quiet_libraries()
    result = run_trl(args) if args.worker == "trl" else run_hrpo(args, args.worker)
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--only", default="trl,discrete,hybrid,roofline", help="What to run (comma list of "
                                                                               f"{', '.join(TRAINERS)}, roofline).")
    parser.add_argument("--worker", choices=TRAINERS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    report = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "dtype": "float32",
              "work": {"prompts": args.prompts, "group": args.group, "new_tokens": args.new_tokens,
                       "steps": args.steps, "median_over": f"steps 2..{args.steps}"}}
    for name in args.only.split(","):
        cmd = [sys.executable, __file__, "--worker", name, "--steps", str(args.steps), "--new-tokens",
               str(args.new_tokens), "--prompts", str(args.prompts), "--group", str(args.group)]
        if name == "roofline":
            cmd = [sys.executable, os.path.join(os.path.dirname(__file__), "decode_roofline.py"), "--new-tokens",
                   str(args.new_tokens), "--prompts", str(args.prompts), "--group", str(args.group), "--json-line"]
        print(f"running {name} ...", file=sys.stderr, flush=True)
        done = subprocess.run(cmd, capture_output=True, text=True)
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            sys.exit(f"{name} failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
        report[name] = json.loads(lines[-1][len("RESULT "):])
    if "trl" in report:
        report["ratios"] = {f"trl_over_{m}_{phase}": report["trl"][f"{phase}_s"] / report[m][f"{phase}_s"]
                            for m in TRAINERS[1:] if m in report for phase in ("step", "rollout", "rest")}
    if "roofline" in report:
        for m in ("discrete", "hybrid"):
            report.setdefault("ratios", {}).update({f"decode_step_over_roofline_{m}": report["roofline"][m]["ratio"],
                                                    f"decode_step_over_roofline_{m}_best":
                                                        report["roofline"][m]["best"]["ratio"]})
        if "hybrid_rollout_cost_over_discrete" in report["roofline"]:  # paired rollouts, modes taking turns
            report["ratios"]["hybrid_rollout_cost_over_discrete_paired"] = (
                report["roofline"]["hybrid_rollout_cost_over_discrete"])
    if "discrete" in report and "hybrid" in report:
        report.setdefault("ratios", {})["hybrid_rollout_cost_over_discrete"] = (
            report["hybrid"]["rollout_s"] / report["discrete"]["rollout_s"] - 1.0)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
