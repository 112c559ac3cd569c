# Fine-tuning options, on one pre-trained model (the MLP preset: trunk blocks
# dense1 and dense2). reinit_last starts the trunk's last blocks afresh, a
# draw of their own per job, while the others load bit for bit; L2-SP then
# holds only the loaded blocks (a re-initialised block has no pre-trained
# value to be pulled to); unfreeze_last keeps the lower blocks bit for bit;
# a reinit_last covering the whole trunk is refused as bad input.
. "$(dirname "$0")/lib.bash"
py=/usr/bin/python3
cat > "$TMP/exp.yaml" <<YAML
name: finetune-options
seed: 0
data:
  train: $(src train 2000)
  test: $(src t10k 500)
  classes: [0, 1, 2, 3, 4]
  transforms: [{normalize: {mean: 0.2860, std: 0.3530}}]
model: {preset: mlp}
train: {epochs: 1, batch: 64, optimizer: {name: sgd, lr: 0.05, momentum: 0.9}}
transfer:
  targets:
    - name: t59
      data: {train: $(src train 2000), test: $(src t10k 500), classes: [5, 6, 7, 8, 9],
             transforms: [{normalize: {mean: 0.2860, std: 0.3530}}]}
  strategies: [finetune]
  k: [20]
  seeds: [0, 1]
  steps: 40
  batch: 32
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
YAML
run() { # run OUT KEY=VALUE...: the transfer jobs from the pre-trained model
  local out=$1; shift
  local sets=()
  for kv in "$@"; do sets+=(--set "$kv"); done
  expect 0 "report: " -- "$FERRY" train "$TMP/exp.yaml" --out "$TMP/$out" --progress plain \
    --set "checkpoint.resume=$C" "${sets[@]}"
}
# export RUN SEED: the job's final checkpoint as RUN/x<SEED>/<tensor>.f32
export_job() {
  "$FERRY" ckpt export "$(ls "$TMP/$1"/jobs/t59.finetune.k20.s$2/ckpt-*.ferry | head -1)" "$TMP/$1/x$2" \
    > /dev/null || bad "export of $1 seed $2"
}
same() { cmp -s "$1" "$2" && ok || bad "$3"; }
differ() { cmp -s "$1" "$2" && bad "$3" || ok; }

expect 0 "report: " -- "$FERRY" train "$TMP/exp.yaml" --out "$TMP/pre" --progress plain
C=$(ls "$TMP"/pre/pretrain/ckpt-*.ferry | tail -1)
"$FERRY" ckpt export "$C" "$TMP/xpre" > /dev/null || bad "export of the pre-trained model"
P=$TMP/xpre

# The initial values (a learning rate of 1e-30 moves no weight).
run init transfer.finetune.reinit_last=1 transfer.steps=1 transfer.optimizer.lr=1e-30
# The job's log.txt says what it loaded and what it re-initialised.
L=$TMP/init/jobs/t59.finetune.k20.s0/log.txt
grep -q "^trunk from .*ckpt-.*: 2 matched" "$L" && grep -q "^re-initialised the last 1 trunk block(s), from trunk.dense2 on" "$L" &&
  ok || bad "log.txt of a reinit_last job: $(cat "$L" 2>&1)"
# results.jsonl and the report say which fine-tuning the finetune rows are.
[ "$(grep -c '"options": "reinit_last 1"' "$TMP/init/results.jsonl")" = 2 ] && ok || bad "results.jsonl lacks the jobs' options"
grep -qF "2 finetune job(s) ran with reinit\_last 1" "$TMP/init/report.md" && ok || bad "report.md does not name the finetune options"
for s in 0 1; do export_job init $s; done
I=$TMP/init/x0
for f in trunk.dense1.W.f32 trunk.dense1.b.f32; do same "$P/$f" "$I/$f" "$f: reinit_last=1 did not load the lower block"; done
for f in trunk.dense2.W.f32 trunk.dense2.b.f32; do differ "$P/$f" "$I/$f" "$f: reinit_last=1 loaded the last block"; done
differ "$I/trunk.dense2.W.f32" "$TMP/init/x1/trunk.dense2.W.f32" "seeds 0 and 1 re-initialised dense2 alike"
# A fresh draw of model.init torch: uniform in +-1/sqrt(fan_in), fan_in 256.
if [ -x "$py" ]; then
  "$py" - "$I/trunk.dense2.W.f32" <<'PY' && ok || bad "the re-initialised dense2 is not a fresh Kaiming-uniform draw"
