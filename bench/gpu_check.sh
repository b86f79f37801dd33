#!/usr/bin/env bash
# One-shot GPU check for one CUDA machine with PyTorch, timm and torchvision installed and no
# network (it installs nothing): IDMM pre-training throughput of deit_tiny_patch16_224 at 112 px
# with 2 + 4 crops at batch 256, with and without torch.compile, and a fine-tuning step at 224 px,
# as one table (source images/s, crops/s, augmentation share, peak GPU memory). Under 5 minutes.
# Goal (issue 5): >= 40,000 source images/s on one H200.
#
#   bash bench/gpu_check.sh [OUT_DIR]     # writes OUT_DIR/gpu_check.json (default bench/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
mkdir -p "$out"
python - <<'PY'
import torch
assert torch.cuda.is_available(), "bench/gpu_check.sh needs a CUDA GPU"
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
PYTHONPATH=src timeout 280 python bench/pretrain_step.py --cases gpu --compile --steps 20 \
    --json "$out/gpu_check.json"
