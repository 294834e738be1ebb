#!/usr/bin/env bash
# GPU run 8 (H200, about 3 device minutes): how much of the prefill is host launch time, and what a CUDA graph
# of it would take instead (G = 8 and G = 1), plus its kernels at G = 8 compiled and eager.
export PYTHONPATH=src PYTHONUNBUFFERED=1
D="python benchmarks/device_check.py --out $OUT"
timeout 45 $D --stages prefill_graph --group 8 --tag g8
timeout 45 $D --stages profile_prefill --group 8 --tag g8
timeout 45 $D --stages prefill_graph --group 1 --tag g1
