"""StatisticalDomain against the original's on the same sequences (float64), through
``state.set`` and through resolution, with each out-of-domain choice."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings, strategies as st

import procela as P
import procela_jax as pj

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
N = 14  # values per scripted sequence


class Table(pj.Mechanism):
    values: jax.Array

    def transform(self, view, key):
        return {"X": pj.VariableRecord(self.values[jnp.minimum(view.step, self.values.shape[0] - 1)], confidence=0.5)}


_EXECUTIVES: dict = {}


def _run(k, mode, xs):
    """Run the scripted sequence; one executive per (k, mode), so each compiles once
    (static configuration is compared by identity)."""
    if (k, mode) not in _EXECUTIVES:
        X = pj.Variable("X", pj.StatisticalDomain(k=k), init=0.0, out_of_domain=mode)
        _EXECUTIVES[k, mode] = pj.Executive(variables=[X], mechanisms=[Table(values=jnp.zeros(N - 1), writes=[X])])
    ex = _EXECUTIVES[k, mode].replace({"Table.values": jnp.asarray(xs[1:])})
    return ex.run(ex.init(jax.random.key(0), init={"X": xs[0]}), N - 1, save=SAVE)


def _violations(state):
    return state.domain_violations[0]


SAVE = pj.Save(fields=("value", "count", "mean"), fn=_violations)  # one Save: it is static


def reference(domain, xs, mode="commit"):
    """The original's rule, step by step: validate against the statistics before the
    commit, then commit (``mode``: the value, its clip into the band, or nothing)."""
    stats = P.MemoryStatistics().update(P.VariableRecord(float(xs[0]), confidence=1.0))
    flags, values = [], []
    value = float(xs[0])
    for x in xs[1:]:
        res = stats.result()
        ok = domain.validate(float(x), res)
        flags.append(not ok)
        if ok or mode == "commit":
            value = float(x)
        elif mode == "clip":
            k = domain.k
            value = min(max(float(x), res.mean - k * res.std), res.mean + k * res.std)
        else:  # hold: a step without a value
            stats = stats.update(None)
            values.append(value)
            continue
        stats = stats.update(P.VariableRecord(value, confidence=0.5))
        values.append(value)
    return np.asarray(flags), np.asarray(values), stats.result()


values = st.lists(st.one_of(st.sampled_from([0.0, 1.0, 5.0]), st.floats(-30, 30)), min_size=N, max_size=N)


@SETTINGS
@given(values, st.sampled_from([(0.0, "commit"), (3.0, "commit"), (1.0, "clip"), (0.5, "hold")]))
@example([5.0] * 13 + [5.0 + 1e-9], (3.0, "commit"))  # std == 0: only the mean passes
@example([0.0, 10.0] + [0.0, 10.0] * 6, (1.0, "clip"))
def test_resolution_matches_the_original(xs, k_mode):
    k, mode = k_mode
    with jax.enable_x64(True):
        state, traj = _run(k, mode, xs)
        flags, vals, res = reference(P.StatisticalDomain(k=k), xs, mode)
        np.testing.assert_array_equal(np.diff(np.asarray(traj.extra), prepend=0) > 0, flags)
        np.testing.assert_allclose(np.asarray(traj.value("X")), vals, rtol=1e-12, atol=1e-12)
        assert int(state.stats("X").count) == res.count
        assert float(state.stats("X").mean) == pytest.approx(res.mean, rel=1e-12, abs=1e-12)


@jax.jit
def _feed(state, xs):
    def body(s, x):
        s = s.set("X", x)
        return s, s.domain_violations[0]

    return jax.lax.scan(body, state, xs)


@SETTINGS
@given(values)
def test_set_uses_the_statistics_before_the_commit(xs):
    with jax.enable_x64(True):
        if "set" not in _EXECUTIVES:
            X = pj.Variable("X", pj.RangeDomain(-20.0, 20.0) & pj.StatisticalDomain(k=1.5), init=0.0)
            _EXECUTIVES["set"] = pj.Executive(variables=[X])
        _, counts = _feed(_EXECUTIVES["set"].init(jax.random.key(0)), jnp.asarray(xs))
        theirs = P.CompositeDomain([P.RangeDomain(-20.0, 20.0), P.StatisticalDomain(k=1.5)])
        flags, _, _ = reference(theirs, [0.0, *xs])
        np.testing.assert_array_equal(np.diff(np.asarray(counts), prepend=0) > 0, flags)


def test_band_by_hand():
    d = pj.StatisticalDomain(k=2.0)
    ex = pj.Executive(variables=[pj.Variable("X", d, init=0.0)])
    s = ex.init(jax.random.key(0))
    # one record: no standard deviation yet, anything (but NaN) passes
    assert bool(d.contains(1e9, s.stats("X"))) and not bool(d.contains(jnp.nan, s.stats("X")))
    s = s.set("X", 2.0)  # mean 1, std 1: band [-1, 3]
    st_ = s.stats("X")
    assert [bool(d.contains(x, st_)) for x in (-1.0, 3.0, 3.01, -1.01)] == [True, True, False, False]
    assert float(d.project(10.0, st_)) == 3.0 and float(d.project(-10.0, st_)) == -1.0
    flat = ex.init(jax.random.key(0)).set("X", 0.0)  # std == 0: only the mean
    assert bool(d.contains(0.0, flat.stats("X"))) and not bool(d.contains(1e-6, flat.stats("X")))
    # without statistics (build time) every number is inside
    assert d.contains_python(123.0) and float(d.project(jnp.asarray(7.0))) == 7.0


def test_bad_k_fails_at_build_time():
    for k in (-1.0, float("nan"), "3", True):
        with pytest.raises(pj.ModelError, match="k"):
            pj.StatisticalDomain(k=k)
    X = pj.Variable("X", pj.StatisticalDomain(), init=-4.0)
    assert X.init == -4.0
