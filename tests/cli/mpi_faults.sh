# One rank fails; the whole job ends within 10 s with a non-zero code and a
# message naming the rank and the cause, and no rank waits in a collective.
# Faults are injected with FERRY_FAULT=RANK:KIND[@STEP] (test-only hook).
. "$(dirname "$0")/lib.bash"
F=$SRC/examples/mlp-fmnist.yaml
# run FAULT NP [ARGS]: the job under a 10 s limit (timeout exits 124 on a hang).
run() { FERRY_FAULT=$1 timeout 10 mpirun --allow-run-as-root --oversubscribe -np "$2" \
          -x FERRY_FAULT "$FERRY" train "$F" --out "$TMP/out" --progress plain \
          --set train.steps=60 --set train.check_every=5 "${@:3}"; }
expect 2 "\[rank 1\].*ferry-fault-injected.*cannot open" -- run 1:data 2
expect 1 "\[rank 2\].*out of memory" -- run 2:alloc 4
expect 1 "rank 1: the loss is not finite at step 7" -- run 1:nan@7 2
expect 1 "rank 3: the loss is not finite at step 3" -- run 3:nan@3 4 --set train.deterministic=true
expect 1 "differ across ranks after step 10" -- run 1:diverge@10 2
[ ! -e "$TMP/out/summary.json" ] && ok || bad "a failed run left summary.json"
# nan: skip drops that step on every rank and finishes.
expect 0 "test_acc" -- run 1:nan@7 2 --set train.nan=skip
grep -q '"skipped_steps": 1' "$TMP/out/summary.json" && ok || bad "skipped step not recorded"
finish
