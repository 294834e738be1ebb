"""The `hrpo` command line: train, generate, eval, tasks, bench, plot and compare."""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .arg_types import non_negative_int, positive_int, temperature_value, top_p_value
from .config import DTYPES, MODES, TASK_KEYS, ConfigError, add_config_arguments, build_config, load_yaml


# ---------------------------------------------------------------------------------------- argument checks
# Bad values fail at parse time (argparse: "hrpo CMD: error: argument --flag: ...", exit 2) or in the command's
# check function, which runs before any data or model is loaded (ConfigError: exit 2 through main).


def _check_device(name: str | None) -> None:
    """The train config's device check (same messages): a torch device name, and CUDA only where it exists."""
    if name is None or name == "auto":
        return
    from .config import TrainConfig, _validate_generic

    def bad(key: str, why: str) -> None:
        raise ConfigError(f"invalid argument: {key}={name!r}: {why}")

    _validate_generic(TrainConfig(device=name), bad)


def _check_generate(args: argparse.Namespace) -> None:
    _check_device(args.device)
    if args.latents_json:
        path = Path(args.latents_json)
        if path.is_dir():
            raise ConfigError(f"--latents-json {path}: is a directory, not a file name")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"--latents-json {path}: cannot create its directory {path.parent}: "
                              f"{exc.strerror or exc}") from None


def _split(value: str | None) -> tuple[str, ...] | None:
    """A comma list flag: None when not given, else its non-empty items."""
    return tuple(x.strip() for x in value.split(",") if x.strip()) if value else None


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where the help does not state a default already and X says something
    (not None, not False)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action)


def _preset_text() -> str:
    from .config import EMBEDDED_PRESET, TrainConfig

    defaults = TrainConfig()
    return ", ".join(f"{k} {v:g}" if isinstance(v, float) else f"{k} {v}" for k, v in EMBEDDED_PRESET.items()
                     if getattr(defaults, k) != v)


def _train_parser(sub, sft: bool = False) -> None:
    if sft:  # the same flags and run directory; algo sft, mode discrete (docs/baselines.md)
        p = sub.add_parser("sft", help="Supervised fine-tuning of LoRA on the task's gold solutions (the SFT "
                                       "baseline; start RL from it with hrpo train --init-adapter RUN).",
                           description="hrpo train --algo sft --mode discrete: teacher forcing on each training "
                                       "example's gold solution (reasoning, marker, answer) in the prompt format "
                                       "RL uses, loss on completion tokens only. Same run directory, metrics, "
                                       "checkpoints, --resume and plots as hrpo train; --prompts-per-step examples "
                                       f"per step. With --model embedded the preset applies: {_preset_text()}.",
                           formatter_class=_DefaultsHelpFormatter)
    else:
        p = sub.add_parser("train", help="Train with HRPO (or the GRPO baseline with --mode discrete).",
                           description="Train a causal LM with HRPO. With no arguments: the embedded "
                                       "SmolLM2-135M-Instruct on the embedded arithmetic task (~13 min on 2 CPU "
                                       "cores). The defaults below are the paper's; with --model embedded (the "
                                       f"default) the quick-start preset replaces some: {_preset_text()}.",
                           formatter_class=_DefaultsHelpFormatter)
    p.add_argument("--config", metavar="FILE", help="YAML file of config keys (CLI flags override it).")
    p.add_argument("--resume", metavar="RUN_DIR", help="Continue the run in RUN_DIR from its last checkpoint.")
    p.add_argument("--quiet", action="store_true", help="No progress bar or messages.")
    add_config_arguments(p)


