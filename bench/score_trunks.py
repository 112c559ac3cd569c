#!/usr/bin/python3
"""Scores pre-trained trunks of the transfer protocol with ONE evaluator.

Trunks come either from a ferry run (the models of RUN_DIR/pretrain.s<seed>,
read through `ferry ckpt export`) or from PyTorch pre-training here (same
protocol as bench/torch_transfer.py, with the example's 100-step warm-up;
--warmup 0 for a constant rate). Every trunk is then scored by the same
PyTorch code on the same K-shot draws of the target (classes 5-9): feature
extraction at K = 10 over --draws draws (20), at K = 50 over --fe50-draws
(6), finetune at K = 10 over --ft-draws (5); a count of 0 skips that score.
With the evaluator and the draws fixed, a difference between the two sources
is a difference between the pre-trained models, not between the transfer
implementations or the draws.

With --scratch, scratch at K = 10 is also trained, once per finetune draw (it
does not depend on the trunk), and the summary adds finetune - scratch at
K = 10 paired by draw: its mean, and an SE from both sources of spread (over
draws: the per-draw gain averaged over the trunks; over trunks: each trunk's
mean finetune).

Prints one JSON line per trunk, then a summary line (mean, SE, SD per metric).

usage: score_trunks.py --ferry-run RUN_DIR --seeds 0,1,2 [--ferry build/ferry] [--scratch]
       score_trunks.py --torch [--warmup 0] --seeds 0,1,2
"""
import argparse
import json
import os
import statistics as st
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402


def int_list(text):
    return [int(x) for x in text.split(",") if x != ""]


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--ferry-run", metavar="RUN_DIR",
                     help="score ferry's per-seed models (transfer.pretrain_per_seed)")
    src.add_argument("--torch", action="store_true", help="pre-train in PyTorch here")
    p.add_argument("--seeds", type=int_list, required=True, help="pre-training seeds, e.g. 0,1,2")
    p.add_argument("--warmup", type=int, default=100,
                   help="PyTorch pre-training warm-up steps (100, the example's; 0 = constant lr)")
    p.add_argument("--ferry", default=os.path.join(here, "..", "build", "ferry"))
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST directory (the peer's default)")
    p.add_argument("--draws", type=int, default=20, help="K-shot draws for feature extraction at K=10")
    p.add_argument("--fe50-draws", type=int, default=6, help="draws for feature extraction at K=50")
    p.add_argument("--ft-draws", type=int, default=5, help="draws for finetune at K=10")
    p.add_argument("--scratch", action="store_true",
                   help="also train scratch on the finetune draws; report finetune - scratch")
    p.add_argument("--first-draw", type=int, default=100,
                   help="draw seeds start here (away from the protocol's 0, 1, 2)")
    a = p.parse_args()

    import torch_transfer as tt
    tt.init_torch(1)
    torch = tt.torch
    d = tt.protocol_data(a.data_dir or tt.DATA_DIR)
    # The protocol's hyper-parameters are the peer's defaults; only the
    # pre-training warm-up is this script's.
    args = tt.parse_args([])
    args.pretrain_warmup = a.warmup

    plan = (("feature-extract", 10, a.draws), ("feature-extract", 50, a.fe50_draws),
            ("finetune", 10, a.ft_draws))
    def score(strategy, k, r, trunk):
        """Test accuracy (%) of one job on K-shot draw r."""
        x, y = tt.target_rows(d, tt.target_subset(d.ytr_raw, r, k))
        return 100 * tt.run_job(strategy, k, r, args, trunk, x, y, d.xt_te, d.yt_te)["test_acc"]

    draws_ft = range(a.first_draw, a.first_draw + a.ft_draws)
    if a.scratch and a.ft_draws <= 0:
        p.error("--scratch needs --ft-draws > 0")
    scratch = {r: score("scratch", 10, r, None) for r in draws_ft} if a.scratch else {}
    if scratch:
        print(json.dumps({"scratch_k10": scratch}), flush=True)
    rows = []
    for s in a.seeds:
        if a.torch:
            trunk, info = tt.pretrain(args, d.xs_tr, d.ys_tr, d.xs_te, d.ys_te, s)
            src_acc = info["test_acc"]
        else:
            model, _ = tt.ferry_pretrained(a.ferry_run, s, True, a.ferry)
            trunk, src_acc = model[0], tt.evaluate(model, d.xs_te, d.ys_te)
        with torch.no_grad():
            f = trunk(d.xs_tr[:2000])
        row = {"source": "pytorch" if a.torch else "ferry", "seed": s,
               "source_acc": 100 * src_acc, "dead_features": int((f.max(0).values == 0).sum())}
        for strategy, k, n in plan:
            if n <= 0:
                continue
            accs = [score(strategy, k, r, trunk) for r in range(a.first_draw, a.first_draw + n)]
            row[f"{strategy}_k{k}"] = float(np.mean(accs))
            if strategy == "finetune":
                row["finetune_k10_draws"] = accs
        rows.append(row)
        print(json.dumps(row), flush=True)
    summary = {"summary": True, "source": rows[0]["source"], "n": len(rows),
               "warmup": a.warmup if a.torch else None}
    for key in rows[0]:
        if key in ("source", "seed", "finetune_k10_draws"):
            continue
        v = [r[key] for r in rows]
        sd = st.stdev(v) if len(v) > 1 else 0.0
        summary[key] = {"mean": st.mean(v), "se": sd / len(v) ** 0.5, "sd": sd}
    if scratch:
        summary["finetune_minus_scratch_k10"] = paired_gain(rows, scratch, list(draws_ft))
    print(json.dumps(summary))


def paired_gain(rows, scratch, draws):
    """finetune - scratch at K = 10 over trunks x draws. The draw is the larger
    source of spread (scratch at K = 10 moves by about 2 points from draw to
    draw) and the trunk the other; the SE adds both: the spread over draws of
    the trunk-averaged gain, and the spread over trunks of their mean
    finetune."""
    per_draw = [st.mean(r["finetune_k10_draws"][j] for r in rows) - scratch[dr]
                for j, dr in enumerate(draws)]
    per_trunk = [r["finetune_k10"] for r in rows]
    se_d = st.stdev(per_draw) / len(per_draw) ** 0.5 if len(per_draw) > 1 else 0.0
    se_t = st.stdev(per_trunk) / len(per_trunk) ** 0.5 if len(per_trunk) > 1 else 0.0
    return {"mean": st.mean(per_draw), "se": (se_d ** 2 + se_t ** 2) ** 0.5,
            "se_draws": se_d, "se_trunks": se_t, "per_draw": per_draw,
            "scratch_mean": st.mean(scratch.values())}


if __name__ == "__main__":
    main()
