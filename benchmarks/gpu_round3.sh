#!/usr/bin/env bash
# Issue 28's GPU verification round (2026-12-04): one device call, every stage under its own `timeout`, logs copied
# into $OUT after each stage so a run cut short still returns what it finished.
#
#   bash benchmarks/gpu_round3.sh            # on the GPU machine: about 560 s in all ($BUDGET)
#   SMOKE=1 bash benchmarks/gpu_round3.sh    # on a CPU: the same stages, tiny (plumbing check, 1-2 minutes)
#
# Stages (limits in seconds; each also cut to what is left of $BUDGET):
#   0 env      nvidia-smi, python/torch/cuda/cudnn versions, the packages the suite needs            (30)
#   1 suite    the whole test suite, CUDA tests included: pytest -n 8, junit XML (155, SIGINT, +15 to KILL)
#   2 e2e      `inceptionlab train` (the chapter's recipe, defaults), then `train --preset fast`: wall time from
#              spawn to exit (date before/after; /usr/bin/time -v where present), the run dirs' JSON files (100 each)
#   3 probe    benchmarks/probe_step.py --device cuda --steps 50 --warmup-steps 5: the float64 graph-vs-eager
#              checks and the step time of each setup row                                    (what is left - 20)
# Everything lands in $WORK, packed into $OUT/round3.tgz (weights and checkpoints left out) after each stage, next
# to $OUT/round3.log, $OUT/pytest.txt, $OUT/junit.xml and $OUT/probe.json: 5 files (the device tool returns 8).
# The package runs from src/ (PYTHONPATH); the four Fashion-MNIST .gz files must be in data/ or $INCEPTIONLAB_DATA.
set -uo pipefail
cd "$(dirname "$0")/.."
T0=$(date +%s)
OUT="${OUT:-bench-out/round3}"
WORK="${WORK:-/tmp/gpu-round3}"
SMOKE="${SMOKE:-0}"
BUDGET="${BUDGET:-560}"
PY="${PYTHON:-python3}"
rm -rf "$WORK" && mkdir -p "$WORK" "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"
export INCEPTIONLAB_DATA="${INCEPTIONLAB_DATA:-$PWD/data}"
export XDG_CACHE_HOME="$WORK/xdg-cache"
export PYTHONUNBUFFERED=1
LOG="$WORK/round3.log"
log() { echo "[$(date +%T) +$(( $(date +%s) - T0 ))s] $*" | tee -a "$LOG"; }
left() { echo $(( BUDGET - ($(date +%s) - T0) )); }
limit() {  # limit SECONDS: the smaller of SECONDS and what is left of the budget (at least 1)
    local l; l=$(left); (( l < $1 )) && echo $(( l > 1 ? l : 1 )) || echo "$1"
}
pack() {
    tar -czf "$OUT/round3.tgz.part" --exclude='*.pt' --exclude='*.safetensors' --exclude='xdg-cache*' \
        --exclude='pytest-tmp' -C "$WORK" . && mv "$OUT/round3.tgz.part" "$OUT/round3.tgz"
    cp "$LOG" "$OUT/round3.log"
    [[ -f "$WORK/pytest.txt" ]] && cp "$WORK/pytest.txt" "$OUT/pytest.txt"
    [[ -f "$WORK/probe.json" ]] && cp "$WORK/probe.json" "$OUT/probe.json"
    return 0
}
limited() {  # limited SECONDS CMD...: CMD under `timeout` (its own process group; $LIMIT_SIGNAL, default TERM, then
    # KILL 15 s later); what of that group outlives it is killed, so no stage leaves a process behind for the next one
    timeout -s "${LIMIT_SIGNAL:-TERM}" -k 15 "$1" "${@:2}" &
    local pid=$! rc
    wait "$pid"; rc=$?
    pkill -KILL -g "$pid" 2> /dev/null
    return "$rc"
}
gpu_procs() {  # log the processes still on the GPU and end them, by pid (all started by this script)
    command -v nvidia-smi > /dev/null || return 0
    local pids
    pids=$(nvidia-smi --query-compute-apps=pid --format=csv,noheader 2> /dev/null | tr -d ' ')
    if [[ -n "$pids" ]]; then
        log "processes left on the GPU: $(echo $pids): killing them"
        for p in $pids; do kill -KILL "$p" 2> /dev/null; done
        sleep 2
    fi
}

