"""Running statistics of a variable's committed records (the original's definitions)."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._policy import unfused


class Stats(eqx.Module):
    """Running statistics of the records committed to a variable.

    Fields are arrays (one entry per variable in the state; scalars from
    ``state.stats(name)``). Definitions follow the original ``procela``:
    ``count`` counts every commit, including steps where no hypothesis was
    resolved (those change nothing else); ``mean = sum / count``;
    ``std`` is the population standard deviation ``sqrt(max(0, sumsq/count - mean²))``
    and NaN while ``count < 2`` (the original's ``None``); ``ewma`` starts at the
    first value and then follows ``alpha * x + (1 - alpha) * ewma``;
    ``confidence = confidence_sum / count`` is the mean confidence over the history
    (the state's ``confidence(name)`` is that of the latest record).

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=4.0)], mechanisms=[])
    >>> s = ex.init(jax.random.key(0)).stats("X")
    >>> int(s.count), float(s.mean), float(s.ewma)
    (1, 4.0, 4.0)
    """

    count: Array
    data: Array | tuple  # (..., n, 7): sum, sumsq, min, max, last, ewma, confidence_sum

    # Stored as one stacked array, so a single run's step updates the statistics in
    # one fused kernel instead of one per field (tiny kernels dominate a small
    # model's step on CPU). A batched run carries them as seven columns instead
    # (``columns``): there the stacked update is a concatenation that branches on
    # every element of every row, and separate columns are written in one loop.
    sum = property(lambda self: self._field(0))
    sumsq = property(lambda self: self._field(1))
    min = property(lambda self: self._field(2))
    max = property(lambda self: self._field(3))
    last = property(lambda self: self._field(4))
    ewma = property(lambda self: self._field(5))
    confidence_sum = property(lambda self: self._field(6))

    def _field(self, k: int) -> Array:
        return self.data[k] if isinstance(self.data, tuple) else self.data[..., k]

    def columns(self) -> Stats:
        """The same statistics with ``data`` as a tuple of seven ``(..., n)`` columns."""
        if isinstance(self.data, tuple):
            return self
        return Stats(count=self.count, data=tuple(self.data[..., k] for k in range(7)))

    def stacked(self) -> Stats:
        """The same statistics with ``data`` as one ``(..., n, 7)`` array (the stored form)."""
        if not isinstance(self.data, tuple):
            return self
        return Stats(count=self.count, data=jnp.stack(self.data, axis=-1))

    @classmethod
    def empty(cls, n: int, dtype) -> Stats:
        inf, nan = jnp.inf, jnp.nan
        row = jnp.asarray([0.0, 0.0, inf, -inf, nan, nan, 0.0], dtype)
        return cls(count=jnp.zeros((n,), jnp.int32), data=jnp.broadcast_to(row, (n, 7)))

    def update(self, commit, numeric, value, confidence, alpha, one_minus_alpha) -> Stats:
        """Commit a record where ``commit``; ``numeric`` marks commits that carry a value
        (the others are the original's ``None`` conclusions: count only)."""
        upd = commit & numeric
        first = ~self.has_value
        x = jnp.where(upd, value, 0)
        # products are kept apart from the sums that consume them (``unfused``), so
        # they round exactly like the original's Python arithmetic
        prev = jnp.where(first, 0, self.ewma)
        ewma = jnp.where(first, x, unfused(alpha * x) + unfused(one_minus_alpha * prev))
        fields = [
            self.sum + x,
            self.sumsq + unfused(x * x),
            jnp.minimum(self.min, x),
            jnp.maximum(self.max, x),
            x,
            ewma,
            self.confidence_sum + jnp.asarray(confidence, self.sum.dtype),
        ]
        count = self.count + commit.astype(self.count.dtype)
        if isinstance(self.data, tuple):
            return Stats(count=count, data=tuple(jnp.where(upd, jnp.asarray(f, d.dtype), d)
                                                 for f, d in zip(fields, self.data)))
        new = jnp.stack([jnp.asarray(f, self.data.dtype) for f in fields], axis=-1)
        return Stats(count=count, data=jnp.where(upd[..., None], new, self.data))

    def __getitem__(self, i) -> Stats:
        if isinstance(self.data, tuple):
            return Stats(count=self.count[..., i], data=tuple(d[..., i] for d in self.data))
        return Stats(count=self.count[..., i], data=self.data[..., i, :])

    @property
    def has_value(self) -> Array:
        """Whether a value was ever committed (``None`` conclusions carry none)."""
        return ~(self.min > self.max)  # min > max only while empty (inf > -inf)

    @property
    def mean(self) -> Array:
        ok = (self.count > 0) & self.has_value
        c = jnp.where(ok, self.count, 1).astype(self.sum.dtype)
        return jnp.where(ok, self.sum / c, jnp.nan)

    @property
    def variance(self) -> Array:
        c = jnp.where(self.count > 0, self.count, 1).astype(self.sum.dtype)
        mean = self.sum / c
        var = jnp.maximum(self.sumsq / c + unfused(-(mean * mean)), 0.0)  # mean² rounded alone
        return jnp.where((self.count >= 2) & self.has_value, var, jnp.nan)

    @property
    def std(self) -> Array:
        var = self.variance
        ok = (self.count >= 2) & self.has_value
        return jnp.where(ok, jnp.sqrt(jnp.where(ok, var, 1.0)), jnp.nan)

    @property
    def confidence(self) -> Array:
        c = jnp.where(self.count > 0, self.count, 1).astype(self.confidence_sum.dtype)
        return jnp.where(self.count > 0, self.confidence_sum / c, jnp.nan)

    @property
    def value(self) -> Array:
        """The last committed value."""
        return self.last

