"""Core engine speed: procela_jax vs hand-written JAX vs the original procela.

Two models, each in three versions, timed in one process:

* ``xyz``: the original's Executive docstring world, as ``_worlds.xyz_executive``
  (X, Y, Z; three add mechanisms, a halving mechanism, each hypothesis with a random confidence; a RUNTIME
  safety invariant on the running means that brings in an emergency mechanism and
  switches every policy to highest confidence; the emergency mechanism leaves
  before step 80).
* ``sir``: the SIR demo (deterministic and seasonal-noisy theories of S, I, R,
  weighted voting, values clipped to [0, N]).

Contenders:

* ``procela_jax``: ``ex.run(state, steps)`` (a jitted ``lax.scan``; values and
  confidences of every variable kept at every step).
* ``plain JAX``: the same model hand-written as one ``lax.scan`` over a
  hand-coded step, no framework; it draws one key per mechanism per step with
  ``fold_in`` as the framework does, keeps the same trajectory, and tracks only
  the running means the invariant needs. Its values are checked against
  procela_jax's (bit for bit on the X, Y, Z world; to float32 rounding on SIR,
  where XLA fuses the mechanisms' multiply-adds differently in the two programs).
* ``procela``: the original library, randomness from Python's ``random``.

For reference (not a target) it also times the hand-written model with its rows
written in blocks by a nested scan, as ``Executive.run`` does: XLA's CPU runtime runs
a loop body inline only while every buffer in it is under 512 bytes, so a loop that
writes a whole trajectory row by row pays a task-scheduling cost on every kernel.

Rounds interleave the contenders (A, B, C, A, B, C, ...) so machine drift hits all
alike; the medians are reported. Compile time is the first ``run`` call (trace +
compile + one run) minus a steady-state run; the build time (validation and
trial trace) is reported apart. Wall-clock and CPU-time rates are both printed:
on a shared, busy machine the CPU time of this process is the steadier measure.

    python benchmarks/bench_core.py [--steps 10000] [--original-steps 1000] [--rounds 7]

Targets: procela_jax at least 0.7x plain JAX and at least 50x the original;
compile under 3 s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

import _worlds as W  # the worlds bench_scale measures too (executives, the original's versions)
import procela_jax as pj
from procela_jax import _step


fold_id = W._id  # a mechanism's stable id, as the engine folds it into the step key


def scan_steps(step, carry, steps: int, block: int = 1):
    """``lax.scan(step, carry, arange(steps))[1]``; with ``block > 1`` the rows are
    written ``block`` at a time by a nested scan (what procela_jax's runs do)."""
    ts = jnp.arange(steps, dtype=jnp.int32)
    if block <= 1:
        return jax.lax.scan(step, carry, ts)[1]
    n, rest = divmod(steps, block)
    carry, rows = jax.lax.scan(lambda c, t: jax.lax.scan(step, c, t), carry, ts[: n * block].reshape(n, block))
    rows = jax.tree.map(lambda a: a.reshape((n * block,) + a.shape[2:]), rows)
    if rest:
        tail = jax.lax.scan(step, carry, ts[n * block:])[1]
        rows = jax.tree.map(lambda a, b: jnp.concatenate([a, b]), rows, tail)
    return rows


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def timed_both(fn):
    """(wall seconds, CPU seconds of this process): on a shared, busy machine the CPU
    time is the steadier of the two."""
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - w0, time.process_time() - c0


# ================================================================================
# X, Y, Z: the docstring world
# ================================================================================
THRESHOLD = W.THRESHOLD
XYZ_INIT = (1.8, -0.5, 9.2)


def xyz_plain(steps: int, block: int = 1):
    """The docstring world by hand: returns a jitted ``run(key) -> (values, confs)``."""
    ids = {n: fold_id(n) for n in ("add_z", "add_y", "add_x", "halve")}

    def step(carry, t):
        key, v, c_prev, sums, count, added, em_on, highest = carry
        em_on = em_on & (t != 80)  # pre-step hook
        k = jax.random.fold_in(key, t)
        u = lambda name, shape=(): jax.random.uniform(jax.random.fold_in(k, ids[name]), shape, v.dtype)
        x, y, z = v[0], v[1], v[2]
        cd = u("halve", (3,))
        # slots per variable: [add, halve, emergency]
        vals = jnp.stack([jnp.stack([y + z, x * 0.5, x * 0.3]),
                          jnp.stack([x + z, y * 0.5, y * 0.3]),
                          jnp.stack([x + y, z * 0.5, z * 0.3])])
        confs = jnp.stack([jnp.stack([u("add_x"), cd[0], 1.0]),
                           jnp.stack([u("add_y"), cd[1], 1.0]),
                           jnp.stack([u("add_z"), cd[2], 1.0])])
        # proposals made before the invariant runs; an overflowing (inf) one is left out
        mask = jnp.stack([jnp.ones(3, bool), jnp.ones(3, bool), jnp.broadcast_to(em_on, (3,))], axis=1)
        mask = mask & jnp.isfinite(vals)
        # RUNTIME invariant on the running means
        violated = jnp.any(sums / count > THRESHOLD)
        first = violated & ~added
        em_on, highest, added = em_on | first, highest | first, added | violated
        # resolution: weighted voting (unit weights) or highest confidence
        m = mask.astype(v.dtype)
        n = m[:, 0] + m[:, 1] + m[:, 2]
        mv, mc = jnp.where(mask, vals, 0.0), jnp.where(mask, confs, 0.0)
        wv = (mv[:, 0] + mv[:, 1] + mv[:, 2]) / n
        wc = (mc[:, 0] + mc[:, 1] + mc[:, 2]) / n
        win = jnp.argmax(jnp.where(mask, confs, -1.0), axis=1)
        hv = jnp.take_along_axis(vals, win[:, None], 1)[:, 0]
        hc = jnp.take_along_axis(confs, win[:, None], 1)[:, 0]
        any_valid = n > 0  # otherwise the value is held
        c = jnp.where(any_valid, jnp.where(highest, hc, wc), c_prev)
        v = jnp.where(any_valid, jnp.where(highest, hv, wv), v)
        return (key, v, c, sums + jnp.where(any_valid, v, 0.0), count + 1, added, em_on, highest), (v, c)

    @jax.jit
    def run(key):
        v0 = jnp.asarray(XYZ_INIT, jnp.float32)
        carry = (key, v0, jnp.ones(3, jnp.float32), v0, jnp.asarray(1.0, jnp.float32), jnp.asarray(False),
                 jnp.asarray(False), jnp.asarray(False))
        return scan_steps(step, carry, steps, block)

    return run


# ================================================================================
# SIR
# ================================================================================
N = pj.demos.sir.POPULATION
BETA, GAMMA, AMPLITUDE, NOISE, INFECTED = 0.3, 0.1, 0.25, 0.1, 10.0


def sir_plain(steps: int, block: int = 1):
    """The SIR demo by hand: returns a jitted ``run(key) -> (values, confs)``."""
    id_sir, id_seasonal = fold_id("sir"), fold_id("seasonal")

    def step(carry, t):
        key, v = carry
        s, i, r = v[0], v[1], v[2]
        k = jax.random.fold_in(key, t)
        _ = jax.random.fold_in(k, id_sir)  # the deterministic theory's key (unused, as in the demo)
        k_noise, k_conf = jax.random.split(jax.random.fold_in(k, id_seasonal))
        # deterministic theory
        inf1, rec1 = BETA * s * i / N, GAMMA * i
        p1 = jnp.stack([s - inf1, i + inf1 - rec1, r + rec1])
        # seasonal, noisy theory
        season = 1.0 + AMPLITUDE * jnp.cos(2 * jnp.pi * t / 365.0)
        shock = jnp.exp(NOISE * jax.random.normal(k_noise, dtype=s.dtype))
        inf2 = jnp.minimum(BETA * season * shock * s * i / N, s)
        p2 = jnp.stack([s - inf2, i + inf2 - GAMMA * i, r + GAMMA * i])
        c2 = jax.random.uniform(k_conf, dtype=s.dtype, minval=0.4, maxval=0.7)
        # weighted voting (unit weights), then clip into [0, N]
        value = jnp.clip((p1 + p2) / 2.0, 0.0, N)
        conf = jnp.broadcast_to((0.8 + c2) / 2.0, (3,))
        return (key, value), (value, conf)

    @jax.jit
    def run(key):
        v0 = jnp.asarray([N - INFECTED, INFECTED, 0.0], jnp.float32)
        return scan_steps(step, (key, v0), steps, block)

    return run


# ================================================================================
def ratio_blocked(rate):
    return rate["procela_jax"] / rate["plain, blocked"]


def bench_model(name, build_ex, build_plain, build_original, steps, original_steps, rounds):
    key = jax.random.key(0)
    build_s, ex = timed(build_ex)
    state = ex.init(key)
    run_ex = lambda: jax.block_until_ready(ex.run(state, steps))
    first_s, (_, traj) = timed(run_ex)
    plain = build_plain(steps)
    run_plain = lambda: jax.block_until_ready(plain(key))
    plain_first_s, (pv, pc) = timed(run_plain)
    # for reference: the hand-written model with procela_jax's blocked row writes
    plain_blocked = build_plain(steps, block=_step.rows_per_block(ex, state, np.arange(len(pv[0])), pj.Save(), steps))
    run_blocked = lambda: jax.block_until_ready(plain_blocked(key))
    bv, _ = run_blocked()
    assert np.array_equal(np.asarray(bv), np.asarray(pv), equal_nan=True)
    # the hand-written model is the same model: same numbers
    ours = np.stack([np.asarray(traj.value(n)) for n in ex.layout.variables], axis=1)
    agree = np.array_equal(ours, np.asarray(pv), equal_nan=True)
    scale = float(np.nanmax(np.abs(ours[np.isfinite(ours)]))) if np.isfinite(ours).any() else 1.0
    max_diff = 0.0 if agree else float(np.nanmax(np.abs(ours - np.asarray(pv))))
    close = max_diff <= 1e-6 * scale  # a few float32 ulps of the largest value

    wall = {"procela_jax": [], "plain JAX": [], "procela": [], "plain, blocked": []}
    cpu = {k: [] for k in wall}

    def record(k, fn):
        w, c = timed_both(fn)
        wall[k].append(w)
        cpu[k].append(c)

    for r in range(rounds):
        record("procela_jax", run_ex)
        record("plain JAX", run_plain)
        record("plain, blocked", run_blocked)
        run_orig = build_original(seed=r, steps=original_steps)  # a fresh world each round (not timed)
        record("procela", run_orig)
    n_steps = {k: (original_steps if k == "procela" else steps) for k in wall}
    med = {k: statistics.median(v) for k, v in wall.items()}
    rate = {k: n_steps[k] / med[k] for k in med}
    cpu_rate = {k: n_steps[k] / statistics.median(v) for k, v in cpu.items()}
    compile_s = first_s - med["procela_jax"]
    print(f"\n== {name}: {steps} steps (original: {original_steps}), {rounds} interleaved rounds, medians")
    print(f"  {'':12s} {'wall steps/s':>14s} {'CPU steps/s':>14s}")
    for k in ("procela_jax", "plain JAX", "procela"):
        print(f"  {k:12s} {rate[k]:>14,.0f} {cpu_rate[k]:>14,.0f}")
    print(f"  (hand-written with rows written in blocks, as procela_jax does: {rate['plain, blocked']:,.0f} steps/s, "
          f"so procela_jax / that = {ratio_blocked(rate):.2f}x)")
    ratio = lambda r, a, b: r[a] / r[b]
    print(f"  procela_jax / plain JAX : {ratio(rate, 'procela_jax', 'plain JAX'):6.2f}x wall, "
          f"{ratio(cpu_rate, 'procela_jax', 'plain JAX'):6.2f}x CPU   (target >= 0.7x)")
    print(f"  procela_jax / procela   : {ratio(rate, 'procela_jax', 'procela'):6.0f}x wall, "
          f"{ratio(cpu_rate, 'procela_jax', 'procela'):6.0f}x CPU   (target >= 50x)")
    print(f"  build (validation + trial trace) {build_s:.2f} s; first run: trace + compile {compile_s:.2f} s "
          f"(target < 3 s); plain JAX compile {plain_first_s - med['plain JAX']:.2f} s")
    print(f"  plain JAX values equal procela_jax's: "
          + ("bit for bit" if agree else f"{'to float32 rounding' if close else 'NO'}: max |diff| {max_diff:.3g}"
                                          f" (largest value {scale:.4g})"))
    return dict(rate=rate, cpu_rate=cpu_rate, blocked_ratio=ratio_blocked(rate), compile_s=compile_s, build_s=build_s, agree=agree, close=close)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10000, help="steps per run for the JAX contenders")
    parser.add_argument("--original-steps", type=int, default=1000, help="steps per run for the original")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; float32; procela_jax from {pj.__file__}")
    out = {}
    out["xyz"] = bench_model("X, Y, Z docstring world", W.xyz_executive, xyz_plain, W.xyz_procela_runner,
                             args.steps, args.original_steps, args.rounds)
    out["sir"] = bench_model("SIR demo", pj.demos.sir.make_executive, sir_plain, W.sir_procela_runner,
                             args.steps, args.original_steps, args.rounds)
    return out


if __name__ == "__main__":
    main()
