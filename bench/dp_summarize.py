#!/usr/bin/python3
"""Helpers of bench/dp.sh (ferry's data-parallel benchmarks).

  dp_summarize.py run RUN_DIR META_JSON -- CMD...   run one benchmark process
  dp_summarize.py quiet MAX_WAIT_S THRESHOLD_CORES  wait until the cores are idle
  dp_summarize.py roundnoise RECORDS.jsonl MODEL PAIR  -> max other_cpu_cores of a round
  dp_summarize.py machine DIR                       -> one line on the 2-core sgemm check
  dp_summarize.py report RECORDS.jsonl CONFIG.json [ATTEMPTS.jsonl [LABEL=DIR,..|-]]
                                                    -> the report

`run` executes CMD (cwd unchanged) with stdout/stderr to RUN_DIR/{stdout,stderr}
and prints one JSON record: META plus what the run measured (ferry:
RUN_DIR/out/summary.json; pytorch: the last JSON line on stdout) and what the
machine did meanwhile (load average before, CPU time used by *other*
processes during the run). Exit status: 0, or 1 if CMD failed or its numbers
are missing or inconsistent (the reason on stderr).
"""
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


def fail(msg):
    print(f"dp_summarize.py: {msg}", file=sys.stderr)
    sys.exit(1)


