"""Reasoning operators against the original procela on the same statistics (float64),
hand computations, the documented fixes, and use inside jit/vmap/grad and invariants."""

from __future__ import annotations

import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import procela as P
import procela_jax as pj

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)
L = 16  # longest scripted history in the property tests
H = 3  # prediction horizon


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


# ---- the same history in both libraries ------------------------------------------------
@jax.jit
def _our_stats(xs, numeric, confs, n, alpha):
    """procela_jax Stats after committing the first ``n`` entries (one variable)."""

    def body(s, inp):
        i, x, num, c = inp
        commit = (i < n)[None]
        s = s.update(commit, num[None], x[None], c[None], alpha[None], (1 - alpha)[None])
        return s, None

    s0 = pj.Stats.empty(1, xs.dtype)
    s, _ = jax.lax.scan(body, s0, (jnp.arange(xs.shape[0]), xs, numeric, confs))
    return s[0]


def histories(seq, alpha=0.3):
    """``seq``: list of ``(value or None, confidence)``; returns (ours, theirs)."""
    xs = np.zeros(L)
    num = np.zeros(L, bool)
    cs = np.zeros(L)
    theirs = P.MemoryStatistics()
    for i, (x, c) in enumerate(seq):
        xs[i], num[i], cs[i] = (0.0 if x is None else x), x is not None, c
        theirs = theirs.update(None if x is None else P.VariableRecord(float(x), confidence=float(c)), alpha)
    ours = _our_stats(jnp.asarray(xs), jnp.asarray(num), jnp.asarray(cs), jnp.asarray(len(seq)), jnp.asarray(alpha))
    return ours, theirs.result()


value = st.one_of(st.sampled_from([0.0, 1.0, 2.5, -3.0]), st.floats(-20, 20))
entry = st.tuples(st.one_of(st.none(), value, value, value), st.floats(0, 1))
sequences = st.tuples(
    st.tuples(value, st.floats(0, 1)),  # the first record has a value (the engine's init)
    st.lists(entry, max_size=L - 2),
    st.one_of(st.none(), st.floats(-500, 500)),  # an optional outlier at the end
).map(lambda t: [t[0], *t[1]] + ([] if t[2] is None else [(t[2], 0.5)]))


def close(a, b):
    if b is None:
        return bool(np.isnan(float(a)))
    return float(a) == pytest.approx(b, rel=1e-12, abs=1e-12)


@jax.jit
def _operators(stats):
    trend = pj.TrendOperator(threshold=0.3).analyze(stats)
    rel = pj.TrendOperator(threshold=None, std_factor=1.0).analyze(stats)
    z = pj.ZScoreDetector(3.0).detect(stats)
    e = pj.EWMADetector(1.0).detect(stats)
    return dict(
        z=z, e=e, trend=trend, rel=rel,
        last=pj.LastPredictor().predict(stats, H), mean=pj.MeanPredictor().predict(stats, H),
        ewma=pj.EWMAPredictor().predict(stats, H), tpred=pj.TrendPredictor().predict(stats, H),
        tpred_nc=pj.TrendPredictor(use_confidence=False, extrapolation_factor=0.5).predict(stats, H),
        ad=pj.AnomalyDiagnoser().diagnose(stats, z, trend), ad_none=pj.AnomalyDiagnoser().diagnose(stats),
        ad_e=pj.AnomalyDiagnoser(severity_threshold=1.0).diagnose(stats, e, trend),
        sd=pj.StatisticalDiagnoser().diagnose(stats, z, trend), sd_none=pj.StatisticalDiagnoser().diagnose(stats),
        td=pj.TrendDiagnoser().diagnose(stats, z, trend), td_noa=pj.TrendDiagnoser().diagnose(stats, trend=trend),
    )


def _their_trend(res, thr):
    if thr is None:
        return None
    try:
        return P.TrendOperatorThreshold(thr).analyze(res)
    except ValueError:  # the original fails on a zero threshold (std == 0)
        return None


def _view(res, anomaly, trend):
    return SimpleNamespace(key=None, reasoning=None, stats=res, anomaly=anomaly, trend=trend)


def _with_method(a, method):
    """The original's anomaly result with another method label."""
    return P.AnomalyResult(is_anomaly=a.is_anomaly, score=a.score, threshold=a.threshold, method=method, metadata=a.metadata)


