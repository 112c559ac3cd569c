#!/usr/bin/python3
"""Finetune options against plain finetune and scratch, over many pre-trained
models and K-shot draws.

For every pre-trained model RUN_DIR/pretrain.s<i>/ckpt-*.ferry (the last
one) of one or more ferry runs made with transfer.pretrain_per_seed=true,
and every draw offset o in --draws, runs the experiment's transfer jobs at
K (default 10) with job seed o + i from that model (checkpoint.resume), once
as scratch, once as plain finetune (every trunk block loaded:
transfer.finetune.reinit_last=0, whatever the file sets) and once per
variant (plain plus a --set of the transfer.finetune section). The draws default to 100 and 200, seeds the
example file does not use, so a setting is not chosen on the seeds it is
judged by.

Prints one JSON line per (arm, model) and then a summary: per arm the mean
test accuracy, finetune - scratch (paired by draw) and the arm - plain
finetune difference (paired), each as mean and SE over the draws.

--torch also trains PyTorch 1.13 (bench/torch_transfer.py's protocol) from
the same pre-trained models on the same images (each ferry job's
train_ids.txt): scratch, plain finetune, and the variants that set
transfer.finetune.trunk_lr_mult, .l2sp or .reinit_last; its arms are
reported as "torch:<arm>".

usage: finetune_options.py RUN_DIR [RUN_DIR ...] [--exp EXP] [--k 10]
           [--draws 100,200] [--variant NAME=KEY=VALUE ...] [--procs 2] [--torch]
"""
import argparse
import concurrent.futures as cf
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from torch_transfer import mean_se  # noqa: E402  (no torch import until init_torch)

PLAIN = ["transfer.finetune.reinit_last=0"]
DEFAULT_VARIANTS = [
    "grad250=transfer.finetune.gradual_every=250",
    "tlr0.1=transfer.finetune.trunk_lr_mult=0.1",
    "l2sp0.1=transfer.finetune.l2sp=0.1",
    "l2sp1=transfer.finetune.l2sp=1",
    "reinit1=transfer.finetune.reinit_last=1",
]


def models(runs):
    """(model index, checkpoint) of every pretrain.s<i> of the runs."""
    out = {}
    for run in runs:
        for d in glob.glob(os.path.join(run, "pretrain.s*")):
            m = re.fullmatch(r"pretrain\.s(\d+)", os.path.basename(d))
            ck = sorted(glob.glob(os.path.join(d, "ckpt-*.ferry")),
                        key=lambda p: int(re.search(r"ckpt-(\d+)", p).group(1)))
            if m and ck:
                i = int(m.group(1))
                if i in out:
                    sys.exit(f"finetune_options.py: two models with index {i} ({out[i]}, {ck[-1]})")
                out[i] = ck[-1]
    if not out:
        sys.exit("finetune_options.py: no pretrain.s<i>/ckpt-*.ferry under " + ", ".join(runs)
                 + " (runs made with transfer.pretrain_per_seed=true)")
    return dict(sorted(out.items()))


def run_arm(a, work, arm, strategy, sets, i, ckpt):
    out = os.path.join(work, f"{arm}.m{i}")
    seeds = ",".join(str(o + i) for o in a.draws)
    cmd = [a.ferry, "train", a.exp, "--out", out, "--progress", "plain",
           "--set", f"seed={i}", "--set", f"checkpoint.resume={ckpt}",
           "--set", f"transfer.strategies=[{strategy}]", "--set", f"transfer.k=[{a.k}]",
           "--set", "transfer.pretrain_per_seed=false", "--set", f"transfer.seeds=[{seeds}]"]
    for s in sets:
        cmd += ["--set", s]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    res = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    if res.returncode != 0:
        sys.exit(f"finetune_options.py: {' '.join(cmd)} failed:\n{res.stdout[-2000:]}")
    acc = {}
    with open(os.path.join(out, "results.jsonl")) as f:
        for line in f:
            r = json.loads(line)
            if r.get("status") != "ok":
                sys.exit(f"finetune_options.py: job {r.get('job')} of {out}: {r.get('status')}")
            acc[r["seed"]] = 100.0 * r["test_acc"]
    return arm, i, acc


TORCH_KEYS = {"transfer.finetune.trunk_lr_mult": "ft_trunk_lr_mult",
              "transfer.finetune.l2sp": "ft_l2sp",
              "transfer.finetune.reinit_last": "ft_reinit_last"}
_T = None  # a PyTorch worker's (torch_transfer module, protocol data, ferry binary)


def _torch_init(ferry, data_dir):
    global _T
    import torch_transfer as tt
    tt.init_torch(1)
    _T = (tt, tt.protocol_data(data_dir or tt.DATA_DIR), ferry)


def _torch_arm(arm, strategy, opts, i, ckpt, draws, k):
    """PyTorch jobs of one arm on model i: draws = [(seed, train_ids.txt)]."""
    import numpy as np
    tt, d, ferry = _T
    trunk = tt.ferry_model(ckpt, ferry, len(tt.SOURCE_CLASSES))[0]
    for prm in trunk.parameters():
        prm.requires_grad_(False)
    args = tt.parse_args([])
    for key, val in opts.items():
        setattr(args, key, val)
    acc = {}
    for seed, path in draws:
        idx = np.loadtxt(path, dtype=np.int64, comments="#", ndmin=1)
        xsub, ysub = tt.target_rows(d, idx)
        job = tt.run_job(strategy, k, seed, args, trunk, xsub, ysub, d.xt_te, d.yt_te)
        acc[seed] = 100.0 * job["test_acc"]
    return arm, i, acc


