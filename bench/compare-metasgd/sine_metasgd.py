#!/usr/bin/python3
"""Meta-SGD and MAML++ LSLR on the sine MLP in plain PyTorch (1.13): the
first meta-gradient, to check metastep's (bench/compare-metasgd/run).

Reads DIR/in.safetensors written by bench-metasgd-dump (the MLP 1-40-40-1
variables l1/w (1,40), l1/b (40), ..., l3/b (1); the meta-batch support/x,
support/y, query/x, query/y of 25 tasks x 10 points; the learned rates
metasgd/<key> shaped like each variable and lslr/<key> of shape [3]) and,
for every DIR/out-LAYOUT-STEPS-MODE-MSL.safetensors, computes in float32:

  per task: theta_0 = the variables; for i < steps:
      theta_{i+1} = theta_i - rate_i * grad(mse(support), theta_i)   (create_graph)
  with rate_i = the Meta-SGD tensor (every step) or lslr[i] (a scalar per
  variable); the task's cost is mse(query) at theta_steps, or with MSL
  (MSL = 1) sum_i w_i mse(query at theta_i), w = MAML++'s per-step loss
  importance at meta-step 5 of 10 (w_0 = 0); the meta cost is the mean over
  the tasks, differentiated with respect to the variables and the rates.

Prints one JSON line per file: the largest |torch - metastep| / max(|metastep|, 1)
over the cost and every gradient entry.
"""
import glob
import json
import math
import os
import struct
import sys

import torch

KEYS = ["l1/w", "l1/b", "l2/w", "l2/b", "l3/w", "l3/b"]


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", (name, e["dtype"])
        b, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(data[base + b:base + end]), dtype=torch.float32)
        out[name] = t.reshape(e["shape"]).clone()
    return out


def forward(v, x):
    h = x
    for layer in range(3):
        h = h @ v[f"l{layer + 1}/w"] + v[f"l{layer + 1}/b"]
        if layer < 2:
            h = torch.relu(h)
    return h


def mse(v, x, y):
    return ((forward(v, x) - y) ** 2).mean()


def msl_weights(steps, meta_step=5, anneal=10):
    """MAML++'s per-step loss importance, w[0] = 0 (the unadapted cost)."""
    s = float(steps)
    lo, d = 0.03 / s, 1.0 / s / anneal
    w = [0.0] + [max(1.0 / s - meta_step * d, lo) for _ in range(1, steps)]
    w.append(min(1.0 / s + meta_step * (s - 1) * d, 1.0 - (s - 1) * lo))
    return w


def meta_gradient(inp, layout, steps, msl):
    params = {k: inp[k].clone().requires_grad_(True) for k in KEYS}
    rates = {k: inp[f"{layout}/{k}"].clone() for k in KEYS}
    if layout == "lslr":
        rates = {k: r[:steps].clone() for k, r in rates.items()}
    rates = {k: r.requires_grad_(True) for k, r in rates.items()}
    w = msl_weights(steps) if msl and steps > 1 else None
    tasks = inp["support/x"].shape[0]
    total = 0.0
    for t in range(tasks):
        xs, ys = inp["support/x"][t], inp["support/y"][t]
        xq, yq = inp["query/x"][t], inp["query/y"][t]
        theta = dict(params)
        cost = 0.0
        for i in range(steps):
            if w is not None and w[i] != 0:
                cost = cost + w[i] * mse(theta, xq, yq)
            loss = mse(theta, xs, ys)
            g = torch.autograd.grad(loss, [theta[k] for k in KEYS], create_graph=True)
            theta = {k: theta[k] - (rates[k][i] if layout == "lslr" else rates[k]) * gk
                     for k, gk in zip(KEYS, g)}
        final = mse(theta, xq, yq)
        cost = cost + (w[steps] * final if w is not None else final)
        total = total + cost
    total = total / tasks
    wrt = [params[k] for k in KEYS] + [rates[k] for k in KEYS]
    grads = torch.autograd.grad(total, wrt)
    out = {"cost": total.detach()}
    for k, g in zip(KEYS, grads[:len(KEYS)]):
        out[k] = g
    for k, g in zip(KEYS, grads[len(KEYS):]):
        out["inner_lr/" + k] = g
    return out


def main():
    d = sys.argv[1]
    torch.set_num_threads(1)
    inp = load(os.path.join(d, "in.safetensors"))
    worst_all = 0.0
    for path in sorted(glob.glob(os.path.join(d, "out-*.safetensors"))):
        _, layout, steps, mode, msl = os.path.basename(path)[:-len(".safetensors")].split("-")
        ms = load(path)
        ref = meta_gradient(inp, layout, int(steps), msl == "1")
        assert set(ref) == set(ms), (sorted(ref), sorted(ms))
        worst, where = 0.0, ""
        for k in ref:
            a, b = ref[k].reshape(-1).double(), ms[k].reshape(-1).double()
            err = ((a - b).abs() / b.abs().clamp(min=1.0)).max().item()
            if err > worst:
                worst, where = err, k
        worst_all = max(worst_all, worst)
        print(json.dumps({"layout": layout, "steps": int(steps), "mode": mode, "msl": msl == "1",
                          "max_rel_diff": worst, "at": where}))
    print(json.dumps({"max_rel_diff_overall": worst_all}))


if __name__ == "__main__":
    main()
