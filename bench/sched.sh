#!/usr/bin/env bash
# Coordinator fan-out makespan (issue 6): 8 equal transfer jobs on 2 worker
# groups of 1 rank each. The target is makespan <= 1.15 x (sum of job times / 2),
# where a job's time is its whole run on its group (data, set-up, training,
# test: "job_s" in results.jsonl) and the makespan is the transfer stage's wall
# time as the coordinator prints it. Prints one JSON object per repetition and
# a summary with the median ratio.
# Usage: bash bench/sched.sh [--reps N] [--steps S] [--ferry PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
reps=3 steps=300 ferry=build/ferry
while [ $# -gt 0 ]; do
  case $1 in
    --reps) reps=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --ferry) ferry=$2; shift 2 ;;
    *) echo "usage: $0 [--reps N] [--steps S] [--ferry PATH]" >&2; exit 2 ;;
  esac
done
export OMPI_MCA_mpi_yield_when_idle=1 OPENBLAS_NUM_THREADS=1
D=/usr/share/datasets/fashion-mnist
tmp=$(mktemp -d /tmp/ferry-sched.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
src() { echo "{format: idx, images: $D/$1-images-idx3-ubyte.gz, labels: $D/$1-labels-idx1-ubyte.gz}"; }
cat > "$tmp/exp.yaml" <<YAML
name: sched-bench
seed: 0
data:
  train: $(src train)
  test: $(src t10k)
  classes: [0, 1, 2, 3, 4]
  transforms: [{normalize: {mean: 0.2860, std: 0.3530}}]
model: {preset: cnn}
train: {steps: 20, batch: 128, optimizer: {name: sgd, lr: 0.05, momentum: 0.9}}
transfer:
  targets:
    - name: fmnist-5to9
      data: {train: $(src train), test: $(src t10k), classes: [5, 6, 7, 8, 9], val_frac: 0.05,
             transforms: [{normalize: {mean: 0.2860, std: 0.3530}}]}
  strategies: [finetune]
  k: [50]
  seeds: [0, 1, 2, 3, 4, 5, 6, 7]
  steps: $steps
  batch: 32
  group_size: 1
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
YAML
ratios=()
for r in $(seq 1 "$reps"); do
  out=$tmp/run$r
  mpirun --allow-run-as-root --oversubscribe -np 2 "$ferry" train "$tmp/exp.yaml" --out "$out" \
    --progress plain > "$tmp/log$r" 2>&1
  ratio=$(/usr/bin/python3 - "$out/results.jsonl" "$tmp/log$r" "$r" <<'PY'
import json, re, sys
jobs = [json.loads(l) for l in open(sys.argv[1])]
log = open(sys.argv[2]).read()
m = re.search(r"transfer: (\d+) jobs run, (\d+) failed, ([0-9.]+)s", log)
makespan = float(m.group(3))
total = sum(j["job_s"] for j in jobs)
groups = sorted({j["group"] for j in jobs})
per_group = {g: sum(j["job_s"] for j in jobs if j["group"] == g) for g in groups}
ratio = makespan / (total / 2)
print(json.dumps({"rep": int(sys.argv[3]), "jobs": len(jobs), "failed": int(m.group(2)),
                  "makespan_s": makespan, "sum_job_s": round(total, 3),
                  "job_s_per_group": {str(g): round(v, 3) for g, v in per_group.items()},
                  "ratio": round(ratio, 4)}), file=sys.stderr)
print(ratio)
PY
)
  ratios+=("$ratio")
done
/usr/bin/python3 - "${ratios[@]}" <<'PY'
import json, statistics, sys
r = [float(x) for x in sys.argv[1:]]
print(json.dumps({"bench": "sched_makespan", "groups": 2, "group_size": 1, "jobs": 8,
                  "ratios": [round(x, 4) for x in r], "median_ratio": round(statistics.median(r), 4),
                  "target": 1.15}))
PY
