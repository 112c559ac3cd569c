#!/usr/bin/python3
"""PyTorch peer of ferry's examples/{mlp,cnn}-fmnist.yaml, for bench/run.sh.

Same data (Fashion-MNIST, x/255 then (x-0.2860)/0.3530), same models, same
optimiser (SGD momentum 0.9, lr 0.05, batch 128). Prints one JSON line.
train_samples_per_s times the training loop only (no data load, no eval).

Run with Debian's /usr/bin/python3 (python3-torch); the caller sets
OPENBLAS_NUM_THREADS / OMP_NUM_THREADS = --threads, because
torch.set_num_threads() does not limit OpenBLAS, which nn.Linear uses here.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from idx import load_split  # noqa: E402  (numpy only: no torch import)
import torch
import torch.nn as nn
import torch.nn.functional as F

DATA_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.2860, 0.3530


def to_tensors(x, y):
    """x/255, then (x-0.2860)/0.3530, as float32 N,1,28,28 (the examples'
    normalisation); done in place so only one float copy exists at peak."""
    if x is None:
        return None, None
    x = x.astype(np.float32)
    x /= 255.0
    x -= MEAN
    x /= STD
    return torch.from_numpy(x).unsqueeze(1), torch.from_numpy(y)


def split_val(x, y, frac, seed):
    """Hold out a random `frac` of the training set (as ferry's data.val_frac
    does), so an epoch has as many samples as ferry's. Returns xtr, ytr, xva,
    yva (xva, yva None when frac is 0)."""
    if frac <= 0:
        return x, y, None, None
    if frac >= 1:
        raise SystemExit(f"--val-frac must be in [0, 1), found {frac}")
    perm = np.random.default_rng(seed + 7919).permutation(x.shape[0])
    nval = int(round(frac * x.shape[0]))
    va, tr = perm[:nval], perm[nval:]
    return x[tr], y[tr], x[va], y[va]


def load_data(args):
    """Train (minus the held-out part), validation (or None) and test tensors."""
    xtr, ytr = load_split(args.data_dir, "train")
    xtr, ytr, xva, yva = split_val(xtr, ytr, args.val_frac, args.seed)
    xte, yte = load_split(args.data_dir, "t10k")
    return to_tensors(xtr, ytr) + to_tensors(xva, yva) + to_tensors(xte, yte)


def make_model(name):
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(784, 256), nn.ReLU(),
            nn.Linear(256, 128), nn.ReLU(),
            nn.Linear(128, 10))
    if name == "cnn":
        return nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(32 * 7 * 7, 128), nn.ReLU(),
            nn.Linear(128, 10))
    raise ValueError(f"unknown model {name!r} (expected mlp or cnn)")


def check_thread_env(n):
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS"):
        val = os.environ.get(var)
        if val != str(n):
            print(f"torch_train.py: warning: --threads {n} but {var}="
                  f"{val if val is not None else '(unset)'}; "
                  f"set {var}={n} before starting python", file=sys.stderr)


@torch.no_grad()
def evaluate(model, x, y, batch=1000):
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], batch):
        correct += (model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum().item()
    model.train()
    return correct / x.shape[0]


def train_loop(model, opt, x, y, batch, epochs, steps, seed, sampler=None):
    """Train; returns (samples trained here, seconds in the loop, steps).

    Each epoch draws a fresh permutation (from `sampler` when given: the
    DistributedSampler shard of this rank). Batches are gathered by index from
    the in-memory tensors, no DataLoader, so both paths pay the same overhead.
    """
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    done_steps = samples = 0
    elapsed = 0.0
    for epoch in range(epochs):
        if sampler is None:
            perm = torch.randperm(n, generator=gen)
        else:
            sampler.set_epoch(epoch)
            perm = torch.tensor(list(sampler), dtype=torch.int64)
        t0 = time.perf_counter()
        for i in range(0, perm.shape[0], batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            samples += idx.shape[0]
            done_steps += 1
            if steps and done_steps >= steps:
                break
        elapsed += time.perf_counter() - t0
        if steps and done_steps >= steps:
            break
    return samples, elapsed, done_steps


def run_single(args):
    t_start = time.perf_counter()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    xtr, ytr, xva, yva, xte, yte = load_data(args)
    model = make_model(args.model)
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    samples, elapsed, steps = train_loop(model, opt, xtr, ytr, args.batch,
                                         args.epochs, args.steps, args.seed)
    acc = evaluate(model, xte, yte)
    val_acc = evaluate(model, xva, yva) if xva is not None else None
    return {
        "system": "pytorch", "model": args.model, "threads": args.threads,
        "processes": 1, "train_samples_per_s": samples / elapsed,
        "test_acc": acc, "val_acc": val_acc, "wall_s": time.perf_counter() - t_start,
        "train_s": elapsed, "epochs": args.epochs, "steps": steps,
        "batch": args.batch, "train_size": xtr.shape[0], "torch": torch.__version__,
    }


def ddp_worker(rank, world, args, port, queue):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP
    from torch.utils.data.distributed import DistributedSampler
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(args.seed)  # same initial weights on every rank
    xtr, ytr, _, _, xte, yte = load_data(args)
    model = DDP(make_model(args.model))
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    sampler = DistributedSampler(range(xtr.shape[0]), num_replicas=world,
                                 rank=rank, shuffle=True, seed=args.seed)
    dist.barrier()
    samples, elapsed, steps = train_loop(model, opt, xtr, ytr,
                                         args.batch // world, args.epochs,
                                         args.steps, args.seed, sampler)
    acc = evaluate(model.module, xte, yte) if rank == 0 else None
    queue.put((rank, samples, elapsed, steps, acc))
    dist.destroy_process_group()


def run_ddp(args):
    import socket
    import torch.multiprocessing as mp
    t_start = time.perf_counter()
    world = args.world
    if args.batch % world:
        raise SystemExit(f"--batch {args.batch} is not divisible by {world} processes")
    # Each worker runs 1 thread; the environment is inherited by the spawned
    # interpreters, so OpenBLAS in them must also be pinned to 1.
    os.environ["OPENBLAS_NUM_THREADS"] = "1"
    os.environ["OMP_NUM_THREADS"] = "1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.spawn(ddp_worker, args=(world, args, port, queue), nprocs=world, join=True)
    results = sorted(queue.get() for _ in range(world))
    total = sum(r[1] for r in results)
    slowest = max(r[2] for r in results)
    return {
        "system": "pytorch-ddp", "model": args.model, "threads": 1,
        "processes": world, "train_samples_per_s": total / slowest,
        "test_acc": results[0][4], "wall_s": time.perf_counter() - t_start,
        "train_s": slowest, "epochs": args.epochs, "steps": results[0][3],
        "batch": args.batch, "torch": torch.__version__,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", choices=("mlp", "cnn"), required=True)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=0,
                   help="stop after this many optimizer steps (0: run all epochs)")
    p.add_argument("--batch", type=int, default=128, help="global batch size")
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--ddp", action="store_true",
                   help="gloo data parallel: --world processes x 1 thread")
    p.add_argument("--world", type=int, default=int(os.environ.get("WORLD_SIZE", "2")),
                   help="DDP processes (default: $WORLD_SIZE, else 2)")
    p.add_argument("--val-frac", type=float, default=0.0,
                   help="hold out this fraction of the training set (examples use 0.1)")
    p.add_argument("--data-dir", default=DATA_DIR)
    p.add_argument("--json", action="store_true",
                   help="print only the JSON line (default also adds a summary on stderr)")
    args = p.parse_args()
    if args.ddp:
        out = run_ddp(args)  # sets the workers' thread variables itself
    else:
        check_thread_env(args.threads)
        out = run_single(args)
    if not args.json:
        print(f"{out['system']} {out['model']}: {out['train_samples_per_s']:.0f} "
              f"samples/s, test_acc {out['test_acc']:.4f}, wall {out['wall_s']:.1f} s",
              file=sys.stderr)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
