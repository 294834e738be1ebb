"""hrpo's own CPU kernels (:file:`cpu_kernels.c`): built once with the system C compiler, loaded with ctypes.

Used by the fast engines' decode step on a CPU in fp32 (:data:`OPTIONS` ``.cpu_linear = "native"``). The
library is compiled on first use into ``$HRPO_CACHE/kernels`` (default ~/.cache/hrpo), named by a hash of the
source and the flags, written to a temporary name and renamed, so a crash never leaves a half-built library.
Without a compiler (or OpenMP) there is one warning, and the step runs on aten ops with oneDNN's GEMMs instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path

import torch

from ..models import cache_dir
from .options import OPTIONS

SOURCE = Path(__file__).with_name("cpu_kernels.c")
FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-lm"]
ISA = {"AVX512": 2, "AVX2": 2}  # torch.backends.cpu.get_cpu_capability() -> the kernel's code path; else plain C
MAX_ROWS = 32  # a decode step's rows, up to here (at 32 still 1.2x oneDNN's speed with AVX2); a prefill: oneDNN
MAX_KEPT = 256  # topk_lse keeps at most this many logits a row (a sorted insertion; more: torch.topk)


_OFF = [0]  # > 0 inside :func:`disabled`


@contextmanager
def disabled():
    """No native kernel inside (:func:`supports` is False): for a captured graph, which replays only what went
    through the dispatcher (aten ops, device kernels), never a foreign call."""
    _OFF[0] += 1
    try:
        yield
    finally:
        _OFF[0] -= 1


def _compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def build(source: Path = SOURCE) -> Path:
    """Compile ``source`` into the kernel cache (once per source and flags) and return the library's path.
    Raises RuntimeError with the compiler's message when it cannot be built."""
    compiler = _compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found (set CC, or install gcc)")
    text = source.read_bytes()
    key = hashlib.sha256(text + " ".join([compiler, *FLAGS]).encode()).hexdigest()[:16]
    target = cache_dir() / "kernels" / f"cpu_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        partial = Path(work) / target.name
        try:
            done = subprocess.run([compiler, *FLAGS, str(source), "-o", str(partial)], capture_output=True,
                                  text=True)
        except OSError as error:
            raise RuntimeError(f"the C compiler {compiler} could not run ({error.strerror})") from None
        if done.returncode != 0:
            raise RuntimeError(f"{compiler} failed on {source.name}: {done.stderr.strip()[-2000:]}")
        os.replace(partial, target)
    return target


@lru_cache(maxsize=1)
def library() -> ctypes.CDLL | None:
    """The loaded kernels, or None (with one warning) where they cannot be built."""
    try:
        lib = ctypes.CDLL(str(build()))
    except (RuntimeError, OSError) as error:
        warnings.warn(f"hrpo's CPU kernels are not available ({error}); the decode step runs on aten ops with "
                      "oneDNN's GEMMs")
        return None
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.hrpo_linear.argtypes = [pointer, size, size, pointer, pointer, pointer, size, ctypes.c_int, ctypes.c_int]
    lib.hrpo_linear.restype = None
    lib.hrpo_decode_layers.argtypes = [pointer, size, pointer, pointer, pointer, pointer, pointer, pointer, size,
                                       size, size, pointer, pointer]
    lib.hrpo_decode_layers.restype = ctypes.c_int
    lib.hrpo_topk_lse.argtypes = [pointer, size, size, size, ctypes.c_float, pointer, pointer, pointer, ctypes.c_int,
                                  ctypes.c_int]
    lib.hrpo_topk_lse.restype = size
    lib.hrpo_topk_sample.argtypes = [pointer, size, size, size, ctypes.c_float, ctypes.c_float, pointer, pointer,
                                     pointer, pointer, pointer, ctypes.c_int, ctypes.c_int]
    lib.hrpo_topk_sample.restype = size
    lib.hrpo_topk_latent.argtypes = [pointer, pointer, size, size, pointer, size, pointer, ctypes.c_int,
                                     ctypes.c_int]
    lib.hrpo_topk_latent.restype = None
    lib.hrpo_gated_mix.argtypes = [pointer, pointer, pointer, pointer, size, size, pointer, pointer, ctypes.c_int]
    lib.hrpo_gated_mix.restype = None
    lib.hrpo_gate_inputs.argtypes = [pointer, pointer, pointer, pointer, pointer, pointer, size, size, pointer,
                                     pointer, pointer, ctypes.c_int, ctypes.c_int]
    lib.hrpo_gate_inputs.restype = None
    return lib


