#!/usr/bin/env bash
# Data-parallel benchmarks of ferry (MPI ranks on one machine): scaling N=1 ->
# N=2, overlap of the gradient allreduce with backward (sync vs
# FERRY_BENCH_NO_SYNC=1), ferry N=2 vs PyTorch DDP, the cost of
# train.deterministic, and peak RSS per rank at N=1, 2, 4. Prints ONE JSON
# document on stdout; progress on stderr. Exits non-zero if any run fails.
# See bench/README.md ("Data-parallel benchmarks: dp.sh").
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/dp.sh [options]
  --pairs N          rounds per model (env DP_PAIRS, default 3); each round runs every arm once
  --models "mlp cnn" which models (env DP_MODELS)
  --mlp-steps K      optimizer steps per MLP run (env DP_MLP_STEPS, default 1500)
  --cnn-steps K      optimizer steps per CNN run (env DP_CNN_STEPS, default 150)
  --mem-steps-mlp K  steps of the memory runs (env DP_MEM_STEPS_MLP, default 200)
  --mem-steps-cnn K  (env DP_MEM_STEPS_CNN, default 30)
  --no-torch         skip the PyTorch DDP arm
  --no-mem           skip the N=1,2,4 memory runs
  --no-machine       skip the 2-core sgemm check (bench_sgemm alone vs 2 copies at once)
  --quick            2 rounds, MLP 600 / CNN 60 steps, memory runs of 100 / 20 steps,
                     no retries (about 2 minutes)
  --wait-quiet S     before each round wait up to S seconds for the machine to be idle
                     (busy < --quiet-threshold cores over 1 s; env DP_WAIT_QUIET, default 10)
  --quiet-threshold C  cores of other work above which a run counts as disturbed
                     (env DP_QUIET_THRESHOLD, default 0.25)
  --retries R        repeat a run during which other processes used more than the
                     threshold, up to R times, keeping the least disturbed attempt
                     (env DP_RUN_RETRIES, default 2; 0 with --quick)
  --extra-rounds R   after the PAIRS rounds (and the memory runs), run up to R more rounds
                     per model while fewer than PAIRS of its rounds were quiet
                     (env DP_EXTRA_ROUNDS, default 0)
  --budget S         no retry or extra round once S seconds have passed
                     (env DP_BUDGET_S, default 540)
  --keep             keep the work directory (always kept on failure)
env: FERRY (default build/ferry), BENCH_SGEMM (default build/bench/bench_sgemm), MPIRUN (default mpirun), PYTHON (default /usr/bin/python3),
     DP_WORKDIR (default mktemp -d), DP_EXAMPLES (default examples),
     DP_FERRY_SET ("key=value ..." extra --set for every ferry run),
     DP_N1_LAUNCH (direct | mpirun: how N=1 is started, default direct),
     DP_CHECK_EVERY (train.check_every of every ferry run, default 0; see README)
