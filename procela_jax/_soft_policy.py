"""Soft policies: differentiable relaxations of the hard-decision policies.

:class:`~procela_jax.HighestConfidencePolicy`, :class:`~procela_jax.MedianPolicy`
and :class:`~procela_jax.MajorityVotingPolicy` pick one hypothesis (or one
rank), so the resolved value is piecewise constant in what decides the pick: a
gradient never tells a theory's confidence or weight to grow. Each soft policy
here blends the hypotheses smoothly, with a ``temperature``; as the temperature
goes to 0 it becomes the hard policy (``temperature=0`` *is* the hard policy,
winner included). With a positive temperature the record is a blend, so the
winner is ``-1``.

Exact ties are the one place where the limit differs: the hard policies give a
tie to the first slot, the soft ones share it equally among the tied slots.

Like every policy they are static configuration (hashable), so the temperature
is a plain float fixed when the variable is declared; every branch stays NaN-free
on masked slots (the double-``where`` trick), so they can sit among a variable's
``alternatives`` under ``vmap``.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp

from ._policy import (
    HighestConfidencePolicy,
    MajorityVotingPolicy,
    MedianPolicy,
    Policy,
    _masked,
    _safe_div,
    seqsum,
)


def _temperature(t) -> float:
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"temperature must be a number >= 0, got {t!r}") from None
    if not (t >= 0 and math.isfinite(t)):
        raise ValueError(f"temperature must be a finite number >= 0, got {t!r}")
    return t


def _masked_softmax(logits, mask):
    """Softmax along the last axis over the valid slots; zeros on masked slots and
    on fully masked rows (no NaN, no gradient leak)."""
    safe = jnp.where(mask, logits, 0)
    top = jax.lax.stop_gradient(jnp.max(jnp.where(mask, safe, -jnp.inf), axis=-1, keepdims=True))
    top = jnp.where(jnp.isfinite(top), top, 0)
    e = jnp.where(mask, jnp.exp(jnp.where(mask, safe - top, 0)), 0)
    return _safe_div(e, jnp.sum(e, axis=-1, keepdims=True))


class SoftHighestConfidencePolicy(Policy):
    """The hypotheses weighted by ``softmax(confidence / temperature)``.

    The value and the confidence are those weighted means; as the temperature
    goes to 0 the most confident hypothesis takes all the weight, as in
    :class:`~procela_jax.HighestConfidencePolicy`. The temperature is in units of
    confidence (confidences lie in [0, 1]; 0.05 makes a gap of 0.2 worth a factor
    e⁴). Gradients reach the confidences, so which theory wins can be learned.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> args = (jnp.array([1.0, 2.0, 3.0]), jnp.array([0.5, 0.9, 0.6]), jnp.ones(3), jnp.ones(3, bool))
    >>> v, c, w = pj.SoftHighestConfidencePolicy(temperature=0.1).resolve(*args)
    >>> round(float(v), 3), int(w)
    (2.029, -1)
    >>> float(pj.SoftHighestConfidencePolicy(temperature=0.001).resolve(*args)[0])
    2.0
    """

    temperature: float = eqx.field(default=0.05, converter=_temperature)

    def resolve(self, values, confidences, weights, mask):
        if self.temperature == 0:
            return HighestConfidencePolicy().resolve(values, confidences, weights, mask)
        v, c = _masked(values, mask), _masked(confidences, mask)
        p = _masked_softmax(c / self.temperature, mask)
        value = jnp.sum(p * v, axis=-1)
        conf = jnp.sum(p * c, axis=-1)
        return value, conf, jnp.full(value.shape, -1, jnp.int32)


def _log_sigmoid_slope(x):
    """log σ'(x) = log σ(x) + log σ(-x), stable for any x."""
    a = jnp.abs(x)
    return -a - 2 * jnp.log1p(jnp.exp(-a))


