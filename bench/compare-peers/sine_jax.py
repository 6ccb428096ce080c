#!/usr/bin/env python3
"""The sine setting of bench-meta in JAX, for comparison (bench/compare-peers).

Finn et al.'s sinusoid regression, exactly as bench-meta runs it: 25 tasks
per meta-batch, K = 10 support and 10 query points, an MLP 1-40-40-1 with
ReLU as a function of a dict of float32 arrays keyed like metastep's
variables (l1/w (1,40), l1/b (40), l2/w (40,40), l2/b (40), l3/w (40,1),
l3/b (1)), MSE, inner gradient descent at lr 0.01, and the outer Adam update
(lr 1e-3, beta1 0.9, beta2 0.999, eps 1e-8, bias-corrected:
w - lr * mhat / (sqrt(vhat) + eps), as metastep_adam) inside every jitted,
timed step.

Per task (support xs, ys; query xq, yq), returning (cost, meta-gradient):

  maml     second order: the query MSE after `steps` inner updates
           w <- w - lr * grad(support MSE)(w), differentiated with respect
           to the initial w through every inner update (jax.value_and_grad
           over the whole inner loop).
  fomaml   first order: the inner updates under lax.stop_gradient; the
           query MSE and its gradient at the adapted weights.
  reptile  Ivy's reptile_step: the support-MSE gradients at every inner step
           and at the final weights, summed, divided by (steps + 1) and by
           the inner lr; the cost is the support MSE averaged the same way.

The meta-step is the mean over the 25 tasks of cost and gradient, computed
two ways: `batched` = jax.vmap of the per-task function over the task axis
(the shared weights broadcast, in_axes None), `loop` = jax.lax.scan over the
tasks accumulating cost and gradient.  Both are inside one jax.jit together
with the Adam update.  Ivy's batched mode (weights replicated per task,
inner gradient of the mean cost scaled by the task count, MAML's gradient
summed over the copies, first-order ones averaged) computes the same
numbers: every copy gets exactly its own task's gradient.

Timing protocol as bench-meta and sine_torch.py: 8 meta-batches sampled
before timing and cycled through; 2 warm-up steps (they include the XLA
compilation, reported separately); N calibrated so a repeat takes about
--target seconds; the median of --repeats repeats, wall clock and process CPU
time.  JAX dispatches asynchronously: each repeat ends with
block_until_ready on the variables, so the time covers all N steps.
Output: JSON on stdout with the peak RSS (VmHWM).

Threads: unless XLA_FLAGS is already set, it is set to
"--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" before
jax is imported (bench/compare-peers sets it too).

--check DIR compares, instead of timing, one meta-step on bench-meta's
initial variables and first meta-batch (bench-meta --dump DIR) with
metastep's cost, meta-gradient and Adam-updated variables, for every
configuration whose dump is in DIR.
"""
import argparse
import glob
import json
import math
import os
import platform
import re
import resource
import statistics
import struct
import sys
import time

DEFAULT_XLA_FLAGS = "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
if "XLA_FLAGS" not in os.environ:
    os.environ["XLA_FLAGS"] = DEFAULT_XLA_FLAGS
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

META_BATCH = 25
K = 10
HIDDEN = 40
INNER_LR = 0.01
OUTER_LR = 1e-3
BETA1, BETA2, EPS = 0.9, 0.999, 1e-8
NBATCHES = 8
ALGOS = ("maml", "fomaml", "reptile")
MODES = ("loop", "batched")
KEYS = ("l1/w", "l1/b", "l2/w", "l2/b", "l3/w", "l3/b")
BATCH_KEYS = ("support/x", "support/y", "query/x", "query/y")


# ------------------------------------------------------------ safetensors

