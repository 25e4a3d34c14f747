"""Epistemic signals: pure measures of how much the world knows, recordable per step.

Every signal is a pure function of arrays, so it can be called inside invariant
conditions, handlers, hooks and ``Save.fn``, and it works under ``jit``, ``vmap``
and ``grad``. Signals over hypotheses reduce the last axis (the hypothesis
slots), so leading axes batch several variables or scenarios.

A hypothesis signal takes its hypotheses in one of three forms:

* ``signal(view, "X")``: the pending hypotheses of ``X`` in a RUNTIME
  invariant; elsewhere (PRE/POST views, hooks, ``Save.fn`` given a state) the
  hypotheses of the last step, kept when the executive is built with
  ``audit=True``;
* ``signal(view.pending("X"))``: a mapping with ``values``, ``confidences``,
  ``weights`` and ``mask``;
* ``signal(array, mask=..., ...)``: plain arrays.

Only valid hypotheses (``mask`` True) count. A fully masked input gives 0 (no
support, no disagreement), never NaN, and no NaN reaches a gradient: masked
entries are replaced before any arithmetic (the double-``where`` trick).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax.numpy as jnp

from ._policy import Policy, as_policy
from ._state import State
from ._view import View

_KEYS = ("values", "confidences", "weights", "mask")


def hypotheses(source, name) -> dict:
    """The hypotheses of variable ``name`` as a dict of slot arrays
    (``values``, ``confidences``, ``weights``, ``mask``).

    ``source`` is a :class:`View` (its pending hypotheses in the RUNTIME phase,
    otherwise the audit of the last step) or a :class:`State` (its audit: build
    the executive with ``audit=True``).

    >>> import jax, jax.numpy as jnp, procela_jax as pj
    >>> X = pj.Variable("X", init=0.0)
    >>> class Const(pj.Mechanism):
    ...     v: float
    ...     def transform(self, values, key):
    ...         return {"X": pj.VariableRecord(jnp.asarray(self.v), confidence=0.5)}
    >>> ex = pj.Executive(variables=[X], audit=True, mechanisms=[
    ...     Const(v=1.0, writes=[X], name="a"), Const(v=3.0, writes=[X], name="b")])
    >>> h = pj.hypotheses(ex.step(ex.init(jax.random.key(0))), "X")
    >>> h["values"].tolist(), h["mask"].tolist()
    ([1.0, 3.0], [True, True])
    """
    name = getattr(name, "name", name)
    if isinstance(source, View):
        if source._pending is not None:
            h = source.pending(name)
            return {k: h[k] for k in _KEYS}
        state = source.state
    elif isinstance(source, State):
        state = source
    else:
        raise TypeError(f"hypotheses: expected a View or a State, got {type(source).__name__}")
    i = state.layout.var(name)
    if state.audit is None:
        raise ValueError(
            f"the hypotheses of {name!r} are visible in a RUNTIME invariant's view; elsewhere "
            "build the executive with audit=True so the state keeps the last step's hypotheses"
        )
    return {k: state.audit[k][..., i, :] for k in _KEYS}


def _source(x, name, where: str):
    """``(values, confidences, weights, mask)`` from a View/State + name or a mapping;
    ``None`` when ``x`` is a plain array."""
    if isinstance(x, (View, State)):
        if name is None:
            raise TypeError(f"{where}(view, name): give the variable's name")
        h = hypotheses(x, name)
    elif isinstance(x, Mapping):
        if name is not None:
            raise TypeError(f"{where}: a mapping of hypotheses takes no name")
        missing = [k for k in _KEYS if k not in x]
        if missing:
            raise KeyError(f"{where}: the hypotheses mapping lacks {missing}; it needs {list(_KEYS)}")
        h = x
    else:
        if name is not None:
            raise TypeError(
                f"{where}: a name is only meaningful with a View or a State; got {type(x).__name__}"
            )
        return None
    return tuple(jnp.asarray(h[k]) for k in _KEYS)


def _mask(mask, like):
    if mask is None:
        return jnp.ones(jnp.shape(like), bool)
    return jnp.broadcast_to(jnp.asarray(mask, bool), jnp.shape(like))


def _zero_masked(x, mask):
    return jnp.where(mask, x, jnp.zeros_like(x))


def _safe_div(num, den):
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def _safe_sqrt(x):
    ok = x > 0
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, x, 1)), 0)


def _weights_of(kind, confidences, weights, mask):
    if kind == "weight":
        w = weights
    elif kind == "confidence":
        w = confidences
    elif kind is None or kind == "none":
        w = jnp.ones_like(confidences)
    else:
        raise ValueError(f"weight_by must be 'weight', 'confidence' or None, got {kind!r}")
    return w


def _normalised(w, mask):
    """Weights of the valid slots, summing to 1; all-zero weights fall back to equal
    weights (as :class:`WeightedVotingPolicy` does)."""
    w = _zero_masked(jnp.maximum(w, 0), mask)
    total = jnp.sum(w, axis=-1, keepdims=True)
    w = jnp.where(total > 0, w, mask.astype(w.dtype))
    return _safe_div(w, jnp.sum(w, axis=-1, keepdims=True))


# ---- signals over hypotheses -----------------------------------------------------------
def confidence(x, name=None, *, mask=None):
    """Mean confidence of the valid hypotheses (0 when there is none).

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> round(float(pj.confidence(jnp.array([0.2, 0.6, 0.9]), mask=jnp.array([True, True, False]))), 6)
    0.4
    """
    src = _source(x, name, "confidence")
    if src is None:
        c = jnp.asarray(x)
        m = _mask(mask, c)
    else:
        _, c, _, m = src
    m = m.astype(bool)
    n = jnp.sum(m, axis=-1).astype(c.dtype)
    return _safe_div(jnp.sum(_zero_masked(c, m), axis=-1), n)


def conflict(x, name=None, *, mask=None, weights=None, kind: str = "std", weight_by="weight"):
    """Disagreement among the valid hypotheses.

    ``kind="std"``: the weighted population standard deviation of the values
    around their weighted mean; ``kind="range"``: max minus min. Weights are the
    records' voting weights (``weight_by="weight"``), their confidences
    (``"confidence"``) or equal (``None``); all-zero weights count equally. In the
    array form, ``weights=None`` means equal weights. 0 for identical hypotheses,
    for a single one and for none.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> float(pj.conflict(jnp.array([1.0, 3.0])))
    1.0
    >>> float(pj.conflict(jnp.array([1.0, 3.0, 100.0]), mask=jnp.array([True, True, False]), kind="range"))
    2.0
    """
    if kind not in ("std", "range"):
        raise ValueError(f"conflict: kind must be 'std' or 'range', got {kind!r}")
    src = _source(x, name, "conflict")
    if src is None:
        v = jnp.asarray(x)
        m = _mask(mask, v)
        w = jnp.ones_like(v) if weights is None else jnp.broadcast_to(jnp.asarray(weights, v.dtype), v.shape)
    else:
        v, c, w0, m = src
        m = m.astype(bool)
        w = _weights_of(weight_by, c, w0, m)
    v = _zero_masked(v, m)
    if kind == "range":
        hi = jnp.max(jnp.where(m, v, -jnp.inf), axis=-1)
        lo = jnp.min(jnp.where(m, v, jnp.inf), axis=-1)
        some = jnp.any(m, axis=-1)
        return jnp.where(some, jnp.where(some, hi, 0) - jnp.where(some, lo, 0), 0)
    p = _normalised(w, m)
    mean = jnp.sum(p * v, axis=-1, keepdims=True)
    var = jnp.sum(p * (v - mean) ** 2, axis=-1)
    return _safe_sqrt(var)


def entropy(x, name=None, *, mask=None, weight_by="weight", normalize: bool = False):
    """Shannon entropy (nats) of the normalized weights of the valid hypotheses.

    ``p_i = w_i / sum(w)``; ``H = -sum p_i log p_i`` (``0 log 0 = 0``). Weights are
    the records' voting weights (``weight_by="weight"``) or their confidences
    (``"confidence"``); all-zero weights count equally (as the voting policy).
    In the array form ``x`` holds the weights. The maximum, ``log n``, is reached
    for equal weights; ``normalize=True`` divides by it (0 for fewer than two
    hypotheses).

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> round(float(pj.entropy(jnp.ones(4))), 6) == round(float(jnp.log(4.0)), 6)
    True
    >>> float(pj.entropy(jnp.array([0.0, 5.0, 0.0])))
    0.0
    """
    src = _source(x, name, "entropy")
    if src is None:
        w = jnp.asarray(x)
        if not jnp.issubdtype(w.dtype, jnp.floating):
            w = w.astype(float)
        m = _mask(mask, w)
    else:
        _, c, w0, m = src
        m = m.astype(bool)
        w = _weights_of(weight_by, c, w0, m)
    p = _normalised(w, m)
    pos = p > 0
    logp = jnp.log(jnp.where(pos, p, 1))
    h = 0.0 - jnp.sum(jnp.where(pos, p * logp, 0), axis=-1)
    if normalize:
        n = jnp.sum(m, axis=-1).astype(h.dtype)
        h = _safe_div(h, jnp.log(jnp.where(n > 1, n, 1)))
    return h


def fragility(
    x,
    name=None,
    *,
    policies: Sequence[Policy] | None = None,
    confidences=None,
    weights=None,
    mask=None,
    kind: str = "range",
):
    """How much the resolved value depends on the choice of policy: the spread of
    what each candidate policy would resolve from the same valid hypotheses.

    ``kind="range"`` (max minus min over the policies) or ``"std"`` (population
    standard deviation). ``policies`` defaults to the variable's own candidates
    when ``name`` is the :class:`Variable` itself (``fragility(view, X)``);
    otherwise pass them, e.g. ``ex.variable("X").policies``. 0 without valid
    hypotheses.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> pol = [pj.WeightedVotingPolicy(), pj.HighestConfidencePolicy()]
    >>> float(pj.fragility(jnp.array([10.0, 20.0]), confidences=jnp.array([0.2, 0.8]), policies=pol))
    5.0
    """
    if kind not in ("std", "range"):
        raise ValueError(f"fragility: kind must be 'std' or 'range', got {kind!r}")
    if policies is None:
        policies = getattr(name, "policies", None)
    if policies is None:
        raise TypeError(
            "fragility needs the candidate policies: pass policies=ex.variable(name).policies "
            "or the Variable itself as the name"
        )
    try:
        policies = [as_policy(p) for p in policies]
    except TypeError as e:
        raise TypeError(f"fragility: {e}") from None
    if not policies:
        raise ValueError("fragility needs at least one policy")
    src = _source(x, name, "fragility")
    if src is None:
        v = jnp.asarray(x)
        m = _mask(mask, v)
        c = jnp.ones_like(v) if confidences is None else jnp.broadcast_to(jnp.asarray(confidences, v.dtype), v.shape)
        w = jnp.ones_like(v) if weights is None else jnp.broadcast_to(jnp.asarray(weights, v.dtype), v.shape)
    else:
        v, c, w, m = src
        m = m.astype(bool)
    v, c, w = _zero_masked(v, m), _zero_masked(c, m), _zero_masked(w, m)
    outs = jnp.stack([jnp.asarray(p.resolve(v, c, w, m)[0], v.dtype) for p in policies], axis=-1)
    if kind == "range":
        spread = jnp.max(outs, axis=-1) - jnp.min(outs, axis=-1)
    else:
        mean = jnp.mean(outs, axis=-1, keepdims=True)
        spread = _safe_sqrt(jnp.mean((outs - mean) ** 2, axis=-1))
    return jnp.where(jnp.any(m, axis=-1), spread, 0)


# ---- coverage: prediction accuracy against a reference ---------------------------------
def coverage(*args, sigma=1.0):
    """Accuracy of a prediction against a reference: ``exp(-|prediction - reference| / sigma)``,
    1 for a perfect prediction, towards 0 as the error grows past ``sigma``.

    ``coverage(prediction, reference)`` on arrays (elementwise; e.g. each pending
    hypothesis against an observed value), or ``coverage(view, "P", "R")`` on the
    values of two variables.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> float(pj.coverage(3.0, 3.0)), round(float(pj.coverage(2.0, 7.0, sigma=5.0)), 6)
    (1.0, 0.367879)
    """
    if len(args) == 3 and isinstance(args[0], (View, State)):
        src, p, r = args
        prediction, reference = src.value(p), src.value(r)
    elif len(args) == 2 and not isinstance(args[0], (View, State)):
        prediction, reference = args
    else:
        raise TypeError("coverage(prediction, reference, sigma=...) or coverage(view, 'P', 'R', sigma=...)")
    if isinstance(sigma, (int, float)) and not sigma > 0:
        raise ValueError(f"coverage: sigma must be positive, got {sigma!r}")
    prediction, reference = jnp.asarray(prediction), jnp.asarray(reference)
    dtype = jnp.result_type(prediction, reference, float)
    err = jnp.abs(prediction.astype(dtype) - reference.astype(dtype))
    return jnp.exp(-err / sigma)


def ewma_update(previous, x, alpha):
    """One exponentially weighted moving average step: ``alpha * x + (1 - alpha) * previous``.

    ``previous`` NaN means "no value yet": the result is then ``x`` (the same
    start as a variable's running EWMA). Keep the running value in ``state.aux``
    (declare it ``jnp.nan`` at build time) and update it from a hook. NaN-safe
    for gradients with respect to ``x`` and ``alpha``.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> s = pj.ewma_update(jnp.nan, 1.0, 0.2)
    >>> float(s), round(float(pj.ewma_update(s, 0.0, 0.2)), 6)
    (1.0, 0.8)
    """
    previous, x = jnp.asarray(previous), jnp.asarray(x)
    dtype = jnp.result_type(previous, x, float)
    previous, x = previous.astype(dtype), x.astype(dtype)
    empty = jnp.isnan(previous)
    prev = jnp.where(empty, x, previous)
    return jnp.where(empty, x, alpha * x + (1 - alpha) * prev)


def smoothed_coverage(previous, prediction, reference, *, sigma=1.0, alpha=0.2):
    """``ewma_update(previous, coverage(prediction, reference, sigma=sigma), alpha)``:
    the running coverage, for a value kept in ``state.aux``.

    ``prediction`` may hold several predictions (e.g. one per mechanism of a
    family): their coverages are averaged over the last axis first.

    >>> import jax, jax.numpy as jnp, procela_jax as pj
    >>> def post(state, step):
    ...     cov = pj.smoothed_coverage(state.aux["cov"], state.value("P"), state.value("R"),
    ...                                sigma=5.0, alpha=0.2)
    ...     return state.with_aux({"cov": cov})
    >>> ex = pj.Executive(variables=[pj.Variable("P", init=1.0), pj.Variable("R", init=6.0)],
    ...                   post_step=post, aux={"cov": jnp.nan})
    >>> round(float(ex.step(ex.init(jax.random.key(0))).aux["cov"]), 6)
    0.367879
    """
    cov = coverage(prediction, reference, sigma=sigma)
    if jnp.ndim(prediction) > 0 and jnp.ndim(cov) > jnp.ndim(previous):
        cov = jnp.mean(cov, axis=-1)
    return ewma_update(previous, cov, alpha)
