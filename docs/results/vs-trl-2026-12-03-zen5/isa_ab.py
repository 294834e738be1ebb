"""Paired A/B of the decode step's C call on code paths of one kernel build: python isa_ab.py [ISA ...] (first is
the baseline; default 2 3). Each path gets its own DecodeLayers (the same weights); calls alternate."""
import json, os, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))  # from docs/results/<folder>/
import torch
from hrpo.engines import native
from product_stream import layers_call, PROMPT, OWN
from decode_roofline import read_bandwidth, step_bytes
from hrpo.engines.weights import decode_weights
from hrpo.models import load_model
from hrpo.progress import quiet_libraries

paths = [int(a) for a in sys.argv[1:]] or [2, 3]
rows = [1, 8]
quiet_libraries()
torch.manual_seed(0)
model = load_model("embedded", dtype=torch.float32, device=torch.device("cpu")).model
with torch.no_grad():
    weights = decode_weights(model, merge_lora=True)
real = native.isa
calls = {}
for p in paths:
    native.isa = lambda p=p: p
    for m in rows:
        torch.manual_seed(m)
        calls[(p, m)] = layers_call(weights, m, min(m, 4))
native.isa = real
read = {m: sum(step_bytes(weights, m, min(m, 4), PROMPT, OWN + 1)) for m in rows}
with torch.no_grad():
    for m in rows:
        outs = []
        for p in paths:
            (_, _, layers), step = calls[(p, m)]
            layers(*step)
            outs.append(layers.keep[3].clone())
        print(m, "rows: max |logit diff| vs first:", [float((o - outs[0]).abs().max()) for o in outs], flush=True)
    times = {(p, m): [] for p in paths for m in rows}
    for rep in range(int(os.environ.get("REPEATS", "9"))):
        bw = read_bandwidth(repeats=3) * 1e9
        order = paths if rep % 2 == 0 else paths[::-1]
        for m in rows:
            for p in order:
                (_, _, layers), step = calls[(p, m)]
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter(); layers(*step); best = min(best, time.perf_counter() - t)
                times[(p, m)].append((best, read[m] / bw))
for m in rows:
    base = times[(paths[0], m)]
    for p in paths:
        t = times[(p, m)]
        print(json.dumps({"isa": p, "rows": m, "call_ms": round(statistics.median(c for c, _ in t) * 1e3, 2),
                          "over_read": round(statistics.median(c / r for c, r in t), 3),
                          "vs_first_paired": round(statistics.median(b[0] / c[0] for b, c in zip(base, t)), 3)}))
