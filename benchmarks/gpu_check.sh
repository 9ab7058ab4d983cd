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
#   --quick     bf16 only, compile off: the 4 rows of the first GPU run (benchmarks/gpu_first_run.sh)
# Environment: PYTHON (default: python), SDMAE_GPU_CHECK_SETS (extra --set items for every bench row).
# The rows run in one process (`sdmae.train.bench.bench_train`, what `sdmae bench train` runs), so CUDA starts once
# and MAE and SD-MAE share their compiled blocks; each row prints the equivalent `sdmae bench train` command.
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0 quick=0 json="" batch="" steps=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) smoke=1 ;;
    --quick) quick=1 ;;
    --json) json=${2:?--json needs a file}; shift ;;
    --batch) batch=${2:?--batch needs a number}; shift ;;
    --steps) steps=${2:?--steps needs a number}; shift ;;
    -h|--help) sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gpu_check.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done
PY=${PYTHON:-python}
start=$SECONDS

if [ "$smoke" = 1 ]; then
  grid="device=cpu warmup=0 batch=${batch:-4} steps=${steps:-1} models=vit_tiny_patch16:32 precisions=fp32 compiles=false"
  grid="$grid sets=model.decoder_depth=1,model.head_hidden_dim=64,model.head_bottleneck_dim=32,model.head_out_dim=128"
  gpu_tests=tests/test_speed_gpu.py  # they skip on a CPU; collecting the whole suite would only cost time
else
  if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    echo "gpu_check.sh: no CUDA device here (use --smoke to exercise the script on a CPU)" >&2
    exit 2
  fi
  grid="device=cuda warmup=3 batch=${batch:-256} steps=${steps:-10} models=vit_small_patch16:224,vit_small_patch8:96"
  if [ "$quick" = 1 ]; then
    grid="$grid precisions=bf16 compiles=false sets="
  else
    grid="$grid precisions=fp32,bf16 compiles=false,true sets="
  fi
  gpu_tests=tests
fi
extra=$(echo "${SDMAE_GPU_CHECK_SETS:-}" | tr ' ' ',')

echo "== GPU-marked tests (pytest -m gpu $gpu_tests)"
"$PY" -m pytest -q -m gpu "$gpu_tests" -p no:cacheprovider
tests_rc=$?
[ "$tests_rc" = 5 ] && tests_rc=0  # none collected

rows=$(mktemp)
trap 'rm -f "$rows"' EXIT
echo "== sdmae bench train grid"
# shellcheck disable=SC2086
"$PY" - $grid "extra=$extra" "out=$rows" <<'PY'
import gc, json, sys

import torch

from sdmae.config import load_config
from sdmae.train.bench import bench_train

a = dict(arg.split("=", 1) for arg in sys.argv[1:])
lst = lambda key: [x for x in a[key].split(",") if x]
dyn = torch._dynamo.config
dyn.automatic_dynamic_shapes = False  # each row keeps its own static shapes
setattr(dyn, "recompile_limit" if hasattr(dyn, "recompile_limit") else "cache_size_limit", 64)
with open(a["out"], "w") as out:
    for model in lst("models"):
        name, size = model.split(":")
        for precision in lst("precisions"):
            for compile_ in lst("compiles"):
                for method in ("mae", "sdmae"):
                    sets = [f"model.name={name}", f"model.img_size={size}", f"method.name={method}",
                            f"train.precision={precision}", f"train.compile={compile_}", f"train.device={a['device']}",
                            f"data.batch_size={a['batch']}", *lst("sets"), *lst("extra")]
                    print(f"-- sdmae bench train --steps {a['steps']} --warmup {a['warmup']} --set {' '.join(sets)}",
                          file=sys.stderr, flush=True)
                    try:
                        row = bench_train(load_config(None, sets), int(a["steps"]), int(a["warmup"]))
                    except Exception as e:  # e.g. out of memory: the row says so, the grid goes on
                        print(f"   failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}",
                              file=sys.stderr)
                        row = {"method": method, "model": name, "img_size": int(size), "precision": precision,
                               "compile": compile_ == "true", "batch_size": int(a["batch"]), "error": True}
                    out.write(json.dumps(row) + "\n")
                    out.flush()
                    gc.collect()
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
PY
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
sys.exit(1 if failed or tests_rc or not rows else 0)
PY
