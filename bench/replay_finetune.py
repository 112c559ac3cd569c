#!/usr/bin/python3
"""Replays a ferry run's finetune jobs in PyTorch, to tell ferry's training
apart from its random draws.

For every finished finetune job at K (default 10) of RUN_DIR:
  1. ferry's exact initial model of the job (pre-trained trunk + the new head
     ferry drew for it) is written by re-running the job for one step at
     lr 1e-30 (`ferry train EXP` with checkpoint.resume = the job's
     pre-trained checkpoint); that run's K-shot draw must equal the job's;
  2. PyTorch trains from that initial model on the job's images with the
     peer's batches (bench/torch_transfer.py: same steps, lr, momentum, batch)
     -> "replay";
  3. PyTorch trains from the same trunk with --heads fresh heads of its own,
     torch.manual_seed(s + 1000 i) for i = 0 .. heads-1 (i = 0 is what
     torch_transfer.py draws for seed s) -> "torch_heads".
ferry - replay isolates the implementations (same start, same images; only
the batch order differs). ferry - mean(torch_heads) is what a side-by-side
comparison measures in expectation over PyTorch's head draws.

Prints one JSON line per job, then a summary line.

usage: replay_finetune.py RUN_DIR [--exp examples/transfer-fmnist.yaml] [--k 10]
                          [--heads 3] [--seeds 0,1,2] [--ferry build/ferry]
"""
import argparse
import atexit
import glob
import json
import os
import shutil
import statistics as st
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # noqa: E402
from torch_transfer import mean_se  # noqa: E402  (no torch import until init_torch)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("run", metavar="RUN_DIR", help="a ferry run with finetune jobs")
    p.add_argument("--exp", default=os.path.join(here, "..", "examples", "transfer-fmnist.yaml"),
                   help="the experiment file the run used (its target and transfer settings)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--heads", type=int, default=3, help="PyTorch head draws per job (>= 1)")
    p.add_argument("--seeds", default=None, help="only these job seeds, e.g. 0,1,2")
    p.add_argument("--ferry", default=os.path.join(here, "..", "build", "ferry"))
    p.add_argument("--data-dir", default=None, help="Fashion-MNIST directory (the peer's default)")
    a = p.parse_args()
    if a.heads < 1:
        p.error("--heads must be >= 1")

    jobs = {}
    with open(os.path.join(a.run, "results.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("strategy") == "finetune" and r.get("k") == a.k and r.get("status") == "ok":
                if r["seed"] in jobs:
                    sys.exit(f"{a.run}: {jobs[r['seed']]['job']} and {r['job']} share seed "
                             f"{r['seed']} (several targets or learning rates: not supported)")
                jobs[r["seed"]] = r
    if a.seeds is not None:
        want = [int(x) for x in a.seeds.split(",") if x != ""]
        missing = [s for s in want if s not in jobs]
        if missing:
            sys.exit(f"{a.run}: no finished finetune job at K={a.k} for seeds {missing}")
        jobs = {s: jobs[s] for s in want}
    if not jobs:
        sys.exit(f"{a.run}: no finished finetune job at K={a.k}")

    import torch_transfer as tt
    tt.init_torch(1)
    d = tt.protocol_data(a.data_dir or tt.DATA_DIR)
    args = tt.parse_args([])

    # Step 1: one lr-1e-30 run per pre-trained checkpoint.
    by_pre = {}
    for s, r in sorted(jobs.items()):
        by_pre.setdefault(r["pretrained"], []).append(s)
    tmp = tempfile.mkdtemp(prefix="replay-ft.")
    atexit.register(shutil.rmtree, tmp, True)
    init = {}
    for i, (pre, seeds) in enumerate(by_pre.items()):
        out = os.path.join(tmp, f"init{i}")
        # The run's seed must be the checkpoint's for ferry to take it as the
        # finished pre-training (per-seed models have seed + s); a job's own
        # seed is its transfer seed either way.
        info = json.loads(subprocess.run([a.ferry, "ckpt", "inspect", pre, "--json"], check=True,
                                         stdout=subprocess.PIPE, text=True).stdout)
        cmd = [a.ferry, "train", a.exp, "--out", out, "--progress", "plain",
               "--set", f"seed={info['seed']}", "--set", f"checkpoint.resume={pre}",
               "--set", "transfer.optimizer.lr=1e-30",
               "--set", "transfer.steps=1", "--set", "transfer.strategies=[finetune]",
               "--set", f"transfer.k=[{a.k}]", "--set", "transfer.pretrain_per_seed=false",
               "--set", f"transfer.seeds=[{','.join(map(str, seeds))}]"]
        res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        if res.returncode:
            sys.exit(f"replay_finetune.py: {' '.join(cmd)} failed:\n{res.stdout[-2000:]}")
        for s in seeds:
            jd = glob.glob(os.path.join(out, "jobs", f"*.finetune.k{a.k}.s{s}"))[0]
            init[s] = (jd, pre)

    rows, trunks = [], {}
    for s, r in sorted(jobs.items()):
        jd, pre = init[s]
        ids = np.loadtxt(os.path.join(a.run, "jobs", r["job"], "train_ids.txt"), dtype=np.int64,
                         comments="#", ndmin=1)
        ids0 = np.loadtxt(os.path.join(jd, "train_ids.txt"), dtype=np.int64, comments="#", ndmin=1)
        if not np.array_equal(ids, ids0):
            sys.exit(f"{jd}: the re-run drew other images than {r['job']} (another --exp?)")
        x, y = tt.target_rows(d, ids)
        start = tt.ferry_model(glob.glob(os.path.join(jd, "ckpt-*.ferry"))[0], a.ferry,
                               len(tt.TARGET_CLASSES))
        tt.sgd_steps(start, start.parameters(), x, y, min(args.batch, x.shape[0]), args.steps, s,
                     args.lr, args.momentum)
        row = {"seed": s, "ferry": round(100 * r["test_acc"], 2),
               "replay": round(100 * tt.evaluate(start, d.xt_te, d.yt_te), 2), "torch_heads": []}
        if pre not in trunks:
            trunks[pre] = tt.ferry_model(pre, a.ferry, len(tt.SOURCE_CLASSES))[0]
        for h in range(a.heads):
            job = tt.run_job("finetune", a.k, s, args, trunks[pre], x, y, d.xt_te, d.yt_te,
                             init_seed=s + 1000 * h)
            row["torch_heads"].append(round(100 * job["test_acc"], 2))
        rows.append(row)
        print(json.dumps(row), flush=True)

    head_sd = [st.stdev(r["torch_heads"]) for r in rows] if a.heads > 1 else []
    summary = {
        "summary": True, "k": a.k, "jobs": len(rows), "heads": a.heads,
        "ferry": mean_se([r["ferry"] for r in rows]),
        "replay": mean_se([r["replay"] for r in rows]),
        "torch_heads": mean_se([st.mean(r["torch_heads"]) for r in rows]),
        "ferry_minus_replay": mean_se([r["ferry"] - r["replay"] for r in rows]),
        "ferry_minus_torch_heads": mean_se([r["ferry"] - st.mean(r["torch_heads"]) for r in rows]),
        "ferry_minus_torch_head0": mean_se([r["ferry"] - r["torch_heads"][0] for r in rows]),
        "head_sd_within_draw": round(st.mean(head_sd), 3) if head_sd else None,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
