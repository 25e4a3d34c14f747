"""Running statistics of a variable's committed records (the original's definitions)."""

from __future__ import annotations

import equinox as eqx
import jax
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
    sum: Array
    sumsq: Array
    min: Array
    max: Array
    last: Array
    ewma: Array
    confidence_sum: Array

    @classmethod
    def empty(cls, n: int, dtype) -> Stats:
        full = lambda v: jnp.full((n,), v, dtype)  # noqa: E731
        return cls(
            count=jnp.zeros((n,), jnp.int32), sum=full(0.0), sumsq=full(0.0), min=full(jnp.inf),
            max=full(-jnp.inf), last=full(jnp.nan), ewma=full(jnp.nan), confidence_sum=full(0.0),
        )

    def update(self, commit, numeric, value, confidence, alpha, one_minus_alpha) -> Stats:
        """Commit a record where ``commit``; ``numeric`` marks commits that carry a value
        (the others are the original's ``None`` conclusions: count only)."""
        upd = commit & numeric
        first = ~self.has_value
        dtype = self.sum.dtype
        x = jnp.where(upd, value, 0).astype(dtype)
        # products are kept apart from the sums that consume them (``unfused``), so
        # they round exactly like the original's Python arithmetic
        prev = jnp.where(first, 0, self.ewma)
        ewma = jnp.where(first, x, unfused(alpha * x) + unfused(one_minus_alpha * prev))
        # one array per field: XLA writes them all from one loop, where a stacked
        # (variables, 7) array was a concatenation that branched on every element
        new = dict(
            sum=self.sum + x,
            sumsq=self.sumsq + unfused(x * x),
            min=jnp.minimum(self.min, x),
            max=jnp.maximum(self.max, x),
            last=x,
            ewma=ewma,
            confidence_sum=self.confidence_sum + jnp.asarray(confidence, dtype),
        )
        kept = {k: jnp.where(upd, jnp.asarray(v, dtype), getattr(self, k)) for k, v in new.items()}
        return Stats(count=self.count + commit.astype(self.count.dtype), **kept)

    def __getitem__(self, i) -> Stats:
        return jax.tree.map(lambda x: x[..., i], self)

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

