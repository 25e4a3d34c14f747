"""Calibration: fit an executive's parameters to observed data with optax.

The executive is a pytree whose array leaves are its parameters, and a run is a
differentiable ``lax.scan``; :func:`calibrate` puts the two together. A loss on
the observed points of a run is minimised by an optax optimiser, on parameters
mapped to an unconstrained space (bounded ones through a scaled sigmoid or a
softplus). The loop is a host loop over jitted chunks of optimiser steps (each
chunk a ``lax.scan``), which shows progress and stops early on convergence;
several starting points run together under ``vmap``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._domain import RangeDomain
from ._errors import ModelError
from ._executive import Executive
from ._paths import parameter
from ._plan import choose_plan
from ._step import run_jit, starts_joined
from ._mechanism import BASE_FIELDS
from ._save import Save

Bounds = tuple[float | None, float | None]


# ---------------------------------------------------------------------------- parameters
@dataclasses.dataclass(frozen=True)
class _Param:
    """A fitted parameter: hashable static configuration (name, address, bounds)."""

    name: str
    path: tuple | None  # a key path into the executive (filter mode), or None for a name
    bounds: Bounds | None
    shape: tuple[int, ...]

    def get(self, ex: Executive):
        if self.path is None:
            return parameter(ex, self.name).get(ex)
        return _follow(ex, self.path)

    def set(self, ex: Executive, value) -> Executive:
        if self.path is None:
            return parameter(ex, self.name).set(ex, value)
        return eqx.tree_at(lambda e: _follow(e, self.path), ex, value)


def _constrain(u, bounds: Bounds | None):
    """Unconstrained -> constrained (traced)."""
    if bounds is None:
        return u
    lo, hi = bounds
    if lo is not None and hi is not None:
        return lo + (hi - lo) * jax.nn.sigmoid(u)
    if lo is not None:
        return lo + jax.nn.softplus(u)
    return hi - jax.nn.softplus(u)


def _unconstrain(x: np.ndarray, bounds: Bounds | None) -> np.ndarray:
    """Constrained -> unconstrained (host, float64)."""
    x = np.asarray(x, np.float64)
    if bounds is None:
        return x
    lo, hi = bounds
    if lo is not None and hi is not None:
        p = (x - lo) / (hi - lo)
        return np.log(p) - np.log1p(-p)
    y = x - lo if lo is not None else hi - x
    return y + np.log(-np.expm1(-y))  # inverse softplus, stable for large y


def _inside(x: np.ndarray, bounds: Bounds | None) -> bool:
    if bounds is None:
        return bool(np.all(np.isfinite(x)))
    lo, hi = bounds
    ok = np.isfinite(x)
    if lo is not None:
        ok &= x > lo
    if hi is not None:
        ok &= x < hi
    return bool(np.all(ok))


def _check_bounds(name: str, b) -> Bounds | None:
    if b is None:
        return None
    try:
        lo, hi = b
    except (TypeError, ValueError):
        raise ValueError(f"bounds[{name!r}] must be a pair (lo, hi) (either may be None), got {b!r}") from None
    out = []
    for label, v in (("lo", lo), ("hi", hi)):
        if v is None:
            out.append(None)
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"bounds[{name!r}]: {label}={v!r} is not a number") from None
        out.append(None if math.isinf(v) else v)
        if math.isnan(v):
            raise ValueError(f"bounds[{name!r}]: {label} is NaN")
    lo, hi = out
    if lo is not None and hi is not None and not lo < hi:
        raise ValueError(f"bounds[{name!r}]: lower bound {lo} must be below upper bound {hi}")
    return None if lo is None and hi is None else (lo, hi)


def _default_bounds(ex: Executive, path: str) -> Bounds | None:
    """Initial values stay in their variable's domain; initial confidences in [0, 1]."""
    owner, _, field = path.partition(".")
    if owner not in ex.layout.var_index:
        return None
    if field == "init_confidence":
        return (0.0, 1.0)
    dom = ex.variable(owner).domain
    if isinstance(dom, RangeDomain) and (dom.lo is not None or dom.hi is not None):
        return (dom.lo, dom.hi)
    return None


