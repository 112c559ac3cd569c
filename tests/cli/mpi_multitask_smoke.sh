# Multi-task training in a few steps, small enough to run under ASan
# (tests/run-all.sh; cli.mpi_multitask trains too long there): the example's
# class, coarse and rotation heads with learned uncertainty weights, and a
# task with its own dataset, at 1 and 2 ranks in deterministic mode (bitwise
# equal parameters), then resumed from a checkpoint.
. "$(dirname "$0")/lib.bash"
F=$SRC/examples/multitask-fmnist.yaml
MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
S=(--progress plain --set train.steps=6 --set train.batch=32 --set train.shards=4
   --set train.deterministic=true --set train.task_weighting=uncertainty
   --set checkpoint.every_epoch=false --set checkpoint.every_steps=3
   --set "data.train=$(src train 1200)" --set "data.test=$(src t10k 200)")
for np in 1 2; do
  expect 0 "task rotation" -- "${MPIRUN[@]}" -np $np "$FERRY" train "$F" --out "$TMP/m$np" "${S[@]}"
done
same_params "$TMP/m1" "$TMP/m2" "multi-task at 1 and 2 ranks"
# Resumed at 2 ranks from the 1-rank run's step-3 checkpoint: the same end.
cp "$TMP/m1/ckpt-3.ferry" "$TMP/r3.ferry"
expect 0 "resume: " -- "${MPIRUN[@]}" -np 2 "$FERRY" train "$F" --out "$TMP/r" "${S[@]}" \
  --set "checkpoint.resume=$TMP/r3.ferry"
same_params "$TMP/r" "$TMP/m1" "multi-task resumed at 2 ranks"
# A second task with its own data (classes 5-9) next to the main one (0-4).
OWN=("${S[@]}" --set data.classes=[0,1,2,3,4]
     --set "tasks=[{name: a, labels: class}, {name: b, labels: class, weight: 0.5, data: {train: $(src train 600),
            test: $(src t10k 200), classes: [5, 6, 7, 8, 9], transforms: [{normalize: {mean: 0.2860, std: 0.3530}}]}}]")
expect 0 "task b " -- "${MPIRUN[@]}" -np 2 "$FERRY" train "$F" --out "$TMP/own" "${OWN[@]}"
finish
