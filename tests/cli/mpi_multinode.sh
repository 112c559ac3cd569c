# Multi-node: two network namespaces act as two hosts joined by a bridge
# (tests/cluster/netns-hosts.bash). In deterministic mode a 2-host, 4-rank
# run over TCP with a hostfile ends with the same parameters (param_hash) as
# a 1-host, 2-rank run; a checkpoint written by the 4-rank run restores in a
# 1-host, 2-rank run and finishes with the same bits. The start-up line
# names both hosts and the TCP transport.
# No `set -e`: `expect` (lib.bash) records failing commands instead of exiting.
set -uo pipefail
. "$(dirname "$0")/lib.bash"
. "$SRC/tests/cluster/netns-hosts.bash"
if [ "$(id -u)" -ne 0 ]; then
  echo "SKIP: network namespaces need root"
  exit 0
fi
# Namespaces and the bridge go even when the test fails or is interrupted.
trap 'netns_down; rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
netns_up "$TMP" || { bad "could not create the namespaces"; finish; exit 1; }

F=$SRC/examples/mlp-fmnist.yaml
MPIRUN=(mpirun --allow-run-as-root --oversubscribe)
S=(--progress plain --set train.epochs=2 --set train.deterministic=true
   --set checkpoint.every_steps=20 --set checkpoint.keep=10
   --set "data.train={format: idx, images: $D/train-images-idx3-ubyte.gz, labels: $D/train-labels-idx1-ubyte.gz, limit: 4000}"
   --set "data.test={format: idx, images: $D/t10k-images-idx3-ubyte.gz, labels: $D/t10k-labels-idx1-ubyte.gz, limit: 2000}")

# Reference: one host, 2 ranks (shared memory).
expect 0 "2 ranks on 1 host" -- "${MPIRUN[@]}" -np 2 "$FERRY" train "$F" --out "$TMP/one" "${S[@]}"

# Two hosts x 2 slots from the hostfile: ranks 0,1 on ferry-a, 2,3 on ferry-b.
"${MPIRUN[@]}" "${NETNS_MPIRUN[@]}" -np 4 "$FERRY" train "$F" --out "$TMP/probe" "${S[@]}" \
  --set train.steps=1 2>&1 | grep -m1 '^ferry ' | sed "s|$TMP/||"
expect 0 "4 ranks on 2 hosts \(ferry-a: 2 ranks/[0-9]+ cores, ferry-b: 2 ranks/[0-9]+ cores\).*transport btl tcp,self" -- \
  "${MPIRUN[@]}" "${NETNS_MPIRUN[@]}" -np 4 "$FERRY" train "$F" --out "$TMP/two" "${S[@]}"
same_params "$TMP/one" "$TMP/two" "1 host x 2 ranks vs 2 hosts x 2 ranks"

# The 4-rank, 2-host run's checkpoint at step 40 restores on 1 host, 2 ranks.
ck=$TMP/two/ckpt-40.ferry
[ -e "$ck" ] && ok || bad "no $ck: $(ls "$TMP/two")"
expect 0 "resume: .*ckpt-40.ferry \(step 40, .*saved on 4 ranks" -- \
  "${MPIRUN[@]}" -np 2 "$FERRY" train "$F" --out "$TMP/back" "${S[@]}" --set checkpoint.resume="$ck"
echo "1 host x 2 ranks: $(param_hash "$TMP/one"); 2 hosts x 2 ranks: $(param_hash "$TMP/two"); restored on 1 host: $(param_hash "$TMP/back")"
same_params "$TMP/one" "$TMP/back" "1 host x 2 ranks vs restored from the 2-host checkpoint"
finish