def isa() -> int:
    """The code path for this CPU as torch sees it (ATEN_CPU_CAPABILITY lowers it, as for torch's own kernels)."""
    return ISA.get(torch.backends.cpu.get_cpu_capability(), 0)


def supports(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> bool:
    """Whether :func:`linear` takes this product: fp32 CPU tensors, at most :data:`MAX_ROWS` rows, no grad."""
    rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
    return (not _OFF[0] and 0 < rows <= MAX_ROWS and x.dtype == weight.dtype == torch.float32 and x.device.type == "cpu"
            and weight.is_contiguous() and weight.device.type == "cpu" and not torch.is_grad_enabled()
            and (bias is None or (bias.dtype == torch.float32 and bias.is_contiguous()))
            and library() is not None)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
           out: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` for x (..., K) of at most :data:`MAX_ROWS` rows, weight (N, K), bias (N,)
    (see :func:`supports`) -> (..., N): the same products in another summation order (fp32 rounding).
    ``out``: a contiguous fp32 tensor of the result's shape to write it into (else a new one)."""
    rows = x.reshape(-1, x.shape[-1]).contiguous()
    shape = (*x.shape[:-1], weight.shape[0])
    if out is None or out.shape != shape or out.dtype != torch.float32 or not out.is_contiguous():
        out = torch.empty(shape, dtype=torch.float32)
    library().hrpo_linear(rows.data_ptr(), rows.shape[0], rows.shape[1], weight.data_ptr(),
                          None if bias is None else bias.data_ptr(), out.data_ptr(), weight.shape[0], isa(),
                          torch.get_num_threads())
    return out


def _vocabulary_passes_apply(logits: torch.Tensor, k: int) -> bool:
    """Whether hrpo_topk_lse's passes run on ``logits``: (B, V) fp32 on a CPU without grad, 0 < k <= min(V,
    :data:`MAX_KEPT`), AVX2, outside :func:`disabled`, the kernels built."""
    return (not _OFF[0] and logits.device.type == "cpu" and logits.dtype == torch.float32 and logits.dim() == 2
            and 0 < k <= min(MAX_KEPT, logits.shape[1]) and not logits.requires_grad and isa() == 2
            and library() is not None)


def topk_lse(logits: torch.Tensor, k: int, lse_temperature: float):
    """The full-vocabulary passes of :func:`hrpo.sampling.sample_tokens` in one call: for logits (B, V) fp32 on a
    CPU, ``(kept_logits (B, k), kept_ids (B, k), lse (B,))`` with the k largest logits of each row, sorted by value
    descending and by id ascending among equal values (torch.topk leaves ties in no set order), and
    lse = logsumexp(logits / lse_temperature) (fp64 sum of fp32 exps; the same value as torch's to fp32
    rounding). None where it does not apply (another dtype or device, k over :data:`MAX_KEPT`, no AVX2 (the plain
    C loop is slower than torch's), inside :func:`disabled`, no kernels) or a row holds a NaN: the caller then uses
    torch's ops."""
    if not _vocabulary_passes_apply(logits, k):
        return None
    logits = logits.contiguous()
    batch = logits.shape[0]
    values, ids = torch.empty(batch, k), torch.empty(batch, k, dtype=torch.long)
    lse = torch.empty(batch)
    nans = library().hrpo_topk_lse(logits.data_ptr(), batch, logits.shape[1], k, lse_temperature, values.data_ptr(),
                                   ids.data_ptr(), lse.data_ptr(), isa(), torch.get_num_threads())
    return None if nans else (values, ids, lse)


def topk_sample(logits: torch.Tensor, k: int, temperature: float, lse_temperature: float, uniforms: torch.Tensor):
    """:func:`hrpo.sampling.sample_tokens` without top-p in one call, for logits (B, V) fp32 on a CPU and
    ``uniforms`` (B,) fp32: ``(tokens (B,), logprobs (B,), kept_probs (B, k), kept_ids (B, k))``, the kept logits
    and the log-sum-exp as :func:`topk_lse` finds them, kept_probs = softmax(kept / temperature) with this
    kernel's e^x (to about 2 ulp of torch's), the draw and the log-probs as sample_tokens makes them. None where
    :func:`topk_lse` steps aside or a row's largest logit is infinite: the caller then uses torch's ops."""
    if (not _vocabulary_passes_apply(logits, k) or uniforms.shape != logits.shape[:1]
            or uniforms.dtype != torch.float32 or uniforms.device.type != "cpu"):
        return None
    logits, uniforms = logits.contiguous(), uniforms.contiguous()
    batch = logits.shape[0]
    probs, ids = torch.empty(batch, k), torch.empty(batch, k, dtype=torch.long)
    tokens, logprobs = torch.empty(batch, dtype=torch.long), torch.empty(batch)
    skipped = library().hrpo_topk_sample(logits.data_ptr(), batch, logits.shape[1], k, temperature, lse_temperature,
                                         uniforms.data_ptr(), probs.data_ptr(), ids.data_ptr(), tokens.data_ptr(),
                                         logprobs.data_ptr(), isa(), torch.get_num_threads())
    return None if skipped else (tokens, logprobs, probs, ids)


def sampling_passes(device: torch.device):
    """What the engines pass as :func:`hrpo.sampling.sample_tokens`'s ``topk_lse`` on ``device``: :func:`topk_lse`
    on a CPU where :data:`OPTIONS` ``.native_sampling`` asks, else None: torch's ops, also while torch.compile
    traces the step (a foreign call would break its graph)."""
    return topk_lse if _native_sampling(device) else None


def sampling_draw(device: torch.device):
    """What the engines pass as :func:`hrpo.sampling.sample_tokens`'s ``draw`` on ``device``: :func:`topk_sample`
    where :func:`sampling_passes` gives :func:`topk_lse`, else None."""
    return topk_sample if _native_sampling(device) else None


def _native_sampling(device: torch.device) -> bool:
    return OPTIONS.native_sampling and device.type == "cpu" and not torch.compiler.is_compiling()


def _plain(tensors, dtype=torch.float32) -> bool:
    """Whether every tensor is a contiguous ``dtype`` tensor on a CPU (what the kernels read through a pointer)."""
    return all(t.device.type == "cpu" and t.dtype == dtype and t.is_contiguous() for t in tensors)


def _hybrid_ops(floats: tuple[torch.Tensor, ...], ids: tuple[torch.Tensor, ...] = ()) -> bool:
    """Whether :func:`topk_latent` and :func:`gated_mix` run: asked for (:data:`OPTIONS` ``.native_hybrid``), no
    grad, AVX2, outside :func:`disabled` and torch.compile, ``floats`` fp32 and ``ids`` int64, all contiguous on a
    CPU, and the kernels built."""
    return (OPTIONS.native_hybrid and not _OFF[0] and not torch.compiler.is_compiling()
            and not torch.is_grad_enabled() and isa() == 2 and _plain(floats) and _plain(ids, torch.long)
            and library() is not None)


def topk_latent(kept_probs: torch.Tensor, kept_ids: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor | None:
    """:func:`hrpo.gate.topk_latent_embeddings` of ``kept_probs`` (B, k) over the rows ``kept_ids`` (B, k) of
    ``embedding`` (V, H) (the embedding layer's outputs, as in Llama-family models) in one call, without gathering
    the (B, k, H) rows -> (B, H) fp32; None where it does not apply (:data:`OPTIONS` ``.native_hybrid`` off,
    grad on, not fp32 on an AVX2 CPU, inside :func:`disabled` or torch.compile, no kernels)."""
    if not _hybrid_ops((kept_probs, embedding), (kept_ids,)):
        return None
    batch, k = kept_probs.shape
    out = torch.empty(batch, embedding.shape[1])
    library().hrpo_topk_latent(kept_probs.data_ptr(), kept_ids.data_ptr(), batch, k, embedding.data_ptr(),
                               embedding.shape[1], out.data_ptr(), isa(), torch.get_num_threads())
    return out


def _decay(Lambda: torch.Tensor, c: float) -> torch.Tensor:
    """(H,) c softplus(-Lambda): the gate's a = e^(-decay r), what the mix kernels read."""
    return c * torch.nn.functional.softplus(-Lambda)


def gated_mix(e: torch.Tensor, latents: torch.Tensor, logits: torch.Tensor, Lambda: torch.Tensor, c: float):
    """:func:`hrpo.gate.gated_mix` in one call for e, latents (..., H) fp32 and the gate's pre-activations
    ``logits`` (..., 2H) (r then i), with the gate's ``Lambda`` (H,) and ``c``: (mixed, a), both (..., H) fp32;
    None where it does not apply (as for :func:`topk_latent`)."""
    if not _hybrid_ops((e, latents, logits, Lambda)):
        return None
    decay = _decay(Lambda, c)
    hidden = e.shape[-1]
    mixed, a = torch.empty_like(e), torch.empty_like(e)
    library().hrpo_gated_mix(e.data_ptr(), latents.data_ptr(), logits.data_ptr(), decay.data_ptr(),
                             e.numel() // hidden, hidden, mixed.data_ptr(), a.data_ptr(), isa())
    return mixed, a


def gate_inputs(e: torch.Tensor, latents: torch.Tensor, thinking: torch.Tensor, weight: torch.Tensor,
                bias: torch.Tensor, Lambda: torch.Tensor, c: float):
    """:func:`hrpo.gate.mix_inputs` in one call for token embeddings ``e`` and ``latents`` (B, 1, H) fp32, the
    bool ``thinking`` (B, 1) and the gate's stacked projections ``weight`` (2H, H) and ``bias`` (2H,) (r then
    i, :class:`hrpo.engines.weights.ConcatenatedGate`) with its ``Lambda`` (H,) and ``c``: ``(inputs (B, 1, H),
    mean_a (B, 1))`` fp32, the mix where thinking and e elsewhere; None where it does not apply (as for
    :func:`topk_latent`)."""
    if not (_hybrid_ops((e, latents, weight, bias, Lambda)) and thinking.dtype == torch.bool
            and thinking.is_contiguous() and e.dim() == 3 and e.shape[1] == 1 and latents.shape == e.shape
            and thinking.shape == e.shape[:2] and weight.shape == (2 * e.shape[2], e.shape[2])):
        return None
    batch, _, hidden = e.shape
    decay = _decay(Lambda, c)
    work, inputs, mean_a = torch.empty(batch, 3 * hidden), torch.empty_like(e), torch.empty(batch, 1)
    library().hrpo_gate_inputs(e.data_ptr(), latents.data_ptr(), thinking.data_ptr(), weight.data_ptr(),
                               bias.data_ptr(), decay.data_ptr(), batch, hidden, work.data_ptr(), inputs.data_ptr(),
                               mean_a.data_ptr(), isa(), torch.get_num_threads())
    return inputs, mean_a


class _Layer(ctypes.Structure):  # hrpo_layer of cpu_kernels.c
    _fields_ = [(name, ctypes.c_void_p) for name in (
        "input_norm", "post_norm", "q_norm", "k_norm", "qkv", "qkv_bias", "o", "o_bias", "gate_up", "gate_up_bias",
        "down", "down_bias", "kv")]


class _Dims(ctypes.Structure):  # hrpo_dims of cpu_kernels.c
    _fields_ = [(name, ctypes.c_int64) for name in (
        "batch", "hidden", "heads", "kv_heads", "head_dim", "intermediate", "cache_len")] + [
        ("eps", ctypes.c_float), ("scale", ctypes.c_float), ("isa", ctypes.c_int), ("threads", ctypes.c_int),
        ("rows_per_prompt", ctypes.c_int64), ("prompt_len", ctypes.c_int64)]


class _Head(ctypes.Structure):  # hrpo_head of cpu_kernels.c
    _fields_ = [(name, ctypes.c_void_p) for name in ("final_norm", "lm_head", "hidden", "logits")] + [
        ("vocab", ctypes.c_int64)]


def _is_silu(act) -> bool:
    probe = torch.linspace(-4, 4, 9)
    with torch.no_grad():
        return torch.allclose(act(probe), torch.nn.functional.silu(probe))


def layers_unsupported(weights, kv: list[torch.Tensor], valid: torch.Tensor, act, batch: int) -> str | None:
    """Why :class:`DecodeLayers` cannot run this decode step (None when it can): fp32 CPU tensors, contiguous,
    no unmerged LoRA epilogue, SiLU, at most :data:`MAX_ROWS` rows, and the kernels built."""
    if _OFF[0]:
        return "disabled"
    if not 0 < batch <= MAX_ROWS:
        return f"{batch} rows"
    tensors = [t for w in weights.tensors for t in w.values() if t is not None] + list(kv)
    tensors += [weights.final_norm, weights.lm_head]
    if not _plain(tensors):
        return "not contiguous fp32 CPU tensors"
    if any(w[f"{name}_lora_b"] is not None for w in weights.tensors for name in ("qkv", "o", "gate_up", "down")):
        return "unmerged LoRA"
    if weights.head_dim > 512 or weights.head_dim % 2 or weights.num_heads % weights.num_kv_heads:
        return "head layout"
    if not valid.is_contiguous():
        return "validity mask layout"
    if not _is_silu(act):
        return "activation"
    return None if library() is not None else "kernels not built"


class DecodeLayers:
    """Every decoder layer of a decode step in one call of ``hrpo_decode_layers`` (:file:`cpu_kernels.c`): the
    math of :func:`hrpo.engines.layers.decoder_layers` for one token per row, with this kernel's GEMMs and no
    per-op dispatch. Holds pointers to ``weights``, the caches ``kv`` and ``valid`` (keep them alive and in
    place); check :func:`layers_unsupported` first.

    ``rows_per_prompt`` R, ``prompt_len`` P: the rows come in runs of R that share one prompt, whose keys and
    values fill cache slots [0, P) of each row alike (the engine's shared-prompt prefill); attention then reads
    those slots once per run instead of once per row (R = 1: no sharing).

    ``logits`` (B, V), ``hidden`` (B, H): contiguous fp32 tensors the call also writes the step's logits and last
    normed hidden state into (what :func:`hrpo.engines.layers.last_logits` computes), in the same parallel region
    as the layers; None: the call ends after the layers (``writes_logits`` is False)."""

    def __init__(self, weights, kv: list[torch.Tensor], valid: torch.Tensor, batch: int, rows_per_prompt: int = 1,
                 prompt_len: int = 0, logits: torch.Tensor | None = None, hidden: torch.Tensor | None = None):
        if batch % rows_per_prompt:
            raise ValueError(f"{batch} rows do not come in runs of {rows_per_prompt}")
        self.keep = (weights, kv, valid, logits, hidden)
        pointer = lambda t: None if t is None else t.data_ptr()  # noqa: E731
        self.layers = (_Layer * len(kv))(*[_Layer(
            pointer(w["input_norm"]), pointer(w["post_norm"]), pointer(w["q_norm"]), pointer(w["k_norm"]),
            pointer(w["qkv"]), pointer(w["qkv_bias"]), pointer(w["o"]), pointer(w["o_bias"]), pointer(w["gate_up"]),
            pointer(w["gate_up_bias"]), pointer(w["down"]), pointer(w["down_bias"]), cache.data_ptr())
            for w, cache in zip(weights.tensors, kv)])
        width, cache_len = weights.tensors[0]["o"].shape[0], kv[0].shape[3]
        intermediate = weights.tensors[0]["down"].shape[1]
        threads = torch.get_num_threads()
        heads, kv_heads, dim = weights.num_heads, weights.num_kv_heads, weights.head_dim
        self.dims = _Dims(batch, width, heads, kv_heads, dim, intermediate, cache_len, weights.eps,
                          weights.scaling, isa(), threads, rows_per_prompt, prompt_len)
        group = heads // kv_heads
        per_thread = rows_per_prompt * group * (2 * dim + cache_len) + group * dim
        self.work = torch.empty(batch * (width + (heads + 2 * kv_heads) * dim + heads * dim + 3 * intermediate)
                                + threads * per_thread)
        self.x, self.delta = torch.empty(batch, 1, width), torch.empty(batch, 1, width)
        self.valid = valid
        self.head = None
        if logits is not None:
            vocab = weights.lm_head.shape[0]
            for name, t, shape in (("logits", logits, (batch, vocab)), ("hidden", hidden, (batch, width))):
                if t is None or tuple(t.shape) != shape or not _plain([t]):
                    raise ValueError(f"{name} must be a contiguous fp32 CPU tensor of shape {shape}")
            self.head = _Head(weights.final_norm.data_ptr(), weights.lm_head.data_ptr(), hidden.data_ptr(),
                              logits.data_ptr(), vocab)
        self.pointers = (ctypes.cast(self.layers, ctypes.c_void_p),
                         ctypes.cast(ctypes.pointer(self.dims), ctypes.c_void_p),
                         None if self.head is None else ctypes.cast(ctypes.pointer(self.head), ctypes.c_void_p))

    @property
    def writes_logits(self) -> bool:
        """Whether a call also writes the step's logits and hidden state (``logits`` and ``hidden`` were given)."""
        return self.head is not None

    def __call__(self, inputs: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: int, attend: int):
        """inputs (B, 1, H) at cache slot ``slot`` with RoPE cos/sin (B, 1, D), attending over the first ``attend``
        slots where valid -> (residual stream, last MLP output), both (B, 1, H), as decoder_layers returns (and the
        logits and hidden state, where ``writes_logits``)."""
        self.x.copy_(inputs)
        cos, sin = cos.float().contiguous(), sin.float().contiguous()
        layers, dims, head = self.pointers
        failed = library().hrpo_decode_layers(layers, len(self.layers), dims, self.x.data_ptr(),
                                              self.delta.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                                              self.valid.data_ptr(), self.valid.stride(0), slot, attend,
                                              self.work.data_ptr(), head)
        if failed:
            raise MemoryError("hrpo_decode_layers could not allocate its work counters")
        return self.x, self.delta