def _follow(tree, path):
    for k in path:
        if isinstance(k, jax.tree_util.GetAttrKey):
            tree = getattr(tree, k.name)
        elif isinstance(k, jax.tree_util.SequenceKey):
            tree = tree[k.idx]
        elif isinstance(k, jax.tree_util.DictKey):
            tree = tree[k.key]
        else:
            raise ModelError(f"calibrate: cannot address the leaf at {jax.tree_util.keystr(path)}")
    return tree


def _path_name(ex: Executive, path) -> str:
    ks = list(path)
    if (
        len(ks) == 3
        and isinstance(ks[0], jax.tree_util.GetAttrKey)
        and ks[0].name == "mechanisms"
        and isinstance(ks[1], jax.tree_util.SequenceKey)
        and isinstance(ks[2], jax.tree_util.GetAttrKey)
    ):
        return f"{ex.layout.mechanisms[ks[1].idx]}.{ks[2].name}"
    return jax.tree_util.keystr(path).lstrip(".")


def _fittable(ex: Executive) -> list[str]:
    names = []
    for m in ex.mechanisms:
        for f in dataclasses.fields(m):
            if f.name in BASE_FIELDS:
                continue
            v = getattr(m, f.name)
            if eqx.is_inexact_array(v):
                names.append(f"{m.name}.{f.name}")
    names += [f"{v}.init" for v in ex.layout.variables]
    return names


def _resolve_params(ex: Executive, params, bounds) -> list[_Param]:
    if params is None:
        raise ModelError(
            "calibrate: say which parameters to fit, e.g. params=['sir.beta'] or an equinox "
            f"filter; this executive's parameters: {_fittable(ex)}"
        )
    bounds = dict(bounds or {})
    out: list[_Param] = []
    if isinstance(params, str):
        params = [params]
    if isinstance(params, Executive) or (callable(params) and not isinstance(params, (list, tuple))):
        # an equinox filter: a pytree of bools shaped like ex, or a function leaf -> bool
        spec = params if isinstance(params, Executive) else jax.tree.map(params, ex)
        try:
            chosen = eqx.filter(ex, spec)
        except ValueError as e:
            raise ModelError(f"calibrate: params filter does not match the executive: {e}") from None
        for path, leaf in jax.tree_util.tree_flatten_with_path(chosen)[0]:
            name = _path_name(ex, path)
            if not eqx.is_inexact_array(leaf):
                raise ModelError(f"calibrate: the filter selects {name!r}, which is not a float array")
            out.append(_Param(name, tuple(path), _check_bounds(name, bounds.pop(name, None)), tuple(leaf.shape)))
        if not out:
            raise ModelError("calibrate: the params filter selects no float leaf of the executive")
    else:
        seen = set()
        for path in params:
            if not isinstance(path, str):
                raise ModelError(f"calibrate: parameter names are strings like 'sir.beta', got {path!r}")
            if path in seen:
                raise ModelError(f"calibrate: parameter {path!r} is listed twice")
            seen.add(path)
            try:
                leaf = parameter(ex, path).get(ex)
            except ModelError as e:
                raise ModelError(f"calibrate: {e}") from None
            if not eqx.is_inexact_array(leaf):
                raise ModelError(
                    f"calibrate: parameter {path!r} is {type(leaf).__name__} {leaf!r}, not a float "
                    "array; only float parameters can be fitted"
                )
            b = bounds.pop(path) if path in bounds else _default_bounds(ex, path)
            out.append(_Param(path, None, _check_bounds(path, b), tuple(jnp.shape(leaf))))
    if bounds:
        raise ModelError(
            f"calibrate: bounds given for {sorted(bounds)}, which are not fitted; fitted: "
            f"{[p.name for p in out]}"
        )
    return out


def _build(ex: Executive, params: list[_Param], theta) -> Executive:
    dtype = jnp.dtype(ex.dtype)
    for p, u in zip(params, theta):
        ex = p.set(ex, jnp.asarray(_constrain(u, p.bounds), dtype))
    return ex


