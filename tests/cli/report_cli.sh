# `ferry report RUN_DIR` as a user runs it: on a generated transfer run
# (results.jsonl + curve files) in a directory whose name has spaces and a
# quote, checking the table, report.md, report.json (a flagged row, a row
# within noise, the failed job), the PNGs when gnuplot is installed, the
# no-gnuplot path, malformed input and bad arguments.
. "$(dirname "$0")/lib.bash"
py=/usr/bin/python3

expect 0 "usage: ferry report RUN_DIR" -- "$FERRY" report --help
expect 0 "usage: ferry report RUN_DIR" -- "$FERRY" help report
expect 0 "report +summarise a transfer run" -- "$FERRY" --help
expect 2 "missing RUN_DIR" -- "$FERRY" report
expect 2 "unknown option \"--bogus\"" -- "$FERRY" report "$TMP" --bogus
expect 2 "exactly one RUN_DIR" -- "$FERRY" report a b
expect 2 "results.jsonl: no such file" -- "$FERRY" report "$TMP/nope"

# A run: target fmnist-5to9, K = 5 and all (0), 3 seeds each of scratch,
# finetune (+8 points), feature-extract (-0.3: noise) and linear-probe
# (-6 points: negative transfer), one failed finetune seed, one curve per job.
RUN="$TMP/run dir 'q'"
mkdir -p "$RUN"
awk -v run="$RUN" 'BEGIN {
  split("scratch finetune feature-extract linear-probe", st, " ")
  off["scratch"] = 0; off["finetune"] = 0.08; off["feature-extract"] = -0.003; off["linear-probe"] = -0.06
  split("5 0", ks, " ")
  for (a = 1; a <= 2; a++) for (s = 1; s <= 4; s++) for (seed = 0; seed < 3; seed++) {
    k = ks[a]; t = st[s]
    job = sprintf("fmnist-5to9.%s.k%d.s%d", t, k, seed)
    acc = (k ? 0.70 : 0.90) + off[t] + 0.01 * (seed - 1)
    if (t == "finetune" && k == 5 && seed == 2) {
      printf "{\"job\": \"%s\", \"target\": \"fmnist-5to9\", \"strategy\": \"%s\", \"k\": %d, \"seed\": %d, \"status\": \"failed\", \"reason\": \"loss is NaN at step 40\", \"wall_s\": 2.5}\n", job, t, k, seed
      continue
    }
    curve = "jobs/" job "/metrics.jsonl"
    system("mkdir -p \"" run "/jobs/" job "\"")
    for (e = 1; e <= 8; e++)
      printf "{\"epoch\": %d, \"step\": %d, \"train_loss\": %.4f, \"val_acc\": %.4f}\n", e, 50 * e, 1 / e, acc * (1 - exp(-e / 2)) > (run "/" curve)
    close(run "/" curve)
    printf "{\"job\": \"%s\", \"target\": \"fmnist-5to9\", \"strategy\": \"%s\", \"k\": %d, \"seed\": %d, \"status\": \"ok\", \"test_acc\": %.4f, \"test_loss\": 0.4, \"val_acc\": %.4f, \"wall_s\": %.1f, \"train_s\": 9.5, \"steps\": 400, \"curve\": \"%s\", \"extra\": {\"feature_cache_speedup\": 5.2}}\n", job, t, k, seed, acc, acc - 0.01, 10 + seed, curve
  }
}' >"$RUN/results.jsonl"
[ "$(wc -l <"$RUN/results.jsonl")" -eq 24 ] && ok || bad "generator wrote $(wc -l <"$RUN/results.jsonl") lines"

expect 0 "linear-probe +3 +0 +64\.00 ± 1\.00 .* -6\.00 ± 0\.82  NEGATIVE TRANSFER" -- "$FERRY" report "$RUN"
out=$("$FERRY" report "$RUN" 2>&1)
grep -E "feature-extract .*-0\.30 ± 0\.82" <<<"$out" | grep -qv NEGATIVE && ok || bad "feature-extract row (within noise) missing or flagged: $out"
grep -qE "finetune +2 +1 +77\.50 ± 0\.71 .* \+7\.50 ± 0\.76$" <<<"$out" && ok || bad "finetune K=5 row: $out"
[ "$(grep -c "NEGATIVE TRANSFER$" <<<"$out")" -eq 2 ] && ok || bad "expected 2 flagged rows (K 5 and all): $out"
grep -q "fmnist-5to9.finetune.k5.s2 (line [0-9]*): loss is NaN at step 40" <<<"$out" && ok || bad "failed job: $out"

MD=$RUN/report.md
grep -q "| 5 | linear-probe | 3 | 0 | 64.00 ± 1.00 | 11.0 | -6.00 ± 0.82 | \*\*NEGATIVE TRANSFER\*\* |" "$MD" && ok ||
  bad "report.md lacks the flagged row: $(cat "$MD")"
grep -q "| 5 | feature-extract | 3 | 0 | 69.70 ± 1.00 | 11.0 | -0.30 ± 0.82 |  |" "$MD" && ok || bad "report.md feature-extract row"
grep -q "| all | scratch | 3 | 0 | 90.00 ± 1.00 | 11.0 | (baseline) |  |" "$MD" && ok || bad "report.md K=all scratch row"
grep -q "^\*\*Rule.\*\* A transfer strategy is flagged NEGATIVE TRANSFER" "$MD" && ok || bad "report.md lacks the rule"
grep -q "| fmnist-5to9.finetune.k5.s2 | 2 | [0-9]* | loss is NaN at step 40 |" "$MD" && ok || bad "report.md failed jobs"
grep -q "feature\\\\_cache\\\\_speedup | 5.2 |" "$MD" && ok || bad "report.md extra measurements"
ls "$RUN" | grep -q '\.tmp\.' && bad "temp file left: $(ls "$RUN")" || ok

