"""What a handful of tiny aten ops cost right after a decode step's stream of weights, against warm. JSON.

    python benchmarks/cold_ops.py [--megabytes 560] [--repeats 30]

A CPU decode step reads every weight once (560 MB for the embedded SmolLM2-135M in fp32), which evicts the
caches' other contents: the interpreter's and the dispatcher's code and data. So the small ops that follow it
(sampling, the step's bookkeeping) run from memory. This times five tiny ops on (8,)-sized tensors (two add_, a
not, an or, all() read back) warm, right after a sum over an L3-sized buffer, and right after a sum over
--megabytes: the median over --repeats, in microseconds, and the cold/warm ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from decode_roofline import cpu_name


def tiny_ops(counter: torch.Tensor, flags: torch.Tensor) -> float:
    """Microseconds for five tiny ops, the kind a decode step's bookkeeping runs."""
    start = time.perf_counter_ns()
    counter.add_(1)
    negated = ~flags
    either = flags | negated
    bool(either.all())
    counter.add_(1)
    return (time.perf_counter_ns() - start) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--megabytes", type=int, default=560)
    parser.add_argument("--l3-megabytes", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    buffer = torch.rand(args.megabytes * 2 ** 20 // 4)
    l3 = buffer[: args.l3_megabytes * 2 ** 20 // 4]
    counter, flags = torch.zeros(8, 1, dtype=torch.long), torch.zeros(8, dtype=torch.bool)
    cases = {"warm_us": lambda: None, "after_l3_sized_sum_us": l3.sum, "after_full_sum_us": buffer.sum}
    report = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "megabytes": args.megabytes,
              "l3_megabytes": args.l3_megabytes}
    for name, before in cases.items():
        times = []
        for _ in range(args.repeats):
            before()
            times.append(tiny_ops(counter, flags))
        report[name] = statistics.median(times)
    report["cold_over_warm"] = report["after_full_sum_us"] / report["warm_us"]
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
