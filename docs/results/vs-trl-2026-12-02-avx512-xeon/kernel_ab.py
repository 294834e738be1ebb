"""Paired A/B of kernel builds on product_stream's call: python kernel_ab.py NAME.so ... (first is the baseline)."""
import sys, time, statistics, json
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))  # from docs/results/<folder>/
import torch
from hrpo.engines import native
from product_stream import layers_call, PROMPT, OWN
from decode_roofline import read_bandwidth, step_bytes
from hrpo.engines.weights import decode_weights
from hrpo.models import load_model
from hrpo.progress import quiet_libraries

paths = sys.argv[1:]
rows = [1, 8]
wrapped = native.library.__wrapped__
libs = []
for p in paths:
    native.build = lambda p=p: Path(p)
    libs.append(wrapped())
cur = [0]
native.library = lambda: libs[cur[0]]
quiet_libraries()
torch.manual_seed(0)
model = load_model("embedded", dtype=torch.float32, device=torch.device("cpu")).model
with torch.no_grad():
    weights = decode_weights(model, merge_lora=True)
calls = {m: layers_call(weights, m, min(m, 4)) for m in rows}
read = {m: sum(step_bytes(weights, m, min(m, 4), PROMPT, OWN + 1)) for m in rows}
with torch.no_grad():
    for m, ((_, _, layers), step) in calls.items():
        outs = []
        for i in range(len(libs)):
            cur[0] = i
            layers(*step)
            outs.append(layers.keep[3].clone())
        print(m, "rows: max |logit diff| vs first:", [float((o - outs[0]).abs().max()) for o in outs], flush=True)
    times = {(i, m): [] for i in range(len(libs)) for m in rows}
    for rep in range(int(__import__("os").environ.get("REPEATS", "9"))):
        bw = read_bandwidth(repeats=3) * 1e9
        order = list(range(len(libs))) if rep % 2 == 0 else list(reversed(range(len(libs))))
        for m, ((_, _, layers), step) in calls.items():
            for i in order:
                cur[0] = i
                best = float("inf")
                for _ in range(3):
                    t = time.perf_counter(); layers(*step); best = min(best, time.perf_counter() - t)
                times[(i, m)].append((best, read[m] / bw))
for m in rows:
    base = times[(0, m)]
    for i, p in enumerate(paths):
        t = times[(i, m)]
        print(json.dumps({"lib": Path(p).stem, "rows": m, "call_ms": round(statistics.median(c for c, _ in t) * 1e3, 2),
                          "over_read": round(statistics.median(c / r for c, r in t), 3),
                          "vs_first_paired": round(statistics.median(b[0] / c[0] for b, c in zip(base, t)), 3)}))
