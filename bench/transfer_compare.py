#!/usr/bin/python3
"""Compares a ferry transfer run with bench/torch_transfer.py's JSON on the
same protocol: per strategy and K, mean and sample std over seeds of test
accuracy (percent) in both programs, ferry - PyTorch, and whether that is
within the tolerance (issue 5: 1.5 points); finetune - scratch at the
smallest K for both (issue 5: >= 3 points); pre-training test accuracy.
Prints one JSON document.

usage: transfer_compare.py FERRY_RUN_DIR TORCH_JSON... [--tol 1.5] [--margin 3]
                           [--ferry-s S] [--torch-s S]
"""
import argparse
import json
import os
import statistics as st
import sys


def ferry_results(run_dir):
    """{(strategy, K, seed): acc} from results.jsonl (the last line of a job
    counts), and the pre-training test accuracies."""
    acc = {}
    with open(os.path.join(run_dir, "results.jsonl")) as f:
        for line in f:
            if not line.strip():
                continue
            r = json.loads(line)
            key = (r["strategy"], r["k"], r["seed"])
            if r["status"] == "ok":
                acc[key] = r["test_acc"]
            else:
                acc.pop(key, None)
    pre = []
    for d in sorted(os.listdir(run_dir)):
        p = os.path.join(run_dir, d, "summary.json")
        if (d == "pretrain" or d.startswith("pretrain.s")) and os.path.exists(p):
            with open(p) as f:
                pre.append({"dir": d, "test_acc": json.load(f)["test_acc"]})
    return acc, pre


def torch_results(paths):
    """Jobs and pre-trainings of one or more torch_transfer.py JSON files
    (seeds split over processes); the config of the first, seeds merged."""
    acc, pre, cfg = {}, [], None
    for path in paths:
        with open(path) as f:
            doc = json.load(f)
        acc.update({(j["strategy"], j["K"], j["seed"]): j["test_acc"] for j in doc["jobs"]})
        pre += [{"seed": p["seed"], "test_acc": p["test_acc"]}
                for p in doc.get("pretrains", [doc["pretrain"]])]
        c = doc["summary"]["config"]
        if cfg is None:
            cfg = dict(c)
        else:
            cfg["seeds"] = cfg["seeds"] + c["seeds"]
    cfg["seeds"] = sorted(set(cfg["seeds"]))
    return acc, sorted(pre, key=lambda p: p["seed"]), cfg


def stats(vals):
    v = [100.0 * x for x in vals]
    return {"mean": st.mean(v), "std": st.stdev(v) if len(v) > 1 else 0.0, "n": len(v)}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("ferry_run")
    p.add_argument("torch_json", nargs="+")
    p.add_argument("--tol", type=float, default=1.5)
    p.add_argument("--margin", type=float, default=3.0)
    p.add_argument("--ferry-s", type=float)
    p.add_argument("--torch-s", type=float)
    a = p.parse_args()
    fa, fpre = ferry_results(a.ferry_run)
    ta, tpre, cfg = torch_results(a.torch_json)
    seeds, ks, strategies = cfg["seeds"], cfg["ks"], cfg["strategies"]
    rows, worst = [], 0.0
    for s in strategies:
        for k in ks:
            fv = [fa[(s, k, x)] for x in seeds if (s, k, x) in fa]
            tv = [ta[(s, k, x)] for x in seeds if (s, k, x) in ta]
            if len(fv) != len(seeds) or len(tv) != len(seeds):
                raise SystemExit(f"{s} K={k}: ferry has {len(fv)}, PyTorch {len(tv)} of "
                                 f"{len(seeds)} seeds")
            f, t = stats(fv), stats(tv)
            d = f["mean"] - t["mean"]
            worst = max(worst, abs(d))
            paired = [100.0 * (fa[(s, k, x)] - ta[(s, k, x)]) for x in seeds]
            rows.append({"strategy": s, "K": k, "ferry": f, "torch": t, "diff": d,
                         "paired_diff_std": st.stdev(paired) if len(paired) > 1 else 0.0,
                         "within_tol": abs(d) <= a.tol})
    k0 = min(ks)
    margin = {}
    for name, acc in (("ferry", fa), ("torch", ta)):
        if ("finetune", k0, seeds[0]) in acc and ("scratch", k0, seeds[0]) in acc:
            per = [100.0 * (acc[("finetune", k0, x)] - acc[("scratch", k0, x)]) for x in seeds]
            # Finetune and scratch of one seed share its K-shot draw: the
            # paired differences' standard error is the mean's uncertainty.
            se = st.stdev(per) / len(per) ** 0.5 if len(per) > 1 else 0.0
            margin[name] = {"K": k0, "mean": st.mean(per), "se": se, "per_seed": per,
                            "meets": st.mean(per) >= a.margin}
    out = {
        "bench": "transfer_compare", "seeds": seeds, "ks": ks,
        "pretrain_per_seed": cfg.get("pretrain_per_seed", False),
        "same_k_shot_draws": bool(cfg.get("subsets_from") or cfg.get("subsets_in")),
        "torch_uses_ferry_pretrained": bool(cfg.get("pretrained_from")),
        "tolerance_pts": a.tol, "rows": rows, "max_abs_diff": worst,
        "all_within_tol": all(r["within_tol"] for r in rows),
        "finetune_minus_scratch": margin, "margin_target_pts": a.margin,
        "pretrain": {"ferry": fpre, "torch": tpre},
        "wall_s": {"ferry": a.ferry_s, "torch": a.torch_s},
    }
    print(json.dumps(out, indent=1))
    err = sys.stderr
    print(f"{'strategy':>16} {'K':>4} {'ferry %':>15} {'PyTorch %':>15} {'diff':>6}", file=err)
    for r in rows:
        f, t = r["ferry"], r["torch"]
        print(f"{r['strategy']:>16} {r['K']:>4} {f['mean']:7.2f} ± {f['std']:4.2f} "
              f"{t['mean']:7.2f} ± {t['std']:4.2f} {r['diff']:+6.2f}"
              f"{'' if r['within_tol'] else '  > tol'}", file=err)
    for name, m in margin.items():
        print(f"{name}: finetune - scratch at K={m['K']}: {m['mean']:+.2f} ± {m['se']:.2f} SE "
              f"({', '.join(f'{x:+.1f}' for x in m['per_seed'])})", file=err)
    print("pre-training test acc: ferry " + " ".join(f"{p['test_acc']:.4f}" for p in fpre)
          + "; PyTorch " + " ".join(f"{p['test_acc']:.4f}" for p in tpre), file=err)


if __name__ == "__main__":
    main()
