#!/usr/bin/env bash
# The GPU check of sdmae: the GPU-marked tests, then `sdmae bench train` for MAE and SD-MAE on ViT-S/16 at 224 px and
# ViT-S/8 at 96 px, fp32 and bf16, torch.compile off and on; prints one table (and the SD-MAE / MAE step-time ratios).
# Budget: under 6 minutes on one H100.
#
#   benchmarks/gpu_check.sh [--smoke] [--json FILE] [--batch N] [--steps N]
#
#   --smoke     tiny settings on the CPU (CI runs this so the script keeps working; its numbers mean nothing)
#   --json F    also write every bench row (one JSON object per line) to F
#   --batch N   per-GPU batch for every row (default 256; 4 with --smoke)
#   --steps N   timed steps per row (default 10; 1 with --smoke)
# Environment: PYTHON (default: python), SDMAE_GPU_CHECK_SETS (extra --set items for every bench row).
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0 json="" batch="" steps=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --json) json=${2:?--json needs a file}; shift ;;
    --batch) batch=${2:?--batch needs a number}; shift ;;
    --steps) steps=${2:?--steps needs a number}; shift ;;
    -h|--help) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python}
read -r -a extra <<<"${SDMAE_GPU_CHECK_SETS:-}"
start=$SECONDS

if [ "$smoke" = 1 ]; then
  device=cpu warmup=0 batch=${batch:-4} steps=${steps:-1}
  models=("vit_tiny_patch16 32") precisions=(fp32) compiles=(false)
  tiny=(model.decoder_depth=1 model.head_hidden_dim=64 model.head_bottleneck_dim=32 model.head_out_dim=128)
else
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: no CUDA device here (use --smoke to exercise the script on a CPU)" >&2
    exit 2
  fi
  device=cuda warmup=3 batch=${batch:-256} steps=${steps:-10}
  models=("vit_small_patch16 224" "vit_small_patch8 96") precisions=(fp32 bf16) compiles=(false true)
  tiny=()
fi

echo "== GPU-marked tests (pytest -m gpu)"
"$PY" -m pytest -q -m gpu tests -p no:cacheprovider
tests_rc=$?
[ "$smoke" = 1 ] && [ "$tests_rc" = 5 ] && tests_rc=0  # none collected

rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
for model in "${models[@]}"; do
  read -r name size <<<"$model"
  for precision in "${precisions[@]}"; do
    for compile in "${compiles[@]}"; do
      for method in mae sdmae; do
        echo "== bench train: $method $name $size px, $precision, compile=$compile, batch $batch" >&2
        line=$("$PY" -m sdmae bench train --steps "$steps" --warmup "$warmup" --set "model.name=$name" \
               "model.img_size=$size" "method.name=$method" "train.precision=$precision" "train.compile=$compile" \
               "train.device=$device" "data.batch_size=$batch" ${tiny[@]+"${tiny[@]}"} ${extra[@]+"${extra[@]}"} \
               | tail -n 1)
        if [ -z "$line" ] || [ "${line:0:1}" != "{" ]; then
          line="{\"method\": \"$method\", \"model\": \"$name\", \"img_size\": $size, \"precision\": \"$precision\", \"compile\": $compile, \"batch_size\": $batch, \"error\": true}"
        fi
        echo "$line" >>"$rows"
      done
    done
  done
done
[ -n "$json" ] && cp "$rows" "$json"

"$PY" - "$rows" "$((SECONDS - start))" "$tests_rc" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
elapsed, tests_rc = int(sys.argv[2]), int(sys.argv[3])
device = next((r["device"] for r in rows if "device" in r), "?")
print(f"\n## sdmae bench train on {device}\n")
head = ["method", "model", "px", "precision", "compile", "batch", "images/s", "step ms", "GFLOP/img", "TFLOP/s",
        "matmul TFLOP/s", "MFU", "peak MiB"]
print("| " + " | ".join(head) + " |")
print("|" + "|".join("---" for _ in head) + "|")
step = {}
for r in rows:
    key = (r["model"], r["img_size"], r["precision"], r["compile"])
    cells = [r["method"], r["model"], r["img_size"], r["precision"], "on" if r["compile"] else "off", r["batch_size"]]
    if r.get("error"):
        cells += ["failed"] + [""] * 6
    else:
        step[key + (r["method"],)] = r["step_ms"]
        cells += [f"{r['images_per_s']:.1f}", f"{r['step_ms']:.1f}", f"{r['flops_per_image'] / 1e9:.2f}",
                  f"{r['flops_per_s'] / 1e12:.2f}", f"{r['matmul_flops_per_s'] / 1e12:.1f}", f"{r['mfu']:.1%}",
                  f"{r['peak_memory_mb']:.0f}"]
    print("| " + " | ".join(str(c) for c in cells) + " |")
print("\nSD-MAE step time / MAE step time:")
for key in sorted({k[:4] for k in step}):
    if key + ("mae",) in step and key + ("sdmae",) in step:
        print(f"  {key[0]} {key[1]} px {key[2]} compile={'on' if key[3] else 'off'}: "
              f"{step[key + ('sdmae',)] / step[key + ('mae',)]:.2f}")
failed = sum(1 for r in rows if r.get("error"))
print(f"\n{len(rows) - failed}/{len(rows)} bench rows ran; GPU tests {'ok' if tests_rc == 0 else 'FAILED'}; "
      f"{elapsed} s in all")
sys.exit(1 if failed or tests_rc else 0)
PY
