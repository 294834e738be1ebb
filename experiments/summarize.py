"""Mean and spread over seeds per group of runs (by default their mode), from the run directories of
experiments/modes.sh or experiments/baselines.sh. Prints Markdown.

    python experiments/summarize.py runs/modes
    python experiments/summarize.py runs/baselines --by run_name --order sft,sft_grpo,ppo,grpo,hrpo,hrpo_k2 --window 3
    python experiments/summarize.py runs/methods --inference-table   # experiments/methods.sh's evaluations
"""

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

from hrpo.compare import compare_runs, load_run

MODES = ("hybrid", "discrete", "latent", "hidden")


def keys(window: int) -> list[tuple[str, str]]:
    return [("reward_first", f"reward, first {window} steps"), ("reward_last", f"reward, last {window} steps"),
            ("eval/arithmetic/accuracy_last", "greedy accuracy (100 test)"), ("hidden_ratio_final", "hidden ratio"),
            ("length_first10", "length, first 10"), ("length_last10", "length, last 10"), ("kl_final", "KL, final"),
            ("step_s", "step time (s)")]


def _cell(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(out: str, by: str = "mode", order: list[str] | None = None, window: int = 10) -> None:
    runs = sorted(p for p in Path(out).iterdir() if (p / "metrics.jsonl").is_file())
    rows = compare_runs(runs)
    groups = defaultdict(list)
    for row, run in zip(rows, runs):
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        rewards = [m["reward"] for m in lines if "reward" in m]
        if rewards:  # the learning delta (RL runs only; an SFT run has no reward)
            row["reward_first"] = statistics.mean(rewards[:window])
            row["reward_last"] = statistics.mean(rewards[-window:])
        steps = [m["timing/step_s"] for m in lines if "timing/step_s" in m]
        row["step_s"] = statistics.mean(steps) if steps else None
        groups[str(row["mode"] if by == "mode" else load_run(run).config.get(by))].append(row)
    columns = keys(window)
    print(f"| {by} | seeds | " + " | ".join(label for _, label in columns) + " |")
    print("|---" * (len(columns) + 2) + "|")
    for name in order or (MODES if by == "mode" else sorted(groups)):
        group = groups.get(name, [])
        if group:
            cells = [_cell([r[key] for r in group if r.get(key) is not None]) for key, _ in columns]
            print(f"| {name} | {len(group)} | " + " | ".join(cells) + " |")


def inference_table(out: str) -> None:
    """Accuracy of the evaluations experiments/methods.sh runs besides training: the base model in each
    training-free mode (base/NAME[-sSEED]) and the soft-token runs decoded with plain tokens (RUN/hard)."""
    groups = defaultdict(list)
    root = Path(out)
    for path in sorted(root.glob("base/*/eval_arithmetic.json")):
        name = path.parent.name.rsplit("-s", 1)[0] if path.parent.name[-3:-1] == "-s" else path.parent.name
        groups[f"base model, {name}"].append(json.loads(path.read_text())["metrics"]["accuracy"])
    for path in sorted(root.glob("*-s*/hard/eval_arithmetic.json")):
        method = path.parent.parent.name.rsplit("-s", 1)[0]
        groups[f"{method}-trained, infer hard"].append(json.loads(path.read_text())["metrics"]["accuracy"])
    print("\n| evaluation | seeds | accuracy (100 test) |\n|---|---|---|")
    for name, values in groups.items():
        print(f"| {name} | {len(values)} | {_cell(values)} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="directory holding the run directories")
    parser.add_argument("--by", default="mode", help="config key that groups runs (default: mode)")
    parser.add_argument("--order", default=None, help="comma list of group names, in table order")
    parser.add_argument("--window", type=int, default=10, help="steps averaged for the first/last reward")
    parser.add_argument("--inference-table", action="store_true",
                        help="print the table of experiments/methods.sh's evaluations without training instead")
    args = parser.parse_args()
    if args.inference_table:
        inference_table(args.out)
    else:
        main(args.out, args.by, args.order.split(",") if args.order else None, args.window)
