"""How the fast engines build their decode step: one module-level :data:`OPTIONS` (benchmarks compare variants)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class GraphOptions:
    """How the fast engines build their step (module-level :data:`OPTIONS`; benchmarks compare variants)."""

    # decode-step attention: auto (the split-KV Triton kernel of hrpo.decode_attention on CUDA, else sdpa),
    # triton, sdpa (F.scaled_dot_product_attention) or matmul (two matmuls + fp32 softmax); prefill uses sdpa
    attention: str = "auto"
    compile_layers: bool = True  # torch.compile the decoder layer (one compiled body shared by all layers)
    compile_sampler: bool = True  # torch.compile the step around the layers: sampling, latent, gate, RoPE; lm_head
    compile_prefill: bool = True  # torch.compile the prefill's layer halves, with dynamic shapes
    compile_mode: str | None = None  # torch.compile mode, e.g. "max-autotune-no-cudagraphs"
    compile_backend: str = "inductor"  # torch.compile backend ("aot_eager": traced, run as aten ops; for tests)
    concatenate_gate: bool = True  # the hybrid gate's two fp32 projections as one GEMM (see ConcatenatedGate)
    # the static engine on a CPU with fp32 weights: LoRA merged into the fused weights for the rollout (one GEMM per
    # projection, no epilogue; see hrpo.engines.weights.merged); False keeps the adapters unmerged as on CUDA
    merge_lora_on_cpu: bool = True
    # the fast engines' fp32 GEMMs on a CPU: native (hrpo's kernel, hrpo.engines.native, at a decode step's few
    # rows: it streams the weights near the memory bandwidth; oneDNN's kernel otherwise or without a C compiler),
    # onednn (oneDNN's kernel throughout) or aten (F.linear); see hrpo.engines.weights.linear
    cpu_linear: str = "native"
    # the static engine on a CPU in fp32 with LoRA merged and attention "auto": every decoder layer of a decode
    # step in one call of hrpo's kernel (hrpo.engines.native.DecodeLayers) instead of about 35 aten ops a layer
    native_layers: bool = True
    # the engines' sampling on a CPU in fp32 with AVX2: top-k and the log-sum-exp over the vocabulary in one call of
    # hrpo's kernel (hrpo.engines.native.topk_lse) instead of torch.topk and torch.logsumexp (about 7x faster), and
    # without top-p the whole draw in that call (hrpo.engines.native.topk_sample)
    native_sampling: bool = True
    # the static engine's hybrid step on a CPU in fp32 with AVX2: the latent of the kept top-k and the whole gated
    # input in hrpo's kernels (hrpo.engines.native.topk_latent, gate_inputs) instead of about 25 aten ops
    native_hybrid: bool = True


OPTIONS = GraphOptions()
