"""hrpo: Hybrid latent reasoning via reinforcement learning (HRPO, arXiv 2505.18454)."""

from .config import TrainConfig, build_config
from .gate import HybridGate, latent_embeddings, mix_inputs, topk_latent_embeddings
from .objective import completion_logprobs, group_advantages, hrpo_loss, k3_kl
from .rollout import generate
from .sampling import MarkerMatcher, Rollout, SamplingConfig, marker_matcher

__all__ = [
    "HybridGate", "latent_embeddings", "topk_latent_embeddings", "mix_inputs", "TrainConfig", "build_config",
    "Rollout", "SamplingConfig", "MarkerMatcher", "marker_matcher", "generate", "group_advantages", "k3_kl",
    "hrpo_loss", "completion_logprobs",
]
__version__ = "0.1.0"