def read_safetensors(path):
    """{name: np.ndarray} from a safetensors file (F32/F64 only, as metastep
    writes them): 8-byte little-endian header length, JSON header, data."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = raw[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        dt = {"F32": "<f4", "F64": "<f8"}[e["dtype"]]
        b, end = e["data_offsets"]
        out[name] = np.frombuffer(data[b:end], dtype=dt).reshape(e["shape"]).copy()
    return out


# ------------------------------------------------------------------ data

def sample(rng, num_tasks=META_BATCH, k=K):
    """A meta-batch as bench-meta's sine plugin draws it (A ~ U[0.1, 5],
    phi ~ U[0, pi], x ~ U[-5, 5], y = A sin(x - phi)); numpy's generator,
    so not the same numbers: they only matter for the --check, which uses
    bench-meta's own batch."""
    amp = rng.uniform(0.1, 5.0, (num_tasks, 1, 1)).astype(np.float32)
    phase = rng.uniform(0.0, math.pi, (num_tasks, 1, 1)).astype(np.float32)
    xs = rng.uniform(-5.0, 5.0, (num_tasks, k, 1)).astype(np.float32)
    xq = rng.uniform(-5.0, 5.0, (num_tasks, k, 1)).astype(np.float32)
    return tuple(jnp.asarray(a) for a in (xs, amp * np.sin(xs - phase), xq, amp * np.sin(xq - phase)))


def init_params(seed=0):
    """nn.Linear's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the sine
    plugin (different numbers; the --check loads bench-meta's)."""
    rng = np.random.default_rng(seed)
    dims = (1, HIDDEN, HIDDEN, 1)
    p = {}
    for i in range(3):
        bound = 1.0 / math.sqrt(dims[i])
        p[f"l{i + 1}/w"] = rng.uniform(-bound, bound, (dims[i], dims[i + 1])).astype(np.float32)
        p[f"l{i + 1}/b"] = rng.uniform(-bound, bound, (dims[i + 1],)).astype(np.float32)
    return {k: jnp.asarray(v) for k, v in p.items()}


# ----------------------------------------------------------------- model

def forward(p, x):
    """One task: x (K, 1) -> (K, 1)."""
    h = jax.nn.relu(x @ p["l1/w"] + p["l1/b"])
    h = jax.nn.relu(h @ p["l2/w"] + p["l2/b"])
    return h @ p["l3/w"] + p["l3/b"]


def mse(p, x, y):
    return jnp.mean(jnp.square(forward(p, x) - y))


mse_and_grad = jax.value_and_grad(mse)


def sgd(p, g):
    return jax.tree_util.tree_map(lambda w, gw: w - INNER_LR * gw, p, g)


# ------------------------------------------------ per-task meta-gradients
# Each takes the shared weights and one task (xs, ys, xq, yq), each (K, 1),
# and returns (cost, gradient with respect to the shared weights).

def maml_task(steps):
    def adapted_query_cost(p, xs, ys, xq, yq):
        for _ in range(steps):
            p = sgd(p, jax.grad(mse)(p, xs, ys))
        return mse(p, xq, yq)
    vg = jax.value_and_grad(adapted_query_cost)

    def fn(p, task):
        return vg(p, *task)
    return fn


def fomaml_task(steps):
    def fn(p, task):
        xs, ys, xq, yq = task
        fast = p
        for _ in range(steps):
            fast = jax.lax.stop_gradient(sgd(fast, jax.grad(mse)(fast, xs, ys)))
        return mse_and_grad(fast, xq, yq)
    return fn


def reptile_task(steps):
    def fn(p, task):
        xs, ys, _, _ = task
        fast, total, acc = p, 0.0, None
        for i in range(steps + 1):
            c, g = mse_and_grad(fast, xs, ys)
            total = total + c
            acc = g if acc is None else jax.tree_util.tree_map(jnp.add, acc, g)
            if i < steps:
                fast = sgd(fast, g)
        scale = 1.0 / ((steps + 1) * INNER_LR)
        return total / (steps + 1), jax.tree_util.tree_map(lambda a: a * scale, acc)
    return fn


TASK_FNS = {"maml": maml_task, "fomaml": fomaml_task, "reptile": reptile_task}


def meta_grad_fn(algo, steps, mode):
    """(params, batch) -> (cost, meta-gradient): mean over the tasks."""
    task_fn = TASK_FNS[algo](steps)
    if mode == "batched":
        def meta(p, batch):
            costs, grads = jax.vmap(task_fn, in_axes=(None, 0))(p, batch)
            return jnp.mean(costs), jax.tree_util.tree_map(lambda g: jnp.mean(g, axis=0), grads)
        return meta

    def meta(p, batch):
        def body(carry, task):
            c, g = task_fn(p, task)
            total, acc = carry
            return (total + c, jax.tree_util.tree_map(jnp.add, acc, g)), None
        zero = (jnp.zeros((), jnp.float32), jax.tree_util.tree_map(jnp.zeros_like, p))
        (total, acc), _ = jax.lax.scan(body, zero, batch)
        n = batch[0].shape[0]
        return total / n, jax.tree_util.tree_map(lambda g: g / n, acc)
    return meta


