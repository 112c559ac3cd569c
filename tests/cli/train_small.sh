# A short real training run as a user would start it: 1 rank, then 2 ranks
# under mpirun; checks the files it writes and that it learned something.
. "$(dirname "$0")/lib.bash"
F=$SRC/examples/mlp-fmnist.yaml
common=(--set "data.train={format: idx, images: $D/train-images-idx3-ubyte.gz, labels: $D/train-labels-idx1-ubyte.gz, limit: 6000}"
        --set "data.test={format: idx, images: $D/t10k-images-idx3-ubyte.gz, labels: $D/t10k-labels-idx1-ubyte.gz, limit: 2000}"
        --set train.epochs=2 --progress plain)
expect 0 "test_acc" -- "$FERRY" train "$F" --out "$TMP/r1" "${common[@]}"
py=/usr/bin/python3
check_run() {
  "$py" - "$1" "$2" <<'PY'
import json, sys
d, world = sys.argv[1], int(sys.argv[2])
rows = [json.loads(l) for l in open(d + "/metrics.jsonl")]
assert len(rows) == 2, rows
for r in rows:
    for k in ("epoch", "train_loss", "val_acc", "samples_per_s"):
        assert k in r and r[k] is not None, (k, r)
assert rows[1]["train_loss"] < rows[0]["train_loss"], rows
s = json.load(open(d + "/summary.json"))
for k in ("test_acc", "train_samples_per_s", "wall_s", "param_hash", "world_size"):
    assert k in s, k
assert s["world_size"] == world, s
assert s["test_acc"] > 0.70, s["test_acc"]
print("ok", s["test_acc"])
PY
}
check_run "$TMP/r1" 1 && ok || bad "1-rank run files"
if command -v mpirun >/dev/null; then
  expect 0 "2 ranks" -- mpirun --allow-run-as-root --oversubscribe -np 2 "$FERRY" train "$F" --out "$TMP/r2" "${common[@]}"
  check_run "$TMP/r2" 2 && ok || bad "2-rank run files"
fi
# Same seed, same result: two 1-rank runs agree bit for bit.
expect 0 "test_acc" -- "$FERRY" train "$F" --out "$TMP/r1b" "${common[@]}"
same_params "$TMP/r1" "$TMP/r1b" "same seed, two runs"
finish
