"""Mean and spread over seeds per mode, from the run directories of experiments/modes.sh. Prints Markdown."""

import statistics
import sys
from collections import defaultdict
from pathlib import Path

from hrpo.compare import compare_runs

KEYS = [("reward_first10", "reward, first 10 steps"), ("reward_final", "reward, last 10 steps"),
        ("eval/arithmetic/accuracy_last", "greedy accuracy (100 test)"), ("hidden_ratio_final", "hidden ratio"),
        ("length_first10", "length, first 10"), ("length_last10", "length, last 10"), ("kl_final", "KL, final")]


def main(out: str) -> None:
    runs = sorted(p for p in Path(out).iterdir() if (p / "metrics.jsonl").is_file())
    rows = compare_runs(runs)
    for row, run in zip(rows, runs):  # reward of the first 10 steps, for the learning delta
        import json

        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
        row["reward_first10"] = statistics.mean(m["reward"] for m in lines[:10])
    by_mode = defaultdict(list)
    for row in rows:
        by_mode[row["mode"]].append(row)
    print("| mode | seeds | " + " | ".join(label for _, label in KEYS) + " |")
    print("|---" * (len(KEYS) + 2) + "|")
    for mode in ("hybrid", "discrete", "latent", "hidden"):
        group = by_mode.get(mode, [])
        if not group:
            continue
        cells = []
        for key, _ in KEYS:
            values = [r[key] for r in group if r.get(key) is not None]
            if not values:
                cells.append("-")
            elif len(values) == 1:
                cells.append(f"{values[0]:.3f}")
            else:
                cells.append(f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}")
        print(f"| {mode} | {len(group)} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
