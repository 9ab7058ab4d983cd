#!/usr/bin/env bash
# The first GPU lease, all the GPU numbers the project lacks, in one script:
#   1. the GPU-marked tests (pytest -m gpu: bf16, fused AdamW, compiled blocks, steps under
#      torch.cuda.set_sync_debug_mode("error"))                                        estimate 1.5 min
#   2. a short bench grid (gpu_check.sh --quick: MAE and SD-MAE, ViT-S/16 at 224 px and ViT-S/8 at
#      96 px, bf16, batch 256, 10 timed steps each)                                         estimate 1 min
#   3. the host-side feed (`sdmae bench data --host-only`) of the shared PCam training tiles packed at
#      224 px and at 96 px, with 2 and 8 workers                                            estimate 1 min
#   4. benchmarks/pcam_probe.sh: random vs MAE vs SD-MAE, ViT-S/8 at 96 px, 100 epochs of the 6,000 training
#      tiles each (2 x 2,300 steps of 256), then linear + kNN over 3 seeds               estimate 4-6 min
# Estimated total on one H200: 7.5 to 9.5 minutes (from FLOPs at 20-35 % of its 790 TFLOP/s dense bf16, plus
# start-up, compilation-free; not measured: no GPU has been lent yet). Budget a 15-minute lease.
#
#   benchmarks/gpu_first_run.sh [--smoke] [OUT_DIR]        (default OUT_DIR: runs/gpu_first_run)
#
#   --smoke   everything on the CPU at toy sizes (CI runs it so the script keeps working; numbers mean nothing)
# Environment: PYTHON (default: the python beside `sdmae`), DATA (folder with PCam train/ and test/).
# Everything printed also goes to OUT_DIR/first_run.log; bench rows to OUT_DIR/bench.jsonl, feed rows to
# OUT_DIR/feed.jsonl, the probe's tables under OUT_DIR/probe.
set -uo pipefail
cd "$(dirname "$0")/.."
smoke=0 out=runs/gpu_first_run
for a in "$@"; do
  case "$a" in
    --smoke) smoke=1 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) echo "gpu_first_run.sh: unknown option '$a' (see --help)" >&2; exit 2 ;;
    *) out=$a ;;
  esac
done
bin=$(command -v sdmae) || { echo "gpu_first_run.sh: no sdmae command (activate the project's venv)" >&2; exit 2; }
PY=${PYTHON:-$(dirname "$bin")/python}
DATA=${DATA:-../shared/data/pcam_ai4all_jpeg}
mkdir -p "$out"
exec > >(tee "$out/first_run.log") 2>&1
start=$SECONDS failed=()
stage() { echo; echo "== [$((SECONDS - start)) s] $*"; }

if [ "$smoke" = 1 ]; then
  stage "GPU-marked tests (smoke: they skip on a CPU)"
  "$PY" -m pytest -q -m gpu tests/test_speed_gpu.py -p no:cacheprovider || [ $? = 5 ] || failed+=(tests)
  stage "bench grid (smoke)"
  PYTHON=$PY bash benchmarks/gpu_check.sh --smoke --json "$out/bench.jsonl" || failed+=(bench)
else
  "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' \
    || { echo "gpu_first_run.sh: no CUDA device for $PY (use --smoke on a CPU)" >&2; exit 2; }
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  stage "GPU-marked tests"
  "$PY" -m pytest -q -m gpu tests -p no:cacheprovider || failed+=(tests)
  stage "bench grid (gpu_check.sh --quick)"
  PYTHON=$PY bash benchmarks/gpu_check.sh --quick --json "$out/bench.jsonl" || failed+=(bench)
fi

stage "host-side feed (sdmae bench data --host-only)"
if [ -d "$DATA/train" ]; then
  if [ "$smoke" = 1 ]; then sizes="32" workers="1" batches=(--batches 3); else sizes="224 96" workers="2 8" batches=(); fi
  : > "$out/feed.jsonl"
  for px in $sizes; do
    [ -d "$out/pcam$px.pack" ] || sdmae data pack "$DATA/train" --out "$out/pcam$px.pack" --size "$px" >/dev/null \
      || failed+=(pack)
    for w in $workers; do
      sdmae bench data --host-only --data "$out/pcam$px.pack" "${batches[@]}" \
        --set model.img_size="$px" data.num_workers="$w" data.batch_size=256 | tail -1 | tee -a "$out/feed.jsonl" \
        || failed+=(feed)
    done
  done
else
  echo "no $DATA/train: feed skipped (set DATA)"; failed+=(feed)
fi

stage "PCam probe (benchmarks/pcam_probe.sh)"
if [ -d "$DATA/train" ] && [ -d "$DATA/test" ]; then
  if [ "$smoke" = 1 ]; then  # 16 + 16 training and 8 + 8 test tiles, 2 steps, 1 seed
    tiny=$out/tiny_pcam
    for split in train test; do
      n=$([ $split = train ] && echo 16 || echo 8)
      for c in 0 1; do
        mkdir -p "$tiny/$split/$c"
        find "$DATA/$split/$c" -maxdepth 1 -type f | sort | head -n "$n" | while read -r f; do
          ln -sf "$(realpath "$f")" "$tiny/$split/$c/"; done
      done
    done
    DATA=$tiny STEPS=2 SEEDS=1 PYTHON=$PY bash benchmarks/pcam_probe.sh "$out/probe" || failed+=(probe)
  else
    DATA=$DATA PYTHON=$PY bash benchmarks/pcam_probe.sh "$out/probe" || failed+=(probe)
  fi
else
  echo "no $DATA/train and $DATA/test: probe skipped (set DATA)"; failed+=(probe)
fi

stage "done"
echo "first run: $((SECONDS - start)) s in all; ${#failed[@]} part(s) failed${failed:+: ${failed[*]}}"
[ ${#failed[@]} = 0 ]
