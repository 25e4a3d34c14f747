"""VariableRecord: what a mechanism proposes for one variable."""

from __future__ import annotations

import equinox as eqx
from jaxtyping import Array, ArrayLike


class VariableRecord(eqx.Module):
    """A hypothesis: a proposed value with a confidence in ``[0, 1]``.

    ``weight`` is the voting weight used by :class:`WeightedVotingPolicy`
    (the original's ``metadata["weight"]``; default 1). A record whose value is
    not finite or whose confidence lies outside ``[0, 1]`` is masked out of
    resolution and counted against the mechanism that proposed it.

    >>> import procela_jax as pj
    >>> r = pj.VariableRecord(3.0, confidence=0.8)
    >>> float(r.value), float(r.confidence), float(r.weight)
    (3.0, 0.8, 1.0)
    """

    value: Array | ArrayLike
    confidence: Array | ArrayLike = 1.0
    weight: Array | ArrayLike = 1.0