# ---------------------------------------------------------------------------- data
def _prepare_data(ex: Executive, data, steps, where: str = "calibrate"):
    if not isinstance(data, Mapping) or not data:
        raise ValueError(
            f"{where}: data must be a non-empty dict {{variable name: (steps_observed, values_observed)}}"
        )
    names, idx, obs = [], [], []
    for name, pair in data.items():
        name = getattr(name, "name", name)
        if name not in ex.layout.var_index:
            raise ModelError(
                f"{where}: data for unknown variable {name!r}; variables: {list(ex.layout.variables)}"
            )
        if name in names:
            raise ValueError(f"{where}: data for {name!r} is given twice")
        try:
            s, v = pair
        except (TypeError, ValueError):
            raise ValueError(
                f"{where}: data[{name!r}] must be a pair (steps_observed, values_observed)"
            ) from None
        s = np.asarray(s)
        v = np.asarray(v, np.float64)
        if s.ndim != 1 or v.shape != s.shape:
            raise ValueError(
                f"{where}: data[{name!r}]: steps_observed and values_observed must be 1-D of the same "
                f"length, got shapes {s.shape} and {v.shape}"
            )
        if s.size == 0:
            raise ValueError(f"{where}: data[{name!r}] has no observations")
        if not np.issubdtype(s.dtype, np.integer):
            if not (np.issubdtype(s.dtype, np.floating) and np.all(s == np.round(s))):
                raise ValueError(f"{where}: data[{name!r}]: steps_observed must be integer step indices")
            s = s.astype(np.int64)
        if s.min() < 0:
            raise ValueError(f"{where}: data[{name!r}]: steps_observed must be >= 0, got {s.min()}")
        if np.isinf(v).any():
            raise ValueError(f"{where}: data[{name!r}]: values_observed contains infinities (NaN marks a missing value)")
        if np.isnan(v).all():
            raise ValueError(
                f"{where}: data[{name!r}] has no observations: every value is NaN (NaN marks a missing "
                "value); give at least one observed value or leave the variable out of data"
            )
        names.append(name)
        idx.append(s.astype(np.int32))
        obs.append(v)
    last = max(int(s.max()) for s in idx)
    if steps is None:
        steps = last + 1
    if not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"{where}: steps must be a positive int, got {steps!r}")
    if last >= steps:
        raise ValueError(
            f"{where}: an observation at step index {last} needs steps > {last} (got steps={steps}); "
            "row i of the trajectory is the value after step i + 1"
        )
    return tuple(names), tuple(idx), tuple(obs), int(steps)


def mse_loss(predicted: dict, observed: dict):
    """Mean squared error over every observed point (NaN observations are skipped).

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> float(pj.mse_loss({"I": jnp.array([1.0, 2.0])}, {"I": jnp.array([1.0, jnp.nan])}))
    0.0
    """
    total, count = 0.0, 0.0
    for name, o in observed.items():
        p = predicted[name]
        ok = ~jnp.isnan(o)
        d = jnp.where(ok, p - jnp.where(ok, o, 0), 0)
        total = total + jnp.sum(d * d)
        count = count + jnp.sum(ok)
    return total / jnp.maximum(count, 1)


# ---------------------------------------------------------------------------- simulation
def _run(ex: Executive, state, steps: int, save: Save, remat: bool):
    """``ex.run`` with rows written one by one: differentiated, the blocks that make a
    forward run faster cost more in the backward pass (figures in benchmarks/README.md,
    bench_calibrate). ``state`` descends from ``ex.init``, so the variables joined
    there stay joined."""
    plan = choose_plan(ex, traced=True, all_joined=starts_joined(ex)).replace(block_rows=False)
    return run_jit(ex, state, int(steps), save, remat, plan)


