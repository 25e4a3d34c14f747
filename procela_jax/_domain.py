"""Value domains: what values a variable may take.

A domain is static configuration (hashable, never traced). At run time it offers
two pure functions on arrays: ``contains(x)`` (a boolean) and ``project(x)`` (the
nearest value inside the domain), used by the out-of-domain choices of
:class:`Variable`.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np

from ._errors import ModelError


def _is_number(v) -> bool:
    """A real number: a Python ``int``/``float`` or a NumPy scalar such as ``np.float32``."""
    return isinstance(v, numbers.Real)


def _plain(*xs) -> bool:
    """Can the Python forms of the domains take these numbers (``None`` for no
    bound)? Not when one is, in the engine's float, ``-0.0``, or so small that it
    or a difference of two of them is subnormal: XLA's CPU code treats subnormals
    as zero and chooses the sign of a clipped zero by its own rule, so such
    numbers are left to the array forms."""
    info = np.finfo(jnp.result_type(float))
    limit = float(info.tiny) * 2.0 ** (info.nmant + 1)
    for x in xs:
        v = None if x is None else _engine_float(x)
        if v is not None and (math.copysign(1.0, v) < 0 if v == 0 else abs(v) < limit):
            return False
    return True


def _nan_to_zero(domain, x: float) -> float:
    """``project`` of the domains that only replace NaN by 0, in Python."""
    if not _plain(x):
        return Domain.project_python(domain, x)
    v = _engine_float(x)
    return 0.0 if math.isnan(v) else v


def _engine_float(x: float) -> float:
    """``x`` rounded to the engine's float (``float32``, or ``float64`` with
    ``jax_enable_x64``), as ``jnp.asarray(x, dtype=float)`` rounds it."""
    with np.errstate(over="ignore"):  # beyond the float32 range: inf, as in JAX
        return float(np.asarray(x, dtype=jnp.result_type(float)))


class Domain:
    """Base class of domains. Subclasses implement ``contains`` and ``project``.

    A domain that depends on the variable's history sets ``uses_stats = True``;
    its ``contains(x, stats)`` and ``project(x, stats)`` then receive the
    variable's :class:`Stats` from before the candidate value is committed
    (``stats=None`` at build time).
    """

    uses_stats = False

    def contains(self, x):
        raise NotImplementedError

    def project(self, x):
        raise NotImplementedError

    def contains_python(self, x: float) -> bool:
        """``contains`` for a plain Python number, used at build time. The built-in
        domains compute it in Python, in the engine's float (an array operation run
        eagerly compiles a small program first: tenths of a second per model)."""
        with np.errstate(over="ignore"):  # beyond the float32 range: inf
            x = jnp.asarray(x, dtype=float)
        return bool(self.contains(x))

    def project_python(self, x: float) -> float:
        """``project`` for a plain Python number, used at build time (computed in
        Python by the built-in domains, as :meth:`contains_python`)."""
        with np.errstate(over="ignore"):
            x = jnp.asarray(x, dtype=float)
        return float(self.project(x))

    def encode(self, x):
        """Turn a user-facing value (e.g. a category label) into its number."""
        return x

    def __and__(self, other: Domain) -> CompositeDomain:
        return CompositeDomain(self, other)


@dataclasses.dataclass(frozen=True)
class RealDomain(Domain):
    """Every real number, including the infinities; NaN is outside.

    >>> import procela_jax as pj
    >>> bool(pj.RealDomain().contains(1e30))
    True
    """

    def contains(self, x):
        return ~jnp.isnan(x)

    def contains_python(self, x: float) -> bool:
        return not math.isnan(x)

    def project(self, x):
        return jnp.where(jnp.isnan(x), 0.0, x)

    def project_python(self, x: float) -> float:
        return _nan_to_zero(self, x)


@dataclasses.dataclass(frozen=True)
class RangeDomain(Domain):
    """A closed interval ``[lo, hi]``; either bound may be ``None`` (unbounded).

    >>> import procela_jax as pj
    >>> d = pj.RangeDomain(0.0, 10.0)
    >>> bool(d.contains(10.0)), bool(d.contains(10.5)), float(d.project(12.0))
    (True, False, 10.0)
    """

    lo: float | None = None
    hi: float | None = None

    def __post_init__(self):
        for label, v in (("lo", self.lo), ("hi", self.hi)):
            if v is not None and (not _is_number(v) or math.isnan(v)):
                raise ModelError(f"RangeDomain: bound {label}={v!r} must be a number or None")
        if self.lo is not None and self.hi is not None and self.lo > self.hi:
            raise ModelError(f"RangeDomain: lower bound {self.lo} is above upper bound {self.hi}")
        object.__setattr__(self, "lo", None if self.lo is None else float(self.lo))
        object.__setattr__(self, "hi", None if self.hi is None else float(self.hi))

    def contains(self, x):
        ok = ~jnp.isnan(x)
        if self.lo is not None:
            ok = ok & (x >= self.lo)
        if self.hi is not None:
            ok = ok & (x <= self.hi)
        return ok

    def contains_python(self, x: float) -> bool:
        if not _plain(x, self.lo, self.hi):
            return super().contains_python(x)
        v = _engine_float(x)
        return (not math.isnan(v) and (self.lo is None or v >= _engine_float(self.lo))
                and (self.hi is None or v <= _engine_float(self.hi)))

    def project(self, x):
        x = jnp.where(jnp.isnan(x), self.lo if self.lo is not None else 0.0, x)
        return jnp.clip(x, self.lo, self.hi)

    def project_python(self, x: float) -> float:
        if not _plain(x, self.lo, self.hi):
            return super().project_python(x)
        v = _engine_float(x)
        lo = None if self.lo is None else _engine_float(self.lo)
        hi = None if self.hi is None else _engine_float(self.hi)
        if math.isnan(v):
            v = lo if lo is not None else 0.0
        if lo is not None and v < lo:
            v = lo
        if hi is not None and v > hi:
            v = hi
        return v


@dataclasses.dataclass(frozen=True)
class CategoricalDomain(Domain):
    """A finite set of categories.

    Numeric categories are stored as they are. Labels (strings) are stored by
    their position: a variable over ``("low", "high")`` holds ``0.0`` or ``1.0``,
    and ``domain.encode("high") == 1``.

    >>> import procela_jax as pj
    >>> d = pj.CategoricalDomain([1, 2, 3])
    >>> bool(d.contains(2.0)), bool(d.contains(2.5)), float(d.project(2.4))
    (True, False, 2.0)
    """

    categories: tuple = ()

    def __post_init__(self):
        cats = tuple(self.categories)
        if not cats:
            raise ModelError("CategoricalDomain needs at least one category")
        if len(set(cats)) != len(cats):
            raise ModelError(f"CategoricalDomain: duplicate categories in {cats!r}")
        object.__setattr__(self, "categories", cats)

    @property
    def labels(self) -> bool:
        return not all(_is_number(c) for c in self.categories)

    @property
    def codes(self) -> tuple[float, ...]:
        if self.labels:
            return tuple(float(i) for i in range(len(self.categories)))
        return tuple(float(c) for c in self.categories)

    def encode(self, x):
        if self.labels:
            if x not in self.categories:
                raise ModelError(f"{x!r} is not one of the categories {self.categories!r}")
            return float(self.categories.index(x))
        return x

    def decode(self, code):
        if self.labels:
            return self.categories[int(round(float(code)))]
        return float(code)

    def contains(self, x):
        x = jnp.asarray(x)
        codes = jnp.asarray(self.codes, dtype=jnp.result_type(x, float))
        return jnp.any(x[..., None] == codes, axis=-1)

    def contains_python(self, x: float) -> bool:
        if not _plain(x, *self.codes):
            return super().contains_python(x)
        v = _engine_float(x)
        return any(v == _engine_float(c) for c in self.codes)

    def project(self, x):
        x = jnp.asarray(x)
        codes = jnp.asarray(self.codes, dtype=jnp.result_type(x, float))
        x = jnp.where(jnp.isnan(x), codes[0], x)
        nearest = jnp.argmin(jnp.abs(x[..., None] - codes), axis=-1)
        return codes[nearest]

    def project_python(self, x: float) -> float:
        if not _plain(x, *self.codes):
            return super().project_python(x)
        with np.errstate(over="ignore", invalid="ignore"):  # beyond the float32 range: inf
            codes = np.asarray(self.codes, dtype=jnp.result_type(float))
            v = np.asarray(x, dtype=codes.dtype) if not math.isnan(x) else codes[0]
            return float(codes[int(np.argmin(np.abs(v - codes)))])


@dataclasses.dataclass(frozen=True)
class BooleanDomain(CategoricalDomain):
    """``False``/``True``, held as ``0.0``/``1.0``.

    >>> import procela_jax as pj
    >>> bool(pj.BooleanDomain().contains(1.0)), bool(pj.BooleanDomain().contains(0.5))
    (True, False)
    """

    categories: tuple = (0.0, 1.0)

    def __post_init__(self):
        object.__setattr__(self, "categories", (0.0, 1.0))

    def encode(self, x):
        return float(bool(x))


@dataclasses.dataclass(frozen=True)
class StatisticalDomain(Domain):
    """A data-driven band: a value is inside when it lies within ``k`` standard
    deviations of the mean of the values committed so far,
    ``mean - k·std <= x <= mean + k·std``.

    As the original: the statistics are those from *before* the candidate is
    committed; while ``count < 2`` (no standard deviation yet, and at build
    time) every number is inside; with ``std == 0`` only the mean itself is.
    ``project`` clips into the band. The statistics are the variable's own
    (``count`` includes steps without a resolved value, as everywhere).

    >>> import jax, procela_jax as pj
    >>> X = pj.Variable("X", pj.StatisticalDomain(k=2.0), init=0.0)
    >>> s = pj.Executive(variables=[X]).init(jax.random.key(0)).set("X", 2.0)   # mean 1, std 1
    >>> d = X.domain
    >>> bool(d.contains(3.0, s.stats("X"))), bool(d.contains(3.5, s.stats("X"))), float(d.project(9.0, s.stats("X")))
    (True, False, 3.0)
    """

    k: float = 3.0
    uses_stats = True

    def __post_init__(self):
        if isinstance(self.k, bool) or not _is_number(self.k):
            raise ModelError(f"StatisticalDomain: k must be a number, got {self.k!r}")
        if math.isnan(self.k) or self.k < 0:
            raise ModelError(f"StatisticalDomain: k must be non-negative, got {self.k!r}")
        object.__setattr__(self, "k", float(self.k))

    def _band(self, stats):
        mean, std = stats.mean, stats.std
        ok = (stats.count >= 2) & ~jnp.isnan(mean) & ~jnp.isnan(std)
        mean, std = jnp.where(ok, mean, 0), jnp.where(ok, std, 0)
        return ok, mean - self.k * std, mean + self.k * std

    def contains_python(self, x: float) -> bool:
        return not math.isnan(x)  # no statistics at build time: every number

    def project_python(self, x: float) -> float:
        return _nan_to_zero(self, x)

    def contains(self, x, stats=None):
        x = jnp.asarray(x)
        inside = ~jnp.isnan(x)
        if stats is None:
            return inside
        ok, lo, hi = self._band(stats)
        return inside & (~ok | ((lo <= x) & (x <= hi)))

    def project(self, x, stats=None):
        x = jnp.asarray(x)
        if stats is None:
            return jnp.where(jnp.isnan(x), 0.0, x)
        ok, lo, hi = self._band(stats)
        x = jnp.where(jnp.isnan(x), jnp.where(ok, (lo + hi) / 2, 0.0), x)
        return jnp.where(ok, jnp.clip(x, lo, hi), x)


@dataclasses.dataclass(frozen=True, init=False)
class CompositeDomain(Domain):
    """The intersection of several domains (``a & b`` builds one).

    A value is inside when every part contains it; ``project`` applies each
    part's projection in turn.

    >>> import procela_jax as pj
    >>> d = pj.RangeDomain(0, 10) & pj.CategoricalDomain([0, 5, 20])
    >>> bool(d.contains(5.0)), bool(d.contains(20.0))
    (True, False)
    """

    parts: tuple[Domain, ...]

    def __init__(self, *parts: Domain | Sequence[Domain]):
        if len(parts) == 1 and not isinstance(parts[0], Domain):
            parts = tuple(parts[0])
        flat: list[Domain] = []
        for p in parts:
            if not isinstance(p, Domain):
                raise ModelError(f"CompositeDomain: {p!r} is not a domain")
            flat.extend(p.parts if isinstance(p, CompositeDomain) else (p,))
        if not flat:
            raise ModelError("CompositeDomain needs at least one domain")
        object.__setattr__(self, "parts", tuple(flat))

    @property
    def uses_stats(self) -> bool:
        return any(p.uses_stats for p in self.parts)

    def contains_python(self, x: float) -> bool:
        return all(p.contains_python(x) for p in self.parts)

    def project_python(self, x: float) -> float:
        for p in self.parts:
            x = p.project_python(x)
        return x

    def contains(self, x, stats=None):
        def one(p):
            return p.contains(x, stats) if p.uses_stats else p.contains(x)

        ok = one(self.parts[0])
        for p in self.parts[1:]:
            ok = ok & one(p)
        return ok

    def project(self, x, stats=None):
        for p in self.parts:
            x = p.project(x, stats) if p.uses_stats else p.project(x)
        return x