# ------------------------------------------------------------------ Adam

def adam_init(p):
    z = jax.tree_util.tree_map(jnp.zeros_like, p)
    return {"m": z, "v": z, "t": jnp.zeros((), jnp.int32)}


def adam_update(p, g, s):
    t = s["t"] + 1
    tf = t.astype(jnp.float32)
    c1 = 1.0 - jnp.power(jnp.float32(BETA1), tf)
    c2 = 1.0 - jnp.power(jnp.float32(BETA2), tf)
    m = jax.tree_util.tree_map(lambda m, g: BETA1 * m + (1.0 - BETA1) * g, s["m"], g)
    v = jax.tree_util.tree_map(lambda v, g: BETA2 * v + (1.0 - BETA2) * g * g, s["v"], g)
    new = jax.tree_util.tree_map(
        lambda w, m, v: w - OUTER_LR * (m / c1) / (jnp.sqrt(v / c2) + EPS), p, m, v)
    return new, {"m": m, "v": v, "t": t}


def train_step_fn(algo, steps, mode):
    """The jitted meta-step: meta-gradient, then Adam.
    (params, adam state, batch) -> (params, adam state, cost, meta-gradient)."""
    meta = meta_grad_fn(algo, steps, mode)

    def step(p, s, batch):
        cost, g = meta(p, batch)
        p, s = adam_update(p, g, s)
        return p, s, cost, g
    return jax.jit(step)


# ---------------------------------------------------------------- timing

def bench(algo, steps, mode, batches, repeats, target):
    step = train_step_fn(algo, steps, mode)
    state = {"p": init_params(0)}
    state["s"] = adam_init(state["p"])
    state["done"] = 0
    state["cost"] = None

    def run(n):
        p, s, done = state["p"], state["s"], state["done"]
        cost = None
        for _ in range(n):
            p, s, cost, _ = step(p, s, batches[done % len(batches)])
            done += 1
        jax.block_until_ready(p)
        state.update(p=p, s=s, done=done, cost=cost)

    t0 = time.perf_counter()
    run(2)  # warm-up, including the compilation
    warmup = time.perf_counter() - t0
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
            "repeat_seconds": [round(w, 4) for w in walls],
            "warmup_seconds_incl_compile": round(warmup, 3),
            "last_cost": float(state["cost"])}


# ----------------------------------------------------------------- check

def discrepancy(a, b):
    """(largest |a - b| / max(|b|, 1), largest |a - b| / |b| over entries
    with |b| >= 1e-3 * max |b|): the first is the pass criterion (relative
    error, absolute for entries below 1 in magnitude)."""
    a = np.asarray(a, np.float64).ravel()
    b = np.asarray(b, np.float64).ravel()
    d = np.abs(a - b)
    crit = float(np.max(d / np.maximum(np.abs(b), 1.0))) if d.size else 0.0
    big = np.abs(b) >= 1e-3 * np.max(np.abs(b)) if d.size else np.zeros(0, bool)
    rel = float(np.max(d[big] / np.abs(b[big]))) if big.any() else 0.0
    return crit, rel


