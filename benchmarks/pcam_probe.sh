#!/usr/bin/env bash
# Random vs MAE vs SD-MAE on the shared PCam tiles: pre-train MAE and SD-MAE on the training tiles, then one
# `sdmae compare` (linear probe + kNN, 3 seeds, balanced accuracy and accuracy as mean ± std).
#   CPU (no CUDA): the small recipes (configs cpu_small_mae / cpu_small_sdmae: ViT-tiny/8, 64 px, batch 32,
#                  STEPS=300 optimiser steps each); about an hour on 2 cores.
#   CUDA GPU:      the paper's schedule over these tiles: ViT-S/8 at 96 px, 100 epochs (recipes
#                  pcam_{mae,sdmae}_vits16 with the ViT-S/8 96 px architecture, batch 256 per step).
# Nothing here looks at the test tiles before the final evaluation: no setting is tuned on them.
# Usage: benchmarks/pcam_probe.sh [OUT_DIR]      env: DATA (folder with train/ and test/), STEPS, SEEDS
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
DATA=${DATA:-$here/../../shared/data/pcam_ai4all_jpeg}
OUT=${1:-runs/pcam_probe}
SEEDS=${SEEDS:-3}
SDMAE=${SDMAE:-sdmae}
[ -d "$DATA/train" ] && [ -d "$DATA/test" ] || { echo "no $DATA/train and $DATA/test (set DATA=...)" >&2; exit 2; }
mkdir -p "$OUT"

if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  arch=(model.name=vit_small_patch8 model.img_size=96)
  recipe() { echo "pcam_$1_vits16"; }
  sched=(train.epochs=100 data.batch_size=256 data.num_workers=8 train.device=cuda)
else
  arch=(model.name=vit_tiny_patch8 model.img_size=64)
  recipe() { echo "cpu_small_$1"; }
  sched=(train.max_steps="${STEPS:-300}" train.device=cpu)
fi

for m in mae sdmae; do
  start=$(date +%s)
  "$SDMAE" pretrain --config "$(recipe $m)" --data "$DATA/train" --out "$OUT/$m" --method "$m" \
    --set "${arch[@]}" "${sched[@]}" train.seed=0 train.reconstructions=false
  echo "pretrain $m: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
done

cat > "$OUT/spec.yaml" <<SPEC
encoders:
  random: {init: random, set: [${arch[0]}, ${arch[1]}]}
  MAE: {ckpt: $OUT/mae/checkpoints/last.pt}
  SD-MAE: {ckpt: $OUT/sdmae/checkpoints/last.pt}
datasets:
  PCam: {train: $DATA/train, test: $DATA/test}
protocols: [linear, knn]
seeds: $SEEDS
metrics: [balanced_accuracy, accuracy]
SPEC
start=$(date +%s)
"$SDMAE" compare --spec "$OUT/spec.yaml" --out "$OUT/compare"
echo "compare: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
for m in mae sdmae; do  # the last logged reconstruction loss, to judge how far pre-training got
  python3 -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])][-1]; print(sys.argv[2], 'step', r['step'], 'loss_rec', round(r.get('loss_rec', r['loss']), 4))" \
    "$OUT/$m/log.jsonl" "$m" | tee -a "$OUT/timings.txt"
done
