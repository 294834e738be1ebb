"""The CUDA-graph engine's plumbing on CPU: capture, replay, the in-place refresh of weights and gate between
calls, the captured last column and the lagged "all finished" loop, under an emulation of CUDA graphs, with
the step eager or traced by the compiler.

A fake ``torch.cuda.graph`` records every aten op run inside it (and refuses a host sync, as a real capture
does); ``replay()`` runs the recorded ops again on the same tensors, writing each result into the tensor the
capture produced, so later ops read it where they read it during capture: what a real graph does with fixed
addresses. Python decisions are frozen at capture, as in a real graph. Compiled functions use the aot_eager
backend (inductor's kernels would not go through the dispatcher) and attention is SDPA (a Triton launch is not
an aten op); the GPU check in ``benchmarks/device_check.py`` covers the inductor- and kernel-using engine.
"""

import contextlib
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from conftest import assert_same_rollout, build_tiny_model, with_random_lora
from hrpo import HybridGate, SamplingConfig, generate, rollout
from hrpo.engines import graph, options, static
from hrpo.sampling import marker_matcher
from hrpo.text import left_pad

PROMPTS = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14]]


class _Recorder(TorchDispatchMode):
    def __init__(self, ops):
        super().__init__()
        self.ops = ops

    @classmethod
    def is_infra_mode(cls) -> bool:  # so that compiled functions run compiled under it (dynamo skips user modes)
        return True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            raise RuntimeError("host sync inside a captured graph")
        out = func(*args, **(kwargs or {}))
        self.ops.append((func, args, kwargs or {}, out))
        return out


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()


class FakeGraph:
    replays = 0

    def __init__(self):
        self.ops = []

    def replay(self):
        FakeGraph.replays += 1
        for func, args, kwargs, captured in self.ops:
            result = func(*args, **kwargs)
            for old, new in zip(tree_leaves(captured), tree_leaves(result)):
                if isinstance(old, torch.Tensor) and not _same_memory(old, new):
                    old.copy_(new)


@contextlib.contextmanager
def _capture(graph, pool=None):
    with _Recorder(graph.ops):
        yield


class _Stream:
    def wait_stream(self, other):
        pass


@pytest.fixture(params=["eager", "traced"])
def emulated_cuda_graphs(request, monkeypatch):
    """CUDA graphs emulated; the step either eager or compiled by dynamo + AOT autograd into aten ops
    ("traced": the compiled functions' graph breaks, guards and input mutations, but no inductor kernels)."""
    for name, value in {"CUDAGraph": FakeGraph, "graph": _capture, "Stream": _Stream,
                        "stream": lambda s: contextlib.nullcontext(), "current_stream": _Stream,
                        "graph_pool_handle": lambda: None, "synchronize": lambda: None,
                        "empty_cache": lambda: None}.items():
        monkeypatch.setattr(torch.cuda, name, value)
    traced = request.param == "traced"
    for option in ("compile_layers", "compile_sampler", "compile_prefill"):
        monkeypatch.setattr(options.OPTIONS, option, traced)
    monkeypatch.setattr(options.OPTIONS, "compile_backend", "aot_eager")
    monkeypatch.setattr(options.OPTIONS, "attention", "sdpa")
    graph._GRAPHS.clear()
    yield
    graph._GRAPHS.clear()


