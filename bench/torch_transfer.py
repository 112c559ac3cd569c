#!/usr/bin/python3
"""PyTorch reference for ferry's transfer-learning protocol (Fashion-MNIST 0-4 -> 5-9).

Run with Debian's /usr/bin/python3 (python3-torch 1.13, CPU; no torchvision:
the IDX files are read with gzip + numpy, as in bench/torch_train.py).

PROTOCOL (what ferry runs; every choice that is not forced is written here)

Data
  Fashion-MNIST IDX files from /usr/share/datasets/fashion-mnist/*.gz.
  Inputs: x/255, then (x - 0.2860) / 0.3530, float32, shape N,1,28,28.
  Source task: TRAIN images with labels 0-4 (all 30,000), labels kept 0-4.
  Target task: labels 5-9, relabelled y-5 (0-4).
  Source test set: the 5,000 t10k images of classes 0-4.
  Target test set: the 5,000 t10k images of classes 5-9 (always all of them).

Model (PyTorch default init everywhere)
  trunk = conv(1->16, k5, pad2) relu maxpool2
          conv(16->32, k5, pad2) relu maxpool2
          flatten dense(1568->128) relu                  -> 128 features
  head  = dense(128->C), C = 5 for both tasks.

Pre-training (once; with --pretrain-per-seed once per seed s, with
--pretrain-seed + s, and seed s's jobs use that model: ferry's
transfer.pretrain_per_seed)
  torch.manual_seed(0) (--pretrain-seed), then build trunk and head (in that
  order: conv1, conv2, dense1, head). 3 epochs over the 30,000 source images,
  SGD momentum 0.9, lr 0.05, batch 128, no weight decay, no augmentation;
  the lr warms up linearly over the first 100 steps (--pretrain-warmup; step
  t < 100 uses 0.05 * (t + 1) / 100, the example file's
  train.schedule.warmup_steps), then stays constant. Each epoch is a fresh
  permutation (torch.Generator seeded 0, randperm per epoch) cut into
  batches; the last incomplete batch of an epoch is DROPPED (as ferry's
  train.shards does): 234 steps per epoch, 702 in all.
  Reported: its test accuracy on the 5,000 source test images.

Target subsets, per seed s and K (images per class)
  For each target class c in 5..9 (in that order): idx_c = the indices (into
  the 60,000-image train file) of the images labelled c, in file order;
  perm = np.random.default_rng(s).permutation(len(idx_c)) -- a FRESH
  generator seeded s for every class -- and the class's K images are
  idx_c[perm[:K]]. The training set is the concatenation over c (5K images).
  Consequence: for one seed the K=10 subset is a prefix of the K=50 one, which
  is a prefix of the K=200 one. --subsets-out FILE writes the chosen indices.
  ferry does NOT draw these same images: it holds out 5% of the target
  training images for validation first (per class, seed ^ 0x5eed) and draws K
  per class from the rest with its own generator (nn/data.c). Same K and seed
  therefore means a different 5K-image subset in the two programs, and at
  K=10 the subset alone moves test accuracy by several points. For a paired
  comparison, --subsets-in FILE takes the train-file indices per (seed, K)
  from a JSON file in the --subsets-out format (e.g. ferry's subsets, dumped
  with nn_data_split + nn_data_k_per_class); (seed, K) pairs missing from the
  file are an error. --subsets-from RUN_DIR reads them from a ferry run
  directly: each ferry transfer job writes the train-file rows of its draw to
  RUN_DIR/jobs/<id>/train_ids.txt. --pretrained-from RUN_DIR skips the
  pre-training and uses the ferry run's pre-trained model(s) instead (read
  with `ferry ckpt export`), so that only the transfer stage is compared.

Strategies (each: exactly --steps = 1000 optimizer steps, SGD momentum 0.9,
lr 0.01, no weight decay, no augmentation, cross-entropy mean over the batch)
  batch = min(32, 5K) (always 32 for K >= 7).
  Batches: passes over the 5K images; every pass is a fresh permutation from
  torch.Generator().manual_seed(s) (randperm(5K), one draw per pass), cut into
  floor(5K / batch) full batches; the incomplete remainder of a pass is
  DROPPED (as ferry does at an epoch end). K=10: 1 step per pass (32 of 50),
  K=50: 7 (224 of 250), K=200: 31 (992 of 1000). Passes continue until 1000
  steps are done. The same batch sequence is used by all three strategies
  for one (K, s).
  scratch          torch.manual_seed(s), fresh trunk + head(128->5), all layers
                   trained. (For s = 0 this is the same initial point the
                   pre-training started from; it is still an untrained model.)
  feature-extract  pre-trained trunk frozen; torch.manual_seed(s), fresh
                   head(128->5); only the head is trained. The trunk's features
                   of the 5K training and 5,000 test images are computed once
                   and the head is trained on the cached 128-vectors: the same
                   maths as a frozen trunk (no dropout/batch-norm in it).
  finetune         copy of the pre-trained trunk + torch.manual_seed(s), fresh
                   head(128->5); all layers trained at the same lr 0.01 (the
                   momentum buffers start at zero).
  Evaluation: accuracy on the 5,000 target test images after the last step.

Output
  stdout: JSON lines. First {"kind": "pretrain", ...} with its test_acc; then
  one {"kind": "job", "strategy", "K", "seed", "test_acc", "wall_s", ...} per
  (strategy, K, seed); last {"kind": "summary", ...} with, per strategy and K,
  mean and std (sample std, ddof=1; 0 for one seed) of test_acc over seeds,
  plus pretrain_test_acc and total_wall_s. A job's wall_s covers building the
  model (or computing the cached features), the training loop and the test
  evaluation; train_s is the loop alone. --json-out FILE writes all of it as
  one JSON document. A readable table goes to stderr.

Threads: --threads N sets torch.set_num_threads(N) and, when they are unset,
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS = N before torch is imported (nn.Linear
uses OpenBLAS here, which torch.set_num_threads does not limit); at N > 1 also
OMP_WAIT_POLICY=PASSIVE. A warning is printed when they are set to another N.
"""
import argparse
import copy
import json
import os
import sys
import time
import types

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idx import load_split  # noqa: E402  (numpy only: no torch import)

DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530
SOURCE_CLASSES = (0, 1, 2, 3, 4)
TARGET_CLASSES = (5, 6, 7, 8, 9)
STRATEGIES = ("scratch", "feature-extract", "finetune")

torch = nn = F = None  # imported in main(), after the thread variables are set


def mean_se(v):
    """{mean, se, n} of a list of numbers, rounded for JSON."""
    import statistics as st
    se = st.stdev(v) / len(v) ** 0.5 if len(v) > 1 else 0.0
    return {"mean": round(st.mean(v), 3), "se": round(se, 3), "n": len(v)}


def normalise(x):
    """uint8 N,28,28 -> float32 tensor N,1,28,28: x/255, then (x-mean)/std."""
    x = x.astype(np.float32)
    x /= 255.0
    x -= MEAN
    x /= STD
    return torch.from_numpy(x).unsqueeze(1)


def make_trunk():
    return nn.Sequential(
        nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 128), nn.ReLU())


def make_head(nclasses=5):
    return nn.Linear(128, nclasses)


def target_subset(ytrain, seed, k):
    """Indices into the train file: per target class (5..9 in order), a fresh
    np.random.default_rng(seed) permutation of that class's indices (file
    order), first k taken."""
    out = []
    for c in TARGET_CLASSES:
        idx_c = np.flatnonzero(ytrain == c)
        if k > idx_c.size:
            raise SystemExit(f"K={k} but class {c} has only {idx_c.size} training images")
        perm = np.random.default_rng(seed).permutation(idx_c.size)
        out.append(idx_c[perm[:k]])
    return np.concatenate(out)


def load_subsets(path, ytrain):
    """{(seed, K): indices} from a --subsets-out style JSON file; every subset
    must hold K images of each target class."""
    with open(path) as f:
        doc = json.load(f)
    out = {}
    for s in doc["subsets"]:
        idx = np.asarray(s["train_indices"], dtype=np.int64)
        counts = [int(np.sum(ytrain[idx] == c)) for c in TARGET_CLASSES]
        if counts != [s["K"]] * len(TARGET_CLASSES):
            raise SystemExit(f"{path}: subset seed {s['seed']} K={s['K']} has per-class "
                             f"counts {counts}, expected {s['K']} each")
        out[(int(s["seed"]), int(s["K"]))] = idx
    return out


