"""Model size: time to the first result and memory against the number of mechanisms.

    python benchmarks/bench_compile.py                  # 20, 200 and 2,000 mechanisms, AMR
    python benchmarks/bench_compile.py --sizes 20 200   # fewer sizes

The world: ``n`` variables ``v0..v{n-1}`` (``RangeDomain(-1e6, 1e6)``, init
``i % 7``, weighted voting), each written by two mechanisms of one class ``Pull``
(``a{i}`` pulls ``v{i}`` towards ``v{i+1}`` at rate 0.1, ``b{i}`` towards
``v{i+3}`` at rate 0.05, each with a random confidence). For each size, in a
fresh process of its own (so peak memory is that configuration's):

* procela_jax: building the executive, the first result of a 365-step run
  (build, init, trace, compile, run), a steady run, a 64-scenario sweep (first
  and steady), the first 20 iterations of ``calibrate``; then the same first run
  in a second process that finds the compiled programs in the persistent cache;
* the original ``procela``: the same world, built and run end to end;
* the same world written by hand in vectorised JAX (a values array, gathers by
  index, one ``vmap`` over mechanisms): the limit, first result and steady.

It prints ratios (higher is better for procela_jax) and plots the first result
and the peak memory against the number of mechanisms (log-log) into
``docs/compile.png``. Figures of the last run are in ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

STEPS = 365
HERE = os.path.dirname(os.path.abspath(__file__))


# ---- the world, three ways ----------------------------------------------------------
def pull_world(n_mech: int):
    import jax

    import procela_jax as pj

    class Pull(pj.Mechanism):
        rate: float = 0.1

        def transform(self, values, key):
            a, b = values[self.reads[0]], values[self.reads[1]]
            return {self.writes[0]: pj.VariableRecord(a + self.rate * (b - a), confidence=jax.random.uniform(key))}

    n = n_mech // 2
    vs = [pj.Variable(f"v{i}", pj.RangeDomain(-1e6, 1e6), init=float(i % 7), policy=pj.WeightedVotingPolicy())
          for i in range(n)]
    ms = []
    for i in range(n):
        ms.append(Pull(rate=0.1, name=f"a{i}", reads=[f"v{i}", f"v{(i + 1) % n}"], writes=[f"v{i}"]))
        ms.append(Pull(rate=0.05, name=f"b{i}", reads=[f"v{i}", f"v{(i + 3) % n}"], writes=[f"v{i}"]))
    return vs, ms


def hand_world(n_mech: int):
    """``run(key) -> values (STEPS, n)``: the same dynamics on arrays (no statistics
    or memory: the limit of what the step costs)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from procela_jax._mechanism import stable_id

    n = n_mech // 2
    i = np.arange(n)
    src = np.concatenate([i, i])
    dst = np.concatenate([(i + 1) % n, (i + 3) % n])
    rate = jnp.asarray(np.concatenate([np.full(n, 0.1), np.full(n, 0.05)]), jnp.float32)
    ids = np.asarray([stable_id(f"{p}{k}") for p in "ab" for k in range(n)], np.uint32)

    def run(key):
        def step(v, t):
            k = jax.random.fold_in(key, t)
            keys = jax.vmap(lambda m: jax.random.fold_in(k, m))(ids)
            c = jax.vmap(jax.random.uniform)(keys)
            a, b = v[src], v[dst]
            prop = a + rate * (b - a)
            w = c[:n] + c[n:]
            new = jnp.where(w > 0, (c[:n] * prop[:n] + c[n:] * prop[n:]) / jnp.where(w > 0, w, 1), v)
            new = jnp.clip(new, -1e6, 1e6)
            return new, new

        return jax.lax.scan(step, jnp.asarray(i % 7, jnp.float32), jnp.arange(STEPS))[1]

    return jax.jit(run)


