"""A filtered ``jax.jit`` that passes compiler options (``eqx.filter_jit`` has none)."""

from __future__ import annotations

import functools

import equinox as eqx
import jax

#: On the CPU, XLA's older loop emitters compile a large program with many small
#: branches (such as the AMR case study's governed step, ~7,000 operations) with
#: a third of the memory of the default fusion emitters: the whole process peaks
#: at ~330 MB instead of ~520 MB, for the same numbers.
LEAN_CPU = {"xla_cpu_use_fusion_emitters": False}


_TRACED = object()  # marks the places of traced leaves among the static ones


def lean_jit(fun):
    """``eqx.filter_jit(fun)`` compiled with :data:`LEAN_CPU` on the CPU (default
    options elsewhere). Arrays among the arguments are traced, everything else is
    static. ``wrapped.lower(*args)`` gives the lowered computation; call its compiled
    form with ``wrapped.traced_arguments(*args)``.

    >>> import jax.numpy as jnp
    >>> f = lean_jit(lambda x, n: x * n)
    >>> int(f(jnp.asarray(2), 3))
    6
    """

    def call(static, dynamic):
        treedef, kept = static
        leaves = [d if k is _TRACED else k for d, k in zip(dynamic, kept)]
        return fun(*jax.tree.unflatten(treedef, leaves))

    @functools.cache
    def jitted():
        options = LEAN_CPU if jax.default_backend() == "cpu" else None
        return jax.jit(call, static_argnums=0, compiler_options=options)

    def split(args):
        leaves, treedef = jax.tree.flatten(args)
        traced = [eqx.is_array(x) for x in leaves]
        dynamic = [x if t else None for x, t in zip(leaves, traced)]
        kept = tuple(_TRACED if t else x for x, t in zip(leaves, traced))
        return (treedef, kept), dynamic

    @functools.wraps(fun)
    def wrapped(*args):
        return jitted()(*split(args))

    wrapped.lower = lambda *args: jitted().lower(*split(args))
    wrapped.traced_arguments = lambda *args: split(args)[1]  # what ``lower(*args).compile()`` takes
    return wrapped
