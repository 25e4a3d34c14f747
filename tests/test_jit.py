"""The engine's jit entry points: threefry lowered unrolled changes speed, never bits."""

import contextlib

import equinox as eqx
import jax
import numpy as np
import pytest

import procela_jax as pj
from conftest import host_leaves
from procela_jax import _jit


def _hlo(fn, *args):
    return jax.jit(fn).lower(*args).as_text()


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the rolled lowering is the CPU's")
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
    # ...with the same numbers, and those of Executive.run (which lowers unrolled)
    expected = host_leaves(rolled.compile()(ex, state))
    for got in (host_leaves(unrolled.compile()(ex, state)), host_leaves(ex.run(state, 50))):
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


def test_only_concrete_calls_lower_unrolled():
    # under vmap the rolled loops are faster for many rows: a transformed call keeps
    # JAX's default; a call on concrete values (one scenario) gets the unrolled hash
    from procela_jax._executive import _lowering

    ex = pj.demos.sir.make_executive()
    state = ex.init(jax.random.key(0))
    assert not isinstance(_lowering(ex, state), contextlib.nullcontext)
    default = []

    def under_vmap(s):
        default.append(isinstance(_lowering(ex, s), contextlib.nullcontext))
        return s.values

    def under_grad(beta):
        default.append(isinstance(_lowering(ex.replace({"sir.beta": beta}), state), contextlib.nullcontext))
        return beta

    jax.vmap(under_vmap)(jax.vmap(ex.init)(jax.random.split(jax.random.key(0), 3)))
    jax.grad(under_grad)(0.3)
    assert default == [True, True]
