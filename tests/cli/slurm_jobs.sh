# The Slurm scripts of cluster/ against a real Slurm on this machine
# (tests/cluster/slurm-local.bash installs slurm-wlm + munge if missing and
# starts the daemons; it stops those it started, by pid, at the end):
# - train-single-node.sbatch trains (summary.json, the layout line);
# - train-multi-node.sbatch runs with LAUNCHER=srun and LAUNCHER=mpirun;
# - transfer-array.sbatch: a 3-task array from one pre-trained checkpoint
#   writes one result per task, for that task's target domain;
# - train-preemptible.sbatch, requeued mid-run with `scontrol requeue`
#   (SIGTERM: checkpoint, exit 3, Slurm requeues) and then warned with
#   SIGUSR1 as before a time limit (checkpoint, exit 3, the script requeues
#   itself), resumes twice and ends with the same param_hash as the
#   uninterrupted single-node job (deterministic mode).
# No `set -e`: `expect` (lib.bash) records failing commands instead of exiting.
set -uo pipefail
. "$(dirname "$0")/lib.bash"
. "$SRC/tests/cluster/slurm-local.bash"
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: starting Slurm daemons needs root"
  exit 0
fi
trap 'slurm_down; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
mkdir -p "$TMP/slurm"
slurm_up "$TMP/slurm" || { bad "Slurm did not start"; finish; exit 1; }

C=$SRC/cluster
FERRY=$(realpath "$FERRY")
export FERRY FERRY_RUNS=$TMP/runs
# The jobs inherit this environment (sbatch exports it): one BLAS thread,
# ranks that yield when idle (the machine is shared with other tests).
export OPENBLAS_NUM_THREADS=1 OMPI_MCA_mpi_yield_when_idle=1
cd "$TMP" || exit 1
TRAIN="{format: idx, images: $D/train-images-idx3-ubyte.gz, labels: $D/train-labels-idx1-ubyte.gz, limit: 6000}"
TEST="{format: idx, images: $D/t10k-images-idx3-ubyte.gz, labels: $D/t10k-labels-idx1-ubyte.gz, limit: 2000}"
F=$SRC/examples/mlp-fmnist.yaml
# Long enough (1,500 steps, a few seconds) to be interrupted twice mid-run.
LONG=(--set train.epochs=40 --set train.steps=1500 --set train.deterministic=true
      --set train.log_every=1 --set "data.train=$TRAIN" --set "data.test=$TEST")
# submit SBATCH-ARGS... : job id on stdout.
submit() { sbatch --parsable "$@" | cut -d';' -f1; }
# The last step logged in a run directory (0 if none yet).
last_step() { tail -n 1 "$1/steps.jsonl" 2>/dev/null | grep -o '"step": [0-9]*' | grep -o '[0-9]*$' || echo 0; }
# Releases requeued job ID at once: Slurm holds a requeued job about two
# minutes (BeginTime) before it may start again. First wait until the job is
# PENDING and the node idle, then 2 s more: slurmd refuses to launch a job
# in the same second as it killed it ("Job N already killed, do not launch
# batch job": its credential revocation counts whole seconds), and a start
# while the node still cleans up the previous step can fail to launch.
release() {
  local id=$1
  for _ in $(seq 300); do
    [ "$(slurm_state "$id")" = PENDING ] && [ "$(sinfo -h -n localhost -o %T)" = idle ] && break
    sleep 0.2
  done
  sleep 2
  scontrol update JobId="$id" StartTime=now
}

# --- single node: the uninterrupted reference of the preemptible run below.
single=$(submit "$C/train-single-node.sbatch" "$F" "${LONG[@]}")
[ "$(slurm_wait "$single" 150)" = COMPLETED ] && ok || bad "single-node job $single: $(slurm_state "$single")"
out=$(cat ferry-train-"$single".out 2>&1)
grep -qE "2 ranks on 1 host .*transport shared memory" <<<"$out" && ok || bad "no layout line: $out"
grep -q "^finished: .*summary.json" <<<"$out" && ok || bad "single-node job did not finish: $out"
ref=$(param_hash "$FERRY_RUNS/ferry-train-$single")
[ -n "$ref" ] && ok || bad "single-node job wrote no summary.json: $out"
echo "single-node job $single: $(grep -m1 '^ferry ' <<<"$out" | cut -c1-150)... $ref"

# --- multi-node script on this one node, with both launchers.
for l in srun mpirun; do
  id=$(LAUNCHER=$l submit --nodes=1 --ntasks-per-node=2 "$C/train-multi-node.sbatch" "$F" \
    --set train.steps=30 --set "data.train=$TRAIN" --set "data.test=$TEST")
  [ "$(slurm_wait "$id" 120)" = COMPLETED ] && ok || bad "multi-node job ($l) $id: $(cat ferry-multi-"$id".out)"
  [ -e "$FERRY_RUNS/ferry-multi-$id/summary.json" ] && grep -q "launcher $l" ferry-multi-"$id".out && ok ||
    bad "multi-node job ($l) wrote no summary.json: $(cat ferry-multi-"$id".out)"
