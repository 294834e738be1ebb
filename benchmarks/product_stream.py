"""The CPU decode step's C call (every layer and the LM head) against a plain read of its bytes, by rows. JSON.

    python benchmarks/product_stream.py [--rows 1,2,4,8] [--repeats 7]

One call of ``hrpo.engines.native.DecodeLayers`` on the embedded SmolLM2-135M-Instruct's fused fp32 weights
(538 MB, more than any cache) with random keys and values: rows in runs of up to 4 that share a 106-token
prompt, each with 32 tokens of its own, as in the middle of benchmarks/vs_trl.py's rollout. Per number of rows,
the median over --repeats of the best of 3 calls, against the time to read the call's bytes (weights, and keys
and values as the call reads them) at the bandwidth decode_roofline.py's roofline uses (the best of repeated sums
over a 512 MB buffer, measured again before each repeat). ``over_read`` is a repeat's call over its read time,
the median over repeats: 1.0 would be a call that streams its bytes as fast as a plain sum reads memory.

The rows change the call's arithmetic (two FLOPs per weight and row) but hardly its bytes, so ``over_read``
growing with the rows shows how much of the step's distance from the roofline is the arithmetic competing with
the stream, and what is left at one row is the cost of reading the weights in the products' order (and of the
attention and the barriers between phases).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from decode_roofline import cpu_name, read_bandwidth, step_bytes

PROMPT, OWN = 106, 32


def layers_call(weights, rows: int, group: int):
    """A ready call of ``rows`` rows and the arguments of one step at slot PROMPT + OWN."""
    from hrpo.engines import native

    length = PROMPT + OWN + 1
    kv = [torch.randn(2, rows, weights.num_kv_heads, length, weights.head_dim) for _ in weights.tensors]
    valid = torch.ones(rows, length, dtype=torch.bool)
    vocab, hidden = weights.lm_head.shape
    layers = native.DecodeLayers(weights, kv, valid, rows, group, PROMPT, logits=torch.empty(rows, vocab),
                                 hidden=torch.empty(rows, hidden))
    angles = torch.rand(rows, 1, weights.head_dim)
    step = (torch.randn(rows, 1, hidden), angles.cos(), angles.sin(), PROMPT + OWN, length)
    return (kv, valid, layers), step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="1,2,4,8")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from hrpo.engines import native
    from hrpo.engines.weights import decode_weights
    from hrpo.models import load_model
    from hrpo.progress import quiet_libraries

    quiet_libraries()
    torch.manual_seed(0)
    model = load_model("embedded", dtype=torch.float32, device=torch.device("cpu")).model
    with torch.no_grad():
        weights = decode_weights(model, merge_lora=True)
    rows = [int(r) for r in args.rows.split(",")]
    calls = {m: layers_call(weights, m, min(m, 4)) for m in rows}
    (kv, valid, _), _ = calls[rows[0]]
    reason = native.layers_unsupported(weights, kv, valid, model.model.layers[0].mlp.act_fn, rows[0])
    if reason is not None:
        raise SystemExit(f"hrpo's layer kernel cannot run here: {reason}")
    read = {m: step_bytes(weights, m, min(m, 4), PROMPT, OWN + 1) for m in rows}  # (weight, key/value) bytes
    runs = {m: [] for m in rows}
    with torch.no_grad():
        for (_, _, layers), step in calls.values():
            layers(*step)  # warm-up
        for _ in range(args.repeats):  # the read and the calls interleaved, so a neighbour's load hits each alike
            bandwidth = read_bandwidth(repeats=5) * 1e9
            for m, ((_, _, layers), step) in calls.items():
                best = float("inf")
                for _ in range(3):
                    start = time.perf_counter()
                    layers(*step)
                    best = min(best, time.perf_counter() - start)
                runs[m].append((best, sum(read[m]) / bandwidth))
    report = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
              "weight_bytes": read[rows[0]][0]}
    for m in rows:
        report[f"rows_{m}"] = {"kv_bytes": read[m][1],
                               "call_ms": statistics.median(c for c, _ in runs[m]) * 1e3,
                               "read_ms": statistics.median(r for _, r in runs[m]) * 1e3,
                               "over_read": statistics.median(c / r for c, r in runs[m])}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
