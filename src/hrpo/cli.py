"""The `hrpo` command line: `hrpo train` and `hrpo generate`."""

from __future__ import annotations

import argparse
import json
import math
import sys

from .config import ConfigError, add_config_arguments, build_config, load_yaml


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="Train with HRPO (or the GRPO baseline with --mode discrete).",
                       description="Train a causal LM with HRPO. With no arguments: the embedded "
                                   "SmolLM2-135M-Instruct on the embedded arithmetic task (~15 min on 2 CPU cores).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML file of config keys (CLI flags override it).")
    p.add_argument("--resume", metavar="RUN_DIR", help="Continue the run in RUN_DIR from its last checkpoint.")
    p.add_argument("--quiet", action="store_true", help="No progress bar or messages.")
    add_config_arguments(p)


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="Generate a completion with a base model or a trained adapter.",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", default=None, help="Hub id, local directory or 'embedded' (default: the adapter's "
                                                 "base model, else embedded).")
    p.add_argument("--adapter", default=None, metavar="RUN_DIR", help="Run or checkpoint directory to load.")
    p.add_argument("--prompt", required=True, help="User message (the chat template is applied).")
    p.add_argument("--max-new-tokens", type=int, default=256, help="Maximum new tokens.")
    p.add_argument("--greedy", action="store_true", help="Greedy decoding (the latent still uses the temperature).")
    p.add_argument("--temperature", type=float, default=None, help="Sampling temperature (default: the run's).")
    p.add_argument("--mode", choices=("hybrid", "discrete"), default=None,
                   help="Decoding mode (default: the run's mode, hybrid without an adapter).")
    p.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true", help="Print one JSON object instead of the text.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrpo", description="Hybrid latent reasoning via reinforcement "
                                                               "learning (HRPO, arXiv 2505.18454).")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _generate_parser(sub)
    return parser


def _cli_values(args: argparse.Namespace) -> dict:
    skip = {"command", "config", "resume", "quiet"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import resume_config, train

    overrides = _cli_values(args)
    if args.resume:
        cfg = resume_config(args.resume, overrides)
    else:
        cfg = build_config(load_yaml(args.config) if args.config else {}, overrides)
    train(cfg, resume=args.resume, quiet=args.quiet)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    from .policy import generate_text, load_policy

    policy = load_policy(args.model, args.adapter, args.mode, dtype=args.dtype, device=args.device)
    result = generate_text(policy, args.prompt, args.max_new_tokens, greedy=args.greedy,
                           temperature=args.temperature, seed=args.seed)
    if isinstance(result["hidden_ratio"], float) and math.isnan(result["hidden_ratio"]):
        result["hidden_ratio"] = None
    if args.json:
        print(json.dumps(result))
    else:
        print(result["completion"])
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .trainer import quiet_libraries

    quiet_libraries()
    from .checkpoint import CheckpointError
    from .models import ModelLoadError

    try:
        return {"train": cmd_train, "generate": cmd_generate}[args.command](args)
    except (ConfigError, ModelLoadError, CheckpointError) as exc:
        print(f"hrpo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
