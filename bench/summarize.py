#!/usr/bin/python3
"""Helpers for bench/run.sh: turn one run's files into a record, and the
records into the comparison report (one JSON document).

  summarize.py record SYSTEM MODEL PAIR RUN_DIR      -> one JSON line on stdout
  summarize.py report RECORDS.jsonl SGEMM.json[,MORE.json] CONFIG.json -> report

A run directory holds stdout, stderr, time.txt (GNU time -v) and, for ferry,
out/summary.json. Any missing or malformed number is an error (exit 1).
"""
import json
import os
import statistics
import sys

# MLP 784-256-128-10: FLOPs per training sample (multiply-add = 2 FLOPs).
MLP_DIMS = (784, 256, 128, 10)
MLP_FWD = 2 * sum(a * b for a, b in zip(MLP_DIMS, MLP_DIMS[1:]))
MLP_WGRAD = MLP_FWD
MLP_IGRAD = 2 * sum(a * b for a, b in list(zip(MLP_DIMS, MLP_DIMS[1:]))[1:])
MLP_FLOPS_PER_SAMPLE = MLP_FWD + MLP_WGRAD + MLP_IGRAD
MLP_FORMULA = ("forward 2*(784*256+256*128+128*10) + weight grads 2*(784*256+256*128+128*10)"
               " + input grads of layers 2,3 2*(256*128+128*10); GEMMs only")


def fail(msg):
    print(f"summarize.py: {msg}", file=sys.stderr)
    sys.exit(1)


def peak_rss_mb(path):
    """GNU time -v reports 'Maximum resident set size (kbytes): N'."""
    try:
        with open(path) as f:
            for line in f:
                if "Maximum resident set size" in line:
                    return int(line.rsplit(":", 1)[1]) / 1024.0
    except OSError as e:
        fail(f"cannot read {path}: {e}")
    fail(f"{path}: no 'Maximum resident set size' line (was /usr/bin/time -v used?)")


def read_loadavg(path):
    try:
        with open(path) as f:
            return float(f.read().strip())
    except (OSError, ValueError):
        return None


def number(d, key, where):
    v = d.get(key)
    if not isinstance(v, (int, float)) or isinstance(v, bool):
        fail(f"{where}: expected a number in '{key}', found {v!r}")
    return float(v)


def last_json_line(path):
    try:
        with open(path) as f:
            lines = [ln for ln in f.read().splitlines() if ln.strip().startswith("{")]
    except OSError as e:
        fail(f"cannot read {path}: {e}")
    if not lines:
        fail(f"{path}: no JSON line")
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as e:
        fail(f"{path}: last JSON line does not parse: {e}")


def cmd_record(system, model, pair, run_dir):
    if system == "ferry":
        src = os.path.join(run_dir, "out", "summary.json")
        try:
            with open(src) as f:
                d = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            fail(f"ferry summary {src}: {e}")
    elif system == "pytorch":
        src = os.path.join(run_dir, "stdout")
        d = last_json_line(src)
    else:
        fail(f"unknown system {system!r} (expected ferry or pytorch)")
    rec = {
        "system": system, "model": model, "pair": int(pair),
        "train_samples_per_s": number(d, "train_samples_per_s", src),
        "test_acc": number(d, "test_acc", src),
        "wall_s": number(d, "wall_s", src),
        "peak_rss_mb": round(peak_rss_mb(os.path.join(run_dir, "time.txt")), 1),
        "loadavg_before": read_loadavg(os.path.join(run_dir, "loadavg")),
    }
    print(json.dumps(rec))
    print(f"{model} pair {pair} {system}: {rec['train_samples_per_s']:.0f} samples/s, "
          f"test_acc {rec['test_acc']:.4f}, peak RSS {rec['peak_rss_mb']:.0f} MB, "
          f"load before {rec['loadavg_before']}", file=sys.stderr)


def med(xs):
    return statistics.median(xs) if xs else None


def side(recs):
    if not recs:
        return None
    sps = [r["train_samples_per_s"] for r in recs]
    return {
        "samples_per_s": [round(x, 1) for x in sps],
        "samples_per_s_median": round(med(sps), 1),
        "test_acc": [r["test_acc"] for r in recs],
        "test_acc_median": med([r["test_acc"] for r in recs]),
        "wall_s": [round(r["wall_s"], 2) for r in recs],
        "peak_rss_mb": [r["peak_rss_mb"] for r in recs],
        "peak_rss_mb_max": max(r["peak_rss_mb"] for r in recs),
        "loadavg_before": [r.get("loadavg_before") for r in recs],
    }


