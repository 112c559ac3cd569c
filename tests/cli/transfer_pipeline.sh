# The transfer pipeline as a user runs it (small): pre-train, transfer jobs,
# results.jsonl, report. Freezing really freezes (feature-extract keeps the
# pre-trained trunk bit for bit; finetune changes it); a broken target is
# recorded as failed while the others finish; a rerun with --resume skips
# finished jobs.
. "$(dirname "$0")/lib.bash"
cat > "$TMP/exp.yaml" <<YAML
name: small-transfer
seed: 0
data:
  train: $(src train 4000)
  test: $(src t10k 1000)
  classes: [0, 1, 2, 3, 4]
  transforms: [{normalize: {mean: 0.2860, std: 0.3530}}]
model: {preset: mlp}
train: {epochs: 1, batch: 64, optimizer: {name: sgd, lr: 0.05, momentum: 0.9}}
transfer:
  targets:
    - name: t59
      data: {train: $(src train 4000), test: $(src t10k 1000), classes: [5, 6, 7, 8, 9], val_frac: 0.1,
             transforms: [{normalize: {mean: 0.2860, std: 0.3530}}]}
    - name: broken
      data: {train: {format: idx, images: $TMP/missing.gz, labels: $TMP/missing.gz}, test: $(src t10k 1000),
             classes: [5, 6, 7, 8, 9]}
  strategies: [scratch, feature-extract, finetune]
  k: [20]
  seeds: [0, 1]
  steps: 60
  batch: 32
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
  finetune: {eval_every: 20, l2sp: 0.01}
YAML
expect 0 "report: " -- "$FERRY" train "$TMP/exp.yaml" --out "$TMP/run" --progress plain
R=$TMP/run
[ "$(grep -c '"status": "ok"' "$R/results.jsonl")" = 6 ] && ok || bad "want 6 finished jobs: $(cat "$R/results.jsonl")"
[ "$(grep -c '"status": "failed"' "$R/results.jsonl")" = 6 ] && ok || bad "want 6 failed (broken target) jobs"
grep -q 'missing.gz' "$R/results.jsonl" && ok || bad "failure reason does not name the file"
[ -s "$R/report.md" ] && [ -s "$R/report.json" ] && ok || bad "no report"
th() { grep -o '"trunk_hash": "[0-9a-f]*"' "$1/summary.json"; }
pre=$(th "$R/pretrain")
fe=$(th "$R/jobs/t59.feature-extract.k20.s0")
ft=$(th "$R/jobs/t59.finetune.k20.s0")
[ -n "$pre" ] && [ "$pre" = "$fe" ] && ok || bad "feature-extract changed the frozen trunk: $pre vs $fe"
[ -n "$ft" ] && [ "$ft" != "$pre" ] && ok || bad "finetune did not change the trunk"
grep -q '"feature_cache_speedup"' "$R/results.jsonl" && ok || bad "no feature-cache speed-up measured"
# Each job records its K-shot draw (train-file rows): 5 classes x K = 20,
# the same draw for every strategy of a seed, another draw for another seed.
ids() { grep -v '^#' "$R/jobs/t59.$1.k20.s$2/train_ids.txt"; }
[ "$(ids scratch 0 | wc -l)" = 100 ] && ok || bad "train_ids.txt of a K=20 job has $(ids scratch 0 | wc -l) rows, want 100"
[ "$(ids scratch 0)" = "$(ids finetune 0)" ] && ok || bad "scratch and finetune of seed 0 drew different samples"
[ "$(ids scratch 0)" != "$(ids scratch 1)" ] && ok || bad "seeds 0 and 1 drew the same samples"
# Rerun: finished jobs are skipped, only the failed ones are tried again.
expect 0 "6 jobs already finished" -- "$FERRY" train "$TMP/exp.yaml" --out "$R" --progress plain --resume
# A pipeline started from another run's final pre-training checkpoint (as
# cluster/transfer-array.sbatch does): no pre-training steps, the jobs use it.
C=$(ls "$R"/pretrain/ckpt-*.ferry | head -1)
expect 0 "report: " -- "$FERRY" train "$TMP/exp.yaml" --out "$TMP/from" --progress plain \
  --set "checkpoint.resume=$C" --set "transfer.targets=[{name: t59, data: {train: $(src train 4000), test: $(src t10k 1000), classes: [5, 6, 7, 8, 9], val_frac: 0.1}}]"
[ "$(grep -c '"status": "ok"' "$TMP/from/results.jsonl")" = 6 ] && ok || bad "jobs from a given checkpoint failed"
# One pre-training per seed (transfer.pretrain_per_seed): seed s's jobs start
# from pretrain.s<s> (seed + s), not from a shared model; --resume trains
# no pre-training again; an explicit checkpoint.resume is refused.
T59="transfer.targets=[{name: t59, data: {train: $(src train 4000), test: $(src t10k 1000), classes: [5, 6, 7, 8, 9], val_frac: 0.1}}]"
P=$TMP/perseed
expect 0 "pre-training 2/2: seed 1" -- "$FERRY" train "$TMP/exp.yaml" --out "$P" --progress plain \
  --set transfer.pretrain_per_seed=true --set "$T59"
