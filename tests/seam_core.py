"""The core of the engine in one process: single runs, a sweep, calibration gradients.

``python tests/seam_core.py OUT.npz`` writes every leaf of the results, bit for bit,
and the counts of JAX's persistent-cache events (``cache_hits``, ``cache_misses``)
seen while they ran. ``tests/test_seam.py`` runs it in fresh processes: with and
without ``PROCELA_JAX_PLAIN=1`` (the same bits), and twice on one cache folder
(the second process compiles nothing).
"""

from __future__ import annotations

import collections
import sys

import jax
import numpy as np

EVENTS = collections.Counter()


def _listen(event, *args, **kwargs):
    if event.startswith("/jax/compilation_cache/"):
        EVENTS[event.rsplit("/", 1)[1]] += 1


jax.monitoring.register_event_listener(_listen)

import equinox as eqx  # noqa: E402

import procela_jax as pj  # noqa: E402
from procela_jax import _jit  # noqa: E402
from _leaves import host_leaves as leaves  # noqa: E402


def core() -> dict[str, list[np.ndarray]]:
    """The results a change in lowering or options must leave alone."""
    ex = pj.demos.sir.make_executive()
    state = ex.init(jax.random.key(3))
    out = {}
    out["run"] = leaves(ex.run(state, 40, save=pj.Save(every=4)))
    out["step"] = leaves(ex.step(state))
    res = pj.sweep(ex, 30, seeds=np.arange(24), params={"sir.beta": np.linspace(0.2, 0.4, 24)}, save_every=3)
    out["sweep"] = [res.value("I"), res.value("S"), *leaves(res.final)]
    summ = pj.sweep(ex, 30, seeds=np.arange(24), save_every=5, summaries=("mean", 0.5))
    out["summaries"] = [summ.summary("I"), summ.summary("I", 0.5)]

    def loss(e):
        _, traj = e.run(e.init(jax.random.key(5)), 20)
        return (traj.value("I") ** 2).mean()

    value, grads = eqx.filter_jit(eqx.filter_value_and_grad(loss))(ex)
    out["grad"] = [np.asarray(value), *leaves(eqx.filter(grads, eqx.is_inexact_array))]
    data = {"I": (np.arange(0, 20, 4), np.linspace(0.01, 0.2, 5))}
    _, hist = pj.calibrate(ex, data, ["sir.beta"], steps=20, iterations=4, progress=False)
    out["calibrate"] = [hist.loss, hist.params["sir.beta"]]
    return out


def main(path: str) -> None:
    out = core()
    arrays = {f"{k}/{i}": a for k, v in out.items() for i, a in enumerate(v)}
    arrays["events/hits"] = np.asarray(EVENTS["cache_hits"])
    arrays["events/misses"] = np.asarray(EVENTS["cache_misses"])
    arrays["plain"] = np.asarray(_jit.PLAIN)
    arrays["cache"] = np.asarray(str(pj._cache.CACHE_DIR))
    np.savez(path, **arrays)


if __name__ == "__main__":
    main(sys.argv[1])
