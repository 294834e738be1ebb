"""The products alone from memory (the LM head and every layer's gate/up and down, stacked, 430 MB) at 4 and 8 rows, code
paths of one build alternating: python pair.py 2,3,4,5 [pairs] (the build: cpu_kernels.c with product-variants.patch,
compiled to /tmp/isa/k.so: gcc -O3 -fopenmp -shared -fPIC -o /tmp/isa/k.so src/hrpo/engines/cpu_kernels.c -lm)."""
import ctypes, time, torch, sys, statistics
torch.set_num_threads(2)
lib = ctypes.CDLL("/tmp/isa/k.so")
P, S = ctypes.c_void_p, ctypes.c_int64
lib.hrpo_linear.argtypes = [P, S, S, P, P, P, S, ctypes.c_int, ctypes.c_int]
variants = [int(v) for v in sys.argv[1].split(",")]
pairs = int(sys.argv[2]) if len(sys.argv) > 2 else 15
shapes = [(49152, 576), (3072 * 30, 576), (576 * 30, 1536)]  # LM head; the gate/up and down of all layers, stacked
ws = [torch.randn(n, k) for n, k in shapes]
for rows in (4, 8):
    xs = [torch.randn(rows, k) for _, k in shapes]; ys = [torch.empty(rows, n) for n, _ in shapes]
    times = {v: [] for v in variants}
    for rep in range(pairs):
        for v in (variants if rep % 2 == 0 else variants[::-1]):
            t = time.perf_counter()
            for w, x, y in zip(ws, xs, ys):
                lib.hrpo_linear(x.data_ptr(), rows, x.shape[1], w.data_ptr(), None, y.data_ptr(), w.shape[0], v, 2)
            times[v].append(time.perf_counter() - t)
    total = sum(w.numel() * 4 for w in ws)
    base = times[variants[0]]
    for v in variants:
        print(f"rows {rows} variant {v}: {statistics.median(times[v])*1e3:.1f} ms, {total/statistics.median(times[v])/1e9:.1f} GB/s, "
              f"paired vs first {statistics.median(b / c for b, c in zip(base, times[v])):.3f}", flush=True)
