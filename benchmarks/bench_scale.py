"""Scaling of procela_jax.sweep: throughput, compile time and peak memory, as ratios.

    python benchmarks/bench_scale.py            # about 5 minutes on 2 idle cores
    python benchmarks/bench_scale.py --quick    # about 1 minute: small batches, small models

1. Throughput (scenario-steps per second) of the SIR demo and of the X, Y, Z world
   (the original Executive's docstring example) at batch sizes 1, 100, 10,000 and
   100,000: ``pj.sweep`` against the same world written by hand in JAX with the
   same ``vmap`` (same state: values, confidences, statistics, a 16-record memory;
   and a "bare" variant keeping only what the dynamics need), and against the
   original ``procela`` running the scenarios one after another (a few runs,
   extrapolated). Sweeps lower JAX's threefry hash their own way
   (``_jit.batched_threefry``, the same bits); the hand-written JAX keeps JAX's
   default lowering, and is also timed with the sweep's (column ``hand*``). The
   hand-written versions reproduce the engine's trajectories (checked here
   before timing).
2. Compile time against model size: 10, 100 and 1,000 variables, two mechanisms
   each writing every variable.
3. Peak host memory (a fresh process per point, ``ru_maxrss``) against scenarios
   and steps, per-scenario trajectories against daily summaries, with the
   formula of the ``sweep`` docstring; includes 100,000 SIR scenarios x 365 days.

Everything is measured in this one run; a PNG of the curves goes to
``benchmarks/figures/scaling.png`` and the numbers to ``scaling.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [ROOT, HERE]  # this checkout's procela_jax, and _worlds

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _worlds as W  # noqa: E402
import procela_jax as pj  # noqa: E402
from procela_jax._jit import batched_threefry  # noqa: E402

STEPS = 100  # steps per scenario in the throughput runs


def to_host(x):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return np.asarray(jax.random.key_data(x))
    return np.asarray(x)


def best_of(fn, reps):
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


# ---- 1. throughput ----------------------------------------------------------------
def worlds():
    return {
        "SIR": dict(ex=W.sir_executive(), hand=W.sir_hand, path="sir.beta", lo=0.2, hi=0.5,
                    procela=lambda seed: W.sir_procela(seed, STEPS)),
        "XYZ": dict(ex=W.xyz_executive(), hand=W.xyz_hand, path="X.init", lo=1.0, hi=3.0,
                    procela=lambda seed: W.xyz_procela(seed, STEPS)),
    }


def check_hand_written(name, w, n=32):
    """The hand-written world reproduces the engine's trajectories (float rounding aside)."""
    args = np.linspace(w["lo"], w["hi"], n).astype(np.float32)
    res = pj.sweep(w["ex"], STEPS, seeds=range(n), params={w["path"]: args}, save=pj.Save(fields=("value",)))
    keys = jax.vmap(jax.random.key)(jnp.arange(n))
    _, vs = jax.jit(jax.vmap(w["hand"](full=True, steps=STEPS)))(keys, jnp.asarray(args))
    eng = res.trajectory.data["value"]
    rel = float(np.max(np.abs(np.asarray(vs) - eng) / (1 + np.abs(eng))))
    assert rel < 1e-4, f"{name}: the hand-written world departs from the engine (max relative difference {rel})"
    return rel


