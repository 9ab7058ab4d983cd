#!/usr/bin/env bash
# Random vs MAE vs SD-MAE on the shared PCam tiles: pre-train MAE and SD-MAE on the training tiles, then one
# `sdmae compare` (linear probe + kNN, SEEDS seeds, balanced accuracy and accuracy as mean ± std).
#   CPU (no CUDA): the small recipes (configs cpu_small_mae / cpu_small_sdmae: ViT-tiny/8, 64 px, batch 32,
#                  STEPS=300 optimiser steps each); about an hour on 2 cores.
#   CUDA GPU:      the paper's schedule over these tiles: ViT-S/8 at 96 px, EPOCHS=100 epochs (recipes
#                  pcam_{mae,sdmae}_vits16 with the ViT-S/8 96 px architecture, batch 256 per step), from a
#                  packed copy of the training tiles (the device-crop feed), a checkpoint every 10 epochs.
# Nothing here looks at the test tiles before the final evaluation: no setting is tuned on them.
# Usage: benchmarks/pcam_probe.sh [OUT_DIR]      env: DATA (folder with train/ and test/), STEPS, EPOCHS, SEEDS,
#        SDMAE (the sdmae command; the python beside it, or PYTHON, tells whether CUDA is there)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
DATA=${DATA:-$here/../../shared/data/pcam_ai4all_jpeg}
OUT=${1:-runs/pcam_probe}
SEEDS=${SEEDS:-3}
SDMAE=${SDMAE:-sdmae}
[ -d "$DATA/train" ] && [ -d "$DATA/test" ] || { echo "no $DATA/train and $DATA/test (set DATA=...)" >&2; exit 2; }
bin=$(command -v "$SDMAE") || { echo "pcam_probe.sh: no '$SDMAE' command (activate the venv or set SDMAE)" >&2; exit 2; }
PY=${PYTHON:-$(dirname "$bin")/python}
[ -x "$PY" ] || PY=python3
# the interpreter that runs sdmae decides; an import error is shown, not taken for "no GPU"
cuda=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))") || { echo "pcam_probe.sh: $PY cannot import torch" >&2; exit 2; }
mkdir -p "$OUT"

train=$DATA/train
if [ "$cuda" = 1 ]; then
  arch=(model.name=vit_small_patch8 model.img_size=96)
  recipe() { echo "pcam_$1_vits16"; }
  sched=(train.epochs="${EPOCHS:-100}" train.ckpt_every_epochs=10 data.batch_size=256 data.num_workers=8 train.device=cuda)
  [ -d "$OUT/train.pack" ] || "$SDMAE" data pack "$DATA/train" --out "$OUT/train.pack" --size 96
  train=$OUT/train.pack
else
  arch=(model.name=vit_tiny_patch8 model.img_size=64)
  recipe() { echo "cpu_small_$1"; }
  sched=(train.max_steps="${STEPS:-300}" train.device=cpu)
fi

for m in mae sdmae; do
  start=$(date +%s)
  "$SDMAE" pretrain --config "$(recipe $m)" --data "$train" --out "$OUT/$m" --method "$m" \
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
  "$PY" -c "import json,sys; r=[json.loads(l) for l in open(sys.argv[1])][-1]; print(sys.argv[2], 'step', r['step'], 'loss_rec', round(r.get('loss_rec', r['loss']), 4))" \
    "$OUT/$m/log.jsonl" "$m" | tee -a "$OUT/timings.txt"
done
