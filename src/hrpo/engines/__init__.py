"""The rollout engines: three ways to run the same decode step, chosen by :func:`hrpo.rollout.resolve_engine`.

* :mod:`~hrpo.engines.eager`: the HF model's own forward with a dynamic KV cache (any causal LM; the reference);
* :mod:`~hrpo.engines.static`: a static KV cache and fused projections (Llama-family models), one step per token;
* :mod:`~hrpo.engines.graph`: the static engine's step compiled and replayed as CUDA graphs.

Below them: :mod:`~hrpo.engines.weights` (fused weights and their refresh), :mod:`~hrpo.engines.layers` (the
decoder-layer math), :mod:`~hrpo.engines.state` (the decode state and one step), :mod:`~hrpo.engines.options`,
:mod:`~hrpo.engines.decode_attention` (the split-KV decode kernel, CUDA) and :mod:`~hrpo.engines.native`
(hrpo's CPU kernels in C: the few-row GEMM, a whole decode step's layers in one call, sampling's passes over the
vocabulary and the hybrid step's small ops). Every engine uses the sampling primitives of :mod:`hrpo.sampling`,
and none imports :mod:`hrpo.rollout`.
"""