def throughput(batches, log):
    out = {}
    for name, w in worlds().items():
        rel = check_hand_written(name, w)
        log(f"\n{name}: hand-written JAX reproduces the engine (max relative difference {rel:.1e})")
        # the original procela, scenarios one after another
        runs = 3
        t = time.perf_counter()
        for seed in range(runs):
            w["procela"](seed)
        procela_rate = runs * STEPS / (time.perf_counter() - t)
        log(f"  original procela: {procela_rate:,.0f} scenario-steps/s (one scenario at a time, {runs} runs)")
        log(f"  {'batch':>8} {'sweep/s':>12} {'hand/s':>12} {'hand*/s':>12} {'bare/s':>12} {'vs hand':>8}"
            f" {'vs hand*':>8} {'vs bare':>8} {'vs procela':>11} {'compile s':>9}")
        rows = []
        for b in batches:
            args = np.linspace(w["lo"], w["hi"], b).astype(np.float32)
            kw = dict(seeds=range(b), params={w["path"]: args}, save=pj.Save(fields=("value",)))
            keys = jax.vmap(jax.random.key)(jnp.arange(b))
            hand = jax.jit(jax.vmap(w["hand"](full=True, steps=STEPS)))
            bare = jax.jit(jax.vmap(w["hand"](full=False, steps=STEPS)))
            a = jnp.asarray(args)
            with batched_threefry():  # the hand-written world with the sweep's lowering of the hash
                hand_f = jax.jit(jax.vmap(w["hand"](full=True, steps=STEPS))).lower(keys, a).compile()
            run_sweep = lambda: pj.sweep(w["ex"], STEPS, **kw)  # noqa: E731
            # every output comes back to the host, as the sweep's trajectories and final states do
            run_hand = lambda: jax.tree.map(np.asarray, hand(keys, a))  # noqa: E731
            run_bare = lambda: jax.tree.map(np.asarray, bare(keys, a))  # noqa: E731
            run_hand_f = lambda: jax.tree.map(np.asarray, hand_f(keys, a))  # noqa: E731
            t = time.perf_counter()
            run_sweep()
            first = time.perf_counter() - t
            run_hand(), run_bare(), run_hand_f()
            reps = 5 if b <= 100 else (3 if b <= 10_000 else 1)
            ts, th, tf, tb = float("inf"), float("inf"), float("inf"), float("inf")
            for _ in range(reps):  # interleaved, so a busy machine slows all of them alike
                ts = min(ts, best_of(run_sweep, 1))
                th = min(th, best_of(run_hand, 1))
                tf = min(tf, best_of(run_hand_f, 1))
                tb = min(tb, best_of(run_bare, 1))
            r = dict(batch=b, sweep=b * STEPS / ts, hand=b * STEPS / th, hand_fenced=b * STEPS / tf,
                     bare=b * STEPS / tb, procela=procela_rate, compile=first - ts)
            if b == 10_000:  # the sweep's own cost: against vmap(ex.run) written directly
                direct = direct_run(w)
                run_direct = lambda: jax.tree.map(to_host, direct(w["ex"], keys, a))  # noqa: E731
                run_direct()
                td = float("inf")
                for _ in range(reps):
                    ts = min(ts, best_of(run_sweep, 1))
                    td = min(td, best_of(run_direct, 1))
                r.update(sweep=b * STEPS / ts, direct=b * STEPS / td)
            rows.append(r)
            log(f"  {b:>8,} {r['sweep']:>12,.0f} {r['hand']:>12,.0f} {r['hand_fenced']:>12,.0f} {r['bare']:>12,.0f} "
                f"{r['sweep'] / r['hand']:>8.2f} {r['sweep'] / r['hand_fenced']:>8.2f} {r['sweep'] / r['bare']:>8.2f}"
                f" {r['sweep'] / procela_rate:>11,.0f} {r['compile']:>9.1f}")
        r = next((r for r in rows if "direct" in r), None)
        if r:
            log(f"  sweep machinery at batch 10,000: {r['sweep'] / r['direct']:.2f}x a direct jit(vmap(ex.run)) "
                f"({r['direct']:,.0f} scenario-steps/s)")
        out[name] = rows
    return out


def direct_run(w):
    """``jit(vmap(ex.run))`` written directly: the engine without the sweep around it."""
    path, save = w["path"], pj.Save(fields=("value",))
    owner, field = path.split(".")

    @eqx.filter_jit
    def run(ex, keys, args):
        def one(k, a):
            if field == "init":
                return ex.run(ex.init(k, init={owner: a}), STEPS, save=save)
            e = ex.replace({path: a})
            return e.run(e.init(k), STEPS, save=save)

        return jax.vmap(one)(keys, args)

    return run


# ---- 2. compile time against model size ---------------------------------------------------
class Drift(pj.Mechanism):
    rate: float = 0.01

    def transform(self, values, key):
        return {n: pj.VariableRecord(values[n] * (1 + self.rate), confidence=0.6) for n in self.writes}


class Jitter(pj.Mechanism):
    scale: float = 0.1

    def transform(self, values, key):
        z = jax.random.normal(key, (len(self.writes),))
        c = jax.random.uniform(jax.random.fold_in(key, 1))
        return {n: pj.VariableRecord(values[n] + self.scale * z[j], confidence=c) for j, n in enumerate(self.writes)}


