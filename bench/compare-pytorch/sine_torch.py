#!/usr/bin/python3
"""The sine setting of bench-meta in plain PyTorch (1.13), for comparison.

Finn et al.'s sinusoid regression: y = A sin(x - phi), A ~ U[0.1, 5],
phi ~ U[0, pi], x ~ U[-5, 5]; 25 tasks per meta-batch, K = 10 support and
10 query points; a functional MLP 1-40-40-1 with ReLU (weights are plain
tensors, no nn.Module), MSE; inner gradient descent at lr 0.01; the outer
update is torch.optim.Adam at lr 1e-3 and is part of every timed step.

  maml     second order: torch.autograd.grad(create_graph=True) in the inner
           loop, backward through it from the mean query loss.
  fomaml   first order: inner gradients with create_graph=False, adapted
           weights detached; the meta-gradient is the query-loss gradient at
           the adapted weights, averaged over tasks.
  reptile  as Ivy's reptile_step: the support-loss gradients at every inner
           step and at the final weights, averaged over steps + 1, divided by
           the inner lr, averaged over tasks.

Two versions of each: `loop`, a Python loop over the tasks, and `batched`,
every task at once with per-task weights replicated on a leading task axis
(Ivy's batched mode; torch.func/vmap is not in 1.13, so the layers are
torch.baddbmm over that axis).  The inner cost of the batched version is
the sum over tasks of the per-task MSE, so every task's copy gets exactly its
own gradient (Ivy scales the mean-over-tasks gradient by the task count).

Timing: a handful of meta-batches is sampled before timing and cycled
through; per configuration N steps are calibrated so a repeat takes about
--target seconds, and the median of --repeats repeats is reported (wall
clock and process CPU time).  Threads: torch.set_num_threads(--threads),
1 by default.  Output: JSON on stdout, with the peak RSS of the process
(resource.getrusage ru_maxrss).  --only ALGO:STEPS:MODE runs one
configuration so that the peak RSS is that configuration's own.

--learning: meta-train MAML (1 inner step) for --meta-steps steps with fresh
tasks every step, then report the held-out query MSE of 100 fresh tasks
after 0, 1 and 10 adaptation steps.
"""
import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time

import torch

META_BATCH = 25
K = 10
HIDDEN = 40
INNER_LR = 0.01
OUTER_LR = 1e-3
NBATCHES = 8
ALGOS = ("maml", "fomaml", "reptile")
MODES = ("loop", "batched")


# ------------------------------------------------------------------ data

def sample(num_tasks, k, gen):
    """A meta-batch: support/query x and y of shape (T, k, 1)."""
    amp = torch.empty(num_tasks, 1, 1).uniform_(0.1, 5.0, generator=gen)
    phase = torch.empty(num_tasks, 1, 1).uniform_(0.0, math.pi, generator=gen)
    xs = torch.empty(num_tasks, k, 1).uniform_(-5.0, 5.0, generator=gen)
    xq = torch.empty(num_tasks, k, 1).uniform_(-5.0, 5.0, generator=gen)
    return (xs, amp * torch.sin(xs - phase), xq, amp * torch.sin(xq - phase))


