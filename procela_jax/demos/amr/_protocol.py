"""The experiment protocol: every governance setting over many seeds, as one batch."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ..._errors import ModelError
from ..._executive import Executive
from ..._jit import lean_jit
from ..._plan import choose_plan
from ..._step import starts_joined
from . import _governance, _model

#: Governance settings, in the original's order, and the units each one switches on
#: (the emergency unit is always on).
SETTINGS = ("none", "fragility", "coverage", "probe", "all")
ACTIVE = {
    "none": (False, False, False),
    "fragility": (True, False, False),
    "coverage": (False, True, False),
    "probe": (False, False, True),
    "all": (True, True, True),
}
NOISE = ("numpy", "jax")


def make_executive(steps: int = 160, noise: str = "jax", world_seed: int = 42) -> Executive:
    """The AMR study as an :class:`~procela_jax.Executive` for runs of ``steps`` steps.

    ``noise="jax"`` draws the theories' noise from the run's key; ``noise="numpy"``
    reads it from ``state.aux["noise"]`` (set a per-run stream with
    :func:`numpy_noise`). The world is the original's (numpy ``default_rng(world_seed)``).
    Choose the governance setting at ``init`` with ``active_invariants``.

    >>> import jax
    >>> from procela_jax.demos import amr
    >>> ex = amr.make_executive(steps=20)
    >>> ex.layout.invariants
    ('fragility', 'coverage', 'probe', 'emergency')
    >>> state = ex.init(jax.random.key(0), active_invariants=amr.active("coverage"))
    >>> [bool(a) for a in state.invariant_active]
    [False, True, False, True]
    """
    _check(steps=steps, noise=noise)
    return _executive(int(steps), noise, int(world_seed), bool(jax.config.jax_enable_x64))


@functools.lru_cache(maxsize=8)
def _executive(steps, noise, world_seed, x64):
    # cached (per dtype): an executive is immutable, and equal builds then share one compilation
    return Executive(
        variables=_model.variables(),
        mechanisms=_model.theories(noise),
        invariants=_governance.invariants(),
        pre_step=_model.pre_step(steps, world_seed, noise),
        post_step=_model.signals,
        aux={**_model.initial_aux(steps, noise), **_governance.initial_aux()},
        audit=True,
    )


def active(setting: str) -> dict:
    """``active_invariants`` for a governance setting (values may be traced booleans).

    >>> from procela_jax.demos import amr
    >>> amr.active("probe")
    {'fragility': False, 'coverage': False, 'probe': True, 'emergency': True}
    """
    if setting not in ACTIVE:
        raise ValueError(f"unknown governance setting {setting!r}; choose among {SETTINGS}")
    return _flags(ACTIVE[setting])


def _flags(on) -> dict:
    return {"fragility": on[0], "coverage": on[1], "probe": on[2], "emergency": True}


def numpy_noise(seed: int, steps: int) -> np.ndarray:
    """The original's mechanism noise for run ``seed``: ``default_rng(seed)`` standard
    normals, enough for eleven theories over ``steps`` steps.

    >>> numpy_noise(0, 2).shape
    (22,)
    """
    return np.random.default_rng(seed).standard_normal(_model.N_MECH * steps)


def _check(*, steps, noise, seeds=None):
    if not isinstance(steps, (int, np.integer)) or steps < 3:
        raise ValueError(f"steps must be an int >= 3 (the final diff needs step steps-2), got {steps!r}")
    if noise not in NOISE:
        raise ValueError(f"noise must be one of {NOISE}, got {noise!r}")
    if noise == "numpy" and not jax.config.jax_enable_x64:
        raise ModelError(
            'noise="numpy" replays the original run for run (Tier 1) and needs float64: '
            'call jax.config.update("jax_enable_x64", True) first, or use noise="jax"'
        )
    if seeds is not None:
        if seeds.ndim != 1 or seeds.size == 0:
            raise ValueError("seeds must be a non-empty sequence of ints")
        if not np.issubdtype(seeds.dtype, np.integer) or (seeds < 0).any():
            raise ValueError(f"seeds must be non-negative ints, got {seeds[:5]}...")


@dataclasses.dataclass(frozen=True)
class ProtocolResult:
    """Per-run results of :func:`run_protocol`: arrays of shape ``(settings, seeds)``
    (trailing axes where noted).

    * ``mean_error``, ``std_error``: mean and population std of the run's prediction
      errors ``|P_{t-1} - C_t|``, t = 1..steps-1 (the original's ``Mean error`` and
      within-run ``Std dev``);
    * ``mean_baseline_error``: the same for the no-intervention forecast;
    * ``final_diff``: the cumulative regret ``sum_t (e^b_t - e_t)`` over t = 1..steps-2
      (the original's "Final diff", which drops the last point);
    * ``started``, ``completed``, ``successes``: experiments per unit, dicts of arrays;
    * ``hc_fraction``: fraction of steps whose intervention was resolved by
      HighestConfidence; ``code_fraction`` (..., 4): fraction of steps with each
      intervention in force next; ``family_fraction`` (..., 3): fraction of steps each
      family proposed; ``regime_error`` (..., 3): mean error in each regime;
    * ``domain_violations``: observations outside their domain (the original raises).
    """

    settings: tuple[str, ...]
    seeds: np.ndarray
    steps: int
    noise: str
    mean_error: np.ndarray
    std_error: np.ndarray
    mean_baseline_error: np.ndarray
    final_diff: np.ndarray
    started: dict
    completed: dict
    successes: dict
    hc_fraction: np.ndarray
    code_fraction: np.ndarray
    family_fraction: np.ndarray
    regime_error: np.ndarray
    domain_violations: np.ndarray

    def row(self, setting: str) -> int:
        """The row of a governance setting in the per-run arrays."""
        return self.settings.index(setting)


def _summary(ex, state):
    """What one finished run reports."""
    lay = ex.layout

    def err_stats(name):
        st = state.stats(name)
        n = (st.count - 1).astype(st.sum.dtype)  # the declared initial record is not an error
        mean = st.sum / n
        return mean, jnp.sqrt(jnp.maximum(st.sumsq / n - mean**2, 0.0))

    mean, std = err_stats("error_colonized")
    mean_b, _ = err_stats("error_baseline_colonized")
    tally = state.aux["tally"]
    units = ("fragility", "coverage", "probe")
    return dict(
        mean_error=mean,
        std_error=std,
        mean_baseline_error=mean_b,
        final_diff=tally["final_diff"],
        started={u: state.violation_count[lay.inv(u)] for u in (*units, "emergency")},
        completed={u: state.aux[u]["done"] for u in units},
        successes={u: state.aux[u]["wins"] for u in units},
        hc_steps=tally["hc_steps"],
        code_steps=tally["code_steps"],
        family_steps=tally["family_steps"],
        regime_error=tally["regime_error"],
        domain_violations=jnp.sum(state.domain_violations),
    )


def _start(ex, stream, key, on):
    aux = ex.aux if stream is None else {**ex.aux, "noise": stream}
    return ex.init(key, active_invariants=_flags(on), aux=aux)


@lean_jit
def _batch(ex, streams, keys, flags, steps):
    """All runs as one flat batch. The initial states are built by ``vmap``, so every
    leaf of the scan's carry is batched from the start (one batching pass)."""
    states = jax.vmap(lambda st, k, on: _start(ex, st, k, on), in_axes=(None if streams is None else 0, 0, 0))(
        streams, keys, flags
    )
    return jax.vmap(lambda s: _summary(ex, ex.run(s, steps, save=None, plan=_plan(ex, len(keys)))[0]))(states)


def _plan(ex, runs: int):
    """The plan of a batch of ``runs`` runs: the forms of a sweep (each run starts from
    ``ex.init``, so if that joins every written variable, so do all steps), without the
    layout fence, which needs a runtime gate, with JAX's hash lowering, and with the
    slots taken by static slices (for this model's 13 variables, 20% faster steps than
    gathers at the same compile time; benchmarks/README.md)."""
    plan = choose_plan(ex, batch=runs, all_joined=starts_joined(ex))
    return plan.replace(fence=False, hash="default", slots="static")


def run_protocol(seeds=range(50), steps: int = 160, noise: str = "numpy", *, settings=SETTINGS,
                 world_seed: int = 42) -> ProtocolResult:
    """Run every governance setting for every seed, all in one jitted, vmapped batch.

    ``noise="numpy"`` replays the original's mechanism noise run for run
    (``default_rng(seed)``; needs ``jax_enable_x64``); ``noise="jax"`` uses this
    library's keys (``jax.random.key(seed)``, the same key for every setting of a
    seed, so settings are compared on common random numbers). The world is the
    original's seed-42 series whatever the noise (``world_seed`` changes it).

    >>> from procela_jax.demos import amr
    >>> res = amr.run_protocol(seeds=range(2), steps=20, noise="jax")
    >>> res.mean_error.shape, res.settings[-1], int(res.started["probe"][res.row("probe"), 0])
    ((5, 2), 'all', 0)
    """
    seeds = np.asarray(list(seeds))
    _check(steps=steps, noise=noise, seeds=seeds)
    settings = tuple(settings)
    for s in settings:
        active(s)
    ex = make_executive(steps=steps, noise=noise, world_seed=world_seed)
    n_set, n_seed = len(settings), len(seeds)
    # run r = (setting r // n_seed, seed r % n_seed); every setting of a seed shares its noise
    flags = jnp.asarray(np.repeat(np.asarray([ACTIVE[s] for s in settings]), n_seed, axis=0))
    keys = jax.vmap(jax.random.key)(jnp.asarray(np.tile(seeds, n_set), jnp.uint32))
    streams = None
    if noise == "numpy":
        per_seed = np.stack([numpy_noise(int(s), steps) for s in seeds])
        streams = jnp.asarray(np.tile(per_seed, (n_set, 1)))
    out = jax.device_get(_batch(ex, streams, keys, flags, int(steps)))
    sn = lambda a: np.asarray(a).reshape((n_set, n_seed) + np.shape(a)[1:])  # noqa: E731
    per_step = float(steps)
    return ProtocolResult(
        settings=settings,
        seeds=seeds,
        steps=int(steps),
        noise=noise,
        mean_error=sn(out["mean_error"]),
        std_error=sn(out["std_error"]),
        mean_baseline_error=sn(out["mean_baseline_error"]),
        final_diff=sn(out["final_diff"]),
        started={u: sn(v) for u, v in out["started"].items()},
        completed={u: sn(v) for u, v in out["completed"].items()},
        successes={u: sn(v) for u, v in out["successes"].items()},
        hc_fraction=sn(out["hc_steps"]) / per_step,
        code_fraction=sn(out["code_steps"]) / per_step,
        family_fraction=sn(out["family_steps"]) / per_step,
        regime_error=_per_regime(sn(out["regime_error"]), steps),
        domain_violations=sn(out["domain_violations"]),
    )


def _per_regime(total, steps):
    """Mean error in each regime (t = 1..steps-1); NaN for a regime the run never reached."""
    t = np.arange(1, steps)
    a, b = _model.REGIME_ENDS
    n = np.asarray([np.sum(t <= a), np.sum((t > a) & (t <= b)), np.sum(t > b)], float)
    return np.where(n > 0, total / np.where(n > 0, n, 1), np.nan)
