"""GPU checks and measurements for the fast rollout engine, in stages (run inside one `device` session).

    PYTHONPATH=src python benchmarks/device_check.py --out $OUT --stages equivalence,breakdown,bench_rollout
        [--set compile_mode=max-autotune-no-cudagraphs] [--group 8] [--lora-r 32] [--tag NAME]

Stages (each writes ``<stage>[_<tag>].json`` to --out as soon as it ends, and keeps going after an error):

* kernel: the split-KV decode attention kernel vs fp64 attention and SDPA (error, time per call), and with the
  step's key/value write folded in (error, cache contents, time against a separate index_copy_).
* equivalence: tiny random Llama/Qwen2 models in fp32, hybrid/discrete/hidden, with sampled "EOS" tokens so rows
  end early: eager vs graph (same row seeds -> same tokens; latents and log-probs within 1e-4); in hybrid mode
  once more after an optimizer-like update of weights, a norm and the gate (the same captured graphs).
* breakdown: Qwen2.5-1.5B shape, batch 64, prompt 256, 256 new tokens on the graph engine: a whole call, the
  prefill alone, one decode step alone (mean of the N - 1 graph replays of a rollout, device events) and the
  weight refresh; the call and the prefill also with the eager prefill layer; the decode loop with the call's
  lagged "all finished?" checks, with the earlier checks that drain the queue every 16 steps, and with none.
* profile_step: kernel times of one compiled decode step launched without the graph (top kernels).
* profile_prefill: kernel times of one call's prefill (the distinct prompts), compiled and eager layers.
* prefill_graph: that prefill's time, host enqueue time and the replay time of it captured as a CUDA graph.
* gate_gemm: the hybrid gate's two fp32 GEMMs at the decode shape vs one concatenated GEMM and a batched pair
  (GPU time per call, differences in the result).
* bench_rollout: `hrpo bench rollout` at that shape (graph engine and the HF generate baselines).
* bench_train: `hrpo bench train`, the paper's GSM8K micro-batch (8 x (1024 + 1024), LoRA r32, checkpointing).
* bench_rollout_embedded: the embedded model's shape, batch 8.

``--set key=value`` changes :data:`hrpo.engines.options.OPTIONS` for every stage (a variant of the engine).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import traceback
from pathlib import Path

import torch

from hrpo.engines import graph as graph_mod, layers as layers_mod, options as options_mod
from hrpo.engines import state as state_mod, weights as weights_mod
from hrpo.bench import bench_rollout, bench_train, random_model
from hrpo.gate import HybridGate
from hrpo.rollout import MarkerMatcher, SamplingConfig, generate

SHAPE, BATCH, PROMPT, NEW = "qwen2.5-1.5b", 64, 256, 256


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


def equivalence(modes=("hybrid", "discrete", "hidden"), engines=("eager", "graph")) -> dict:
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
    ok = True
    for arch in ("llama", "qwen2"):
        model = tiny(arch, vocab)
        gate = HybridGate(64, 0.5, 0.6).cuda()
        for mode in modes:
            sampling = SamplingConfig(max_new_tokens=40, temperature=1.0, top_k=50)
            kw = dict(gate=gate if mode == "hybrid" else None, matcher=matcher, pad_token_id=0, row_seeds=seeds,
                      group_size=2, mode=mode)
            first = generate(model, ids, mask, sampling, eos_token_ids=[-1], engine="eager", **kw)
            eos = [int(first.completion_ids[0, 5]), int(first.completion_ids[3, 9])]
            runs = {e: generate(model, ids, mask, sampling, eos_token_ids=eos, engine=e, **kw) for e in engines}
            entry = {"columns": int(runs["eager"].completion_ids.shape[1]),
                     "thinking_tokens": int(runs["eager"].thinking_mask.sum()),
                     "compiled": graph_mod._GRAPHS[id(model)].compiled if "graph" in engines else None,
                     **{f"{e}_vs_eager": compare(runs["eager"], runs[e]) for e in engines if e != "eager"}}
            for e in engines:
                if e != "eager":
                    c = entry[f"{e}_vs_eager"]
                    ok &= c["same_ids"] and c["same_masks"] and c["logprob_max_diff"] < 1e-4
            report[f"{arch}/{mode}"] = entry
        if "graph" in engines and "hybrid" in modes:  # an optimizer-like update, then the same captured graphs
            kw = dict(gate=gate, matcher=matcher, pad_token_id=0, row_seeds=seeds, group_size=2, mode="hybrid",
                      eos_token_ids=eos)
            before = generate(model, ids, mask, sampling, engine="graph", **kw)
            engine = graph_mod._GRAPHS[id(model)]
            g = torch.Generator().manual_seed(1)
            with torch.no_grad():
                for layer in model.model.layers:
                    for p in (layer.self_attn.v_proj.weight, layer.mlp.up_proj.weight, layer.input_layernorm.weight):
                        p.add_(torch.randn(p.shape, generator=g).to(p.device))
                gate.gate_r.weight.add_(torch.randn(gate.gate_r.weight.shape, generator=g).to(gate.Lambda.device))
                gate.Lambda.sub_(1.0)
            runs = {e: generate(model, ids, mask, sampling, engine=e, **kw) for e in engines}
            c = compare(runs["eager"], runs["graph"])
            c["same_captured_engine"] = graph_mod._GRAPHS[id(model)] is engine
            c["update_changed_tokens"] = not torch.equal(before.completion_ids, runs["graph"].completion_ids)
            ok &= (c["same_ids"] and c["same_masks"] and c["logprob_max_diff"] < 1e-4 and c["same_captured_engine"]
                   and c["update_changed_tokens"])
            report[f"{arch}/hybrid_after_update"] = c
        graph_mod._GRAPHS.clear()
    report["all_equal"] = ok
    return report


def kernel() -> dict:
    """The split-KV decode attention kernel against fp64 attention and SDPA at the real decode shape (batch 64,
    2 KV heads x 6 query heads, head dim 128, 320 of 384 cache slots, left padding and unwritten slots), and
    the time of one call of each. The times are of eager calls, so they include the host's launch (on the
    H200, 2026-11-26: 89-142 us per call of the kernel pair that takes 14 us in the profiled step); the real
    kernel times come from ``profile_step``."""
    from hrpo.engines import decode_attention as da

    batch, kv_heads, group, dim, cache_len, n_keys = 64, 2, 6, 128, 384, 320
    g = torch.Generator(device="cuda").manual_seed(0)
    report = {}
    for dtype in (torch.bfloat16, torch.float32):
        cache = torch.randn(2, batch, kv_heads, cache_len, dim, device="cuda", dtype=dtype, generator=g)
        q = torch.randn(batch, kv_heads * group, 1, dim, device="cuda", dtype=dtype, generator=g)
        valid = torch.ones(batch, cache_len, dtype=torch.bool, device="cuda")
        valid[::3, :100] = False
        valid[:, 300:] = False
        keys, values, mask = cache[0, :, :, :n_keys], cache[1, :, :, :n_keys], valid[:, :n_keys]
        scale = dim ** -0.5
        reference = da.reference_attention(q, keys, values, mask, scale)
        folded = layers_mod.fold_mask(mask[:, None, None], group, dtype)
        runs = {"triton": lambda: da.decode_attention(q, keys, values, mask, scale),
                "sdpa": lambda: layers_mod.grouped_attention(q, keys, values, folded, scale)}
        for name, fn in runs.items():
            out = fn()
            error = float((out.double() - reference).abs().max() / reference.abs().max())
            fn()
            report[f"{name}_{str(dtype)[6:]}"] = {"max_rel_error": error, "us_per_call": 1000 * _event_ms(fn, 200)}
        # the engine's call: the kernel also writes this step's key and value at slot 299 (what a separate
        # index_copy_ into the cache did before, timed here too)
        new = torch.randn(2, batch, kv_heads, 1, dim, device="cuda", dtype=dtype, generator=g)
        slot = torch.tensor([299], device="cuda")
        written = cache.clone()
        written[:, :, :, 299] = new[:, :, :, 0]
        mask = mask.clone()
        mask[:, 299] = True
        reference = da.reference_attention(q, written[0, :, :, :n_keys], written[1, :, :, :n_keys], mask, scale)
        out = da.decode_attention(q, keys, values, mask, scale, new=new, slot=slot)
        report[f"triton_writing_{str(dtype)[6:]}"] = {
            "max_rel_error": float((out.double() - reference).abs().max() / reference.abs().max()),
            "cache_written_exactly": bool(torch.equal(cache, written)),
            "us_per_call": 1000 * _event_ms(lambda: da.decode_attention(q, keys, values, mask, scale, new=new,
                                                                        slot=slot), 200),
            "index_copy_us_per_call": 1000 * _event_ms(lambda: cache.index_copy_(3, slot, new), 200)}
    print(json.dumps(report), flush=True)
    return report


def _setup(group: int, lora_r: int):
    model = random_model(SHAPE, torch.bfloat16, "cuda", lora_r)
    vocab, hidden = model.get_input_embeddings().weight.shape
    prompts = torch.randint(10, vocab, (BATCH // group, PROMPT), generator=torch.Generator().manual_seed(0))
    ids = prompts.repeat_interleave(group, dim=0).cuda()
    kw = dict(gate=HybridGate(hidden).cuda(), matcher=MarkerMatcher(["x"], "####", vocab), eos_token_ids=[-1],
              pad_token_id=0, row_seeds=torch.arange(BATCH).cuda(), engine="graph", group_size=group)
    return model, ids, kw, SamplingConfig(max_new_tokens=NEW, temperature=0.5, top_k=50)


def _event_ms(fn, repeats: int) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def breakdown(group: int = 1, lora_r: int = 0, modes=("hybrid", "discrete")) -> dict:
    """Where one rollout call's time goes on the graph engine; the whole call and the prefill are also timed
    with the eager prefill layer (same process, same captured graphs)."""
    model, ids, kw, sampling = _setup(group, lora_r)
    mask = torch.ones_like(ids)
    report = {"options": dataclasses.asdict(options_mod.OPTIONS), "group": group, "lora_r": lora_r}
    for mode in modes:
        call_kw = {**kw, "gate": kw["gate"] if mode == "hybrid" else None}
        run = lambda: generate(model, ids, mask, sampling, mode=mode, **call_kw)  # noqa: E731
        t = time.perf_counter()
        run()
        torch.cuda.synchronize()
        first = time.perf_counter() - t
        engine = graph_mod._GRAPHS[id(model)]
        compiled_prefill = engine.prefill_layer
        prefill_layers = (("compiled", compiled_prefill), ("eager", layers_mod.decoder_layer))
        best = {}
        for name, layer_fn in prefill_layers:
            engine.prefill_layer = layer_fn
            run()
            calls = []
            for _ in range(3):
                t = time.perf_counter()
                run()
                torch.cuda.synchronize()
                calls.append(time.perf_counter() - t)
            best[name] = min(calls)
        engine.prefill_layer = compiled_prefill
        state, modules = engine.state, layers_mod.model_modules(model)
        with torch.no_grad():
            prefill_ms = {name: _event_ms(lambda: state_mod.prefill(state, ids, mask, group, engine.weights, modules,
                                                               layer_fn), 3)
                          for name, layer_fn in prefill_layers}
            state_mod.reset_outputs(state, kw["row_seeds"])
            steps = iter(range(NEW - 1))  # the real schedule: the attended length grows with t
            step_ms = _event_ms(lambda: engine.replay(PROMPT + next(steps) + 1), NEW - 1)
            loop_ms = {}  # the decode loop (255 replays + the last sample) under three ways of checking "all done"
            for name, every, lag in (("lagged", graph_mod.SYNC_EVERY, graph_mod.CHECK_LAG), ("drained_every_16", 16, 0),
                                     ("unchecked", NEW, 0)):
                state_mod.reset_outputs(state, kw["row_seeds"])
                loop_ms[name] = _event_ms(lambda: state_mod.run_steps(state, engine.spec, modules,
                                                               lambda t: engine.replay(PROMPT + t + 1), every, lag,
                                                               engine.last.replay), 1)
            weights_ms = _event_ms(lambda: weights_mod.decode_weights(model, into=engine.weights), 3)
        report[mode] = {"compiled": engine.compiled, "first_call_s": first, "call_s": best["compiled"],
                        "steps_per_s": NEW / best["compiled"], "call_s_eager_prefill": best["eager"],
                        "steps_per_s_eager_prefill": NEW / best["eager"], "prefill_ms": prefill_ms["compiled"],
                        "prefill_eager_ms": prefill_ms["eager"], "step_ms": step_ms,
                        "decode_steps_per_s": 1000 / step_ms, "weight_refresh_ms": weights_ms,
                        "decode_loop_ms": loop_ms,
                        "rest_ms": 1000 * best["compiled"] - prefill_ms["compiled"] - (NEW - 1) * step_ms
                        - weights_ms}
        print(mode, json.dumps(report[mode]), flush=True)
    return report


def _kernel_times(run, repeats: int, top: int = 40) -> dict:
    """CUDA kernel times of ``run()``, per call (mean over ``repeats`` profiled calls): the total, the number of
    kernel launches and the ``top`` kernels by time."""
    from torch.profiler import ProfilerActivity, profile as torch_profile

    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(repeats):
            run()
        torch.cuda.synchronize()
    events = prof.key_averages()
    rows = [{"name": e.key[:100], "calls": e.count / repeats, "us": e.device_time_total / repeats}
            for e in sorted(events, key=lambda e: -e.device_time_total)[:top]]
    return {"gpu_us": sum(e.device_time_total for e in events) / repeats,
            "kernels": sum(e.count for e in events) / repeats, "top_kernels": rows}


def profile_step(group: int = 1, lora_r: int = 0, steps: int = 5) -> dict:
    """Kernel times of the compiled step launched without the graph, per step (the profiler over graph replays
    crashed the process on torch 2.11)."""
    model, ids, kw, sampling = _setup(group, lora_r)
    generate(model, ids, torch.ones_like(ids), dataclasses.replace(sampling, max_new_tokens=32), **kw)
    engine = graph_mod._GRAPHS[id(model)]
    modules = layers_mod.model_modules(model)
    layer_fn, start, finish = graph_mod.step_functions(options_mod.OPTIONS.compile_layers, options_mod.OPTIONS.compile_sampler)
    state = engine.state

    def step():  # attends over 320 of the 384 cache slots (a strided slice, as most replays do)
        state.step.zero_()
        state_mod.decode_step(state, engine.spec, engine.weights, modules, layer_fn, start, finish, attend=320)

    for _ in range(2):
        step()
    return {"lora_r": lora_r, **_kernel_times(step, steps)}


def _prefill_runs(group: int, lora_r: int):
    """(report head, [(name, run)]): one call's prefill on the captured engine, with its compiled prefill layer
    and with the eager one (``run()`` runs it once, without grad)."""
    model, ids, kw, sampling = _setup(group, lora_r)
    mask = torch.ones_like(ids)
    generate(model, ids, mask, dataclasses.replace(sampling, max_new_tokens=32), **kw)
    engine = graph_mod._GRAPHS[id(model)]
    modules = layers_mod.model_modules(model)

    def runner(layer_fn):
        def run():
            with torch.no_grad():
                state_mod.prefill(engine.state, ids, mask, group, engine.weights, modules, layer_fn)
        return run

    runs = [("compiled", runner(engine.prefill_layer)), ("eager", runner(layers_mod.decoder_layer))]
    return {"group": group, "lora_r": lora_r}, runs


def _captured(fn, calls: int = 1) -> torch.cuda.CUDAGraph:
    """``calls`` calls of ``fn`` captured as one CUDA graph (after a warm-up call on a side stream)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph


