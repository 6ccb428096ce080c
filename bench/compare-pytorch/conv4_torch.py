#!/usr/bin/python3
"""bench-conv4's setting in plain PyTorch (1.13), for comparison.

Conv4 (the MAML paper's: 4 blocks of conv 3x3 with F filters, stride 1,
padding 1; batch norm in training mode with no running statistics; ReLU;
max-pool 2x2), then a linear layer to the ways; softmax cross-entropy on the
support set (inner) and the query set (outer); float32; written functionally
(weights are plain tensors, F.conv2d / F.batch_norm / F.max_pool2d).

  maml    second order: torch.autograd.grad(create_graph=True) in the inner
          loop, then backward through it from the query loss.
  fomaml  first order: adapted weights detached, the meta-gradient is the
          query-loss gradient at the adapted weights.

The meta step loops over the tasks (metastep's unbatched mode), averages the
task losses, and includes the outer Adam update (lr 1e-3); inner lr 0.4.

--time (default): seconds per meta step on random images, as bench-conv4:
one warm-up step, N calibrated to about --target seconds, median of
--repeats; torch.set_num_threads(--threads).  JSON on stdout with the peak
RSS (ru_maxrss).

--learning: meta-train on Fashion-MNIST (Debian's dataset-fashion-mnist, IDX
files) for --meta-steps steps on the training images of classes 0,2,4,6,8,
then report the query accuracy of --eval-tasks episodes drawn from the test
images of classes 1,3,5,7,9 after 0, 1 and 10 adaptation steps (inner lr,
plain gradient descent), with a 95% confidence interval (1.96 standard
errors over episodes): the disjoint split metastep's images task uses.
"""
import argparse
import gzip
import json
import math
import os
import resource
import statistics
import struct
import time

import torch
import torch.nn.functional as F

FASHION = "/usr/share/datasets/fashion-mnist"


def conv4_init(filters, ways, size, gen):
    params = {}
    cin = 1
    for b in range(1, 5):
        a = math.sqrt(6.0 / (cin * 9 + filters * 9))
        params[f"block{b}/conv/w"] = (torch.rand(filters, cin, 3, 3, generator=gen) * 2 - 1) * a
        params[f"block{b}/conv/b"] = torch.zeros(filters)
        params[f"block{b}/bn/gamma"] = torch.ones(filters)
        params[f"block{b}/bn/beta"] = torch.zeros(filters)
        cin = filters
    s = size
    for _ in range(4):
        s //= 2
    feat = filters * s * s
    a = math.sqrt(6.0 / (feat + ways))
    params["head/w"] = (torch.rand(feat, ways, generator=gen) * 2 - 1) * a
    params["head/b"] = torch.zeros(ways)
    for p in params.values():
        p.requires_grad_(True)
    return params


def conv4(p, x):
    h = x
    for b in range(1, 5):
        h = F.conv2d(h, p[f"block{b}/conv/w"], p[f"block{b}/conv/b"], stride=1, padding=1)
        h = F.batch_norm(h, None, None, p[f"block{b}/bn/gamma"], p[f"block{b}/bn/beta"],
                         training=True, eps=1e-5)
        h = F.max_pool2d(F.relu(h), 2, 2)
    return h.flatten(1) @ p["head/w"] + p["head/b"]


def adapt(p, xs, ys, steps, lr, second_order):
    for _ in range(steps):
        loss = F.cross_entropy(conv4(p, xs), ys)
        grads = torch.autograd.grad(loss, list(p.values()), create_graph=second_order)
        p = {k: (v - lr * g if second_order else (v - lr * g).detach().requires_grad_(True))
             for (k, v), g in zip(p.items(), grads)}
    return p


def meta_step(params, opt, tasks, inner_steps, lr, second_order):
    opt.zero_grad()
    total = 0.0
    for xs, ys, xq, yq in tasks:
        fast = adapt(params, xs, ys, inner_steps, lr, second_order)
        loss = F.cross_entropy(conv4(fast, xq), yq) / len(tasks)
        if second_order:
            loss.backward()
        else:
            grads = torch.autograd.grad(loss, list(fast.values()))
            for p, g in zip(params.values(), grads):
                p.grad = g if p.grad is None else p.grad + g
        total += loss.item()
    opt.step()
    return total


def random_tasks(a, gen):
    tasks = []
    for _ in range(a.meta_batch):
        ns, nq = a.ways * a.shots, a.ways * a.query
        tasks.append((torch.rand(ns, 1, a.size, a.size, generator=gen),
                      torch.arange(ns) % a.ways,
                      torch.rand(nq, 1, a.size, a.size, generator=gen),
                      torch.arange(nq) % a.ways))
    return tasks


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    t = torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8)
    return t.reshape(dims)


