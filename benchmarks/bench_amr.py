"""AMR case study: the whole protocol as one batch, against the original library.

    python benchmarks/bench_amr.py                 # 250 runs vs the original, then 10,000 seeds
    python benchmarks/bench_amr.py --original 10   # time the original on 10 seeds per setting only

Part 1 runs the paper's protocol (5 governance settings x 50 seeds x 160 steps) both
ways, each in its own process so that peak memory is measured cleanly:

* the original ``procela`` (the study on the original library, run after run, with
  its numpy streams);
* procela_jax: all 250 runs as one jitted, vmapped computation replaying the same
  numpy streams (float64), checked equal run for run.

It reports the wall time after compilation, the compile time, and memory (peak RSS
of each process, and what the runs themselves add). Part 2 runs 10,000 seeds per
setting with the port's own keys (one batch) and shows how the conclusions sharpen.

Reading the numbers. The original keeps every record of every run alive (its key
registry never frees them), so its memory grows by about 5 MB per run; the paper's
own protocol run (``main.py -r 50 -s 160``, with its figures) peaks at 3.8 GiB. The
port's batch needs a few MB of buffers; its process peak (~320-350 MB) is the JAX
runtime (~160 MB after import), the model build with its trial trace (~70 MB) and
the XLA compiler (~60-90 MB: the batch compiles with XLA's older CPU loop emitters,
see ``procela_jax._jit``), all independent of the number of runs.

The replay agrees with the original within a few ulps rather than bit for bit:
XLA's CPU code fuses some multiply-adds (``a + b * c``) into one rounding where
numpy rounds twice; no governance decision flips over the paper's 250 runs (or the
1,000-seed reference, whose statistics it reproduces digit for digit).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time

import numpy as np

SETTINGS = ("none", "fragility", "coverage", "probe", "all")
#: Peak RSS of the original's full protocol run (``main.py -r 50 -s 160``: 250 runs
#: and its figures), 3,995,780 kB by GNU time on this project's 2-core machine.
ORIGINAL_PROTOCOL_PEAK_MB = 3995780 / 1024


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ---- children ------------------------------------------------------------------------------------
def child_original(n_seeds: int, steps: int) -> dict:
    from procela_jax.demos.amr._original import OriginalStudy

    base = _rss_mb()
    out = {s: [] for s in SETTINGS}
    t0 = time.perf_counter()
    for s in SETTINGS:
        for seed in range(n_seeds):
            r = OriginalStudy(s, seed).run(steps)
            out[s].append([r["mean_error"], r["final_diff"]])
    wall = time.perf_counter() - t0
    return dict(wall=wall, runs=len(SETTINGS) * n_seeds, rss_base=base, rss_end=_rss_mb(), peak=_peak_mb(),
                results=out)


def child_port(n_seeds: int, steps: int, noise: str) -> dict:
    import jax

    if noise == "numpy":
        jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp

    from procela_jax.demos import amr
    from procela_jax.demos.amr import _protocol as P

    base = _rss_mb()
    t0 = time.perf_counter()
    ex = amr.make_executive(steps=steps, noise=noise)
    build = time.perf_counter() - t0
    seeds = np.arange(n_seeds)
    n_set = len(SETTINGS)
    flags = jnp.asarray(np.repeat(np.asarray([P.ACTIVE[s] for s in SETTINGS]), n_seeds, axis=0))
    keys = jax.vmap(jax.random.key)(jnp.asarray(np.tile(seeds, n_set), jnp.uint32))
    streams = None
    if noise == "numpy":
        streams = jnp.asarray(np.tile(np.stack([amr.numpy_noise(int(s), steps) for s in seeds]), (n_set, 1)))
    t0 = time.perf_counter()
    lowered = P._batch.lower(ex, streams, keys, flags, steps)  # compiled as run_protocol compiles it
    trace = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = lowered.compile()
    compile_ = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    xla_mb = None
    if mem is not None:
        xla_mb = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes) / 2**20
    rss_compiled = _rss_mb()
    walls = []
    for _ in range(3):
        t0 = time.perf_counter()
        jax.block_until_ready(compiled(P._batch.traced_arguments(ex, streams, keys, flags, steps)))
        walls.append(time.perf_counter() - t0)
    # the public entry point end to end (stream generation, transfer, summary), cached
    t0 = time.perf_counter()
    res = amr.run_protocol(seeds=seeds, steps=steps, noise=noise)
    public = time.perf_counter() - t0
    out = {s: np.stack([res.mean_error[i], res.final_diff[i]], 1).tolist() for i, s in enumerate(SETTINGS)}
    return dict(build=build, trace=trace, compile=compile_, wall=min(walls), public=public,
                runs=n_set * n_seeds, rss_base=base, rss_compiled=rss_compiled, rss_end=_rss_mb(),
                peak=_peak_mb(), xla_mb=xla_mb, results=out)


def _run_child(*args) -> dict:
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True,
                          env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---- part 1 ------------------------------------------------------------------------------------------
def part1(original_seeds: int, steps: int) -> None:
    print(f"== Part 1: the paper's protocol, 5 settings x 50 seeds x {steps} steps ==")
    port = _run_child("port", 50, steps, "numpy")
    orig = _run_child("original", original_seeds, steps)
    per_run_orig = orig["wall"] / orig["runs"]
    orig_250 = per_run_orig * 250
    worst = 0.0
    for s in SETTINGS:
        a = np.asarray(port["results"][s])[:original_seeds]
        b = np.asarray(orig["results"][s])
        worst = max(worst, float(np.max(np.abs(a - b))))
    print(f"replay check on {orig['runs']} runs: max |port - original| (mean error, final diff) = {worst:.2e}")
    print()
    print(f"{'':<34}{'original procela':>18}{'procela_jax':>16}{'ratio':>10}")
    est = "" if original_seeds == 50 else f" (from {orig['runs']} runs)"
    print(f"{'wall time, 250 runs' + est:<34}{orig_250:>16.1f} s{port['wall'] * 1e3:>13.1f} ms"
          f"{orig_250 / port['wall']:>9.0f}x")
    print(f"{'  per run':<34}{per_run_orig * 1e3:>15.0f} ms{port['wall'] / 250 * 1e6:>13.0f} µs")
    print(f"{'compile (trace + XLA)':<34}{'-':>18}{port['trace'] + port['compile']:>14.1f} s"
          f"   (trace {port['trace']:.1f} s, XLA {port['compile']:.1f} s, model build {port['build']:.1f} s)")
    print(f"{'run_protocol() end to end, cached':<34}{'':>18}{port['public'] * 1e3:>13.0f} ms")
    grow_o = orig["rss_end"] - orig["rss_base"]
    grow_p = port["rss_end"] - port["rss_compiled"]
    print(f"{'peak RSS of the process':<34}{orig['peak']:>15.0f} MB{port['peak']:>13.0f} MB"
          f"{orig['peak'] / port['peak']:>9.1f}x")
    print(f"{'  vs the paper protocol run':<34}{ORIGINAL_PROTOCOL_PEAK_MB:>15.0f} MB{port['peak']:>13.0f} MB"
          f"{ORIGINAL_PROTOCOL_PEAK_MB / port['peak']:>9.1f}x   (main.py -r 50 -s 160 with its figures)")
    print(f"{'memory the runs add':<34}{grow_o:>15.0f} MB{max(grow_p, 0):>13.0f} MB"
          f"   (XLA buffers of the batch: {port['xla_mb']:.1f} MB)")
    if original_seeds < 50:
        print(f"(the original's memory grows with every run it keeps: {grow_o / orig['runs']:.1f} MB per run here, "
              f"so about {grow_o / orig['runs'] * 250:.0f} MB for 250 runs)")
    print()


# ---- part 2 ------------------------------------------------------------------------------------------
def part2(n_seeds: int, steps: int) -> None:
    import jax

    jax.config.update("jax_enable_x64", True)
    from procela_jax.demos import amr

    print(f"== Part 2: {n_seeds:,} seeds per setting with the port's own keys (float64), one batch ==")
    t0 = time.perf_counter()
    res = amr.run_protocol(seeds=range(n_seeds), steps=steps, noise="jax")
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = amr.run_protocol(seeds=range(n_seeds), steps=steps, noise="jax")
    again = time.perf_counter() - t0
    runs = len(SETTINGS) * n_seeds
    print(f"{runs:,} runs: first call {first:.1f} s (with compile), again {again:.2f} s "
          f"({again / runs * 1e6:.0f} µs per run); peak RSS {_peak_mb():.0f} MB")
    print()
    print(amr.reproduction_table(res))
    print()
    _sharpen(res)


def _sharpen(res) -> None:
    """How 10,000 seeds sharpen the 50-run conclusions."""
    n = res.mean_error.shape[1]
    none = res.row("none")
    pub = __import__("procela_jax.demos.amr", fromlist=["PUBLISHED"]).PUBLISHED
    batches = n // 50
    print(f"{'setting':<10} {'mean error (95% CI)':>24} {'CI at 50 runs':>14} {'paired diff vs none (95% CI)':>30}"
          f" {'runs below none':>16} {'regret impr. % (95% CI)':>26} {'50-run batch sd':>16}")
    f0 = res.final_diff[none]
    for i, s in enumerate(res.settings):
        me = res.mean_error[i]
        half = 1.96 * me.std(ddof=1) / math.sqrt(n)
        half50 = 2.0096 * me.std(ddof=1) / math.sqrt(50)
        line = f"{s:<10} {me.mean():>9.4f} ± {half:.4f}       ± {half50:.4f}"
        if i == none:
            print(line)
            continue
        d = me - res.mean_error[none]
        dh = 1.96 * d.std(ddof=1) / math.sqrt(n)
        # regret improvement: ratio of means, CI by the delta method on paired runs
        fd = res.final_diff[i]
        r = fd.mean() / f0.mean()
        var = (fd.var(ddof=1) / fd.mean() ** 2 + f0.var(ddof=1) / f0.mean() ** 2
               - 2 * np.cov(fd, f0)[0, 1] / (fd.mean() * f0.mean())) * r**2 / n
        rh = 1.96 * math.sqrt(max(var, 0.0)) * 100
        b = (fd[: batches * 50].reshape(batches, 50).mean(1) / f0[: batches * 50].reshape(batches, 50).mean(1) - 1) * 100
        print(f"{line} {d.mean():>+14.4f} ± {dh:.4f}        {np.mean(d < 0):>14.1%}"
              f"  {(r - 1) * 100:>+12.1f} ± {rh:.1f} (orig {pub[s]['regret']:+.1f})  {b.std(ddof=1):>10.1f}")
    # ordering stability over disjoint 50-run batches
    if batches >= 2:
        m = res.mean_error[:, : batches * 50].reshape(len(res.settings), batches, 50).mean(2)
        f = res.final_diff[:, : batches * 50].reshape(len(res.settings), batches, 50).mean(2)
        idx = {s: res.row(s) for s in SETTINGS}
        err_order = (m[idx["coverage"]] < m[idx["probe"]]) & (m[idx["probe"]] < m[idx["all"]]) & (
            m[idx["all"]] < m[idx["none"]]) & (m[idx["none"]] < m[idx["fragility"]])
        fd_order = (f[idx["probe"]] > f[idx["all"]]) & (f[idx["all"]] > f[idx["coverage"]]) & (
            f[idx["coverage"]] > f[idx["none"]]) & (f[idx["none"]] > f[idx["fragility"]])
        mm = res.mean_error.mean(1)
        ff = res.final_diff.mean(1)
        print()
        print(f"published order of mean error (coverage < probe < all < none < fragility): "
              f"{'holds' if mm[idx['coverage']] < mm[idx['probe']] < mm[idx['all']] < mm[idx['none']] < mm[idx['fragility']] else 'does NOT hold'}"
              f" over all {n:,} seeds; in {err_order.mean():.0%} of {batches} disjoint 50-run batches")
        print(f"published order of final diff (probe > all > coverage > none > fragility): "
              f"{'holds' if ff[idx['probe']] > ff[idx['all']] > ff[idx['coverage']] > ff[idx['none']] > ff[idx['fragility']] else 'does NOT hold'}"
              f" over all {n:,} seeds; in {fd_order.mean():.0%} of the batches")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--original", type=int, default=50, help="seeds per setting for the original (<= 50)")
    p.add_argument("--seeds", type=int, default=10_000, help="seeds per setting in part 2")
    p.add_argument("--steps", type=int, default=160)
    p.add_argument("--skip", choices=("1", "2"), help="skip a part")
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "original":
            out = child_original(int(rest[0]), int(rest[1]))
        else:
            out = child_port(int(rest[0]), int(rest[1]), rest[2])
        print(json.dumps(out))
        return
    if args.skip != "1":
        part1(min(args.original, 50), args.steps)
    if args.skip != "2":
        part2(args.seeds, args.steps)


if __name__ == "__main__":
    main()