if [[ "$SMOKE" == 1 ]]; then
    DEVICE=cpu
    SUITE=(tests/test_choose_cuda_options.py tests/test_step.py -k "resolve or cuda")
    TRAIN_ARGS=(--device cpu --epochs 1 --limit-train 256 --limit-test 128 --image-size 32 --num-threads 1)
    FAST_ARGS=(--device cpu --epochs 1 --warmup-epochs 0 --limit-train 256 --limit-test 128 --image-size 32
               --num-threads 1)
    PROBE_ARGS=(--steps 1 --warmup-steps 1 --image-size 32 --checks-only)
    WORKERS=2
else
    DEVICE=cuda
    SUITE=()
    TRAIN_ARGS=()
    FAST_ARGS=()
    PROBE_ARGS=(--steps 50 --warmup-steps 5)
    WORKERS=8
fi

# ------------------------------------------------------------------------------------------------------- 0 env
log "0 environment (smoke=$SMOKE, device=$DEVICE, budget ${BUDGET}s, python $PY, cwd $PWD, commit $(git rev-parse --short HEAD 2> /dev/null || echo '?'))"
{ nvidia-smi 2>&1 || echo "no nvidia-smi"; } > "$WORK/nvidia-smi.txt"
head -n 20 "$WORK/nvidia-smi.txt" >> "$LOG"
# (written to a file: a background job's stdin is /dev/null, so `limited` cannot read a here-document)
cat > "$WORK/env.py" <<'EOF'
import importlib, json, os, platform
import torch
mods = {}
for name in ("numpy", "PIL", "safetensors", "matplotlib", "tqdm", "pytest", "xdist", "pytest_timeout", "onnx",
             "onnxruntime", "onnxscript", "tensorboard", "nbformat", "nbclient", "ipykernel", "ipywidgets",
             "importlinter"):
    try:
        mods[name] = getattr(importlib.import_module(name), "__version__", "present")
    except Exception as exc:
        mods[name] = None
cuda = torch.cuda.is_available()
print(json.dumps({
    "python": platform.python_version(), "executable": __import__("sys").executable, "torch": torch.__version__,
    "cuda": torch.version.cuda, "cudnn": torch.backends.cudnn.version(), "cuda_available": cuda,
    "gpu": torch.cuda.get_device_name(0) if cuda else None,
    "capability": torch.cuda.get_device_capability(0) if cuda else None,
    "bf16": torch.cuda.is_bf16_supported() if cuda else None,
    "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(), "modules": mods,
}, indent=1))
EOF
limited "$(limit 30)" "$PY" "$WORK/env.py" > "$WORK/env.json" 2>> "$LOG"
log "env exit $?"
cat "$WORK/env.json" >> "$LOG"
command -v lint-imports >> "$LOG" 2>&1 || log "no lint-imports on PATH"
ls -la "$INCEPTIONLAB_DATA" >> "$LOG" 2>&1
uptime >> "$LOG" 2>&1
pack

# ------------------------------------------------------------------------------------------------------ 1 suite
TIMEOUT_OPT=()
"$PY" -c "import pytest_timeout" 2> /dev/null && TIMEOUT_OPT=(--timeout 140)
log "1 suite: pytest -n $WORKERS ${SUITE[*]:-(all)} ($(left)s left)"
mkdir -p "$WORK/pytest-tmp"
# SIGINT: pytest (and xdist) stop as on Ctrl-C and still print the summary and write the junit XML
LIMIT_SIGNAL=INT limited "$(limit 155)" "$PY" -m pytest -q -p no:cacheprovider -n "$WORKERS" -rs --continue-on-collection-errors \
    "${TIMEOUT_OPT[@]}" --durations=25 --basetemp "$WORK/pytest-tmp" --junitxml="$OUT/junit.xml" "${SUITE[@]}" \
    > "$WORK/pytest.txt" 2>&1
