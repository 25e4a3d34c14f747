"""The engine's jit entry points: threefry lowered unrolled (single runs) or unrolled and
fenced (sweeps) changes speed, never bits; the forms survive XLA's optimisation."""

import functools
import re
import threading

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import procela_jax as pj
from conftest import host_leaves
from procela_jax import _jit


def _hlo(fn, *args):
    return jax.jit(fn).lower(*args).as_text()


needs_hooks = pytest.mark.skipif(_jit.PRIM is None or jax.default_backend() != "cpu",
                                 reason="the CPU's threefry rule is not installed (PROCELA_JAX_PLAIN=1 or not on a CPU)")


# In a compiled CPU program JAX's hash is a while loop of five iterations (XLA notes
# the trip count); the branch form is a conditional with the two words as results.
def _hash_loops(text: str) -> int:
    return len(re.findall(r'known_trip_count":\{"n":"5"\}', text))


def _hash_branches(text: str) -> int:
    return len(re.findall(r"= \(u32\[[^\]]*\]\{[^}]*\}, u32\[[^\]]*\]\{[^}]*\}\) conditional\(", text))


@needs_hooks
def test_unrolled_threefry_swaps_the_cpu_lowering_and_restores_it():
    draw = lambda k: jax.random.normal(jax.random.fold_in(k, 3), (4,))  # noqa: E731
    key = jax.random.key(1)
    assert "while" in _hlo(draw, key)  # JAX's default on the CPU: a loop of rounds
    with _jit.unrolled_threefry():
        with _jit.unrolled_threefry():  # nested uses keep it until the outermost ends
            pass
        assert "while" not in _hlo(lambda k: draw(k) + 0, key)
    assert "while" in _hlo(lambda k: draw(k) * 1, key)
    with pytest.raises(RuntimeError):
        with _jit.unrolled_threefry():
            raise RuntimeError("boom")
    assert "while" in _hlo(lambda k: draw(k) - 0, key)


def test_unrolled_runs_give_the_bits_of_rolled_runs():
    ex = pj.demos.sir.make_executive()
    state = ex.init(jax.random.key(7))
    # two functions, so that JAX's cache of lowerings (keyed by the traced program)
    # cannot hand the second one the first one's lowering; the executive is an
    # argument, as in Executive.run (closed over, its parameters would be constants)
    rolled = eqx.filter_jit(lambda e, s: e.run(s, 50)).lower(ex, state)
    with _jit.unrolled_threefry():
        unrolled = eqx.filter_jit(lambda e, s: e.run(s, 50)).lower(ex, state)
    if jax.default_backend() == "cpu":  # two different programs...
        assert rolled.as_text().count("stablehlo.while") > unrolled.as_text().count("stablehlo.while")
    # ...with the same numbers, and those of Executive.run (which lowers unrolled):
    # the same random bits and integers; floats up to XLA contracting ``a * b + c``
    # into a multiply-add in other places of the other program (seen at jax 0.7; the
    # same bits at 0.10, and without FMA: tests/test_seam.py)
    expected = host_leaves(rolled.compile()(ex, state))
    for got in (host_leaves(unrolled.compile()(ex, state)), host_leaves(ex.run(state, 50))):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            if np.issubdtype(a.dtype, np.floating):
                np.testing.assert_array_max_ulp(a, b, maxulp=2)
            else:
                np.testing.assert_array_equal(a, b)


def test_only_concrete_calls_lower_unrolled():
    # under vmap the rolled loops are faster for many rows: a transformed call keeps
    # JAX's default; a call on concrete values (one scenario) gets the unrolled hash
    from procela_jax._executive import _plan_for

    ex = pj.demos.sir.make_executive()
    state = ex.init(jax.random.key(0))
    assert _plan_for(ex, state, None).hash == "unrolled"
    default = []

    def under_vmap(s):
        default.append(_plan_for(ex, s, None).hash == "default")
        return s.values

    def under_grad(beta):
        default.append(_plan_for(ex.replace({"sir.beta": beta}), state, None).hash == "default")
        return beta

    jax.vmap(under_vmap)(jax.vmap(ex.init)(jax.random.split(jax.random.key(0), 3)))
    jax.grad(under_grad)(0.3)
    assert default == [True, True]


