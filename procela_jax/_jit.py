"""How the engine's own jitted entry points are compiled: compiler options
(``lean_jit``) and the lowering of the random-number hash (``unrolled_threefry``
for single runs, ``batched_threefry`` for sweeps)."""

from __future__ import annotations

import contextlib
import functools
import math
import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._hints import materialize

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


# ---- threefry: how the CPU lowers the hash ---------------------------------------
# On the CPU, JAX lowers each threefry hash (every fold_in, split, normal, uniform)
# to a five-round XLA while loop, which keeps compile times short; elsewhere it
# emits the rounds unrolled. In a single scenario's step those loops are most of
# the kernels XLA's runtime launches (about 400 of 470 in the SIR demo's step):
# unrolled, a run of the SIR demo takes half the time, with the same bits (the
# same hash, written out). Under vmap over thousands of scenarios the plain
# unrolled form is slower than the loop: XLA fuses the twenty rounds into their
# readers and recomputes them per element of each. Sweeps therefore lower each
# hash as the taken branch of a conditional (``_branch_hash``), which XLA does not
# fuse across: the rounds run once, in one elementwise kernel over the whole batch
# (the SIR demo's sweep at 10,000 scenarios steps 1.3-1.5x faster than with the
# words laid out after every four rounds, ``_fenced_hash``, and that form 1.4-1.5x
# faster than the loop). Its predicate reads one key word: on several devices that
# word would travel to every device for each hash, so a program for several
# devices gets the fenced form. A swap is process-wide while it lasts: another
# thread lowering at that moment gets the swapped rule too (the same numbers,
# compiled differently).
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def _rotate_left(x, d: int):
    return lax.shift_left(x, np.uint32(d)) | lax.shift_right_logical(x, np.uint32(32 - d))


def _hash(k1, k2, x1, x2, fence_every: int = 0):
    """Threefry-2x32 (20 rounds), unrolled; with ``fence_every``, both words are
    laid out in memory (``materialize``) after every ``fence_every`` rounds."""
    shape = jnp.broadcast_shapes(jnp.shape(k1), jnp.shape(k2), jnp.shape(x1), jnp.shape(x2))
    k1, k2, x1, x2 = (jnp.broadcast_to(a, shape) for a in (k1, k2, x1, x2))
    ks = (k1, k2, k1 ^ k2 ^ np.uint32(0x1BD11BDA))
    a, b = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            a = a + b
            b = a ^ _rotate_left(b, r)
        a = a + ks[(i + 1) % 3]
        b = b + ks[(i + 2) % 3] + np.uint32(i + 1)
        if fence_every:
            a, b = materialize(a, b)  # one buffer for both words
    return a, b


def _fenced_hash(k1, k2, x1, x2):
    return list(_hash(k1, k2, x1, x2, fence_every=4))


def _branch_hash(k1, k2, x1, x2):
    """The hash as the taken branch of a conditional: XLA fuses nothing across it,
    so the twenty rounds run once, in one elementwise kernel over whole columns."""
    shape = jnp.broadcast_shapes(jnp.shape(k1), jnp.shape(k2), jnp.shape(x1), jnp.shape(x2))
    if not math.prod(shape):
        return list(_hash(k1, k2, x1, x2))
    probe = jnp.ravel(k1)[0]
    taken = probe != probe + np.uint32(1)  # always True; the compiler does not know it
    zeros = lambda *_: (jnp.zeros(shape, jnp.uint32),) * 2  # noqa: E731
    return list(lax.cond(taken, _hash, zeros, k1, k2, x1, x2))


def _batched_rule(branch, fenced):
    def rule(ctx, *args, **params):
        # the branch form reads one element of the keys for its predicate: on several
        # devices that element would be broadcast to all of them for every hash
        one_device = getattr(ctx.module_context.axis_context, "num_devices", None) == 1
        return (branch if one_device else fenced)(ctx, *args, **params)

    return rule


try:  # private to JAX: if it moves, the default lowering stays (same numbers)
    from jax._src.interpreters import mlir as _mlir
    from jax._src.random import threefry2x32 as _threefry

    _PRIM = _threefry.threefry2x32_p
    _CPU_RULES = _mlir._platform_specific_lowerings["cpu"]
    _UNROLLED = _mlir._lowerings[_PRIM]  # the rule of the other platforms
    _ROLLED = _CPU_RULES[_PRIM]
    _BATCHED = _mlir.LoweringRuleEntry(
        rule=_batched_rule(_mlir.lower_fun(_branch_hash, multiple_results=True),
                           _mlir.lower_fun(_fenced_hash, multiple_results=True)),
        inline=True,
    )
except (ImportError, AttributeError, KeyError, TypeError):  # pragma: no cover
    _UNROLLED = _BATCHED = None

_swap_lock = threading.Lock()
_swap_stack: list = []


@contextlib.contextmanager
def _threefry_rule(rule):
    if rule is None:  # pragma: no cover
        yield
        return
    with _swap_lock:
        _swap_stack.append(rule)
        _CPU_RULES[_PRIM] = rule
    try:
        yield
    finally:
        with _swap_lock:
            _swap_stack.remove(rule)
            _CPU_RULES[_PRIM] = _swap_stack[-1] if _swap_stack else _ROLLED


def unrolled_threefry():
    """Lower threefry unrolled while the enclosed code traces and compiles (on
    every backend; it only changes the CPU's lowering, never the numbers).

    >>> import jax
    >>> with unrolled_threefry():
    ...     x = jax.jit(lambda k: jax.random.uniform(k))(jax.random.key(1))
    >>> bool(x == jax.random.uniform(jax.random.key(1)))
    True
    """
    return _threefry_rule(_UNROLLED)


def batched_threefry():
    """Lower threefry for large batches (unrolled, in a branch of its own) while the
    enclosed code traces and compiles: the same bits as JAX's lowering.

    >>> import jax
    >>> keys = jax.random.split(jax.random.key(2), 3)
    >>> with batched_threefry():
    ...     x = jax.jit(jax.vmap(jax.random.normal))(keys)
    >>> bool((x == jax.vmap(jax.random.normal)(keys)).all())
    True
    """
    return _threefry_rule(_BATCHED)
