# ferry --help / --version / per-command help / usage errors.
. "$(dirname "$0")/lib.bash"
expect 0 "commands:" -- "$FERRY" --help
expect 0 "^ferry [0-9]+\.[0-9]+" -- "$FERRY" --version
expect 0 "train\.optimizer" -- "$FERRY" train --help
expect 0 "metrics.jsonl" -- "$FERRY" train --help
expect 0 "usage: ferry train" -- "$FERRY" help train
expect 2 "unknown command" -- "$FERRY" frobnicate
expect 2 "usage" -- "$FERRY"
expect 2 "usage: ferry train" -- "$FERRY" train
expect 2 "unknown option" -- "$FERRY" train x.yaml --bogus
expect 2 "needs a value" -- "$FERRY" train x.yaml --set
expect 2 "progress" -- "$FERRY" train x.yaml --progress loud
finish