EOF
}

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PAIRS=${DP_PAIRS:-3}
MODELS=${DP_MODELS:-mlp cnn}
MLP_STEPS=${DP_MLP_STEPS:-1500}
CNN_STEPS=${DP_CNN_STEPS:-150}
MEM_MLP=${DP_MEM_STEPS_MLP:-200}
MEM_CNN=${DP_MEM_STEPS_CNN:-30}
WAIT_QUIET=${DP_WAIT_QUIET:-10}
EXTRA_ROUNDS=${DP_EXTRA_ROUNDS:-0}
RUN_RETRIES=${DP_RUN_RETRIES:-2}
BUDGET=${DP_BUDGET_S:-540}
QUIET_THR=${DP_QUIET_THRESHOLD:-0.25}
N1_LAUNCH=${DP_N1_LAUNCH:-direct}
CHECK_EVERY=${DP_CHECK_EVERY:-0}
TORCH=1
MEM=1
MACHINE=1
KEEP=0
QUICK=0
while [ $# -gt 0 ]; do
  case "$1" in
    --pairs) PAIRS=$2; shift 2 ;;
    --models) MODELS=$2; shift 2 ;;
    --mlp-steps) MLP_STEPS=$2; shift 2 ;;
    --cnn-steps) CNN_STEPS=$2; shift 2 ;;
    --mem-steps-mlp) MEM_MLP=$2; shift 2 ;;
    --mem-steps-cnn) MEM_CNN=$2; shift 2 ;;
    --no-torch) TORCH=0; shift ;;
    --no-mem) MEM=0; shift ;;
    --no-machine) MACHINE=0; shift ;;
    --quick) QUICK=1; PAIRS=2; MLP_STEPS=600; CNN_STEPS=60; MEM_MLP=100; MEM_CNN=20
             RUN_RETRIES=0; EXTRA_ROUNDS=0; shift ;;
    --retries) RUN_RETRIES=$2; shift 2 ;;
    --extra-rounds) EXTRA_ROUNDS=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --wait-quiet) WAIT_QUIET=$2; shift 2 ;;
    --quiet-threshold) QUIET_THR=$2; shift 2 ;;
    --keep) KEEP=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "dp.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

FERRY=${FERRY:-$ROOT/build/ferry}
BENCH_SGEMM=${BENCH_SGEMM:-$ROOT/build/bench/bench_sgemm}
MPIRUN=${MPIRUN:-mpirun}
PYTHON=${PYTHON:-/usr/bin/python3}
EXAMPLES=${DP_EXAMPLES:-$ROOT/examples}
HELPER=$ROOT/bench/dp_summarize.py

die() { echo "dp.sh: $*" >&2; exit 1; }
log() { echo "dp.sh: $*" >&2; }

for v in PAIRS MLP_STEPS CNN_STEPS MEM_MLP MEM_CNN WAIT_QUIET CHECK_EVERY EXTRA_ROUNDS RUN_RETRIES BUDGET; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a non-negative integer, found '${!v}'"
done
[ "$PAIRS" -ge 1 ] || die "--pairs must be at least 1"
[ "$MLP_STEPS" -ge 1 ] && [ "$CNN_STEPS" -ge 1 ] || die "steps must be at least 1"
[[ $QUIET_THR =~ ^[0-9]*\.?[0-9]+$ ]] || die "--quiet-threshold must be a number"
case "$N1_LAUNCH" in direct|mpirun) ;; *) die "DP_N1_LAUNCH must be direct or mpirun" ;; esac
for m in $MODELS; do
  case "$m" in mlp|cnn) ;; *) die "unknown model '$m' (expected mlp or cnn)" ;; esac
  [ -f "$EXAMPLES/$m-fmnist.yaml" ] || die "missing $EXAMPLES/$m-fmnist.yaml"
done
[ -x "$FERRY" ] || die "ferry binary '$FERRY' not found: cmake -S . -B build && cmake --build build -j2"
command -v "$MPIRUN" >/dev/null || die "$MPIRUN not found (apt-get install openmpi-bin)"
"$PYTHON" -c 'import json, resource' || die "$PYTHON does not run"
if [ "$TORCH" = 1 ]; then
  "$PYTHON" -c 'import torch, numpy' 2>/dev/null ||
    die "$PYTHON cannot import torch: apt-get install python3-torch (or --no-torch)"
fi

WORK=${DP_WORKDIR:-$(mktemp -d /tmp/ferry-dp.XXXXXX)}
mkdir -p "$WORK"
cleanup() {
  local rc=$?
  if [ $rc -ne 0 ]; then log "failed; logs kept in $WORK"
  elif [ "$KEEP" = 0 ] && [ -z "${DP_WORKDIR:-}" ]; then rm -rf "$WORK"
  else log "work directory kept: $WORK"; fi
}
trap cleanup EXIT

