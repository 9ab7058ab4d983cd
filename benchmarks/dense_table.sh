#!/usr/bin/env bash
# Random vs MAE vs SD-MAE encoders on nuclei segmentation and detection (MoNuSeg subset): pre-train MAE and
# SD-MAE on the PCam training tiles, then one `sdmae compare` over protocols segment and detect, then a table
# of Dice, mIoU, AJI, PQ (segment) and mAP@0.5, mAP (detect) from the cells' metrics.json.
#   CPU (no CUDA): ViT-tiny/16 at 64 px pre-trained for STEPS optimiser steps (default 1500, batch 32), dense
#                  tasks at the CPU defaults (128 px crops, batch 4, 300 iterations). Pre-training takes minutes,
#                  each dense run 5-20 minutes on 2 cores depending on load.
#   CUDA GPU:      ViT-S/16 at 224 px pre-trained with the paper recipes for PT_EPOCHS epochs (default 100), dense
#                  tasks at the paper's schedule: 512 px crops, batch 16, 20k iterations, warm-up 200, lr 1e-4,
#                  UperNet width 384, scale jitter 0.5-2, torchvision-sized detector.
# Existing encoders can be given instead of pre-training: MAE_CKPT=... SDMAE_CKPT=... (checkpoints or exports).
# Usage: benchmarks/dense_table.sh [OUT_DIR]      env: MONUSEG (folder with train/ and test/), PCAM, STEPS, SEEDS
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
MONUSEG=${MONUSEG:-$here/../../shared/data/monuseg_subset}
PCAM=${PCAM:-$here/../../shared/data/pcam_ai4all_jpeg/train}
OUT=${1:-runs/dense_table}
SEEDS=${SEEDS:-1}
SDMAE=${SDMAE:-sdmae}
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}  # no spinning OpenMP threads on a shared CPU (docs/dense.md)
[ -d "$MONUSEG/train" ] && [ -d "$MONUSEG/test" ] || { echo "no $MONUSEG/train and $MONUSEG/test (set MONUSEG=...)" >&2; exit 2; }
mkdir -p "$OUT"

if python3 -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  arch=(model.name=vit_small_patch16 model.img_size=224)
  pretrain() { "$SDMAE" pretrain --config "pcam_$1_vits16" --data "$PCAM" --out "$OUT/$1" --method "$1" \
    --set "${arch[@]}" train.epochs="${PT_EPOCHS:-100}" data.num_workers=8 train.device=cuda train.seed=0; }
  dense=(eval.device=cuda eval.num_workers=8 eval.dense.crop_size=512 eval.dense.batch_size=16
    eval.dense.iters=20000 eval.dense.warmup_iters=200 eval.dense.lr=1e-4 eval.dense.ckpt_every=1000
    eval.dense.log_every=50 eval.dense.scale_min=0.5 eval.dense.scale_max=2.0 eval.dense.seg.head_channels=384
    eval.dense.det.fpn_channels=256 eval.dense.det.box_head_dim=1024 eval.dense.det.proposals=1000
    eval.dense.det.roi_samples=512 "eval.dense.det.anchor_sizes=[16,32,64,128,256]")
else
  arch=(model.name=vit_tiny_patch16 model.img_size=64)
  pretrain() { "$SDMAE" pretrain --data "$PCAM" --out "$OUT/$1" --method "$1" --set "${arch[@]}" \
    data.batch_size=32 optim.base_lr=1.5e-3 train.max_steps="${STEPS:-1500}" data.num_workers=1 \
    train.device=cpu train.seed=0 train.ckpt_every_steps=250; }
  dense=(eval.device=cpu)
fi

for m in mae sdmae; do
  var=$(echo "${m}_ckpt" | tr a-z A-Z)
  [ -n "${!var:-}" ] && continue
  start=$(date +%s)
  pretrain "$m"
  echo "pretrain $m: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"
done

cat > "$OUT/spec.yaml" <<SPEC
encoders:
  random: {init: random, set: [${arch[0]}, ${arch[1]}]}
  MAE: {ckpt: ${MAE_CKPT:-$OUT/mae/checkpoints/last.pt}}
  SD-MAE: {ckpt: ${SDMAE_CKPT:-$OUT/sdmae/checkpoints/last.pt}}
datasets:
  MoNuSeg: {train: [$MONUSEG/train], test: [$MONUSEG/test]}
protocols: [segment, detect]
seeds: $SEEDS
set:
$(printf '  - "%s"\n' "${dense[@]}")
metrics: [dice, map50]
SPEC
start=$(date +%s)
"$SDMAE" compare --spec "$OUT/spec.yaml" --out "$OUT/compare"
echo "compare: $(( $(date +%s) - start )) s" | tee -a "$OUT/timings.txt"

python3 - "$OUT/compare/compare.json" <<'PY' | tee "$OUT/table.md"
import json, sys
table = json.load(open(sys.argv[1]))
cols = [("segment", "dice", "Dice"), ("segment", "miou", "mIoU"), ("segment", "aji", "AJI"), ("segment", "pq", "PQ"),
        ("detect", "map50", "mAP@0.5"), ("detect", "map", "mAP"), ("detect", "recall50", "recall@0.5")]
protos = [c["protocol"] for c in table["columns"]]
print("| Encoder | " + " | ".join(c[2] for c in cols) + " | train s (seg / det) |")
print("|---|" + "---:|" * (len(cols) + 1))
for row in table["rows"]:
    res = {p: json.load(open(cell["metrics_file"])) for p, cell in zip(protos, row["cells"])}
    def fmt(p, k):
        m = res[p]
        s = m.get("std", {}).get(k)
        return f"{m[k]:.3f}" + (f" ± {s:.3f}" if len(m["seeds"]) > 1 else "")
    secs = " / ".join(f"{sum(r['train_seconds'] for r in res[p]['runs']):.0f}" for p in ("segment", "detect"))
    print(f"| {row['method']} | " + " | ".join(fmt(p, k) for p, k, _ in cols) + f" | {secs} |")
PY
