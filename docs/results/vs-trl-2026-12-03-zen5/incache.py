"""The few-row product (hrpo_linear) by weight size and rows, in GB/s of weights, for isa 2 and 3 of one build:
python incache.py LIB.so (LIB built from cpu_kernels.c with avx512-products.patch applied; 4.7 MB sits in L3)."""
import ctypes, time, torch, sys
torch.set_num_threads(2)
lib = ctypes.CDLL(sys.argv[1])
P, S = ctypes.c_void_p, ctypes.c_int64
lib.hrpo_linear.argtypes = [P, S, S, P, P, P, S, ctypes.c_int, ctypes.c_int]
for N, K in ((256, 576), (2048, 576), (49152, 576)):
    w = torch.randn(N, K)
    for rows in (4, 8):
        x = torch.randn(rows, K); y = torch.empty(rows, N)
        res = {}
        for isa in (2, 3):
            reps = max(1, int(2e8 // (N * K * 4)))
            ts = []
            for _ in range(5):
                t = time.perf_counter()
                for _ in range(reps): lib.hrpo_linear(x.data_ptr(), rows, K, w.data_ptr(), None, y.data_ptr(), N, isa, 2)
                ts.append((time.perf_counter() - t) / reps)
            res[isa] = N * K * 4 / min(ts) / 1e9
        print(f"W {N}x{K} ({N*K*4/1e6:.1f} MB), {rows} rows: GB/s isa2 {res[2]:.1f} isa3 {res[3]:.1f}", flush=True)
