"""One-shot GPU check for the fast rollout engine (run inside one `device` session).

    PYTHONPATH=src python benchmarks/device_check.py --out $OUT [--skip-profile]

1. Equivalence on the GPU: tiny random Llama/Qwen2 models in fp32, hybrid/discrete/latent/hidden, with a
   sampled "EOS" so rows end early: eager vs static vs graph (same row seeds -> same tokens; latents and
   log-probs within 1e-4). At the real Qwen2.5-1.5B shape in bf16: the fraction of tokens on which graph and
   eager agree (random-init logits are near-uniform, so bf16 rounding flips some samples; reported, not asserted).
2. `hrpo bench rollout` at Qwen2.5-1.5B shape, batch 64, prompt 256, 256 new tokens (all engines + HF baselines).
3. `hrpo bench train`: the paper's GSM8K micro-batch (8 x (1024 + 1024), LoRA r32, gradient checkpointing).
4. A kernel-time profile of 20 graph replays (top kernels), to see where the step's time goes.
Each stage writes its JSON to --out as soon as it ends.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import traceback
from pathlib import Path

import torch

from hrpo.bench import bench_rollout, bench_train, random_model
from hrpo.fast_rollout import _GRAPHS
from hrpo.gate import HybridGate
from hrpo.rollout import MarkerMatcher, SamplingConfig, generate


def tiny(arch: str, vocab: int = 512):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    cfg = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True)
    torch.manual_seed(0)
    config = LlamaConfig(**cfg) if arch == "llama" else Qwen2Config(**cfg)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(20.0)
    return model


def compare(a, b) -> dict:
    out = {"same_ids": bool(torch.equal(a.completion_ids, b.completion_ids)),
           "same_masks": bool(torch.equal(a.completion_mask, b.completion_mask)
                              and torch.equal(a.thinking_mask, b.thinking_mask)),
           "logprob_max_diff": float((a.logprobs - b.logprobs).abs().max()),
           "gate_mean_max_diff": float((a.gate_mean - b.gate_mean).abs().max())}
    if a.latents is not None:
        out["latent_max_diff"] = float((a.latents.float() - b.latents.float()).abs().max())
    return out


def equivalence(modes=("hybrid", "discrete", "latent", "hidden"), engines=("eager", "static", "graph"),
                real_shape: bool = True) -> dict:
    report = {}
    vocab = 512
    pieces = ["a"] * vocab
    pieces[7], pieces[9] = "##", "#"  # the marker "####" can be completed by sampled tokens
    matcher = MarkerMatcher(pieces, "####", vocab)
    prompts = torch.randint(10, vocab, (3, 12), generator=torch.Generator().manual_seed(0))
    ids = prompts.repeat_interleave(2, dim=0).cuda()
    mask = torch.ones_like(ids)
    mask[2:4, :5] = 0  # left padding
    seeds = (torch.arange(6) * 7 + 3).cuda()
    for arch in ("llama", "qwen2"):
        model = tiny(arch, vocab)
        gate = HybridGate(64, 0.5, 0.6).cuda()
        for mode in modes:
            sampling = SamplingConfig(max_new_tokens=40, temperature=1.0, top_k=50)
            kw = dict(gate=gate if mode == "hybrid" else None, matcher=matcher, pad_token_id=0, row_seeds=seeds,
                      group_size=2, mode=mode)
            first = generate(model, ids, mask, sampling, eos_token_ids=[-1], engine="eager", **kw)
            eos = [int(first.completion_ids[0, 5]), int(first.completion_ids[3, 9])]
            runs = {e: generate(model, ids, mask, sampling, eos_token_ids=eos, engine=e, **kw)
                    for e in engines}
            report[f"{arch}/{mode}"] = {
                "columns": int(runs["eager"].completion_ids.shape[1]),
                "thinking_tokens": int(runs["eager"].thinking_mask.sum()),
                **{f"{e}_vs_eager": compare(runs["eager"], runs[e]) for e in engines if e != "eager"}}
        _GRAPHS.clear()
    if not real_shape:
        return report
    # real shape, bf16: agreement of sampled tokens (graph vs eager) over the first 64 steps
    model = random_model("qwen2.5-1.5b", torch.bfloat16, "cuda")
    gate = HybridGate(1536).cuda()
    big_ids = torch.randint(10, 151936, (8, 64), generator=torch.Generator().manual_seed(1)).cuda()
    big_matcher = MarkerMatcher(["x"], "####", 151936)
    sampling = SamplingConfig(max_new_tokens=64, temperature=0.5, top_k=50)
    kw = dict(gate=gate, matcher=big_matcher, eos_token_ids=[-1], pad_token_id=0,
              row_seeds=torch.arange(8).cuda())
    eager = generate(model, big_ids, torch.ones_like(big_ids), sampling, engine="eager", **kw)
    graph = generate(model, big_ids, torch.ones_like(big_ids), sampling, engine="graph", **kw)
    agree = (eager.completion_ids == graph.completion_ids).float()
    first_diff = [int(r.nonzero()[0]) if r.any() else 64 for r in (agree == 0)]
    report["qwen2.5-1.5b_bf16_hybrid"] = {"token_agreement": float(agree.mean()),
                                          "first_divergent_step_per_row": first_diff,
                                          "step0_logprob_max_diff": float((eager.logprobs[:, 0] -
                                                                           graph.logprobs[:, 0]).abs().max())}
    report["graph_compiled"] = [e.compiled for e in _GRAPHS.values()]
    _GRAPHS.clear()
    del model
    torch.cuda.empty_cache()
    return report


def profile(new_tokens: int = 64) -> dict:
    from torch.profiler import ProfilerActivity, profile as torch_profile

    model = random_model("qwen2.5-1.5b", torch.bfloat16, "cuda")
    gate = HybridGate(1536).cuda()
    ids = torch.randint(10, 151936, (64, 256), generator=torch.Generator().manual_seed(0)).cuda()
    kw = dict(gate=gate, matcher=MarkerMatcher(["x"], "####", 151936), eos_token_ids=[-1], pad_token_id=0,
              row_seeds=torch.arange(64).cuda(), engine="graph")
    sampling = SamplingConfig(max_new_tokens=256, temperature=0.5, top_k=50)
    generate(model, ids, torch.ones_like(ids), sampling, **kw)
    engine = next(iter(_GRAPHS.values()))
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(20):
            engine.graph.replay()
        torch.cuda.synchronize()
    rows = []
    for evt in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:25]:
        rows.append({"name": evt.key[:120], "calls": evt.count, "us_per_step": evt.device_time_total / 20})
    total = sum(e.device_time_total for e in prof.key_averages()) / 20
    return {"gpu_us_per_step": total, "compiled": engine.compiled, "top_kernels": rows}


def graph_variant(**options) -> dict:
    """Hybrid graph-engine steps/s at Qwen2.5-1.5B shape, batch 64, prompt 256, 256 new, with OPTIONS changed."""
    import hrpo.fast_rollout as fr

    saved = dataclasses.replace(fr.OPTIONS)
    for k, v in options.items():
        setattr(fr.OPTIONS, k, v)
    _GRAPHS.clear()
    try:
        model = random_model("qwen2.5-1.5b", torch.bfloat16, "cuda")
        ids = torch.randint(10, 151936, (64, 256), generator=torch.Generator().manual_seed(0)).cuda()
        kw = dict(gate=HybridGate(1536).cuda(), matcher=MarkerMatcher(["x"], "####", 151936), eos_token_ids=[-1],
                  pad_token_id=0, row_seeds=torch.arange(64).cuda(), engine="graph")
        sampling = SamplingConfig(max_new_tokens=256, temperature=0.5, top_k=50)
        times = []
        for _ in range(3):
            torch.cuda.synchronize()
            t = time.perf_counter()
            generate(model, ids, torch.ones_like(ids), sampling, **kw)
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
        return {"options": options, "compiled": next(iter(_GRAPHS.values())).compiled, "first_call_s": times[0],
                "steps_per_s": 256 / min(times[1:])}
    finally:
        fr.OPTIONS = saved
        _GRAPHS.clear()


def profile_eager_step(steps: int = 5) -> dict:
    """Kernel times of the compiled step launched eagerly (no graph), per step."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    import hrpo.fast_rollout as fr

    model = random_model("qwen2.5-1.5b", torch.bfloat16, "cuda")
    ids = torch.randint(10, 151936, (64, 256), generator=torch.Generator().manual_seed(0)).cuda()
    generate(model, ids, torch.ones_like(ids), SamplingConfig(max_new_tokens=32, temperature=0.5, top_k=50),
             gate=HybridGate(1536).cuda(), matcher=MarkerMatcher(["x"], "####", 151936), eos_token_ids=[-1],
             pad_token_id=0, row_seeds=torch.arange(64).cuda(), engine="graph")
    engine = next(iter(_GRAPHS.values()))
    modules = fr.model_modules(model)
    layer_fn = fr.make_layer(fr._compiled(fr.attention_inputs), fr._compiled(fr.layer_output))
    sampler = fr._compiled(fr.next_inputs)
    state = engine.state
    for _ in range(2):
        state.step.zero_()
        fr.decode_step(state, engine.spec, engine.weights, modules, layer_fn, sampler)
    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            state.step.zero_()
            fr.decode_step(state, engine.spec, engine.weights, modules, layer_fn, sampler)
        torch.cuda.synchronize()
    events = prof.key_averages()
    rows = [{"name": e.key[:100], "calls_per_step": e.count / steps, "us_per_step": e.device_time_total / steps}
            for e in sorted(events, key=lambda e: -e.device_time_total)[:30]]
    return {"gpu_us_per_step": sum(e.device_time_total for e in events) / steps, "top_kernels": rows}