def subsets_from_run(run_dir, ytrain, seeds, ks):
    """{(seed, K): indices} from a ferry run directory: every transfer job
    records its K-shot draw in jobs/<id>/train_ids.txt (train-file rows, one
    per line). All jobs of one (seed, K) must hold the same draw."""
    import glob
    out = {}
    for seed in seeds:
        for k in ks:
            files = sorted(glob.glob(os.path.join(run_dir, "jobs", f"*.k{k}.s{seed}", "train_ids.txt"))
                           + glob.glob(os.path.join(run_dir, "jobs", f"*.k{k}.s{seed}.lr*",
                                                    "train_ids.txt")))
            if not files:
                raise SystemExit(f"{run_dir}: no jobs/*.k{k}.s{seed}/train_ids.txt (run ferry first)")
            draws = [np.loadtxt(f, dtype=np.int64, comments="#", ndmin=1) for f in files]
            for f, d in zip(files[1:], draws[1:]):
                if not np.array_equal(d, draws[0]):
                    raise SystemExit(f"{f} and {files[0]} hold different draws for seed {seed}, K={k}")
            idx = draws[0]
            counts = [int(np.sum(ytrain[idx] == c)) for c in TARGET_CLASSES]
            if counts != [k] * len(TARGET_CLASSES):
                raise SystemExit(f"{files[0]}: per-class counts {counts}, expected {k} each")
            out[(seed, k)] = idx
    return out


FERRY_NAMES = {"trunk.conv1.W": "0.0.weight", "trunk.conv1.b": "0.0.bias",
               "trunk.conv2.W": "0.3.weight", "trunk.conv2.b": "0.3.bias",
               "trunk.dense1.W": "0.7.weight", "trunk.dense1.b": "0.7.bias",
               "head.main.dense1.W": "1.weight", "head.main.dense1.b": "1.bias"}


def ferry_pretrained(run_dir, seed, per_seed, ferry):
    """The pre-trained model (trunk + source head) of a ferry run: the final
    checkpoint of RUN_DIR/pretrain (or pretrain.s<seed> when ferry pre-trained
    per seed), exported with `ferry ckpt export` and loaded by tensor name."""
    import glob
    import re
    d = os.path.join(run_dir, f"pretrain.s{seed}" if per_seed else "pretrain")
    ckpts = glob.glob(os.path.join(d, "ckpt-*.ferry"))
    if not ckpts:
        raise SystemExit(f"{d}: no ckpt-*.ferry (run ferry first)")
    last = max(ckpts, key=lambda c: int(re.search(r"ckpt-(\d+)\.ferry$", c).group(1)))
    return ferry_model(last, ferry, len(SOURCE_CLASSES)), last


def ferry_model(ckpt, ferry, nclasses):
    """nn.Sequential(trunk, head) holding the trunk and main head of a ferry
    checkpoint of the protocol's CNN, read through `ferry ckpt export`."""
    import subprocess
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([ferry, "ckpt", "export", ckpt, tmp], check=True, stdout=subprocess.DEVNULL)
        with open(os.path.join(tmp, "manifest.json")) as f:
            man = json.load(f)
        state = {}
        for t in man["tensors"]:
            if t["name"] in FERRY_NAMES:
                a = np.fromfile(os.path.join(tmp, t["file"]), "<f4").reshape(t["shape"])
                state[FERRY_NAMES[t["name"]]] = torch.from_numpy(a.copy())
    model = nn.Sequential(make_trunk(), make_head(nclasses))
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise SystemExit(f"{ckpt}: no tensors for {sorted(missing)} (not the protocol's CNN?)")
    model.load_state_dict(state)
    return model


def batch_stream(n, batch, steps, seed):
    """Yield `steps` index tensors of size `batch`: passes over n items, each
    a fresh randperm from a generator seeded `seed`, incomplete tail dropped."""
    gen = torch.Generator().manual_seed(seed)
    per_pass = n // batch
    if per_pass < 1:
        raise ValueError(f"batch {batch} larger than the {n} training items")
    done = 0
    while done < steps:
        perm = torch.randperm(n, generator=gen)
        for i in range(per_pass):
            yield perm[i * batch:(i + 1) * batch]
            done += 1
            if done >= steps:
                return


