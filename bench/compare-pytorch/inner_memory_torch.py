#!/usr/bin/python3
"""bench-inner-memory's setting in plain PyTorch (1.13): unrolled
second-order MAML as `higher` does it, for k inner steps.

    bench/compare-pytorch/inner_memory_torch.py [--models sine,conv4]
        [--ks 1,5,10,25,50,100] [--sine-batch 25] [--conv4-batch 2] [--repeats 3]

Each (model, k) runs in a process of its own (this script with --child), so
its peak RSS (ru_maxrss) is its own.  The inner loop is differentiated with
torch.autograd.grad(create_graph=True), the graph of every inner step kept
until the task's query loss is backpropagated (per task: loss / T backward,
so only one task's graph is alive at a time, as in metastep's unbatched
step); the outer Adam update (lr 1e-3) is part of the timed step.  Models as
bench-inner-memory: the sine MLP 1-40-40-1 with ReLU (K = 10 support and 10
query points, inner lr 0.01; sine_torch.py's model) and Conv4 (F = 32, 5-way
1-shot, 15 queries per class, 28x28, inner lr 0.4; conv4_torch.py's model,
random images: time and memory do not depend on their values).  float32,
torch.set_num_threads(1).  Prints one line per setting; --json for JSON.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import conv4_torch  # noqa: E402
import sine_torch  # noqa: E402


def sine_setup(batch):
    gen = torch.Generator().manual_seed(7)
    params = sine_torch.init_params(1)
    xs, ys, xq, yq = sine_torch.sample(batch, 10, gen)
    tasks = [(xs[t], ys[t], xq[t], yq[t]) for t in range(batch)]
    loss = lambda p, x, y: sine_torch.mse(p, x, y)  # noqa: E731
    return params, tasks, loss, 0.01


def conv4_setup(batch):
    gen = torch.Generator().manual_seed(7)
    a = argparse.Namespace(meta_batch=batch, ways=5, shots=1, query=15, size=28)
    params = list(conv4_torch.conv4_init(32, 5, 28, gen).values())
    keys = list(conv4_torch.conv4_init(32, 5, 28, gen).keys())
    tasks = conv4_torch.random_tasks(a, gen)
    loss = lambda p, x, y: F.cross_entropy(conv4_torch.conv4(dict(zip(keys, p)), x), y)  # noqa
    return params, tasks, loss, 0.4


def child(model, k, batch, repeats):
    torch.set_num_threads(1)
    params, tasks, loss, lr = (sine_setup if model == "sine" else conv4_setup)(batch)
    opt = torch.optim.Adam(params, lr=1e-3)
    secs = []
    cost = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        opt.zero_grad()
        cost = 0.0
        for xs, ys, xq, yq in tasks:
            fast = params
            for _ in range(k):
                g = torch.autograd.grad(loss(fast, xs, ys), fast, create_graph=True)
                fast = [w - lr * gw for w, gw in zip(fast, g)]
            q = loss(fast, xq, yq) / len(tasks)
            q.backward()
            cost += q.item()
        opt.step()
        secs.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"model": model, "k": k, "seconds_per_step": statistics.median(secs),
                      "peak_rss_kib": rss, "cost": cost}))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="sine,conv4")
    ap.add_argument("--ks", default="1,5,10,25,50,100")
    ap.add_argument("--sine-batch", type=int, default=25)
    ap.add_argument("--conv4-batch", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", nargs=2, metavar=("MODEL", "K"))
    a = ap.parse_args()
    if a.child:
        model, k = a.child[0], int(a.child[1])
        child(model, k, a.sine_batch if model == "sine" else a.conv4_batch, a.repeats)
        return
    rows = []
    if not a.json:
        print(f"{'model':6} {'k':>5} {'s/step':>10} {'peak RSS MiB':>13}")
    for model in a.models.split(","):
        for k in map(int, a.ks.split(",")):
            out = subprocess.run([sys.executable, __file__, "--child", model, str(k),
                                  "--sine-batch", str(a.sine_batch), "--conv4-batch",
                                  str(a.conv4_batch), "--repeats", str(a.repeats)],
                                 capture_output=True, text=True)
            if out.returncode != 0:
                row = {"model": model, "k": k, "error": out.stderr.strip()[-300:] or
                       f"exit {out.returncode} (killed: out of memory?)"}
                print(f"{model:6} {k:5} failed: {row['error']}", flush=True)
            else:
                row = json.loads(out.stdout)
                if not a.json:
                    print(f"{model:6} {k:5} {row['seconds_per_step']:10.4f} "
                          f"{row['peak_rss_kib'] / 1024:13.1f}", flush=True)
            rows.append(row)
    if a.json:
        print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