def _draws(keys, data):
    """Every kind of hash a model calls: fold_in, split, bits, uniform, normal."""
    k = jax.vmap(jax.random.fold_in)(keys, data)
    a, b = jax.vmap(jax.random.split)(k).T
    return (jax.random.key_data(k), jax.vmap(lambda x: jax.random.bits(x, (3,)))(a),
            jax.vmap(jax.random.uniform)(b), jax.vmap(lambda x: jax.random.normal(x, (2,)))(a))


@functools.cache
def _compiled(n: int):
    """``_draws`` for ``n`` keys compiled with JAX's lowering and with the batched one
    (two functions, so that the second cannot reuse the first's lowering)."""
    keys = jax.random.split(jax.random.key(0), n)
    msgs = jnp.zeros((n,), jnp.uint32)
    default = jax.jit(lambda k, d: _draws(k, d)).lower(keys, msgs).compile()
    with _jit.batched_threefry():
        fenced = jax.jit(lambda k, d: _draws(k, d)).lower(keys, msgs).compile()
    return default, fenced


@settings(max_examples=25, deadline=None)
@given(seeds=st.lists(st.integers(0, 2**32 - 1), min_size=7, max_size=7), data=st.integers(0, 2**32 - 1))
def test_batched_threefry_gives_the_bits_of_jax(seeds, data):
    keys = jax.vmap(jax.random.key)(jnp.asarray(np.asarray(seeds, np.uint32)))
    msgs = jnp.full((len(seeds),), data, jnp.uint32)
    default, fenced = _compiled(len(seeds))
    for g, e in zip(fenced(keys, msgs), default(keys, msgs)):
        np.testing.assert_array_equal(np.asarray(g), np.asarray(e))


@settings(max_examples=25, deadline=None)
@given(words=hnp.arrays(np.uint32, st.sampled_from([(1,), (5,), (2, 3)]), elements=st.integers(0, 2**32 - 1)),
       seed=st.integers(0, 2**32 - 1))
def test_each_batched_form_of_the_hash_is_threefry(words, seed):
    """Every form (unrolled, branch for one device, fenced for several) is JAX's hash."""
    k1 = jnp.full(words.shape, seed, jnp.uint32)
    k2 = jnp.asarray(words[::-1].copy() if words.ndim == 1 else words.T.reshape(words.shape))
    x1, x2 = jnp.asarray(words), jnp.asarray(words ^ np.uint32(0x9E3779B9))
    from jax.extend.random import threefry2x32_p

    want = [np.asarray(a) for a in jax.jit(lambda *a: threefry2x32_p.bind(*a))(k1, k2, x1, x2)]
    for form in _jit.FORMS.values():
        got = jax.jit(form)(k1, k2, x1, x2)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(np.asarray(g), w)


@needs_hooks
def test_threefry_swaps_nest_and_restore_the_default():
    draw = lambda k: jax.random.normal(jax.random.fold_in(k, 3), (4,))  # noqa: E731
    key = jax.random.key(1)
    fenced = lambda text: "stablehlo.case" in text and "while" not in text  # noqa: E731 (the branch form)
    with _jit.batched_threefry():
        assert fenced(_hlo(lambda k: draw(k) + 1, key))
        with _jit.unrolled_threefry():  # the innermost swap holds while it lasts
            text = _hlo(lambda k: draw(k) + 2, key)
            assert "while" not in text and not fenced(text)
        assert fenced(_hlo(lambda k: draw(k) + 3, key))
    assert "while" in _hlo(lambda k: draw(k) + 4, key)


