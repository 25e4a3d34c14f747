"""Trace hints: how a step is laid out depends on how it will run.

A step traced for one scenario is a chain of tiny kernels, and XLA's CPU runtime
spends most of its time launching them: the engine then prefers elementwise forms
that fuse into few kernels (masked blends instead of scatters, column-by-column
reductions). Traced for a batch of thousands of scenarios (``sweep``), every kernel
is large and the opposite holds: a masked blend rewrites a whole ring buffer per
record, and XLA recomputes the fused resolution chain once per element of each
large consumer. :func:`batched` marks such a trace.
"""

from __future__ import annotations

import contextlib
import contextvars

import jax.numpy as jnp

_BATCHED = contextvars.ContextVar("procela_jax_batched", default=False)


@contextlib.contextmanager
def batched_trace():
    """Trace the enclosed code for a large batch of scenarios (``vmap``)."""
    token = _BATCHED.set(True)
    try:
        yield
    finally:
        _BATCHED.reset(token)


def batched() -> bool:
    """Whether the current trace is for a large batch of scenarios."""
    return _BATCHED.get()


def materialize(x):
    """``x`` itself, computed once into a buffer of its own.

    XLA duplicates a cheap elementwise producer into every consumer that fuses it,
    once per element of the consumer: a ``(variables,)`` result read by a
    ``(variables, capacity, 2)`` ring-buffer write is recomputed ``2 * capacity``
    times. A reduction is never duplicated that way, so ``x`` goes through one (a
    maximum against the identity, exact for every value, NaN and -0.0 included).
    """
    x = jnp.asarray(x)
    if x.dtype == jnp.bool_:
        low = False
    elif jnp.issubdtype(x.dtype, jnp.floating):
        low = -jnp.inf
    else:
        low = jnp.iinfo(x.dtype).min
    pad = jnp.full(x.shape, low, x.dtype)
    return jnp.max(jnp.stack([x, pad]), axis=0)  # two contiguous planes: vectorised