def _simulate(ex: Executive, key, steps: int, names, remat: bool, segment: int | None = None):
    """Values of ``names`` after every step (row i = after step i + 1), as (steps, n).

    ``segment=k`` checkpoints segments of ``k`` steps (each step inside them
    rematerialised too), so the backward pass keeps ``steps / k + k`` states.
    """
    save = Save(variables=names, fields=("value",))
    state = ex.init(key)
    stack = lambda traj: jnp.stack([traj.value(n) for n in names], axis=-1)
    if segment is None:
        _, traj = _run(ex, state, steps, save, remat)
        return stack(traj)
    seg = int(segment)
    n_seg, rest = divmod(steps, seg)

    def segment(s, _):
        s, traj = _run(ex, s, seg, save, True)
        return s, stack(traj)

    state, vals = jax.lax.scan(jax.checkpoint(segment), state, None, length=n_seg)
    vals = vals.reshape(n_seg * seg, len(names))
    if rest:
        state, traj = _run(ex, state, rest, save, True)
        vals = jnp.concatenate([vals, stack(traj)], axis=0)
    return vals


# ---------------------------------------------------------------------------- history
@dataclasses.dataclass(frozen=True, repr=False)
class CalibrationHistory:
    """What :func:`calibrate` did.

    Attributes:
        loss: the loss at each iteration (before that iteration's update), of the
            start that was returned; ``len(loss)`` is the number of iterations it
            ran (``iterations`` unless ``tol`` stopped it early).
        params: ``{name: array (len(loss), *shape)}``, the parameter values at which
            each loss was evaluated.
        fitted: ``{name: array}``, the returned parameter values (those of the
            lowest loss seen).
        best_loss: the loss at ``fitted``.
        converged: whether ``tol`` stopped the returned start: its loss changed by at
            most ``tol * |loss|`` (or ``atol``) for ``patience`` consecutive
            iterations. Always False with ``tol=None`` (every iteration runs), which
            says nothing about the quality of the fit.
        nonfinite: iterations whose loss or gradient was not finite (their update
            was skipped).
        best_start: index of the returned start.
        start_loss: ``(starts, n)`` losses of every start (NaN after a start stopped).
        start_best_loss: ``(starts,)`` the lowest loss each start reached.
        start_fitted: ``{name: array (starts, *shape)}``, each start's best parameters.
        start_init: ``{name: array (starts, *shape)}``, each start's initial parameters.
        seconds: wall-clock time, compilation included.
        tol: the ``tol`` the fit ran with (None: no early stopping).
    """

    loss: np.ndarray
    params: dict
    fitted: dict
    best_loss: float
    converged: bool
    nonfinite: int
    best_start: int
    start_loss: np.ndarray
    start_best_loss: np.ndarray
    start_fitted: dict
    start_init: dict
    seconds: float
    tol: float | None = None

    @property
    def iterations(self) -> int:
        return len(self.loss)

    def __len__(self) -> int:
        return len(self.loss)

    def __repr__(self):
        fitted = ", ".join(f"{k}={np.array2string(np.asarray(v), precision=4)}" for k, v in self.fitted.items())
        return (
            f"CalibrationHistory(iterations={self.iterations}, best_loss={self.best_loss:.6g}, "
            f"converged={self.converged}{' (tol=None: every iteration ran)' if self.tol is None else ''}, "
            f"starts={len(self.start_best_loss)}, fitted: {fitted})"
        )


