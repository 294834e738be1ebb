#!/usr/bin/env bash
# The next GPU run (H200, about 8 device minutes; most important first, so a cut-off run still answers):
# 1. the engine on GPU after this round's changes (equivalence), and the attention kernel writing the step's
#    key and value itself (error, cache contents, time against the index_copy_ it replaces);
# 2. whole calls at G = 8 against both HF baselines (the #4 goal: 400 steps/s; 2026-11-26: 407.7);
# 3. where a call's time goes, with the gate as one GEMM and as two, and the decode loop under the lagged
#    "all finished?" check, the old draining one (every 16 steps) and none (decode_loop_ms);
# 4. the gate GEMM alone, and the step's kernels.
export PYTHONPATH=src PYTHONUNBUFFERED=1
D="python benchmarks/device_check.py --out $OUT"
timeout 120 $D --stages equivalence
timeout 40 $D --stages kernel
timeout 180 $D --stages bench_rollout --group 8 --tag g8
timeout 90 $D --stages breakdown --group 8 --modes hybrid --tag g8
timeout 90 $D --stages breakdown --group 8 --modes hybrid --set concatenate_gate=false --tag g8_two_gate_gemms
timeout 20 $D --stages gate_gemm
timeout 60 $D --stages profile_step --group 8 --tag g8
