# Data-parallel equivalence: the global loss after each of 50 steps at 2 and
# 4 ranks equals 1 rank within 1e-4 relative (default mode), and the final
# parameters are bitwise identical at 1, 2 and 4 ranks (deterministic mode).
# An uneven split (global batch 100 on 3 ranks) trains.
. "$(dirname "$0")/lib.bash"
F=$SRC/examples/mlp-fmnist.yaml
MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
opts=(--progress plain --set train.steps=50 --set train.log_every=1 --set train.check_every=10)
for np in 1 2 4; do
  expect 0 "test_acc" -- "${MPIRUN[@]}" -np $np "$FERRY" train "$F" --out "$TMP/def$np" "${opts[@]}"
  expect 0 "test_acc" -- "${MPIRUN[@]}" -np $np "$FERRY" train "$F" --out "$TMP/det$np" "${opts[@]}" \
    --set train.deterministic=true
done
/usr/bin/python3 - "$TMP" <<'PY' && ok || bad "per-step losses differ across rank counts"
import json, sys
d = sys.argv[1]
def losses(run):
    return [json.loads(l)["loss"] for l in open(f"{d}/{run}/steps.jsonl")]
ref = losses("def1")
assert len(ref) == 50, len(ref)
for np in (2, 4):
    got = losses(f"def{np}")
    assert len(got) == 50
    worst = max(abs(a - b) / abs(a) for a, b in zip(ref, got))
    print(f"default np{np}: worst relative loss difference over 50 steps {worst:.2e}")
    assert worst <= 1e-4, worst
PY
h1=$(param_hash "$TMP/det1")
for np in 2 4; do same_params "$TMP/det1" "$TMP/det$np" "deterministic np1 vs np$np"; done
echo "deterministic param hash at np 1, 2, 4: $h1"
# The deterministic test can fail: default mode at 2 ranks sums in another order.
hd=$(param_hash "$TMP/def2")
[ "$hd" != "$h1" ] && ok || bad "default np2 matched deterministic bits: the comparison proves nothing"
# Uneven: global batch 100 over 3 ranks; deterministic needs a power of two.
expect 0 "test_acc" -- "${MPIRUN[@]}" -np 3 "$FERRY" train "$F" --out "$TMP/odd3" "${opts[@]}" --set train.batch=100
/usr/bin/python3 -c "
import json; r=[json.loads(l)['loss'] for l in open('$TMP/odd3/steps.jsonl')]
s=json.load(open('$TMP/odd3/summary.json'))
assert s['world_size']==3 and r[-1] < r[0] and s['test_acc'] > 0.6, (r[0], r[-1], s['test_acc'])" && ok || bad "uneven 3-rank run did not train"
expect 2 "power of two" -- "${MPIRUN[@]}" -np 3 "$FERRY" train "$F" --out "$TMP/odd3d" "${opts[@]}" --set train.deterministic=true
expect 2 "train.shards" -- "${MPIRUN[@]}" -np 4 "$FERRY" train "$F" --out "$TMP/few" "${opts[@]}" --set train.shards=2
finish
