"""Sweeps on one GPU: ``pj.sweep`` against the same worlds written by hand in JAX.

    python benchmarks/bench_gpu.py            # under 5 minutes on one GPU (not yet measured)
    python benchmarks/bench_gpu.py --quick    # small batches: checks the script on any backend

The SIR demo and the X, Y, Z world (``benchmarks/_worlds.py``) at 10^4, 10^5 and
10^6 scenarios, 365 steps each, keeping daily summaries across scenarios (mean and
median of every variable, per day). The hand-written worlds run under the same
``vmap`` in one ``jit`` and reduce their trajectories to the same summaries on the
device. Printed: scenario-steps per second, the ratio sweep / hand (target: at
least 0.8 at 10^6 scenarios), the first call's time (compilation included) and the
device's peak memory (``memory_stats()["peak_bytes_in_use"]``, where the backend
reports it). The figures of a GPU have not been measured yet: see
``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]  # this checkout's procela_jax, and _worlds

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import _worlds as W  # noqa: E402
import procela_jax as pj  # noqa: E402

STEPS = 365
STATS = ("mean", 0.5)


def worlds():
    return {"SIR": (W.sir_executive(), W.sir_hand, "sir.beta", 0.2, 0.5),
            "XYZ": (W.xyz_executive(), W.xyz_hand, "X.init", 1.0, 3.0)}


def hand_summaries(hand):
    """The hand-written world, every scenario under one ``vmap``, reduced on the device."""

    @jax.jit
    def run(keys, args):
        _, vs = jax.vmap(hand(full=True, steps=STEPS))(keys, args)  # (scenarios, steps, 3)
        return jnp.mean(vs, axis=0), jnp.quantile(vs, 0.5, axis=0)

    return run


def peak_bytes() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")


def timed(fn, reps: int) -> tuple[float, float]:
    """(first call, best of ``reps`` further calls), in seconds, results on the host."""
    t = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - t
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return first, best


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small batches (100, 1,000), 30 steps")
    args = ap.parse_args(argv)
    global STEPS
    batches = (100, 1_000) if args.quick else (10_000, 100_000, 1_000_000)
    if args.quick:
        STEPS = 30
    dev = jax.devices()[0]
    print(f"device: {dev.platform} ({dev.device_kind}), jax {jax.__version__}, {STEPS} steps, daily {STATS}")
    print(f"{'world':>5} {'scenarios':>10} {'sweep/s':>14} {'hand/s':>14} {'ratio':>6} "
          f"{'sweep 1st s':>11} {'hand 1st s':>10} {'peak MiB':>9}")
    for name, (ex, hand, path, lo, hi) in worlds().items():
        run_hand = hand_summaries(hand)
        for n in batches:
            params = np.linspace(lo, hi, n).astype(np.float32)
            keys = jax.vmap(jax.random.key)(jnp.arange(n))
            a = jnp.asarray(params)
            sweep = lambda: pj.sweep(ex, STEPS, seeds=np.arange(n), params={path: params},  # noqa: E731
                                     save=pj.Save(fields=("value",)), summaries=STATS, keep_final=False)
            reps = 1 if n >= 1_000_000 else 2
            first_h, th = timed(lambda: run_hand(keys, a), reps)
            first_s, ts = timed(lambda: jax.tree.map(np.asarray, sweep().summary("S" if name == "SIR" else "X")), reps)
            # the two agree (float rounding aside): the same world, the same summaries
            got = sweep().summary("I" if name == "SIR" else "Y")
            want = np.asarray(run_hand(keys, a)[0])[:, 1]
            rel = float(np.max(np.abs(got - want) / (1 + np.abs(want))))
            assert rel < 1e-3, f"{name}: the sweep's daily means depart from the hand-written ones ({rel:.1e})"
            peak = peak_bytes()
            print(f"{name:>5} {n:>10,} {n * STEPS / ts:>14,.0f} {n * STEPS / th:>14,.0f} {th / ts:>6.2f} "
                  f"{first_s:>11.1f} {first_h:>10.1f} {'n/a' if peak is None else f'{peak / 2**20:,.0f}':>9}")


if __name__ == "__main__":
    main()
