"""Trace hints: how a step is laid out depends on how it will run.

A step traced for one scenario is a chain of tiny kernels, and XLA's CPU runtime
spends most of its time launching them: the engine then prefers elementwise forms
that fuse into few kernels (masked blends instead of scatters, column-by-column
reductions). Traced for a batch of thousands of scenarios (``sweep``), every kernel
is large and the opposite holds: a masked blend rewrites a whole ring buffer per
record, and XLA recomputes the fused resolution chain once per element of each
large consumer. :func:`fence` and :func:`materialize` lay out what such a
trace computes once for many readers; the trace plan (``_plan``) says where.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

def fence(gate, fn, *args):
    """``fn(*args)``, as the taken branch of a conditional on ``gate``.

    ``gate`` is a boolean scalar that is ``True`` at run time, traced (an argument
    of the jitted function, the same for every scenario). XLA fuses nothing across
    a conditional, so the kernels inside see ``fn``'s own arrays (whole columns of
    scenarios when ``fn`` works on scalars of each scenario) and its readers
    outside read its buffers.
    """
    shapes = jax.eval_shape(fn, *args)
    zeros = lambda *_: jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)  # noqa: E731
    return lax.cond(gate, fn, zeros, *args)


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
