"""Mechanism: a causal theory that proposes hypotheses and never mutates state."""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from typing import Any

import equinox as eqx


def _names(xs: Any) -> tuple[str, ...]:
    if isinstance(xs, str) or hasattr(xs, "name") and not isinstance(xs, Sequence):
        xs = (xs,)
    return tuple(x if isinstance(x, str) else getattr(x, "name", x) for x in xs)


#: the base fields every mechanism has; all other fields are its parameters
BASE_FIELDS = ("reads", "writes", "name", "run_in_safe_mode", "enabled")


def stable_id(name: str) -> int:
    """A stable 31-bit id of a name (CRC-32), used to fold per-mechanism keys."""
    return zlib.crc32(name.encode("utf-8")) & 0x7FFFFFFF


class Mechanism(eqx.Module):
    """Base class of mechanisms: competing causal theories.

    Subclass it, declare parameters as fields, and implement
    ``transform(self, values, key) -> {variable name: VariableRecord}``. ``values``
    is a read-only :class:`View` of the values committed at the previous step
    (``values["X"]``, ``values.step``, ``values.stats("X")``,
    ``values.confidence("X")``); ``key`` is this mechanism's own PRNG key for the
    step. It must return one record for each variable it ``writes``.

    Keyword-only base fields: ``reads`` and ``writes`` (Variable objects or
    names, stored as tuples of names), ``name`` (defaults to the class name; names
    are unique and contain no ``"."``), ``run_in_safe_mode`` (whether it keeps
    running after a CRITICAL invariant switched safe mode on) and ``enabled``
    (whether it starts enabled; governance switches it with ``state.enable``). A subclass that
    defines ``__post_init__`` must call ``super().__post_init__()``.

    >>> import jax, procela_jax as pj
    >>> X = pj.Variable("X", init=1.0)
    >>> class Growth(pj.Mechanism):
    ...     rate: float
    ...     def transform(self, values, key):
    ...         x = values["X"]
    ...         return {"X": pj.VariableRecord(x * (1 + self.rate), confidence=0.9)}
    >>> ex = pj.Executive(variables=[X], mechanisms=[Growth(rate=0.5, reads=[X], writes=[X])])
    >>> round(float(ex.step(ex.init(jax.random.key(0))).value("X")), 6)
    1.5
    """

    reads: tuple[str, ...] = eqx.field(static=True, kw_only=True, converter=_names, default=())
    writes: tuple[str, ...] = eqx.field(static=True, kw_only=True, converter=_names, default=())
    name: str = eqx.field(static=True, kw_only=True, default=None)
    run_in_safe_mode: bool = eqx.field(static=True, kw_only=True, default=True)
    enabled: bool = eqx.field(static=True, kw_only=True, default=True)

    def __post_init__(self):
        if self.name is None:
            self.name = type(self).__name__

    def transform(self, values, key) -> dict:
        raise NotImplementedError(
            f"mechanism {self.name!r} ({type(self).__name__}) must implement "
            "transform(self, values, key) -> {name: VariableRecord}"
        )

    @property
    def id(self) -> int:
        """The stable id of this mechanism's name (its key is folded with it)."""
        return stable_id(self.name)
