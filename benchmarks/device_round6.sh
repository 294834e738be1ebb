#!/usr/bin/env bash
# Round 6 on the GPU: the split-KV decode attention kernel (error and time vs SDPA), the benchmark at G = 8 rows
# per prompt against both HF baselines, GPU equivalence (graph engine on the kernel vs eager), and the step breakdown.
export PYTHONPATH=src PYTHONUNBUFFERED=1
D="python benchmarks/device_check.py --out $OUT"
timeout 30 $D --stages kernel
timeout 150 $D --stages bench_rollout --group 8 --tag g8  # ~110 s with both HF baselines
timeout 40 $D --stages equivalence
timeout 40 $D --stages breakdown --modes hybrid --tag base