# Snapshot the binary: other people rebuild build/ferry while benchmarks run,
# and every arm must run the same code.
FERRY_SRC=$FERRY
FERRY_SHA=$(sha256sum "$FERRY_SRC" | cut -c1-16)
FERRY_MTIME=$(date -r "$FERRY_SRC" +%Y-%m-%dT%H:%M:%S%z)
cp "$FERRY_SRC" "$WORK/ferry" || die "cannot copy $FERRY_SRC to $WORK"
FERRY=$WORK/ferry
log "ferry: $FERRY_SRC (sha256 $FERRY_SHA..., built $FERRY_MTIME), copied to $FERRY"

# One BLAS thread per rank; ranks yield instead of busy-polling when idle
# (STACK.md: otherwise a shared core makes small collectives very slow).
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1 OMPI_MCA_mpi_yield_when_idle=1
unset OMP_WAIT_POLICY FERRY_BENCH_NO_SYNC
MPI=("$MPIRUN")
[ "$(id -u)" = 0 ] && MPI+=(--allow-run-as-root)
MPI+=(-x OPENBLAS_NUM_THREADS -x OMP_NUM_THREADS -x OMPI_MCA_mpi_yield_when_idle)

LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(date +%s)
# First attempts still to run (for the retry budget) and their time so far.
N_ARMS=6; [ "$TORCH" = 0 ] && N_ARMS=5
TOTAL_RUNS=0
for m in $MODELS; do TOTAL_RUNS=$(( TOTAL_RUNS + PAIRS * N_ARMS + 3 * MEM )); done
DONE_RUNS=0 MAND_S=0
RECORDS=$WORK/records.jsonl ATTEMPTS=$WORK/attempts.jsonl
: >"$RECORDS"; : >"$ATTEMPTS"

steps_of() { if [ "$1" = mlp ]; then echo "$MLP_STEPS"; else echo "$CNN_STEPS"; fi; }

# launch N [extra mpirun args...] -> the launcher prefix (array LAUNCH)
launcher() {
  local n=$1; shift
  LAUNCH=()
  if [ "$n" = 1 ] && [ "$N1_LAUNCH" = direct ]; then return; fi
  LAUNCH=("${MPI[@]}" -np "$n")
  if [ "$n" -le 2 ]; then LAUNCH+=(--bind-to core); else LAUNCH+=(--oversubscribe --bind-to none); fi
  LAUNCH+=("$@")
}