def _policy_arguments(p) -> None:
    """--model and --adapter, shared by generate and eval."""
    p.add_argument("--model", default=None, help="Hub id, local directory or 'embedded' (default: the adapter's "
                                                 "base model, else embedded).")
    p.add_argument("--adapter", default=None, metavar="RUN_DIR", help="Run or checkpoint directory to load.")
    p.add_argument("--latent", action="append", default=None, metavar="KEY=VALUE",
                   help="An option of the latent-reasoning family modes (soft, mixture, multiplex), repeatable, e.g. "
                        "noise=gumbel, mixture_beta=0.5, multiplex_k=2 (default: the run's; docs/methods.md).")
    p.add_argument("--top-k", type=non_negative_int, default=None, metavar="K",
                   help="Top-k of the sampling distribution and the latent, 0 = off (default: the run's, else 50).")
    p.add_argument("--top-p", type=top_p_value, default=None, metavar="P",
                   help="Nucleus top-p in (0, 1], 1 = off (default: the run's, else 1.0).")
    p.add_argument("--infer", choices=("same", "hard"), default="same",
                   help="hard: decode with plain tokens (mode discrete), e.g. a model trained with soft tokens "
                        "('train soft, infer hard'); same: the --mode given, else the run's.")


def _runtime_arguments(p) -> None:
    """--seed, --dtype, --device and --trust-remote-code, shared by generate and eval."""
    p.add_argument("--seed", type=int, default=0, help="Sampling seed.")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="Model dtype (default: auto = bf16 on CUDA and on CPUs with native bf16, else fp32; "
                        "the choice and why are printed).")
    p.add_argument("--device", default="auto",
                   help="cpu, cuda or cuda:N (default: auto = cuda if available, else cpu).")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="Let the model repository run its own Python code (only for models you trust).")


def _generate_parser(sub) -> None:
    p = sub.add_parser("generate", help="Generate a completion with a base model or a trained adapter.",
                       formatter_class=_DefaultsHelpFormatter)
    _policy_arguments(p)
    p.add_argument("--prompt", required=True, help="User message (the chat template is applied).")
    p.add_argument("--max-new-tokens", type=positive_int, default=256, help="Maximum new tokens (>= 1).")
    p.add_argument("--greedy", action="store_true", help="Greedy decoding (the latent still uses the temperature).")
    p.add_argument("--temperature", type=temperature_value, default=None,
                   help="Sampling temperature, > 0 (default: the run's; for greedy decoding use --greedy).")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="Decoding mode (default: the run's mode, hybrid without an adapter).")
    _runtime_arguments(p)
    p.add_argument("--json", action="store_true", help="Print one JSON object instead of the text.")
    p.add_argument("--show-latents", action="store_true",
                   help="For each thinking position: the sampled token, the gate's mean a and the 5 tokens whose "
                        "embeddings are closest (cosine) to the latent.")
    p.add_argument("--latents-json", metavar="FILE", default=None,
                   help="Save the --show-latents table as JSON to FILE (its directory is created). Works without "
                        "--show-latents too: the table is then only written to FILE, not printed.")