def _with_matmul(fn):
    import hrpo.fast_rollout as fr

    saved = fr.OPTIONS.attention
    fr.OPTIONS.attention = "matmul"
    try:
        return fn()
    finally:
        fr.OPTIONS.attention = saved


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--skip-profile", action="store_true")
    p.add_argument("--skip-equivalence", action="store_true")
    p.add_argument("--round3", action="store_true", help="Quick equivalence, graph bench, matmul variant.")
    p.add_argument("--round2", action="store_true", help="Quick equivalence, bench, graph variants, profile.")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stages = []
    if args.round3:
        stages = [("equivalence_quick", lambda: equivalence(("hybrid", "discrete", "hidden"), ("eager", "graph"),
                                                            real_shape=False)),
                  ("bench_rollout", lambda: bench_rollout("qwen2.5-1.5b", 64, 256, 256, engines=("graph",),
                                                          repeats=1, log=lambda m: print(m, flush=True))),
                  ("variant_matmul", lambda: graph_variant(attention="matmul"))]
        args.round2 = True
    elif args.round2:
        stages = [("equivalence_quick", lambda: equivalence(("hybrid", "discrete", "hidden"), ("eager", "graph"),
                                                            real_shape=False)),
                  ("bench_rollout", lambda: bench_rollout("qwen2.5-1.5b", 64, 256, 256, engines=("eager", "graph"),
                                                          repeats=1, log=lambda m: print(m, flush=True))),
                  ("variant_matmul", lambda: graph_variant(attention="matmul")),
                  ("variant_sampler_uncompiled", lambda: graph_variant(compile_sampler=False)),
                  ("equivalence_matmul", lambda: _with_matmul(lambda: equivalence(
                      ("hybrid",), ("eager", "graph"), real_shape=False))),
                  ("profile_eager_step", profile_eager_step),
                  ("variant_max_autotune", lambda: graph_variant(compile_mode="max-autotune-no-cudagraphs"))]
    elif not args.skip_equivalence:
        stages.append(("equivalence", equivalence))
    if not args.round2:
        stages += [("bench_rollout", lambda: bench_rollout("qwen2.5-1.5b", 64, 256, 256, repeats=1,
                                                        log=lambda m: print(m, flush=True))),
               ("bench_train", lambda: bench_train("qwen2.5-1.5b", 8, 1024, 1024))]
    if not args.skip_profile and not args.round2:
        stages.append(("profile", profile))
    if not args.round2:
        stages.append(("bench_rollout_embedded", lambda: bench_rollout("embedded", 8, 64, 64, repeats=1)))
    for name, fn in stages:
        t = time.perf_counter()
        try:
            result = fn()
        except Exception as err:  # keep going: later stages still report
            result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        result["stage_seconds"] = time.perf_counter() - t
        (out / f"{name}.json").write_text(json.dumps(result, indent=2))
        print(f"== {name} ({result['stage_seconds']:.0f} s)\n{json.dumps(result)[:3000]}", flush=True)
        _GRAPHS.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
