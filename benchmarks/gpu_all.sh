#!/usr/bin/env bash
# The GPU figures in one run (~8 min on one H100/H200): install with a CUDA torch, then the training-step
# (reference comparison + per-switch A/B, FLOPs/MFU), encoding and sampling benchmarks at reference-model scale.
#
#   bash benchmarks/gpu_all.sh                         # on a GPU machine; results in benchmarks/results/gpu/
#   bash benchmarks/gpu_all.sh --device cpu --tiny     # the same script at tiny sizes on CPU (its own test)
#
# Options: --device cuda|cpu, --tiny (tiny models and sizes), --python PY (the interpreter to build the venv
# from; default python3), --venv DIR (default .venv-gpu; `--venv .venv` reuses the project's and installs
# nothing), --out DIR (default benchmarks/results/gpu, or benchmarks/results/gpu-smoke with --tiny).
# Install: requirements.lock pins the CPU wheel (torch==2.13.0+cpu); here torch==2.13.0 comes from the default
# index (CUDA wheels on Linux), or from the interpreter's own site-packages when it already has a CUDA torch
# (a machine with no index: bring the wheels, see /work/.library/device/README.md). Each benchmark has its own
# time limit, so one that hangs cannot eat the others' time; a failed one is reported and the rest still run.
set -uo pipefail
cd "$(dirname "$0")/.."

DEVICE=cuda TINY=0 PY=python3 VENV=.venv-gpu OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --python) PY=$2; shift 2 ;;
    --venv) VENV=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$OUT" ] || { [ "$TINY" = 1 ] && OUT=benchmarks/results/gpu-smoke || OUT=benchmarks/results/gpu; }
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 DO_NOT_TRACK=1 MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false

install() {
  if [ -x "$VENV/bin/python" ] && [ "$VENV" = .venv ]; then return 0; fi
  if "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    "$PY" -m venv --system-site-packages "$VENV"      # keep the machine's CUDA torch
    grep -v '^torch==' requirements.lock > "$VENV/lock-no-torch.txt"
  else
    "$PY" -m venv "$VENV"
    { grep -v '^torch==' requirements.lock; echo 'torch==2.13.0'; } > "$VENV/lock-no-torch.txt"
  fi
  "$VENV/bin/pip" install -q -c "$VENV/lock-no-torch.txt" -e . || { echo "install failed" >&2; exit 1; }
}

step() {  # step NAME SECONDS CMD...: run one benchmark under its own limit, log it, never stop the script
  local name=$1 limit=$2; shift 2
  local began=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $((SECONDS - began))s" | tee -a "$OUT/steps.txt"
  [ $rc = 0 ] || tail -20 "$OUT/$name.log"
}

install
PYBIN="$VENV/bin/python"
"$PYBIN" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")' | tee "$OUT/device.txt"
: > "$OUT/steps.txt"
if [ "$TINY" = 1 ]; then
  step train 900 "$PYBIN" benchmarks/train.py --device "$DEVICE" --configs tiny --batch 1 --steps 10 --warmup 1 \
    --switches --switch-list adamw_foreach channels_last --out "$OUT/train.json"
  step encode 300 "$PYBIN" benchmarks/encode.py --device "$DEVICE" --vae tiny --videos 2 --frames 20 60 --repeats 1 \
    --work "$OUT/encode-work" --out "$OUT/encode.json"
  step sample 600 "$PYBIN" benchmarks/sample.py --device "$DEVICE" --tiny --frames 16 --batch 2 --videos 2 \
    --requests 1 --out "$OUT"
else
  step train 240 "$PYBIN" benchmarks/train.py --device "$DEVICE" --configs tiny reference --switches \
    --out "$OUT/train.json"
  step encode 180 "$PYBIN" benchmarks/encode.py --device "$DEVICE" --vae reference --repeats 3 \
    --work "$OUT/encode-work" --out "$OUT/encode.json"
  step sample 120 "$PYBIN" benchmarks/sample.py --device "$DEVICE" --tiny --frames 192 --batch 4 --videos 8 \
    --out "$OUT"
fi
rm -rf "$OUT/encode-work"
echo "results in $OUT:"; ls "$OUT"
! grep -q ' rc=[1-9]' "$OUT/steps.txt"
