#!/usr/bin/env bash
# ferry against PyTorch on the transfer protocol of examples/transfer-fmnist.yaml
# (issue 5's acceptance), side by side in one run:
#   1. ferry runs the pipeline (pre-training, then scratch / feature-extract /
#      finetune for K = 10, 50, 200 and the seeds) with mpirun;
#   2. bench/torch_transfer.py runs the same protocol on the SAME K-shot images
#      (it reads the draws ferry's jobs recorded in jobs/<id>/train_ids.txt);
#   3. bench/transfer_compare.py prints one JSON document: per strategy and K
#      both programs' mean +- std over seeds, the difference, whether it is
#      within 1.5 points, and finetune - scratch at K = 10 for both.
# --per-seed pre-trains once per seed in both programs (ferry's
# transfer.pretrain_per_seed, the peer's --pretrain-per-seed); without it both
# pre-train once with seed 0, as the example file does.
# Usage: bash bench/transfer_compare.sh [--seeds 0,1,2] [--per-seed] [--np 2]
#                                       [--out DIR] [--ferry PATH] [--torch-procs P]
#                                       [--ks 10,50,200] [--strategies scratch,feature-extract,finetune]
#                                       [--warmup N] [--reinit-last K]
# --ferry-pretrained: PyTorch does not pre-train but starts from ferry's
# pre-trained model(s) (read with `ferry ckpt export`), so only the transfer
# stage is compared; its pre-training accuracy line is then PyTorch's
# evaluation of ferry's model.
# --warmup N pre-trains both programs with a linear learning-rate warm-up over
# the first N steps (ferry's train.schedule.warmup_steps, the peer's
# --pretrain-warmup); the default 100 is the example file's, 0 the issue's
# constant rate.
# --reinit-last K: finetune re-initialises the trunk's last K blocks in both
# programs (ferry's transfer.finetune.reinit_last, the peer's
# --ft-reinit-last); default: the example file's value.
# --torch-procs P splits the seeds over P PyTorch processes of 1 thread each
# (only with --per-seed: otherwise each process would pre-train the shared
# model again).
# Time: ferry about 1 min per seed on 2 ranks; the peer (1 thread) about
# 4-6 min per seed. The JSON goes to stdout and DIR/compare.json.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=0,1,2 per_seed=0 np=2 out= ferry=build/ferry procs=1 shared=0 ks=10,50,200 warmup=100
reinit=$(sed -n 's/^ *finetune:.*reinit_last: *\([0-9]*\).*/\1/p' examples/transfer-fmnist.yaml)
reinit=${reinit:-0}
strategies=scratch,feature-extract,finetune
while [ $# -gt 0 ]; do
  case $1 in
    --seeds) seeds=$2; shift 2 ;;
    --per-seed) per_seed=1; shift ;;
    --np) np=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --ferry) ferry=$2; shift 2 ;;
    --torch-procs) procs=$2; shift 2 ;;
    --ferry-pretrained) shared=1; shift ;;
    --ks) ks=$2; shift 2 ;;
    --strategies) strategies=$2; shift 2 ;;
    --warmup) warmup=$2; shift 2 ;;
    --reinit-last) reinit=$2; shift 2 ;;
    *) echo "usage: $0 [--seeds 0,1,2] [--per-seed] [--ferry-pretrained] [--np 2] [--out DIR] [--ferry PATH] [--torch-procs P] [--ks 10,50,200] [--strategies LIST] [--warmup N] [--reinit-last K]" >&2; exit 2 ;;
  esac
done
[[ $seeds =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "$0: --seeds wants a list like 0,1,2" >&2; exit 2; }
[[ $ks =~ ^[0-9]+(,[0-9]+)*$ ]] || { echo "$0: --ks wants a list like 10,50,200" >&2; exit 2; }
[[ $warmup =~ ^[0-9]+$ ]] || { echo "$0: --warmup wants a step count" >&2; exit 2; }
[[ $reinit =~ ^[0-9]+$ ]] || { echo "$0: --reinit-last wants a block count" >&2; exit 2; }
[[ $strategies =~ ^[a-z-]+(,[a-z-]+)*$ ]] || { echo "$0: --strategies wants a list like scratch,finetune" >&2; exit 2; }
[ -x "$ferry" ] || { echo "$0: $ferry is not built (cmake --build build)" >&2; exit 2; }
out=${out:-$(mktemp -d /tmp/ferry-compare.XXXXXX)}
mkdir -p "$out"
export OMPI_MCA_mpi_yield_when_idle=1 OPENBLAS_NUM_THREADS=1 OMP_NUM_THREADS=1
pflag=()
[ "$per_seed" = 1 ] && pflag=(--pretrain-per-seed)
[ "$shared" = 1 ] && pflag+=(--pretrained-from "$out/ferry" --ferry "$ferry")
echo "transfer_compare: ferry on $np ranks -> $out/ferry" >&2
t0=$SECONDS
mpirun --allow-run-as-root --oversubscribe -np "$np" "$ferry" train examples/transfer-fmnist.yaml \
  --out "$out/ferry" --progress plain --set "transfer.seeds=[$seeds]" \
  --set "transfer.k=[$ks]" --set "transfer.strategies=[$strategies]" \
  --set "transfer.pretrain_per_seed=$([ "$per_seed" = 1 ] && echo true || echo false)" \
  --set "train.schedule.warmup_steps=$warmup" --set "transfer.finetune.reinit_last=$reinit" \
  > "$out/ferry.log" 2>&1 || { tail -n 20 "$out/ferry.log" >&2; exit 1; }
t1=$SECONDS
echo "transfer_compare: PyTorch (1 thread x $procs) on ferry's K-shot draws -> $out/torch*.json" >&2
[ "$procs" -gt 1 ] && [ "$per_seed" != 1 ] && [ "$shared" != 1 ] &&
  { echo "$0: --torch-procs > 1 needs --per-seed or --ferry-pretrained" >&2; exit 2; }
IFS=, read -ra all <<< "$seeds"
pids=() jsons=()
for ((p = 0; p < procs; p++)); do
  part=()
  for ((i = p; i < ${#all[@]}; i += procs)); do part+=("${all[i]}"); done
  [ ${#part[@]} -eq 0 ] && continue
  list=$(IFS=,; echo "${part[*]}")
  /usr/bin/python3 bench/torch_transfer.py --threads 1 --seeds "$list" --ks "$ks" \
    --strategies "$strategies" --pretrain-warmup "$warmup" --ft-reinit-last "$reinit" "${pflag[@]}" \
    --subsets-from "$out/ferry" --json-out "$out/torch$p.json" > "$out/torch$p.log" 2>&1 &
  pids+=($!) jsons+=("$out/torch$p.json")
done
for ((p = 0; p < ${#pids[@]}; p++)); do
  wait "${pids[p]}" || { tail -n 20 "$out/torch$p.log" >&2; exit 1; }
done
t2=$SECONDS
/usr/bin/python3 bench/transfer_compare.py "$out/ferry" "${jsons[@]}" \
  --ferry-s $((t1 - t0)) --torch-s $((t2 - t1)) | tee "$out/compare.json"
