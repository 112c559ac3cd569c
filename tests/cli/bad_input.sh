# Bad experiment files and bad data files: one clear message, exit 2, and no
# summary.json (a failed run never looks finished).
. "$(dirname "$0")/lib.bash"
F=$SRC/examples/mlp-fmnist.yaml
run() { "$FERRY" train "$@" --out "$TMP/out" --progress plain; }

expect 2 "nope.yaml" -- run "$TMP/nope.yaml"
printf 'name: x\ndata: [unclosed\n' > "$TMP/malformed.yaml"
expect 2 "malformed.yaml:[0-9]+" -- run "$TMP/malformed.yaml"
sed 's/^train:/trian:/' "$F" > "$TMP/unknown_key.yaml"
expect 2 "unknown_key.yaml:[0-9]+.*trian.*train" -- run "$TMP/unknown_key.yaml"
expect 2 "train.batch" -- run "$F" --set train.batch=abc
expect 2 "train.optimizer.lr" -- run "$F" --set train.optimizer.lr=-1
expect 2 "convv" -- run "$F" --set 'model={trunk: [convv, relu], heads: {main: [{dense: 10}]}}'
# Shapes that do not chain: dense straight on an image.
expect 2 "dense1.*flat|flatten" -- run "$F" --set 'model={trunk: [{dense: 32}], heads: {main: [{dense: 10}]}}'
# Head narrower than the number of classes.
expect 2 "classes" -- run "$F" --set 'model={trunk: [flatten], heads: {main: [{dense: 3}]}}'

# Data files.
expect 2 "missing-images" -- run "$F" --set "data.train={format: idx, images: $TMP/missing-images.gz, labels: $D/train-labels-idx1-ubyte.gz}"
printf '\x00\x00\x08\x99\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00\x02abcd' | gzip > "$TMP/badmagic.gz"
expect 2 "badmagic.gz.*magic" -- run "$F" --set "data.train={format: idx, images: $TMP/badmagic.gz, labels: $D/train-labels-idx1-ubyte.gz}"
head -c 200000 "$D/t10k-images-idx3-ubyte.gz" > "$TMP/trunc.gz"
expect 2 "trunc.gz" -- run "$F" --set "data.test={format: idx, images: $TMP/trunc.gz, labels: $D/t10k-labels-idx1-ubyte.gz}"
# Dimensions that disagree: 10000 test images with 60000 training labels.
expect 2 "labels|images" -- run "$F" --set "data.test={format: idx, images: $D/t10k-images-idx3-ubyte.gz, labels: $D/train-labels-idx1-ubyte.gz}"
printf 'label,a,b\n1,0.5,0.25\n0,0.1\n' > "$TMP/ragged.csv"
expect 2 "ragged.csv.*line 3" -- run "$F" --set "data.train={format: csv, path: $TMP/ragged.csv}"
# An unwritable run directory is a runtime error.
expect 1 "cannot" -- "$FERRY" train "$F" --out /proc/ferry-cannot-write --progress plain
[ ! -e "$TMP/out/summary.json" ] && ok || bad "a failed run left summary.json"
finish
