"""Layout hints (fences, materialised buffers) change how a step is laid out, never what it computes."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import procela_jax as pj
from conftest import host_leaves
from procela_jax._hints import fence, materialize
from procela_jax._step import run_impl
from test_plan import Spread as Noisy  # a random walk that now and then proposes NaN


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        st.sampled_from([np.float32, np.float16, np.int32, np.int8, np.bool_]),
        hnp.array_shapes(min_dims=0, max_dims=3, max_side=4),
        elements=None,
    )
)
def test_materialize_returns_every_bit(x):
    # every bit pattern comes back: inf, -0.0, subnormals, NaN payloads
    y = x[::-1] if x.ndim else x  # a second array of the same dtype and shape
    out = np.asarray(jax.jit(materialize)(x))
    together = [np.asarray(a) for a in jax.jit(lambda a, b: materialize(a, b))(x, y)]  # one shared buffer
    for got, want in ((out, x), (together[0], x), (together[1], y)):
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.dtype.kind == "f":
            bits = np.dtype(f"int{8 * want.dtype.itemsize}")
            np.testing.assert_array_equal(got.view(bits), want.view(bits))
        else:
            np.testing.assert_array_equal(got, want)


def _world():
    policies = dict(policy=pj.WeightedVotingPolicy(), alternatives=(pj.HighestConfidencePolicy(),))
    X = pj.Variable("X", pj.RangeDomain(-3.0, 3.0), init=0.5, memory=3, out_of_domain="clip", **policies)
    Y = pj.Variable("Y", init=-1.0, memory=5, **policies)
    Z = pj.Variable("Z", init=2.0, memory=16)
    W = pj.Variable("W", init=7.0, memory=4)  # nobody writes it: it never commits in a step

    def post_step(state, t):
        # an external observation on some scenarios only: ring positions drift apart
        when = (state.value("X") > 0) & (t % 3 == 0)
        state = state.set("Z", state.value("Z") * 0.5, confidence=0.7, when=when)
        return state.set_policy("Y", pj.HighestConfidencePolicy, when=t == 10)

    return pj.Executive(
        variables=[X, Y, Z, W],
        mechanisms=[
            Noisy(reads=[X, Y, Z], writes=[X, Y, Z], name="a"),
            Noisy(reads=[X, Y], writes=[X, Y], name="b", scale=0.5),
        ],
        post_step=post_step,
    )


def test_a_batched_trace_computes_the_same_bits():
    ex = _world()
    save = pj.Save(fields=("value", "confidence"))
    states = jax.vmap(ex.init)(jax.vmap(jax.random.key)(jnp.arange(8)))

    single = pj.choose_plan(ex).replace(block_rows=False, hash="default")
    batched = pj.choose_plan(ex, batch=8).replace(hash="default")
    assert batched.materialize and batched.fence and batched.resolution == "by_variable"

    def run(plan, gate):
        @eqx.filter_jit
        def f(ex, s, gate):
            return jax.vmap(lambda s: run_impl(ex, s, 24, save, False, plan, gate))(s)

        return f(ex, states, gate)

    plain = run(single, None)
    for plan, gate in ((batched.replace(fence=False), None), (batched, jnp.asarray(True))):
        hinted = run(plan, gate)
        # the runs wrapped every ring buffer and wrote them at different positions
        written = np.asarray(hinted[0].memory.written)
        assert (written[:, :3] > 16).all() and len(set(written[:, 2])) > 1 and (written[:, 3] == 1).all()
        a, b = host_leaves(plain), host_leaves(hinted)
        assert len(a) == len(b)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_a_fence_is_a_conditional_on_the_gate():
    """A fence is the taken branch of a conditional on the gate (nothing fuses across it)."""

    def f(x, gate):
        return jax.vmap(lambda r: fence(gate, lambda a: (a * 2.0, a > 1.0), r))(x)

    x = jnp.arange(6.0).reshape(3, 2)
    assert "cond" in str(jax.make_jaxpr(f)(x, jnp.asarray(True)))
    doubled, big = jax.jit(f)(x, jnp.asarray(True))
    np.testing.assert_array_equal(doubled, 2 * np.arange(6.0).reshape(3, 2))
    np.testing.assert_array_equal(big, np.arange(6.0).reshape(3, 2) > 1)
