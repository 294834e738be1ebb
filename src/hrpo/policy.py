"""A trained (or base) policy ready for decoding: model, tokenizer, gate and the run's sampling settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, find_checkpoint
from .config import TrainConfig, load_yaml, parse_task_options
from .gate import HybridGate, hidden_ratio
from .latent_options import LatentConfig, latent_config
from .models import GATE_FILE, ModelLoadError, eos_token_ids, load_gate, load_model, resolve_device
from .precision import choose_dtype
from .rollout import generate
from .sampling import Rollout, SamplingConfig, marker_matcher
from .text import encode_text_prompt, left_pad


@dataclass
class Policy:
    model: torch.nn.Module
    tokenizer: object
    gate: HybridGate | None
    marker: str
    temperature: float
    top_k: int
    top_p: float
    eos_ids: list[int]
    device: torch.device
    mode: str = "hybrid"  # hybrid | discrete | latent | hidden | soft | mixture | multiplex
    latent: LatentConfig = LatentConfig()  # the family modes' options (hrpo.latent)
    model_name: str | None = None  # what --model resolved to: a hub id, a directory or "embedded"
    dtype_reason: str = ""  # why the model runs in its dtype (what --dtype auto chose, and why)


def load_policy(model: str | None = None, adapter: str | Path | None = None, mode: str | None = None,
                dtype: str = "auto", device: str = "auto", marker: str | None = None,
                trust_remote_code: bool = False, latent: dict | list | None = None, top_k: int | None = None,
                top_p: float | None = None) -> Policy:
    """Load ``model`` (default: the adapter run's base model, else the embedded one) with an optional adapter.

    ``adapter`` is a run directory (newest checkpoint used) or a checkpoint directory. Mode, marker and
    sampling temperature default to the run's saved config (never parsed from directory names).
    ``trust_remote_code`` is never taken from a saved config: the caller must ask for it. ``latent``: options of
    the family modes (a mapping or KEY=VALUE strings) over the run's own when decoding in the run's mode;
    ``top_k``/``top_p`` replace the run's.
    """
    saved: dict = {}  # the run's config.yaml values; TrainConfig supplies the defaults for the rest
    ckpt = None
    if adapter is not None:
        ckpt = find_checkpoint(adapter)
        for candidate in (ckpt / "config.yaml", ckpt.parent / "config.yaml"):
            if candidate.is_file():
                saved = load_yaml(candidate)
                break
    run = TrainConfig(**saved)
    mode = mode or run.mode
    options = dict(run.latent or {}) if mode == run.mode else {}
    options.update(parse_task_options(latent, "--latent") if latent else {})
    top_k = run.top_k if top_k is None else top_k
    top_p = run.top_p if top_p is None else top_p
    latent_cfg = latent_config(options, mode, top_k, top_p)  # before the model loads
    dev = resolve_device(device)
    precision = choose_dtype(dtype, dev)
    loaded = load_model(model or run.model, dtype=precision.dtype, device=dev,
                        trust_remote_code=trust_remote_code)
    net = loaded.model
    if ckpt is not None:
        from peft import PeftModel

        try:  # find_checkpoint guarantees adapter_model.safetensors, which peft prefers over any pickle file
            net = PeftModel.from_pretrained(net, str(ckpt)).to(dev)
        except Exception as exc:  # noqa: BLE001 - a damaged file or a config of another model
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CheckpointError(f"{ckpt}: could not load the LoRA adapter (truncated, or not for this base "
                                  f"model): {first}") from None
        net.eval()
    gate = None
    if mode == "hybrid":
        hidden = net.get_input_embeddings().weight.shape[1]
        gate = HybridGate(hidden, run.r_min, run.r_max, run.gate_c)
        gate.reset_parameters(generator=torch.Generator().manual_seed(run.seed))
        if ckpt is not None:
            if not (ckpt / GATE_FILE).is_file():
                raise CheckpointError(f"{ckpt} has no {GATE_FILE}: it was trained in discrete mode; "
                                      f"pass --mode discrete")
            try:
                load_gate(gate, ckpt)
            except ModelLoadError as exc:
                raise CheckpointError(str(exc)) from None
        gate.to(dev)
    return Policy(model=net, tokenizer=loaded.tokenizer, gate=gate, marker=marker or run.marker or "####",
                  temperature=run.temperature, top_k=top_k, top_p=top_p,
                  eos_ids=eos_token_ids(loaded.model, loaded.tokenizer), device=dev, mode=mode,
                  model_name=model or run.model, dtype_reason=precision.summary, latent=latent_cfg)


def generate_ids(policy: Policy, prompt_ids: list[list[int]], max_new_tokens: int, greedy: bool = False,
                 temperature: float | None = None, seed: int = 0, engine: str = "auto") -> Rollout:
    """Decode a batch of prompts (lists of ids) with the policy's hybrid mixing; returns the Rollout.

    ``engine``: the decode loop (see :func:`hrpo.rollout.generate`; auto = the CUDA-graph engine where it
    supports the model, else eager)."""
    ids, mask = left_pad(prompt_ids, policy.tokenizer.pad_token_id, policy.device)
    sampling = SamplingConfig(max_new_tokens=max_new_tokens, temperature=temperature or policy.temperature,
                              top_k=policy.top_k, top_p=policy.top_p, greedy=greedy)
    matcher = None
    if policy.mode != "discrete":
        matcher = marker_matcher(policy.tokenizer, policy.marker, policy.model.get_input_embeddings().weight.shape[0])
    generator = torch.Generator(device=policy.device).manual_seed(seed)
    return generate(policy.model, ids, mask, sampling, gate=policy.gate, matcher=matcher,
                    eos_token_ids=policy.eos_ids, pad_token_id=policy.tokenizer.pad_token_id, generator=generator,
                    mode=policy.mode, engine=engine, latent=policy.latent)


def latent_neighbours(policy: Policy, rollout: Rollout, row: int = 0, k: int = 5) -> list[dict]:
    """What the continuous part carries: for each thinking position of ``rollout`` row ``row``, the sampled
    token, the gate's mean a (weight on the token embedding) and the ``k`` tokens whose input embeddings are
    closest (cosine) to the fed-back latent. Returns one dict per thinking position."""
    if rollout.latents is None:
        return []
    embed = policy.model.get_input_embeddings()
    with torch.no_grad():
        table = torch.nn.functional.normalize(embed(torch.arange(embed.weight.shape[0], device=policy.device))
                                              .float(), dim=-1)
        positions = rollout.thinking_mask[row].nonzero().flatten().tolist()
        latents = torch.nn.functional.normalize(rollout.latents[row, positions].float(), dim=-1)
        cosine, ids = (latents @ table.T).topk(k, dim=-1)
    out = []
    for j, t in enumerate(positions):
        token = int(rollout.completion_ids[row, t])
        out.append({"position": t, "token_id": token, "token": policy.tokenizer.decode([token]),
                    "gate_a": float(rollout.gate_mean[row, t]),
                    "nearest": [{"token": policy.tokenizer.decode([int(i)]), "token_id": int(i), "cosine": float(c)}
                                for i, c in zip(ids[j], cosine[j])]})
    return out


def generate_text(policy: Policy, prompt: str, max_new_tokens: int = 256, greedy: bool = False,
                  temperature: float | None = None, seed: int = 0, chat: bool = True,
                  show_latents: bool = False) -> dict:
    """One completion for ``prompt``: ``{prompt_tokens, tokens, completion, hidden_ratio, thinking_tokens,
    mode}``, plus ``latents`` (see :func:`latent_neighbours`) when ``show_latents``."""
    prompt_tokens = encode_text_prompt(policy.tokenizer, prompt, chat=chat)
    rollout = generate_ids(policy, [prompt_tokens], max_new_tokens, greedy, temperature, seed)
    n = int(rollout.completion_mask[0].sum())
    tokens = rollout.completion_ids[0, :n].tolist()
    ratio = hidden_ratio(rollout.gate_mean, rollout.thinking_mask) if policy.mode != "discrete" else 0.0
    result = {"prompt_tokens": prompt_tokens, "tokens": tokens,
              "completion": policy.tokenizer.decode(tokens, skip_special_tokens=True),
              "hidden_ratio": ratio, "thinking_tokens": int(rollout.thinking_mask[0].sum()), "mode": policy.mode}
    if show_latents:
        result["latents"] = latent_neighbours(policy, rollout)
    return result
