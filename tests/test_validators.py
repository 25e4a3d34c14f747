"""Variable validators: rejected hypotheses take no part in resolution. Checked against
the original's policy on the kept hypotheses, step by step against an original
Variable fed the kept hypotheses, and against the original's own quirk."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import procela as P
import procela_jax as pj

SETTINGS = settings(max_examples=12, deadline=None, derandomize=True)
STEPS, M = 8, 3  # steps and mechanisms of the scripted runs


class Script(pj.Mechanism):
    """Proposes ``values[step]`` with ``confs[step]``."""

    values: jax.Array
    confs: jax.Array

    def transform(self, view, key):
        t = jnp.minimum(view.step, self.values.shape[0] - 1)
        return {"X": pj.VariableRecord(self.values[t], confidence=self.confs[t])}


def below_25(value, confidence):
    return value < 25.0


def confident(value, confidence):
    return confidence >= 0.3


def _three(values, confs=(0.5, 0.5, 0.5), **var):
    X = pj.Variable("X", init=0.0, **var)
    mechs = [Script(values=jnp.full(1, v), confs=jnp.full(1, c), writes=[X], name=f"m{i}")
             for i, (v, c) in enumerate(zip(values, confs))]
    return pj.Executive(variables=[X], mechanisms=mechs, audit=True)


def test_rejected_hypotheses_do_not_reach_the_policy():
    ex = _three([10.0, 20.0, 30.0], validators=[below_25])
    s = ex.step(ex.init(jax.random.key(0)))
    # ours: the policy sees 10 and 20 only, as the original's policy given the kept ones
    kept = [P.HypothesisRecord(P.VariableRecord(v, confidence=0.5)) for v in (10.0, 20.0)]
    assert float(s.value("X")) == P.WeightedVotingPolicy().resolve(kept).value == 15.0
    assert np.asarray(s.audit["mask"][0]).tolist() == [True, True, False]
    # the original's quirk: its policy still receives 30, so it resolves 20
    v = P.Variable("X", P.RealDomain(), policy=P.WeightedVotingPolicy(), validators=[lambda h: h.record.value < 25])
    v.init(P.VariableRecord(0.0, confidence=1.0))
    for x in (10.0, 20.0, 30.0):
        v.add_hypothesis(P.VariableRecord(x, confidence=0.5))
    assert v.resolve_conflict().value == 20.0


def test_all_rejected_commits_no_value_like_the_original():
    ex = _three([30.0, 40.0, 50.0], validators=[below_25])
    s = ex.step(ex.init(jax.random.key(0)))
    v = P.Variable("X", P.RealDomain(), policy=P.WeightedVotingPolicy(), validators=[lambda h: h.record.value < 25])
    v.init(P.VariableRecord(0.0, confidence=1.0))
    for x in (30.0, 40.0, 50.0):
        v.add_hypothesis(P.VariableRecord(x, confidence=0.5))
    v.resolve_conflict()
    v.commit()
    theirs = v.stats.result()
    assert float(s.value("X")) == theirs.value == 0.0
    assert int(s.stats("X").count) == theirs.count == 2
    assert float(s.stats("X").confidence) == pytest.approx(theirs.confidence)


_EX: dict = {}


def _scripted(policy):
    if policy not in _EX:
        X = pj.Variable("X", init=1.0, policy=policy(), validators=[below_25, confident])
        mechs = [Script(values=jnp.zeros(STEPS), confs=jnp.zeros(STEPS), writes=[X], name=f"m{i}") for i in range(M)]
        _EX[policy] = pj.Executive(variables=[X], mechanisms=mechs, audit=True)
    return _EX[policy]


def _save_mask(state):
    return state.audit["mask"][0]


SAVE = pj.Save(fields=("value", "count", "mean", "confidence"), fn=_save_mask)

script = st.tuples(
    st.lists(st.lists(st.sampled_from([5.0, 20.0, 24.9, 25.0, 40.0]) | st.floats(0, 50), min_size=M, max_size=M),
             min_size=STEPS, max_size=STEPS),
    st.lists(st.lists(st.floats(0, 1), min_size=M, max_size=M), min_size=STEPS, max_size=STEPS),
)


@SETTINGS
@given(script, st.sampled_from(["voting", "confidence", "highest"]))
def test_runs_match_an_original_variable_fed_the_kept_hypotheses(data, which):
    vals, confs = (np.asarray(a, float) for a in data)
    ours_p, theirs_p = {
        "voting": (pj.WeightedVotingPolicy, P.WeightedVotingPolicy),
        "confidence": (pj.WeightedConfidencePolicy, P.WeightedConfidencePolicy),
        "highest": (pj.HighestConfidencePolicy, P.HighestConfidencePolicy),
    }[which]
    with jax.enable_x64(True):
        ex = _scripted(ours_p)
        ex = ex.replace({f"m{i}.values": vals[:, i] for i in range(M)} | {f"m{i}.confs": confs[:, i] for i in range(M)})
        _, traj = ex.run(ex.init(jax.random.key(0)), STEPS, save=SAVE)
    var = P.Variable("X", P.RealDomain(), policy=theirs_p())
    var.init(P.VariableRecord(1.0, confidence=1.0))
    for t in range(STEPS):
        keep = [(v, c) for v, c in zip(vals[t], confs[t]) if v < 25.0 and c >= 0.3]
        np.testing.assert_array_equal(np.asarray(traj.extra[t]), [v < 25.0 and c >= 0.3 for v, c in zip(vals[t], confs[t])])
        for v, c in keep:
            var.add_hypothesis(P.VariableRecord(float(v), confidence=float(c)))
        var.resolve_conflict()
        var.commit()
        var.clear_hypotheses()
        res = var.stats.result()
        assert float(traj.value("X")[t]) == pytest.approx(res.value, rel=1e-12)
        assert int(traj.field("X", "count")[t]) == res.count
        assert float(traj.field("X", "mean")[t]) == pytest.approx(res.mean, rel=1e-12)


def test_runtime_invariants_see_the_validated_mask():
    seen = pj.SystemInvariant("two", lambda v: jnp.sum(v.pending("X")["mask"]) == 2, phase=pj.InvariantPhase.RUNTIME,
                              severity=pj.InvariantSeverity.WARNING)
    X = pj.Variable("X", init=0.0, validators=[below_25])
    mechs = [Script(values=jnp.full(1, v), confs=jnp.full(1, 0.5), writes=[X], name=f"m{i}") for i, v in enumerate((1.0, 2.0, 99.0))]
    ex = pj.Executive(variables=[X], mechanisms=mechs, invariants=[seen])
    s, _ = ex.run(ex.init(jax.random.key(0)), 3, save=None)
    assert int(s.violations("two")) == 0
    # a negative control: without the validator three hypotheses are pending
    ex2 = pj.Executive(variables=[pj.Variable("X", init=0.0)], mechanisms=mechs, invariants=[seen])
    s2, _ = ex2.run(ex2.init(jax.random.key(0)), 3, save=None)
    assert int(s2.violations("two")) == 3


def test_validators_under_vmap_per_scenario():
    ex = _three([10.0, 20.0, 30.0], validators=[below_25])
    thirds = jnp.asarray([5.0, 24.0, 26.0])
    def one(v):
        e = ex.replace({"m2.values": jnp.full(1, v)})
        return e.step(e.init(jax.random.key(0))).value("X")

    out = jax.vmap(one)(thirds)
    np.testing.assert_allclose(np.asarray(out), [(10 + 20 + 5) / 3, (10 + 20 + 24) / 3, 15.0], rtol=1e-6)


def test_bad_validators_fail_at_build_time():
    with pytest.raises(pj.ModelError, match="not callable"):
        pj.Variable("X", validators=[3.0])
    with pytest.raises(pj.ModelError, match="trial call"):
        pj.Variable("X", validators=[lambda v: v > 0])
    with pytest.raises(pj.ModelError, match="one boolean"):
        pj.Variable("X", validators=[lambda v, c: jnp.stack([v, c])])
    # a single function is accepted as one validator
    assert len(pj.Variable("X", validators=below_25).validators) == 1
