#!/usr/bin/env bash
# Side-by-side benchmark: ferry vs the PyTorch peer (bench/torch_train.py) on
# the MLP and CNN Fashion-MNIST examples, runs interleaved A B A B, plus the
# sgemm ceiling from bench_sgemm. Prints ONE JSON document on stdout; progress
# goes to stderr. Exits non-zero if any run fails. See bench/README.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/run.sh [options]
  --pairs N        ferry/pytorch pairs per model (env BENCH_PAIRS, default 3)
  --epochs N       epochs per run (env BENCH_EPOCHS, default 1)
  --steps K        stop each run after K optimizer steps (env BENCH_STEPS, default 0 = off);
                   ferry gets --set $BENCH_FERRY_STEPS_KEY=K (default train.steps)
  --threads 1|2    BLAS/OpenMP threads for both systems (env BENCH_THREADS, default 1);
                   with more than 1, OMP_WAIT_POLICY=PASSIVE is set as well
  --models "mlp cnn"   which models (env BENCH_MODELS)
  --torch-only     run only the PyTorch side (no ferry binary needed)
  --no-sgemm       skip bench_sgemm (no FLOP-rate fractions then)
  --keep           keep the work directory (it is always kept on failure)
env: FERRY (default build/ferry), BENCH_SGEMM (default build/bench/bench_sgemm),
     BUILD_DIR (default build; bench_sgemm is built there if missing),
     PYTHON (default /usr/bin/python3), BENCH_WORKDIR (default: mktemp -d),
     BENCH_FERRY_SET (extra "key=value ..." passed to ferry as --set each),
     BENCH_EXAMPLES (directory of <model>-fmnist.yaml, default examples),
     BENCH_VAL_FRAC (training fraction the PyTorch peer holds out, default 0.1 as
     in the examples' data.val_frac)
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PAIRS=${BENCH_PAIRS:-3}
EPOCHS=${BENCH_EPOCHS:-1}
STEPS=${BENCH_STEPS:-0}
THREADS=${BENCH_THREADS:-1}
MODELS=${BENCH_MODELS:-mlp cnn}
# The examples hold out data.val_frac = 0.1 of the training set; the peer
# does the same so both train on 54000 samples per epoch.
VAL_FRAC=${BENCH_VAL_FRAC:-0.1}
TORCH_ONLY=0
SGEMM=1
KEEP=0
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) PAIRS=$2; shift 2 ;;
    --epochs) EPOCHS=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    --torch-only) TORCH_ONLY=1; shift ;;
    --no-sgemm) SGEMM=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

BUILD_DIR=${BUILD_DIR:-$ROOT/build}
EXAMPLES=${BENCH_EXAMPLES:-$ROOT/examples}
FERRY=${FERRY:-$BUILD_DIR/ferry}
BENCH_SGEMM=${BENCH_SGEMM:-$BUILD_DIR/bench/bench_sgemm}
PYTHON=${PYTHON:-/usr/bin/python3}
FERRY_STEPS_KEY=${BENCH_FERRY_STEPS_KEY:-train.steps}
TIME=/usr/bin/time

die() { echo "run.sh: $*" >&2; exit 1; }
log() { echo "run.sh: $*" >&2; }

for v in PAIRS EPOCHS STEPS THREADS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, found '${!v}'"
done
[ "$PAIRS" -ge 1 ] || die "--pairs must be at least 1"
[ "$THREADS" -ge 1 ] || die "--threads must be at least 1"
[ "$EPOCHS" -ge 1 ] || die "--epochs must be at least 1"
for m in $MODELS; do
  case "$m" in mlp|cnn) ;; *) die "unknown model '$m' (expected mlp or cnn)" ;; esac
done

# --- prerequisites -----------------------------------------------------------
[ -x "$TIME" ] || die "$TIME not found: apt-get install time"
"$PYTHON" -c 'import torch, numpy' 2>/dev/null ||
  die "$PYTHON cannot import torch and numpy: apt-get install python3-torch python3-numpy"
if [ "$TORCH_ONLY" = 0 ]; then
  [ -x "$FERRY" ] || die "ferry binary '$FERRY' not found (build it, set FERRY=, or use --torch-only)"
  for m in $MODELS; do
    [ -f "$EXAMPLES/$m-fmnist.yaml" ] || die "missing $EXAMPLES/$m-fmnist.yaml"
  done
fi
if [ "$SGEMM" = 1 ] && [ ! -x "$BENCH_SGEMM" ]; then
  log "building bench_sgemm in $BUILD_DIR"
  cmake --build "$BUILD_DIR" --target bench_sgemm -j2 >&2 ||
    die "cannot build bench_sgemm (set BENCH_SGEMM= or use --no-sgemm)"
fi

