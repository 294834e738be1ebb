"""The static engine's CPU decode step against this machine's roofline, measured in the same invocation. JSON.

    python benchmarks/decode_roofline.py [--modes discrete,hybrid] [--new-tokens 64] [--repeats 7]

The work is benchmarks/vs_trl.py's rollout: the embedded SmolLM2-135M-Instruct in fp32 with LoRA r32 on all seven
projections, 2 arithmetic prompts x 4 completions in the chat template, temperature 0.5, top-k 50, no EOS (every
row decodes --new-tokens tokens). A decode step's time is (rollout of N + 4 tokens - rollout of 4 tokens) / N, the
median over --repeats pairs: the prefill and the per-rollout setup cancel.

The roofline is the larger of the step's FLOPs at the measured fp32 matmul rate (the best of repeated 2048^2
products) and its bytes at the measured read bandwidth (the best of repeated sums over a 512 MB buffer). The bytes
are every weight a step reads (the decoder's fused projections with LoRA merged, norms, the LM head) plus the keys
and values it attends over, averaged over the rollout's lengths (a prompt's once per group of rows that share it,
as the engine reads them); the FLOPs are 2 per weight and row plus attention's 4 x rows x query heads x length x
head size. The machine is measured again before each measured pair; ``ratio`` is a pair's step over its roofline,
and each figure reported is the median over pairs. ``best`` is best against best: the step from the fastest long
and the fastest short rollout, over the lowest roofline of the invocation (a shared host's other tenants slow
the step far more than they lower the measured rates).

``cpu_steal`` is the share of this machine's CPU time the hypervisor gave to other guests while the pairs ran
(Linux's /proc/stat; null elsewhere): a shared host slows the step through its cores' and caches' other tenants,
which this share shows only in part.

``outside_layers_ms`` (per mode) is the median time between one step's call of the layers
(``hrpo.engines.native.DecodeLayers``: every decoder layer and the LM head) and the next one's, over one more
rollout after the pairs: the step's part in Python (sampling, bookkeeping, the next input), which runs right
after 560 MB of weights went through the caches (see ``benchmarks/cold_ops.py``).

The modes take turns, pair by pair, and ``hybrid_rollout_cost_over_discrete`` is the median over the repeats of
a hybrid rollout of --new-tokens + 4 tokens over the discrete one next to it, minus 1.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def matmul_rate(size: int = 2048, repeats: int = 10) -> float:
    """The best fp32 GFLOP/s of a size x size product over ``repeats`` tries."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = min(_timed(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * size ** 3 / best / 1e9


