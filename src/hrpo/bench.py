"""`hrpo bench`: rollout throughput and training-step memory on random-init models of a real shape.

No weights are needed: a named shape (qwen2.5-1.5b, qwen2.5-3b, embedded) or a directory with a config.json is
instantiated with random weights. Every engine and baseline runs in the same process on the same prompts,
decoding exactly ``new_tokens`` tokens (EOS ignored; the answer marker never appears, so every hybrid step
mixes: the worst case for the latent path).
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch

from .config import ConfigError
from .gate import HybridGate
from .precision import DtypeChoice, choose_dtype
from .rollout import generate
from .sampling import MarkerMatcher, Rollout, SamplingConfig

SHAPES = {
    "qwen2.5-1.5b": dict(model_type="qwen2", hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                         num_attention_heads=12, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                         max_position_embeddings=32768, rope_theta=1e6),
    "qwen2.5-3b": dict(model_type="qwen2", hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True,
                       max_position_embeddings=32768, rope_theta=1e6),
    "embedded": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                     num_attention_heads=9, num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True,
                     head_dim=64, max_position_embeddings=8192, rope_theta=1e5),
}


ENGINES = ("eager", "static", "graph", "auto")
BASELINES = ("hf_dynamic", "hf_static")


def check_bench_args(batch: int, prompt_len: int, new_tokens: int, repeats: int = 1,
                     engines: tuple[str, ...] | None = None, baselines: tuple[str, ...] | None = None,
                     device: str | None = None, group: int = 1, lora_r: int = 0) -> None:
    """Raise ConfigError (naming the flag) for a bad size, an unknown engine or baseline, or the graph engine
    off CUDA: before any model is built."""
    for flag, value, minimum in (("--batch", batch, 1), ("--prompt-len", prompt_len, 1),
                                 ("--new-tokens", new_tokens, 1), ("--repeats", repeats, 1),
                                 ("--group", group, 1), ("--lora-r", lora_r, 0)):
        if not isinstance(value, int) or value < minimum:
            raise ConfigError(f"{flag} must be an integer >= {minimum}, got {value!r}")
    if batch % group:
        raise ConfigError(f"--group {group} must be >= 1 and divide --batch {batch}")
    if engines is not None:
        if not engines:
            raise ConfigError(f"--engines is empty: give a comma list of {', '.join(ENGINES)}")
        unknown = [e for e in engines if e not in ENGINES]
        if unknown:
            raise ConfigError(f"--engines: unknown rollout engine {unknown[0]!r} (known: {', '.join(ENGINES)})")
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if "graph" in engines and not device.startswith("cuda"):
            raise ConfigError(f"--engines graph needs a CUDA device (this run is on {device}); use eager,static")
    if baselines is not None:
        unknown = [b for b in baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"--baselines: unknown baseline {unknown[0]!r} (known: {', '.join(BASELINES)})")


def shape_config(shape: str):
    """A transformers config for a named shape or a directory/file holding config.json."""
    from transformers import AutoConfig

    if shape in SHAPES:
        values = dict(SHAPES[shape])
        config = AutoConfig.for_model(values.pop("model_type"), **values)
    else:
        path = Path(shape)
        if not path.exists():
            raise ConfigError(f"--shape '{shape}': not a named shape ({', '.join(SHAPES)}) nor an existing path")
        config = AutoConfig.from_pretrained(path if path.is_dir() else path.parent)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = 0
    return config


def random_model(shape: str, dtype: torch.dtype, device: str, lora_r: int = 0):
    """A random-init causal LM of ``shape`` in ``dtype`` on ``device`` (eval mode); with ``lora_r`` > 0 wrapped in
    a LoRA adapter of that rank on every projection, as in training, its B matrices randomised so that the
    adapter is not a no-op."""
    from transformers import AutoModelForCausalLM

    with torch.device(device):
        model = AutoModelForCausalLM.from_config(shape_config(shape), dtype=dtype)
    if lora_r:
        from .models import add_lora

        model = add_lora(model, lora_r, 2 * lora_r)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0.0, 1e-3)
    return model.eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str, repeats: int) -> tuple[float, float]:
    """(first call seconds, best of ``repeats`` later calls)."""
    t = time.perf_counter()
    fn()
    _sync(device)
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - t)
    return first, best


def peak_memory_gb(device: str) -> float:
    """Peak GPU memory allocated (CUDA) or peak resident set size of this process (CPU), in GB."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 1e9
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def bench_rollout(shape: str = "qwen2.5-1.5b", batch: int = 64, prompt_len: int = 256, new_tokens: int = 256,
                  engines: tuple[str, ...] | None = None, baselines: tuple[str, ...] | None = None,
                  dtype: str = "auto", device: str | None = None, repeats: int = 2, log=None,
                  lora_r: int = 0, group: int = 1) -> dict:
    """Time hybrid and discrete rollouts on each engine and HF ``generate`` baselines; returns a JSON-able dict.

    ``lora_r`` > 0 wraps the model in a LoRA adapter of that rank on all projections (as in training; its
    B matrices are randomised so the adapter is not a no-op) for every entry, baselines included. ``group`` > 1
    gives every run of ``group`` rows the same prompt (G completions per question, as in training); our engines
    then prefill each distinct prompt once, HF generate prefills every row.

    Each entry has seconds (best of ``repeats``), first_call_s (compilation and capture included), steps_per_s
    (decode steps per second) and new_tokens_per_s; ``ratios`` divides the fast hybrid steps/s by each other
    entry's.
    """
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_bench_args(batch, prompt_len, new_tokens, repeats, engines, baselines, device, group, lora_r)
    on_cuda = device.startswith("cuda")
    if engines is None:
        engines = ("eager", "static", "graph") if on_cuda else ("eager", "static")
    if baselines is None:
        baselines = ("hf_dynamic", "hf_static") if on_cuda else ("hf_dynamic",)
    precision = choose_dtype(dtype, device)
    if log:
        log(precision.summary)
    model = random_model(shape, precision.dtype, device, lora_r)
    vocab, hidden = model.get_input_embeddings().weight.shape
    prompts = torch.randint(10, vocab, (batch // group, prompt_len), generator=torch.Generator().manual_seed(0))
    ids = prompts.repeat_interleave(group, dim=0).to(device)
    mask = torch.ones_like(ids)
    matcher = MarkerMatcher(["x"], "####", vocab)
    gate = HybridGate(hidden).to(device)
    sampling = SamplingConfig(max_new_tokens=new_tokens, temperature=0.5, top_k=50)
    seeds = torch.arange(batch, device=device)

    def ours(engine: str, mode: str):
        return lambda: generate(model, ids, mask, sampling, gate=gate if mode == "hybrid" else None,
                                matcher=matcher, eos_token_ids=[-1], pad_token_id=0, row_seeds=seeds, mode=mode,
                                engine=engine, group_size=group)

    def hf(cache: str):
        extra = {"cache_implementation": "static"} if cache == "static" else {}

        def run():
            with torch.no_grad():
                model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.5, top_k=50,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0, **extra)
        return run

    runs = {}
    for engine in engines:
        for mode in ("hybrid", "discrete"):
            runs[f"{mode}_{engine}"] = ours(engine, mode)
    for name in baselines:
        runs[name] = hf(name.removeprefix("hf_"))
    results = {}
    for name, fn in runs.items():
        if log:
            log(f"bench rollout: {name} ...")
        first, best = _timed(fn, device, repeats)
        results[name] = {"seconds": best, "first_call_s": first, "steps_per_s": new_tokens / best,
                         "new_tokens_per_s": batch * new_tokens / best}
    fast = f"hybrid_{engines[-1]}"
    ratios = {f"{fast}_over_{name}": results[fast]["steps_per_s"] / r["steps_per_s"]
              for name, r in results.items() if name != fast}
    hybrid_cost = {e: results[f"hybrid_{e}"]["seconds"] / results[f"discrete_{e}"]["seconds"] - 1 for e in engines}
    return {**_header(shape, precision, device), "batch": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "lora_r": lora_r, "group": group, "results": results, "fast": fast, "ratios": ratios,
            "hybrid_cost_over_discrete": hybrid_cost, "peak_memory_gb": peak_memory_gb(device)}


def bench_train(shape: str = "qwen2.5-1.5b", batch: int = 8, prompt_len: int = 1024, new_tokens: int = 1024,
                dtype: str = "auto", device: str | None = None, gradient_checkpointing: bool = True,
                lora_r: int = 32) -> dict:
    """Peak memory and time of one HRPO micro-batch: reference pass + LoRA forward/backward over ``batch``
    sequences of ``prompt_len + new_tokens`` tokens, every completion position mixed."""
    from .models import add_lora
    from .objective import completion_logprobs, hrpo_loss, rollout_inputs_embeds

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    check_bench_args(batch, prompt_len, new_tokens, lora_r=lora_r)
    precision = choose_dtype(dtype, device)
    model = add_lora(random_model(shape, precision.dtype, device), lora_r, 2 * lora_r)
    if gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    vocab, hidden = model.get_input_embeddings().weight.shape
    gate = HybridGate(hidden).to(device)
    g = torch.Generator().manual_seed(0)
    rollout = Rollout(
        prompt_ids=torch.randint(10, vocab, (batch, prompt_len), generator=g).to(device),
        prompt_mask=torch.ones(batch, prompt_len, dtype=torch.long, device=device),
        completion_ids=torch.randint(10, vocab, (batch, new_tokens), generator=g).to(device),
        completion_mask=torch.ones(batch, new_tokens, dtype=torch.bool, device=device),
        thinking_mask=torch.ones(batch, new_tokens, dtype=torch.bool, device=device),
        latents=torch.randn(batch, new_tokens, hidden, device=device, dtype=model.dtype),
        logprobs=torch.zeros(batch, new_tokens, device=device),
        gate_mean=torch.ones(batch, new_tokens, device=device))
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with torch.no_grad(), model.disable_adapter():
        ref = completion_logprobs(model, rollout, rollout_inputs_embeds(model, None, rollout)[0], 0.5)
    embeds, _ = rollout_inputs_embeds(model, gate, rollout)
    logprobs = completion_logprobs(model, rollout, embeds, 0.5)
    loss, _ = hrpo_loss(logprobs, ref, torch.randn(batch, device=device), rollout.completion_mask, 0.005)
    loss.backward()
    _sync(device)
    return {**_header(shape, precision, device), "sequences": batch, "prompt_len": prompt_len, "new_tokens": new_tokens,
            "lora_r": lora_r, "gradient_checkpointing": gradient_checkpointing,
            "seconds": time.perf_counter() - t, "peak_memory_gb": peak_memory_gb(device)}


def _header(shape: str, precision: DtypeChoice, device: str) -> dict:
    import transformers

    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu"
    return {"device": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "shape": shape, "dtype": precision.name,
            "dtype_reason": precision.reason}


def rollout_table(report: dict) -> str:
    """A Markdown table of a :func:`bench_rollout` report."""
    fast = report["fast"]
    lora = f", LoRA r{report['lora_r']}" if report.get("lora_r") else ", no adapter"
    lora += f", {report['group']} rows per prompt" if report.get("group", 1) > 1 else ""
    lines = [f"{report['device']} | {report['shape']} {report['dtype']} | batch {report['batch']}, prompt "
             f"{report['prompt_len']}, {report['new_tokens']} new tokens{lora}", "",
             "| run | steps/s | new tokens/s | first call s | fast hybrid / this |", "|---|---:|---:|---:|---:|"]
    for name, r in report["results"].items():
        ratio = report["ratios"].get(f"{fast}_over_{name}")
        lines.append(f"| {name} | {r['steps_per_s']:.1f} | {r['new_tokens_per_s']:,.0f} | {r['first_call_s']:.1f} "
                     f"| {'-' if ratio is None else f'{ratio:.2f}x'} |")
    costs = ", ".join(f"{e} {c:+.1%}" for e, c in report["hybrid_cost_over_discrete"].items())
    lines += ["", f"hybrid cost over discrete: {costs}; peak memory {report['peak_memory_gb']:.1f} GB"]
    return "\n".join(lines)