def _eval_parser(sub) -> None:
    from .tasks import DATA_HELP

    p = sub.add_parser("eval", help="Evaluate a base model or a trained adapter on one or more tasks.",
                       description="Batched greedy (default) or sampled decoding with the same hybrid mixing as "
                                   "training; writes eval_<task>.json and eval_<task>_examples.jsonl.",
                       epilog=DATA_HELP, formatter_class=argparse.RawDescriptionHelpFormatter)
    _policy_arguments(p)
    p.add_argument("--task", action="append", default=None, metavar="T",
                   help="Task (repeatable): a built-in name, generic, rg:NAME, path/to/file.py:Class or "
                        "module:factory (default: the --adapter run's task).")
    p.add_argument("--data", action="append", default=None, metavar="PATH",
                   help="Local data instead of the hub (see below; repeatable, one per --task).")
    p.add_argument("--split", default="test", help="Data split (default: test).")
    p.add_argument("--limit", type=positive_int, default=None, metavar="N",
                   help="Evaluate the first N examples only (N >= 1; default: all).")
    p.add_argument("--batch-size", type=positive_int, default=32, help="Prompts per decoding batch (default: 32).")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--greedy", action="store_true", help="Greedy decoding (the default).")
    how.add_argument("--temperature", type=temperature_value, default=None, metavar="X",
                     help="Sample at temperature X > 0 instead of greedy decoding.")
    p.add_argument("--mode", choices=MODES, default=None,
                   help="Decoding mode (default: the run's mode, hybrid without an adapter).")
    p.add_argument("--max-new-tokens", type=positive_int, default=512, help="Maximum new tokens (default: 512).")
    p.add_argument("--max-prompt-tokens", type=positive_int, default=1024, metavar="N",
                   help="Keep the last N prompt tokens, N >= 1 (longer prompts are cut on the left; default: 1024).")
    p.add_argument("--prompt-format", choices=("hash", "think"), default=None,
                   help="'hash': answer after '####' (the reference's prompt); 'think': <think>...</think> answer "
                        "(default: the adapter run's marker, else hash).")
    p.add_argument("--output-dir", default=None, metavar="DIR",
                   help="Report directory (default: the adapter directory, else runs/eval-<time>).")
    _runtime_arguments(p)
    p.add_argument("--quiet", action="store_true", help="No progress bar.")
    group = p.add_argument_group("task options and rewards (as for hrpo train; default: the --adapter run's, "
                                 "when --task is its task)")
    add_config_arguments(group, only=TASK_KEYS)


def _tasks_parser(sub) -> None:
    p = sub.add_parser("tasks", help="List the tasks: built-in ones with their fields, and reasoning-gym's.",
                       description="Without NAME: every built-in task with its data fields, the generic task, how "
                                   "to give your own task and rewards, and the reasoning-gym generators (when "
                                   "reasoning-gym is installed). With NAME (e.g. rg:chain_sum, gsm8k): its "
                                   "options or fields.")
    p.add_argument("name", nargs="?", default=None, metavar="NAME", help="One task to show in detail.")


def _plot_parser(sub) -> None:
    p = sub.add_parser("plot", help="Plot training curves of one or more runs as PNGs.",
                       description="One PNG per metric (reward, eval accuracy, hidden_ratio, completion length, kl, "
                                   "grad_norm). Runs sharing a label (their mode, or --group-by KEY) get one "
                                   "colour: the group's mean solid, a band and the single runs faint; a run "
                                   "alone is one line, raw faint and smoothed solid.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Run directories (each with metrics.jsonl).")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="Output directory (default: RUN_DIR/plots for one run, else ./plots).")
    p.add_argument("--smoothing", type=float, default=None, metavar="X",
                   help="EMA weight in [0, 1) or a whole moving-average window >= 1 (default: 0.8; 0 = raw).")
    p.add_argument("--group-by", default=None, metavar="KEY",
                   help="A config.yaml key whose runs form a group, e.g. seed or lr (default: mode; 'none': one "
                        "line per run).")
    p.add_argument("--band", choices=("minmax", "std"), default="minmax",
                   help="Group band: min-max over the runs, or mean +- 1 sample std (default: minmax).")


def _compare_parser(sub) -> None:
    p = sub.add_parser("compare", help="Summarise runs side by side (Markdown table or JSON).",
                       description="One row per run: final (mean of the last 10 steps) and best (10-step moving "
                                   "average) reward, eval accuracy (last, best), hidden_ratio, completion length "
                                   "(first 10 vs last 10 steps), kl, wall time.")
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="Run directories (each with metrics.jsonl).")
    p.add_argument("--json", action="store_true", help="Print JSON rows instead of a Markdown table.")
    p.add_argument("--out", default=None, metavar="FILE", help="Also write the table (or JSON) to FILE.")


