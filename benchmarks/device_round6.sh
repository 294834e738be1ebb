#!/usr/bin/env bash
# The next GPU run (H200, ~5 of the 15 device minutes): the split-KV decode kernel (error and time vs SDPA),
# `hrpo bench rollout` at G = 8 rows per prompt against both HF baselines (the issue's 400 steps/s goal, whole
# call), GPU equivalence (graph engine on the kernel vs eager), where a G = 8 call's time goes, and the prefill's
# kernels.
export PYTHONPATH=src PYTHONUNBUFFERED=1
D="python benchmarks/device_check.py --out $OUT"
timeout 30 $D --stages kernel
timeout 150 $D --stages bench_rollout --group 8 --tag g8  # ~110 s with both HF baselines
timeout 40 $D --stages equivalence
timeout 40 $D --stages breakdown --group 8 --modes hybrid --tag g8
timeout 40 $D --stages profile_prefill --group 8 --tag g8
