# `ferry ckpt inspect|verify` as a user runs them: on checkpoints that a short
# training run writes, on damaged copies (flipped byte, truncation, wrong
# magic, missing file) and with bad arguments.
. "$(dirname "$0")/lib.bash"
py=/usr/bin/python3

expect 0 "usage: ferry ckpt inspect" -- "$FERRY" ckpt --help
expect 0 "usage: ferry ckpt inspect" -- "$FERRY" help ckpt
expect 0 "ckpt +inspect, verify or export" -- "$FERRY" --help
expect 2 "missing subcommand" -- "$FERRY" ckpt
expect 2 "unknown subcommand" -- "$FERRY" ckpt frobnicate x
expect 2 "missing FILE" -- "$FERRY" ckpt verify
expect 2 "exactly one FILE" -- "$FERRY" ckpt verify a b
expect 2 "unknown option \"--bogus\"" -- "$FERRY" ckpt inspect x --bogus
expect 2 "unknown option \"--json\"" -- "$FERRY" ckpt verify x --json
expect 2 "export wants FILE and DIR" -- "$FERRY" ckpt export x

# Checkpoints every 3 steps of a 7-step run, keeping 2: ckpt-6 and ckpt-7.
expect 0 "test_acc" -- "$FERRY" train "$SRC/examples/mlp-fmnist.yaml" --out "$TMP/run" --progress plain \
  --set "data.train={format: idx, images: $D/train-images-idx3-ubyte.gz, labels: $D/train-labels-idx1-ubyte.gz, limit: 1000}" \
  --set "data.test={format: idx, images: $D/t10k-images-idx3-ubyte.gz, labels: $D/t10k-labels-idx1-ubyte.gz, limit: 200}" \
  --set train.epochs=1 --set checkpoint.every_steps=3 --set checkpoint.keep=2
C=$TMP/run/ckpt-7.ferry
[ -f "$C" ] && [ -f "$TMP/run/ckpt-6.ferry" ] && [ ! -e "$TMP/run/ckpt-3.ferry" ] && ok ||
  bad "expected ckpt-6 and ckpt-7 (ckpt-3 pruned): $(ls "$TMP/run")"
ls "$TMP/run" | grep -q '\.tmp\.' && bad "temp file left in the run directory" || ok

expect 0 "^ok: .*ckpt-7.ferry: format 1, step 7, 12 tensors" -- "$FERRY" ckpt verify "$C"
expect 0 "trunk\.dense1\.W +\[256, 784\] +l2 [0-9]" -- "$FERRY" ckpt inspect "$C"
expect 0 "optimizer: sgd lr 0.05 momentum 0.9" -- "$FERRY" ckpt inspect "$C"
expect 0 "next batch 0 of epoch 2" -- "$FERRY" ckpt inspect "$C"
if [ -x "$py" ]; then
  "$FERRY" ckpt inspect "$C" --json >"$TMP/c.json" && "$py" - "$TMP/c.json" <<'PY' && ok || bad "inspect --json"
import json, math, sys
d = json.load(open(sys.argv[1]))
assert d["format_version"] == 1 and d["step"] == 7 and d["epoch"] == 2 and d["batch"] == 0, d
assert d["optimizer"]["kind"] == "sgd" and d["optimizer"]["lr"] == 0.05 and d["optimizer"]["t"] == 7
assert d["provenance"]["world_size"] == 1 and len(d["provenance"]["datasets"]) == 2
assert d["model"]["input"] == {"c": 1, "h": 28, "w": 28, "spatial": True}
assert [l["op"] for l in d["model"]["trunk"]] == ["flatten", "dense", "relu", "dense", "relu"]
assert d["model"]["heads"][0]["name"] == "main"
t = {x["name"]: x for x in d["tensors"]}
assert t["trunk.dense1.W"]["shape"] == [256, 784] and t["trunk.dense1.W"]["numel"] == 200704
assert "optim.m.head.main.dense1.b" in t and "optim.v.trunk.dense1.W" not in t
assert all(math.isfinite(x["l2"]) and x["l2"] > 0 for x in t.values())
assert "mlp-fmnist" in d["experiment"] and len(d["experiment_hash"]) == 16
PY
  # export: every tensor as raw float32 plus a manifest; the values are the
  # checkpoint's (their L2 norms equal what inspect --json reports).
  expect 0 "exported 12 tensors" -- "$FERRY" ckpt export "$C" "$TMP/exp"
  "$py" - "$TMP/exp" "$TMP/c.json" <<'PY' && ok || bad "export: files do not match the checkpoint"
import json, math, os, struct, sys
d, ref = sys.argv[1], {t["name"]: t for t in json.load(open(sys.argv[2]))["tensors"]}
man = json.load(open(os.path.join(d, "manifest.json")))
assert man["step"] == 7 and man["dtype"] == "float32" and len(man["tensors"]) == 12, man
for t in man["tensors"]:
    raw = open(os.path.join(d, t["file"]), "rb").read()
    n = math.prod(t["shape"])
    assert len(raw) == 4 * n and t["shape"] == ref[t["name"]]["shape"], t
    l2 = math.sqrt(sum(v * v for v in struct.unpack(f"<{n}f", raw)))
    assert abs(l2 - ref[t["name"]]["l2"]) <= 1e-5 * max(1.0, l2), (t["name"], l2, ref[t["name"]]["l2"])
assert man["tensors"][0]["role"] == "param" and any(t["role"] == "optim.m" for t in man["tensors"])
PY
  expect 1 "cannot open|No such file" -- "$FERRY" ckpt export "$TMP/missing.ferry" "$TMP/exp2"
  # The framing reader printed in docs/checkpoint-format.md, run as written.
  sed -n '/^```python$/,/^```$/p' "$SRC/docs/checkpoint-format.md" | sed '1d;$d' >"$TMP/reader.py"
  expect 0 "^version 1, 14 records, header [0-9]+ bytes, first chunk: tensor 0 at 0" -- "$py" "$TMP/reader.py" "$C"
fi

# Damaged copies: exit 1 with the reason and the byte offset.
n=$(stat -c %s "$C")
cp "$C" "$TMP/flip.ferry"
printf '\x5a' | dd of="$TMP/flip.ferry" bs=1 seek=$((n / 2)) conv=notrunc status=none
expect 1 "corrupt or truncated at byte [0-9]+: record [0-9]+ \(tensor chunk.*CRC-32 mismatch" -- "$FERRY" ckpt verify "$TMP/flip.ferry"
expect 1 "CRC-32 mismatch" -- "$FERRY" ckpt inspect "$TMP/flip.ferry"
head -c $((n - 10)) "$C" >"$TMP/trunc.ferry"
expect 1 "corrupt or truncated at byte" -- "$FERRY" ckpt verify "$TMP/trunc.ferry"
head -c 4000 "$C" >"$TMP/trunc2.ferry"
expect 1 "declares more data than" -- "$FERRY" ckpt verify "$TMP/trunc2.ferry"
echo "name: not a checkpoint" >"$TMP/text.ferry"
expect 1 "not a ferry checkpoint" -- "$FERRY" ckpt verify "$TMP/text.ferry"
: >"$TMP/empty.ferry"
expect 1 "fewer than the 12-byte file header" -- "$FERRY" ckpt verify "$TMP/empty.ferry"
expect 1 "cannot open: No such file" -- "$FERRY" ckpt verify "$TMP/nope.ferry"
expect 1 "not a regular file" -- "$FERRY" ckpt verify "$TMP"
finish