# run_arm MODEL ARM PAIR STEPS: one measurement, appended to $RECORDS. A run
# during which other processes took more than QUIET_THR cores is repeated (up
# to RUN_RETRIES times, after waiting for the machine to be idle, while the
# budget lasts); the least disturbed attempt is kept (chosen by the
# disturbance, never by speed). Every attempt is kept in $ATTEMPTS.
run_arm() {
  local model=$1 arm=$2 pair=$3 steps=$4
  local id="$model/$arm/$pair" base="$WORK/$model/$arm-$pair"
  local n det=false system=ferry extra=()
  local sets=(--set "train.steps=$steps" --set "train.check_every=$CHECK_EVERY")
  local kv
  for kv in ${DP_FERRY_SET:-}; do sets+=(--set "$kv"); done
  case "$arm" in
    n1|mem_n1) n=1 ;;
    n2|mem_n2) n=2 ;;
    mem_n4) n=4 ;;
    n2_nosync) n=2; extra=(-x FERRY_BENCH_NO_SYNC=1) ;;
    n1_det) n=1; det=true ;;
    n2_det) n=2; det=true ;;
    torch_ddp) n=2; system=pytorch ;;
    *) die "internal: unknown arm $arm" ;;
  esac
  launcher "$n" ${extra[@]+"${extra[@]}"}
  [ "$det" = true ] && sets+=(--set train.deterministic=true)
  local attempt=0 dir cmd meta rec noise best_rec="" best_noise=""
  while :; do
    attempt=$((attempt + 1))
    dir=$base; [ "$attempt" -gt 1 ] && dir=$base-retry$((attempt - 1))
    if [ "$system" = ferry ]; then
      cmd=(${LAUNCH[@]+"${LAUNCH[@]}"} "$FERRY" train "$EXAMPLES/$model-fmnist.yaml"
           --out "$dir/out" "${sets[@]}" --progress plain)
    else
      # DDP: ~422 steps per epoch per process (27000 samples / 64); enough
      # epochs that --steps decides.
      cmd=("$PYTHON" "$ROOT/bench/torch_train.py" --model "$model" --ddp --world 2
           --steps "$steps" --epochs $(( steps / 400 + 1 )) --val-frac 0.1 --seed "$pair" --json)
    fi
    meta=$(printf '{"id":"%s","model":"%s","arm":"%s","pair":%d,"n":%d,"steps":%d,"system":"%s","deterministic":%s,"attempt":%d,"quiet_wait_busy_cores":%s}' \
           "$id" "$model" "$arm" "$pair" "$n" "$steps" "$system" "$det" "$attempt" "${QUIET_BUSY:-null}")
    local t0=$(date +%s) t_run
    if ! rec=$(cd "$ROOT" && "$PYTHON" "$HELPER" run "$dir" "$meta" -- "${cmd[@]}"); then
      log "$id FAILED: $(cat "$dir/cmd" 2>/dev/null)"
      tail -n 15 "$dir/stderr" >&2 2>/dev/null || true
      exit 1
    fi
    echo "$rec" >>"$ATTEMPTS"
    t_run=$(( $(date +%s) - t0 ))
    if [ "$attempt" = 1 ]; then DONE_RUNS=$((DONE_RUNS + 1)) MAND_S=$((MAND_S + t_run)); fi
    noise=$(printf '%s' "$rec" | "$PYTHON" -c 'import json,sys; print(json.load(sys.stdin)["other_cpu_cores"] or 0)')
    if [ -z "$best_rec" ] || awk -v a="$noise" -v b="$best_noise" 'BEGIN { exit !(a < b) }'; then
      best_rec=$rec best_noise=$noise
    fi
    awk -v a="$best_noise" -v b="$QUIET_THR" 'BEGIN { exit !(a > b) }' || break
    [ "$attempt" -gt "$RUN_RETRIES" ] && break
    [[ $arm == mem_* ]] && break  # peak RSS does not depend on the load
    # Repeat only if the remaining first attempts (at the mean duration so
    # far) still fit in the budget after this repetition.
    local now=$(( $(date +%s) - T_START ))
    local rest=$(( (TOTAL_RUNS - DONE_RUNS) * MAND_S / (DONE_RUNS > 0 ? DONE_RUNS : 1) ))
    if (( now + WAIT_QUIET + t_run + rest > BUDGET )); then
      log "  $id disturbed (others used $noise cores); no time to repeat it (${now}s elapsed, ~${rest}s of runs left, budget ${BUDGET}s)"
      break
    fi
    log "  $id disturbed (others used $noise cores): repeating"
    wait_quiet
  done
  echo "$best_rec" >>"$RECORDS"
}

wait_quiet() {
  QUIET_BUSY=null
  if [ "$WAIT_QUIET" -gt 0 ]; then
    QUIET_BUSY=$("$PYTHON" "$HELPER" quiet "$WAIT_QUIET" "$QUIET_THR")
    log "machine busy before: $QUIET_BUSY cores (waited up to ${WAIT_QUIET}s for < $QUIET_THR)"
  fi
}

