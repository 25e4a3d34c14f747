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

    Arrays have shape ``(n_variables, capacity)``; each variable uses its own
    capacity (``Variable(memory=...)``) inside that. ``written`` counts records
    ever committed; the state's size never grows with the number of steps.
    ``source`` is the index of the mechanism whose hypothesis decided the value,
    or one of ``SOURCE_BLEND`` (-1), ``SOURCE_EXTERNAL`` (-2), ``SOURCE_NONE`` (-3).
    """

    value: Array
    confidence: Array
    step: Array
    source: Array
    written: Array
    capacity: tuple[int, ...] = eqx.field(static=True)

    @classmethod
    def empty(cls, capacity: tuple[int, ...], dtype) -> Memory:
        n, c = len(capacity), max(capacity, default=1)
        return cls(
            value=jnp.zeros((n, c), dtype),
            confidence=jnp.zeros((n, c), dtype),
            step=jnp.full((n, c), -1, jnp.int32),
            source=jnp.full((n, c), SOURCE_NONE, jnp.int32),
            written=jnp.zeros((n,), jnp.int32),
            capacity=tuple(capacity),
        )

    def push(self, commit, value, confidence, step, source) -> Memory:
        n = len(self.capacity)
        cap = jnp.asarray(np.asarray(self.capacity, np.int32))
        slot = self.written % cap
        rows = jnp.arange(n)
        width = self.value.shape[-1]
        if n * width <= 1 << 16:
            # small buffers: a masked blend fuses into one loop (faster than a scatter)
            hit = (jnp.arange(width)[None, :] == slot[:, None]) & commit[:, None]

            def put(buf, new):
                return jnp.where(hit, new[:, None], buf)
        else:

            def put(buf, new):
                old = buf[rows, slot]
                return buf.at[rows, slot].set(jnp.where(commit, new, old))

        return Memory(
            value=put(self.value, value),
            confidence=put(self.confidence, confidence),
            step=put(self.step, jnp.broadcast_to(step, (n,)).astype(jnp.int32)),
            source=put(self.source, source.astype(jnp.int32)),
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
