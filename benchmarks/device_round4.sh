#!/usr/bin/env bash
# Round 4 on the GPU: where a step's time goes now (no adapter, LoRA r32), shared-prompt prefill, and the
# max-autotune compile variant. Each stage is its own process with a time limit, so one failure costs only itself.
export PYTHONPATH=src PYTHONUNBUFFERED=1
D="python benchmarks/device_check.py --out $OUT"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv
timeout 120 $D --stages breakdown,profile_step --tag base
timeout 100 $D --stages breakdown,profile_step --lora-r 32 --modes hybrid --tag lora
timeout 60 $D --stages breakdown --group 8 --modes hybrid --tag g8
timeout 60 $D --stages equivalence
timeout 180 $D --stages breakdown --modes hybrid --set compile_mode=max-autotune-no-cudagraphs --tag autotune