def sgd_steps(model, params, x, y, batch, steps, seed, lr, momentum, warmup=0, penalty=None):
    """Train `params` of `model` (parameters, or param groups with their own
    lr) on (x, y) for `steps` steps; returns seconds. warmup > 0: linear
    warm-up, step t (0-based) uses lr * (t + 1) / warmup for t < warmup, as
    ferry's train.schedule.warmup_steps does. penalty: a function returning a
    term added to the loss (L2-SP)."""
    opt = torch.optim.SGD(params, lr=lr, momentum=momentum)
    for g in opt.param_groups:
        g["base_lr"] = g["lr"]
    model.train()
    t0 = time.perf_counter()
    for t, idx in enumerate(batch_stream(x.shape[0], batch, steps, seed)):
        if warmup > 0:
            for g in opt.param_groups:
                g["lr"] = g["base_lr"] * min(1.0, (t + 1) / warmup)
        opt.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        if penalty is not None:
            loss = loss + penalty()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0


def evaluate(model, x, y, batch=1000):
    with torch.no_grad():
        model.eval()
        correct = 0
        for i in range(0, x.shape[0], batch):
            correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
        model.train()
    return correct / x.shape[0]


def features(trunk, x, batch=1000):
    with torch.no_grad():
        trunk.eval()
        out = torch.cat([trunk(x[i:i + batch]) for i in range(0, x.shape[0], batch)])
        trunk.train()
    return out


def pretrain(args, xtr, ytr, xte, yte, seed):
    t0 = time.perf_counter()
    torch.manual_seed(seed)
    trunk = make_trunk()
    head = make_head(len(SOURCE_CLASSES))
    model = nn.Sequential(trunk, head)
    per_epoch = xtr.shape[0] // args.pretrain_batch
    steps = per_epoch * args.pretrain_epochs
    train_s = sgd_steps(model, model.parameters(), xtr, ytr, args.pretrain_batch, steps,
                        seed, args.pretrain_lr, args.momentum, args.pretrain_warmup)
    acc = evaluate(model, xte, yte)
    return trunk, {
        "kind": "pretrain", "test_acc": acc, "wall_s": time.perf_counter() - t0,
        "train_s": train_s, "epochs": args.pretrain_epochs, "steps": steps,
        "batch": args.pretrain_batch, "lr": args.pretrain_lr, "seed": seed,
        "warmup_steps": args.pretrain_warmup,
        "train_size": int(xtr.shape[0]), "test_size": int(xte.shape[0]),
    }


def run_job(strategy, k, seed, args, pre_trunk, xsub, ysub, xte, yte, init_seed=None):
    """One transfer job; batches from `seed`, fresh layers from torch.manual_seed
    of init_seed (default: seed)."""
    t0 = time.perf_counter()
    init = seed if init_seed is None else init_seed
    n = xsub.shape[0]
    batch = min(args.batch, n)
    common = dict(batch=batch, steps=args.steps, seed=seed, lr=args.lr,
                  momentum=args.momentum)
    if strategy == "scratch":
        torch.manual_seed(init)
        trunk = make_trunk()
        model = nn.Sequential(trunk, make_head())
        train_s = sgd_steps(model, model.parameters(), xsub, ysub, **common)
        acc = evaluate(model, xte, yte)
    elif strategy == "feature-extract":
        ftr = features(pre_trunk, xsub)
        fte = features(pre_trunk, xte)
        torch.manual_seed(init)
        head = make_head()
        train_s = sgd_steps(head, head.parameters(), ftr, ysub, **common)
        acc = evaluate(head, fte, yte)
    elif strategy == "finetune":
        trunk = copy.deepcopy(pre_trunk)
        for prm in trunk.parameters():
            prm.requires_grad_(True)  # the shared pre-trained trunk is frozen
        torch.manual_seed(init)
        # ferry's transfer.finetune.reinit_last, trunk_lr_mult and l2sp (when
        # args has them): the last k layers with parameters start afresh
        # (PyTorch's default init, as ferry's model.init: torch) and L2-SP
        # anchors only the layers that were loaded
        blocks = [mod for mod in trunk if any(True for _ in mod.parameters())]
        reinit = int(getattr(args, "ft_reinit_last", 0))
        if reinit >= len(blocks):
            raise ValueError(f"reinit_last {reinit}: the trunk has {len(blocks)} blocks")
        for mod in blocks[len(blocks) - reinit:]:
            mod.reset_parameters()
        head = make_head()
        model = nn.Sequential(trunk, head)
        mult = getattr(args, "ft_trunk_lr_mult", 1.0)
        alpha = getattr(args, "ft_l2sp", 0.0)
        params = model.parameters()
        if mult != 1.0:
            params = [{"params": list(trunk.parameters()), "lr": args.lr * mult},
                      {"params": list(head.parameters())}]
        penalty = None
        if alpha > 0:
            kept = [prm for mod in blocks[:len(blocks) - reinit] for prm in mod.parameters()]
            anchor = [prm.detach().clone() for prm in kept]
            penalty = lambda: 0.5 * alpha * sum(((prm - a) ** 2).sum()  # noqa: E731
                                                for prm, a in zip(kept, anchor))
        train_s = sgd_steps(model, params, xsub, ysub, penalty=penalty, **common)
        acc = evaluate(model, xte, yte)
    else:
        raise ValueError(strategy)
    return {
        "kind": "job", "strategy": strategy, "K": k, "seed": seed, "test_acc": acc,
        "wall_s": time.perf_counter() - t0, "train_s": train_s, "steps": args.steps,
        "batch": batch, "train_size": int(n), "test_size": int(xte.shape[0]),
    }


