#!/usr/bin/env bash
# Peak resident memory of one rank that runs transfer jobs one after another:
# a rank that runs J jobs should need about what a rank that runs one needs.
# One process (no mpirun), the example's target and CNN, scratch jobs at
# K = 10 of S steps each, for each J in --jobs. Prints one JSON object per J
# and a summary: the largest peak over the J, and its excess over the first.
# Usage: bash bench/job_memory.sh [--jobs "1 12 36"] [--steps S] [--ferry PATH]
set -euo pipefail
cd "$(dirname "$0")/.."
jobs="1 12 36" steps=20 ferry=build/ferry
while [ $# -gt 0 ]; do
  case $1 in
    --jobs) jobs=$2; shift 2 ;;
    --steps) steps=$2; shift 2 ;;
    --ferry) ferry=$2; shift 2 ;;
    *) echo "usage: $0 [--jobs \"1 12 36\"] [--steps S] [--ferry PATH]" >&2; exit 2 ;;
  esac
done
export OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
tmp=$(mktemp -d /tmp/ferry-jobmem.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# A pre-trained model to start the jobs from (20 steps: its quality does not matter).
"$ferry" train examples/transfer-fmnist.yaml --out "$tmp/pre" --progress plain \
  --set train.steps=20 --set "transfer.strategies=[scratch]" --set transfer.steps=1 \
  --set "transfer.k=[10]" --set "transfer.seeds=[0]" > "$tmp/pre.log" 2>&1 ||
  { echo "job_memory.sh: the pre-training failed:" >&2; tail -5 "$tmp/pre.log" >&2; exit 1; }
pre=$(ls "$tmp"/pre/pretrain/ckpt-*.ferry | tail -1)
first= max=0
for j in $jobs; do
  seeds=$(seq -s, 0 $((j - 1)))
  rm -rf "$tmp/run"
  /usr/bin/time -f "%M %e" -o "$tmp/time" "$ferry" train examples/transfer-fmnist.yaml --out "$tmp/run" \
    --progress plain --set "checkpoint.resume=$pre" --set train.steps=20 --set "transfer.strategies=[scratch]" \
    --set "transfer.k=[10]" --set "transfer.seeds=[$seeds]" --set "transfer.steps=$steps" \
    > "$tmp/run.log" 2>&1 ||
    { echo "job_memory.sh: $j jobs failed:" >&2; tail -5 "$tmp/run.log" >&2; exit 1; }
  read -r kb wall < "$tmp/time"
  mb=$(awk -v k="$kb" 'BEGIN { printf "%.1f", k / 1024 }')
  echo "{\"jobs\": $j, \"steps\": $steps, \"peak_rss_mb\": $mb, \"wall_s\": $wall}"
  [ -z "$first" ] && first=$mb
  max=$(awk -v a="$max" -v b="$mb" 'BEGIN { print (b > a ? b : a) }')
done
awk -v a="$first" -v m="$max" \
  'BEGIN { printf "{\"summary\": {\"first_peak_rss_mb\": %s, \"max_peak_rss_mb\": %s, \"excess_mb\": %.1f}}\n", a, m, m - a }'
