"""How the engine's own jitted entry points are compiled: compiler options
(``lean_jit``) and the lowering of the random-number hash (``unrolled_threefry``)."""

from __future__ import annotations

import contextlib
import functools
import threading

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


# ---- threefry, unrolled ----------------------------------------------------------
# On the CPU, JAX lowers each threefry hash (every fold_in, split, normal, uniform)
# to a five-round XLA while loop, which keeps compile times short; elsewhere it
# emits the rounds unrolled. In a single scenario's step those loops are most of
# the kernels XLA's runtime launches (about 400 of 470 in the SIR demo's step): unrolled, a run of the SIR demo takes half
# the time, with the same bits (the same hash, written out). Under vmap over
# thousands of scenarios the rolled loops are faster, so sweeps keep them. The
# swap is process-wide while it lasts: another thread lowering at that moment
# gets the unrolled rule too (the same numbers, compiled differently).
try:  # private to JAX: if it moves, the default lowering stays (same numbers)
    from jax._src.interpreters import mlir as _mlir
    from jax._src.random import threefry2x32 as _threefry

    _PRIM = _threefry.threefry2x32_p
    _CPU_RULES = _mlir._platform_specific_lowerings["cpu"]
    _UNROLLED = _mlir._lowerings[_PRIM]  # the rule of the other platforms
    _ROLLED = _CPU_RULES[_PRIM]
except (ImportError, AttributeError, KeyError):  # pragma: no cover
    _UNROLLED = None

_swap_lock = threading.Lock()
_swap_depth = 0


@contextlib.contextmanager
def unrolled_threefry():
    """Lower threefry unrolled while the enclosed code traces and compiles (on
    every backend; it only changes the CPU's lowering, never the numbers).

    >>> import jax
    >>> with unrolled_threefry():
    ...     x = jax.jit(lambda k: jax.random.uniform(k))(jax.random.key(0))
    >>> bool(x == jax.random.uniform(jax.random.key(0)))
    True
    """
    global _swap_depth
    if _UNROLLED is None:  # pragma: no cover
        yield
        return
    with _swap_lock:
        if _swap_depth == 0:
            _CPU_RULES[_PRIM] = _UNROLLED
        _swap_depth += 1
    try:
        yield
    finally:
        with _swap_lock:
            _swap_depth -= 1
            if _swap_depth == 0:
                _CPU_RULES[_PRIM] = _ROLLED