def read_bandwidth(megabytes: int = 512, repeats: int = 10) -> float:
    """The best GB/s of a sum over a ``megabytes`` fp32 buffer (far larger than any cache) over ``repeats`` tries."""
    buffer = torch.rand(megabytes * 2 ** 20 // 4)
    best = min(_timed(buffer.sum) for _ in range(repeats))
    return buffer.numel() * 4 / best / 1e9


def cpu_ticks() -> list[int] | None:
    """The machine's CPU time so far, in ticks, as /proc/stat's first line counts it (user, nice, system, idle,
    iowait, irq, softirq, steal, ...); None where there is no such file."""
    try:
        with open("/proc/stat") as stat:
            return [int(n) for n in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None


def steal_share(before: list[int] | None, after: list[int] | None) -> float | None:
    """The share of the CPU ticks between two :func:`cpu_ticks` that went to other guests (steal, the 8th)."""
    if not before or not after or len(before) < 8 or len(after) < 8:
        return None
    spent = [b - a for a, b in zip(before, after)]
    total = sum(spent[:8])  # guest time (9th and 10th) is already counted in user time
    return spent[7] / total if total > 0 else None


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def outside_layers_ms(rollout, mode: str, new_tokens: int) -> float | None:
    """The median ms between the end of one step's ``DecodeLayers`` call and the start of the next one's, over a
    rollout of ``new_tokens`` (``rollout(mode, n)``); None where the layers' kernel did not run."""
    from hrpo.engines import native

    calls = []
    original = native.DecodeLayers.__call__

    def timed(self, *args):
        start = time.perf_counter()
        out = original(self, *args)
        calls.append((start, time.perf_counter()))
        return out

    native.DecodeLayers.__call__ = timed
    try:
        rollout(mode, new_tokens)
    finally:
        native.DecodeLayers.__call__ = original
    gaps = [later[0] - earlier[1] for earlier, later in zip(calls, calls[1:])]
    return statistics.median(gaps) * 1e3 if gaps else None


def step_bytes(weights, batch: int, group: int, prompt_len: int, own: float) -> tuple[int, float]:
    """(weight bytes, key/value bytes) a decode step reads: every fused weight and norm and the LM head; the
    prompt's keys and values once per group of ``group`` rows that share it, and ``own`` slots of each row's own."""
    tensors = [t for layer in weights.tensors for t in layer.values() if t is not None]
    tensors += [weights.final_norm, weights.lm_head]
    slot_bytes = 2 * weights.num_kv_heads * weights.head_dim * 4
    return (sum(t.numel() * t.element_size() for t in tensors),
            len(weights.tensors) * slot_bytes * (batch // group * prompt_len + batch * own))


def step_cost(weights, batch: int, group: int, prompt_len: int, new_tokens: int) -> dict:
    """A decode step's bytes (:func:`step_bytes`) and FLOPs from the fused weights it reads, averaged over a
    rollout of ``new_tokens`` (see the module docstring)."""
    matrices = [layer[name] for layer in weights.tensors for name in ("qkv", "o", "gate_up", "down")]
    weight_flops = 2 * batch * (sum(m.numel() for m in matrices) + weights.lm_head.numel())
    mean_new = statistics.mean(t + 1 for t in range(new_tokens))  # the row's own slots, this step's included
    weight_bytes, kv_bytes = step_bytes(weights, batch, group, prompt_len, mean_new)
    layers, dim = len(weights.tensors), weights.head_dim
    attention_flops = layers * 4 * batch * weights.num_heads * (prompt_len + mean_new) * dim
    return {"weight_bytes": weight_bytes, "kv_bytes": kv_bytes, "bytes": weight_bytes + kv_bytes,
            "flops": weight_flops + attention_flops, "mean_attended_keys": prompt_len + mean_new}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="discrete,hybrid")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json-line", action="store_true", help="print 'RESULT <json>' (for vs_trl.py)")
    args = parser.parse_args()

    from peft import LoraConfig, get_peft_model

    from hrpo import HybridGate, tasks
    from hrpo.engines import options, static
    from hrpo.engines.weights import decode_weights
    from hrpo.models import load_model
    from hrpo.progress import quiet_libraries
    from hrpo.sampling import SamplingConfig, marker_matcher
    from hrpo.text import chat_prompt_ids, left_pad

    quiet_libraries()
    torch.manual_seed(0)
    loaded = load_model("embedded", dtype=torch.float32, device=torch.device("cpu"))
    model = get_peft_model(loaded.model, LoraConfig(r=32, lora_alpha=64, target_modules=LORA_TARGETS))
    for name, param in model.named_parameters():  # a trained-looking adapter (B is zero at init)
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.01)
    model.eval()
    tokenizer, task = loaded.tokenizer, tasks.get("arithmetic")
    prompts = [chat_prompt_ids(tokenizer, task.messages(e)) for e in task.examples(args.prompts, seed=0)]
    ids, mask = left_pad([p for p in prompts for _ in range(args.group)], tokenizer.pad_token_id)
    batch = ids.shape[0]
    gate = HybridGate(model.config.hidden_size)
    matcher = marker_matcher(tokenizer, task.marker)

    def rollout(mode: str, new_tokens: int) -> float:
        sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.5, top_k=50)
        hybrid = mode == "hybrid"
        return _timed(lambda: static.generate_fast(
            model, ids, mask, sampling, gate=gate if hybrid else None, matcher=matcher if hybrid else None,
            eos_token_ids=[], pad_token_id=tokenizer.pad_token_id, row_seeds=torch.arange(batch), mode=mode,
            group_size=args.group))

    with torch.no_grad():
        cost = step_cost(decode_weights(model, merge_lora=True), batch, args.group, ids.shape[1], args.new_tokens)
    report = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu_linear": options.OPTIONS.cpu_linear, "native_layers": options.OPTIONS.native_layers,
              "native_sampling": options.OPTIONS.native_sampling, "native_hybrid": options.OPTIONS.native_hybrid,
              "work": {"rows": batch, "prompt_tokens": ids.shape[1], "new_tokens": args.new_tokens}, "step": cost}
    # the host's bandwidth moves with its neighbours' load (this shared 2-core machine: 33-80 GB/s within a
    # minute), so the machine is measured again before every measured pair and each pair has its own roofline;
    # the modes take turns (discrete, hybrid, then hybrid, discrete, ...), so that a change in the load falls
    # on both and their paired rollouts can be compared
    modes = args.modes.split(",")
    for mode in modes:
        rollout(mode, 4)  # warm-up: the kernel build, allocations
    runs = {mode: [] for mode in modes}
    ticks = cpu_ticks()
    for repeat in range(args.repeats):
        for mode in modes if repeat % 2 == 0 else modes[::-1]:
            gflops, bandwidth = matmul_rate(repeats=5), read_bandwidth(repeats=5)
            roofline_ms = max(cost["flops"] / gflops / 1e9, cost["bytes"] / bandwidth / 1e9) * 1e3
            long, short = rollout(mode, args.new_tokens + 4), rollout(mode, 4)
            step_ms = (long - short) / args.new_tokens * 1e3
            runs[mode].append({"step_ms": step_ms, "roofline_ms": roofline_ms, "ratio": step_ms / roofline_ms,
                               "fp32_matmul_gflops": gflops, "read_gb_s": bandwidth, "long_s": long,
                               "short_s": short})
    report["cpu_steal"] = steal_share(ticks, cpu_ticks())
    for mode in modes:
        report[mode] = {key: statistics.median(run[key] for run in runs[mode]) for key in runs[mode][0]}
        # best against best: the fastest long and short rollouts (what the code does when the host leaves it
        # alone) against the lowest roofline of the invocation (the machine at its best)
        best_s = (min(r["long_s"] for r in runs[mode]) - min(r["short_s"] for r in runs[mode])) / args.new_tokens
        lowest = min(r["roofline_ms"] for r in runs[mode])
        report[mode]["best"] = {"step_ms": best_s * 1e3, "roofline_ms": lowest, "ratio": best_s * 1e3 / lowest}
        report[mode]["runs"] = runs[mode]
        report[mode]["outside_layers_ms"] = outside_layers_ms(rollout, mode, args.new_tokens + 4)
    if "discrete" in runs and "hybrid" in runs:  # a whole rollout of new_tokens + 4 tokens, pair by pair
        report["hybrid_rollout_cost_over_discrete"] = statistics.median(
            h["long_s"] / d["long_s"] - 1.0 for h, d in zip(runs["hybrid"], runs["discrete"]))
    print(f"RESULT {json.dumps(report)}" if args.json_line else json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
