"""A quick in-process benchmark: the SIR demo against the same model as a hand-written scan.

The hand-written version is what a JAX user would write for this model without
procela_jax: the two theories' updates averaged with equal weights (weighted
voting), clipped to the population, in one ``lax.scan``. It draws the same
random numbers as the demo (the same keys, folded the same way), so both
compute the same epidemic; procela_jax additionally keeps each variable's
statistics, memory, confidence and audit counters, which is its overhead.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ._mechanism import stable_id


def sir_scan(key, steps: int, *, beta=0.3, gamma=0.1, amplitude=0.25, noise=0.1,
             infected=10.0, population=1000.0, mechanism: str = "seasonal"):
    """The SIR demo as a plain ``lax.scan``: returns ``(steps, 3)`` values of S, I, R.

    >>> import jax, numpy as np, procela_jax as pj
    >>> from procela_jax._bench import sir_scan
    >>> ex = pj.demos.sir.make_executive()
    >>> _, traj = ex.run(ex.init(jax.random.key(0)), 10)
    >>> hand = sir_scan(jax.random.key(0), 10)
    >>> bool(np.allclose(hand[:, 1], traj.value("I"), rtol=1e-5))
    True
    """
    seasonal_id = stable_id(mechanism)
    dtype = jnp.result_type(float)

    def one(carry, t):
        s, i, r = carry
        k = jax.random.fold_in(jax.random.fold_in(key, t), seasonal_id)
        k_noise, _ = jax.random.split(k)
        inf1 = beta * s * i / population
        rec = gamma * i
        season = 1.0 + amplitude * jnp.cos(2 * jnp.pi * t / 365.0)
        shock = jnp.exp(noise * jax.random.normal(k_noise, dtype=dtype))
        inf2 = jnp.minimum(beta * season * shock * s * i / population, s)
        new = jnp.stack([
            ((s - inf1) + (s - inf2)) / 2,
            ((i + inf1 - rec) + (i + inf2 - rec)) / 2,
            ((r + rec) + (r + rec)) / 2,
        ])
        new = jnp.clip(new, 0.0, population)
        return (new[0], new[1], new[2]), new

    start = (jnp.asarray(population - infected, dtype), jnp.asarray(infected, dtype), jnp.asarray(0.0, dtype))
    _, out = jax.lax.scan(one, start, jnp.arange(steps, dtype=jnp.int32))
    return out


def _best_time(fn, repeats: int) -> float:
    jax.block_until_ready(fn())  # compile
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t0)
    return best


def sir_benchmark(*, steps: int = 365, scenarios: int = 256, repeats: int = 5) -> dict:
    """Steps per second of the SIR demo, single and batched, and of the hand-written scan.

    Each run keeps the final state only (no trajectory); times are the best of
    ``repeats`` runs after compilation, measured in this process. Returns a dict of
    rates and speed ratios (procela_jax's rate / the hand scan's: higher is faster).

    >>> from procela_jax._bench import sir_benchmark
    >>> r = sir_benchmark(steps=20, scenarios=4, repeats=1)
    >>> r["single"]["procela_jax"] > 0 and r["batched"]["hand"] > 0
    True
    """
    from .demos import sir

    ex = sir.make_executive()
    key = jax.random.key(0)
    keys = jax.random.split(key, scenarios)
    state = ex.init(key)
    states = jax.vmap(ex.init)(keys)

    run_one = jax.jit(lambda e, s: e.run(s, steps, save=None)[0].values)
    run_many = jax.jit(jax.vmap(lambda e, s: e.run(s, steps, save=None)[0].values, in_axes=(None, 0)))
    hand_one = jax.jit(lambda k: sir_scan(k, steps)[-1])
    hand_many = jax.jit(jax.vmap(lambda k: sir_scan(k, steps)[-1]))

    t_one = _best_time(lambda: run_one(ex, state), repeats)
    t_many = _best_time(lambda: run_many(ex, states), repeats)
    h_one = _best_time(lambda: hand_one(key), repeats)
    h_many = _best_time(lambda: hand_many(keys), repeats)
    same = bool(np.allclose(np.asarray(run_one(ex, state)), np.asarray(hand_one(key)), rtol=1e-4, atol=1e-3))
    return {
        "steps": steps,
        "scenarios": scenarios,
        "backend": jax.default_backend(),
        "same_result": same,
        "single": {"procela_jax": steps / t_one, "hand": steps / h_one},
        "batched": {"procela_jax": steps * scenarios / t_many, "hand": steps * scenarios / h_many},
    }


def format_benchmark(r: dict) -> str:
    """The benchmark summary as printed by ``procela-jax bench``.

    The speed ratio is procela_jax's rate over the hand scan's (higher is faster), the
    convention of the README's tables.

    >>> from procela_jax._bench import format_benchmark
    >>> r = {"steps": 10, "scenarios": 2, "backend": "cpu", "same_result": True,
    ...      "single": {"procela_jax": 3e4, "hand": 2e4},
    ...      "batched": {"procela_jax": 1e5, "hand": 1e5}}
    >>> print(format_benchmark(r).splitlines()[5])
      single run                          30,000        20,000       1.50x
    """
    lines = [
        f"procela_jax benchmark: SIR demo (2 theories, weighted voting), {r['steps']} steps, "
        f"backend {r['backend']}, jax {jax.__version__}",
        f"  rates: steps/s of one {r['steps']}-step run keeping the final state only (no trajectory);",
        "  batched: scenario-steps/s of a vmapped batch; best of several runs after compilation",
        "  speed ratio: procela_jax's rate / the hand scan's (higher is faster)",
        f"  {'':28s}{'procela_jax':>14s}{'hand scan':>14s}{'speed ratio':>12s}",
    ]
    for label, key in (("single run", "single"), (f"batched ({r['scenarios']} scenarios)", "batched")):
        row = r[key]
        ratio = row["procela_jax"] / row["hand"]
        lines.append(f"  {label:28s}{row['procela_jax']:>14,.0f}{row['hand']:>14,.0f}{ratio:>11.2f}x")
    lines.append(
        "  the hand-written scan computes the same epidemic"
        + (" (checked: final values agree)" if r["same_result"] else " (WARNING: final values differ)")
        + "; procela_jax also keeps statistics, memory and governance counters"
    )
    lines.append(
        "  the README's table (benchmarks/bench_core.py) times 10,000-step runs that keep every step's "
        "values and confidences, so its rates are lower"
    )
    return "\n".join(lines)