def init_params(seed):
    """[w1, b1, w2, b2, w3, b3], w of shape (in, out); nn.Linear's default
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    gen = torch.Generator().manual_seed(seed)
    dims = (1, HIDDEN, HIDDEN, 1)
    params = []
    for i in range(3):
        bound = 1.0 / math.sqrt(dims[i])
        params.append(torch.empty(dims[i], dims[i + 1]).uniform_(-bound, bound, generator=gen))
        params.append(torch.empty(dims[i + 1]).uniform_(-bound, bound, generator=gen))
    return [p.requires_grad_() for p in params]


# ----------------------------------------------------------------- model

def forward(p, x):
    """One task: x (k, 1), weights (in, out), biases (out,)."""
    h = torch.relu(torch.addmm(p[1], x, p[0]))
    h = torch.relu(torch.addmm(p[3], h, p[2]))
    return torch.addmm(p[5], h, p[4])


def forward_b(p, x):
    """All tasks: x (T, k, 1), weights (T, in, out), biases (T, out)."""
    h = torch.relu(torch.baddbmm(p[1].unsqueeze(1), x, p[0]))
    h = torch.relu(torch.baddbmm(p[3].unsqueeze(1), h, p[2]))
    return torch.baddbmm(p[5].unsqueeze(1), h, p[4])


def mse(p, x, y):
    return ((forward(p, x) - y) ** 2).mean()


def mse_b(p, x, y):
    """Per-task MSE of every task, shape (T,)."""
    return ((forward_b(p, x) - y) ** 2).mean(dim=(1, 2))


def replicate(params, t):
    """Per-task copies on a leading task axis (a view; autograd sums back)."""
    return [p.unsqueeze(0).expand(t, *p.shape) for p in params]


# ------------------------------------------------------------ meta steps
# Each returns the meta-training cost (mean query loss, or for Reptile the
# mean support loss across steps) and leaves the meta-gradient in p.grad.

def maml_loop(params, batch, steps):
    xs, ys, xq, yq = batch
    total = 0.0
    for t in range(xs.shape[0]):
        fast = params
        for _ in range(steps):
            g = torch.autograd.grad(mse(fast, xs[t], ys[t]), fast, create_graph=True)
            fast = [w - INNER_LR * gw for w, gw in zip(fast, g)]
        total = total + mse(fast, xq[t], yq[t])
    cost = total / xs.shape[0]
    grads = torch.autograd.grad(cost, params)
    for p, g in zip(params, grads):
        p.grad = g
    return cost.item()


def maml_batched(params, batch, steps):
    xs, ys, xq, yq = batch
    fast = replicate(params, xs.shape[0])
    for _ in range(steps):
        g = torch.autograd.grad(mse_b(fast, xs, ys).sum(), fast, create_graph=True)
        fast = [w - INNER_LR * gw for w, gw in zip(fast, g)]
    cost = mse_b(fast, xq, yq).mean()
    grads = torch.autograd.grad(cost, params)
    for p, g in zip(params, grads):
        p.grad = g
    return cost.item()


def fomaml_loop(params, batch, steps):
    xs, ys, xq, yq = batch
    n = xs.shape[0]
    acc = [torch.zeros_like(p) for p in params]
    total = 0.0
    for t in range(n):
        fast = [p.detach() for p in params]
        for _ in range(steps):
            fast = [w.requires_grad_() for w in fast]
            g = torch.autograd.grad(mse(fast, xs[t], ys[t]), fast)
            fast = [(w - INNER_LR * gw).detach() for w, gw in zip(fast, g)]
        fast = [w.requires_grad_() for w in fast]
        q = mse(fast, xq[t], yq[t])
        for a, gw in zip(acc, torch.autograd.grad(q, fast)):
            a.add_(gw)
        total += q.item()
    for p, a in zip(params, acc):
        p.grad = a.div_(n)
    return total / n


def fomaml_batched(params, batch, steps):
    xs, ys, xq, yq = batch
    fast = [w.detach() for w in replicate(params, xs.shape[0])]
    for _ in range(steps):
        fast = [w.requires_grad_() for w in fast]
        g = torch.autograd.grad(mse_b(fast, xs, ys).sum(), fast)
        fast = [(w - INNER_LR * gw).detach() for w, gw in zip(fast, g)]
    fast = [w.requires_grad_() for w in fast]
    q = mse_b(fast, xq, yq)
    grads = torch.autograd.grad(q.sum(), fast)
    for p, g in zip(params, grads):
        p.grad = g.mean(dim=0)
    return q.mean().item()


def reptile_loop(params, batch, steps):
    xs, ys, _, _ = batch
    n = xs.shape[0]
    acc = [torch.zeros_like(p) for p in params]
    total = 0.0
    for t in range(n):
        fast = [p.detach() for p in params]
        for i in range(steps + 1):
            fast = [w.requires_grad_() for w in fast]
            c = mse(fast, xs[t], ys[t])
            g = torch.autograd.grad(c, fast)
            total += c.item()
            for a, gw in zip(acc, g):
                a.add_(gw)
            if i < steps:
                fast = [(w - INNER_LR * gw).detach() for w, gw in zip(fast, g)]
    for p, a in zip(params, acc):
        p.grad = a.div_(n * (steps + 1) * INNER_LR)
    return total / (n * (steps + 1))


def reptile_batched(params, batch, steps):
    xs, ys, _, _ = batch
    n = xs.shape[0]
    fast = [w.detach() for w in replicate(params, n)]
    acc = None
    total = 0.0
    for i in range(steps + 1):
        fast = [w.requires_grad_() for w in fast]
        c = mse_b(fast, xs, ys)
        g = torch.autograd.grad(c.sum(), fast)
        total += c.mean().item()
        acc = list(g) if acc is None else [a + gw for a, gw in zip(acc, g)]
        if i < steps:
            fast = [(w - INNER_LR * gw).detach() for w, gw in zip(fast, g)]
    for p, a in zip(params, acc):
        p.grad = a.mean(dim=0) / ((steps + 1) * INNER_LR)
    return total / (steps + 1)


STEP_FNS = {
    ("maml", "loop"): maml_loop, ("maml", "batched"): maml_batched,
    ("fomaml", "loop"): fomaml_loop, ("fomaml", "batched"): fomaml_batched,
    ("reptile", "loop"): reptile_loop, ("reptile", "batched"): reptile_batched,
}


class Trainer:
    """Shared variables, their Adam, and one meta-step (meta step + Adam)."""

    def __init__(self, algo, mode, steps, seed=0):
        self.params = init_params(seed)
        self.opt = torch.optim.Adam(self.params, lr=OUTER_LR)
        self.fn = STEP_FNS[(algo, mode)]
        self.steps = steps
        self.cost = float("nan")

    def step(self, batch):
        self.cost = self.fn(self.params, batch, self.steps)
        self.opt.step()


# ---------------------------------------------------------------- timing

def bench(algo, steps, mode, batches, repeats, target):
    tr = Trainer(algo, mode, steps)
    done = 0

    def run(n):
        nonlocal done
        for _ in range(n):
            tr.step(batches[done % len(batches)])
            done += 1

    run(2)  # warm-up
    n = 1
    while True:
        t0 = time.perf_counter()
        run(n)
        t = time.perf_counter() - t0
        if t >= 0.2 * target or n >= 1 << 20:
            n = max(1, math.ceil(target / max(t / n, 1e-9)))
            break
        n *= 4
    walls, cpus = [], []
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        run(n)
        walls.append(time.perf_counter() - w0)
        cpus.append(time.process_time() - c0)
    return {"algo": algo, "inner_steps": steps, "mode": mode, "ok": True,
            "steps_per_s": n / statistics.median(walls),
            "cpu_steps_per_s": n / statistics.median(cpus), "n": n,
            "repeat_seconds": [round(w, 4) for w in walls], "last_cost": tr.cost}


# -------------------------------------------------------------- learning

def heldout(params, num_tasks=100, k=K, seed=0x5eed):
    """Query MSE of fresh tasks after 0, 1 and 10 steps of per-task gradient
    descent at the inner lr (all tasks at once; per-task gradients)."""
    gen = torch.Generator().manual_seed(seed)
    xs, ys, xq, yq = sample(num_tasks, k, gen)
    fast = [w.detach().clone() for w in replicate(params, num_tasks)]
    out = {}
    for s in range(11):
        if s in (0, 1, 10):
            with torch.no_grad():
                out[str(s)] = mse_b(fast, xq, yq).mean().item()
        if s < 10:
            fast = [w.requires_grad_() for w in fast]
            g = torch.autograd.grad(mse_b(fast, xs, ys).sum(), fast)
            fast = [(w - INNER_LR * gw).detach() for w, gw in zip(fast, g)]
    return out


def learning(meta_steps, mode, seed):
    tr = Trainer("maml", mode, 1, seed)
    gen = torch.Generator().manual_seed(1000 + seed)
    before = heldout(tr.params)
    t0 = time.perf_counter()
    for _ in range(meta_steps):
        tr.step(sample(META_BATCH, K, gen))
    seconds = time.perf_counter() - t0
    return {"algo": "maml", "inner_steps": 1, "mode": mode, "meta_steps": meta_steps,
            "seconds": seconds, "steps_per_s": meta_steps / seconds,
            "heldout_before_training": before, "heldout_loss_after_steps": heldout(tr.params),
            "last_train_cost": tr.cost}


# ------------------------------------------------------------------ main

def machine():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--steps", default="1,5")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--only", metavar="ALGO:STEPS:MODE", help="one configuration")
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads [1]")
    ap.add_argument("--repeats", type=int, default=0, help="[5; --quick 3]")
    ap.add_argument("--target", type=float, default=0.0, help="seconds per repeat [0.5; --quick 0.15]")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--learning", action="store_true", help="learning parity instead of timing")
    ap.add_argument("--meta-steps", type=int, default=2000, help="for --learning [2000]")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    repeats = a.repeats or (3 if a.quick else 5)
    target = a.target or (0.15 if a.quick else 0.5)
    if a.only:
        try:
            algo, steps, mode = a.only.split(":")
            configs = [(algo, int(steps), "loop" if mode == "unbatched" else mode)]
        except ValueError:
            ap.error("--only wants ALGO:STEPS:MODE")
    else:
        configs = [(al, int(s), m) for al in a.algos.split(",") for s in a.steps.split(",")
                   for m in a.modes.split(",")]
    for al, s, m in configs:
        if al not in ALGOS or m not in MODES or s < 0:
            ap.error(f"unknown configuration {al}:{s}:{m}")

    out = {"program": "sine_torch.py", "machine": machine(),
           "setting": {"task": "sine", "meta_batch": META_BATCH, "k": K, "inner_lr": INNER_LR,
                       "outer_lr": OUTER_LR, "outer_optim": "adam", "dtype": "float32",
                       "repeats": repeats, "target_seconds": target},
           "only": bool(a.only)}
    if a.learning:
        out["learning"] = [learning(a.meta_steps, m, a.seed) for m in a.modes.split(",")]
    else:
        gen = torch.Generator().manual_seed(12345)
        batches = [sample(META_BATCH, K, gen) for _ in range(NBATCHES)]
        out["results"] = [bench(al, s, m, batches, repeats, target) for al, s, m in configs]
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    json.dump(out, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
