# Shared helpers for CLI tests, sourced by tests/cli/*.sh (which ctest runs).
FERRY=${1:?ferry binary}
SRC=${2:?source dir}
TMP=$(mktemp -d /tmp/ferry-cli.XXXXXX)
trap 'rm -rf "$TMP"' EXIT
fails=0
passes=0
ok() { passes=$((passes + 1)); }
bad() { fails=$((fails + 1)); echo "FAIL: $*" >&2; }
# expect CODE PATTERN -- command...: runs it, checks exit code and that stderr+stdout match PATTERN.
expect() {
  local code=$1 pat=$2; shift 3
  local out rc
  out=$("$@" 2>&1); rc=$?
  if [ "$rc" -ne "$code" ]; then bad "exit $rc (want $code): $* :: $out"; return; fi
  if [ -n "$pat" ] && ! grep -qE -- "$pat" <<<"$out"; then bad "output lacks /$pat/: $* :: $out"; return; fi
  ok
}
finish() { echo "$passes passed, $fails failed"; [ "$fails" -eq 0 ]; }
# same_params DIR_A DIR_B WHAT: both runs' summary.json hold the same param_hash.
param_hash() { grep -o '"param_hash": "[0-9a-f]*"' "$1/summary.json" 2>/dev/null; }
same_params() {
  local a b
  a=$(param_hash "$1") b=$(param_hash "$2")
  [ -n "$a" ] && [ "$a" = "$b" ] && ok || bad "$3: $a vs $b"
}
# Fashion-MNIST (Debian's dataset-fashion-mnist); `src SPLIT N`: a data
# source of the first N samples of SPLIT (train or t10k), as YAML.
D=/usr/share/datasets/fashion-mnist
src() { echo "{format: idx, images: $D/$1-images-idx3-ubyte.gz, labels: $D/$1-labels-idx1-ubyte.gz, limit: $2}"; }