WORK=${BENCH_WORKDIR:-$(mktemp -d /tmp/ferry-bench.XXXXXX)}
mkdir -p "$WORK"
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then log "failed; logs kept in $WORK"
  elif [ "$KEEP" = 0 ] && [ -z "${BENCH_WORKDIR:-}" ]; then rm -rf "$WORK"
  else log "work directory kept: $WORK"; fi
}
trap cleanup EXIT

# Both systems get the same thread environment. torch.set_num_threads() does
# not limit OpenBLAS (nn.Linear uses it here), hence the env vars; with more
# than one thread, spinning OpenMP workers fight over the 2 cores.
export OPENBLAS_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS
if [ "$THREADS" -gt 1 ]; then export OMP_WAIT_POLICY=PASSIVE; else unset OMP_WAIT_POLICY; fi

# --- sgemm ceiling -----------------------------------------------------------
# Measured before and after the runs; the report takes the better of the two,
# so a slow moment of the machine does not lower the ceiling.
SGEMM_JSON=-
SGEMM_THREADS=1
[ "$THREADS" -gt 1 ] && SGEMM_THREADS="1,$THREADS"
run_sgemm() {  # run_sgemm OUTFILE
  log "bench_sgemm --threads $SGEMM_THREADS > $1"
  # The pthreads OpenBLAS sizes its pool from OPENBLAS_NUM_THREADS at start-up.
  OPENBLAS_NUM_THREADS=$THREADS "$BENCH_SGEMM" --threads "$SGEMM_THREADS" >"$1" ||
    die "bench_sgemm failed"
}
if [ "$SGEMM" = 1 ]; then
  run_sgemm "$WORK/sgemm-before.json"
  SGEMM_JSON=$WORK/sgemm-before.json,$WORK/sgemm-after.json
fi

# --- one run -------------------------------------------------------------------
# run_one SYSTEM MODEL PAIR: runs under /usr/bin/time -v, appends a record.
RECORDS=$WORK/records.jsonl
: >"$RECORDS"
run_one() {
  local system=$1 model=$2 pair=$3
  local dir=$WORK/$model/$system-$pair
  mkdir -p "$dir"
  local cmd
  if [ "$system" = ferry ]; then
    cmd=("$FERRY" train "$EXAMPLES/$model-fmnist.yaml" --out "$dir/out"
         --set "train.epochs=$EPOCHS")
    [ "$STEPS" -gt 0 ] && cmd+=(--set "$FERRY_STEPS_KEY=$STEPS")
    local kv
    for kv in ${BENCH_FERRY_SET:-}; do cmd+=(--set "$kv"); done
  else
    cmd=("$PYTHON" "$ROOT/bench/torch_train.py" --model "$model" --epochs "$EPOCHS"
         --steps "$STEPS" --threads "$THREADS" --seed "$pair" --val-frac "$VAL_FRAC" --json)
  fi
  printf '%q ' "${cmd[@]}" >"$dir/cmd"
  # The 1-minute load before the run: above ~1 (this benchmark's own run)
  # means something else was using the cores and the pair is suspect.
  cut -d' ' -f1 /proc/loadavg >"$dir/loadavg"
  if ! (cd "$ROOT" && "$TIME" -v -o "$dir/time.txt" "${cmd[@]}" >"$dir/stdout" 2>"$dir/stderr"); then
    log "$system $model pair $pair FAILED: $(cat "$dir/cmd")"
    tail -n 20 "$dir/stderr" >&2 || true
    return 1
  fi
  local rec
  rec=$("$PYTHON" "$ROOT/bench/summarize.py" record "$system" "$model" "$pair" "$dir") ||
    { log "$system $model pair $pair: bad output (see $dir)"; return 1; }
  echo "$rec" >>"$RECORDS"
}

# --- interleaved pairs: ferry, pytorch, ferry, pytorch, ... ----------------------
for model in $MODELS; do
  for ((p = 1; p <= PAIRS; p++)); do
    [ "$TORCH_ONLY" = 0 ] && { run_one ferry "$model" "$p" || exit 1; }
    run_one pytorch "$model" "$p" || exit 1
  done
done

[ "$SGEMM" = 1 ] && run_sgemm "$WORK/sgemm-after.json"

# --- report ----------------------------------------------------------------------
CONFIG=$WORK/config.json
"$PYTHON" - "$CONFIG" <<EOF
import json, os, platform, sys, time
cpu = ""
try:
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
except OSError:
    pass
json.dump({
    "threads": $THREADS, "pairs": $PAIRS, "epochs": $EPOCHS, "steps": $STEPS,
    "pytorch_val_frac": $VAL_FRAC,
    "models": "$MODELS".split(), "torch_only": bool($TORCH_ONLY),
    "ferry": None if $TORCH_ONLY else "$FERRY",
    "env": {k: os.environ.get(k) for k in
            ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMP_WAIT_POLICY")},
    "host": {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release()},
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
}, open(sys.argv[1], "w"))
EOF
"$PYTHON" "$ROOT/bench/summarize.py" report "$RECORDS" "$SGEMM_JSON" "$CONFIG"