def _soft_median(values, mask, temperature):
    """The root m of  Σ_valid σ((m - v_i)/T) = n/2  (a smoothed empirical CDF
    crossing one half): the minimiser of Σ 2T·log cosh((m - v_i)/2T), which tends
    to Σ |m - v_i| as T → 0, so m tends to the median (the mid-point of the two
    middle values for an even count).

    The root is found by bisection on stopped-gradient inputs; the gradient is
    the implicit one, dm/dv_i = σ'_i / Σ_j σ'_j (computed in log space, so it
    stays finite when T is tiny).
    """
    dtype = values.dtype
    vm = jnp.where(mask, values, 0)
    n = jnp.sum(mask.astype(dtype), axis=-1)
    sv = jax.lax.stop_gradient(vm)
    lo = jnp.min(jnp.where(mask, sv, jnp.inf), axis=-1)
    hi = jnp.max(jnp.where(mask, sv, -jnp.inf), axis=-1)
    lo = jnp.where(n > 0, lo, 0)
    hi = jnp.where(n > 0, hi, 0)

    def excess(m):
        # Σ σ(z_i) - n/2 written as (#{z_i > 0} - n/2) + Σ ±σ(-|z_i|): the integer part
        # is exact and the small terms keep their relative precision, so the sum
        # does not cancel catastrophically when the sigmoids saturate.
        z = (m[..., None] - sv) / temperature
        pos = z > 0
        tail = jax.nn.sigmoid(-jnp.abs(z))
        count = jnp.sum(mask & pos, axis=-1).astype(dtype)
        small = jnp.sum(jnp.where(mask, jnp.where(pos, -tail, tail), 0), axis=-1)
        return (count - n / 2) + small

    def bisect(_, bounds):
        # two bisections at once: the left end of {excess >= 0} and the right end of
        # {excess <= 0}. They agree in exact arithmetic; where the sigmoids saturate
        # the excess is exactly 0 on a whole interval, whose middle is the root.
        a, b, c, d = bounds
        mid = (a + b) / 2
        up = excess(mid) < 0
        mid2 = (c + d) / 2
        up2 = excess(mid2) <= 0
        return (jnp.where(up, mid, a), jnp.where(up, b, mid),
                jnp.where(up2, mid2, c), jnp.where(up2, d, mid2))

    iters = jnp.finfo(dtype).nmant + 4  # enough halvings to reach the dtype's resolution
    a, b, c, d = jax.lax.fori_loop(0, iters, bisect, (lo, hi, lo, hi))
    root = (a + b + c + d) / 4
    # implicit gradient: m = root + Σ w_i (v_i - stop_gradient(v_i))
    w = _masked_softmax(_log_sigmoid_slope((root[..., None] - sv) / temperature), mask)
    w = jax.lax.stop_gradient(w)
    return root + jnp.sum(w * (vm - sv), axis=-1)


class SoftMedianPolicy(Policy):
    """A smooth median: the point where the smoothed empirical distribution of the
    values crosses one half; the confidence is the mean confidence (as
    :class:`~procela_jax.MedianPolicy`).

    The temperature is in units of the values: hypotheses much further apart than
    it are ranked as by the hard median; closer ones share the decision. The
    gradient of the value spreads over the hypotheses near the median.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> args = (jnp.array([1.0, 100.0, 3.0]), jnp.array([0.5, 0.5, 0.8]), jnp.ones(3), jnp.ones(3, bool))
    >>> round(float(pj.SoftMedianPolicy(temperature=0.01).resolve(*args)[0]), 4)
    3.0
    >>> round(float(pj.SoftMedianPolicy(temperature=1.0).resolve(*args)[0]), 3)
    3.351
    """

    temperature: float = eqx.field(default=0.1, converter=_temperature)

    def resolve(self, values, confidences, weights, mask):
        if self.temperature == 0:
            return MedianPolicy().resolve(values, confidences, weights, mask)
        n = seqsum(mask.astype(values.dtype))
        value = _soft_median(values, mask, self.temperature)
        conf = _safe_div(seqsum(_masked(confidences, mask)), n)
        return value, conf, jnp.full(value.shape, -1, jnp.int32)


class SoftMajorityVotingPolicy(Policy):
    """Majority voting with a softmax over the votes.

    Each hypothesis gathers the votes (``weight``, 1 by default) of every
    hypothesis proposing the same value, as in
    :class:`~procela_jax.MajorityVotingPolicy`; the value is the mean of the
    proposed values weighted by ``softmax(votes / temperature)``, and the
    confidence the same mean of each hypothesis' supporters' mean confidence.
    The temperature is in units of votes. Gradients reach the weights, so how much
    each theory's vote counts can be learned.

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> args = (jnp.array([1.0, 2.0, 2.0]), jnp.array([0.9, 0.4, 0.6]), jnp.ones(3), jnp.ones(3, bool))
    >>> v, c, _ = pj.SoftMajorityVotingPolicy(temperature=1.0).resolve(*args)
    >>> round(float(v), 3), round(float(c), 3)
    (1.845, 0.562)
    >>> v, c, _ = pj.SoftMajorityVotingPolicy(temperature=0.01).resolve(*args)
    >>> round(float(v), 3), round(float(c), 3)
    (2.0, 0.5)
    """

    temperature: float = eqx.field(default=0.1, converter=_temperature)

    def resolve(self, values, confidences, weights, mask):
        if self.temperature == 0:
            return MajorityVotingPolicy().resolve(values, confidences, weights, mask)
        dtype = values.dtype
        v, c, w = _masked(values, mask), _masked(confidences, mask), _masked(weights, mask)
        sv = jax.lax.stop_gradient(v)
        same = (sv[..., :, None] == sv[..., None, :]) & mask[..., None, :] & mask[..., :, None]
        samef = same.astype(dtype)
        votes = jnp.sum(samef * w[..., None, :], axis=-1)
        support_conf = _safe_div(jnp.sum(samef * c[..., None, :], axis=-1), jnp.sum(samef, axis=-1))
        p = _masked_softmax(votes / self.temperature, mask)
        value = jnp.sum(p * v, axis=-1)
        conf = jnp.sum(p * support_conf, axis=-1)
        return value, conf, jnp.full(value.shape, -1, jnp.int32)
