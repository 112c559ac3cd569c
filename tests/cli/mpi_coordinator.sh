# The coordinator's fan-out of transfer jobs to worker groups (issue 6).
# - N = 1, 2, 4 ranks with groups of 1 and 2: every job's result is recorded
#   exactly once, and (deterministic mode) each job ends with the same
#   parameters, bit for bit, whichever group ran it;
# - a broken target is reported failed while the other jobs succeed;
# - a job that fails at run time is retried at a lower learning rate;
# - a sweep killed halfway and rerun with --resume finishes only the missing
#   jobs; job names cannot escape the run directory.
. "$(dirname "$0")/lib.bash"
export OMPI_MCA_mpi_yield_when_idle=1 OPENBLAS_NUM_THREADS=1
tgt() {
  echo "{train: $(src train 3000), test: $(src t10k 600), classes: [5, 6, 7, 8, 9], val_frac: 0.1,
         transforms: [{normalize: {mean: 0.2860, std: 0.3530}}]}"
}
head_yaml() {
  cat <<YAML
name: coord
seed: 0
data:
  train: $(src train 3000)
  test: $(src t10k 600)
  classes: [0, 1, 2, 3, 4]
  transforms: [{normalize: {mean: 0.2860, std: 0.3530}}]
model: {preset: mlp}
train: {epochs: 1, batch: 64, deterministic: true, shards: 4, det_leaves: 4,
        optimizer: {name: sgd, lr: 0.05, momentum: 0.9}}
YAML
}
{
  head_yaml
  cat <<YAML
transfer:
  targets:
    - {name: t59, data: $(tgt)}
    - name: broken
      data: {train: {format: idx, images: $TMP/missing.gz, labels: $TMP/missing.gz}, test: $(src t10k 600),
             classes: [5, 6, 7, 8, 9]}
  strategies: [scratch, feature-extract, finetune, linear-probe]
  k: [20]
  seeds: [0, 1]
  steps: 40
  batch: 32
  shards: 4
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
YAML
} > "$TMP/exp.yaml"

run() { # NP GROUP_SIZE OUT [ferry train options...]
  local np=$1 g=$2 out=$3
  shift 3
  mpirun --allow-run-as-root --oversubscribe -np "$np" "$FERRY" train "$TMP/exp.yaml" --out "$TMP/$out" \
    --progress plain --set transfer.group_size="$g" "$@"
}
hashes() { # job -> param_hash of the successful jobs, sorted
  /usr/bin/python3 - "$1" <<'PY' | sort
import json, sys
for l in open(sys.argv[1]):
    j = json.loads(l)
    if j["status"] == "ok":
        print(j["job"], j["param_hash"])
PY
}
check_once() { # RUN_DIR: 16 jobs, each once; 8 ok, 8 failed (the broken target)
  local r=$TMP/$1/results.jsonl
  local n u
  n=$(wc -l < "$r")
  u=$(grep -o '"job": "[^"]*"' "$r" | sort -u | wc -l)
  [ "$n" = 16 ] && [ "$u" = 16 ] && ok || bad "$1: want 16 distinct results, found $n lines, $u jobs"
  [ "$(grep -c '"status": "ok"' "$r")" = 8 ] && ok || bad "$1: want 8 successful jobs"
  [ "$(grep -c '"status": "failed"' "$r")" = 8 ] && ok || bad "$1: want 8 failed jobs"
  grep '"broken' "$r" | grep -q 'missing.gz' && ok || bad "$1: the failure reason does not name the file"
}

expect 0 "1 worker group of 1 rank" -- run 1 1 n1g1
check_once n1g1
hashes "$TMP/n1g1/results.jsonl" > "$TMP/ref"
[ "$(wc -l < "$TMP/ref")" = 8 ] && ok || bad "no reference hashes"
for cfg in "2 1 n2g1" "4 1 n4g1" "4 2 n4g2" "2 2 n2g2"; do
  set -- $cfg
  expect 0 "report: " -- run "$1" "$2" "$3"
  check_once "$3"
  hashes "$TMP/$3/results.jsonl" > "$TMP/h"
  diff "$TMP/ref" "$TMP/h" > /dev/null && ok || bad "$3: job results differ from 1 rank: $(diff "$TMP/ref" "$TMP/h")"
done
# The jobs really were spread: at N = 4, g = 1, more than one group ran jobs.
[ "$(grep -o '"group": [0-9]*' "$TMP/n4g1/results.jsonl" | sort -u | wc -l)" -gt 1 ] && ok ||
  bad "at 4 ranks in groups of 1, only one group ran jobs"
