#!/usr/bin/env bash
# One prepared GPU run (one H100/H200, under 8 minutes): tests, conv layers, sampling, training.
#
#   bash benchmarks/gpu.sh [--out DIR]            # on a GPU machine; exit 2 if JAX sees no GPU
#   bash benchmarks/gpu.sh --tiny --out DIR       # on CPU: every step end to end at --quick sizes
#                                                 # (GPU_BENCH_TINY=1 is the same as --tiny)
#
# Results go to DIR (default benchmarks/results/<device>/, the name `jaxconv bench` gives the device,
# e.g. h100 or h200):
#   tests.txt, tests.json, tests_*.log  (a) the GPU-relevant tests on the GPU (float32 at highest matmul
#                                       precision): PixelCNN masks, causality and cached == naive sampling,
#                                       LeNet, the PyTorch twins, conv implementations agree with XLA's; and
#                                       test_parallel.py on 8 fake CPU devices (one GPU cannot show it)
#   conv.{json,md}, conv_table.json     (b) `jaxconv bench conv`: the paper-size PixelCNN layer shapes
#                                       (pixelcnn_cifar, gated_pixelcnn_imagenet32), float32 and bfloat16,
#                                       forward + backward, XLA vs PyTorch/cuDNN, NHWC and NCHW
#   sample.{json,md}                    (c) 256 samples of the paper-size gated_pixelcnn_imagenet32, cached
#                                       sampler (target < 10 s)
#   train_imagenet32/train.{json,md}    (d) training img/s and MFU of gated_pixelcnn_imagenet32, bfloat16,
#                                       batch 128 (target MFU >= 40%)
#   train_alexnet32/train.{json,md}     (d) alexnet32 training (batch 256) vs its PyTorch twin, float32
#   gpu_run.json                        every step's command, exit status and wall time, and the headline
#                                       numbers against their targets
#   gpu_run.log                         everything printed
# Each step has a time limit (STEP_LIMITS below, 460 s in all): a step past it is stopped and reported,
# the next steps still run. Exit status: 0 all steps passed, 1 a step failed or timed out, 2 no GPU or
# bad arguments. Needs jax with CUDA and PyTorch with CUDA (pip install -e '.[bench]' jax[cuda12]);
# PYTHON picks the interpreter (default: python).
set -euo pipefail

