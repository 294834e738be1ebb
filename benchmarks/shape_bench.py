"""Random-init models of a real shape (no weights needed): rollout throughput and training-step memory.

    python benchmarks/shape_bench.py --shape qwen2.5-1.5b --batch 64 --prompt-len 256 --new-tokens 256
    python benchmarks/shape_bench.py --shape qwen2.5-1.5b --train-only --train-batch 8 --train-len 2048

Rollout: our eager hybrid and discrete engines vs HF ``generate`` (dynamic cache, sampling) on the same random
prompts, each decoding exactly --new-tokens tokens (EOS ignored; the marker never appears, so every step of
the hybrid run mixes). Train: one LoRA r32 forward+backward of the HRPO loss over --train-batch sequences of
--train-len tokens (half prompt, half completion, every completion position mixed), with gradient
checkpointing, reporting peak GPU memory. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hrpo.gate import HybridGate
from hrpo.models import add_lora
from hrpo.objective import completion_logprobs, hrpo_loss, rollout_inputs_embeds
from hrpo.rollout import MarkerMatcher, Rollout, SamplingConfig, generate

SHAPES = {
    "qwen2.5-1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16,
                       num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    "embedded": None,  # SmolLM2-135M shape
}


def build(shape: str, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    if shape == "embedded":
        config = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                             num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, head_dim=64)
    else:
        config = Qwen2Config(**SHAPES[shape], max_position_embeddings=32768, rope_theta=1e6)
    config.bos_token_id = config.eos_token_id = config.pad_token_id = 0
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval()


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn, repeats=2):
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def rollout_bench(model, args, device) -> dict:
    vocab = model.get_input_embeddings().weight.shape[0]
    hidden = model.get_input_embeddings().weight.shape[1]
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, vocab, (args.batch, args.prompt_len), generator=g).to(device)
    mask = torch.ones_like(ids)
    matcher = MarkerMatcher(["x"], "####", vocab)
    gate = HybridGate(hidden).to(device)
    sampling = SamplingConfig(max_new_tokens=args.new_tokens, temperature=0.5, top_k=50)

    def ours(gt):
        return lambda: generate(model, ids, mask, sampling, gate=gt, matcher=matcher, eos_token_ids=[-1],
                                pad_token_id=0, generator=torch.Generator(device=device).manual_seed(0))

    def hf():
        with torch.no_grad():
            model.generate(input_ids=ids, attention_mask=mask, do_sample=True, temperature=0.5, top_k=50,
                           max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, pad_token_id=0)

    secs = {"hybrid": timed(ours(gate)), "discrete": timed(ours(None)), "hf_generate": timed(hf)}
    out = {k: {"seconds": s, "steps_per_s": args.new_tokens / s, "new_tokens_per_s": args.batch * args.new_tokens / s}
           for k, s in secs.items()}
    out["hybrid_over_hf_generate"] = secs["hf_generate"] / secs["hybrid"]
    out["hybrid_cost_over_discrete"] = secs["hybrid"] / secs["discrete"] - 1
    return out


def train_bench(model, args, device) -> dict:
    model = add_lora(model, 32, 64)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    vocab, hidden = model.get_input_embeddings().weight.shape
    gate = HybridGate(hidden).to(device)
    half = args.train_len // 2
    g = torch.Generator().manual_seed(0)
    rollout = Rollout(
        prompt_ids=torch.randint(10, vocab, (args.train_batch, half), generator=g).to(device),
        prompt_mask=torch.ones(args.train_batch, half, dtype=torch.long, device=device),
        completion_ids=torch.randint(10, vocab, (args.train_batch, half), generator=g).to(device),
        completion_mask=torch.ones(args.train_batch, half, dtype=torch.bool, device=device),
        thinking_mask=torch.ones(args.train_batch, half, dtype=torch.bool, device=device),
        latents=torch.randn(args.train_batch, half, hidden, device=device, dtype=model.dtype),
        logprobs=torch.zeros(args.train_batch, half, device=device),
        gate_mean=torch.ones(args.train_batch, half, device=device))
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    with torch.no_grad(), model.disable_adapter():
        ref = completion_logprobs(model, rollout, rollout_inputs_embeds(model, None, rollout)[0], 0.5)
    embeds, _ = rollout_inputs_embeds(model, gate, rollout)
    logprobs = completion_logprobs(model, rollout, embeds, 0.5)
    loss, _ = hrpo_loss(logprobs, ref, torch.randn(args.train_batch, device=device), rollout.completion_mask, 0.005)
    loss.backward()
    sync()
    out = {"seconds": time.perf_counter() - t, "sequences": args.train_batch, "tokens_per_sequence": args.train_len}
    if torch.cuda.is_available():
        out["peak_memory_gb"] = torch.cuda.max_memory_allocated() / 1e9
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", default="qwen2.5-1.5b", choices=sorted(SHAPES))
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--train-batch", type=int, default=8)
    p.add_argument("--train-len", type=int, default=2048)
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--rollout-only", action="store_true")
    p.add_argument("--dtype", default="bfloat16")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "shape": args.shape, "dtype": args.dtype, "batch": args.batch, "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens}
    import transformers

    report["transformers"] = transformers.__version__
    if not args.train_only:
        report["rollout"] = rollout_bench(build(args.shape, dtype, device), args, device)
        print(json.dumps(report), flush=True)
    if not args.rollout_only:
        torch.cuda.empty_cache() if device == "cuda" else None
        report["train_step"] = train_bench(build(args.shape, dtype, device), args, device)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
