# The examples reach the accuracy the README promises (MLP 5 epochs >= 0.87,
# CNN 2 epochs >= 0.88). Slow-ish (about a minute); accuracy is checked, not time.
. "$(dirname "$0")/lib.bash"
for m in mlp:0.87 cnn:0.88; do
  name=${m%%:*}; want=${m##*:}
  expect 0 "test_acc" -- "$FERRY" train "$SRC/examples/$name-fmnist.yaml" --out "$TMP/$name" --progress plain
  acc=$(/usr/bin/python3 -c "import json;print(json.load(open('$TMP/$name/summary.json'))['test_acc'])")
  /usr/bin/python3 -c "import sys; sys.exit(0 if $acc >= $want else 1)" && ok || bad "$name test_acc $acc < $want"
  echo "$name test_acc $acc"
done
finish