def _rollout(model, tokenizer, gate, eos, engine, sampling):
    ids, mask = left_pad([p for p in PROMPTS for _ in range(2)], tokenizer.pad_token_id)
    kw = dict(gate=gate, matcher=marker_matcher(tokenizer, "####"), eos_token_ids=eos,
              pad_token_id=tokenizer.pad_token_id, row_seeds=torch.arange(6) * 7 + 3, group_size=2, mode="hybrid")
    if engine == "eager":
        return generate(model, ids, mask, sampling, engine="eager", **kw)
    return static.generate_fast(model, ids, mask, sampling, engine=engine, **kw)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_emulated_graph_engine_equals_eager_and_follows_weight_updates(arch, tokenizer, emulated_cuda_graphs):
    """Rows end at different steps (a sampled "EOS"); the second call reuses the captured engine after an
    optimizer-like update of LoRA, base weights, a norm and the gate, and must roll out the updated policy."""
    model = with_random_lora(build_tiny_model(arch, len(tokenizer)))
    gate = HybridGate(32, r_min=0.5, r_max=0.6)
    gate.reset_parameters(torch.Generator().manual_seed(1))
    sampling = SamplingConfig(max_new_tokens=12, temperature=1.0, top_k=50)
    first = _rollout(model, tokenizer, gate, [2], "eager", sampling)
    eos = [int(first.completion_ids[0, 4]), int(first.completion_ids[2, 2])]
    eager = _rollout(model, tokenizer, gate, eos, "eager", sampling)
    assert not eager.completion_mask.all() and eager.thinking_mask.any()
    FakeGraph.replays = 0
    assert_same_rollout(eager, _rollout(model, tokenizer, gate, eos, "graph", sampling))
    engine = graph._GRAPHS[id(model)]
    assert FakeGraph.replays > 0
    assert engine.compiled == ("layers+sampler+prefill" if options.OPTIONS.compile_layers else "none")

    named = dict(model.named_parameters())
    with torch.no_grad():
        for key in (next(n for n in named if "lora_B" in n), next(n for n in named if "up_proj.base_layer" in n),
                    next(n for n in named if "input_layernorm" in n)):
            named[key].add_(0.3 * torch.randn(named[key].shape, generator=torch.Generator().manual_seed(7)))
        gate.gate_i.weight.add_(0.5)
        gate.Lambda.sub_(2.0)
    eager = _rollout(model, tokenizer, gate, eos, "eager", sampling)
    assert not torch.equal(eager.completion_ids, first.completion_ids)  # the update changed the policy
    assert_same_rollout(eager, _rollout(model, tokenizer, gate, eos, "graph", sampling))
    assert graph._GRAPHS[id(model)] is engine  # the same captured graphs, reading the rewritten tensors


def test_emulated_graph_engine_samples_the_last_column_when_rows_run_to_the_end(tokenizer, emulated_cuda_graphs):
    """No row ends: the loop runs N - 1 replays and the captured last-column graph samples column N - 1."""
    model = with_random_lora(build_tiny_model("llama", len(tokenizer)))
    gate = HybridGate(32, r_min=0.5, r_max=0.6)
    sampling = SamplingConfig(max_new_tokens=6, temperature=1.0, top_k=50)
    eager = _rollout(model, tokenizer, gate, [-1], "eager", sampling)
    assert eager.completion_mask.all() and eager.completion_ids.shape[1] == 6
    assert_same_rollout(eager, _rollout(model, tokenizer, gate, [-1], "graph", sampling))
    FakeGraph.replays = 0
    _rollout(model, tokenizer, gate, [-1], "graph", sampling)
    assert FakeGraph.replays == 6  # 5 decode steps + the last column


def test_a_host_sync_inside_the_emulated_capture_is_refused():
    graph = FakeGraph()
    with pytest.raises(RuntimeError, match="host sync"):
        with _capture(graph):
            bool(torch.ones(2).sum() > 1)


def test_the_device_checks_equivalence_stage_runs(monkeypatch, emulated_cuda_graphs):
    """`benchmarks/device_check.py equivalence` (the first stage of a GPU session) runs end to end here, with
    ``.cuda()`` a no-op, so a slip in it costs no device time; its own verdict must hold too."""
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    monkeypatch.setattr(torch.Tensor, "cuda", lambda self, *a, **k: self)
    monkeypatch.setattr(torch.nn.Module, "cuda", lambda self, *a, **k: self)
    resolve = rollout.resolve_engine
    monkeypatch.setattr(rollout, "resolve_engine", lambda e, model, mode: e if e == "graph" else resolve(e, model, mode))
    sys.modules.pop("device_check", None)
    import device_check

    report = device_check.equivalence(modes=("hybrid", "discrete"))
    assert report["all_equal"] and report["llama/hybrid_after_update"]["update_changed_tokens"]