def sized_world(n):
    vs = [pj.Variable(f"v{i}", init=1.0, alternatives=(pj.HighestConfidencePolicy(),)) for i in range(n)]
    return pj.Executive(variables=vs, mechanisms=[Drift(reads=vs, writes=vs, name="drift"),
                                                  Jitter(reads=vs, writes=vs, name="jitter")])


def compile_times(sizes, log):
    log(f"\ncompile time, two mechanisms each writing every variable (a sweep of 8 scenarios x 10 steps)")
    log(f"  {'variables':>9} {'build s':>8} {'compile s':>9} {'run s':>7}")
    rows = []
    for n in sizes:
        t = time.perf_counter()
        ex = sized_world(n)
        build = time.perf_counter() - t
        kw = dict(seeds=range(8), save=pj.Save(fields=("value",)))
        t = time.perf_counter()
        pj.sweep(ex, 10, **kw)
        first = time.perf_counter() - t
        run = best_of(lambda: pj.sweep(ex, 10, **kw), 2)
        rows.append(dict(variables=n, build=build, compile=first - run, run=run))
        log(f"  {n:>9,} {build:>8.1f} {first - run:>9.1f} {run:>7.2f}")
    return rows


# ---- 3. peak memory ----------------------------------------------------------------------
MEMORY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, %r)
    import numpy as np
    import procela_jax as pj

    def hwm():  # peak resident memory of this process (ru_maxrss would include the parent's, inherited at exec)
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
    n, steps, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    ex = pj.demos.sir.make_executive()
    ex.abstract_state()
    base = hwm()
    kw = dict(seeds=range(n), params={"sir.beta": np.linspace(0.15, 0.45, n)})
    if mode == "summaries":
        res = pj.sweep(ex, steps, **kw, summaries=("mean", 0.05, 0.5, 0.95), variables=["I"], fields=["value"])
    else:
        res = pj.sweep(ex, steps, **kw)  # every variable, value and confidence, every step
    peak = hwm()
    print(json.dumps(dict(base=base, peak=peak, nbytes=res.nbytes, state=res.info["state_bytes"],
                          per_save=res.info["bytes_per_saved_step"])))
    """
) % ROOT


def peak_memory(points, log):
    log("\npeak host memory (fresh process per point; SIR; trajectories keep S, I, R value and confidence)")
    log(f"  {'mode':>12} {'scenarios':>10} {'steps':>6} {'formula MiB':>11} {'result MiB':>10} "
        f"{'peak MiB':>9} {'peak - import':>13}")
    rows = []
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    for mode, n, steps in points:
        out = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(n), str(steps), mode], env=env,
                             capture_output=True, text=True, timeout=900)
        if out.returncode:
            raise RuntimeError(out.stderr[-3000:])
        got = json.loads(out.stdout.strip().splitlines()[-1])
        if mode == "summaries":
            formula = steps * 4 * 1 * 1 * 4 + n * got["state"] + 4 * steps  # K.Q.V.F.b + n.Σ + steps
        else:
            formula = n * steps * got["per_save"] + n * got["state"] + 4 * steps  # n.K.(V.F.b + 4) + n.Σ
        r = dict(mode=mode, scenarios=n, steps=steps, formula=formula, **got)
        rows.append(r)
        mib = 2.0**20
        log(f"  {mode:>12} {n:>10,} {steps:>6} {formula / mib:>11.1f} {got['nbytes'] / mib:>10.1f} "
            f"{got['peak'] / mib:>9.0f} {(got['peak'] - got['base']) / mib:>13.0f}")
    return rows


# ---- the figure ---------------------------------------------------------------------
def plot(results, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    ax = axes[0]
    colors = {"SIR": "tab:red", "XYZ": "tab:blue"}
    for name, rows in results["throughput"].items():
        b = [r["batch"] for r in rows]
        ax.loglog(b, [r["sweep"] for r in rows], "o-", color=colors[name], label=f"{name}: pj.sweep")
        ax.loglog(b, [r["hand"] for r in rows], "s--", color=colors[name], alpha=0.6, label=f"{name}: hand-written JAX")
        ax.loglog(b, [r["hand_fenced"] for r in rows], "^-.", color=colors[name], alpha=0.45,
                  label=f"{name}: hand-written, sweep's hash lowering")
        ax.loglog(b, [r["bare"] for r in rows], ":", color=colors[name], alpha=0.5, label=f"{name}: hand-written, bare")
        ax.axhline(rows[0]["procela"], color=colors[name], lw=0.8, ls="-.", label=f"{name}: original procela")
    ax.set_xlabel("scenarios in the batch")
    ax.set_ylabel("scenario-steps per second")
    ax.set_title("Throughput (CPU)")
    ax.legend(fontsize=7)
    ax = axes[1]
    rows = results["compile"]
    ax.loglog([r["variables"] for r in rows], [r["compile"] for r in rows], "o-", label="compile")
    ax.loglog([r["variables"] for r in rows], [r["build"] for r in rows], "s--", label="build (validation trace)")
    ax.set_xlabel("variables (two mechanisms writing each)")
    ax.set_ylabel("seconds")
    ax.set_title("Compile time vs model size")
    ax.legend(fontsize=8)
    ax = axes[2]
    for mode, marker, color in (("trajectories", "o", "tab:blue"), ("summaries", "s", "tab:green")):
        pts = [r for r in results["memory"] if r["mode"] == mode and r["steps"] == 365]
        if pts:
            ax.loglog([r["scenarios"] for r in pts], [r["peak"] / 2**20 for r in pts], marker + "-", color=color,
                      label=f"{mode}, 365 steps: peak of the process")
            ax.loglog([r["scenarios"] for r in pts], [r["formula"] / 2**20 for r in pts], marker + ":", color=color,
                      alpha=0.6, label=f"{mode}: result kept (formula)")
    ax.axhline(4096, color="k", lw=0.8, ls="--", label="4 GiB")
    ax.set_xlabel("scenarios")
    ax.set_ylabel("MiB")
    ax.set_title("Peak host memory (SIR)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small batches and models only (about a minute)")
    p.add_argument("--out", default=os.path.join(HERE, "figures"), help="folder for scaling.png and scaling.json")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    log = lambda s: print(s, flush=True)  # noqa: E731
    t0 = time.perf_counter()
    log(f"procela_jax sweep scaling on {jax.devices()[0].platform.upper()} "
        f"({len(jax.devices())} device(s), {os.cpu_count()} cores), {STEPS} steps per scenario")
    if args.quick:
        batches, sizes = [1, 100, 10_000], [10, 100]
        points = [("trajectories", 1_000, 365), ("summaries", 1_000, 365), ("summaries", 10_000, 365)]
    else:
        batches, sizes = [1, 100, 10_000, 100_000], [10, 100, 1000]
        points = [("trajectories", 1_000, 365), ("trajectories", 10_000, 365), ("trajectories", 100_000, 365),
                  ("summaries", 1_000, 365), ("summaries", 10_000, 365), ("summaries", 100_000, 365),
                  ("trajectories", 10_000, 1000), ("summaries", 10_000, 1000)]
    results = dict(throughput=throughput(batches, log), compile=compile_times(sizes, log),
                   memory=peak_memory(points, log))
    at = {name: next((r for r in rows if r["batch"] == 10_000), None) for name, rows in results["throughput"].items()}
    log("\ntargets at batch 10,000 (CPU): >= 0.8x hand-written JAX, >= 1,000x the original procela")
    for name, r in at.items():
        if r:
            log(f"  {name}: {r['sweep'] / r['hand']:.2f}x hand-written (same state), "
                f"{r['sweep'] / r['hand_fenced']:.2f}x hand-written with the sweep's hash lowering, "
                f"{r['sweep'] / r['bare']:.2f}x bare, {r['sweep'] / r['procela']:,.0f}x procela")
    big = [r for r in results["memory"] if r["mode"] == "summaries" and r["scenarios"] == 100_000]
    if big:
        log(f"  100,000 SIR scenarios x 365 days, daily summaries: peak {big[0]['peak'] / 2**30:.2f} GiB (< 4 GiB)")
    png = os.path.join(args.out, "scaling.png")
    plot(results, png)
    with open(os.path.join(args.out, "scaling.json"), "w") as f:
        json.dump(results, f, indent=1)
    log(f"\nwrote {png} and scaling.json in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