if [ -x "$py" ]; then
  "$py" - "$RUN/report.json" <<'PY' && ok || bad "report.json content"
import json, sys
d = json.load(open(sys.argv[1]))
rows = {(r["strategy"], r["k"]): r for r in d["rows"]}
assert [(r["k"], r["strategy"]) for r in d["rows"]][:4] == [(5, "scratch"), (5, "feature-extract"), (5, "finetune"), (5, "linear-probe")]
lp = rows[("linear-probe", 5)]
assert lp["negative_transfer"] is True and abs(lp["gain_pts"] + 6) < 1e-6, lp
assert abs(lp["gain_se_pts"] - 0.8164965809) < 1e-6 and abs(lp["test_acc_std"] - 0.01) < 1e-9
assert rows[("feature-extract", 5)]["negative_transfer"] is False
assert rows[("finetune", 5)]["n_ok"] == 2 and rows[("finetune", 5)]["n_failed"] == 1
assert rows[("scratch", 0)]["baseline"] is True and rows[("scratch", 0)]["gain_pts"] is None
assert rows[("finetune", 0)]["extra"] == {"feature_cache_speedup": 5.2}
assert d["failed"] == [{"job": "fmnist-5to9.finetune.k5.s2", "target": "fmnist-5to9", "strategy": "finetune",
                        "k": 5, "seed": 2, "line": 6, "reason": "loss is NaN at step 40"}], d["failed"]
assert "2 SE" in d["rule"]
PY
  "$FERRY" report "$RUN" --json --no-plots >"$TMP/out.json" && "$py" -c "import json,sys; d=json.load(open(sys.argv[1])); assert d['plots_state']=='off' and len(d['rows'])==8" "$TMP/out.json" &&
    ok || bad "--json output"
fi

# Plots when gnuplot is installed: real PNGs, referenced from report.md.
if command -v gnuplot >/dev/null; then
  "$FERRY" report "$RUN" >/dev/null 2>&1
  for p in acc_vs_k-fmnist-5to9 curves-fmnist-5to9-k5 curves-fmnist-5to9-kall; do
    f="$RUN/plots/$p.png"
    if [ -s "$f" ] && [ "$(head -c 4 "$f" | od -An -c | tr -d ' ')" = "211PNG" ]; then ok; else bad "no PNG $f"; fi
    grep -q "](plots/$p.png)" "$MD" && ok || bad "report.md does not show $p.png"
  done
  [ -f "$RUN/plots/report.gp" ] && grep -q "index 3 using 1:2:3 with yerrorlines" "$RUN/plots/report.gp" && ok ||
    bad "report.gp lacks the 4th strategy's error bars"
  grep -q "Plots\$" "$MD" && grep -q "^written to plots/" "$MD" && ok || bad "report.md plot state"
else
  echo "note: gnuplot not installed; PNG checks skipped" >&2
fi

# No gnuplot on PATH: still exit 0, and the report says why there are no plots.
expect 0 "note: no plots: gnuplot is not on PATH" -- env PATH=/nonexistent "$FERRY" report "$RUN"
grep -q "skipped: gnuplot is not installed" "$MD" && ok || bad "report.md should say gnuplot is missing"
expect 0 "" -- "$FERRY" report "$RUN" --no-plots
grep -q "not requested (--no-plots)" "$MD" && ok || bad "report.md plot state with --no-plots"

# A gnuplot that fails: the report still stands and says so; the paths reach
# gnuplot as separate arguments, untouched (spaces and quotes included).
mkdir -p "$TMP/fakebin"
printf '#!/bin/sh\nprintf "%%s\\n" "$@" >"%s/args"\necho "fake gnuplot: broken" >&2\nexit 3\n' "$TMP" >"$TMP/fakebin/gnuplot"
chmod +x "$TMP/fakebin/gnuplot"
expect 0 "note: no plots: gnuplot exited with status 3" -- env PATH="$TMP/fakebin:$PATH" "$FERRY" report "$RUN"
printf -- '-c\n%s/plots/report.gp\n%s/plots\n' "$RUN" "$RUN" | cmp -s - "$TMP/args" && ok || bad "gnuplot argv: $(cat "$TMP/args")"
grep -q "gnuplot failed (see plots/gnuplot.log)" "$MD" && grep -q "fake gnuplot: broken" "$RUN/plots/gnuplot.log" && ok ||
  bad "report.md/gnuplot.log after a failing gnuplot"

# A missing curve is a note, not an error.
rm "$RUN/jobs/fmnist-5to9.scratch.k5.s0/metrics.jsonl"
expect 0 "note: curve of job fmnist-5to9.scratch.k5.s0: cannot open" -- "$FERRY" report "$RUN"

# Malformed results: exit 2 naming file:line:col.
BAD=$TMP/bad
mkdir -p "$BAD"
head -3 "$RUN/results.jsonl" >"$BAD/results.jsonl"
echo '{"job": "x", "target": "t", "strategy": "s", "k": "five", "seed": 0, "status": "ok", "test_acc": 0.5}' >>"$BAD/results.jsonl"
expect 2 "results.jsonl:4:51: \"k\": expected a non-negative integer, found \"five\"" -- "$FERRY" report "$BAD"
echo '{"job": "x",' >"$BAD/results.jsonl"
expect 2 "results.jsonl:1:13: expected a key" -- "$FERRY" report "$BAD"
[ ! -e "$BAD/report.md" ] && ok || bad "a failed report must not write report.md"

# report.md cannot be written (a directory is in the way): exit 1.
rm -f "$MD" && mkdir "$MD"
expect 1 "cannot write .*report.md" -- "$FERRY" report "$RUN" --no-plots
finish
