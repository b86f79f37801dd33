#!/usr/bin/env bash
# One-shot GPU check for one CUDA machine with PyTorch, timm and torchvision installed and no
# network (it installs nothing): IDMM pre-training throughput of deit_tiny_patch16_224 at 112 px
# with 2 + 4 crops at batch 256 and 1024, with and without torch.compile, and a fine-tuning step at
# 224 px, as one table (source images/s, crops/s, augmentation share, peak GPU memory). About 5.5
# minutes, an estimate (3.2 measured without the batch-1024 rows, 2026-12-04).
# Goal (issue 5): >= 40,000 source images/s on one H200.
#
# With FMNIST_DIR (a folder with Fashion-MNIST's four idx files, e.g. the Debian package's
# /usr/share/datasets/fashion-mnist), it then runs idmm end to end on FMNIST-2040 on the GPU,
# twice, each `idmm run` with its splits, kNN and linear probes and fine-tuning (< 6 minutes):
#   cpu_recipe     configs/cpu/fmnist2040.yaml as is, with the from-scratch baseline (the
#                  README's `make demo`): the same recipe's accuracy and minutes on the GPU
#   paper_shapes   the paper's model and shapes (deit_tiny, 112 px pre-training with 2 + 4
#                  crops at batch 256, fine-tuning at 224 px, lr 5e-4) for a short 100 + 50 epochs
# Each run's results.json goes to OUT_DIR/gpu_<name>.json with its wall-clock seconds added.
#
#   [THROUGHPUT=0] bash bench/gpu_check.sh [OUT_DIR] [FMNIST_DIR]   # default OUT_DIR bench/results
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
fmnist="${2:-}"
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1
python3 - <<'PY'
import torch, torchvision, timm
assert torch.cuda.is_available(), "bench/gpu_check.sh needs a CUDA GPU"
print("gpu:", torch.cuda.get_device_name(0), "| torch", torch.__version__,
      "| torchvision", torchvision.__version__, "| timm", timm.__version__)
PY
if [ "${THROUGHPUT:-1}" = 1 ]; then  # THROUGHPUT=0: the end-to-end runs alone
    timeout 330 python3 bench/pretrain_step.py --cases gpu --compile --steps 20 \
        --json "$out/gpu_check.json" || echo "pretrain_step.py failed or timed out (rc $?)"
fi
[ -n "$fmnist" ] || exit 0

runs=$(mktemp -d)
idmm_run() {  # name, time limit (s), overrides...
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" python3 -m idmm run --config configs/cpu/fmnist2040.yaml \
        data.root="$fmnist" out="$runs/$name" overwrite=true "$@" || echo "$name: rc $?"
    python3 - "$runs/$name/results.json" "$out/gpu_$name.json" $((SECONDS - t0)) "$*" <<'PY'
import json, sys
from pathlib import Path
src, dst, wall, overrides = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
results = json.loads(src.read_text()) if src.exists() else {"error": "no results.json"}
results = {"wall_s": wall, "overrides": overrides, **results}
dst.write_text(json.dumps(results, indent=2) + "\n")
ft = results.get("finetune", {})
print(f"{dst.stem}: {wall} s, test top-1 {ft.get('top1')}, val {ft.get('val_top1')}")
PY
}
idmm_run cpu_recipe 200 baseline=true
idmm_run paper_shapes 200 model=deit_tiny_patch16_224 img_size=112 batch_size=256 lr=5e-4 \
    epochs=100 aug.local_size=112 finetune.img_size=224 finetune.epochs=50 \
    finetune.batch_size=256 finetune.base_lr=5e-4 finetune.eval_crop=1.0
