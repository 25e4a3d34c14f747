"""Soft policies: zero-temperature limits equal the hard policies, NaN safety on
masked slots, permutation invariance, gradients against independent formulas,
and a choice of theory learned through a soft policy."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, strategies as st

import procela_jax as pj
from procela_jax.demos.growth import Exponential, Logistic

PAIRS = [
    (pj.SoftHighestConfidencePolicy, pj.HighestConfidencePolicy),
    (pj.SoftMedianPolicy, pj.MedianPolicy),
    (pj.SoftMajorityVotingPolicy, pj.MajorityVotingPolicy),
]


W = 6  # every generated example has W slots (so one compilation serves them all); the mask varies


@functools.partial(jax.jit, static_argnums=0)
def _resolve_jit(policy, v, c, w, m):
    return policy.resolve(v, c, w, m)


def _resolve(policy, v, c, w, m):
    out = _resolve_jit(policy, jnp.asarray(v, jnp.float32), jnp.asarray(c, jnp.float32),
                       jnp.asarray(w, jnp.float32), jnp.asarray(m, bool))
    return tuple(np.asarray(o) for o in out)


LEVELS = [round(0.1 * i, 1) for i in range(11)]


@st.composite
def slots(draw, values=None, distinct_confidences=False, first_valid=True):
    if values is None:
        v = draw(st.lists(st.floats(-50, 50, width=32), min_size=W, max_size=W))
    else:
        v = draw(values)
    if distinct_confidences:
        c = draw(st.permutations(LEVELS))[:W]
    else:
        c = draw(st.lists(st.floats(0, 1, width=32), min_size=W, max_size=W))
    w = draw(st.lists(st.sampled_from([0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]), min_size=W, max_size=W))
    m = draw(st.lists(st.booleans(), min_size=W, max_size=W))
    m[0] = m[0] or first_valid
    return np.array(v, np.float32), np.array(c, np.float32), np.array(w, np.float32), np.array(m)


# ---------------------------------------------------------------- limits
@pytest.mark.parametrize("soft, hard", PAIRS)
@given(data=slots(values=st.lists(st.sampled_from([0.0, 1.0, 2.5, -3.0]), min_size=W, max_size=W),
                  first_valid=False))
def test_zero_temperature_is_the_hard_policy(soft, hard, data):
    got = _resolve(soft(temperature=0.0), *data)
    want = _resolve(hard(), *data)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)


@given(data=slots(distinct_confidences=True))
def test_soft_highest_confidence_tends_to_the_hard_one(data):
    # confidences at least 0.1 apart: at T = 1e-3 the runner-up weighs e^-100
    hard_v, hard_c, _ = _resolve(pj.HighestConfidencePolicy(), *data)
    soft_v, soft_c, _ = _resolve(pj.SoftHighestConfidencePolicy(temperature=1e-3), *data)
    np.testing.assert_allclose(soft_v, hard_v, rtol=1e-6, atol=1e-5)
    np.testing.assert_allclose(soft_c, hard_c, rtol=1e-6, atol=1e-7)


def test_soft_highest_confidence_error_shrinks_with_temperature():
    v, c = np.array([1.0, 5.0, 2.0]), np.array([0.5, 0.8, 0.6])
    hard = _resolve(pj.HighestConfidencePolicy(), v, c, np.ones(3), np.ones(3, bool))[0]
    errors = [abs(_resolve(pj.SoftHighestConfidencePolicy(temperature=t), v, c, np.ones(3), np.ones(3, bool))[0] - hard)
              for t in (1.0, 0.3, 0.1, 0.03, 0.01)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0.5 and errors[-1] < 1e-6


@given(data=slots(values=st.permutations(list(range(-20, 21))).map(lambda p: [float(x) for x in p[:W]])))
def test_soft_median_tends_to_the_hard_one(data):
    # distinct values at least 1 apart, odd and even counts; T = 0.03
    hard = _resolve(pj.MedianPolicy(), *data)
    soft = _resolve(pj.SoftMedianPolicy(temperature=0.03), *data)
    np.testing.assert_allclose(soft[0], hard[0], atol=1e-4)
    np.testing.assert_allclose(soft[1], hard[1], rtol=1e-6)


@given(data=slots(values=st.lists(st.sampled_from([0.0, 1.0, 2.0]), min_size=W, max_size=W)))
def test_soft_majority_tends_to_the_hard_one(data):
    v, c, w, m = data
    votes = {x: w[m & (v == x)].sum() for x in set(v[m].tolist())}
    top = sorted(votes.values(), reverse=True)
    if len(top) > 1 and top[0] - top[1] < 0.2:
        return  # (nearly) tied votes: the hard policy takes the first, the soft one shares
    hard = _resolve(pj.MajorityVotingPolicy(), *data)
    soft = _resolve(pj.SoftMajorityVotingPolicy(temperature=2e-3), *data)  # a vote gap of 0.2 weighs e^-100
    np.testing.assert_allclose(soft[0], hard[0], atol=1e-5)
    np.testing.assert_allclose(soft[1], hard[1], atol=1e-5)


# ---------------------------------------------------------------- laws
SOFT = [pj.SoftHighestConfidencePolicy(0.2), pj.SoftMedianPolicy(0.7), pj.SoftMajorityVotingPolicy(0.5)]


@pytest.mark.parametrize("policy", SOFT, ids=lambda p: p.name)
@given(data=slots(values=st.lists(st.sampled_from([0.0, 1.0, 2.5, -3.0, 7.0]), min_size=W, max_size=W)),
       seed=st.integers(0, 100))
def test_permutation_invariant(policy, data, seed):
    v, c, w, m = data
    perm = np.random.default_rng(seed).permutation(len(v))
    a = _resolve(policy, v, c, w, m)
    b = _resolve(policy, v[perm], c[perm], w[perm], m[perm])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(a[1], b[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("policy", SOFT, ids=lambda p: p.name)
def test_masked_slots_are_ignored_and_nan_safe(policy):
    v = np.array([[1.0, np.nan, 4.0, np.inf], [np.nan, np.nan, np.nan, np.nan]], np.float32)
    c = np.array([[0.3, np.nan, 0.9, 0.5], [np.nan, 0.2, 0.1, np.inf]], np.float32)
    w = np.array([[1.0, np.nan, 2.0, 1.0], [np.nan, 1.0, 1.0, 1.0]], np.float32)
    m = np.array([[True, False, True, False], [False, False, False, False]])
    val, conf, _ = _resolve(policy, v, c, w, m)
    assert np.all(np.isfinite(val)) and np.all(np.isfinite(conf))
    only = _resolve(policy, v[:1, [0, 2]], c[:1, [0, 2]], w[:1, [0, 2]], m[:1, [0, 2]])
    np.testing.assert_allclose(val[0], only[0][0], rtol=1e-6)
    np.testing.assert_allclose(conf[0], only[1][0], rtol=1e-6)

    def total(v, c, w):
        out = policy.resolve(v, c, w, jnp.asarray(m))
        return jnp.sum(out[0]) + jnp.sum(out[1])

    grads = jax.jit(jax.grad(total, argnums=(0, 1, 2)))(jnp.asarray(v), jnp.asarray(c), jnp.asarray(w))
    for g in grads:
        g = np.asarray(g)
        assert np.all(np.isfinite(g))
        assert np.all(g[~m] == 0)


def test_rows_of_a_batch_are_independent():
    """Leading axes batch several variables: a row's result does not depend on the
    other rows (replaced here by garbage, NaN included)."""
    rng = np.random.default_rng(0)
    v = rng.normal(size=(4, 5)).astype(np.float32)
    c = rng.uniform(size=(4, 5)).astype(np.float32)
    w = rng.uniform(0.5, 2, size=(4, 5)).astype(np.float32)
    m = rng.uniform(size=(4, 5)) > 0.3
    for policy in SOFT:
        batch = _resolve(policy, v, c, w, m)
        for i in range(4):
            junk = [np.where(np.arange(4)[:, None] == i, a, b) for a, b in
                    ((v, np.full_like(v, np.nan)), (c, rng.uniform(size=c.shape).astype(np.float32)),
                     (w, np.ones_like(w)), (m, ~m))]
            row = _resolve(policy, *junk)
            np.testing.assert_allclose(row[0][i], batch[0][i], rtol=1e-6, atol=1e-6)
            np.testing.assert_allclose(row[1][i], batch[1][i], rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- values and gradients vs formulas
def test_soft_highest_confidence_matches_the_softmax_formula():
    v = np.array([1.0, 5.0, 2.0, 9.0])
    c = np.array([0.5, 0.8, 0.6, 0.1])
    m = np.array([True, True, True, False])
    T = 0.2
    e = np.exp(c[m] / T)
    p = e / e.sum()
    value = (p * v[m]).sum()
    pol = pj.SoftHighestConfidencePolicy(temperature=T)
    got = float(pol.resolve(jnp.asarray(v, jnp.float32), jnp.asarray(c, jnp.float32), jnp.ones(4), jnp.asarray(m))[0])
    np.testing.assert_allclose(got, value, rtol=1e-6)
    g = jax.jit(jax.grad(lambda cc: pol.resolve(jnp.asarray(v, jnp.float32), cc, jnp.ones(4), jnp.asarray(m))[0]))(
        jnp.asarray(c, jnp.float32))
    want = np.zeros(4)
    want[m] = p * (v[m] - value) / T
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n", [3, 4, 5])
def test_soft_median_is_the_root_of_the_smoothed_cdf(n):
    rng = np.random.default_rng(n)
    v = rng.normal(size=n) * 3
    T = 0.8
    pol = pj.SoftMedianPolicy(temperature=T)
    m = jnp.ones(n, bool)
    f = lambda vv: pol.resolve(vv, jnp.full(n, 0.5, jnp.float32), jnp.ones(n), m)[0]
    root = float(jax.jit(f)(jnp.asarray(v, jnp.float32)))
    sig = lambda x: 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(sig((root - v) / T).sum(), n / 2, atol=1e-5)
    # implicit gradient: dm/dv_i = s'_i / sum_j s'_j
    s = sig((root - v) / T)
    slope = s * (1 - s)
    np.testing.assert_allclose(np.asarray(jax.jit(jax.grad(f))(jnp.asarray(v, jnp.float32))), slope / slope.sum(),
                               rtol=1e-4, atol=1e-6)


def test_soft_majority_matches_an_independent_implementation():
    v = np.array([2.0, 1.0, 2.0, 0.0, 1.0])
    c = np.array([0.3, 0.9, 0.5, 0.7, 0.6])
    w = np.array([1.0, 0.7, 0.6, 1.3, 1.1])
    T = 0.4

    def ref(w):
        votes = np.array([w[v == x].sum() for x in v])
        supp = np.array([c[v == x].mean() for x in v])
        p = np.exp((votes - votes.max()) / T)
        p /= p.sum()
        return (p * v).sum(), (p * supp).sum()

    pol = pj.SoftMajorityVotingPolicy(temperature=T)
    f = lambda ww, i: pol.resolve(jnp.asarray(v, jnp.float32), jnp.asarray(c, jnp.float32), ww,
                                  jnp.ones(5, bool))[i]
    for i in (0, 1):
        np.testing.assert_allclose(float(jax.jit(f, static_argnums=1)(jnp.asarray(w, jnp.float32), i)), ref(w)[i],
                                   rtol=1e-5)
        g = np.asarray(jax.jit(jax.grad(f), static_argnums=1)(jnp.asarray(w, jnp.float32), i))
        h = 1e-6
        fd = np.array([(ref(w + h * e)[i] - ref(w - h * e)[i]) / (2 * h) for e in np.eye(5)])
        np.testing.assert_allclose(g, fd, rtol=1e-3, atol=1e-5)


def test_temperature_is_validated_and_part_of_the_identity():
    for bad in (-0.1, float("nan"), float("inf"), "hot"):
        with pytest.raises(ValueError, match="temperature"):
            pj.SoftHighestConfidencePolicy(temperature=bad)
    assert pj.SoftMedianPolicy(0.5) == pj.SoftMedianPolicy(0.5)
    assert pj.SoftMedianPolicy(0.5) != pj.SoftMedianPolicy(0.25)
    assert hash(pj.SoftMedianPolicy(0.5)) == hash(pj.SoftMedianPolicy(0.5))
    assert pj.SoftMajorityVotingPolicy().name == "SoftMajorityVotingPolicy"


# ---------------------------------------------------------------- inside an executive
def _growth(policy, alternatives=(), c_log=0.5, c_exp=0.6):
    X = pj.Variable("X", pj.RangeDomain(0.0, None), policy=policy, alternatives=alternatives, init=5.0)
    return pj.Executive(
        variables=[X],
        mechanisms=[
            Logistic(r=0.3, K=50.0, confidence=c_log, reads=[X], writes=[X], name="logistic"),
            Exponential(r=0.1, confidence=c_exp, reads=[X], writes=[X], name="exp"),
        ],
    )


def test_executive_limit_and_policy_switch():
    key = jax.random.key(0)
    hard = _growth(pj.HighestConfidencePolicy())
    cold = _growth(pj.SoftHighestConfidencePolicy(temperature=1e-3), alternatives=(pj.HighestConfidencePolicy(),))
    x_hard = np.asarray(hard.run(hard.init(key), steps=25)[1].value("X"))
    x_cold = np.asarray(cold.run(cold.init(key), steps=25)[1].value("X"))
    np.testing.assert_allclose(x_cold, x_hard, rtol=1e-6)
    # equal confidences: the soft policy blends where the hard one takes the first theory
    blend = cold.replace({"logistic.confidence": 0.6})
    x_blend = np.asarray(blend.run(blend.init(key), steps=25)[1].value("X"))
    assert np.abs(x_blend - x_hard).max() > 1.0
    # switching to the hard alternative at run time
    switched = cold.init(key).set_policy("X", pj.HighestConfidencePolicy)
    x_sw = np.asarray(cold.run(switched, steps=25)[1].value("X"))
    np.testing.assert_allclose(x_sw, x_hard, rtol=1e-6)


def test_the_choice_of_theory_is_learned_through_a_soft_policy():
    """Data come from the logistic theory alone; the model starts trusting the
    exponential theory more. Through the soft policy the fit raises the logistic
    theory's confidence above the other's (through the hard one the gradient is
    exactly zero: tests/test_gradients.py)."""
    truth = _growth(pj.HighestConfidencePolicy(), c_log=0.9, c_exp=0.1)
    _, traj = truth.run(truth.init(jax.random.key(0)), steps=30)
    t = np.arange(0, 30, 2)
    data = {"X": (t, np.asarray(traj.value("X"))[t])}
    params = ["logistic.confidence", "exp.confidence"]
    bounds = {p: (0.0, 1.0) for p in params}
    opt = optax.adam(0.1)
    soft = _growth(pj.SoftHighestConfidencePolicy(temperature=0.05))
    fitted, hist = pj.calibrate(soft, data, params, bounds=bounds, optimizer=opt, iterations=80, progress=False)
    assert float(fitted.get("logistic.confidence")) > float(fitted.get("exp.confidence")) + 0.2
    assert hist.best_loss < 1e-3 * hist.loss[0]