def _bench_parser(sub) -> None:
    p = sub.add_parser("bench", help="Benchmark rollout throughput or training-step memory (random-init weights).",
                       description="rollout: hybrid and discrete rollouts on each engine (eager, static, graph on "
                                   "CUDA) and HF generate baselines (dynamic cache; static cache on CUDA), same "
                                   "process, same prompts, exactly --new-tokens tokens each. train: one HRPO "
                                   "micro-batch (reference pass + LoRA forward/backward) and its peak memory.")
    p.add_argument("what", choices=("rollout", "train"))
    p.add_argument("--shape", default="qwen2.5-1.5b",
                   help="qwen2.5-1.5b, qwen2.5-3b, embedded, or a directory with a config.json (default: %(default)s).")
    p.add_argument("--batch", type=positive_int, default=None,
                   help="Rows (rollout; default 64 on CUDA, 8 on CPU) or sequences per micro-batch (train; "
                        "default 8 on CUDA, 2 on CPU).")
    p.add_argument("--prompt-len", type=positive_int, default=None,
                   help="Prompt tokens (default: rollout 256 on CUDA, 64 on CPU; train 1024 on CUDA, 128 on CPU).")
    p.add_argument("--new-tokens", type=positive_int, default=None,
                   help="New tokens (default: rollout 256 on CUDA, 64 on CPU; train 1024 on CUDA, 128 on CPU).")
    p.add_argument("--engines", default=None,
                   help="Comma list of rollout engines: eager, static, graph (CUDA only), auto "
                        "(default: eager,static[,graph]).")
    p.add_argument("--baselines", default=None,
                   help="Comma list: hf_dynamic, hf_static (default: both on CUDA, hf_dynamic on CPU).")
    p.add_argument("--group", type=positive_int, default=1,
                   help="rollout: rows per distinct prompt (G completions share one prompt, as in training; our "
                        "engines prefill it once; default: %(default)s, every row its own prompt).")
    p.add_argument("--lora-r", type=non_negative_int, default=0,
                   help="rollout: wrap the model in a LoRA adapter of this rank, as in training (default: none).")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="train: keep all activations.")
    p.add_argument("--repeats", type=positive_int, default=2,
                   help="Timed calls after the first, >= 1 (best is reported; default: %(default)s).")
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="Model dtype (default: auto = bf16 on CUDA and on CPUs with native bf16, else fp32).")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda if available, else cpu).")
    p.add_argument("--json", action="store_true", help="Print one JSON object instead of a table.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hrpo", description="Hybrid latent reasoning via reinforcement "
                                                               "learning (HRPO, arXiv 2505.18454).")
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _train_parser(sub, sft=True)
    _generate_parser(sub)
    _eval_parser(sub)
    _tasks_parser(sub)
    _plot_parser(sub)
    _compare_parser(sub)
    _bench_parser(sub)
    return parser


def _cli_values(args: argparse.Namespace) -> dict:
    skip = {"command", "config", "resume", "quiet"}
    return {k: v for k, v in vars(args).items() if k not in skip}


def cmd_train(args: argparse.Namespace) -> int:
    from .trainer import resume_config, train

    overrides = _cli_values(args)
    if args.command == "sft":  # resuming another algorithm's run with hrpo sft is refused by resume_config
        overrides.setdefault("algo", "sft")
        if not args.resume:
            overrides.setdefault("mode", "discrete")
    if args.resume:
        cfg = resume_config(args.resume, overrides)
    else:
        cfg = build_config(load_yaml(args.config) if args.config else {}, overrides)
    train(cfg, resume=args.resume, quiet=args.quiet)
    return 0


def _decode_mode(args: argparse.Namespace) -> str | None:
    if args.infer == "hard":
        if args.mode not in (None, "discrete"):
            raise ConfigError(f"--infer hard decodes with plain tokens (mode discrete); it cannot be combined with "
                              f"--mode {args.mode}")
        return "discrete"
    return args.mode


