"""Memory: a fixed-capacity ring buffer of each variable's recent records."""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array


#: ``source`` codes of a record that no single mechanism decided.
SOURCE_BLEND = -1  # a policy combined several hypotheses
SOURCE_EXTERNAL = -2  # the initial value or ``state.set``
SOURCE_NONE = -3  # no valid hypothesis this step: value held (the original's None)


class Memory(eqx.Module):
    """The most recent committed records of every variable, oldest overwritten first.

    ``value``, ``confidence``, ``step`` and ``source`` have shape
    ``(n_variables, capacity)`` (views of two stacked buffers); each variable uses
    its own capacity (``Variable(memory=...)``) inside that. ``written`` counts records
    ever committed; the state's size never grows with the number of steps.
    ``source`` is the index of the mechanism whose hypothesis decided the value,
    or one of ``SOURCE_BLEND`` (-1), ``SOURCE_EXTERNAL`` (-2), ``SOURCE_NONE`` (-3).
    """

    records: Array  # (..., n, capacity, 2) floats: value, confidence
    tags: Array  # (..., n, capacity, 2) int32: step, source
    written: Array
    capacity: tuple[int, ...] = eqx.field(static=True)

    # stacked, so a step writes the buffer in two fused kernels instead of four
    value = property(lambda self: self.records[..., 0])
    confidence = property(lambda self: self.records[..., 1])
    step = property(lambda self: self.tags[..., 0])
    source = property(lambda self: self.tags[..., 1])

    @classmethod
    def empty(cls, capacity: tuple[int, ...], dtype) -> Memory:
        n, c = len(capacity), max(capacity, default=1)
        return cls(
            records=jnp.zeros((n, c, 2), dtype),
            tags=jnp.broadcast_to(jnp.asarray([-1, SOURCE_NONE], jnp.int32), (n, c, 2)),
            written=jnp.zeros((n,), jnp.int32),
            capacity=tuple(capacity),
        )

    def push(self, commit, value, confidence, step, source, *, scatter: bool = False) -> Memory:
        """Append one record per variable where ``commit``. ``scatter``: write one
        entry per variable (large or batched buffers) instead of a masked blend of
        the whole buffer (small ones: one fused loop). The same records either way."""
        n = len(self.capacity)
        # unsigned: ``written`` is never negative, and a power-of-two capacity
        # then makes the slot a bit mask (the blend below recomputes it per entry)
        cap = jnp.asarray(np.asarray(self.capacity, np.uint32))
        slot = (self.written.astype(jnp.uint32) % cap).astype(jnp.int32)
        rows = jnp.arange(n)
        width = self.records.shape[-2]
        records = jnp.stack([value, jnp.asarray(confidence, value.dtype)], axis=-1)
        tags = jnp.stack([jnp.broadcast_to(step, (n,)).astype(jnp.int32), source.astype(jnp.int32)], axis=-1)
        if not scatter:
            # small buffers: a masked blend fuses into one loop (faster than a scatter)
            hit = (jnp.arange(width)[None, :] == slot[:, None]) & commit[:, None]

            def put(buf, new):
                return jnp.where(hit[..., None], new[:, None, :], buf)
        else:

            # large or batched buffers: write one entry per variable (a blend would
            # read and rewrite the whole buffer)
            def put(buf, new):
                old = buf[rows, slot]
                return buf.at[rows, slot].set(
                    jnp.where(commit[:, None], new, old), unique_indices=True, indices_are_sorted=True
                )

        return Memory(
            records=put(self.records, records.astype(self.records.dtype)),
            tags=put(self.tags, tags),
            written=self.written + commit.astype(jnp.int32),
            capacity=self.capacity,
        )

    def ordered(self, i: int):
        """Records of variable ``i``, oldest first, as a dict of arrays of length
        ``capacity[i]`` plus a ``valid`` mask (False for never-written entries)."""
        cap = self.capacity[i]
        w = self.written[..., i][..., None]
        k = jnp.arange(cap)
        idx = (w - cap + k) % cap
        valid = k >= cap - jnp.minimum(w, cap)
        take = lambda a: jnp.take_along_axis(a[..., i, :cap], jnp.broadcast_to(idx, a.shape[:-2] + (cap,)), -1)
        return {
            "value": take(self.value),
            "confidence": take(self.confidence),
            "step": take(self.step),
            "source": take(self.source),
            "valid": valid,
        }