def check(dump_dir, configs, tol):
    var = read_safetensors(os.path.join(dump_dir, "variables.safetensors"))
    bat = read_safetensors(os.path.join(dump_dir, "batch.safetensors"))
    p = {k: jnp.asarray(var[k]) for k in KEYS}
    batch = tuple(jnp.asarray(bat[k]) for k in BATCH_KEYS)
    results, computed = [], {}
    for path in sorted(glob.glob(os.path.join(dump_dir, "step-*.safetensors"))):
        m = re.match(r"step-(\w+)-(\d+)-(\w+)-(\w+)\.safetensors$", os.path.basename(path))
        if not m:
            continue
        algo, steps, mode, backend = m.group(1), int(m.group(2)), m.group(3), m.group(4)
        if configs and (algo, steps, mode) not in configs:
            continue
        ref = read_safetensors(path)
        if (algo, steps, mode) not in computed:  # once per configuration, any backend
            computed[(algo, steps, mode)] = train_step_fn(algo, steps, mode)(p, adam_init(p), batch)
        newp, _, cost, g = computed[(algo, steps, mode)]
        worst = {"grads": (0.0, 0.0, ""), "updated": (0.0, 0.0, "")}
        for k in KEYS:
            for what, val in (("grads", g[k]), ("updated", newp[k])):
                want = ref[f"{what}/{k}"]
                if np.shape(val) != want.shape:
                    raise SystemExit(f"sine_jax.py: {path}: {what}/{k} has shape "
                                     f"{want.shape}, JAX {np.shape(val)}")
                crit, rel = discrepancy(val, want)
                if crit >= worst[what][0]:
                    worst[what] = (crit, max(rel, worst[what][1]), k)
                else:
                    worst[what] = (worst[what][0], max(rel, worst[what][1]), worst[what][2])
        mcost = float(ref["cost"].ravel()[0])
        cost_err = abs(float(cost) - mcost) / max(abs(mcost), 1.0)
        results.append({
            "algo": algo, "inner_steps": steps, "mode": mode, "backend": backend,
            "cost_jax": float(cost), "cost_metastep": mcost, "cost_err": cost_err,
            "grad_err": worst["grads"][0], "grad_rel_err": worst["grads"][1],
            "grad_worst_key": worst["grads"][2],
            "updated_err": worst["updated"][0], "updated_rel_err": worst["updated"][1],
            "ok": worst["grads"][0] <= tol and cost_err <= tol})
    return results


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
            "jax": jax.__version__, "numpy": np.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg())}


def peak_rss_mib():
    """VmHWM, the high-water mark of this process image (as bench-meta);
    ru_maxrss instead would include the RSS of the parent that spawned us,
    which Linux carries across exec."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def parse_configs(ap, a):
    if a.only:
        try:
            algo, steps, mode = a.only.split(":")[:3]
            configs = [(algo, int(steps), "loop" if mode == "unbatched" else mode)]
        except ValueError:
            ap.error("--only wants ALGO:STEPS:MODE")
    else:
        configs = [(al, int(s), m) for al in a.algos.split(",") for s in a.steps.split(",")
                   for m in a.modes.split(",")]
    for al, s, m in configs:
        if al not in ALGOS or m not in MODES or s < 0:
            ap.error(f"unknown configuration {al}:{s}:{m}")
    return configs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--algos", default=",".join(ALGOS))
    ap.add_argument("--steps", default="1,5")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--only", metavar="ALGO:STEPS:MODE", help="one configuration")
    ap.add_argument("--repeats", type=int, default=0, help="[5; --quick 3]")
    ap.add_argument("--target", type=float, default=0.0, help="seconds per repeat [0.5; --quick 0.15]")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check", metavar="DIR", help="compare with bench-meta --dump DIR instead of timing")
    ap.add_argument("--tol", type=float, default=1e-5, help="for --check [1e-5]")
    a = ap.parse_args()
    repeats = a.repeats or (3 if a.quick else 5)
    target = a.target or (0.15 if a.quick else 0.5)
    configs = parse_configs(ap, a)

    out = {"program": "sine_jax.py", "machine": machine(),
           "setting": {"task": "sine", "meta_batch": META_BATCH, "k": K, "inner_lr": INNER_LR,
                       "outer_lr": OUTER_LR, "outer_optim": "adam", "dtype": "float32",
                       "repeats": repeats, "target_seconds": target},
           "only": bool(a.only)}
    rc = 0
    if a.check:
        explicit = a.only or a.algos != ",".join(ALGOS) or a.steps != "1,5" or \
            a.modes != ",".join(MODES)
        out["check"] = check(a.check, set(configs) if explicit else None, a.tol)
        out["tolerance"] = a.tol
        if not out["check"] or not all(r["ok"] for r in out["check"]):
            rc = 1
    else:
        rng = np.random.default_rng(12345)
        batches = [sample(rng) for _ in range(NBATCHES)]
        out["results"] = [bench(al, s, m, batches, repeats, target) for al, s, m in configs]
    out["peak_rss_mib"] = peak_rss_mib()
    json.dump(out, sys.stdout, indent=2)
    print()
    return rc


if __name__ == "__main__":
    sys.exit(main())
