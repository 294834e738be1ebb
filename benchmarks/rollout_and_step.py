"""Rollout throughput (hybrid vs discrete vs HF generate) and one training step's time split. Prints JSON.

    python benchmarks/rollout_and_step.py [--model embedded] [--batch 8] [--new-tokens 64] [--dtype auto]
        [--engines eager,static]

All decoders run in one process on the same left-padded prompts with the same sampling settings
(temperature 0.5, top-k 50) and decode exactly --new-tokens tokens (EOS ignored), so ratios are comparable.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from hrpo import tasks
from hrpo.config import build_config
from hrpo.gate import HybridGate
from hrpo.models import load_model, resolve_device
from hrpo.precision import choose_dtype
from hrpo.rollout import SamplingConfig, generate, marker_matcher
from hrpo.text import encode_prompts
from hrpo.trainer import quiet_libraries, setup, train_step


def timed_interleaved(fns: dict, repeats: int) -> dict:
    """Median wall time (seconds) of each ``fns[name]()``, run round-robin (A B C A B C ...) after one warm-up
    each, so slow drifts of the machine hit every decoder alike."""
    for fn in fns.values():
        fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def rollout_benchmark(args) -> dict:
    device = resolve_device(args.device)
    lm = load_model(args.model, dtype=getattr(torch, args.dtype), device=device)
    task = tasks.get("arithmetic")
    examples = task.examples(args.batch, seed=0)
    ids, mask = encode_prompts(lm.tokenizer, [task.messages(e) for e in examples], 512, device)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.5, top_k=50)
    hidden = lm.model.get_input_embeddings().weight.shape[1]
    gate = HybridGate(hidden).to(device)
    matcher = marker_matcher(lm.tokenizer, "####", lm.model.get_input_embeddings().weight.shape[0])
    no_eos = [-1]  # never stop early: every decoder produces exactly new_tokens tokens

    def ours(g, engine="auto"):
        return lambda: generate(lm.model, ids, mask, sampling, gate=g, matcher=matcher, eos_token_ids=no_eos,
                                pad_token_id=lm.tokenizer.pad_token_id, engine=engine,
                                generator=torch.Generator(device=device).manual_seed(0))

    def hf_generate():
        with torch.no_grad():
            out = lm.model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.5, top_k=50,
                                    top_p=1.0, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                    pad_token_id=lm.tokenizer.pad_token_id)
        assert out.shape[1] - ids.shape[1] == args.new_tokens

    runs = {"hf_generate": hf_generate}
    for engine in args.engines.split(","):
        runs[f"hybrid_{engine}"] = ours(gate, engine)
        runs[f"discrete_{engine}"] = ours(None, engine)
    seconds = timed_interleaved(runs, args.repeats)
    new_tokens = args.batch * args.new_tokens
    result = {name: {"seconds": s, "new_tokens_per_s": new_tokens / s, "steps_per_s": args.new_tokens / s}
              for name, s in seconds.items()}
    result["ratios"] = {}
    for engine in args.engines.split(","):
        hybrid, discrete = seconds[f"hybrid_{engine}"], seconds[f"discrete_{engine}"]
        result["ratios"][f"hybrid_{engine}_over_hf_generate"] = seconds["hf_generate"] / hybrid
        result["ratios"][f"hybrid_{engine}_cost_over_discrete"] = hybrid / discrete - 1.0
    result["prompt_tokens"] = int(ids.shape[1])
    return result


def step_benchmark(args) -> dict:
    cfg = build_config(cli_values={"model": args.model, "dtype": args.dtype, "device": args.device,
                                   "max_new_tokens": args.new_tokens, "prompts_per_step": max(1, args.batch // 4),
                                   "group_size": 4, "micro_batch_size": args.batch,
                                   "output_dir": "/tmp/hrpo-bench-run"})
    trainer = setup(cfg, log=lambda *a: None)
    train_step(trainer)  # warm-up
    rows = [train_step(trainer) for _ in range(args.repeats)]
    keys = ("timing/rollout_s", "timing/reference_s", "timing/policy_s", "timing/step_s")
    out = {k.split("/")[1]: statistics.median(r[k] for r in rows) for k in keys}
    out["completions"] = cfg.prompts_per_step * cfg.group_size
    out["mean_completion_length"] = statistics.mean(r["completions/mean_length"] for r in rows)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16"),
                        help="auto: bf16 where this CPU has native bf16, else fp32 (see hrpo.precision)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-step", action="store_true", help="Only the rollout benchmark.")
    parser.add_argument("--engines", default="eager,static", help="Rollout engines to time (comma list).")
    args = parser.parse_args()
    quiet_libraries()
    precision = choose_dtype(args.dtype, resolve_device(args.device))
    args.dtype = precision.name  # what the rollout and the training step then load
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu",
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "model": args.model,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "dtype": precision.name, "dtype_reason": precision.reason, "batch": args.batch,
              "new_tokens": args.new_tokens,
              "rollout": rollout_benchmark(args)}
    if not args.skip_step:
        report["train_step"] = step_benchmark(args)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