def torch_arms(a, arms, ms, work, acc):
    """Runs the PyTorch side (see --torch) into acc["torch:<arm>"]."""
    import multiprocessing as mp
    tasks = []
    for name, strat, sets in arms:
        opts = {}
        for kv in sets:
            key, _, val = kv.partition("=")
            if key not in TORCH_KEYS:
                opts = None
                break
            opts[TORCH_KEYS[key]] = float(val)
        if opts is None:
            print(f"finetune_options.py: --torch: no PyTorch arm for {name} ({sets})",
                  file=sys.stderr)
            continue
        acc["torch:" + name] = {}
        for i, ck in ms.items():
            draws = []
            for o in a.draws:
                seed = o + i
                f = glob.glob(os.path.join(work, f"plain.m{i}", "jobs", f"*.k{a.k}.s{seed}",
                                           "train_ids.txt"))
                if len(f) != 1:
                    sys.exit(f"finetune_options.py: no single train_ids.txt for seed {seed} "
                             f"in {work}/plain.m{i}")
                draws.append((seed, f[0]))
            tasks.append(("torch:" + name, strat, opts, i, ck, draws, a.k))
    ctx = mp.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=max(1, a.procs), mp_context=ctx,
                                initializer=_torch_init, initargs=(a.ferry, None)) as ex:
        for f in cf.as_completed([ex.submit(_torch_arm, *t) for t in tasks]):
            arm, i, got = f.result()
            acc[arm].update(got)
            print(json.dumps({"arm": arm, "model": i, "test_acc": got}), flush=True)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("runs", nargs="+", metavar="RUN_DIR",
                   help="ferry runs with pretrain.s<i>/ (transfer.pretrain_per_seed=true)")
    p.add_argument("--exp", default=os.path.join(here, "..", "examples", "transfer-fmnist.yaml"),
                   help="the experiment file (its target and transfer settings)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--draws", default="100,200",
                   help="job seed offsets; model i gets seeds offset + i")
    p.add_argument("--variant", action="append", metavar="NAME=KEY=VALUE",
                   help="a finetune arm with this --set (repeatable); default: "
                   + ", ".join(DEFAULT_VARIANTS))
    p.add_argument("--procs", type=int, default=2, help="ferry processes at once (1 thread each)")
    p.add_argument("--ferry", default=os.path.join(here, "..", "build", "ferry"))
    p.add_argument("--keep", metavar="DIR", help="write the runs here and keep them")
    p.add_argument("--torch", action="store_true",
                   help="also train PyTorch from the same models and images (see below)")
    a = p.parse_args()
    try:
        a.draws = [int(x) for x in a.draws.split(",")]
    except ValueError:
        sys.exit(f"finetune_options.py: --draws wants integers like 100,200, found {a.draws!r}")
    # Plain finetune loads every trunk block, whatever the experiment file
    # sets (the example re-initialises its top block); a variant starts from
    # plain and changes one key.
    arms = [("scratch", "scratch", []), ("plain", "finetune", list(PLAIN))]
    for v in a.variant or DEFAULT_VARIANTS:
        name, sep, kv = v.partition("=")
        if not sep or "=" not in kv or not name:
            sys.exit(f"finetune_options.py: --variant wants NAME=KEY=VALUE, found {v!r}")
        arms.append((name, "finetune", list(PLAIN) + [kv]))
    ms = models(a.runs)
    work = a.keep or tempfile.mkdtemp(prefix="ferry-ftopt-")
    os.makedirs(work, exist_ok=True)
    acc = {name: {} for name, _, _ in arms}
    try:
        with cf.ThreadPoolExecutor(max_workers=max(1, a.procs)) as ex:
            futs = [ex.submit(run_arm, a, work, name, strat, sets, i, ck)
                    for i, ck in ms.items() for name, strat, sets in arms]
            for f in cf.as_completed(futs):
                arm, i, got = f.result()
                acc[arm].update(got)
                print(json.dumps({"arm": arm, "model": i, "test_acc": got}), flush=True)
        if a.torch:
            torch_arms(a, arms, ms, work, acc)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    summary = {"k": a.k, "models": len(ms), "draws": a.draws, "arms": {}}
    for prefix in ("", "torch:"):
        sc, plain = acc.get(prefix + "scratch"), acc.get(prefix + "plain")
        for name, _, sets in arms:
            if prefix + name not in acc:
                continue
            got = acc[prefix + name]
            seeds = sorted(got)
            row = {"set": sets, "test_acc": mean_se([got[s] for s in seeds])}
            if name != "scratch" and sc:
                row["minus_scratch"] = mean_se([got[s] - sc[s] for s in seeds])
            if name not in ("scratch", "plain") and plain:
                row["minus_plain"] = mean_se([got[s] - plain[s] for s in seeds])
            summary["arms"][prefix + name] = row
    print(json.dumps({"summary": summary}))


if __name__ == "__main__":
    main()