def cpu_jiffies():
    """(busy, steal) jiffies summed over all CPUs, from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal guest guest_nice
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    steal = v[7] if len(v) > 7 else 0
    return busy, steal


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def last_json_line(path):
    with open(path) as f:
        lines = [ln for ln in f.read().splitlines() if ln.strip().startswith("{")]
    if not lines:
        raise ValueError(f"{path}: no JSON line")
    return json.loads(lines[-1])


def num(d, key, where):
    v = d.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"{where}: expected a finite number in '{key}', found {v!r}")
    return float(v)


# --- run ------------------------------------------------------------------------

def cmd_run(run_dir, meta_json, cmd):
    meta = json.loads(meta_json)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "cmd"), "w") as f:
        f.write(" ".join(cmd) + "\n")
    la = loadavg()
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    b0, s0 = cpu_jiffies()
    t0 = time.monotonic()
    with open(os.path.join(run_dir, "stdout"), "w") as out, \
         open(os.path.join(run_dir, "stderr"), "w") as err:
        rc = subprocess.call(cmd, stdout=out, stderr=err)
    wall = time.monotonic() - t0
    b1, s1 = cpu_jiffies()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        fail(f"{meta.get('id')}: exit status {rc}: {' '.join(cmd)}")
    # CPU seconds of this run's process tree (mpirun reaps its ranks, the
    # DDP parent joins its workers) vs all CPU seconds the machine spent.
    own = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    total = (b1 - b0) / CLK_TCK
    other = max(0.0, total - own)
    rec = dict(meta)
    rec.update({
        "cmd": cmd,
        "exit": rc,
        "loadavg_before": la[0],
        "run_wall_s": round(wall, 3),
        "own_cpu_s": round(own, 2),
        # cores' worth of CPU used by other processes during the run: 0 on a
        # quiet machine; 0.5 means half a core was taken from this run.
        "other_cpu_cores": round(other / wall, 3) if wall > 0 else None,
        "steal_cores": round((s1 - s0) / CLK_TCK / wall, 3) if wall > 0 else None,
        "max_proc_rss_mb": round(ru1.ru_maxrss / 1024.0, 1),
    })
    try:
        if meta["system"] == "ferry":
            src = os.path.join(run_dir, "out", "summary.json")
            with open(src) as f:
                d = json.load(f)
            rec["train_samples_per_s"] = num(d, "train_samples_per_s", src)
            rec["train_s"] = num(d, "train_s", src)
            rec["wall_s"] = num(d, "wall_s", src)
            rec["sync_wait_s"] = num(d, "sync_wait_s", src)
            rss = d.get("rss_mb_per_rank")
            if not isinstance(rss, list) or not rss:
                raise ValueError(f"{src}: rss_mb_per_rank missing")
            rec["rss_mb_per_rank"] = [round(float(x), 1) for x in rss]
            rec["steps_done"] = int(num(d, "steps", src))
            rec["world_size"] = int(num(d, "world_size", src))
            rec["deterministic_reported"] = d.get("deterministic")
            rec["param_hash"] = d.get("param_hash")
            rec["test_acc"] = d.get("test_acc")
            if rec["world_size"] != meta["n"]:
                raise ValueError(f"{src}: world_size {rec['world_size']} but {meta['n']} ranks launched")
            if rec["steps_done"] != meta["steps"]:
                raise ValueError(f"{src}: {rec['steps_done']} steps, {meta['steps']} requested")
            if bool(rec["deterministic_reported"]) != bool(meta.get("deterministic")):
                raise ValueError(f"{src}: deterministic={rec['deterministic_reported']!r}, "
                                 f"expected {bool(meta.get('deterministic'))}")
        else:
            src = os.path.join(run_dir, "stdout")
            d = last_json_line(src)
            rec["train_samples_per_s"] = num(d, "train_samples_per_s", src)
            rec["train_s"] = num(d, "train_s", src)
            rec["wall_s"] = num(d, "wall_s", src)
            rec["steps_done"] = int(num(d, "steps", src))
            rec["world_size"] = int(num(d, "processes", src))
            rec["test_acc"] = d.get("test_acc")
            if rec["steps_done"] != meta["steps"]:
                raise ValueError(f"{src}: {rec['steps_done']} steps, {meta['steps']} requested")
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        fail(f"{meta.get('id')}: {e}")
    print(json.dumps(rec))
    extra = f", sync_wait {rec['sync_wait_s']:.2f} s" if "sync_wait_s" in rec else ""
    print(f"  {meta['id']}: {rec['train_samples_per_s']:.0f} samples/s, train {rec['train_s']:.2f} s"
          f"{extra}, run {wall:.1f} s, load {la[0]:.2f}, others {rec['other_cpu_cores']:.2f} cores",
          file=sys.stderr)


# --- quiet ----------------------------------------------------------------------

def cmd_quiet(max_wait, threshold):
    """Samples the machine's busy cores over 1 s windows until below the
    threshold or max_wait seconds have passed. Prints the last sample."""
    max_wait, threshold = float(max_wait), float(threshold)
    t_end = time.monotonic() + max_wait
    while True:
        b0, _ = cpu_jiffies()
        time.sleep(1.0)
        b1, _ = cpu_jiffies()
        busy = (b1 - b0) / CLK_TCK
        if busy < threshold or time.monotonic() >= t_end:
            print(f"{busy:.2f}")
            return


# --- report ---------------------------------------------------------------------

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def r3(x):
    return None if x is None else round(x, 3)


def by_pair(recs, model, arm):
    return {r["pair"]: r for r in recs if r["model"] == model and r["arm"] == arm}


def compare(recs, model, a, b, fn, quiet_thr):
    """Per pair fn(rec_a, rec_b); median over pairs, and over the pairs in
    which neither run had more than quiet_thr cores taken by other work."""
    A, B = by_pair(recs, model, a), by_pair(recs, model, b)
    pairs = sorted(set(A) & set(B))
    vals = [fn(A[p], B[p]) for p in pairs]
    noise = [max(A[p]["other_cpu_cores"] or 0, B[p]["other_cpu_cores"] or 0) for p in pairs]
    quiet = [v for v, n in zip(vals, noise) if n <= quiet_thr]
    return {
        "pairs": pairs,
        "per_pair": [r3(v) for v in vals],
        "median": r3(med(vals)),
        "min": r3(min(vals)) if vals else None,
        "max": r3(max(vals)) if vals else None,
        "other_cpu_cores_max_per_pair": [round(n, 2) for n in noise],
        "quiet_pairs": len(quiet),
        "median_quiet": r3(med(quiet)),
    }


def arm_numbers(recs, model, arm):
    rs = sorted(by_pair(recs, model, arm).values(), key=lambda r: r["pair"])
    sps = [r["train_samples_per_s"] for r in rs]
    out = {"samples_per_s": [round(x, 1) for x in sps],
           "samples_per_s_median": round(med(sps), 1) if sps else None}
    if rs and "sync_wait_s" in rs[0]:
        out["sync_wait_s"] = [round(r["sync_wait_s"], 3) for r in rs]
        out["train_s"] = [round(r["train_s"], 3) for r in rs]
    return out


def add_target(targets, model, metric, target, c, op=None, bound=None):
    """A target line: met on the median of all pairs, met_quiet on the
    median of the undisturbed pairs; conclusive when at least 3 pairs (or all
    of them, if fewer were run) were undisturbed."""
    n = len(c["pairs"])
    t = {"model": model, "metric": metric, "target": target, "value": c["median"],
         "per_pair": c["per_pair"], "value_quiet_pairs": c["median_quiet"],
         "quiet_pairs": c["quiet_pairs"], "pairs": n,
         "conclusive": c["quiet_pairs"] >= min(3, n) and n > 0}
    if op:
        t["met"] = check(c["median"], op, bound)
        t["met_quiet"] = check(c["median_quiet"], op, bound)
    targets.append(t)


def check(value, op, target):
    if value is None:
        return None
    return value >= target if op == ">=" else value <= target


def cmd_report(records_path, config_path, attempts_path=None, machine_arg="-"):
    with open(config_path) as f:
        config = json.load(f)
    recs = []
    with open(records_path) as f:
        for line in f:
            if line.strip():
                recs.append(json.loads(line))
    thr = config["quiet_threshold_cores"]
    targets = []
    models = {}
    for model in config["models"]:
        steps = config["steps"][model]
        m = {"steps": steps, "global_batch": 128}
        sps = lambda r: r["train_samples_per_s"]  # noqa: E731

        # 1. scaling
        c = compare(recs, model, "n2", "n1", lambda a, b: sps(a) / sps(b), thr)
        ceil = compare(recs, model, "n2_nosync", "n1", lambda a, b: sps(a) / sps(b), thr)
        m["scaling"] = {"what": "train_samples_per_s N=2 / N=1, 1 BLAS thread per rank",
                        "n1": arm_numbers(recs, model, "n1"), "n2": arm_numbers(recs, model, "n2"),
                        "ratio_n2_over_n1": c,
                        "ceiling_n2_nosync_over_n1": ceil,
                        "ceiling_note": "N=2 without gradient communication over N=1: what "
                                        "scaling would be with free communication (data "
                                        "split, per-step barrier and the machine's 2 cores "
                                        "included)"}
        if model == "cnn":
            add_target(targets, model, "scaling N2/N1 samples/s", ">= 1.8", c, ">=", 1.8)
        else:
            add_target(targets, model, "scaling N2/N1 samples/s", "none (reported)", c)
        add_target(targets, model, "scaling ceiling: N2 no-sync / N1 samples/s",
                   "none (context for the scaling figure)", ceil)

        # 2. overlap: time per step with sync / without = sps_nosync / sps_sync
        c = compare(recs, model, "n2", "n2_nosync", lambda a, b: sps(b) / sps(a), thr)
        syn = by_pair(recs, model, "n2")
        waits = [syn[p]["sync_wait_s"] for p in sorted(syn)]
        trains = [syn[p]["train_s"] for p in sorted(syn)]
        m["overlap"] = {
            "what": "N=2 time per step with gradient allreduce / with FERRY_BENCH_NO_SYNC=1",
            "sync": arm_numbers(recs, model, "n2"),
            "nosync": arm_numbers(recs, model, "n2_nosync"),
            "step_time_ratio_sync_over_nosync": c,
            "sync_wait_s_median": r3(med(waits)),
            "sync_wait_ms_per_step_median": r3(med([w / steps * 1e3 for w in waits])),
            "sync_wait_frac_of_train_s_median": r3(med([w / t for w, t in zip(waits, trains)])),
        }
        add_target(targets, model, "overlap: N2 step time sync / no-sync", "<= 1.10", c,
                   "<=", 1.10)

        # 3. vs PyTorch DDP
        c = compare(recs, model, "n2", "torch_ddp", lambda a, b: sps(a) / sps(b), thr)
        m["vs_pytorch_ddp"] = {
            "what": "ferry N=2 / PyTorch DDP (gloo, 2 processes x 1 thread), global batch 128",
            "ferry_n2": arm_numbers(recs, model, "n2"),
            "pytorch_ddp": arm_numbers(recs, model, "torch_ddp"),
            "ratio_ferry_over_pytorch": c}
        if c["pairs"]:
            add_target(targets, model, "ferry N2 / PyTorch DDP samples/s", ">= 1.2", c,
                       ">=", 1.2)

        # 4. deterministic cost
        c2 = compare(recs, model, "n2_det", "n2", lambda a, b: sps(a) / sps(b), thr)
        c1 = compare(recs, model, "n1_det", "n1", lambda a, b: sps(a) / sps(b), thr)
        d1, d2 = by_pair(recs, model, "n1_det"), by_pair(recs, model, "n2_det")
        same = [d1[p]["param_hash"] == d2[p]["param_hash"] for p in sorted(set(d1) & set(d2))]
        m["deterministic"] = {
            "what": "samples/s deterministic / default (below 1: deterministic is slower)",
            "n1_det": arm_numbers(recs, model, "n1_det"),
            "n2_det": arm_numbers(recs, model, "n2_det"),
            "ratio_n1_det_over_default": c1, "ratio_n2_det_over_default": c2,
            "param_hash_n1_equals_n2": same,
            "n2_det_over_n1_det": compare(recs, model, "n2_det", "n1_det",
                                          lambda a, b: sps(a) / sps(b), thr)}
        targets.append({"model": model, "metric": "deterministic N1 == N2 parameters (bitwise)",
                        "target": "all equal", "value": same,
                        "met": bool(same) and all(same)})

        # 5. memory
        mem = {}
        for r in recs:
            if r["model"] == model and r["arm"].startswith("mem_n"):
                mem[str(r["n"])] = {"rss_mb_per_rank": r["rss_mb_per_rank"],
                                    "rss_mb_max": max(r["rss_mb_per_rank"]),
                                    "rss_mb_total": round(sum(r["rss_mb_per_rank"]), 1),
                                    "steps": r["steps"]}
        also = {}
        for arm in ("n1", "n2", "n1_det", "n2_det", "n2_nosync"):
            rs = by_pair(recs, model, arm).values()
            if rs:
                also[arm] = max(max(r["rss_mb_per_rank"]) for r in rs)
        m["memory"] = {"what": "peak RSS of each rank (ferry's rss_mb_per_rank), MiB; "
                               "N=4 oversubscribed, one run each",
                       "by_ranks": mem,
                       "max_rank_rss_mb_in_timed_runs": also}
        models[model] = m

    # raw numbers, compact
    runs = []
    for r in recs:
        keep = {k: r.get(k) for k in (
            "id", "model", "arm", "pair", "n", "steps", "train_samples_per_s", "train_s",
            "wall_s", "run_wall_s", "sync_wait_s", "rss_mb_per_rank", "max_proc_rss_mb",
            "param_hash", "test_acc", "loadavg_before", "other_cpu_cores", "steal_cores",
            "attempt", "quiet_wait_busy_cores") if k in r}
        keep["cmd"] = " ".join(r["cmd"])
        runs.append(keep)
    noisy = sorted({r["id"] for r in recs if (r.get("other_cpu_cores") or 0) > thr})
    superseded = []
    if attempts_path:
        kept = {(r["id"], r.get("attempt", 1)) for r in recs}
        with open(attempts_path) as f:
            for line in f:
                if line.strip():
                    a = json.loads(line)
                    if (a["id"], a.get("attempt", 1)) not in kept:
                        superseded.append({k: a.get(k) for k in (
                            "id", "attempt", "train_samples_per_s", "sync_wait_s",
                            "other_cpu_cores", "loadavg_before")})
    machine = {}
    if machine_arg and machine_arg != "-":
        for item in machine_arg.split(","):
            label, d = item.split("=", 1)
            machine[label] = machine_numbers(d)
    report = {
        "bench": "ferry-data-parallel",
        "config": config,
        "machine_two_core_check": machine or None,
        "targets": targets,
        "models": models,
        "noise": {"runs_with_other_cpu_over_threshold": noisy,
                  "threshold_cores": thr,
                  "note": "other_cpu_cores = CPU used by processes outside the run / run wall "
                          "time; on 2 cores, 0.5 means a quarter of the machine was taken"},
        "runs": runs,
        "superseded_attempts": superseded,
    }
    print(json.dumps(report, indent=2))


def machine_numbers(d):
    """bench_sgemm alone (CPU 0) vs two copies at once (CPUs 0, 1)."""
    def run(name):
        with open(os.path.join(d, name)) as f:
            return json.load(f)["runs"][0]
    a, p0, p1 = run("alone.json"), run("pair0.json"), run("pair1.json")
    out = {"loadavg_before": None}
    try:
        with open(os.path.join(d, "loadavg")) as f:
            out["loadavg_before"] = float(f.read())
    except (OSError, ValueError):
        pass
    for k in ("sq1024_gflops", "mlp_step_gflops"):
        out[k] = {"alone": a[k], "pair": [p0[k], p1[k]],
                  "two_process_scaling": round((p0[k] + p1[k]) / a[k], 3)}
    return out


def cmd_machine(d):
    m = machine_numbers(d)
    print(f"sgemm 1024^3 alone {m['sq1024_gflops']['alone']:.0f} GFLOP/s, two at once "
          f"{m['sq1024_gflops']['pair'][0]:.0f} + {m['sq1024_gflops']['pair'][1]:.0f} "
          f"(x{m['sq1024_gflops']['two_process_scaling']:.2f})")


def cmd_roundnoise(records_path, model, pair):
    """Largest other_cpu_cores among the runs of one round (model, pair)."""
    worst = 0.0
    with open(records_path) as f:
        for line in f:
            if line.strip():
                r = json.loads(line)
                if r["model"] == model and r["pair"] == int(pair) and not r["arm"].startswith("mem_"):
                    worst = max(worst, r.get("other_cpu_cores") or 0.0)
    print(f"{worst:.3f}")


def main(argv):
    if len(argv) == 5 and argv[1] == "roundnoise":
        cmd_roundnoise(*argv[2:])
    elif len(argv) >= 5 and argv[1] == "run" and argv[4] == "--":
        cmd_run(argv[2], argv[3], argv[5:])
    elif len(argv) == 4 and argv[1] == "quiet":
        cmd_quiet(argv[2], argv[3])
    elif len(argv) == 3 and argv[1] == "machine":
        cmd_machine(argv[2])
    elif len(argv) in (4, 5, 6) and argv[1] == "report":
        cmd_report(*argv[2:])
    else:
        fail("usage: dp_summarize.py run RUN_DIR META_JSON -- CMD... | "
             "quiet MAX_WAIT_S THRESHOLD | roundnoise RECORDS.jsonl MODEL PAIR | "
             "machine DIR | report RECORDS.jsonl CONFIG.json [ATTEMPTS.jsonl [LABEL=DIR,...|-]]")


if __name__ == "__main__":
    main(sys.argv)
