"""The seam: every hook into JAX or XLA beyond their documented behaviour.

The engine changes how XLA compiles two things, never what they compute:

* compiler options (:data:`LEAN_CPU`, used by :func:`lean_jit`), checked against
  the running backend: an option it does not know is dropped with one warning;
* the lowering of the threefry hash on the CPU (:func:`unrolled_threefry` for one
  scenario, :func:`batched_threefry` for sweeps), a CPU-platform rule: programs
  for any other platform keep JAX's own lowering.

Each hook falls back to JAX's default when it cannot be installed (at import)
and when it fails while a program is lowered, with one warning each. With the
environment variable ``PROCELA_JAX_PLAIN=1`` (read at import) none is installed:
every program is compiled the way plain JAX compiles it, with the same bits.
:func:`report` says which hooks are active and why the others are not.

The tested range of JAX is in ``pyproject.toml``; the README says how to move it.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
import os
import warnings

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from ._hints import materialize

#: ``PROCELA_JAX_PLAIN=1`` when the package was imported: no hook is installed.
PLAIN = os.environ.get("PROCELA_JAX_PLAIN", "").strip().lower() not in ("", "0", "false", "no", "off")

_STATUS: dict[str, str] = {}  # hook -> "on" or why it is off (see report())


def _warn(message: str) -> None:
    warnings.warn(f"procela_jax: {message}", RuntimeWarning, stacklevel=3)


def report() -> dict[str, str]:
    """Which hooks into JAX's internals are active in this process ("on"), and why
    the others are not.

    >>> import procela_jax._jit as seam
    >>> sorted(seam.report())
    ['compiler_options', 'threefry_lowering']
    """
    out = dict(_STATUS)
    if PLAIN:
        out["compiler_options"] = "off: PROCELA_JAX_PLAIN=1"
    else:
        dropped = [f"{k} ({p})" for (p, k, _), ok in _option_checks.items() if not ok]
        out["compiler_options"] = "on" + (f", dropped: {', '.join(dropped)}" if dropped else "")
    return out


# ---- compiler options -------------------------------------------------------------
#: On the CPU, XLA's older loop emitters compile a large program with many small
#: branches (such as the AMR case study's governed step, ~7,000 operations) with
#: a third of the memory of the default fusion emitters: the whole process peaks
#: at ~330 MB instead of ~520 MB, for the same arithmetic: the two emitters may
#: contract ``a * b + c`` into a multiply-add in different places, so float results
#: can differ in their last bits (tests/test_seam.py).
LEAN_CPU = {"xla_cpu_use_fusion_emitters": False}

_option_checks: dict[tuple, bool] = {}


def _option_supported(platform: str, name: str, value) -> bool:
    """Whether the default backend compiles with ``name=value``: tried once per
    backend on a one-operation function, the answer kept for the process."""
    key = (platform, name, value)
    if key not in _option_checks:
        try:
            jax.jit(lambda x: x + 1, compiler_options={name: value}).lower(np.float32(0)).compile()
            _option_checks[key] = True
        except Exception as e:  # XLA raises INVALID_ARGUMENT for an unknown option
            _option_checks[key] = False
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            _warn(f"the XLA compiler option {name}={value!r} is not supported by this "
                  f"{platform} backend (jax {jax.__version__}: {first}); compiling "
                  "without it (the same numbers, maybe more compile memory).")
    return _option_checks[key]


def compiler_options(options: dict, platform: str | None = None) -> dict | None:
    """The entries of ``options`` that the running backend accepts (``None`` when
    none is left, or with ``PROCELA_JAX_PLAIN=1``). An unknown option is dropped
    with one warning, never an error.

    >>> compiler_options({"xla_cpu_use_fusion_emitters": False}) in (None, {"xla_cpu_use_fusion_emitters": False})
    True
    """
    if PLAIN or not options:
        return None
    platform = platform or jax.default_backend()
    kept = {k: v for k, v in options.items() if _option_supported(platform, k, v)}
    return kept or None


_TRACED = object()  # marks the places of traced leaves among the static ones


def lean_jit(fun, *, cpu_options: dict = LEAN_CPU):
    """``eqx.filter_jit(fun)`` compiled with ``cpu_options`` (:data:`LEAN_CPU`) on
    the CPU, default options elsewhere; options the backend does not know are left
    out (:func:`compiler_options`). Arrays among the arguments are traced,
    everything else is static. ``wrapped.lower(*args)`` gives the lowered
    computation; call its compiled form with ``wrapped.traced_arguments(*args)``.

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
        platform = jax.default_backend()
        options = compiler_options(cpu_options, platform) if platform == "cpu" else None
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
# (faster than the words laid out after every four rounds, ``_fenced_hash``, which
# is faster than the loop: benchmarks/README.md has the figures). Its predicate
# reads one key word: on several devices that
# word would travel to every device for each hash, so a program for several
# devices gets the fenced form.
#
# How: one rule is registered for the CPU platform (public ``register_lowering``);
# it lowers JAX's own CPU rule unless a context variable set by the two context
# managers below asks for another form, so a swap holds in the thread that set
# it only. Programs for other platforms (``jax.export(..., platforms=["cuda"])``)
# never see it: GPUs get JAX's unrolled lowering, which is what they run best
# (the rounds fuse into one kernel; there is no per-kernel launch cost to save).
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