def cmd_generate(args: argparse.Namespace) -> int:
    _check_generate(args)
    from .policy import generate_text, load_policy

    policy = load_policy(args.model, args.adapter, _decode_mode(args), dtype=args.dtype, device=args.device,
                         trust_remote_code=args.trust_remote_code, latent=args.latent, top_k=args.top_k,
                         top_p=args.top_p)
    print(policy.dtype_reason, file=sys.stderr, flush=True)
    result = generate_text(policy, args.prompt, args.max_new_tokens, greedy=args.greedy,
                           temperature=args.temperature, seed=args.seed,
                           show_latents=args.show_latents or bool(args.latents_json))
    if isinstance(result["hidden_ratio"], float) and math.isnan(result["hidden_ratio"]):
        result["hidden_ratio"] = None
    if args.latents_json:
        try:
            Path(args.latents_json).write_text(json.dumps(result["latents"], indent=1))
        except OSError as exc:
            raise ConfigError(f"--latents-json {args.latents_json}: cannot write: {exc.strerror or exc}") from None
        if not args.show_latents:
            del result["latents"]
    if args.json:
        print(json.dumps(result))
        return 0
    print(result["completion"])
    if "latents" in result:
        _print_latents(result["latents"])
    return 0


def _print_latents(rows: list[dict]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="latents at thinking positions")
    for col in ("pos", "token", "gate a", "nearest tokens (cosine)"):
        table.add_column(col)
    for r in rows:
        near = "  ".join(f"{n['token']!r} {n['cosine']:.2f}" for n in r["nearest"])
        table.add_row(str(r["position"]), repr(r["token"]), f"{r['gate_a']:.4f}", near)
    Console().print(table)


