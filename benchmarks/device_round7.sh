#!/usr/bin/env bash
# GPU run 7 (H200, about 6 of the 15 device minutes): the compiled prefill. `hrpo bench rollout` at G = 8 rows
# per prompt against both HF baselines (the 400 steps/s goal, whole call); where a call's time goes at
# G = 8 and G = 1, each call also with the eager prefill layer (same process); GPU equivalence (graph engine,
# now with the compiled prefill, vs eager).
export PYTHONPATH=src PYTHONUNBUFFERED=1
D="python benchmarks/device_check.py --out $OUT"
timeout 140 $D --stages bench_rollout --group 8 --tag g8  # ~110 s with both HF baselines
timeout 50 $D --stages breakdown --group 8 --modes hybrid --tag g8
timeout 90 $D --stages equivalence
timeout 60 $D --stages breakdown --group 1 --modes hybrid --tag g1