def summarise(jobs, strategies, ks):
    table = {}
    for s in strategies:
        table[s] = {}
        for k in ks:
            accs = [j["test_acc"] for j in jobs if j["strategy"] == s and j["K"] == k]
            if not accs:
                continue
            a = np.array(accs)
            table[s][str(k)] = {
                "mean": float(a.mean()),
                "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
                "n": int(a.size), "test_acc": accs,
                "seeds": [j["seed"] for j in jobs if j["strategy"] == s and j["K"] == k],
            }
    return table


def int_list(text):
    try:
        vals = [int(v) for v in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 0,1,2, found {text!r}")
    if not vals:
        raise argparse.ArgumentTypeError("empty list")
    return vals


def str_list(text):
    vals = [v for v in text.replace(",", " ").split()]
    bad = [v for v in vals if v not in STRATEGIES]
    if bad or not vals:
        raise argparse.ArgumentTypeError(
            f"unknown strategy {bad}; choose from {', '.join(STRATEGIES)}")
    return vals


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                epilog="The protocol is in the module docstring.")
    p.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="default 0,1,2")
    p.add_argument("--ks", type=int_list, default=[10, 50, 200],
                   help="images per target class, default 10,50,200")
    p.add_argument("--steps", type=int, default=1000, help="optimizer steps per strategy")
    p.add_argument("--strategies", type=str_list, default=list(STRATEGIES),
                   help="default scratch,feature-extract,finetune")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json-out", metavar="FILE", help="write everything as one JSON document")
    p.add_argument("--subsets-out", metavar="FILE",
                   help="write the chosen train-file indices per (seed, K) as JSON")
    p.add_argument("--subsets-in", metavar="FILE",
                   help="read the train-file indices per (seed, K) from JSON (the --subsets-out "
                        "format) instead of drawing them, e.g. ferry's subsets for a paired run")
    p.add_argument("--subsets-from", metavar="RUN_DIR",
                   help="use the K-shot draws a ferry run's jobs trained on "
                        "(RUN_DIR/jobs/<id>/train_ids.txt): the same images, for a paired run")
    p.add_argument("--pretrained-from", metavar="RUN_DIR",
                   help="no pre-training: use the pre-trained model(s) of a ferry run (its final "
                        "pretrain/ checkpoint, or pretrain.s<seed>/ with --pretrain-per-seed), "
                        "read with `ferry ckpt export`; isolates the transfer stage")
    p.add_argument("--ferry", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "..", "build", "ferry"),
                   help="ferry binary for --pretrained-from (default: build/ferry)")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--batch", type=int, default=32, help="target batch (min'd with 5K)")
    p.add_argument("--lr", type=float, default=0.01, help="target lr")
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--ft-reinit-last", type=int, default=0, metavar="K",
                   help="finetune: re-initialise the trunk's last K layers with parameters "
                        "(ferry's transfer.finetune.reinit_last); default 0")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--pretrain-lr", type=float, default=0.05)
    p.add_argument("--pretrain-batch", type=int, default=128)
    p.add_argument("--pretrain-warmup", type=int, default=100, metavar="STEPS",
                   help="linear lr warm-up over the first STEPS pre-training steps "
                        "(ferry: train.schedule.warmup_steps); default 100 as in "
                        "examples/transfer-fmnist.yaml, 0 = constant lr")
    p.add_argument("--pretrain-seed", type=int, default=0)
    p.add_argument("--pretrain-per-seed", action="store_true",
                   help="pre-train once per seed s (with --pretrain-seed + s); seed s's jobs "
                        "use that model (ferry's transfer.pretrain_per_seed)")
    args = p.parse_args(argv)
    if args.steps < 1 or args.threads < 1 or args.batch < 1 or args.pretrain_epochs < 1:
        p.error("--steps, --threads, --batch and --pretrain-epochs must be >= 1")
    return args