def flop_rate(sps_median, sgemm_run):
    if sps_median is None:
        return None
    gflops = sps_median * MLP_FLOPS_PER_SAMPLE * 1e-9
    out = {"gflops": round(gflops, 2)}
    if sgemm_run:
        out["frac_of_sgemm_peak"] = round(gflops / sgemm_run["peak_gflops"], 3)
        out["frac_of_sgemm_mlp_step"] = round(gflops / sgemm_run["mlp_step_gflops"], 3)
    return out


SGEMM_KEYS = ("peak_gflops", "sq1024_gflops", "mlp_step_gflops")


def best_sgemm(paths, threads):
    """Reads bench_sgemm documents (e.g. before and after the runs). Returns
    (summary, best) where best holds, for the given thread count, the highest
    of each rate over the documents: a ceiling is best estimated by the
    fastest moment. summary lists every measurement."""
    measurements, best, config = [], {}, None
    for path in paths:
        try:
            with open(path) as f:
                doc = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            fail(f"sgemm result {path}: {e}")
        config = doc.get("openblas_config")
        found = False
        for r in doc["runs"]:
            measurements.append({"file": os.path.basename(path), "threads": r["threads"],
                                 "openblas_threads": r["openblas_threads"],
                                 **{k: r[k] for k in SGEMM_KEYS}})
            if r["threads"] == threads:
                found = True
                for k in SGEMM_KEYS:
                    best[k] = max(best.get(k, 0.0), r[k])
        if not found:
            fail(f"{path}: no sgemm run at {threads} threads")
    return {"measurements": measurements, "openblas_config": config}, best


def cmd_report(records_path, sgemm_paths, config_path):
    with open(config_path) as f:
        config = json.load(f)
    recs = []
    with open(records_path) as f:
        for line in f:
            if line.strip():
                recs.append(json.loads(line))
    sgemm_run = sgemm_doc = None
    if sgemm_paths != "-":
        sgemm_doc, sgemm_run = best_sgemm(sgemm_paths.split(","), config["threads"])
    models = {}
    for model in config["models"]:
        f_recs = sorted((r for r in recs if r["model"] == model and r["system"] == "ferry"),
                        key=lambda r: r["pair"])
        t_recs = sorted((r for r in recs if r["model"] == model and r["system"] == "pytorch"),
                        key=lambda r: r["pair"])
        t_by_pair = {r["pair"]: r for r in t_recs}
        ratios = [f["train_samples_per_s"] / t_by_pair[f["pair"]]["train_samples_per_s"]
                  for f in f_recs if f["pair"] in t_by_pair]
        fs, ts = side(f_recs), side(t_recs)
        m = {"ferry": fs, "pytorch": ts,
             "ratio_ferry_over_pytorch_per_pair": [round(r, 3) for r in ratios],
             "ratio_ferry_over_pytorch_median": round(med(ratios), 3) if ratios else None}
        if model == "mlp":
            m["flops_per_sample"] = MLP_FLOPS_PER_SAMPLE
            m["flops_formula"] = MLP_FORMULA
            m["ferry_flop_rate"] = flop_rate(fs and fs["samples_per_s_median"], sgemm_run)
            m["pytorch_flop_rate"] = flop_rate(ts and ts["samples_per_s_median"], sgemm_run)
        models[model] = m
    report = {"bench": "ferry-vs-pytorch", "config": config, "models": models}
    if sgemm_doc:
        report["sgemm"] = {
            "threads": config["threads"],
            "peak_gflops": sgemm_run["peak_gflops"],
            "sq1024_gflops": sgemm_run["sq1024_gflops"],
            "mlp_step_gflops": sgemm_run["mlp_step_gflops"],
            "measurements": sgemm_doc["measurements"],
            "openblas_config": sgemm_doc.get("openblas_config"),
        }
    print(json.dumps(report, indent=2))


def main(argv):
    if len(argv) == 6 and argv[1] == "record":
        cmd_record(*argv[2:])
    elif len(argv) == 5 and argv[1] == "report":
        cmd_report(*argv[2:])
    else:
        fail("usage: summarize.py record SYSTEM MODEL PAIR RUN_DIR | "
             "report RECORDS.jsonl SGEMM.json[,SGEMM2.json...]|- CONFIG.json")


if __name__ == "__main__":
    main(sys.argv)