import array, math, sys
w = array.array("f", open(sys.argv[1], "rb").read())
b = 1 / math.sqrt(256)
sd = math.sqrt(sum(x * x for x in w) / len(w))
assert len(w) == 128 * 256 and max(abs(x) for x in w) <= b, (len(w), max(map(abs, w)))
assert abs(sd - b / math.sqrt(3)) < 0.02 * b, (sd, b / math.sqrt(3))
PY
fi

# L2-SP with reinit_last: the loaded dense1 is held near its pre-trained
# value, the re-initialised dense2 moves as freely as without L2-SP.
run free transfer.finetune.reinit_last=1 "transfer.seeds=[0]"
run held transfer.finetune.reinit_last=1 "transfer.seeds=[0]" transfer.finetune.l2sp=5
export_job free 0
export_job held 0
if [ -x "$py" ]; then
  "$py" - "$P" "$I" "$TMP/free/x0" "$TMP/held/x0" <<'PY' && ok || bad "L2-SP with reinit_last: see above"
import array, math, sys
pre, init, free, held = sys.argv[1:]
def t(d, n):
    return array.array("f", open(f"{d}/{n}.f32", "rb").read())
def dist(a, b):
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(a, b)))
d1f, d1h = dist(t(free, "trunk.dense1.W"), t(pre, "trunk.dense1.W")), dist(t(held, "trunk.dense1.W"), t(pre, "trunk.dense1.W"))
d2f, d2h = dist(t(free, "trunk.dense2.W"), t(init, "trunk.dense2.W")), dist(t(held, "trunk.dense2.W"), t(init, "trunk.dense2.W"))
print(f"dense1 from pre-trained: {d1f:.4g} free, {d1h:.4g} with L2-SP; "
      f"dense2 from its fresh start: {d2f:.4g} free, {d2h:.4g} with L2-SP", file=sys.stderr)
assert d1h < 0.5 * d1f, "L2-SP did not hold the loaded block"
assert d2h > 0.7 * d2f, "L2-SP held the re-initialised block at its random start"
PY
fi

# unfreeze_last=1: dense1 stays bit for bit, dense2 trains.
run last1 transfer.finetune.unfreeze_last=1 "transfer.seeds=[0]"
export_job last1 0
same "$P/trunk.dense1.W.f32" "$TMP/last1/x0/trunk.dense1.W.f32" "unfreeze_last=1 changed dense1"
differ "$P/trunk.dense2.W.f32" "$TMP/last1/x0/trunk.dense2.W.f32" "unfreeze_last=1 did not train dense2"

# The whole trunk re-initialised is scratch: the job fails as bad input.
run all2 transfer.finetune.reinit_last=2 "transfer.seeds=[0]"
grep -q '"status": "failed"' "$TMP/all2/results.jsonl" && grep -q "reinit_last: 2 would re-initialise all 2 trunk blocks" "$TMP/all2/results.jsonl" &&
  ok || bad "reinit_last=2 on a 2-block trunk: $(cat "$TMP/all2/results.jsonl")"
expect 2 "transfer.finetune.reinit_last: expected an integer >= 0" -- "$FERRY" train "$TMP/exp.yaml" --out "$TMP/neg" \
  --set transfer.finetune.reinit_last=-1
finish
