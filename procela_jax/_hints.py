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
import numpy as np
from jax import lax

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


def materialize(*xs):
    """``x`` itself, bit for bit, computed once into a buffer of its own.

    XLA duplicates a cheap elementwise producer into every consumer that fuses it,
    once per element of the consumer: a ``(variables,)`` result read by a
    ``(variables, capacity, 2)`` ring-buffer write is recomputed ``2 * capacity``
    times. A reduction is never duplicated that way, so ``x`` goes through one: a
    bitwise OR of its bits with zeros (exact for every value, NaN payloads and
    -0.0 included; an OR reduction is also one XLA leaves to its own loop emitter,
    which is faster here than a library call for a maximum). Several arrays of
    one dtype and shape share one buffer, written by one kernel, and come back
    as a tuple.
    """
    x = jnp.stack(xs) if len(xs) > 1 else jnp.asarray(xs[0])
    bits = x
    if jnp.issubdtype(x.dtype, jnp.floating):
        bits = lax.bitcast_convert_type(x, jnp.dtype(f"int{8 * x.dtype.itemsize}"))
    planes = jnp.stack([bits, jnp.zeros_like(bits)])  # two contiguous planes: vectorised
    out = lax.reduce(planes, np.zeros((), bits.dtype), lax.bitwise_or, (0,))
    out = lax.bitcast_convert_type(out, x.dtype) if out.dtype != x.dtype else out
    return tuple(out) if len(xs) > 1 else out
