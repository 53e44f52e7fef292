#!/usr/bin/env bash
# The one GPU check: d2l's loop and our trainer back to back on one CUDA device, plus the step-time probe.
#
#   bash benchmarks/gpu_check.sh            # from the repo root; results under $OUT (default: bench-out/)
#
# For a machine with PyTorch preinstalled (Python 3.12, torch 2.11 tested by the lead's plan) and NO network:
# it installs nothing. The package is used from src/ (PYTHONPATH); the four Fashion-MNIST .gz files must be in
# data/ (git-ignored: copy them from /usr/share/datasets/fashion-mnist, and carry `data` to the device) or in
# $INCEPTIONLAB_DATA. numpy and Pillow are required (our loader; the reference's PIL resize); matplotlib and
# safetensors are optional (bench_train.py stands in for them); pytest is optional (the CUDA-graph
# correctness test also runs inside the probe).
# Sized for < 6 minutes on an H100/H200: reference 10 epochs (~135 s on an H200), ours d2l recipe,
# ours `--preset fast`, then the probe (~1 min). Each stage has its own timeout, so a hang costs one stage.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export INCEPTIONLAB_DATA="${INCEPTIONLAB_DATA:-$PWD/data}"
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-/tmp/inceptionlab-cache}"  # the loader's verification cache
LOG="$OUT/gpu_check.log"
log() { echo "[$(date +%T)] $*" | tee -a "$LOG"; }

log "environment"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
"$PY" - > "$OUT/env.json" <<'EOF'
import importlib, json, os, platform
import torch
mods = {}
for name in ("numpy", "PIL", "safetensors", "matplotlib", "tqdm", "pytest", "torchvision"):
    try:
        mods[name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception:
        mods[name] = None
print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
    "cudnn": torch.backends.cudnn.version(), "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    "cpu_count": os.cpu_count(), "modules": mods,
}, indent=1))
EOF
cat "$OUT/env.json" | tee -a "$LOG"
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || { log "no CUDA device: stop"; exit 1; }
"$PY" -c "import numpy, PIL" || { log "numpy and Pillow are required: stop"; exit 1; }
ls "$INCEPTIONLAB_DATA"/*-ubyte* > /dev/null 2>&1 || { log "no Fashion-MNIST files in $INCEPTIONLAB_DATA: stop"; exit 1; }

if "$PY" -c "import pytest" 2>/dev/null; then
    log "tests/test_fast.py (includes the CUDA-graph vs eager test)"
    timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_fast.py 2>&1 | tail -5 | tee -a "$LOG"
fi

log "d2l reference vs ours (d2l recipe, bf16 + channels_last, step_mode auto), then ours --preset fast"
timeout 420 "$PY" benchmarks/bench_train.py --device cuda --epochs 10 --also-preset fast \
    --json "$OUT/bench_train_cuda.json" 2> "$OUT/bench_train_cuda.stderr" | tee "$OUT/bench_train_cuda.txt"
log "bench_train exit $?"

log "step-time probe (random inputs on the GPU, googlenet 96 px)"
timeout 150 "$PY" benchmarks/bench_train.py --probe --device cuda --steps 50 \
    --json "$OUT/probe_cuda.json" 2>&1 | tee "$OUT/probe_cuda.txt"
log "probe exit $?"
log "done: $OUT"