def profile_prefill(group: int = 1, lora_r: int = 0, repeats: int = 3) -> dict:
    """Kernel times of the prefill of one rollout call (the distinct prompts only), with the engine's compiled
    prefill layer and with the eager one."""
    report, runs = _prefill_runs(group, lora_r)
    for name, run in runs:
        run()
        report[name] = {"prefill_ms": _event_ms(run, repeats), **_kernel_times(run, repeats, top=20)}
    return report


def prefill_graph(group: int = 1, lora_r: int = 0, repeats: int = 10) -> dict:
    """What a CUDA graph would save on the prefill: one call's prefill (compiled and eager layers) timed as it
    runs now (device events), the host time to enqueue it, and the replay of the same prefill captured as a
    CUDA graph (fixed prompt shape; an experiment, not the engine's path)."""
    report, runs = _prefill_runs(group, lora_r)
    for name, run in runs:
        entry = report[name] = {}
        try:
            run()
            entry["prefill_ms"] = _event_ms(run, repeats)
            torch.cuda.synchronize()
            t = time.perf_counter()
            run()
            entry["host_enqueue_ms"] = 1000 * (time.perf_counter() - t)
            torch.cuda.synchronize()
            entry["graph_replay_ms"] = _event_ms(_captured(run).replay, repeats)
        except Exception as err:
            entry["error"] = f"{type(err).__name__}: {err}"
        print(name, json.dumps(entry), flush=True)
    return report