def original_world(n_mech: int):
    """``run()``: the world with the original procela, built and run end to end."""
    import random

    from procela import Executive, Mechanism, RangeDomain, Variable, VariableRecord, WeightedVotingPolicy

    from _worlds import quiet_logger

    rng = random.Random(0)
    n = n_mech // 2
    vs = [Variable(f"v{i}", RangeDomain(-1e6, 1e6), policy=WeightedVotingPolicy()) for i in range(n)]
    for i, v in enumerate(vs):
        v.init(VariableRecord(float(i % 7), confidence=1.0))

    class Pull(Mechanism):
        def __init__(self, a, b, rate):
            super().__init__([a, b], [a])
            self.a, self.b, self.rate = a, b, rate

        def transform(self):
            a, b = self.a.value, self.b.value
            self.a.add_hypothesis(VariableRecord(a + self.rate * (b - a), confidence=rng.random(), source=self.key()))

    ms = [Pull(vs[i], vs[(i + 1) % n], 0.1) for i in range(n)] + [Pull(vs[i], vs[(i + 3) % n], 0.05) for i in range(n)]
    ex = Executive(mechanisms=ms, rng=rng, logger=quiet_logger())
    ex.run(steps=STEPS)


# ---- one configuration per process ---------------------------------------------------
def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure_engine(n_mech: int, extra: bool) -> dict:
    t0 = time.perf_counter()
    import jax
    import numpy as np

    import procela_jax as pj

    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    vs, ms = pull_world(n_mech)
    t_decl = time.perf_counter() - t0
    t0 = time.perf_counter()
    ex = pj.Executive(variables=vs, mechanisms=ms)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, traj = ex.run(ex.init(jax.random.key(0)), STEPS)
    jax.block_until_ready(traj.data)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    state, traj = ex.run(ex.init(jax.random.key(1)), STEPS)
    jax.block_until_ready(traj.data)
    out = dict(import_s=t_import, declare_s=t_decl, build_s=t_build, first_run_s=t_first,
               steady_s=time.perf_counter() - t0, families=len(ex.families))
    if extra:
        t0 = time.perf_counter()
        pj.sweep(ex, STEPS, seeds=np.arange(64), save_every=STEPS)
        out["sweep_first_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        pj.sweep(ex, STEPS, seeds=np.arange(64, 128), save_every=STEPS)
        out["sweep_steady_s"] = time.perf_counter() - t0
        rows = np.arange(0, 60, 5)
        data = {"v0": (rows, np.asarray(traj.value("v0"))[rows])}
        t0 = time.perf_counter()
        pj.calibrate(ex, data, params=["a0.rate"], steps=60, iterations=20, progress=False)
        out["calibrate20_s"] = time.perf_counter() - t0
    out["peak_mb"] = _peak_mb()
    return out


def measure_hand(n_mech: int) -> dict:
    import jax

    t0 = time.perf_counter()
    run = hand_world(n_mech)
    jax.block_until_ready(run(jax.random.key(0)))
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    jax.block_until_ready(run(jax.random.key(1)))
    return dict(first_s=first, steady_s=time.perf_counter() - t0, peak_mb=_peak_mb())


def measure_original(n_mech: int) -> dict:
    import procela  # noqa: F401 - imported before the clock starts, as procela_jax is
    import _worlds  # noqa: F401 - (its quiet logger; it imports JAX)

    t0 = time.perf_counter()
    original_world(n_mech)
    return dict(total_s=time.perf_counter() - t0, peak_mb=_peak_mb())


def measure_amr() -> dict:
    t0 = time.perf_counter()
    import jax

    import procela_jax  # noqa: F401
    from procela_jax.demos import amr

    jax.config.update("jax_enable_x64", True)  # the study's replay of the original runs in float64
    t_import = time.perf_counter() - t0
    t0 = time.perf_counter()
    amr.run_protocol()  # the paper's protocol: 5 settings x 50 seeds x 160 steps
    return dict(import_s=t_import, first_protocol_s=time.perf_counter() - t0, peak_mb=_peak_mb())


def _child(kind: str, n: int, cache: str | None, extra: bool = False) -> dict:
    env = dict(os.environ)
    if cache is None:
        env["PROCELA_JAX_CACHE"] = "0"
    else:
        env["PROCELA_JAX_CACHE"] = cache
    cmd = [sys.executable, __file__, "--child", kind, str(n)] + (["--extra"] if extra else [])
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=HERE)
    wall = time.perf_counter() - t0
    if out.returncode:
        raise RuntimeError(f"{kind} {n} failed:\n{out.stderr[-3000:]}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = wall
    return res


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="*", default=[20, 200, 2000])
    ap.add_argument("--no-original", action="store_true", help="skip the original procela")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--extra", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, n = args.child[0], int(args.child[1])
        fn = {"engine": lambda: measure_engine(n, args.extra), "hand": lambda: measure_hand(n),
              "original": lambda: measure_original(n), "amr": measure_amr}[kind]
        print(json.dumps(fn()))
        return
    results = {}
    for n in args.sizes:
        with tempfile.TemporaryDirectory() as cache:
            eng = _child("engine", n, None, extra=True)
            cold = _child("engine", n, cache)
            warm = _child("engine", n, cache)
        hand = _child("hand", n, None)
        orig = None if args.no_original else _child("original", n, None)
        results[n] = dict(engine=eng, cold=cold, warm=warm, hand=hand, original=orig)
        first = eng["build_s"] + eng["first_run_s"]
        line = (f"{n:>5} mechanisms: build {eng['build_s']:.2f} s, first result {first:.2f} s, steady "
                f"{eng['steady_s'] * 1e3:.1f} ms, peak {eng['peak_mb']:.0f} MB; sweep(64) first "
                f"{eng['sweep_first_s']:.2f} s steady {eng['sweep_steady_s']:.2f} s; calibrate x20 "
                f"{eng['calibrate20_s']:.2f} s")
        print(line)
        print(f"       cache: second process {warm['build_s'] + warm['first_run_s']:.2f} s against "
              f"{cold['build_s'] + cold['first_run_s']:.2f} s "
              f"({(cold['build_s'] + cold['first_run_s']) / (warm['build_s'] + warm['first_run_s']):.1f}x)")
        print(f"       hand-written JAX: first {hand['first_s']:.2f} s (engine/hand {first / hand['first_s']:.1f}x "
              f"slower), steady {hand['steady_s'] * 1e3:.1f} ms ({hand['steady_s'] / eng['steady_s']:.2f}x)")
        if orig:
            print(f"       original procela end to end {orig['total_s']:.2f} s, peak {orig['peak_mb']:.0f} MB: "
                  f"original / procela_jax's first result = {orig['total_s'] / first:.2f}x (above 1: ours is first)")
    if len(args.sizes) > 1:
        lo, hi = min(args.sizes), max(args.sizes)
        f = lambda r: r["engine"]["build_s"] + r["engine"]["first_run_s"]  # noqa: E731
        print(f"first result at {hi} mechanisms / at {lo}: {f(results[hi]) / f(results[lo]):.2f}x")
    amr = _child("amr", 0, None)
    print(f"AMR: first protocol call {amr['first_protocol_s']:.2f} s after import ({amr['import_s']:.2f} s)")
    results["amr"] = amr
    with open(os.path.join(HERE, "figures", "compile.json"), "w") as fh:
        json.dump({str(k): v for k, v in results.items()}, fh, indent=1)
    if not args.no_plot and len(args.sizes) > 1:
        _plot(results, args.sizes)


