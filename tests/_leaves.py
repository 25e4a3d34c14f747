"""A pytree's leaves as NumPy, for bit-for-bit comparisons (no test set-up: subprocesses import it too)."""

import jax
import numpy as np


def host_leaves(tree) -> list:
    """Every leaf of a pytree (a state, a trajectory) as NumPy, typed keys as their
    key data: what two runs are compared on, bit for bit."""
    out = []
    for x in jax.tree.leaves(tree):
        if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        out.append(np.asarray(x))
    return out