PYTHON=${PYTHON:-python}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
TINY=${GPU_BENCH_TINY:-0}
OUT_DIR=""
usage() { echo "usage: bash benchmarks/gpu.sh [--tiny] [--out DIR]" >&2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --tiny) TINY=1; shift ;;
        --out) [[ $# -ge 2 ]] || { usage; exit 2; }; OUT_DIR=$2; shift 2 ;;
        --out=*) OUT_DIR=${1#--out=}; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu.sh: error: unknown argument '$1'" >&2; usage; exit 2 ;;
    esac
done
[[ "$TINY" == 1 ]] || TINY=0
[[ -z "$OUT_DIR" || "$OUT_DIR" == /* ]] || OUT_DIR="$PWD/$OUT_DIR"  # --out is relative to where it was given
cd "$REPO"
export PYTHONUNBUFFERED=1

if [[ "$TINY" == 1 ]]; then
    export JAX_PLATFORMS=cpu CUDA_VISIBLE_DEVICES=""  # tiny: the CPU, even on a GPU machine
fi
# The device, as `jaxconv bench` names it (jaxconv.bench.device.results_name).
if ! DEVICE_INFO=$("$PYTHON" -c '
import jax
from jaxconv.bench.device import results_name
gpu = jax.default_backend() == "gpu"
print(jax.default_backend(), results_name(jax.device_count() if gpu else None), jax.devices()[0].device_kind)
' 2>/dev/null | tail -n 1); then
    echo "gpu.sh: error: cannot import jax and jaxconv with $PYTHON (activate the environment, or set PYTHON)" >&2
    exit 2
fi
read -r BACKEND DEVICE_NAME DEVICE_KIND <<<"$DEVICE_INFO"
if [[ "$TINY" == 0 && "$BACKEND" != "gpu" ]]; then
    echo "gpu.sh: error: no GPU: JAX's default backend is '$BACKEND' (install jax[cuda12], check nvidia-smi;" \
        "--tiny runs on CPU)" >&2
    exit 2
fi
OUT_DIR=${OUT_DIR:-benchmarks/results/$DEVICE_NAME}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
: >"$OUT_DIR/gpu_run.log"
exec > >(tee -a "$OUT_DIR/gpu_run.log") 2> >(tee -a "$OUT_DIR/gpu_run.log" >&2)
STEPS="$OUT_DIR/.steps.tsv"
: >"$STEPS"

log() { echo "[gpu.sh $(date +%H:%M:%S)] $*"; }
now() { date +%s.%N; }
RUN_START=$(now)

# step NAME LIMIT_S COMMAND...: runs it (stopped after LIMIT_S), logs it and its wall time, records both;
# with STEP_LOG=FILE its output is copied to FILE too.
step() {
    local name=$1 limit=$2 rc=0 start wall status
    shift 2
    log "step $name (limit ${limit} s): $*"
    start=$(now)
    if [[ -n "${STEP_LOG:-}" ]]; then
        timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$STEP_LOG" || rc=$?
    else
        timeout --kill-after=15 "$limit" "$@" || rc=$?
    fi
    wall=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
    status=ok
    if [[ $rc == 124 || $rc == 137 ]]; then status=timeout; elif [[ $rc != 0 ]]; then status=failed; fi
    log "step $name: $status (exit $rc) in $wall s"
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$wall" "$*" >>"$STEPS"
}

# The tests: pytest -q -x on a list of files; float32 at full precision (the tests compare implementations).
PYTEST=("$PYTHON" -m pytest -q -x -o addopts= -p no:cacheprovider)
TEST_ENV=(env XLA_PYTHON_CLIENT_PREALLOCATE=false JAX_DEFAULT_MATMUL_PRECISION=highest)

if [[ "$TINY" == 1 ]]; then
    QUICK=(--quick)
    # One quick test from each real list: the step's plumbing, not the tests (the suite runs them).
    GPU_TESTS=(tests/test_pixelcnn.py::test_raster_mask_centre_groups)
    CPU_TESTS=(tests/test_parallel.py::test_multi_process_runs_initialize_jax_distributed)
    GPU_PLATFORM=cpu
    CONV=(--sets none --shape 2,8,8,3,4,3,1,1 --no-plots --layouts NHWC)  # NCHW too in the real run (the suite times both)
    SAMPLE=(--batch-sizes 2 --no-plots)
    TRAIN_BIG=(--batch-sizes 2 --no-plots)
    TRAIN_ALEX=(--no-plots)
    STEP_LIMITS=(120 120 120 120 120 120)
else
    QUICK=()
    GPU_TESTS=(tests/test_pixelcnn.py tests/test_lenet.py tests/test_bench_twins.py
               tests/test_bench.py::test_conv_implementations_match_xla
               tests/test_bench.py::test_layers_use_the_chosen_conv_and_match
               tests/test_bench.py::test_agreement_check_catches_a_wrong_implementation)
    CPU_TESTS=(tests/test_parallel.py)
    GPU_PLATFORM=cuda
    CONV=(--sets pixelcnn_paper --layouts NHWC,NCHW)
    SAMPLE=(--batch-sizes 256 --naive-variables 1 --repeats 1)
    TRAIN_BIG=(--batch-sizes 128 --repeats 3)
    TRAIN_ALEX=(--repeats 3)
    # Seconds, 460 in all: tests_gpu tests_cpu_parallel conv sample train_imagenet32 train_alexnet32.
    # Estimates (each `jaxconv bench` start also initialises CUDA and measures the peaks, ~15 s).
    STEP_LIMITS=(100 30 100 80 100 50)
fi

MODE="GPU run"
[[ "$TINY" == 0 ]] || MODE="--tiny: quick sizes on CPU"
log "device $DEVICE_NAME ($DEVICE_KIND, backend $BACKEND), $MODE; results -> $OUT_DIR"
STEP_LOG="$OUT_DIR/tests_gpu.log" step tests_gpu "${STEP_LIMITS[0]}" \
    "${TEST_ENV[@]}" JAX_PLATFORMS="$GPU_PLATFORM" "${PYTEST[@]}" "${GPU_TESTS[@]}"
STEP_LOG="$OUT_DIR/tests_cpu_parallel.log" step tests_cpu_parallel "${STEP_LIMITS[1]}" \
    "${TEST_ENV[@]}" JAX_PLATFORMS=cpu "${PYTEST[@]}" "${CPU_TESTS[@]}"
step conv "${STEP_LIMITS[2]}" "$PYTHON" -m jaxconv bench conv "${QUICK[@]}" "${CONV[@]}" --dtypes float32,bfloat16 \
    --modes forward_backward --impls xla,torch --out "$OUT_DIR"
step sample "${STEP_LIMITS[3]}" "$PYTHON" -m jaxconv bench sample "${QUICK[@]}" --presets gated_pixelcnn_imagenet32 \
    "${SAMPLE[@]}" --out "$OUT_DIR"
step train_imagenet32 "${STEP_LIMITS[4]}" "$PYTHON" -m jaxconv bench train "${QUICK[@]}" \
    --presets gated_pixelcnn_imagenet32 --dtypes bfloat16 --devices 1 --no-torch "${TRAIN_BIG[@]}" \
    --out "$OUT_DIR/train_imagenet32"
step train_alexnet32 "${STEP_LIMITS[5]}" "$PYTHON" -m jaxconv bench train "${QUICK[@]}" --presets alexnet32 \
    --dtypes float32 --devices 1 "${TRAIN_ALEX[@]}" --out "$OUT_DIR/train_alexnet32"

WALL=$(awk -v a="$RUN_START" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }')
"$PYTHON" - "$OUT_DIR" "$STEPS" "$WALL" "$TINY" "$DEVICE_NAME" "$DEVICE_KIND" "$BACKEND" <<'PY'
"""gpu_run.json and tests.{txt,json}: the steps and the headline numbers against their targets."""
import json
import sys
from pathlib import Path

out, steps_file, wall, tiny, device, kind, backend = sys.argv[1:]
out = Path(out)


def load(name):
    try:
        return json.loads((out / name).read_text())
    except (OSError, ValueError):
        return None


steps = []
for line in Path(steps_file).read_text().splitlines():
    name, status, rc, step_wall, command = line.split("\t", 4)
    steps.append({"name": name, "status": status, "exit_code": int(rc), "wall_s": float(step_wall),
                  "command": command})

groups = []
for log in sorted(out.glob("tests_*.log")):
    lines = [x for x in log.read_text().splitlines() if x.strip()]
    summary = lines[-1].strip("= ") if lines else "no output"
    groups.append({"group": log.stem[len("tests_"):], "summary": summary, "log": log.name})
(out / "tests.txt").write_text("".join(f"{g['group']}: {g['summary']}\n" for g in groups))
(out / "tests.json").write_text(json.dumps({"groups": groups}, indent=2) + "\n")

headline = {}
conv = load("conv.json")
if conv:
    ratios = sorted(r["default_vs_torch"] for r in conv["rows"] if r.get("default_vs_torch"))
    headline["conv_default_vs_torch"] = {"rows": len(conv["rows"]), "worst": ratios[0] if ratios else None,
                                         "median": ratios[len(ratios) // 2] if ratios else None}
sample = load("sample.json")
if sample:
    rows = sample["rows"]
    row = max(rows, key=lambda r: r["batch"]) if rows else None
    headline["sample"] = row and {"preset": row["preset"], "batch": row["batch"],
                                  "cached_seconds": row["cached"]["time_s"], "agree": row["agree"],
                                  "goal": "< 10 s (batch 256)", "met": row["cached"]["time_s"] < 10.0}
big = load("train_imagenet32/train.json")
if big:
    best = max(big["rows"], key=lambda r: r["mfu"] or 0.0, default=None)
    headline["train_imagenet32_bfloat16"] = best and {
        "preset": best["preset"], "batch": best["batch"], "images_per_s": best["images_per_s"], "mfu": best["mfu"],
        "goal": ">= 0.4", "met": best["mfu"] is not None and best["mfu"] >= 0.4}
alex = load("train_alexnet32/train.json")
if alex:
    rows = {r["framework"]: r for r in alex["rows"] if r["dtype"] == "float32"}
    headline["train_alexnet32_vs_torch"] = {
        "jax_images_per_s": rows.get("jax", {}).get("images_per_s"),
        "torch_images_per_s": rows.get("torch", {}).get("images_per_s"),
        "vs_torch": rows.get("jax", {}).get("vs_torch"), "goal": ">= 1.0"}
doc = {"device": device, "device_kind": kind, "backend": backend, "tiny": tiny == "1", "wall_s": float(wall),
       "fits_8_minutes": float(wall) <= 480.0, "ok": all(s["status"] == "ok" for s in steps), "steps": steps,
       "tests": groups, "headline": headline}
(out / "gpu_run.json").write_text(json.dumps(doc, indent=2) + "\n")
print(json.dumps(headline, indent=2))
PY
rm -f "$STEPS"
OK=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["ok"])' "$OUT_DIR/gpu_run.json")
if [[ "$OK" == True ]]; then
    log "all steps passed in $WALL s; results in $OUT_DIR"
else
    log "some steps failed or timed out (see $OUT_DIR/gpu_run.json); $WALL s"
    exit 1
fi