done

# --- job array: pre-train once, then one target domain per array task.
cat >"$TMP/tr.yaml" <<EOF
name: tr
seed: 0
data: {train: $TRAIN, test: $TEST, classes: [0, 1, 2, 3, 4]}
model: {preset: mlp}
train: {steps: 30, batch: 64}
transfer:
  targets: [{name: placeholder, data: {train: $TRAIN, test: $TEST, classes: [5, 6, 7, 8, 9]}}]
  strategies: [finetune]
  k: 20
  steps: 20
EOF
expect 0 "report:" -- "$FERRY" train "$TMP/tr.yaml" --out "$TMP/pre" --progress plain
cat >"$TMP/domains" <<EOF
# one target per array task
{name: plain, data: {train: $TRAIN, test: $TEST, classes: [5, 6, 7, 8, 9]}}
{name: rot90, data: {train: $TRAIN, test: $TEST, classes: [5, 6, 7, 8, 9], transforms: [{rotate: 90}]}}

{name: invert, data: {train: $TRAIN, test: $TEST, classes: [5, 6, 7, 8, 9], transforms: [invert]}}
EOF
arr=$(DOMAINS_FILE=$TMP/domains submit --array=0-2 --ntasks=1 "$C/transfer-array.sbatch" \
  "$TMP/tr.yaml" "$TMP/pre/pretrain/ckpt-30.ferry")
states=$(slurm_wait "$arr" 150)
[ "$(sort -u <<<"$states")" = COMPLETED ] && ok || bad "array $arr: $(echo $states)"
names=(plain rot90 invert)
for t in 0 1 2; do
  r=$FERRY_RUNS/ferry-transfer-$arr/task-$t/results.jsonl
  echo "array $arr task $t: $(cut -c1-110 "$r" 2>&1)"
  if [ "$(wc -l <"$r" 2>/dev/null)" = 1 ] && grep -q "\"target\": \"${names[$t]}\".*\"status\": \"ok\"" "$r"; then ok
  else bad "array task $t: want one ok result for ${names[$t]}: $(cat "$r" ferry-transfer-"$arr"_"$t".out 2>&1)"; fi
done

# --- preemptible: requeued, then warned, then finished; same bits as above.
pre=$(CKPT_EVERY=100 submit "$C/train-preemptible.sbatch" "$F" "${LONG[@]}")
run=$FERRY_RUNS/ferry-preempt-$pre
for _ in $(seq 600); do [ "$(last_step "$run")" -ge 150 ] && break; sleep 0.1; done
s1=$(last_step "$run")
scontrol requeue "$pre"
release "$pre"
# The second start resumes at the checkpoint taken on SIGTERM; once it has
# gone 150 steps further, the time-limit warning (USR1 to the batch shell).
for _ in $(seq 600); do [ "$(last_step "$run")" -ge $((s1 + 150)) ] && break; sleep 0.1; done
s2=$(last_step "$run")
scancel --batch --signal=USR1 "$pre"
release "$pre"
[ "$(slurm_wait "$pre" 150)" = COMPLETED ] && ok ||
  bad "preemptible job $pre: $(slurm_state "$pre"); slurmd log: $(tail -n 25 "$TMP/slurm/slurmd.log" 2>&1)"
out=$(cat ferry-preempt-"$pre".out 2>&1)
[ "$(grep -c '^=== start' <<<"$out")" = 3 ] && ok || bad "want 3 starts of job $pre: $out"
grep -q "checkpointed on SIGTERM (exit 3)" <<<"$out" && ok || bad "requeue: no checkpoint on SIGTERM: $out"
grep -q "checkpointed before the time limit (exit 3): requeueing" <<<"$out" && ok || bad "USR1: no self-requeue: $out"
[ "$(grep -c 'resume: .*ckpt-[0-9]*.ferry (step' <<<"$out")" = 2 ] && ok || bad "want 2 resumes from checkpoints: $out"
steps=$(grep -o 'stopped by a signal after step [0-9]*' <<<"$out" | grep -o '[0-9]*$' | tr '\n' ' ')
grep -E '^=== start|^resume:|^checkpointed|^finished' <<<"$out" | sed "s|$TMP/||g"
echo "preemptible job: $(param_hash "$run") (uninterrupted: $ref); stopped after steps ${steps:-none} (signals sent at logged steps $s1, $s2), 1500 in all"
[ "$(param_hash "$run")" = "$ref" ] && ok || bad "requeued run differs from the uninterrupted one: $(param_hash "$run") vs $ref: $out"
finish