log "pytest exit $?"
tail -n 60 "$WORK/pytest.txt" >> "$LOG"
grep -E "^(FAILED|ERROR)" "$WORK/pytest.txt" | head -n 40 | tee -a "$LOG" > /dev/null
tail -n 1 "$WORK/pytest.txt" | tee -a "$LOG"
rm -rf "$WORK/pytest-tmp"
gpu_procs
uptime >> "$LOG" 2>&1
pack

# -------------------------------------------------------------------------------------------------------- 2 e2e
train_run() {  # train_run NAME LIMIT ARGS...: one `inceptionlab train`, timed from spawn to exit
    local name=$1 lim=$2 rc t1 t2
    shift 2
    local dir="$WORK/$name" cache="$WORK/xdg-cache-$name"
    local cmd=("$PY" -m inceptionlab train "$@" --run-dir "$dir/run" --no-progress)
    mkdir -p "$dir"
    local timer=()
    [[ -x /usr/bin/time ]] && timer=(/usr/bin/time -v -o "$dir/time-v.txt")
    if command -v nvidia-smi > /dev/null && [[ "$DEVICE" == cuda ]]; then
        nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,clocks.sm,power.draw --format=csv \
            -lms 500 > "$dir/nvidia-smi-samples.csv" 2>&1 &
        local smi=$!
    fi
    log "2 $name: ${cmd[*]} (limit $(limit "$lim")s, $(left)s left, load $(cut -d' ' -f1-3 /proc/loadavg))"
    t1=$(date +%s.%N)
    XDG_CACHE_HOME="$cache" limited "$(limit "$lim")" "${timer[@]}" "${cmd[@]}" > "$dir/train.log" 2>&1
    rc=$?
    t2=$(date +%s.%N)
    [[ -n "${smi:-}" ]] && kill "$smi" 2> /dev/null
    log "$name exit $rc, wall $(awk "BEGIN { printf \"%.2f\", $t2 - $t1 }") s"
    echo "{\"name\": \"$name\", \"exit\": $rc, \"t_start\": $t1, \"t_end\": $t2, \"command\": \"${cmd[*]}\"}" \
        > "$dir/wall.json"
    tail -n 25 "$dir/train.log" >> "$LOG"
    [[ -f "$dir/time-v.txt" ]] && grep -E "Elapsed|Maximum resident|Percent of CPU" "$dir/time-v.txt" >> "$LOG"
    for f in "$dir"/run/summary.json "$dir"/run/metrics.jsonl; do
        [[ -f "$f" ]] && { echo "--- $f"; head -c 6000 "$f"; echo; } >> "$LOG"
    done
    ls -la "$dir/run" >> "$LOG" 2>&1
    gpu_procs
    pack
}
train_run recipe 100 "${TRAIN_ARGS[@]}"
train_run fast 100 --preset fast "${FAST_ARGS[@]}"

# ------------------------------------------------------------------------------------------------------ 3 probe
if (( $(left) > 40 )); then
    PLIM=$(( $(left) - 20 ))
    log "3 probe: benchmarks/probe_step.py --device $DEVICE ${PROBE_ARGS[*]} (limit ${PLIM}s)"
    limited "$PLIM" "$PY" benchmarks/probe_step.py --device "$DEVICE" "${PROBE_ARGS[@]}" --json "$WORK/probe.json" \
        > "$WORK/probe.txt" 2>&1
    log "probe exit $?"
    tail -n 80 "$WORK/probe.txt" >> "$LOG"
    gpu_procs
else
    log "3 probe skipped: $(left)s left"
fi
log "done in $(( $(date +%s) - T0 ))s"
pack