def set_thread_env(n):
    """Must run before `import torch` (OpenBLAS reads its variable at load)."""
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        val = os.environ.get(var)
        if val is None:
            os.environ[var] = str(n)
        elif val != str(n):
            print(f"torch_transfer.py: warning: --threads {n} but {var}={val}",
                  file=sys.stderr)
    if n > 1:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def init_torch(threads):
    """Imports torch with `threads` BLAS/OpenMP threads (module globals torch,
    nn, F stay None until this runs). For this script and its importers."""
    global torch, nn, F
    set_thread_env(threads)
    import torch as _torch
    import torch.nn as _nn
    import torch.nn.functional as _F
    torch, nn, F = _torch, _nn, _F
    torch.set_num_threads(threads)


def protocol_data(data_dir):
    """The protocol's data: the raw train split (uint8 images, labels; K-shot
    draws index it), the source's train and test tensors (classes 0-4) and
    the target's test tensors (classes 5-9, relabelled 0-4)."""
    xtr_raw, ytr_raw = load_split(data_dir, "train")
    xte_raw, yte_raw = load_split(data_dir, "t10k")
    src_tr = np.isin(ytr_raw, SOURCE_CLASSES)
    src_te = np.isin(yte_raw, SOURCE_CLASSES)
    tgt_te = np.isin(yte_raw, TARGET_CLASSES)
    return types.SimpleNamespace(
        xtr_raw=xtr_raw, ytr_raw=ytr_raw,
        xs_tr=normalise(xtr_raw[src_tr]), ys_tr=torch.from_numpy(ytr_raw[src_tr]),
        xs_te=normalise(xte_raw[src_te]), ys_te=torch.from_numpy(yte_raw[src_te]),
        xt_te=normalise(xte_raw[tgt_te]), yt_te=torch.from_numpy(yte_raw[tgt_te] - TARGET_CLASSES[0]))


def target_rows(d, idx):
    """Tensors of the target training rows idx of the train file (relabelled 0-4)."""
    return normalise(d.xtr_raw[idx]), torch.from_numpy(d.ytr_raw[idx] - TARGET_CLASSES[0])


