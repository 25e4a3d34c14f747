"""Processes: named groups of mechanisms switched as one, compared step by step with
the original's Process and Compose."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela as P
from conftest import quiet_logger

import procela_jax as pj

STEPS = 12
RULES = {"a": (0.9, 1.0, 0.6), "b": (1.1, 0.0, 0.8), "c": (1.0, 5.0, 0.5)}  # x -> slope·x + shift, confidence


class Linear(pj.Mechanism):
    slope: float
    shift: float
    conf: float

    def transform(self, view, key):
        return {"X": pj.VariableRecord(self.slope * view["X"] + self.shift, confidence=self.conf)}


def _ours():
    X = pj.Variable("X", init=2.0)
    mk = {n: Linear(slope=s, shift=d, conf=c, reads=[X], writes=[X], name=n) for n, (s, d, c) in RULES.items()}
    return X, mk


def _theirs(schedule, compose=False):
    """The original: processes p1 = [a, b], p2 = [c] (or their Compose); ``schedule(i)``
    says which process objects to disable in ``pre_step(i)`` (the others are enabled)."""
    X = P.Variable("X", P.RealDomain(), policy=P.WeightedVotingPolicy())
    X.init(P.VariableRecord(2.0, confidence=1.0))

    class Lin(P.Mechanism):
        def __init__(self, slope, shift, conf):
            super().__init__(reads=[X], writes=[X])
            self.rule = (slope, shift, conf)

        def transform(self):
            s, d, c = self.rule
            X.add_hypothesis(P.VariableRecord(s * X.value + d, confidence=c))

    p1 = P.Process([Lin(*RULES["a"]), Lin(*RULES["b"])])
    p2 = P.Process([Lin(*RULES["c"])])
    procs = {"p1": p1, "p2": p2}
    if compose:
        procs = {"all": P.Compose([p1, p2])}
    ex = P.Executive(processes=list(procs.values()), logger=quiet_logger("procela-process-tests"))
    values, counts = [], []

    def pre(_ex, i):
        off = schedule(i)
        for name, p in procs.items():
            p.disable() if name in off else p.enable()

    def post(_ex, i):
        values.append(X.value)
        counts.append(X.stats.count)

    ex.run(STEPS, pre_step=pre, post_step=post)
    return np.asarray(values), np.asarray(counts)


def test_switching_a_process_matches_the_original():
    with jax.enable_x64(True):
        X, mk = _ours()
        p1, p2 = pj.Process("p1", [mk["a"], mk["b"]]), pj.Process("p2", [mk["c"]])

        def pre(state, t):
            off2 = (t >= 3) & (t < 6)
            off1 = (t >= 8) & (t < 10)
            state = state.disable(p2, when=off2).enable(p2, when=~off2)
            return state.disable(p1, when=off1).enable(p1, when=~off1)

        ex = pj.Executive(variables=[X], mechanisms=[*p1, *p2], pre_step=pre)
        _, traj = ex.run(ex.init(jax.random.key(0)), STEPS, save=pj.Save(fields=("value", "count")))

    def schedule(i):
        return ({"p2"} if 3 <= i < 6 else set()) | ({"p1"} if 8 <= i < 10 else set())

    values, counts = _theirs(schedule)
    np.testing.assert_allclose(np.asarray(traj.value("X")), values, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(traj.field("X", "count")), counts)


def test_disabling_a_composition_matches_the_original_compose():
    with jax.enable_x64(True):
        X, mk = _ours()
        everything = pj.Process("p1", [mk["a"], mk["b"]]) + pj.Process("p2", [mk["c"]])

        def pre(state, t):
            off = (t >= 2) & (t < 5)
            return state.disable(everything, when=off).enable(everything, when=~off)

        ex = pj.Executive(variables=[X], mechanisms=list(everything), pre_step=pre)
        _, traj = ex.run(ex.init(jax.random.key(0)), STEPS, save=pj.Save(fields=("value", "count")))
    values, counts = _theirs(lambda i: {"all"} if 2 <= i < 5 else set(), compose=True)
    np.testing.assert_allclose(np.asarray(traj.value("X")), values, rtol=1e-12)
    np.testing.assert_array_equal(np.asarray(traj.field("X", "count")), counts)  # value held, count grows


def test_composition_flattens_in_order_once():
    X, mk = _ours()
    p1 = pj.Process("p1", [mk["a"], mk["b"]])
    p2 = pj.Process("p2", [mk["b"], mk["c"]])
    both = pj.Process("both", [p1, p2])
    assert both.members == ("a", "b", "c") and [m.name for m in both] == ["a", "b", "c"]
    assert (p1 + p2).members == both.members and (p1 + p2).name == "p1+p2"
    nested = pj.Process("n", [both, "extra"])
    assert nested.members == ("a", "b", "c", "extra") and len(nested.mechanisms) == 3
    assert pj.Process("one", mk["a"]).members == ("a",)


def test_is_enabled_means_all_members_and_works_under_vmap():
    X, mk = _ours()
    p1, p2 = pj.Process("p1", [mk["a"], mk["b"]]), pj.Process("p2", [mk["c"]])
    ex = pj.Executive(variables=[X], mechanisms=[*p1, *p2])
    s = ex.init(jax.random.key(0)).disable("a")
    assert not bool(s.is_enabled(p1)) and bool(s.is_enabled(p2)) and bool(pj.View(s).is_enabled(p2))
    assert bool(s.enable(p1).is_enabled(p1))  # enabling a process enables every member

    def one(off):
        st = ex.init(jax.random.key(0)).disable(p2, when=off)
        return ex.step(st).value("X")

    got = jax.vmap(one)(jnp.asarray([False, True]))
    # WV of a, b, c from 2.0 (weights 1): (2.8 + 2.2 + 7.0) / 3, then of a, b only
    np.testing.assert_allclose(np.asarray(got), [(2.8 + 2.2 + 7.0) / 3, (2.8 + 2.2) / 2], rtol=1e-6)


def test_bad_processes_fail_clearly():
    X, mk = _ours()
    with pytest.raises(pj.ModelError, match="no mechanisms"):
        pj.Process("empty", [])
    with pytest.raises(pj.ModelError, match="members"):
        pj.Process("bad", [3])
    with pytest.raises(pj.ModelError, match="name"):
        pj.Process("", [mk["a"]])
    ex = pj.Executive(variables=[X], mechanisms=[mk["a"]])
    with pytest.raises(KeyError, match="ghost"):
        ex.init(jax.random.key(0)).disable(pj.Process("p", ["a", "ghost"]))
