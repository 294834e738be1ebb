"""A decode step's GEMMs on CPU, by kernel: F.linear (MKL), oneDNN, hrpo's own (hrpo.engines.native). JSON.

    python benchmarks/cpu_gemm.py [--rows 8] [--repeats 7]

SmolLM2-135M's shapes in fp32: 30 layers of distinct random weights (fused q/k/v 960 x 576, o 576 x 576, fused
gate/up 3072 x 576, down 576 x 1536: 425 MB, more than any cache) and the LM head (49152 x 576, 113 MB), times
--rows rows. Per kernel: the best of --repeats passes over all of them, in ms and in GB/s of weights read.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from decode_roofline import cpu_name  # this directory

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    from hrpo.engines import native

    torch.manual_seed(0)
    layers = [[torch.randn(n, k) for n, k in SHAPES] for _ in range(30)]
    head = torch.randn(49152, 576)
    inputs = {k: torch.randn(args.rows, k) for k in (576, 1536)}
    kernels = {"f_linear": F.linear,
               "onednn": lambda x, w: torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], ""),
               "hrpo": native.linear}
    if native.library() is None:
        del kernels["hrpo"]
    layer_bytes = sum(w.numel() * 4 for layer in layers for w in layer)
    report = {"cpu": cpu_name(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "rows": args.rows,
              "layer_weight_bytes": layer_bytes, "lm_head_bytes": head.numel() * 4}
    best = {name: [float("inf"), float("inf")] for name in kernels}
    with torch.no_grad():
        for _ in range(args.repeats):  # the kernels interleaved, so a neighbour's load hits each alike
            for name, kernel in kernels.items():
                start = time.perf_counter()
                for layer in layers:
                    for w in layer:
                        kernel(inputs[w.shape[1]], w)
                middle = time.perf_counter()
                kernel(inputs[576], head)
                end = time.perf_counter()
                best[name] = [min(best[name][0], middle - start), min(best[name][1], end - middle)]
    for name, (layers_s, head_s) in best.items():
        report[name] = {"layers_ms": layers_s * 1e3, "lm_head_ms": head_s * 1e3,
                        "layers_gb_s": layer_bytes / layers_s / 1e9, "lm_head_gb_s": head.numel() * 4 / head_s / 1e9}
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