def gate_gemm(calls: int = 20, replays: int = 20) -> dict:
    """The hybrid gate's two fp32 GEMMs at the decode shape (64 rows, hidden 1536) against candidate
    replacements, each timed as GPU time per call (``calls`` calls captured in one CUDA graph, so launch time
    is excluded), with its largest difference from the two GEMMs (0.0: the same bits)."""
    import torch.nn.functional as F

    rows, hidden = BATCH, 1536
    gate = HybridGate(hidden).cuda()
    e = torch.randn(rows, hidden, device="cuda", generator=torch.Generator(device="cuda").manual_seed(0))
    concatenated = weights_mod.concatenated_gate(gate)  # what the engine's step uses
    stacked_w = torch.stack([gate.gate_r.weight, gate.gate_i.weight]).transpose(1, 2).detach()
    stacked_b = torch.stack([gate.gate_r.bias, gate.gate_i.bias])[:, None].detach()
    variants = {
        "two_linears": lambda: torch.cat([gate.gate_r(e), gate.gate_i(e)], dim=-1),
        "one_concatenated_linear": lambda: F.linear(e, concatenated.weight, concatenated.bias),
        "baddbmm_pair": lambda: torch.baddbmm(stacked_b, e.expand(2, rows, hidden), stacked_w).transpose(0, 1)
        .reshape(rows, 2 * hidden),
    }
    report = {}
    with torch.no_grad():
        reference = variants["two_linears"]()
        for name, fn in variants.items():
            out = fn()
            graph = _captured(fn, calls)
            report[name] = {"us_per_call": 1000 * _event_ms(graph.replay, replays) / calls,
                            "max_abs_diff": float((out - reference).abs().max())}
    print(json.dumps(report), flush=True)
    return report


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--stages", default="equivalence,breakdown,bench_rollout,bench_train")
    p.add_argument("--set", action="append", default=[], help="OPTIONS field=value (repeatable).")
    p.add_argument("--group", type=int, default=1)
    p.add_argument("--lora-r", type=int, default=0)
    p.add_argument("--baselines", default="hf_dynamic,hf_static")
    p.add_argument("--tag", default="")
    p.add_argument("--modes", default="hybrid,discrete", help="breakdown: rollout modes to time.")
    args = p.parse_args()
    for item in args.set:
        key, value = item.split("=", 1)
        current = getattr(options_mod.OPTIONS, key)
        setattr(options_mod.OPTIONS, key, value == "true" if isinstance(current, bool) else value or None)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = lambda m: print(m, flush=True)  # noqa: E731
    stages = {
        "kernel": kernel,
        "equivalence": equivalence,
        "breakdown": lambda: breakdown(args.group, args.lora_r, tuple(args.modes.split(","))),
        "profile_step": lambda: profile_step(args.group, args.lora_r),
        "profile_prefill": lambda: profile_prefill(args.group, args.lora_r),
        "prefill_graph": lambda: prefill_graph(args.group, args.lora_r),
        "gate_gemm": gate_gemm,
        "bench_rollout": lambda: bench_rollout(SHAPE, BATCH, PROMPT, NEW, engines=("graph",), repeats=2, log=log,
                                               baselines=tuple(b for b in args.baselines.split(",") if b),
                                               lora_r=args.lora_r, group=args.group),
        "bench_train": lambda: bench_train(SHAPE, 8, 1024, 1024),
        "bench_rollout_embedded": lambda: bench_rollout("embedded", 8, 64, 64, repeats=1),
    }
    for name in args.stages.split(","):
        t = time.perf_counter()
        try:
            result = stages[name]()
        except Exception as err:  # keep going: later stages still report
            result = {"error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()[-3000:]}
        result["stage_seconds"] = time.perf_counter() - t
        result["options"] = dataclasses.asdict(options_mod.OPTIONS)
        tag = f"_{args.tag}" if args.tag else ""
        (out / f"{name}{tag}.json").write_text(json.dumps(result, indent=2))
        print(f"== {name}{tag} ({result['stage_seconds']:.0f} s)\n{json.dumps(result)[:1500]}", flush=True)
        graph_mod._GRAPHS.clear()
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
