#!/usr/bin/env bash
# The memory estimate of idmm.auto against the peak RSS of one-step runs (bench/results/memory_estimate_cpu.json).
cd "$(dirname "$0")/.." && source .venv/bin/activate
for spec in "deit_tiny_patch16_224 112 64 fp32 6" "deit_tiny_patch16_224 112 32 fp32 6" "deit_tiny_patch16_224 112 64 bf16 6" "vit_cpu_small_conv 32 64 fp32 6" "vit_cpu_small_conv 32 128 fp32 6" "deit_tiny_patch16_224 112 64 fp32 0"; do
  set -- $spec
  rm -rf /tmp/idmm_mem_run
  python -c "
import idmm, json
r = idmm.pretrain(data='sklearn-digits', subset_per_class=14, model='$1', img_size=$2, batch_size=$3, precision='$4', epochs=1, progress='log', out='/tmp/idmm_mem_run', knn_every=0, **{'aug.local_crops': $5, 'aug.local_size': 48 if $2 == 112 else 16})
print('RESULT', '$spec', r['pretrain']['peak_memory_mb'])
" 2>&1 | grep RESULT
done
