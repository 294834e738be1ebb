#!/usr/bin/env bash
# The next GPU run (H200, about 2 device minutes): where the hybrid decode step's time goes now (the last step
# profile predates the split-KV kernel), and whether one GEMM for the gate's two fp32 projections is faster
# (the hybrid step costs 2.9% over discrete; a whole call is 389.8 steps/s at G = 8, discrete 401.1).
export PYTHONPATH=src PYTHONUNBUFFERED=1
D="python benchmarks/device_check.py --out $OUT"
timeout 20 $D --stages gate_gemm
timeout 60 $D --stages profile_step --group 8 --tag g8