# ---------------------------------------------------------------------------- calibrate
def _tree_where(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


@dataclasses.dataclass(frozen=True)
class _Config:
    """Static configuration of a fit (hashable: equal configs share a compilation)."""

    params: tuple[_Param, ...]
    names: tuple[str, ...]
    steps: int
    remat: bool
    segment: int | None
    samples: int
    resample: bool
    tol: float | None
    atol: float
    patience: int
    chunk: int
    loss: Callable
    optimizer: Any


def _takes_extra_args(opt) -> bool:
    try:
        import optax
    except ImportError:  # pragma: no cover - optax is a dependency
        return False
    return isinstance(opt, optax.GradientTransformationExtraArgs)


def _objective(cfg: _Config, theta, ex: Executive, key, obs, idx):
    """The loss of one parameter set (unconstrained ``theta``)."""
    dtype = jnp.dtype(ex.dtype)
    model = _build(ex, cfg.params, theta)

    def one(k):
        vals = _simulate(model, k, cfg.steps, cfg.names, cfg.remat, cfg.segment)
        pred = {n: vals[:, j][i] for j, (n, i) in enumerate(zip(cfg.names, idx))}
        return jnp.asarray(cfg.loss(pred, obs), dtype)

    if cfg.samples == 1:
        return one(key)
    return jnp.mean(jax.vmap(one)(jax.random.split(key, cfg.samples)))


def _iteration(cfg: _Config, carry, ex, key, obs, idx, active):
    """One optimiser step of one start; inactive (or stopped) starts keep their carry."""
    theta, opt_state, best_theta, best_loss, prev, calm, stopped, done, nonfinite = carry
    val, g = jax.value_and_grad(_objective, argnums=1)(cfg, theta, ex, key, obs, idx)
    finite = jnp.isfinite(val)
    for leaf in g:
        finite = finite & jnp.all(jnp.isfinite(leaf))
    active = active & ~stopped
    if cfg.tol is not None:
        change = jnp.abs(val - prev)
        quiet = jnp.isfinite(prev) & finite & ((change <= cfg.tol * jnp.abs(prev)) | (change <= cfg.atol))
        calm_new = jnp.where(quiet, calm + 1, 0)
        converged = calm_new >= cfg.patience
    else:
        calm_new, converged = calm, jnp.asarray(False)
    better = active & finite & (val < best_loss)
    g = jax.tree.map(lambda a: jnp.where(finite, a, 0), g)
    opt = cfg.optimizer
    if _takes_extra_args(opt):  # e.g. optax.lbfgs (line search), optax.contrib.reduce_on_plateau
        updates, new_opt = opt.update(
            g, opt_state, theta, value=val, grad=g,
            value_fn=lambda th: _objective(cfg, th, ex, key, obs, idx),
        )
    else:
        updates, new_opt = opt.update(g, opt_state, theta)
    new_theta = jax.tree.map(lambda a, b: a + b, theta, updates)
    move = active & finite & ~converged
    new_carry = (
        _tree_where(move, new_theta, theta),
        _tree_where(move, new_opt, opt_state),
        _tree_where(better, theta, best_theta),
        jnp.where(better, val, best_loss),
        jnp.where(active, val, prev),
        jnp.where(active, calm_new, calm),
        stopped | (active & converged),
        done + active.astype(jnp.int32),
        nonfinite + (active & ~finite).astype(jnp.int32),
    )
    shown = tuple(_constrain(u, p.bounds) for p, u in zip(cfg.params, theta))
    return new_carry, (jnp.where(active, val, jnp.nan), shown)


@eqx.filter_jit
def _run_chunk(cfg: _Config, carry, ex, key, obs, idx, it0, n_valid):
    """``cfg.chunk`` optimiser steps of every start (``vmap``); steps past ``n_valid``
    change nothing (so the last, shorter chunk needs no new compilation)."""

    def body(c, j):
        k = jax.random.fold_in(key, it0 + j) if cfg.resample else key
        return jax.vmap(lambda cc: _iteration(cfg, cc, ex, k, obs, idx, j < n_valid))(c)

    return jax.lax.scan(body, carry, jnp.arange(cfg.chunk))


def _starts(params, x0, starts, spread, key):
    """Initial constrained values, {name: (K, *shape)} as float64 numpy."""
    if isinstance(starts, Mapping):
        unknown = sorted(set(starts) - {p.name for p in params})
        if unknown:
            raise ModelError(f"calibrate: starts given for {unknown}, which are not fitted")
        sizes = {len(np.asarray(v)) for v in starts.values()}
        if len(sizes) != 1:
            raise ValueError(f"calibrate: every entry of starts must have the same length, got {sorted(sizes)}")
        k = sizes.pop()
        out = {}
        for p in params:
            if p.name in starts:
                v = np.asarray(starts[p.name], np.float64)
                if v.shape != (k, *p.shape):
                    raise ValueError(
                        f"calibrate: starts[{p.name!r}] must have shape {(k, *p.shape)}, got {v.shape}"
                    )
            else:
                v = np.broadcast_to(x0[p.name], (k, *p.shape)).copy()
            out[p.name] = v
        return out, k
    k = 1 if starts is None else starts
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"calibrate: starts must be a positive int or a dict of arrays, got {starts!r}")
    out = {}
    for i, p in enumerate(params):
        v0 = np.asarray(x0[p.name], np.float64)
        kp = jax.random.fold_in(key, i)
        shape = (k - 1, *p.shape)
        z = np.asarray(jax.random.normal(kp, shape, jnp.float32), np.float64)
        u = np.asarray(jax.random.uniform(jax.random.fold_in(kp, 1), shape, jnp.float32, 0.02, 0.98), np.float64)
        b = p.bounds
        if b is None:
            v = np.where(v0 != 0, v0 * np.exp(spread * z), spread * z)
        elif b[0] is not None and b[1] is not None:
            v = b[0] + (b[1] - b[0]) * u
        elif b[0] is not None:
            v = b[0] + (v0 - b[0]) * np.exp(spread * z)
        else:
            v = b[1] - (b[1] - v0) * np.exp(spread * z)
        out[p.name] = np.concatenate([v0[None], v], axis=0)
    return out, k