# --- machine check: does the machine give 2 cores' worth of compute? ---------------
# bench_sgemm (1 thread) alone on CPU 0, then two copies at once on CPUs 0
# and 1; run before and after the rounds. Skipped if bench_sgemm is not built.
MACHINE_FILES=()
machine_check() {  # machine_check LABEL
  [ "$MACHINE" = 1 ] || return 0
  if [ ! -x "$BENCH_SGEMM" ] || ! command -v taskset >/dev/null; then
    log "machine check skipped ($BENCH_SGEMM or taskset missing)"; return 0
  fi
  local d=$WORK/machine-$1 pid
  mkdir -p "$d"
  cut -d' ' -f1 /proc/loadavg >"$d/loadavg"
  taskset -c 0 "$BENCH_SGEMM" --threads 1 --reps 5 >"$d/alone.json" || die "bench_sgemm failed"
  taskset -c 0 "$BENCH_SGEMM" --threads 1 --reps 5 >"$d/pair0.json" & pid=$!
  taskset -c 1 "$BENCH_SGEMM" --threads 1 --reps 5 >"$d/pair1.json" || die "bench_sgemm failed"
  wait "$pid" || die "bench_sgemm failed"
  MACHINE_FILES+=("$1=$d")
  log "machine check $1: $("$PYTHON" "$HELPER" machine "$d")"
}
machine_check before