def _unrolled_hash(k1, k2, x1, x2):
    return list(_hash(k1, k2, x1, x2))


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


#: The forms of the hash, by name (each proven equal to JAX's hash in tests).
FORMS = {"unrolled": _unrolled_hash, "branch": _branch_hash, "fenced": _fenced_hash}

_MODE: contextvars.ContextVar[str | None] = contextvars.ContextVar("procela_jax_threefry", default=None)


def _one_device(ctx) -> bool:
    """Whether the program being lowered runs on one device (private to JAX: the
    module context's axis context)."""
    return ctx.module_context.axis_context.num_devices == 1


def _form(mode: str, ctx) -> str:
    """The form of the hash a mode asks for in the program being lowered."""
    if mode == "batched":
        return "branch" if _one_device(ctx) else "fenced"
    return mode


_lowering_failed: set[str] = set()  # modes whose lowering failed (warned once each)


def _install():
    """Register the CPU rule; returns JAX's own CPU rule (None if not installed)."""
    if PLAIN:
        _STATUS["threefry_lowering"] = "off: PROCELA_JAX_PLAIN=1"
        return None, None
    try:
        try:
            from jax.extend.random import threefry2x32_p as prim
        except ImportError:  # pragma: no cover (before jax.extend.random had it)
            from jax._src.prng import threefry2x32_p as prim
        from jax.interpreters import mlir

        # JAX's own CPU rule, to lower whenever no other form is asked for
        # (private to JAX: the table of platform-specific rules)
        from jax._src.interpreters.mlir import _platform_specific_lowerings

        default = _platform_specific_lowerings["cpu"][prim]
        forms = {name: mlir.lower_fun(fn, multiple_results=True) for name, fn in FORMS.items()}

        def rule(ctx, *args, **params):
            mode = _MODE.get()
            if mode is not None:
                try:
                    return forms[_form(mode, ctx)](ctx, *args, **params)
                except Exception as e:  # noqa: BLE001 (any change inside JAX: fall back)
                    if mode not in _lowering_failed:
                        _lowering_failed.add(mode)
                        _warn(f"the {mode} lowering of threefry failed ({type(e).__name__}: {e}); "
                              "lowering with JAX's default rule (the same numbers, slower).")
            return default.rule(ctx, *args, **params)

        mlir.register_lowering(prim, rule, platform="cpu", inline=default.inline)
    except Exception as e:  # noqa: BLE001 (any change inside JAX: keep its default)
        _STATUS["threefry_lowering"] = f"off: {type(e).__name__}: {e}"
        _warn(f"could not install the CPU lowering of threefry ({type(e).__name__}: {e}); "
              f"jax {jax.__version__} lowers it its own way (the same numbers, slower CPU runs).")
        return None, None
    _STATUS["threefry_lowering"] = "on"
    return prim, default


PRIM, _DEFAULT = _install()  # PRIM: the threefry primitive (None when not installed)


@contextlib.contextmanager
def _threefry_mode(mode: str):
    token = _MODE.set(mode if PRIM is not None else None)
    try:
        yield
    finally:
        _MODE.reset(token)


def unrolled_threefry():
    """Lower threefry unrolled on the CPU while the enclosed code traces and
    compiles (in this thread; other platforms' lowering is never changed, and
    neither are the numbers).

    >>> import jax
    >>> with unrolled_threefry():
    ...     x = jax.jit(lambda k: jax.random.uniform(k))(jax.random.key(1))
    >>> bool(x == jax.random.uniform(jax.random.key(1)))
    True
    """
    return _threefry_mode("unrolled")


def batched_threefry():
    """Lower threefry for large batches on the CPU (unrolled, in a branch of its
    own; on several devices, fenced) while the enclosed code traces and compiles:
    the same bits as JAX's lowering.

    >>> import jax
    >>> keys = jax.random.split(jax.random.key(2), 3)
    >>> with batched_threefry():
    ...     x = jax.jit(jax.vmap(jax.random.normal))(keys)
    >>> bool((x == jax.vmap(jax.random.normal)(keys)).all())
    True
    """
    return _threefry_mode("batched")


# ---- forms for the CPU only ---------------------------------------------------------
def on_cpu(fn):
    """``fn`` in programs lowered for the CPU, the identity in programs for any other
    platform (chosen when the program is lowered, so ``jax.export`` for a GPU on a
    CPU machine gets the GPU's form). ``fn`` must return its arguments' values
    (a layout hint, such as :func:`procela_jax._hints.materialize`), never others.

    >>> import jax.numpy as jnp
    >>> from procela_jax._hints import materialize
    >>> float(jax.jit(on_cpu(materialize))(jnp.float32(1.5)))
    1.5
    """

    def wrapped(*xs):
        same = (lambda *a: a[0]) if len(xs) == 1 else (lambda *a: tuple(a))
        return lax.platform_dependent(*xs, cpu=fn, default=same)

    return wrapped
