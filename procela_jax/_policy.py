"""Resolution policies: how competing hypotheses become one committed value.

A policy is a small, hashable :class:`equinox.Module` whose ``resolve`` method is a
pure function of the hypothesis *slots* of a variable::

    resolve(values, confidences, weights, mask) -> (value, confidence, winner)

Every argument has shape ``(..., n_slots)`` (leading axes batch several
variables at once); ``mask`` marks the valid hypotheses. ``winner`` is the slot
index that decided the value on its own, or ``-1`` for a blend. The executive
only calls a policy when at least one slot is valid, but every policy must stay
NaN-free on fully masked rows (they are computed and discarded under ``vmap``).

Sums run left to right in slot order (slot order is mechanism order), so ties and
rounding match the original ``procela`` in float64.

``resolve_slots`` is the same function with the slots given one by one (a sequence
of arrays per argument). A sweep calls it, one variable at a time: under ``vmap``
each slot is then one contiguous column of scenarios, which XLA's CPU kernels
process many at a time, where a ``(scenarios, variables, slots)`` array is walked
element by element. The built-in policies compute slot by slot in both forms (the
same operations, the same bits); for others the default stacks the slots and calls
``resolve``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp


def seqsum(x, axis=-1):
    """Sum along ``axis`` strictly left to right (bit-compatible with a Python loop)."""
    x = jnp.moveaxis(x, axis, -1)
    n = x.shape[-1]
    if n == 0:
        return jnp.zeros(x.shape[:-1], x.dtype)
    if n > 64:  # long rows: exact order matters less than graph size
        return jnp.sum(x, axis=-1)
    return functools.reduce(lambda a, b: a + b, [x[..., i] for i in range(n)])


def _masked(x, mask):
    # the double-where trick: masked entries are replaced before any arithmetic,
    # so a NaN proposal in a masked slot can never reach a value or a gradient.
    return jnp.where(mask, x, jnp.zeros_like(x))


@jax.custom_jvp
def unfused(x):
    """``x`` itself, rounded on its own: use it on a product before adding it.

    XLA on CPU contracts ``acc + a * b`` into a fused multiply-add (one rounding
    instead of two), so a jitted sum of products can differ in the last bit from
    the same sum in Python. A select on the product's own value sits between the
    multiply and the add and stops the fusion (a select on a mask can be folded
    away when an outer select tests the same mask). The derivative is the identity.

    >>> import jax.numpy as jnp
    >>> float(unfused(jnp.asarray(0.1) * 3.0))
    0.30000001192092896
    """
    return jnp.where(x != 0, x, jnp.zeros_like(x))


@unfused.defjvp
def _unfused_jvp(primals, tangents):
    return unfused(primals[0]), tangents[0]


def _safe_div(num, den):
    ok = den != 0
    return jnp.where(ok, num / jnp.where(ok, den, 1), 0)


def _halves_mean(a, b):
    """``(a + b) / 2``, and ``a / 2 + b / 2`` where the sum alone overflows (the
    same bits wherever it does not)."""
    m = (a + b) / 2
    return jnp.where(jnp.isfinite(m) | ~(jnp.isfinite(a) & jnp.isfinite(b)), m, a / 2 + b / 2)


#: Weighted sums are taken of products scaled by this power of two, and the mean
#: scaled back: the sum of many values near the dtype's largest then does not
#: overflow, and every other result keeps its bits (a product by a power of two
#: is exact and commutes with rounding, down to values near the smallest normal
#: number, which XLA's CPU code flushes to zero anyway).
_SUM_SCALE = 2.0**-16


def _weighted_mean(total, v, w, wsum):
    """``total(v * w) / wsum`` (``w=None``: ``total(v) / wsum``), computed on
    scaled products (see ``_SUM_SCALE``)."""
    down = jnp.asarray(_SUM_SCALE, wsum.dtype)
    # unfused: XLA would otherwise factor the scale out of the sum (a*s + b*s -> (a+b)*s)
    terms = [unfused(a * down) for a in v] if w is None else [unfused(a * b * down) for a, b in zip(v, w)]
    return _safe_div(total(terms), wsum) / down


def _total(xs):
    """The sum of a sequence of arrays, left to right."""
    return functools.reduce(lambda a, b: a + b, xs)


def _unstack(x):
    return [x[..., j] for j in range(x.shape[-1])]


#: Rows of up to this many slots are resolved slot by slot (``resolve_slots``).
_NARROW = 64


class Policy(eqx.Module):
    """Base class of resolution policies.

    Subclass it and implement ``resolve``; or wrap a plain function with
    :class:`FunctionPolicy`.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> class TrustFirst(pj.Policy):
    ...     def resolve(self, values, confidences, weights, mask):
    ...         first = jnp.argmax(mask, axis=-1)
    ...         take = lambda a: jnp.take_along_axis(a, first[..., None], -1)[..., 0]
    ...         return take(values), take(confidences), first
    >>> v, c, w = TrustFirst().resolve(jnp.array([1.0, 2.0]), jnp.array([0.3, 0.9]),
    ...                                jnp.ones(2), jnp.array([False, True]))
    >>> float(v), round(float(c), 6), int(w)
    (2.0, 0.9, 1)
    """

    def resolve(self, values, confidences, weights, mask):
        raise NotImplementedError

    def resolve_slots(self, values, confidences, weights, mask):
        """``resolve`` with the slots given one by one: each argument is a sequence
        with one array per slot, all of one shape. The default stacks them along a
        last axis and calls ``resolve``.

        >>> import jax.numpy as jnp, procela_jax as pj
        >>> v, c, w = pj.HighestConfidencePolicy().resolve_slots(
        ...     [jnp.asarray(1.0), jnp.asarray(2.0)], [jnp.asarray(0.5), jnp.asarray(0.9)],
        ...     [jnp.asarray(1.0)] * 2, [jnp.asarray(True)] * 2)
        >>> float(v), int(w)
        (2.0, 1)
        """
        stack = lambda xs: jnp.stack(list(xs), axis=-1)  # noqa: E731
        return self.resolve(stack(values), stack(confidences), stack(weights), stack(mask))

    @property
    def name(self) -> str:
        return type(self).__name__


class WeightedVotingPolicy(Policy):
    """Weighted mean of values and of confidences, weights from ``record.weight``.

    With all weights zero it falls back to the plain means (as the original).

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> v, c, _ = pj.WeightedVotingPolicy().resolve(
    ...     jnp.array([10.0, 20.0, 30.0]), jnp.array([0.2, 0.5, 0.9]), jnp.ones(3),
    ...     jnp.ones(3, bool))
    >>> float(v), round(float(c), 4)
    (20.0, 0.5333)
    """

    def resolve(self, values, confidences, weights, mask):
        if 0 < values.shape[-1] <= _NARROW:
            return self.resolve_slots(*map(_unstack, (values, confidences, weights, mask)))
        v, c = _masked(values, mask), _masked(confidences, mask)
        w = _masked(weights, mask)
        # all weights zero: every valid hypothesis weighs 1 (the plain means, exactly:
        # a product by 1 and a sum of ones round like the unweighted sums)
        weighted = seqsum(w) > 0
        w = jnp.where(weighted[..., None], w, mask.astype(values.dtype))
        wsum = seqsum(w)
        cw = unfused(c * w)
        value = _weighted_mean(lambda xs: seqsum(jnp.stack(xs, -1)), _unstack(v), _unstack(w), wsum)
        conf = _safe_div(seqsum(cw), wsum)
        return value, conf, jnp.full(value.shape, -1, jnp.int32)

    def resolve_slots(self, values, confidences, weights, mask):
        v = [_masked(x, m) for x, m in zip(values, mask)]
        c = [_masked(x, m) for x, m in zip(confidences, mask)]
        w = [_masked(x, m) for x, m in zip(weights, mask)]
        weighted = _total(w) > 0
        w = [jnp.where(weighted, x, m.astype(x.dtype)) for x, m in zip(w, mask)]
        wsum = _total(w)
        cw = [unfused(a * b) for a, b in zip(c, w)]
        value, conf = _weighted_mean(_total, v, w, wsum), _safe_div(_total(cw), wsum)
        return value, conf, jnp.full(value.shape, -1, jnp.int32)


class WeightedConfidencePolicy(Policy):
    """Confidence-weighted mean of values; the confidence is the mean confidence.

    With all confidences zero: plain mean of values, confidence 0 (as the original).

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> v, c, _ = pj.WeightedConfidencePolicy().resolve(
    ...     jnp.array([10.0, 20.0, 30.0]), jnp.array([0.2, 0.5, 0.9]), jnp.ones(3),
    ...     jnp.ones(3, bool))
    >>> round(float(v), 3), round(float(c), 4)
    (24.375, 0.5333)
    """

    def resolve(self, values, confidences, weights, mask):
        if 0 < values.shape[-1] <= _NARROW:
            return self.resolve_slots(*map(_unstack, (values, confidences, weights, mask)))
        v, c = _masked(values, mask), _masked(confidences, mask)
        n = seqsum(mask.astype(values.dtype))
        csum = seqsum(c)
        weighted = csum > 0
        cols = lambda xs: seqsum(jnp.stack(xs, -1))  # noqa: E731
        vs, cs = _unstack(v), _unstack(c)
        value = jnp.where(weighted, _weighted_mean(cols, vs, cs, csum), _weighted_mean(cols, vs, None, n))
        conf = jnp.where(weighted, _safe_div(csum, n), 0.0)
        return value, conf.astype(values.dtype), jnp.full(value.shape, -1, jnp.int32)

    def resolve_slots(self, values, confidences, weights, mask):
        v = [_masked(x, m) for x, m in zip(values, mask)]
        c = [_masked(x, m) for x, m in zip(confidences, mask)]
        n = _total([m.astype(x.dtype) for x, m in zip(values, mask)])
        csum = _total(c)
        weighted = csum > 0
        value = jnp.where(weighted, _weighted_mean(_total, v, c, csum), _weighted_mean(_total, v, None, n))
        conf = jnp.where(weighted, _safe_div(csum, n), 0.0)
        return value, conf.astype(jnp.result_type(values[0])), jnp.full(value.shape, -1, jnp.int32)


class HighestConfidencePolicy(Policy):
    """The single most confident hypothesis wins; ties go to the first slot.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> v, c, w = pj.HighestConfidencePolicy().resolve(
    ...     jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 0.9, 0.9]), jnp.ones(3),
    ...     jnp.ones(3, bool))
    >>> float(v), round(float(c), 6), int(w)
    (2.0, 0.9, 1)
    """

    def resolve(self, values, confidences, weights, mask):
        if 0 < values.shape[-1] <= _NARROW:
            return self.resolve_slots(*map(_unstack, (values, confidences, weights, mask)))
        v, c = _masked(values, mask), _masked(confidences, mask)
        rank = jnp.where(mask, c, -1.0)
        winner = jnp.argmax(rank, axis=-1)
        take = lambda a: jnp.take_along_axis(a, winner[..., None], -1)[..., 0]
        return take(v), take(c), winner.astype(jnp.int32)

    def resolve_slots(self, values, confidences, weights, mask):
        # a left-to-right scan of the slots: elementwise, so it fuses with the rest
        # of the step (argmax and gathers are separate kernels on CPU)
        v = [_masked(x, m) for x, m in zip(values, mask)]
        c = [_masked(x, m) for x, m in zip(confidences, mask)]
        rank = [jnp.where(m, x, -1.0) for x, m in zip(c, mask)]
        best_r, best_v, best_c = rank[0], v[0], c[0]
        winner = jnp.zeros(jnp.shape(best_r), jnp.int32)
        for j in range(1, len(v)):
            better = rank[j] > best_r  # strict: ties stay with the first slot
            best_r = jnp.where(better, rank[j], best_r)
            best_v = jnp.where(better, v[j], best_v)
            best_c = jnp.where(better, c[j], best_c)
            winner = jnp.where(better, j, winner)
        return best_v, best_c, winner


class MeanPolicy(Policy):
    """Plain mean of the values and of the confidences (weights ignored).

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> v, c, _ = pj.MeanPolicy().resolve(jnp.array([1.0, 4.0]), jnp.array([0.2, 0.6]),
    ...                                   jnp.ones(2), jnp.ones(2, bool))
    >>> float(v), round(float(c), 6)
    (2.5, 0.4)
    """

    def resolve(self, values, confidences, weights, mask):
        if 0 < values.shape[-1] <= _NARROW:
            return self.resolve_slots(*map(_unstack, (values, confidences, weights, mask)))
        n = seqsum(mask.astype(values.dtype))
        value = _weighted_mean(lambda xs: seqsum(jnp.stack(xs, -1)), _unstack(_masked(values, mask)), None, n)
        conf = _safe_div(seqsum(_masked(confidences, mask)), n)
        return value, conf, jnp.full(value.shape, -1, jnp.int32)

    def resolve_slots(self, values, confidences, weights, mask):
        n = _total([m.astype(x.dtype) for x, m in zip(values, mask)])
        value = _weighted_mean(_total, [_masked(x, m) for x, m in zip(values, mask)], None, n)
        conf = _safe_div(_total([_masked(x, m) for x, m in zip(confidences, mask)]), n)
        return value, conf, jnp.full(value.shape, -1, jnp.int32)


def _masked_median(values, mask):
    big = jnp.finfo(values.dtype).max
    s = jnp.sort(jnp.where(mask, values, big), axis=-1)
    n = jnp.sum(mask, axis=-1)
    lo = jnp.clip((n - 1) // 2, 0, None)
    hi = jnp.clip(n // 2, 0, None)
    take = lambda i: jnp.take_along_axis(s, i[..., None], -1)[..., 0]
    a, b = take(lo), take(hi)
    return jnp.where(n > 0, _halves_mean(jnp.where(n > 0, a, 0), jnp.where(n > 0, b, 0)), 0)


class MedianPolicy(Policy):
    """Median of the values (mean of the two middle ones for an even count);
    the confidence is the mean confidence. Robust to one wild theory.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> v, c, _ = pj.MedianPolicy().resolve(jnp.array([1.0, 100.0, 3.0]),
    ...                                     jnp.array([0.5, 0.5, 0.8]), jnp.ones(3),
    ...                                     jnp.ones(3, bool))
    >>> float(v), round(float(c), 6)
    (3.0, 0.6)
    """

    def resolve(self, values, confidences, weights, mask):
        n = seqsum(mask.astype(values.dtype))
        value = _masked_median(_masked(values, mask), mask)
        conf = _safe_div(seqsum(_masked(confidences, mask)), n)
        return value, conf, jnp.full(value.shape, -1, jnp.int32)


class MajorityVotingPolicy(Policy):
    """The value proposed by the most hypotheses wins (for categorical and boolean
    variables). Each vote counts its ``weight`` (1 by default); ties go to the
    value proposed first. The confidence is the mean confidence of the winner's
    supporters.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> v, c, _ = pj.MajorityVotingPolicy().resolve(
    ...     jnp.array([1.0, 2.0, 2.0]), jnp.array([0.9, 0.4, 0.6]), jnp.ones(3),
    ...     jnp.ones(3, bool))
    >>> float(v), float(c)
    (2.0, 0.5)
    """

    def resolve(self, values, confidences, weights, mask):
        v = _masked(values, mask)
        same = (v[..., :, None] == v[..., None, :]) & mask[..., None, :] & mask[..., :, None]
        w = _masked(weights, mask)
        votes = jnp.sum(jnp.where(same, w[..., None, :], 0), axis=-1)
        votes = jnp.where(mask, votes, -1)
        winner = jnp.argmax(votes, axis=-1)
        take = lambda a: jnp.take_along_axis(a, winner[..., None], -1)[..., 0]
        value = take(v)
        supporters = jnp.take_along_axis(same, winner[..., None, None], -2)[..., 0, :]
        ns = jnp.sum(supporters, axis=-1).astype(values.dtype)
        conf = _safe_div(jnp.sum(jnp.where(supporters, _masked(confidences, mask), 0), -1), ns)
        return value, conf, jnp.full(value.shape, -1, jnp.int32)


class FunctionPolicy(Policy):
    """A policy from a plain function ``fn(values, confidences, weights, mask)``
    returning ``(value, confidence)`` (or with a third ``winner`` output).

    ``fn`` is static configuration; give the policy a ``name`` to tell several apart.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> def cautious(values, confidences, weights, mask):
    ...     lo = jnp.min(jnp.where(mask, values, jnp.inf), axis=-1)
    ...     return lo, jnp.min(jnp.where(mask, confidences, 1.0), axis=-1)
    >>> p = pj.FunctionPolicy(cautious, name="cautious")
    >>> v, c, _ = p.resolve(jnp.array([3.0, 1.0]), jnp.array([0.4, 0.7]), jnp.ones(2),
    ...                     jnp.ones(2, bool))
    >>> float(v), round(float(c), 6)
    (1.0, 0.4)
    """

    fn: Callable = eqx.field(static=True)
    label: str = eqx.field(static=True, default="")

    def __init__(self, fn: Callable, name: str = ""):
        self.fn = fn
        self.label = name or getattr(fn, "__name__", "FunctionPolicy")

    @property
    def name(self) -> str:
        return self.label

    def resolve(self, values, confidences, weights, mask):
        out = self.fn(values, confidences, weights, mask)
        if len(out) == 2:
            value, conf = out
            winner = jnp.full(jnp.shape(value), -1, jnp.int32)
        else:
            value, conf, winner = out
        return value, conf, winner


def as_policy(p) -> Policy:
    """Accept a Policy instance, a Policy class or a function."""
    if isinstance(p, Policy):
        return p
    if isinstance(p, type) and issubclass(p, Policy):
        return p()
    if callable(p):
        return FunctionPolicy(p)
    raise TypeError(f"{p!r} is not a policy (a Policy instance, a Policy class or a function)")