@needs_hooks
def test_a_swap_holds_in_its_own_thread_only():
    draw = lambda k: jax.random.normal(jax.random.fold_in(k, 3), (4,))  # noqa: E731
    key = jax.random.key(1)
    entered, lowered = threading.Event(), threading.Event()
    texts = {}

    def other():
        entered.wait()
        texts["other"] = _hlo(lambda k: draw(k) + 5, key)
        lowered.set()

    t = threading.Thread(target=other)
    t.start()
    with _jit.unrolled_threefry():
        entered.set()
        lowered.wait()
        texts["own"] = _hlo(lambda k: draw(k) + 6, key)
    t.join()
    assert "while" in texts["other"] and "while" not in texts["own"]


def _fixed_steps_run(ex, state):
    # 21 steps saved every 7: the scan loops run 3 and 7 times, never 5
    return eqx.filter_jit(lambda e, s: e.run(s, 21, save=pj.Save(every=7))).lower(ex, state).compile().compiled.as_text()


@needs_hooks
def test_the_single_run_program_keeps_the_hash_unrolled_after_optimisation():
    ex = pj.demos.sir.make_executive()
    state = ex.init(jax.random.key(0))
    assert _hash_loops(_fixed_steps_run(ex, state)) > 0  # the marker finds JAX's loops...
    with _jit.unrolled_threefry():
        text = _fixed_steps_run(ex, state)
    assert _hash_loops(text) == 0 and _hash_branches(text) == 0  # ...and none are left


def _sweep_program(ex, n: int, gate):
    """The sweep's compiled block program for ``n`` scenarios (as ``pj.sweep`` runs it)."""
    from procela_jax import _sweep

    keys = jax.random.key_data(jax.random.split(jax.random.key(0), n))
    start = _sweep._Start(key_data=keys, init={}, impl=str(jax.random.key_impl(jax.random.key(0))))
    rows = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    save = pj.Save(every=7)
    plan = pj.choose_plan(ex, batch=n, backend="cpu")
    block = lambda e, s, g: _sweep._run_block_jit(e, {}, {}, s, 21, save, rows, g, plan)  # noqa: E731
    return eqx.filter_jit(block).lower(ex, start, gate).compile().compiled.as_text()


@needs_hooks
def test_the_sweep_program_keeps_the_hash_conditional_after_optimisation():
    ex = pj.demos.sir.make_executive()
    gate = jnp.asarray(True)
    plain = _sweep_program(ex, 64, gate)
    assert _hash_loops(plain) > 0 and _hash_branches(plain) == 0
    with _jit.batched_threefry():
        text = _sweep_program(ex, 64, gate)
    # every hash is a conditional over the whole batch, none was folded away or rolled
    assert _hash_branches(text) > 0 and _hash_loops(text) == 0
    assert re.search(r"u32\[64[,\]]", text)


@needs_hooks
def test_a_failing_lowering_falls_back_to_jax_with_one_warning(monkeypatch):
    def broken(ctx):
        return ctx.module_context.no_such_field  # as if JAX renamed it

    monkeypatch.setattr(_jit, "_one_device", broken)
    monkeypatch.setattr(_jit, "_lowering_failed", set())
    keys = jax.random.split(jax.random.key(4), 16)
    draw = jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, 9), (3,)))
    with pytest.warns(RuntimeWarning, match="batched lowering of threefry failed") as record:
        with _jit.batched_threefry():
            compiled = jax.jit(lambda k: draw(k) * 1).lower(keys).compile()
            jax.jit(lambda k: draw(k) * 2).lower(keys).compile()  # warned once only
    assert len([w for w in record if "threefry" in str(w.message)]) == 1
    assert _hash_loops(compiled.as_text()) > 0  # JAX's own rule
    np.testing.assert_array_equal(np.asarray(compiled(keys)), np.asarray(draw(keys)))
