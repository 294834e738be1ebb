"""The CUDA-graph engine: the decode step compiled with ``torch.compile`` and captured as CUDA graphs.

The layer halves and the parts around the layers (sampling, latent, gate, RoPE; final norm, lm_head) are
compiled, and the step is captured per (batch, cache length), one graph per attended length; the host checks
"all finished" every few steps only, without draining the GPU's queue. The prefill runs the distinct prompts
once through the same layer halves, compiled there for any number and length of prompts (dynamic shapes).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import torch

from . import native
from .layers import Modules, attention_inputs, decoder_layer, forward, layer_output, make_layer, model_modules, \
    use_decode_kernel
from .options import OPTIONS
from .state import (DecodeState, StepSpec, action_shape, allocate_state, decode_step, sample_into, step_inputs,
                    step_outputs)
from .weights import ConcatenatedGate, DecodeWeights, concatenated_gate, decode_weights, step_gate, \
    weights_signature


ATTEND_BUCKET = 64  # the CUDA graph engine captures one graph per attended length, a multiple of this
SYNC_EVERY = 4  # graph replays between host checks for "every row finished"


CHECK_LAG = 1  # the graph loop acts on the check made this many checks ago (the GPU never waits for the host)


@dataclass
class GraphEngine:
    """Captured CUDA graphs of :func:`decode_step`, one per attended length (a multiple of
    :data:`ATTEND_BUCKET` up to the cache length), with the buffers they replay on."""

    key: tuple
    weights: DecodeWeights
    state: DecodeState
    spec: StepSpec
    graphs: dict[int, torch.cuda.CUDAGraph]
    last: torch.cuda.CUDAGraph  # :func:`sample_into` alone: the last column, sampled and never fed back
    compiled: str  # what ran compiled: "layers+sampler+prefill", ..., or "none"
    prefill_layer: object  # the layer function of this engine's prefill (see :func:`prefill_layer`)

    def replay(self, filled: int) -> None:
        """One decode step when cache slots [0, filled) will be written (prompt + this step's input)."""
        self.graphs[attend_length(filled, max(self.graphs))].replay()


_GRAPHS: dict[int, GraphEngine] = {}  # one captured engine per model (the latest shape)


def _compiled(fn, dynamic: bool | None = False):
    import torch._dynamo

    for name in ("recompile_limit", "cache_size_limit"):  # one compiled variant per model shape, not per call
        if hasattr(torch._dynamo.config, name):
            setattr(torch._dynamo.config, name, max(64, getattr(torch._dynamo.config, name)))
    return torch.compile(fn, dynamic=dynamic, mode=OPTIONS.compile_mode, backend=OPTIONS.compile_backend)


def _mark_dynamic(t: torch.Tensor | None, *dims: int) -> None:
    import torch._dynamo

    for dim in dims:
        if t is not None and t.shape[dim] > 1:  # size 1 is always specialised by the compiler
            torch._dynamo.mark_dynamic(t, dim)


def prefill_layer(compiled: bool):
    """The decoder layer :func:`prefill` runs: its halves compiled once for every prompt count and length
    (those two dimensions are marked dynamic, the weights' stay static; a count or length of 1 compiles once
    more), or the eager layer."""
    if not compiled:
        return decoder_layer
    pre, post = _compiled(attention_inputs, dynamic=None), _compiled(layer_output, dynamic=None)

    def prompt_pre(x, delta, w, cos, sin, dims):
        for t in (x, delta, cos, sin):  # (n, P, ...)
            _mark_dynamic(t, 0, 1)
        return pre(x, delta, w, cos, sin, dims)

    def prompt_post(x, attn, w, dims, act):
        _mark_dynamic(x, 0, 1)
        _mark_dynamic(attn, 0, 2)  # (n, heads, P, D)
        return post(x, attn, w, dims, act)

    return make_layer(prompt_pre, prompt_post)


def _prefill_layer_for(weights: DecodeWeights, modules: Modules, dtype, device):
    """The prefill layer :data:`OPTIONS` asks for, compiled now on 2 prompts of 8 tokens (a scratch cache) so
    that a compiler error shows while the engine is built; on one, the eager layer (with a warning)."""
    if not OPTIONS.compile_prefill:
        return decoder_layer
    layer_fn = prefill_layer(True)
    try:
        _warm_up_prefill(layer_fn, weights, modules, dtype, device)
    except Exception as err:
        warnings.warn(f"compiling the prefill failed ({type(err).__name__}: {err}); it runs eager")
        return decoder_layer
    return layer_fn


def _warm_up_prefill(layer_fn, weights: DecodeWeights, modules: Modules, dtype, device) -> None:
    n, length = 2, 8
    ids = torch.zeros(n, length, dtype=torch.long, device=device)
    positions = torch.arange(length, device=device).expand(n, length)
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    scratch = [torch.zeros(2, n, weights.num_kv_heads, length, weights.head_dim, dtype=dtype, device=device)
               for _ in weights.tensors]
    forward(modules.embed(ids), positions, torch.arange(length, device=device), causal.expand(n, 1, length, length),
            weights, modules, scratch, layer_fn)


def step_functions(compile_layers: bool, compile_sampler: bool):
    """(layer_fn, start, finish) for :func:`decode_step`: the layer halves compiled or not, and the step's
    start and end (sampler, gate, RoPE; final norm, lm_head, counters) compiled or not."""
    layer_fn = make_layer(_compiled(attention_inputs), _compiled(layer_output)) if compile_layers else decoder_layer
    if not compile_sampler:
        return layer_fn, step_inputs, step_outputs
    return layer_fn, _compiled(step_inputs), _compiled(step_outputs)


def _capture_once(model, weights: DecodeWeights, spec: StepSpec, key, batch, cache_len, compile_layers: bool,
                  compile_sampler: bool) -> GraphEngine:
    modules = model_modules(model)
    embed = modules.embed
    state = allocate_state(weights, batch, cache_len, spec.max_new, embed.weight.shape[1],
                           weights.lm_head.shape[0], spec.mode != "discrete", embed.weight.dtype,
                           embed.weight.device, **action_shape(spec, weights.lm_head.shape[0]))
    layer_fn, start, finish = step_functions(compile_layers, compile_sampler)
    state.valid[:, 0] = True
    lengths = sorted({attend_length(n, cache_len) for n in range(1, cache_len + 1)})
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up: compile, autotune, allocate; attention plans for every length
        for attend in [cache_len] * 2 + lengths:
            state.step.zero_()
            decode_step(state, spec, weights, modules, layer_fn, start, finish, attend)
        sample_into(state, spec, embed)
    torch.cuda.current_stream().wait_stream(side)
    with native.disabled():  # a graph replays only what went through the dispatcher
        graphs, pool = {}, torch.cuda.graph_pool_handle()  # one memory pool: the graphs never run at once
        for attend in lengths:
            graphs[attend] = torch.cuda.CUDAGraph()
            state.step.zero_()
            with torch.cuda.graph(graphs[attend], pool=pool):
                decode_step(state, spec, weights, modules, layer_fn, start, finish, attend)
        last = torch.cuda.CUDAGraph()  # eager ops, captured: one launch instead of about a hundred
        with torch.cuda.graph(last, pool=pool):
            sample_into(state, spec, embed)
    prefill_fn = _prefill_layer_for(weights, modules, embed.weight.dtype, embed.weight.device)
    compiled = "+".join(n for n, on in (("layers", compile_layers), ("sampler", compile_sampler),
                                        ("prefill", prefill_fn is not decoder_layer)) if on) or "none"
    return GraphEngine(key=key, weights=weights, state=state, spec=spec, graphs=graphs, last=last,
                       compiled=compiled, prefill_layer=prefill_fn)


def _capture(model, weights: DecodeWeights, spec: StepSpec, key, batch, cache_len) -> GraphEngine:
    """Capture the step, compiled as :data:`OPTIONS` asks; on compiler or capture errors retry with less
    compiled (warning once per failure)."""
    wanted = (OPTIONS.compile_layers, OPTIONS.compile_sampler)
    attempts = list(dict.fromkeys([wanted, (wanted[0], False), (False, False)]))
    for i, (layers, sampler) in enumerate(attempts):
        try:
            return _capture_once(model, weights, spec, key, batch, cache_len, layers, sampler)
        except Exception as err:
            torch.cuda.synchronize()
            if use_decode_kernel(weights.lm_head.device, weights.head_dim):  # the kernel first, then the compiler
                warnings.warn(f"CUDA-graph capture with the split-KV attention kernel failed ({type(err).__name__}: "
                              f"{err}); using SDPA from now on")
                OPTIONS.attention = "sdpa"
                return _capture(model, weights, spec, key, batch, cache_len)
            if i == len(attempts) - 1:
                raise
            warnings.warn(f"CUDA-graph capture with compiled layers={layers} sampler={sampler} failed "
                          f"({type(err).__name__}: {err}); retrying with less compiled")
    raise AssertionError("unreachable")


def captured_engine(model, spec: StepSpec, batch: int, cache_len: int) -> GraphEngine:
    s = spec.sampling
    key = (batch, cache_len, spec.max_new, spec.mode, id(spec.gate), id(spec.matcher), tuple(spec.eos.tolist()),
           spec.pad_token_id, s.temperature, s.top_k, s.top_p, s.greedy, s.logprob_temperature, spec.latent,
           spec.noise_scale, weights_signature(model))
    engine = _GRAPHS.get(id(model))
    if engine is not None and engine.key == key:
        decode_weights(model, into=engine.weights)  # this call's weights, where the graphs read them
        if isinstance(engine.spec.gate, ConcatenatedGate):
            concatenated_gate(spec.gate, into=engine.spec.gate)
        return engine
    _GRAPHS.pop(id(model), None)
    torch.cuda.empty_cache()
    engine = _capture(model, decode_weights(model), replace(spec, gate=step_gate(spec.gate)), key, batch, cache_len)
    _GRAPHS[id(model)] = engine
    return engine


def attend_length(filled: int, cache_len: int) -> int:
    """Cache slots a graph attends over when [0, filled) hold keys: ``filled`` rounded up to a multiple of
    :data:`ATTEND_BUCKET`, at most ``cache_len`` (attention reads only as much of the cache as is in use)."""
    return min(cache_len, int(math.ceil(filled / ATTEND_BUCKET) * ATTEND_BUCKET))