[ "$(grep -c '"status": "ok"' "$P/results.jsonl")" = 6 ] && ok || bad "per-seed pipeline: want 6 finished jobs"
[ ! -e "$P/pretrain" ] && ok || bad "per-seed pipeline wrote a shared pretrain/"
# seed 0's pre-training is the shared one of the first run (same seed, same data)
same_params "$P/pretrain.s0" "$R/pretrain" "pretrain.s0 vs the seed-0 shared pre-training"
[ -n "$(param_hash "$P/pretrain.s1")" ] && [ "$(param_hash "$P/pretrain.s1")" != "$(param_hash "$P/pretrain.s0")" ] && ok ||
  bad "pretrain.s1 is not a second pre-training"
for s in 0 1; do
  [ "$(th "$P/jobs/t59.feature-extract.k20.s$s")" = "$(th "$P/pretrain.s$s")" ] && ok ||
    bad "feature-extract seed $s did not use pretrain.s$s's trunk"
  grep "t59.finetune.k20.s$s\"" "$P/results.jsonl" | grep -q "\"pretrained\": \"$P/pretrain.s$s/ckpt-" && ok ||
    bad "results.jsonl does not name pretrain.s$s for seed $s's finetune job"
done
expect 0 "6 jobs already finished" -- "$FERRY" train "$TMP/exp.yaml" --out "$P" --progress plain --resume \
  --set transfer.pretrain_per_seed=true --set "$T59"
# Killed (SIGKILL) during the first of the two pre-trainings, then rerun
# with --resume: both pre-trainings and every job end as in the uninterrupted
# run (same param_hash), nothing is lost or run twice.
K=$TMP/perseed-kill
if { FERRY_FAULT=0:kill@30 "$FERRY" train "$TMP/exp.yaml" --out "$K" --progress plain \
  --set transfer.pretrain_per_seed=true --set "$T59"; } > /dev/null 2>&1; then bad "the fault did not kill the run"; else ok; fi 2> /dev/null
[ ! -e "$K/pretrain.s0/summary.json" ] && ok || bad "pretrain.s0 finished although it was killed"
expect 0 "report: " -- "$FERRY" train "$TMP/exp.yaml" --out "$K" --progress plain --resume \
  --set transfer.pretrain_per_seed=true --set "$T59"
for s in 0 1; do
  same_params "$K/pretrain.s$s" "$P/pretrain.s$s" "resumed pretrain.s$s vs the uninterrupted one"
done
[ "$(grep -c '"status": "ok"' "$K/results.jsonl")" = 6 ] && ok || bad "resumed per-seed pipeline: want 6 finished jobs"
expect 2 "one per seed" -- "$FERRY" train "$TMP/exp.yaml" --out "$TMP/bad" --progress plain \
  --set transfer.pretrain_per_seed=true --set "checkpoint.resume=$C"
# A transfer job's new head is a fresh draw, not the pre-training's initial
# head: both use the seed and the head's layer names, and the pre-trained
# head stays close to where it started, so reusing it would start
# fine-tuning from a source-class readout. With a learning rate of 1e-30 no
# weight moves, so each checkpoint holds its run's initial values.
Z=$TMP/init
expect 0 "report: " -- "$FERRY" train "$TMP/exp.yaml" --out "$Z" --progress plain --set "$T59" \
  --set train.optimizer.lr=1e-30 --set "transfer.strategies=[finetune]" --set "transfer.seeds=[0]" \
  --set transfer.steps=1 --set transfer.optimizer.lr=1e-30
expect 0 "" -- "$FERRY" ckpt export "$(ls "$Z"/pretrain/ckpt-*.ferry | head -1)" "$Z/x-pre"
expect 0 "" -- "$FERRY" ckpt export "$(ls "$Z"/jobs/t59.finetune.k20.s0/ckpt-*.ferry | head -1)" "$Z/x-job"
heads=$(cd "$Z/x-pre" && ls head.*.W.f32 2>/dev/null)
[ -n "$heads" ] && ok || bad "no head weights in the exported pre-training checkpoint: $(ls "$Z/x-pre")"
for f in $heads; do
  cmp -s "$Z/x-pre/$f" "$Z/x-job/$f" && bad "$f: the finetune job's new head is the pre-training's initial head" || ok
done
for f in $(cd "$Z/x-pre" && ls trunk.*.f32); do
  cmp -s "$Z/x-pre/$f" "$Z/x-job/$f" && ok || bad "$f: the job did not start from the pre-trained trunk"
done
finish
