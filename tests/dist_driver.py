"""Launched by tests/test_distributed.py in every process: `hrpo` CLI commands (separated by `--next`) with the
"parity" test task registered, recording each process's metrics of every step to OUT/metrics-rank<R>.jsonl.

    accelerate launch ... tests/dist_driver.py OUT train --model M ... --next train --resume RUN ...
"""

import json
import sys
from pathlib import Path

from helpers import register

import hrpo.trainer
from hrpo.cli import main

register()
out = Path(sys.argv[1])
_train_step = hrpo.trainer.train_step


def recording_train_step(trainer):
    metrics = _train_step(trainer)
    with (out / f"metrics-rank{trainer.dist.rank}.jsonl").open("a") as f:
        f.write(json.dumps(metrics) + "\n")
    return metrics


hrpo.trainer.train_step = recording_train_step
commands, current = [], []
for arg in sys.argv[2:]:
    if arg == "--next":
        commands.append(current)
        current = []
    else:
        current.append(arg)
commands.append(current)
for argv in commands:
    code = main(argv)
    if code:
        sys.exit(code)