@SETTINGS
@given(sequences)
@example([(0.0, 1.0)] * 10 + [(10.0, 0.5)])  # z-score anomaly, upward trend
@example([(0.0, 1.0)] * 10 + [(-10.0, 0.5)])  # downward trend, negative mean
@example([(1.0, 1.0)] * 12 + [(1.2, 1.0), (1.4, 1.0), (1.7, 1.0), (2.0, 1.0)])  # slow drift
@example([(-20.0, 1.0), (20.0, 1.0)])  # zero mean, wide spread
@example([(4.0, 1.0), (4.0, 0.5), (4.0, 1.0)])  # std == 0
@example([(1.0, 1.0), (None, 0.0), (5.0, 1.0), (None, 0.5)])  # steps without a value
def test_operators_match_the_original(seq):
    with jax.enable_x64(True):
        _compare_operators(seq)


def _compare_operators(seq):
    stats, res = histories(seq)
    out = jax.tree.map(np.asarray, _operators(stats))
    assert int(stats.count) == res.count
    # anomaly detectors
    z = P.ZScoreDetector(3.0).detect(res)
    assert bool(out["z"].is_anomaly) == z.is_anomaly and close(out["z"].score, z.score)
    assert close(out["z"].confidence(), z.confidence())
    try:
        e = P.EWMADetector(1.0).detect(res)
    except ValueError:  # documented fix: no error, simply not anomalous
        e = None
    if e is None:
        assert not bool(out["e"].is_anomaly) and not bool(out["e"].defined)
    else:
        assert bool(out["e"].is_anomaly) == e.is_anomaly and close(out["e"].score, e.score)
    # trends, absolute and relative thresholds
    trend = _their_trend(res, 0.3)
    for key, theirs in (("trend", trend),
                        ("rel", _their_trend(res, P.StatisticalDomain(k=3.0).trend_threshold(res, absolute=None, std_factor=1.0)))):
        ours = out[key]
        assert bool(ours.valid) == (theirs is not None), key
        if theirs is not None:
            assert close(ours.value, theirs.value) and pj.direction_name(ours.direction) == theirs.direction
            assert close(ours.confidence(), theirs.confidence())
            assert close(ours.zscore(res.std or 0.0), theirs.zscore(res.std))
    # predictors
    view = _view(res, z, trend)
    if res.value is None:
        assert not bool(out["last"].valid)
    else:
        np.testing.assert_allclose(out["last"].value, P.LastPredictor().predict(view, H).value, rtol=1e-12)
    m = P.MeanPredictor().predict(view, H)
    np.testing.assert_allclose(out["mean"].value, [m.value] * H, rtol=1e-12)
    assert close(out["mean"].confidence, m.confidence)
    ew = P.EWMAPredictor().predict(view, H)
    np.testing.assert_allclose(out["ewma"].value, ew.value, rtol=1e-12)
    assert close(out["ewma"].confidence, ew.confidence)
    for key, kw in (("tpred", {}), ("tpred_nc", dict(use_confidence=False, extrapolation_factor=0.5))):
        if trend is None:
            assert not bool(out[key].valid) and np.all(np.isnan(out[key].value))
            continue
        theirs = P.TrendPredictor(**kw).predict(view, H).value
        if trend.direction == "down":  # documented fix: mirror of the original's rising forecast
            theirs = [2 * res.value - t for t in theirs]
        np.testing.assert_allclose(out[key].value, theirs, rtol=1e-12, atol=1e-12)
    # diagnosers (the z-score cause as the original intends it: its method label matched)
    zt = _with_method(z, "z-score")
    for key, anomaly, t, diag in (
        ("ad", zt, trend, P.AnomalyDiagnoser()),
        ("ad_none", zt, None, P.AnomalyDiagnoser()),
        ("ad_e", e, trend, P.AnomalyDiagnoser(severity_threshold=1.0)),
        ("sd", z, trend, P.StatisticalDiagnoser()),
        ("sd_none", z, None, P.StatisticalDiagnoser()),
    ):
        if anomaly is None:  # the original cannot build an EWMA view here
            continue
        theirs = diag.diagnose(_view(res, anomaly, t))
        assert close(out[key].confidence, theirs.confidence), key
        assert int(out[key].causes.sum()) == len(theirs.causes), (key, theirs.causes)
    for key, anomaly in (("td", z), ("td_noa", None)):
        if trend is None:
            with pytest.raises(ValueError):
                P.TrendDiagnoser().diagnose(_view(res, anomaly, None))
            assert float(out[key].confidence) == 0.0 and int(out[key].causes.sum()) == 0
            continue
        theirs = P.TrendDiagnoser().diagnose(_view(res, anomaly, trend))
        assert close(out[key].confidence, theirs.confidence), key
        assert int(out[key].causes.sum()) == len(theirs.causes), (key, theirs.causes)