def fashion(split, classes):
    prefix = "train" if split == "train" else "t10k"
    x = read_idx(os.path.join(FASHION, f"{prefix}-images-idx3-ubyte.gz")).float() / 255.0
    y = read_idx(os.path.join(FASHION, f"{prefix}-labels-idx1-ubyte.gz")).long()
    return {c: x[y == c] for c in classes}


def episode(pool, a, gen):
    classes = list(pool.keys())
    pick = torch.randperm(len(classes), generator=gen)[:a.ways].tolist()
    xs, ys, xq, yq = [], [], [], []
    for label, ci in enumerate(pick):
        imgs = pool[classes[ci]]
        idx = torch.randperm(len(imgs), generator=gen)[:a.shots + a.query]
        xs.append(imgs[idx[:a.shots]])
        xq.append(imgs[idx[a.shots:]])
        ys += [label] * a.shots
        yq += [label] * a.query
    return (torch.cat(xs).unsqueeze(1), torch.tensor(ys), torch.cat(xq).unsqueeze(1),
            torch.tensor(yq))


def evaluate(params, pool, a, gen):
    acc = {0: [], 1: [], 10: []}
    for _ in range(a.eval_tasks):
        xs, ys, xq, yq = episode(pool, a, gen)
        p = {k: v.detach().requires_grad_(True) for k, v in params.items()}
        done = 0
        for steps in (0, 1, 10):
            p = adapt(p, xs, ys, steps - done, a.inner_lr, False)
            done = steps
            with torch.no_grad():
                acc[steps].append((conv4(p, xq).argmax(1) == yq).float().mean().item())
    return {str(s): (statistics.mean(v), 1.96 * statistics.stdev(v) / math.sqrt(len(v)))
            for s, v in acc.items()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algo", choices=("maml", "fomaml"), default="maml")
    ap.add_argument("--ways", type=int, default=5)
    ap.add_argument("--shots", type=int, default=1)
    ap.add_argument("--query", type=int, default=15)
    ap.add_argument("--filters", type=int, default=32)
    ap.add_argument("--meta-batch", type=int, default=4)
    ap.add_argument("--size", type=int, default=28)
    ap.add_argument("--inner-steps", type=int, default=1)
    ap.add_argument("--inner-lr", type=float, default=0.4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--target", type=float, default=1.0)
    ap.add_argument("--learning", action="store_true")
    ap.add_argument("--meta-steps", type=int, default=600)
    ap.add_argument("--eval-tasks", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    gen = torch.Generator().manual_seed(a.seed)
    params = conv4_init(a.filters, a.ways, a.size, gen)
    opt = torch.optim.Adam(params.values(), lr=1e-3)
    second = a.algo == "maml"
    out = {"program": "conv4_torch.py", "torch": torch.__version__, "algo": a.algo,
           "threads": a.threads, "setting": vars(a)}
    if a.learning:
        train = fashion("train", (0, 2, 4, 6, 8))
        test = fashion("test", (1, 3, 5, 7, 9))
        t0 = time.perf_counter()
        for _ in range(a.meta_steps):
            tasks = [episode(train, a, gen) for _ in range(a.meta_batch)]
            meta_step(params, opt, tasks, a.inner_steps, a.inner_lr, second)
        out["train_seconds"] = time.perf_counter() - t0
        res = evaluate(params, test, a, torch.Generator().manual_seed(12345))
        out["accuracy_after_steps"] = {k: v[0] for k, v in res.items()}
        out["accuracy_ci95"] = {k: v[1] for k, v in res.items()}
    else:
        tasks = random_tasks(a, gen)
        meta_step(params, opt, tasks, a.inner_steps, a.inner_lr, second)
        t0 = time.perf_counter()
        meta_step(params, opt, tasks, a.inner_steps, a.inner_lr, second)
        n = max(1, math.ceil(a.target / max(time.perf_counter() - t0, 1e-6)))
        secs = []
        for _ in range(a.repeats):
            t0 = time.perf_counter()
            for _ in range(n):
                meta_step(params, opt, tasks, a.inner_steps, a.inner_lr, second)
            secs.append((time.perf_counter() - t0) / n)
        out["seconds_per_step"] = statistics.median(secs)
        out["n"] = n
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps(out))


if __name__ == "__main__":
    main()
