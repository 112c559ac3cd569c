# Checkpoint/restart: a run killed with SIGKILL after a checkpoint and resumed
# ends bitwise identical to the uninterrupted run (same N); in deterministic
# mode a checkpoint saved at 4 ranks resumes at 2 and at 1 with the same bits.
# SIGUSR1/SIGTERM: checkpoint at an agreed step, exit code 3; a second signal
# exits at once.
. "$(dirname "$0")/lib.bash"
F=$SRC/examples/mlp-fmnist.yaml
MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
S=(--progress plain --set train.epochs=3 --set checkpoint.every_steps=20
   --set "data.train={format: idx, images: $D/train-images-idx3-ubyte.gz, labels: $D/train-labels-idx1-ubyte.gz, limit: 6000}")

# Default mode, 2 ranks: kill rank 0 mid-epoch (step 55; last checkpoint 40).
expect 0 "test_acc" -- "${MPIRUN[@]}" -np 2 "$FERRY" train "$F" --out "$TMP/full2" "${S[@]}"
FERRY_FAULT=0:kill@55 "${MPIRUN[@]}" -np 2 -x FERRY_FAULT "$FERRY" train "$F" --out "$TMP/kill2" "${S[@]}" >/dev/null 2>&1
[ ! -e "$TMP/kill2/summary.json" ] && [ -e "$TMP/kill2/ckpt-40.ferry" ] && ok || bad "kill did not stop the run after ckpt 40"
expect 0 "resume: .*ckpt-4[02].ferry" -- "${MPIRUN[@]}" -np 2 "$FERRY" train "$F" --out "$TMP/kill2" "${S[@]}" --resume
same_params "$TMP/full2" "$TMP/kill2" "resumed run differs"

# Deterministic: save at 4 ranks, resume at 2 and at 1.
DS=("${S[@]}" --set train.deterministic=true)
expect 0 "test_acc" -- "${MPIRUN[@]}" -np 4 "$FERRY" train "$F" --out "$TMP/det4" "${DS[@]}"
FERRY_FAULT=0:kill@50 "${MPIRUN[@]}" -np 4 -x FERRY_FAULT "$FERRY" train "$F" --out "$TMP/dk" "${DS[@]}" >/dev/null 2>&1
cp -r "$TMP/dk" "$TMP/dk1"
expect 0 "saved on 4 ranks" -- "${MPIRUN[@]}" -np 2 "$FERRY" train "$F" --out "$TMP/dk" "${DS[@]}" --resume
expect 0 "saved on 4 ranks" -- "$FERRY" train "$F" --out "$TMP/dk1" "${DS[@]}" --resume
for r in dk dk1; do
  same_params "$TMP/det4" "$TMP/$r" "deterministic resume $r"
done

# A corrupt newest checkpoint is skipped and named; the previous one is used.
FERRY_FAULT=0:kill@65 "$FERRY" train "$F" --out "$TMP/corrupt" "${S[@]}" >/dev/null 2>&1
printf 'garbage' | dd of="$TMP/corrupt/ckpt-60.ferry" bs=1 seek=200 conv=notrunc 2>/dev/null
expect 0 "resume: .*ckpt-40.ferry" -- "$FERRY" train "$F" --out "$TMP/corrupt2" "${S[@]}" --set checkpoint.resume="$TMP/corrupt/ckpt-40.ferry"
expect 0 "ckpt-60.ferry.*(CRC|corrupt|checksum)" -- "$FERRY" train "$F" --out "$TMP/corrupt" "${S[@]}" --resume

# SIGUSR1 to mpirun (forwarded to every rank): checkpoint, exit code 3, resumable.
L=(--progress plain --set train.steps=2000 --set train.log_every=1)
"${MPIRUN[@]}" -np 2 "$FERRY" train "$F" --out "$TMP/sig" "${L[@]}" >"$TMP/sig.log" 2>&1 &
pid=$!
for _ in $(seq 100); do [ "$(wc -l < "$TMP/sig/steps.jsonl" 2>/dev/null || echo 0)" -ge 5 ] && break; sleep 0.1; done
kill -USR1 $pid
wait $pid; rc=$?
[ $rc -eq 3 ] && ok || bad "SIGUSR1: exit $rc, want 3: $(tail -3 "$TMP/sig.log")"
grep -q "stopped by a signal after step" "$TMP/sig.log" && ok || bad "no stop message"
ls "$TMP/sig"/ckpt-*.ferry >/dev/null 2>&1 && ok || bad "no checkpoint after SIGUSR1"
# Two SIGTERMs in a row: the second ends the process at once (128 + 15).
"$FERRY" train "$F" --out "$TMP/sig2" "${L[@]}" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 100); do [ "$(wc -l < "$TMP/sig2/steps.jsonl" 2>/dev/null || echo 0)" -ge 5 ] && break; sleep 0.1; done
kill -TERM $pid; kill -TERM $pid
wait $pid; rc=$?
[ $rc -eq 143 ] || [ $rc -eq 3 ] && ok || bad "double SIGTERM: exit $rc"
finish