def cmd_eval(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from rich.console import Console

    from .evaluate import evaluate, summary_table, write_report

    from .config import task_settings_from
    from .eval_jobs import eval_jobs, run_config, score_with_rewards

    _check_device(args.device)
    run = run_config(args.adapter)
    # the run's format (its marker) unless --prompt-format says otherwise, as the policy's marker defaults
    prompt_format = args.prompt_format or ("think" if run.get("marker") == "</think>" else "hash")
    given = task_settings_from({key: getattr(args, key, None) for key in TASK_KEYS})
    # every task's data and rewards before the model, so bad input fails fast
    jobs = eval_jobs(args.task, args.data, args.split, args.limit, given, run, prompt_format)
    from .policy import load_policy

    policy = load_policy(args.model, args.adapter, _decode_mode(args), dtype=args.dtype, device=args.device,
                         trust_remote_code=args.trust_remote_code, latent=args.latent, top_k=args.top_k,
                         top_p=args.top_p)
    print(policy.dtype_reason, file=sys.stderr, flush=True)
    out_dir = Path(args.output_dir or args.adapter or f"runs/eval-{time.strftime('%Y%m%d-%H%M%S')}")
    rows = []
    for name, path, task, examples, rewards in jobs:
        result = evaluate(policy, task, examples, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                          greedy=args.temperature is None, temperature=args.temperature, progress=not args.quiet,
                          max_prompt_tokens=args.max_prompt_tokens, seed=args.seed)
        if rewards:
            result["metrics"].update(score_with_rewards(rewards, result, examples))
        meta = {"model": policy.model_name, "adapter": args.adapter, "mode": policy.mode, "split": args.split,
                "task_spec": name, "data": path or ("hub" if getattr(task, "hub", None) else "generated"),
                "limit": args.limit, "prompt_format": prompt_format, "marker": task.marker,
                "greedy": args.temperature is None, "temperature": args.temperature,
                "latent_temperature": policy.temperature, "max_new_tokens": args.max_new_tokens,
                "max_prompt_tokens": args.max_prompt_tokens, "batch_size": args.batch_size, "seed": args.seed,
                "rewards": [{"name": r.spec, "weight": r.weight} for r in rewards] if rewards else None}
        json_path, _ = write_report(result, out_dir, task.name, meta)
        rows.append({"task": task.name, "metrics": result["metrics"], "path": json_path})
    Console().print(summary_table(rows))
    return 0


def cmd_tasks(args: argparse.Namespace) -> int:
    from .tasks import catalog

    print(catalog.detail(args.name) if args.name else catalog.overview(), end="")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .plots import DEFAULT_SMOOTHING, PLOTS_DIR, plot_runs

    runs = [Path(d) for d in args.run_dirs]
    out = Path(args.out) if args.out else (runs[0] / PLOTS_DIR if len(runs) == 1 else Path(PLOTS_DIR))
    smoothing = DEFAULT_SMOOTHING if args.smoothing is None else args.smoothing
    written = plot_runs(runs, out, smoothing=smoothing, group_by=args.group_by, band=args.band)
    if not written:
        raise ConfigError(f"nothing to plot: no run in {', '.join(map(str, runs))} has a metric row with "
                          f"reward, eval accuracy, hidden_ratio, completion length, kl or grad_norm")
    for path in written:
        print(path)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .compare import compare_runs, to_json, to_markdown

    rows = compare_runs(args.run_dirs)
    text = to_json(rows) if args.json else to_markdown(rows)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    print(text, end="")
    return 0


# (batch, prompt tokens, new tokens) when not given: GPU-sized on CUDA, a few minutes' work on 2 CPU cores
_BENCH_SIZES = {("rollout", True): (64, 256, 256), ("rollout", False): (8, 64, 64),
                ("train", True): (8, 1024, 1024), ("train", False): (2, 128, 128)}


def _bench_sizes(args: argparse.Namespace) -> tuple[int, int, int]:
    """--batch, --prompt-len and --new-tokens, each defaulting by the subcommand and the device."""
    from .models import resolve_device

    default = _BENCH_SIZES[args.what, resolve_device(args.device or "auto").type == "cuda"]
    return args.batch or default[0], args.prompt_len or default[1], args.new_tokens or default[2]


def cmd_bench(args: argparse.Namespace) -> int:
    from .bench import bench_rollout, bench_train, rollout_table

    _check_device(args.device)  # bench_rollout / bench_train check the rest before building a model
    log = None if args.json else (lambda m: print(m, file=sys.stderr, flush=True))
    batch, prompt_len, new_tokens = _bench_sizes(args)
    if args.what == "rollout":
        report = bench_rollout(args.shape, batch, prompt_len, new_tokens,
                               engines=_split(args.engines), baselines=_split(args.baselines), dtype=args.dtype,
                               device=args.device, repeats=args.repeats, log=log, lora_r=args.lora_r,
                               group=args.group)
        print(json.dumps(report, indent=2) if args.json else rollout_table(report))
    else:
        report = bench_train(args.shape, batch, prompt_len, new_tokens,
                             dtype=args.dtype, device=args.device,
                             gradient_checkpointing=not args.no_gradient_checkpointing)
        print(json.dumps(report, indent=2) if args.json else
              f"{report['device']} | {report['shape']} {report['dtype']} | {report['sequences']} x "
              f"({report['prompt_len']}+{report['new_tokens']}) tokens, LoRA r{report['lora_r']}, gradient "
              f"checkpointing {report['gradient_checkpointing']}: {report['seconds']:.2f} s, peak memory "
              f"{report['peak_memory_gb']:.2f} GB")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("train", "sft", "generate", "eval"):
        from .progress import quiet_libraries

        quiet_libraries()
    from .checkpoint import CheckpointError
    from .faults import TrainingError
    from .models import ModelLoadError

    try:
        return {"train": cmd_train, "sft": cmd_train, "generate": cmd_generate, "eval": cmd_eval,
                "tasks": cmd_tasks, "plot": cmd_plot, "compare": cmd_compare, "bench": cmd_bench}[args.command](args)
    except (ConfigError, ModelLoadError, CheckpointError) as exc:
        print(f"hrpo {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except TrainingError as exc:  # interrupted (130/143), non-finite (1), out of memory (2): no traceback
        print(f"hrpo {args.command}: {exc.label}{exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
