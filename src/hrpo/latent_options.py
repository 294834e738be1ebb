"""The options of the latent-reasoning family modes (soft, mixture, multiplex): one frozen dataclass, parsed
and checked here, below the config (the step math is :mod:`hrpo.latent`)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .errors import ConfigError

FAMILY_MODES = ("soft", "mixture", "multiplex")  # the modes this module defines (hrpo.gate has the others)
NOISES = ("none", "gumbel", "gaussian")


@dataclass(frozen=True)
class LatentConfig:
    """Options of the family modes (the ``latent`` group of the config), defaults from each paper's code."""

    noise: str = "none"  # soft mode: none (Soft Thinking), gumbel (SofT-GRPO) or gaussian (Soft Tokens, Hard Truths)
    gumbel_tau: float = 0.1  # temperature of the Gumbel-softmax weights (SofT-GRPO's training script)
    gaussian_sigma: float = 0.33  # std of the Gaussian noise, in units of the embedding entries' RMS
    mixture_beta: float = 1.0  # mixture: pseudo-count of the sampled token against the distribution
    multiplex_k: int = 3  # multiplex: tokens drawn per thinking step
    multiplex_uniform: bool = False  # multiplex: weigh the K draws equally instead of by their probability
    cold_stop_entropy: float = 0.01  # soft: entropy (nats) under which a step counts towards the cold stop
    cold_stop_steps: int = 256  # soft: that many low-entropy steps in a row end the soft span (0 = never)

    def describe(self, mode: str) -> str:
        """The options that matter in ``mode``, e.g. 'noise=gumbel gumbel_tau=0.1 ...'."""
        keys = {"soft": ["noise", "cold_stop_entropy", "cold_stop_steps"], "mixture": ["mixture_beta"],
                "multiplex": ["multiplex_k", "multiplex_uniform"]}.get(mode, [])
        if mode == "soft" and self.noise != "none":
            keys.insert(1, "gumbel_tau" if self.noise == "gumbel" else "gaussian_sigma")
        return " ".join(f"{k}={getattr(self, k)}" for k in keys)


LATENT_KEYS = tuple(f.name for f in fields(LatentConfig))


def latent_config(options: dict | None, mode: str, top_k: int | None = None, top_p: float = 1.0,
                  training: bool = False) -> LatentConfig:
    """Check the ``latent:`` options for ``mode`` and build the :class:`LatentConfig`; ConfigError names the
    bad key (``latent.noise`` ...). With ``training``, also refuses the modes RL cannot train."""
    options = dict(options or {})
    unknown = sorted(set(options) - set(LATENT_KEYS))
    if unknown:
        raise ConfigError(f"latent.{unknown[0]}: unknown option (choose from {', '.join(LATENT_KEYS)})")
    defaults = LatentConfig()
    values = {}
    for key, value in options.items():
        values[key] = _coerce(key, value, type(getattr(defaults, key)))
    owner = {"mixture_beta": "mixture", "multiplex_k": "multiplex", "multiplex_uniform": "multiplex"}
    for key in values:
        wanted = owner.get(key, "soft")
        if wanted != mode:
            raise ConfigError(f"latent.{key}: is an option of mode {wanted}, not of mode {mode}")
    cfg = LatentConfig(**values)
    check_latent(cfg, mode, top_k, top_p, training)
    return cfg


def check_latent(cfg: LatentConfig, mode: str, top_k: int | None = None, top_p: float = 1.0,
                 training: bool = False) -> None:
    """Raise ConfigError (naming the ``latent.*`` key) for options that ``mode`` with this sampling's ``top_k``
    (None: unknown) and ``top_p`` cannot run."""

    def bad(key: str, why: str):
        raise ConfigError(f"latent.{key}: {why}")

    if cfg.noise not in NOISES:
        bad("noise", f"unknown noise kind {cfg.noise!r} (choose from {', '.join(NOISES)})")
    if not (math.isfinite(cfg.mixture_beta) and cfg.mixture_beta >= 0.0):
        bad("mixture_beta", f"must be a number >= 0 (the sampled token's pseudo-count; MoI uses 0.5-2), got "
                            f"{cfg.mixture_beta}")
    if cfg.multiplex_k < 1:
        bad("multiplex_k", f"must be >= 1 (tokens drawn per step), got {cfg.multiplex_k}")
    for key in ("gumbel_tau", "gaussian_sigma"):
        if not (math.isfinite(getattr(cfg, key)) and getattr(cfg, key) > 0):
            bad(key, f"must be > 0, got {getattr(cfg, key)}")
    if cfg.cold_stop_entropy < 0 or cfg.cold_stop_steps < 0:
        bad("cold_stop_entropy" if cfg.cold_stop_entropy < 0 else "cold_stop_steps", "must be >= 0")
    if cfg.noise != "none" and mode != "soft":
        bad("noise", f"noise={cfg.noise} perturbs soft mode's concept token; use --mode soft (mode is {mode})")
    if mode == "soft" and cfg.noise != "none":
        if top_p < 1.0:
            bad("noise", f"noise={cfg.noise} needs top_p = 1 (its log-prob is over the top-k kept set)")
        if cfg.noise == "gumbel" and top_k == 0:
            bad("noise", "noise=gumbel needs top_k > 0 (the perturbed scores of the kept set are stored per step)")
    if training and mode == "soft" and cfg.noise == "none":
        bad("noise", "soft mode without noise is deterministic given the distribution: nothing for RL to "
                     "reinforce. Train with noise=gumbel or noise=gaussian, or use soft mode in hrpo eval/generate")


def _coerce(key: str, value, kind: type):
    if kind is str:
        return str(value)
    if kind is bool:
        if isinstance(value, bool) or str(value).lower() in ("true", "false"):
            return value if isinstance(value, bool) else str(value).lower() == "true"
        raise ConfigError(f"latent.{key}: {value!r} is not true or false")
    try:
        number = float(value)
        if isinstance(value, bool) or (kind is int and number != int(number)):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"latent.{key}: {value!r} is not a{'n integer' if kind is int else ' number'}") from None
    return int(number) if kind is int else number


def trains_actions(mode: str, latent: LatentConfig) -> bool:
    """Whether a thinking position's log-prob in ``mode`` is other than its token's (see :func:`action_logprob`)."""
    return mode == "multiplex" or (mode == "soft" and latent.noise != "none")


def action_width(mode: str, latent: LatentConfig, kept: int) -> int:
    """Ids stored per step for the objective (0: none): the K draws (multiplex), the kept set (noisy soft)."""
    if mode == "multiplex":
        return latent.multiplex_k
    return kept if mode == "soft" and latent.noise != "none" and kept > 0 else 0
