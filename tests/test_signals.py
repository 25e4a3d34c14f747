"""Epistemic signals: hand computations, plain NumPy loops, the original's policies,
laws (hypothesis), vmap/jit/grad, and use inside governance."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import quiet_logger

import procela_jax as pj

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
W = 6  # hypothesis slots in the property tests (fixed, so each signal compiles once)


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


class Const(pj.Mechanism):
    """Proposes a fixed value, confidence and weight."""

    value: float
    conf: float = 0.5
    weight: float = 1.0

    def transform(self, values, key):
        return {self.writes[0]: pj.VariableRecord(jnp.asarray(self.value), confidence=self.conf, weight=self.weight)}


class Table(pj.Mechanism):
    """Proposes ``values[step]`` with ``confs[step]`` (a scripted theory)."""

    values: jax.Array
    confs: jax.Array

    def transform(self, view, key):
        t = jnp.minimum(view.step, self.values.shape[0] - 1)
        return {self.writes[0]: pj.VariableRecord(self.values[t], confidence=self.confs[t])}


# ---- plain NumPy references ------------------------------------------------------------
def np_weighted_std(v, w, m):
    v, w, m = np.asarray(v, float), np.asarray(w, float), np.asarray(m, bool)
    if not m.any():
        return 0.0
    v, w = v[m], w[m]
    if w.sum() <= 0:
        w = np.ones_like(v)
    mu = (w * v).sum() / w.sum()
    return float(math.sqrt((w * (v - mu) ** 2).sum() / w.sum()))


def np_entropy(w, m):
    w, m = np.asarray(w, float), np.asarray(m, bool)
    if not m.any():
        return 0.0
    w = w[m]
    if w.sum() <= 0:
        w = np.ones_like(w)
    p = w / w.sum()
    return float(-sum(pi * math.log(pi) for pi in p if pi > 0))


rows = st.tuples(
    st.lists(st.floats(-100, 100, allow_nan=False), min_size=W, max_size=W),
    st.lists(st.floats(0, 1), min_size=W, max_size=W),
    st.lists(st.floats(0, 5), min_size=W, max_size=W),
    st.lists(st.booleans(), min_size=W, max_size=W),
)

conflict_j = jax.jit(pj.conflict, static_argnames=("kind", "weight_by"))
entropy_j = jax.jit(pj.entropy, static_argnames=("weight_by", "normalize"))
confidence_j = jax.jit(pj.confidence)


# ---- conflict ---------------------------------------------------------------------------
def test_conflict_by_hand():
    # weights 1 and 3 on values 1 and 3: mean 2.5, variance (1.5² + 3·0.5²)/4 = 0.75
    got = pj.conflict(jnp.array([1.0, 3.0]), weights=jnp.array([1.0, 3.0]))
    assert float(got) == pytest.approx(math.sqrt(0.75), rel=1e-6)
    assert float(pj.conflict(jnp.array([1.0, 3.0, 8.0]), kind="range")) == 7.0


@SETTINGS
@given(rows)
def test_conflict_matches_numpy(row):
    v, c, w, m = row
    with jax.enable_x64(True):
        got = conflict_j(jnp.asarray(v), mask=jnp.asarray(m), weights=jnp.asarray(w))
        assert float(got) == pytest.approx(np_weighted_std(v, w, m), rel=1e-9, abs=1e-9)
        rng = conflict_j(jnp.asarray(v), mask=jnp.asarray(m), kind="range")
        vm = [x for x, k in zip(v, m) if k]
        assert float(rng) == pytest.approx(max(vm) - min(vm) if vm else 0.0, abs=1e-12)


@SETTINGS
@given(st.floats(-1e3, 1e3, allow_nan=False), st.lists(st.booleans(), min_size=W, max_size=W),
       st.lists(st.floats(0.01, 5), min_size=W, max_size=W))
def test_conflict_is_zero_for_identical_hypotheses(x, m, w):
    with jax.enable_x64(True):
        v = jnp.full((W,), x).at[0].set(x + 50.0)  # slot 0 differs, and is masked out
        m = jnp.asarray(m).at[0].set(False)
        got = conflict_j(v, mask=m, weights=jnp.asarray(w))
        assert float(got) == pytest.approx(0.0, abs=1e-12 * max(1.0, abs(x)))
        assert float(conflict_j(v, mask=m, kind="range")) == 0.0


@SETTINGS
@given(rows, st.randoms(use_true_random=False))
def test_signals_are_permutation_invariant(row, rnd):
    v, c, w, m = (np.asarray(a, float) for a in row)
    perm = list(range(len(v)))
    rnd.shuffle(perm)
    h = dict(values=v, confidences=c, weights=w, mask=m.astype(bool))
    hp = {k: a[perm] for k, a in h.items()}
    a, b = _all_signals(*h.values()), _all_signals(*hp.values())
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-3)


# ---- entropy, confidence ----------------------------------------------------------------
@SETTINGS
@given(st.integers(1, W), st.floats(0.01, 10), rows)
def test_entropy_is_maximal_for_equal_weights(n, w, row):
    mask = jnp.arange(W) < n
    h = entropy_j(jnp.full((W,), w), mask=mask)
    assert float(h) == pytest.approx(math.log(n), abs=1e-5)
    assert float(entropy_j(jnp.full((W,), w), mask=mask, normalize=True)) == pytest.approx(1.0 if n > 1 else 0.0, abs=1e-5)
    # and any other weights on the same hypotheses give no more
    other = entropy_j(jnp.asarray(row[2]), mask=mask)
    assert float(other) <= float(h) + 1e-5


@SETTINGS
@given(rows)
def test_entropy_matches_numpy_and_is_bounded(row):
    v, c, w, m = row
    with jax.enable_x64(True):
        got = float(entropy_j(jnp.asarray(w), mask=jnp.asarray(m)))
        assert got == pytest.approx(np_entropy(w, m), rel=1e-9, abs=1e-12)
        assert -1e-12 <= got <= math.log(max(sum(m), 1)) + 1e-9
        # weighted by confidence through the mapping form
        h = dict(values=jnp.asarray(v), confidences=jnp.asarray(c), weights=jnp.asarray(w), mask=jnp.asarray(m))
        assert float(entropy_j(h, weight_by="confidence")) == pytest.approx(np_entropy(c, m), rel=1e-9, abs=1e-12)
        assert float(confidence_j(h)) == pytest.approx(float(np.mean(np.asarray(c)[np.asarray(m)])) if any(m) else 0.0,
                                                      rel=1e-9, abs=1e-12)


def test_confidence_by_hand():
    c = jnp.array([0.2, 0.6, 0.9])
    assert float(pj.confidence(c, mask=jnp.array([True, True, False]))) == pytest.approx(0.4)
    assert float(pj.confidence(c, mask=jnp.zeros(3, bool))) == 0.0


# ---- fragility against the original's policies ------------------------------------------
@jax.jit
def _fragility3(v, c, w, m):
    pol = [pj.WeightedVotingPolicy(), pj.HighestConfidencePolicy(), pj.WeightedConfidencePolicy()]
    kw = dict(confidences=c, weights=w, mask=m, policies=pol)
    return pj.fragility(v, **kw), pj.fragility(v, kind="std", **kw)


@SETTINGS
@given(rows)
def test_fragility_matches_the_original_policies(row):
    from procela import (
        HighestConfidencePolicy as OHC,
        HypothesisRecord,
        VariableRecord,
        WeightedConfidencePolicy as OWC,
        WeightedVotingPolicy as OWV,
    )

    v, c, w, m = row
    kept = [i for i in range(len(v)) if m[i]]
    with jax.enable_x64(True):
        got, got_std = _fragility3(*(jnp.asarray(a) for a in row))
    if not kept:
        assert float(got) == 0.0 and float(got_std) == 0.0
        return
    hyps = [HypothesisRecord(VariableRecord(float(v[i]), confidence=float(c[i]), metadata={"weight": float(w[i])})) for i in kept]
    resolved = [p.resolve(hyps).value for p in (OWV(), OHC(), OWC())]
    assert float(got) == pytest.approx(max(resolved) - min(resolved), rel=1e-9, abs=1e-9)
    assert float(got_std) == pytest.approx(float(np.std(resolved)), rel=1e-9, abs=1e-9)


def test_fragility_needs_policies():
    with pytest.raises(TypeError, match="candidate policies"):
        pj.fragility(jnp.ones(2))
    X = pj.Variable("X", policy=pj.WeightedVotingPolicy(), alternatives=[pj.HighestConfidencePolicy()])
    ex = pj.Executive(variables=[X], audit=True, mechanisms=[
        Const(value=10.0, conf=0.2, writes=[X], name="a"), Const(value=20.0, conf=0.8, writes=[X], name="b")])
    s = ex.step(ex.init(jax.random.key(0)))
    # the Variable itself carries its candidates: mean 15 vs most confident 20
    assert float(pj.fragility(s, X)) == 5.0
    assert float(pj.fragility(s, "X", policies=ex.variable("X").policies)) == 5.0


# ---- coverage and its running average -------------------------------------------------
def test_coverage_by_hand_and_from_a_view():
    assert float(pj.coverage(2.0, 7.0, sigma=5.0)) == pytest.approx(math.exp(-1.0), rel=1e-6)
    ex = pj.Executive(variables=[pj.Variable("P", init=1.0), pj.Variable("R", init=4.0)])
    view = pj.View(ex.init(jax.random.key(0)))
    assert float(pj.coverage(view, "P", "R", sigma=2.0)) == pytest.approx(math.exp(-1.5), rel=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        pj.coverage(1.0, 2.0, sigma=0.0)
    with pytest.raises(TypeError):
        pj.coverage(view, "P")


def test_ewma_update_matches_the_original_statistics(x64):
    from procela import MemoryStatistics, VariableRecord

    xs = [3.0, -1.5, 4.25, 10.0, 0.125, 7.0]
    ours, theirs = jnp.asarray(jnp.nan), MemoryStatistics()
    for x in xs:
        ours = pj.ewma_update(ours, x, 0.2)
        theirs = theirs.update(VariableRecord(x, confidence=1.0), alpha=0.2)
        assert float(ours) == theirs.ewma


def test_smoothed_coverage_in_a_hook_matches_a_python_loop():
    sigma, alpha = 2.0, 0.2
    P = pj.Variable("P", init=0.0)
    R = pj.Variable("R", init=0.0)
    truth = jnp.asarray([1.0, 2.0, 4.0, 3.0, 5.0, 9.0])
    guess = jnp.asarray([1.5, 1.0, 4.0, 6.0, 5.5, 7.0])

    def post(state, step):
        cov = pj.smoothed_coverage(state.aux["cov"], state.value("P"), state.value("R"), sigma=sigma, alpha=alpha)
        return state.with_aux({"cov": cov})

    ex = pj.Executive(
        variables=[P, R],
        mechanisms=[Table(values=guess, confs=jnp.ones(6), writes=[P], name="p"),
                    Table(values=truth, confs=jnp.ones(6), writes=[R], name="r")],
        post_step=post,
        aux={"cov": jnp.nan},
    )
    _, traj = ex.run(ex.init(jax.random.key(0)), 6, save=pj.Save(fn=lambda s: s.aux["cov"]))
    expect, prev = [], None
    for g, t in zip(np.asarray(guess), np.asarray(truth)):
        c = math.exp(-abs(g - t) / sigma)
        prev = c if prev is None else alpha * c + (1 - alpha) * prev
        expect.append(prev)
    np.testing.assert_allclose(np.asarray(traj.extra), expect, rtol=1e-5)


# ---- NaN safety, vmap, grad ---------------------------------------------------------------
@jax.jit
def _all_signals(v, c, w, m):
    h = dict(values=v, confidences=c, weights=w, mask=m)
    pol = [pj.WeightedVotingPolicy(), pj.HighestConfidencePolicy(), pj.MedianPolicy()]
    return jnp.stack([
        pj.conflict(h), pj.conflict(h, kind="range"), pj.entropy(h), pj.entropy(h, normalize=True),
        pj.confidence(h), pj.fragility(h, policies=pol), pj.fragility(h, policies=pol, kind="std"),
    ])


def test_fully_masked_rows_give_zero_and_finite_gradients():
    v = jnp.array([jnp.nan, jnp.inf, 3.0])
    c = jnp.array([jnp.nan, 0.5, 2.0])
    w = jnp.array([jnp.inf, 1.0, -1.0])
    m = jnp.zeros(3, bool)
    np.testing.assert_array_equal(np.asarray(_all_signals(v, c, w, m)), 0.0)
    grads = jax.jit(jax.grad(lambda v, c, w: jnp.sum(_all_signals(v, c, w, m)), argnums=(0, 1, 2)))(v, c, w)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g)))
    # a NaN in a masked slot never leaks into the valid ones, nor into gradients
    m2 = jnp.array([False, False, True])
    out = _all_signals(v, c, jnp.array([jnp.inf, 1.0, 1.0]), m2)
    assert np.all(np.isfinite(np.asarray(out)))
    grads = jax.jit(jax.grad(lambda v: jnp.sum(_all_signals(v, c, jnp.ones(3), m2))))(v)
    assert np.all(np.isfinite(np.asarray(grads)))


def test_gradients_match_finite_differences(x64):
    v = jnp.array([1.0, 2.5, 4.0, -1.0])
    c = jnp.array([0.3, 0.9, 0.5, 0.7])
    w = jnp.array([1.0, 2.0, 0.5, 1.5])
    m = jnp.array([True, True, True, False])
    pol = [pj.WeightedVotingPolicy(), pj.WeightedConfidencePolicy()]
    fns = {
        "conflict": lambda v, w: pj.conflict(v, mask=m, weights=w),
        "entropy": lambda v, w: pj.entropy(w, mask=m),
        "fragility": lambda v, w: pj.fragility(v, confidences=c, weights=w, mask=m, policies=pol, kind="std"),
        "coverage": lambda v, w: jnp.sum(pj.coverage(v, 2.0 * w, sigma=1.5)),
    }
    eps = 1e-6
    for name, f in fns.items():
        f = jax.jit(f)
        gv, gw = jax.jit(jax.grad(f, argnums=(0, 1)))(v, w)
        for arg, g in ((0, gv), (1, gw)):
            for i in range(4):
                e = jnp.zeros(4).at[i].set(eps)
                args_p = [v, w]
                args_m = [v, w]
                args_p[arg] = args_p[arg] + e
                args_m[arg] = args_m[arg] - e
                fd = (f(*args_p) - f(*args_m)) / (2 * eps)
                assert float(g[i]) == pytest.approx(float(fd), rel=1e-5, abs=1e-7), (name, arg, i)


def test_vmap_and_jit_equal_a_loop():
    key = jax.random.key(3)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    v = jax.random.normal(k1, (7, 5)) * 10
    c = jax.random.uniform(k2, (7, 5))
    w = jax.random.uniform(k3, (7, 5)) * 3
    m = jax.random.bernoulli(k4, 0.6, (7, 5))
    batched = jax.jit(jax.vmap(_all_signals))(v, c, w, m)
    looped = jnp.stack([_all_signals(v[i], c[i], w[i], m[i]) for i in range(7)])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(looped), rtol=1e-5, atol=1e-5)
    # leading axes also batch without vmap
    np.testing.assert_allclose(np.asarray(pj.conflict(v, mask=m, weights=w)), np.asarray(batched[:, 0]), rtol=1e-5, atol=1e-5)


# ---- sources: views, states, trajectories ----------------------------------------------
def _three_theories(audit=True, **kw):
    X = pj.Variable("X", init=0.0, alternatives=[pj.HighestConfidencePolicy()])
    mechs = [
        Const(value=1.0, conf=0.2, weight=1.0, writes=[X], name="a"),
        Const(value=3.0, conf=0.6, weight=3.0, writes=[X], name="b"),
        Const(value=8.0, conf=0.9, weight=0.0, writes=[X], name="c"),
    ]
    return X, pj.Executive(variables=[X], mechanisms=mechs, audit=audit, **kw)


def test_runtime_view_state_audit_and_trajectory_agree():
    def condition(view):
        return pj.conflict(view, "X", weight_by=None) < 100.0

    X, ex = _three_theories(invariants=[pj.SystemInvariant("c", condition, phase=pj.InvariantPhase.RUNTIME)])
    state = ex.init(jax.random.key(0)).disable("c")
    s1, traj = ex.run(state, 3, save=pj.Save(audit=True, fn=lambda s: pj.entropy(s, "X")))
    # disabled "c" is masked: conflict of 1 and 3 with weights 1 and 3, as by hand
    assert float(pj.conflict(s1, "X")) == pytest.approx(math.sqrt(0.75), rel=1e-6)
    assert float(pj.conflict(pj.View(s1), "X", kind="range")) == 2.0
    assert float(pj.confidence(s1, "X")) == pytest.approx(0.4, rel=1e-6)
    h = traj.hypotheses("X")
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    np.testing.assert_allclose(np.asarray(pj.entropy(h)), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(traj.extra), expected, rtol=1e-6)


def test_hypotheses_errors_name_the_problem():
    X, ex = _three_theories(audit=False)
    s = ex.init(jax.random.key(0))
    with pytest.raises(ValueError, match="audit=True"):
        pj.conflict(s, "X")
    with pytest.raises(TypeError, match="name"):
        pj.conflict(s)
    with pytest.raises(KeyError, match="Nope"):
        pj.conflict(_three_theories()[1].init(jax.random.key(0)), "Nope")
    with pytest.raises(KeyError, match="lacks"):
        pj.conflict({"values": jnp.ones(2)})
    with pytest.raises(ValueError, match="kind"):
        pj.conflict(jnp.ones(2), kind="iqr")
    with pytest.raises(ValueError, match="weight_by"):
        pj.entropy({"values": jnp.ones(2), "confidences": jnp.ones(2), "weights": jnp.ones(2), "mask": jnp.ones(2, bool)},
                   weight_by="votes")


def test_signals_per_scenario_under_vmap():
    X, ex = _three_theories()
    confs = jnp.array([0.1, 0.5, 0.9])

    def one(conf):
        e = ex.replace({"a.conf": conf})
        s = e.step(e.init(jax.random.key(0)))
        return pj.confidence(s, "X"), pj.entropy(s, "X", weight_by="confidence")

    got_c, got_h = jax.vmap(one)(confs)
    for i, a in enumerate(np.asarray(confs)):
        assert float(got_c[i]) == pytest.approx((a + 0.6 + 0.9) / 3, rel=1e-5)
        assert float(got_h[i]) == pytest.approx(np_entropy([a, 0.6, 0.9], [True] * 3), rel=1e-5)


# ---- a fragility governance step by step against the original ----------------------------
def test_spread_governance_matches_the_original(x64):
    """The original's beginner example pattern: a RUNTIME invariant watches the spread of
    the pending hypotheses and switches to the most confident theory."""
    import procela as P

    steps, threshold = 25, 0.75
    rates = (0.02, -0.015, 0.0)
    confs = (0.85, 0.75, 0.95)

    T = P.Variable("T", P.RangeDomain(-1e6, 1e6), policy=P.WeightedConfidencePolicy())
    T.init(P.VariableRecord(20.0, confidence=1.0))

    class Rate(P.Mechanism):
        def __init__(self, rate, conf):
            super().__init__(reads=[T], writes=[T])
            self.rate, self.conf = rate, conf

        def transform(self):
            T.add_hypothesis(P.VariableRecord(T.value * (1 + self.rate) + 0.05, confidence=self.conf))

    def spread(_snap):
        vals = [h.record.value for h in T.hypotheses]
        return max(vals) - min(vals) <= threshold

    def switch(_violation, _snap):
        T.policy = P.HighestConfidencePolicy()

    ex = P.Executive(mechanisms=[Rate(r, c) for r, c in zip(rates, confs)], logger=quiet_logger("procela-signals-tests"))
    ex.add_invariant(P.SystemInvariant("spread", spread, switch, phase=P.InvariantPhase.RUNTIME,
                                       severity=P.InvariantSeverity.WARNING, softness=P.InvariantSoftness.SOFT))
    theirs = []
    ex.run(steps, post_step=lambda e, i: theirs.append(T.value))

    class RateJ(pj.Mechanism):
        rate: float
        conf: float

        def transform(self, view, key):
            return {"T": pj.VariableRecord(view["T"] * (1 + self.rate) + 0.05, confidence=self.conf)}

    Tj = pj.Variable("T", policy=pj.WeightedConfidencePolicy(), alternatives=[pj.HighestConfidencePolicy()], init=20.0)
    inv = pj.SystemInvariant(
        "spread", lambda v: pj.conflict(v, "T", kind="range") <= threshold,
        lambda s, v: s.set_policy("T", pj.HighestConfidencePolicy()),
        phase=pj.InvariantPhase.RUNTIME, severity=pj.InvariantSeverity.WARNING)
    exj = pj.Executive(variables=[Tj], mechanisms=[RateJ(rate=r, conf=c, writes=[Tj], reads=[Tj], name=f"m{i}")
                                                   for i, (r, c) in enumerate(zip(rates, confs))], invariants=[inv])
    final, traj = exj.run(exj.init(jax.random.key(0)), steps, save=pj.Save(fields=("value", "policy")))
    np.testing.assert_allclose(np.asarray(traj.value("T")), theirs, rtol=1e-12)
    switched = np.asarray(traj.field("T", "policy"))
    assert 0 < int(np.argmax(switched)) < steps - 1  # the switch happened mid-run, as in the original
    assert int(final.violations("spread")) >= 1