# ---- hand computations and the documented choices ---------------------------------------
def test_zscore_is_bounded_by_sqrt_count_minus_one(x64):
    """n - 1 equal values then one outlier: z = sqrt(n - 1) exactly, by hand."""
    for n in range(2, 14):
        stats, _ = histories([(0.0, 1.0)] * (n - 1) + [(10.0, 1.0)])
        r = pj.ZScoreDetector(3.0).detect(stats)
        assert float(r.score) == pytest.approx(math.sqrt(n - 1), rel=1e-12)
        if n >= 11:
            assert bool(r.is_anomaly)
        if n <= 9:
            assert not bool(r.is_anomaly)


def test_detectors_on_young_or_flat_histories(x64):
    for seq in ([(4.0, 1.0)], [(4.0, 1.0), (4.0, 1.0)]):  # count < 2, then std == 0
        stats, res = histories(seq)
        with pytest.raises(ValueError):  # the original raises ...
            P.EWMADetector().detect(res)
        for det in (pj.EWMADetector(), pj.ZScoreDetector()):  # ... here: not anomalous, undefined
            r = det.detect(stats)
            assert not bool(r.is_anomaly) and not bool(r.defined) and np.isnan(float(r.confidence()))


def test_trend_predictor_extrapolates_down_trends_downward(x64):
    stats, res = histories([(10.0, 1.0), (10.0, 1.0), (10.0, 1.0), (2.0, 1.0)])
    # mean 8, EWMA 0.3·2 + 0.7·10 = 7.6: down by 0.4, confidence min(1, 0.4/0.3) = 1
    ours = pj.TrendPredictor().predict(stats, 2).value
    np.testing.assert_allclose(np.asarray(ours), [1.6, 1.2], rtol=1e-12)
    trend = P.TrendOperatorThreshold(0.3).analyze(res)
    theirs = P.TrendPredictor().predict(_view(res, None, trend), 2).value
    np.testing.assert_allclose(theirs, [2.4, 2.8], rtol=1e-12)  # the original's rising forecast


def test_predictors_without_values():
    stats = pj.Stats.empty(1, jnp.float32)[0]
    assert not bool(pj.LastPredictor().predict(stats).valid)
    z = pj.LastPredictor(allow_none=True).predict(stats, 2)
    assert bool(z.valid) and z.value.tolist() == [0.0, 0.0]
    assert not bool(pj.EWMAPredictor().predict(stats).valid)
    assert not bool(pj.TrendPredictor().predict(stats).valid)


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="threshold"):
        pj.ZScoreDetector(0.0)
    with pytest.raises(ValueError, match="threshold"):
        pj.EWMADetector(-1.0)
    with pytest.raises(ValueError, match="exactly one"):
        pj.TrendOperator(threshold=1.0, std_factor=1.0)
    with pytest.raises(ValueError, match="strong_threshold"):
        pj.TrendDiagnoser(significance_threshold=0.5, strong_threshold=0.2)
    with pytest.raises(ValueError, match="horizon"):
        pj.LastPredictor().predict(pj.Stats.empty(1, jnp.float32)[0], 0)
    with pytest.raises(TypeError, match="Stats"):
        pj.ZScoreDetector().detect(3.0)
    with pytest.raises(TypeError, match="trend"):
        pj.TrendDiagnoser().diagnose(pj.Stats.empty(1, jnp.float32)[0])


def test_describe_lists_causes_on_the_host(x64):
    stats, _ = histories([(0.0, 1.0)] * 10 + [(10.0, 1.0)])
    d = pj.AnomalyDiagnoser().diagnose(stats)
    assert d.describe() == [d.labels[i] for i in np.flatnonzero(np.asarray(d.causes))]
    assert len(d.describe()) == int(d.count) == 3
    batched = jax.tree.map(lambda a: jnp.stack([a, a]), d)
    with pytest.raises(ValueError, match="one scenario"):
        batched.describe()
    assert pj.direction_name(pj.TREND_UP) == "up"


