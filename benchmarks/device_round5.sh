#!/usr/bin/env bash
# Round 5 on the GPU (final): equivalence, step breakdown and kernel profile, LoRA r32, and the benchmark with
# the HF baselines at G = 8 rows per prompt. Each stage is its own process with a time limit.
export PYTHONPATH=src PYTHONUNBUFFERED=1
D="python benchmarks/device_check.py --out $OUT"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
timeout 60 $D --stages equivalence
timeout 90 $D --stages breakdown,profile_step --tag base
timeout 150 $D --stages bench_rollout --group 8 --tag g8
timeout 60 $D --stages breakdown --lora-r 32 --group 8 --modes hybrid --tag lora_g8
timeout 60 $D --stages bench_rollout --group 8 --lora-r 32 --baselines "" --tag lora_g8