def _plot(results, sizes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.6))
    first = [results[n]["engine"]["build_s"] + results[n]["engine"]["first_run_s"] for n in sizes]
    warm = [results[n]["warm"]["build_s"] + results[n]["warm"]["first_run_s"] for n in sizes]
    ax1.loglog(sizes, first, "o-", label="procela_jax, first result")
    ax1.loglog(sizes, warm, "s--", label="procela_jax, cached (second process)")
    ax1.loglog(sizes, [results[n]["hand"]["first_s"] for n in sizes], "^:", label="hand-written JAX")
    if results[sizes[0]]["original"]:
        ax1.loglog(sizes, [results[n]["original"]["total_s"] for n in sizes], "x-", label="original, end to end")
    ax1.set_xlabel("mechanisms")
    ax1.set_ylabel("seconds")
    ax1.set_title(f"time to the first {STEPS}-step run")
    ax1.legend(fontsize=7)
    ax2.loglog(sizes, [results[n]["engine"]["peak_mb"] for n in sizes], "o-", label="procela_jax")
    ax2.loglog(sizes, [results[n]["hand"]["peak_mb"] for n in sizes], "^:", label="hand-written JAX")
    if results[sizes[0]]["original"]:
        ax2.loglog(sizes, [results[n]["original"]["peak_mb"] for n in sizes], "x-", label="original")
    ax2.set_xlabel("mechanisms")
    ax2.set_ylabel("peak memory of the process (MB)")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(HERE, "..", "docs", "compile.png")
    fig.savefig(path, dpi=110)
    print(f"wrote {os.path.normpath(path)}")


if __name__ == "__main__":
    sys.path.insert(0, HERE)
    main()