# ---- jit, vmap, grad, and inside governance ---------------------------------------------
def test_vmap_equals_a_loop_over_variables():
    X = [pj.Variable(n, init=0.0) for n in "ABC"]
    ex = pj.Executive(variables=X)
    s = ex.init(jax.random.key(0))
    for a, b, c in [(1.0, 5.0, 0.0), (2.0, -5.0, 0.0), (3.0, 5.0, 0.0), (4.0, 50.0, 0.0)]:
        s = s.set("A", a).set("B", b).set("C", c)
    ops = lambda st: (pj.ZScoreDetector(1.0).detect(st).score, pj.TrendOperator(threshold=0.3).analyze(st).value,
                      pj.TrendPredictor().predict(st, 2).value, pj.StatisticalDiagnoser().diagnose(st).confidence)
    whole = ops(s.stats_)  # leading axes batch without vmap
    mapped = jax.vmap(ops)(s.stats_)
    for i, n in enumerate("ABC"):
        one = ops(s.stats(n))
        for w, m, o in zip(whole, mapped, one):
            np.testing.assert_allclose(np.asarray(w[i]), np.asarray(o), rtol=1e-6)
            np.testing.assert_allclose(np.asarray(m[i]), np.asarray(o), rtol=1e-6)


def test_gradients_are_finite_and_match_finite_differences(x64):
    base = [(1.0, 1.0), (2.0, 1.0), (4.0, 1.0), (3.0, 1.0)]

    def score(x, threshold):
        xs = jnp.asarray([v for v, _ in base] + [0.0] * (L - len(base))).at[len(base)].set(x)
        st = _our_stats(xs, jnp.arange(L) <= len(base), jnp.ones(L), jnp.asarray(len(base) + 1), jnp.asarray(0.3))
        return (pj.ZScoreDetector(threshold).detect(st).score
                + jnp.sum(pj.TrendPredictor(extrapolation_factor=threshold).predict(st, 2).value))

    g = jax.grad(score, argnums=(0, 1))(7.0, 2.0)
    eps = 1e-6
    assert float(g[0]) == pytest.approx(float((score(7.0 + eps, 2.0) - score(7.0 - eps, 2.0)) / (2 * eps)), rel=1e-5)
    assert float(g[1]) == pytest.approx(float((score(7.0, 2.0 + eps) - score(7.0, 2.0 - eps)) / (2 * eps)), rel=1e-5)
    # undefined results (one record) carry zero, not NaN, gradients
    young = lambda x: jnp.nan_to_num(pj.ZScoreDetector().detect(_our_stats(
        jnp.full(L, x), jnp.arange(L) < 1, jnp.ones(L), jnp.asarray(1), jnp.asarray(0.3))).score)
    assert float(jax.grad(young)(3.0)) == 0.0


class Table(pj.Mechanism):
    values: jax.Array

    def transform(self, view, key):
        return {"X": pj.VariableRecord(self.values[jnp.minimum(view.step, self.values.shape[0] - 1)], confidence=1.0)}


def test_anomaly_invariant_counts_match_the_original_detector(x64):
    xs = [0.0, 0.1, -0.1, 0.05, 0.0, 0.02, -0.03, 0.0, 0.01, 0.0, 9.0, 0.0, 0.1, 25.0, 0.0]
    X = pj.Variable("X", init=0.0)
    inv = pj.SystemInvariant("calm", lambda v: ~pj.ZScoreDetector(3.0).detect(v.stats("X")).is_anomaly,
                             phase=pj.InvariantPhase.POST, severity=pj.InvariantSeverity.WARNING)
    ex = pj.Executive(variables=[X], mechanisms=[Table(values=jnp.asarray(xs), writes=[X])], invariants=[inv])
    _, traj = ex.run(ex.init(jax.random.key(0)), len(xs), save=pj.Save(fn=lambda s: s.violations("calm")))
    theirs, count, expect = P.MemoryStatistics().update(P.VariableRecord(0.0, confidence=1.0)), 0, []
    for x in xs:
        theirs = theirs.update(P.VariableRecord(x, confidence=1.0))
        count += P.ZScoreDetector(3.0).detect(theirs.result()).is_anomaly
        expect.append(count)
    assert expect[-1] >= 1  # the scripted outliers do fire
    np.testing.assert_array_equal(np.asarray(traj.extra), expect)