@functools.lru_cache(maxsize=1)
def _default_optimizer():
    """One ``optax.adam(0.05)`` for every call (an equal configuration reuses the
    compilation; a new optimiser object would not)."""
    import optax

    return optax.adam(0.05)


def calibrate(
    ex: Executive,
    data: Mapping,
    params=None,
    *,
    steps: int | None = None,
    optimizer=None,
    iterations: int = 500,
    seed: int = 0,
    key=None,
    loss: Callable | None = None,
    bounds: Mapping | None = None,
    tol: float | None = None,
    atol: float = 0.0,
    patience: int = 10,
    starts=None,
    spread: float = 0.5,
    samples: int = 1,
    resample: bool = False,
    remat: bool | int = False,
    chunk: int | None = None,
    progress: bool = True,
) -> tuple[Executive, CalibrationHistory]:
    """Fit parameters of an executive to observed data by gradient descent.

    Arguments:
        ex: the executive (its current parameter values are the starting point).
        data: ``{variable name: (steps_observed, values_observed)}``; observation
            ``k`` is matched to ``traj.value(name)[steps_observed[k]]`` of
            ``ex.run(ex.init(key), steps=steps)`` (row ``i`` is the value after step
            ``i + 1``). Observations may be sparse; a NaN marks a missing one
            (a series with no value that is not NaN raises ``ValueError``).
        params: what to fit: names ``"<mechanism>.<field>"`` or ``"<variable>.init"``
            (``"<variable>.init_confidence"``), or an equinox filter (a pytree of
            bools shaped like ``ex``, or a function ``leaf -> bool`` such as
            ``eqx.is_inexact_array``), whose leaves are named ``"<mechanism>.<field>"``.
        steps: length of each run (default: one past the last observed step).
        optimizer: an optax ``GradientTransformation`` (default ``optax.adam(0.05)``).
            It works on the unconstrained parameters; transformations that take
            extra arguments get ``value``, ``grad`` and ``value_fn`` (so
            ``optax.lbfgs()`` and its line search work). Repeated calls with the same
            optimiser object, loss function and shapes reuse one compilation.
        iterations: optimiser steps (``len(history.loss) == iterations`` unless ``tol``
            stops the fit earlier).
        seed, key: the PRNG key of the runs is ``jax.random.key(seed)`` (or ``key``),
            the same at every iteration (common random numbers) unless ``resample``.
        loss: ``loss(predicted, observed) -> scalar``, both dicts ``{name: array
            (n_observations,)}`` (``observed`` keeps its NaNs); default
            :func:`mse_loss`, the mean squared error over the observed points.
        bounds: ``{name: (lo, hi)}`` (either may be None): the parameter is
            ``lo + (hi - lo) * sigmoid(u)``, ``lo + softplus(u)`` or ``hi - softplus(u)``
            of an unconstrained ``u``; its starting value must lie strictly inside.
            Initial values are bounded by their variable's ``RangeDomain`` and initial
            confidences by [0, 1] unless given here (``None`` lifts a bound).
        tol, atol, patience: stop a start once the change of its loss stayed
            ``<= tol * |loss|`` (or ``<= atol``) for ``patience`` consecutive
            iterations; ``tol=None`` (the default) runs every iteration.
        starts: an int ``K``: ``K`` starting points run together under ``vmap``
            (the first is ``ex``'s values; the others uniform within two-sided
            bounds, else ``x0 * exp(spread * N(0, 1))`` (distances to a one-sided
            bound likewise)); or ``{name: array (K, ...)}`` explicit starting values.
            The start with the lowest loss is returned.
        samples: average the loss over this many runs, with the keys
            ``jax.random.split(key, samples)``.
        resample: a fresh key at every iteration, ``jax.random.fold_in(key, i)`` at
            iteration ``i``, instead of common random numbers.
        remat: ``True`` passes ``remat=True`` to ``ex.run`` (each step recomputed in
            the backward pass); an int ``k`` also checkpoints segments of ``k``
            steps, so gradient memory grows like ``steps / k + k`` saved states.
        chunk: optimiser steps per jitted call (progress and the ``tol`` check
            happen between calls; default about ``iterations / 20``, at most 50).
        progress: show a tqdm progress bar.

    Returns:
        ``(fitted, history)``: the executive with the fitted parameters (those of
        the lowest loss seen) and a :class:`CalibrationHistory`.

    >>> import jax, numpy as np, optax, procela_jax as pj
    >>> truth = pj.demos.sir.make_executive(beta=0.35).replace({"seasonal.weight": 0.0})
    >>> _, traj = truth.run(truth.init(jax.random.key(0)), steps=30)
    >>> t = np.arange(0, 30, 3)
    >>> ex = truth.replace({"sir.beta": 0.3})
    >>> fitted, history = pj.calibrate(ex, data={"I": (t, np.asarray(traj.value("I"))[t])},
    ...                                params=["sir.beta"], steps=30, optimizer=optax.adam(0.02),
    ...                                iterations=60, progress=False)
    >>> len(history.loss), round(float(fitted.get("sir.beta")), 2)
    (60, 0.35)
    """
    t_start = time.perf_counter()
    if not isinstance(ex, Executive):
        raise TypeError(f"calibrate: expected an Executive, got {type(ex).__name__}")
    if not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"calibrate: iterations must be a positive int, got {iterations!r}")
    if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"calibrate: tol must be a number >= 0 or None, got {tol!r}")
    if not (isinstance(atol, (int, float)) and atol >= 0):
        raise ValueError(f"calibrate: atol must be a number >= 0, got {atol!r}")
    if not isinstance(patience, (int, np.integer)) or patience < 1:
        raise ValueError(f"calibrate: patience must be a positive int, got {patience!r}")
    if not isinstance(samples, (int, np.integer)) or samples < 1:
        raise ValueError(f"calibrate: samples must be a positive int, got {samples!r}")
    if isinstance(remat, (bool, np.bool_)):
        remat, segment = bool(remat), None
    elif not isinstance(remat, (int, np.integer)) or remat < 1:
        raise ValueError(f"calibrate: remat must be a bool or a positive int (segment length), got {remat!r}")
    else:
        remat, segment = True, int(remat)
    if optimizer is None:
        optimizer = _default_optimizer()
    if not (hasattr(optimizer, "init") and hasattr(optimizer, "update")):
        raise TypeError(f"calibrate: optimizer must be an optax GradientTransformation, got {optimizer!r}")
    loss_fn = mse_loss if loss is None else loss
    if not callable(loss_fn):
        raise TypeError(f"calibrate: loss must be callable loss(predicted, observed), got {loss!r}")
    iterations = int(iterations)
    if chunk is None:
        chunk = max(1, min(50, iterations // 20))
    if not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"calibrate: chunk must be a positive int, got {chunk!r}")
    chunk = int(min(chunk, iterations))

    names, idx, obs_np, steps = _prepare_data(ex, data, steps)
    plist = _resolve_params(ex, params, bounds)
    dtype = jnp.dtype(ex.dtype)
    base_key = jax.random.key(seed) if key is None else key
    x0 = {p.name: np.asarray(p.get(ex), np.float64) for p in plist}
    init_values, n_starts = _starts(plist, x0, starts, float(spread), jax.random.fold_in(base_key, 0x5EED))
    for p in plist:
        if not _inside(init_values[p.name], p.bounds):
            bad = init_values[p.name]
            raise ModelError(
                f"calibrate: the starting value {bad if bad.size > 1 else float(bad.ravel()[0])} of "
                f"{p.name!r} must lie strictly inside its bounds {p.bounds} (and be finite); change "
                f"it with ex.replace({{{p.name!r}: ...}}) or pass bounds={{{p.name!r}: ...}}"
            )
    theta0 = tuple(jnp.asarray(_unconstrain(init_values[p.name], p.bounds), dtype) for p in plist)
    obs = {n: jnp.asarray(o, dtype) for n, o in zip(names, obs_np)}
    idx_j = tuple(jnp.asarray(i) for i in idx)

    cfg = _Config(
        params=tuple(plist), names=names, steps=steps, remat=remat, segment=segment, samples=int(samples),
        resample=bool(resample), tol=None if tol is None else float(tol), atol=float(atol),
        patience=int(patience), chunk=chunk, loss=loss_fn, optimizer=optimizer,
    )
    opt_state = jax.vmap(optimizer.init)(theta0)
    zeros_i = jnp.zeros((n_starts,), jnp.int32)
    carry = (
        theta0,
        opt_state,
        theta0,
        jnp.full((n_starts,), jnp.inf, dtype),
        jnp.full((n_starts,), jnp.inf, dtype),
        zeros_i,
        jnp.zeros((n_starts,), bool),
        zeros_i,
        zeros_i,
    )
    losses, shown = [], []
    from tqdm import tqdm

    bar = tqdm(total=iterations, desc="calibrate", disable=not progress, leave=False)
    it = 0
    try:
        while it < iterations:
            n_valid = min(chunk, iterations - it)
            carry, (rec, vals) = _run_chunk(cfg, carry, ex, base_key, obs, idx_j,
                                            jnp.asarray(it, jnp.int32), jnp.asarray(n_valid, jnp.int32))
            rec = np.asarray(rec)[:n_valid]
            losses.append(rec)
            shown.append([np.asarray(v)[:n_valid] for v in vals])
            it += n_valid
            bar.update(n_valid)
            last = rec[-1]
            if np.isfinite(last).any():
                bar.set_postfix(loss=f"{np.nanmin(last):.6g}")
            if tol is not None and bool(np.all(np.asarray(carry[6]))):
                break
    finally:
        bar.close()
    losses = np.concatenate(losses, axis=0).T  # (K, n)
    shown = [np.concatenate([c[i] for c in shown], axis=0) for i in range(len(plist))]  # (n, K, ...)
    _, _, best_theta, best_loss, _, _, stopped, done, nonfinite = jax.tree.map(np.asarray, carry)
    if not np.isfinite(best_loss).any():
        raise FloatingPointError(
            "calibrate: the loss was never finite; check the data, the starting values and the loss"
        )
    k = int(np.nanargmin(np.where(np.isfinite(best_loss), best_loss, np.nan)))
    fitted_theta = tuple(jnp.asarray(t[k]) for t in best_theta)
    fitted = _build(ex, plist, fitted_theta)
    n_k = int(done[k])
    start_fitted = {
        p.name: np.asarray(_constrain(jnp.asarray(t), p.bounds)) for p, t in zip(plist, best_theta)
    }
    history = CalibrationHistory(
        loss=losses[k, :n_k].copy(),
        params={p.name: s[:n_k, k] for p, s in zip(plist, shown)},
        fitted={p.name: np.asarray(p.get(fitted)) for p in plist},
        best_loss=float(best_loss[k]),
        converged=bool(stopped[k]),
        nonfinite=int(nonfinite[k]),
        best_start=k,
        start_loss=losses,
        start_best_loss=np.asarray(best_loss),
        start_fitted=start_fitted,
        start_init={p.name: init_values[p.name] for p in plist},
        seconds=time.perf_counter() - t_start,
        tol=None if tol is None else float(tol),
    )
    return fitted, history
