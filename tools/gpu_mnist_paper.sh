#!/usr/bin/env bash
# The paper's full MNIST IC-STN-4(a) recipe on a lent GPU, in one prepared command that fits a
# time budget and continues where an earlier call stopped (docs/mnist_gtsrb.md, "GPU runs").
#
#   [FROM=DIR] [BENCH=0] [EXTRA="..."] tools/gpu_mnist_paper.sh DATA OUT BUDGET_S
#
# DATA: the data root (holding mnist/); OUT: where the logs and a .tgz of the run folder go;
# BUDGET_S: wall seconds this command may take. In order: the GPU tests (pytest -m gpu: CUDA
# against the CPU, CUDA graphs against eager training); the run; the GPU step benchmark
# (benchmarks/train_step_gpu.py, unless BENCH=0) if a minute is left.
# The run: `lkstn reproduce mnist --rows "IC-STN-4(a)" --device cuda --resume $EXTRA` with the
# default (paper) recipe: plain SGD, predictor 1e-4, classifier 1e-2, batch 100, 200,000 steps,
# evaluated on the whole perturbed test set every 20,000 steps. It resumes from
# runs/mnist-paper-gpu when an earlier call on the same machine left a checkpoint there, or
# from FROM, a copy of an earlier call's run folder (the .tgz it returned, unpacked). EXTRA adds
# options, e.g. "--skip-nonfinite" or "--no-cuda-graph" (CUDA graphs are the default).
set -u
DATA=$1 OUT=$2 BUDGET=$3
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
t0=$(date +%s)
mkdir -p "$OUT" runs
log() { echo "$(( $(date +%s) - t0 ))s $*" | tee -a "$OUT/summary.txt"; }
left() { echo $(( BUDGET - ($(date +%s) - t0) )); }

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > "$OUT/machine.txt"
python3 -c "import torch, numpy, sys, os; print(torch.__version__, torch.version.cuda,
numpy.__version__, sys.version.split()[0], os.cpu_count())" >> "$OUT/machine.txt"
log "machine: $(tr '\n' ' ' < "$OUT/machine.txt")"

timeout 90 python3 -m pytest -q -m gpu -p no:cacheprovider tests > "$OUT/pytest_gpu.log" 2>&1
log "pytest -m gpu: $(tail -1 "$OUT/pytest_gpu.log")"

if [ -n "${FROM:-}" ] && [ ! -e runs/mnist-paper-gpu ]; then
    cp -r "$FROM" runs/mnist-paper-gpu && log "resuming from $FROM"
fi
# The time limit counts the row's wall time over all calls (progress.jsonl): add what earlier
# calls spent; the row stops at the first evaluation past it, so keep a chunk (20K steps) in hand.
before=$(python3 -c "import json, pathlib
p = pathlib.Path('runs/mnist-paper-gpu/ic-stn-4a/progress.jsonl')
lines = p.read_text().splitlines() if p.exists() else []
print(json.loads(lines[-1])['elapsed_s'] if lines else 0)")
minutes=$(python3 -c "print(max(0.5, ($before + $(left) - 90) / 60))")
log "training up to $minutes min of the row's wall time ($before s before this call)"
timeout $(( $(left) - 15 )) python3 -m lkstn reproduce mnist --data "$DATA" \
    --rows "IC-STN-4(a)" --device cuda --eval-every 20000 --time-limit "$minutes" --no-figures \
    --resume ${EXTRA:-} --out runs/mnist-paper-gpu > "$OUT/mnist.log" 2>&1
log "mnist (exit $?): $(grep -h 'step' "$OUT/mnist.log" | tail -2 | tr '\n' '|')"
tar czf "$OUT/mnist-paper-gpu.tgz" -C runs mnist-paper-gpu

if [ "${BENCH:-1}" = 1 ] && [ "$(left)" -gt 60 ]; then
    timeout $(( $(left) - 5 )) python3 benchmarks/train_step_gpu.py --rounds 5 --steps 200 \
        --out "$OUT/train_step_gpu.json" > "$OUT/bench.log" 2>&1
    log "bench: $(tail -4 "$OUT/bench.log" | tr '\n' '|')"
fi
log "done"