def main(argv=None):
    t_start = time.perf_counter()
    args = parse_args(argv)
    init_torch(args.threads)
    d = protocol_data(args.data_dir)
    ytr_raw = d.ytr_raw
    xs_tr, ys_tr, xs_te, ys_te = d.xs_tr, d.ys_tr, d.xs_te, d.ys_te
    xt_te, yt_te = d.xt_te, d.yt_te

    # seed -> (trunk, pretrain record): one shared model, or one per seed
    pre_seeds = ([args.pretrain_seed + s for s in args.seeds] if args.pretrain_per_seed
                 else [args.pretrain_seed])
    pres = []
    for i, ps in enumerate(pre_seeds):
        if args.pretrained_from:
            t0 = time.perf_counter()
            model, path = ferry_pretrained(args.pretrained_from, args.seeds[i], args.pretrain_per_seed,
                                           args.ferry)
            trunk = model[0]
            rec = {"kind": "pretrain", "test_acc": evaluate(model, xs_te, ys_te), "seed": ps,
                   "from": path, "wall_s": time.perf_counter() - t0, "train_s": 0.0}
        else:
            trunk, rec = pretrain(args, xs_tr, ys_tr, xs_te, ys_te, ps)
        for prm in trunk.parameters():
            prm.requires_grad_(False)  # frozen for feature extraction; finetune copies re-enable
        print(json.dumps(rec), flush=True)
        print(f"pretrain seed {ps}: test_acc {rec['test_acc']:.4f} on classes 0-4, "
              f"{rec['train_s']:.1f} s", file=sys.stderr)
        pres.append((trunk, rec))
    if args.pretrain_per_seed:
        trunk_of = {s: pres[i][0] for i, s in enumerate(args.seeds)}
    else:
        trunk_of = {s: pres[0][0] for s in args.seeds}
    pre = pres[0][1]
    pre_accs = [r["test_acc"] for _, r in pres]
    del xs_tr, ys_tr, xs_te, ys_te  # the source data is no longer needed
    d.xs_tr = d.ys_tr = d.xs_te = d.ys_te = None

    if args.subsets_in and args.subsets_from:
        raise SystemExit("give --subsets-in or --subsets-from, not both")
    given = load_subsets(args.subsets_in, ytr_raw) if args.subsets_in else None
    if args.subsets_from:
        given = subsets_from_run(args.subsets_from, ytr_raw, args.seeds, args.ks)
    jobs, subsets = [], []
    for k in args.ks:
        for seed in args.seeds:
            if given is None:
                idx = target_subset(ytr_raw, seed, k)
            elif (seed, k) in given:
                idx = given[(seed, k)]
            else:
                raise SystemExit(f"{args.subsets_in or args.subsets_from}: no subset for seed "
                                 f"{seed}, K={k}")
            subsets.append({"seed": seed, "K": k, "train_indices": idx.tolist()})
            xsub, ysub = target_rows(d, idx)
            for strategy in args.strategies:
                job = run_job(strategy, k, seed, args, trunk_of[seed], xsub, ysub, xt_te, yt_te)
                jobs.append(job)
                print(json.dumps(job), flush=True)
                print(f"{strategy:>15} K={k:<4d} seed={seed}: test_acc "
                      f"{job['test_acc']:.4f}  {job['wall_s']:.1f} s", file=sys.stderr)

    table = summarise(jobs, args.strategies, args.ks)
    summary = {
        "kind": "summary", "system": "pytorch", "torch": torch.__version__,
        "threads": args.threads, "pretrain_test_acc": float(np.mean(pre_accs)),
        "pretrain_test_accs": pre_accs,
        "results": table, "total_wall_s": time.perf_counter() - t_start,
        "config": {
            "seeds": args.seeds, "ks": args.ks, "steps": args.steps,
            "strategies": args.strategies, "batch": args.batch, "lr": args.lr,
            "momentum": args.momentum, "pretrain_epochs": args.pretrain_epochs,
            "pretrain_lr": args.pretrain_lr, "pretrain_batch": args.pretrain_batch,
            "pretrain_warmup": args.pretrain_warmup,
            "pretrain_seed": args.pretrain_seed, "pretrain_per_seed": args.pretrain_per_seed,
            "source_classes": list(SOURCE_CLASSES),
            "target_classes": list(TARGET_CLASSES), "mean": MEAN, "std": STD,
            "subsets_in": args.subsets_in, "subsets_from": args.subsets_from,
            "pretrained_from": args.pretrained_from,
        },
    }
    print(json.dumps(summary), flush=True)

    print(f"\n{'strategy':>15} " + " ".join(f"{'K=' + str(k):>17}" for k in args.ks),
          file=sys.stderr)
    for s in args.strategies:
        cells = []
        for k in args.ks:
            c = table[s].get(str(k))
            cells.append(f"{c['mean']:.4f} ± {c['std']:.4f}" if c else "-")
        print(f"{s:>15} " + " ".join(f"{c:>17}" for c in cells), file=sys.stderr)
    print(f"pretrain test_acc {' '.join(f'{a:.4f}' for a in pre_accs)}; total {summary['total_wall_s']:.1f} s",
          file=sys.stderr)

    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump({"pretrain": pre, "pretrains": [r for _, r in pres], "jobs": jobs,
                       "summary": summary}, f, indent=1)
            f.write("\n")
    if args.subsets_out:
        with open(args.subsets_out, "w") as f:
            json.dump({"protocol": "per target class c in 5..9: idx_c = train-file indices "
                                   "labelled c in file order; "
                                   "idx_c[np.random.default_rng(seed).permutation(len(idx_c))[:K]]",
                       "subsets": subsets}, f)
            f.write("\n")


if __name__ == "__main__":
    main()
