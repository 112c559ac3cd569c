# Each rank reads only its rows (docs/experiment-format.md, "What a rank
# holds"): runs at 1, 2 and 4 ranks of a CSV data set (gzip, header, class
# subset, row limit, validation split) and of Fashion-MNIST (IDX, class
# subset) end on the same parameters in deterministic mode, and record the
# same provenance digests, which are computed from the streamed rows of the
# whole selection, not from one rank's share. (A file that changes between
# the label pass and the sample pass: tests/unit/test_data.c.)
. "$(dirname "$0")/lib.bash"
MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
/usr/bin/python3 - "$TMP" <<'PY' || bad "could not write the CSV files"
import gzip, random, sys
d = sys.argv[1]
rng = random.Random(7)
def write(path, n, opener):
    with opener(path, "wt") as f:
        f.write("label," + ",".join(f"x{j}" for j in range(12)) + "\n")
        for i in range(n):
            y = i % 4
            xs = [rng.gauss(1.5 * y if j % 4 == y else 0.0, 1.0) for j in range(12)]
            f.write(f"{y}," + ",".join(f"{x:.4f}" for x in xs) + ("\r\n" if i % 9 == 0 else "\n"))
write(f"{d}/train.csv.gz", 1500, gzip.open)
write(f"{d}/test.csv", 400, open)
PY
cat > "$TMP/csv.yaml" <<EOF
name: csv-views
seed: 3
data:
  name: gauss4
  train: {format: csv, path: $TMP/train.csv.gz, limit: 1400}
  test: {format: csv, path: $TMP/test.csv}
  classes: [3, 1, 2]
  val_frac: 0.1
model:
  trunk: [{dense: 32}, relu]
  heads: {main: [{dense: 3}]}
train:
  epochs: 10
  steps: 30
  batch: 64
  shards: 8
  deterministic: true
  optimizer: {name: sgd, lr: 0.05, momentum: 0.9}
checkpoint: {every_steps: 30}
EOF
digests() { "$FERRY" ckpt inspect "$1"/ckpt-"$2".ferry | grep '^dataset '; }
for np in 1 2 4; do
  expect 0 "test_acc" -- "${MPIRUN[@]}" -np $np "$FERRY" train "$TMP/csv.yaml" --out "$TMP/csv$np" \
    --progress plain
done
for np in 2 4; do
  same_params "$TMP/csv1" "$TMP/csv$np" "CSV, 1 vs $np ranks"
  [ -n "$(digests "$TMP/csv1" 30)" ] && [ "$(digests "$TMP/csv1" 30)" = "$(digests "$TMP/csv$np" 30)" ] &&
    ok || bad "CSV provenance digests differ at $np ranks: $(digests "$TMP/csv$np" 30)"
done
# The digest covers the data: another row limit gives another digest.
expect 0 "test_acc" -- "$FERRY" train "$TMP/csv.yaml" --out "$TMP/csv-lim" --progress plain \
  --set data.train.limit=1300
[ "$(digests "$TMP/csv1" 30 | head -1)" != "$(digests "$TMP/csv-lim" 30 | head -1)" ] && ok ||
  bad "the training digest did not change with the data"
[ "$(digests "$TMP/csv1" 30 | tail -1)" = "$(digests "$TMP/csv-lim" 30 | tail -1)" ] && ok ||
  bad "the test digest changed although the test data did not"

F=$SRC/examples/mlp-fmnist.yaml
opts=(--progress plain --set train.steps=10 --set train.deterministic=true --set "data.classes=[7,2,9]"
  --set checkpoint.every_steps=10)
for np in 1 4; do
  expect 0 "test_acc" -- "${MPIRUN[@]}" -np $np "$FERRY" train "$F" --out "$TMP/idx$np" "${opts[@]}"
done
same_params "$TMP/idx1" "$TMP/idx4" "Fashion-MNIST, 1 vs 4 ranks"
[ -n "$(digests "$TMP/idx1" 10)" ] && [ "$(digests "$TMP/idx1" 10)" = "$(digests "$TMP/idx4" 10)" ] && ok ||
  bad "IDX provenance digests differ at 4 ranks: $(digests "$TMP/idx4" 10) vs $(digests "$TMP/idx1" 10)"
echo " digests: $(digests "$TMP/csv1" 30 | tr '\n' ' ')"
finish