grep -q '"ranks": 2' "$TMP/n4g2/results.jsonl" && ok || bad "groups of 2 did not run jobs on 2 ranks"
grep -q '"lambda"' "$TMP/n2g1/results.jsonl" && ok || bad "linear-probe did not record its lambda"
# Each result names its job's final checkpoint, written by the group that ran it.
ck=$(grep -o '"checkpoint": "[^"]*"' "$TMP/n4g2/results.jsonl" | cut -d'"' -f4)
[ "$(echo "$ck" | wc -w)" = 8 ] && ok || bad "want 8 checkpoint paths, found: $ck"
for f in $ck; do [ -s "$f" ] || bad "missing checkpoint $f"; done
expect 0 "verified" -- "$FERRY" ckpt verify $(echo "$ck" | head -1)

# Retries: a NaN injected at step 20 of every job (the fault names group rank
# 0; the pre-training is shorter). Jobs that fail at run time go back into the
# queue at half the learning rate, twice here, and are recorded once, with
# their last attempt; bad input (the broken target) is never retried.
expect 0 "retrying at a lower learning rate" -- env FERRY_FAULT=0:nan@20 mpirun --allow-run-as-root \
  --oversubscribe -np 2 "$FERRY" train "$TMP/exp.yaml" --out "$TMP/retry" --progress plain \
  --set train.steps=15 --set transfer.retries=2
r=$TMP/retry/results.jsonl
[ "$(wc -l < "$r")" = 16 ] && ok || bad "retry run: want 16 results, found $(wc -l < "$r")"
grep '"t59.scratch.k20.s0"' "$r" | grep -q '"lr": 0.0025, "attempt": 2' && ok ||
  bad "scratch job: want its third attempt at lr 0.0025: $(grep t59.scratch.k20.s0 "$r")"
grep '"t59.linear-probe.k20.s0"' "$r" | grep -q '"status": "ok"' && ok || bad "the probe (no steps) should succeed"
[ "$(grep '"broken' "$r" | grep -c '"attempt": 0')" = 8 ] && ok || bad "bad input was retried"

# A sweep killed halfway, then rerun: only the missing jobs run.
{
  head_yaml
  cat <<YAML
transfer:
  targets: [{name: t59, data: $(tgt)}]
  strategies: [scratch, finetune, feature-extract]
  k: [20]
  seeds: [0, 1, 2]
  steps: 600
  batch: 32
  shards: 4
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
YAML
} > "$TMP/kill.yaml"
K=$TMP/kill
mpirun --allow-run-as-root --oversubscribe -np 2 "$FERRY" train "$TMP/kill.yaml" --out "$K" \
  --progress plain > "$TMP/kill.log" 2>&1 &
mp=$!
for _ in $(seq 1 1200); do
  [ "$(cat "$K/results.jsonl" 2>/dev/null | wc -l)" -ge 3 ] && break
  sleep 0.1
done
pkill -KILL -f "ferry train $TMP/kill.yaml" || true
wait $mp 2>/dev/null || true
done1=$(wc -l < "$K/results.jsonl")
[ "$done1" -ge 3 ] && [ "$done1" -lt 9 ] && ok || bad "killed sweep: want 3..8 results before the kill, found $done1"
expect 0 "$done1 jobs already finished" -- mpirun --allow-run-as-root --oversubscribe -np 2 "$FERRY" \
  train "$TMP/kill.yaml" --out "$K" --progress plain --resume
n=$(wc -l < "$K/results.jsonl")
u=$(grep -o '"job": "[^"]*"' "$K/results.jsonl" | sort -u | wc -l)
[ "$n" = 9 ] && [ "$u" = 9 ] && ok || bad "after the rerun: want 9 distinct results, found $n lines, $u jobs"

# Groups larger than a job's shard count: a clear error before pre-training.
expect 2 "set transfer.group_size <= 2" -- run 4 4 toobig --set transfer.shards=2
[ ! -e "$TMP/toobig/pretrain/summary.json" ] && ok || bad "pre-trained before rejecting the group size"

# Job names cannot escape the run directory.
sed 's/name: t59/name: ..\/..\/evil/' "$TMP/exp.yaml" > "$TMP/evil.yaml"
expect 2 "evil" -- "$FERRY" train "$TMP/evil.yaml" --out "$TMP/evil"
[ ! -e "$TMP/../evil" ] && ok || bad "a job directory escaped the run directory"
finish