# --- timed rounds ------------------------------------------------------------------
# Each round runs every arm once; odd rounds in this order, even rounds
# reversed (A B .. B A), so no arm is always first after a pause or always
# after the heavier PyTorch start-up. Pairs for the ratios are the runs of
# one round (seconds to a minute apart).
ARMS=(torch_ddp n2_nosync n2 n1 n1_det n2_det)
declare -A QUIET_ROUNDS ROUNDS ROUND_S
run_round() {  # run_round MODEL PAIR
  local model=$1 p=$2 steps t0 arm noise order=("${ARMS[@]}")
  steps=$(steps_of "$model")
  wait_quiet
  log "$model round $p ($steps steps), load $(cut -d' ' -f1 /proc/loadavg)"
  if ((p % 2 == 0)); then
    order=(); for ((i = ${#ARMS[@]} - 1; i >= 0; i--)); do order+=("${ARMS[i]}"); done
  fi
  t0=$(date +%s)
  for arm in "${order[@]}"; do
    [ "$arm" = torch_ddp ] && [ "$TORCH" = 0 ] && continue
    run_arm "$model" "$arm" "$p" "$steps"
  done
  ROUND_S[$model]=$(( $(date +%s) - t0 ))
  ROUNDS[$model]=$p
  noise=$("$PYTHON" "$HELPER" roundnoise "$RECORDS" "$model" "$p")
  if awk -v a="$noise" -v b="$QUIET_THR" 'BEGIN { exit !(a <= b) }'; then
    QUIET_ROUNDS[$model]=$(( ${QUIET_ROUNDS[$model]:-0} + 1 ))
    log "$model round $p: quiet (others used at most $noise cores)"
  else
    log "$model round $p: disturbed (others used up to $noise cores during a run)"
  fi
}
for model in $MODELS; do
  for ((p = 1; p <= PAIRS; p++)); do run_round "$model" "$p"; done
done

# --- memory: one run each at N=1, 2, 4 ---------------------------------------------
if [ "$MEM" = 1 ]; then
  for model in $MODELS; do
    if [ "$model" = mlp ]; then ms=$MEM_MLP; else ms=$MEM_CNN; fi
    log "$model memory runs ($ms steps)"
    for n in 1 2 4; do run_arm "$model" "mem_n$n" 1 "$ms"; done
  done
fi

# --- extra rounds while fewer than PAIRS rounds were quiet, within the budget -------
for model in $MODELS; do
  extra=0
  while [ "${QUIET_ROUNDS[$model]:-0}" -lt "$PAIRS" ] && [ "$extra" -lt "$EXTRA_ROUNDS" ]; do
    elapsed=$(( $(date +%s) - T_START ))
    if (( elapsed + ROUND_S[$model] + WAIT_QUIET > BUDGET )); then
      log "$model: no time for an extra round (${elapsed}s elapsed, budget ${BUDGET}s)"
      break
    fi
    extra=$((extra + 1))
    log "$model: only ${QUIET_ROUNDS[$model]:-0} of ${ROUNDS[$model]} rounds quiet; extra round $extra/$EXTRA_ROUNDS"
    run_round "$model" $(( ROUNDS[$model] + 1 ))
  done
done

machine_check after

# --- report ------------------------------------------------------------------------
LOAD_END=$(cut -d' ' -f1-3 /proc/loadavg)
CONFIG=$WORK/config.json
MPI_STR="${MPI[*]}" \
"$PYTHON" - "$CONFIG" <<EOF
import json, os, platform, sys, time
cpu = ""
try:
    with open("/proc/cpuinfo") as f:
        cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), "")
except OSError:
    pass
mpi = os.environ["MPI_STR"]
ferry = "$FERRY_SRC"  # run from the copy in ferry_binary.ran_copy
ex = "$EXAMPLES"
sets = "--set train.steps=STEPS --set train.check_every=$CHECK_EVERY" + "".join(
    " --set " + kv for kv in "${DP_FERRY_SET:-}".split())
n1 = "" if "$N1_LAUNCH" == "direct" else mpi + " -np 1 --bind-to core "
json.dump({
    "pairs": $PAIRS, "quick": bool($QUICK), "models": "$MODELS".split(),
    "steps": {"mlp": $MLP_STEPS, "cnn": $CNN_STEPS},
    "memory_steps": {"mlp": $MEM_MLP, "cnn": $MEM_CNN} if $MEM else None,
    "pytorch_ddp": bool($TORCH),
    "round_order_odd": "${ARMS[*]}".split(), "round_order_even": "reversed",
    "wait_quiet_s": $WAIT_QUIET, "quiet_threshold_cores": $QUIET_THR,
    "extra_rounds_max": $EXTRA_ROUNDS, "run_retries_max": $RUN_RETRIES, "budget_s": $BUDGET,
    "rounds_run": {$(for m in $MODELS; do printf '"%s": %s, ' "$m" "${ROUNDS[$m]:-0}"; done)},
    "rounds_quiet": {$(for m in $MODELS; do printf '"%s": %s, ' "$m" "${QUIET_ROUNDS[$m]:-0}"; done)},
    "check_every": $CHECK_EVERY,
    "ferry_binary": {"path": "$FERRY_SRC", "sha256_prefix": "$FERRY_SHA",
                     "mtime": "$FERRY_MTIME", "ran_copy": "$FERRY"},
    "loadavg_start": [float(x) for x in "$LOAD_START".split()],
    "loadavg_end": [float(x) for x in "$LOAD_END".split()],
    "elapsed_s": int(time.time()) - $T_START,
    "env": {k: os.environ.get(k) for k in
            ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "OMPI_MCA_mpi_yield_when_idle")},
    "commands": {
        "n1": f"{n1}{ferry} train {ex}/MODEL-fmnist.yaml --out DIR {sets} --progress plain",
        "n2": f"{mpi} -np 2 --bind-to core {ferry} train {ex}/MODEL-fmnist.yaml --out DIR {sets} --progress plain",
        "n2_nosync": f"{mpi} -np 2 --bind-to core -x FERRY_BENCH_NO_SYNC=1 {ferry} train ... (as n2)",
        "n1_det / n2_det": "as n1 / n2 plus --set train.deterministic=true",
        "n4 (memory)": f"{mpi} -np 4 --oversubscribe --bind-to none {ferry} train ... (as n2)",
        "torch_ddp": "$PYTHON bench/torch_train.py --model MODEL --ddp --world 2 --steps STEPS "
                     "--epochs STEPS/400+1 --val-frac 0.1 --seed PAIR --json",
    },
    "host": {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release()},
    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
}, open(sys.argv[1], "w"))
EOF
MACHINE_ARG=$(IFS=,; echo "${MACHINE_FILES[*]:-}")
"$PYTHON" "$HELPER" report "$RECORDS" "$CONFIG" "$ATTEMPTS" "${MACHINE_ARG:--}"
log "done in $(( $(date +%s) - T_START )) s"
