"""When a variable starts being committed, and non-finite resolved values.

A variable joins the world the first time one of its writers is enabled at
resolution (after the RUNTIME invariants) and is committed every step from then
on, even when its writers are disabled later, as in the original ``procela``,
where a mechanism added at run time brings its variables in from that step.
"""

import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela
import procela_jax as pj

STEPS = 9


class Follow(pj.Mechanism):
    """Proposes ``gain * source + offset`` for the variable it writes."""

    gain: float
    offset: float
    trust: float

    def transform(self, values, key):
        return {self.writes[0]: pj.VariableRecord(self.gain * values[self.reads[0]] + self.offset,
                                                  confidence=self.trust)}


def world(late_enabled=False, **executive):
    X = pj.Variable("X", init=1.0)
    Y = pj.Variable("Y", init=2.0)
    Z = pj.Variable("Z", init=3.0)
    mechanisms = [
        Follow(gain=0.5, offset=1.0, trust=0.9, reads=[X], writes=[X], name="drift"),
        Follow(gain=2.0, offset=0.5, trust=0.6, reads=[X], writes=[Y], name="late", enabled=late_enabled),
        Follow(gain=-1.0, offset=0.25, trust=0.7, reads=[Y], writes=[Z], name="rescue", enabled=False),
    ]
    return pj.Executive(variables=[X, Y, Z], mechanisms=mechanisms, **executive)


def test_a_variable_is_committed_from_the_step_its_first_writer_is_enabled():
    # "late" is enabled by the pre-step hook of step 2 and disabled at step 5;
    # nothing ever enables "rescue", so Z is never committed
    def pre_step(state, t):
        return state.enable("late", when=t == 2).disable("late", when=t == 5)

    ex = world(pre_step=pre_step)
    state = ex.init(jax.random.key(0))
    assert np.asarray(state.joined).tolist() == [True, False, False]  # "drift" starts enabled
    steps = []
    for _ in range(STEPS):
        state = ex.step(state)
        steps.append(np.asarray(state.joined).tolist())
    assert steps == [[True, False, False]] * 2 + [[True, True, False]] * (STEPS - 2)
    # Y: the initial record, then one record a step from step 2 on (a record
    # without a value from step 5, when nobody proposes); Z: only its initial record
    assert int(state.stats("Y").count) == 1 + (STEPS - 2)
    assert int(state.stats("Z").count) == 1
    recent = state.recent("Y")
    assert np.asarray(recent["step"])[np.asarray(recent["valid"])].tolist() == [0] + list(range(3, STEPS + 1))
    x = 1.0
    xs = []
    for _ in range(STEPS):
        xs.append(x)
        x = 0.5 * x + 1.0
    # Y's value is proposed from the X committed before steps 2, 3 and 4, then held
    assert float(state.value("Y")) == pytest.approx(2.0 * xs[4] + 0.5)
    assert float(state.value("Z")) == 3.0
    # a run takes the same path as repeated steps
    ran, _ = ex.run(ex.init(jax.random.key(0)), STEPS)
    assert np.asarray(ran.joined).tolist() == steps[-1]
    assert int(ran.stats("Y").count) == int(state.stats("Y").count)


def test_a_writer_enabled_from_the_start_joins_its_variables_at_step_zero():
    ex = world(late_enabled=True)
    state = ex.step(ex.init(jax.random.key(0)))
    assert np.asarray(state.joined).tolist() == [True, True, False]
    assert state.is_joined("Y") and not state.is_joined("Z")
    assert int(state.stats("Y").count) == 2 and int(state.stats("Z").count) == 1


def test_adding_a_mechanism_to_a_simulation_equals_enabling_a_declared_one():
    """The two ways of adding a mechanism at run time give the same bits."""
    def pre_step(state, t):
        return state.enable("late", when=t == 3)

    declared = pj.Simulation(world(pre_step=pre_step), seed=5)
    declared.run(STEPS)

    full = world()
    without = full.remove_mechanism("late")
    added = pj.Simulation(without, seed=5)
    added.run(3)
    assert int(added.state.stats("Y").count) == 1
    added.add_mechanism(next(m for m in full.mechanisms if m.name == "late"))
    added.state = added.state.enable("late")
    added.run(STEPS - 3)
    for name in "XYZ":
        np.testing.assert_array_equal(declared.history(name), added.history(name))
        a, b = declared.state.stats(name), added.state.stats(name)
        for field in ("count", "mean", "std", "confidence"):
            np.testing.assert_array_equal(np.asarray(getattr(a, field)), np.asarray(getattr(b, field)))
    assert np.asarray(added.state.joined).tolist() == [True, True, False]


# ---- against the original ----------------------------------------------------------
ENABLE_AT, RUNTIME_AT, DISABLE_AT = 2, 4, 6


def run_original():
    """The original: "late" is added by the pre-step hook of step ENABLE_AT and
    disabled at DISABLE_AT; "rescue" is added by a RUNTIME handler at RUNTIME_AT."""
    X = procela.Variable("X", procela.RealDomain(), policy=procela.WeightedVotingPolicy())
    Y = procela.Variable("Y", procela.RealDomain(), policy=procela.WeightedVotingPolicy())
    Z = procela.Variable("Z", procela.RealDomain(), policy=procela.WeightedVotingPolicy())
    for v, x in ((X, 1.0), (Y, 2.0), (Z, 3.0)):
        v.init(procela.VariableRecord(x, confidence=1.0))

    class Follow0(procela.Mechanism):
        def __init__(self, source, target, gain, offset, trust):
            super().__init__([source], [target])
            self.gain, self.offset, self.trust = gain, offset, trust

        def transform(self):
            x = self.reads()[0].value
            self.writes()[0].add_hypothesis(
                procela.VariableRecord(self.gain * x + self.offset, confidence=self.trust, source=self.key()))

    late = Follow0(X, Y, 2.0, 0.5, 0.6)
    rescue = Follow0(Y, Z, -1.0, 0.25, 0.7)
    logger = logging.Logger("procela-joining")
    logger.addHandler(logging.NullHandler())
    executive = procela.Executive(mechanisms=[Follow0(X, X, 0.5, 1.0, 0.9)], logger=logger)

    def respond(violation, snapshot):
        if rescue not in executive.mechanisms():
            executive.add_mechanism(rescue)

    executive.add_invariant(procela.SystemInvariant(
        "call_rescue", condition=lambda snapshot: snapshot.step != RUNTIME_AT, on_violation=respond,
        phase=procela.InvariantPhase.RUNTIME, severity=procela.InvariantSeverity.WARNING, message="rescue"))

    def pre_step(ex, i):
        if i == ENABLE_AT:
            ex.add_mechanism(late)
        if i == DISABLE_AT:
            late.disable()

    rows = []

    def post_step(ex, i):
        rows.append({v.name: (v.value, v.stats.count, v.stats.mean(), v.stats.std(), v.stats.confidence())
                     for v in (X, Y, Z)})

    executive.run(steps=STEPS, pre_step=pre_step, post_step=post_step)
    return rows


def test_joining_matches_the_original(x64):
    def pre_step(state, t):
        return state.enable("late", when=t == ENABLE_AT).disable("late", when=t == DISABLE_AT)

    def respond(state, snap):
        return state.enable("rescue")

    call_rescue = pj.SystemInvariant("call_rescue", lambda snap: snap.step != RUNTIME_AT, on_violation=respond,
                                     phase=pj.InvariantPhase.RUNTIME, severity=pj.InvariantSeverity.WARNING,
                                     message="rescue")
    ex = world(pre_step=pre_step, invariants=[call_rescue])
    state = ex.init(jax.random.key(0))
    rows = run_original()
    for t, row in enumerate(rows):
        state = ex.step(state)
        for name, (value, count, mean, std, confidence) in row.items():
            st = state.stats(name)
            where = f"{name} after step {t}"
            assert int(st.count) == count, where
            assert float(state.value(name)) == pytest.approx(value, rel=1e-12), where
            assert float(st.mean) == pytest.approx(mean, rel=1e-12), where
            assert (std is None and count < 2) or float(st.std) == pytest.approx(std, rel=1e-9, abs=1e-12), where
            assert float(st.confidence) == pytest.approx(confidence, rel=1e-12), where
    # the RUNTIME handler's mechanism proposed from the next step: Z joined at RUNTIME_AT
    assert int(state.stats("Z").count) == 1 + STEPS - RUNTIME_AT


@pytest.fixture
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


# ---- non-finite resolved values ----------------------------------------------------
def total(values, confidences, weights, mask):
    """Sums the hypotheses: overflows where their values are large."""
    return jnp.sum(jnp.where(mask, values, 0), axis=-1), jnp.max(jnp.where(mask, confidences, 0), axis=-1)


class Big(pj.Mechanism):
    level: float

    def transform(self, values, key):
        return {self.writes[0]: pj.VariableRecord(jnp.where(values.step >= 2, self.level, 1.0), confidence=1.0)}


def overflowing(policy):
    V = pj.Variable("V", pj.RealDomain(), policy=policy, init=0.0)
    return pj.Executive(variables=[V], mechanisms=[Big(level=3e38, writes=[V], name="a"),
                                                   Big(level=3e38, writes=[V], name="b")],
                        dtype="float32")


def test_a_non_finite_resolution_is_counted_and_raised():
    ex = overflowing(pj.FunctionPolicy(total))
    state, _ = ex.run(ex.init(jax.random.key(0)), 5)
    assert float(state.value("V")) == np.inf  # RealDomain admits it; it is committed
    assert int(state.nonfinite_resolved[0]) == 3 and int(state.nonfinite_first_step[0]) == 2
    assert int(state.invalid_proposals.sum()) == 0  # the hypotheses were valid
    sim = pj.Simulation(ex, seed=0)
    sim.run(2)  # steps 0 and 1 resolve to 2.0
    with pytest.raises(pj.NonFiniteResolutionError, match=r"'V'.*first at step 2 \(3 times in all"):
        sim.run(3)


@pytest.mark.parametrize("policy", [pj.WeightedVotingPolicy(), pj.WeightedConfidencePolicy(), pj.MedianPolicy(),
                                    pj.MeanPolicy(), pj.HighestConfidencePolicy()])
def test_built_in_policies_do_not_overflow_where_their_inputs_do_not(policy):
    ex = overflowing(policy)
    state, _ = ex.run(ex.init(jax.random.key(0)), 5)
    assert float(state.value("V")) == np.float32(3e38)
    assert int(state.nonfinite_resolved[0]) == 0
    pj.Simulation(ex, seed=0).run(5)  # nothing to report


def test_retried_steps_keep_counting_non_finite_resolutions():
    ex = overflowing(pj.FunctionPolicy(total))
    ex = pj.Executive(variables=ex.variables, mechanisms=ex.mechanisms, dtype="float32",
                      recovery=pj.Recovery(retries=2))
    state, _ = ex.run(ex.init(jax.random.key(0)), 4)
    # steps 2 and 3 fail on every attempt (3 each) and are rolled back
    assert int(state.nonfinite_resolved[0]) == 6 and int(state.nonfinite_first_step[0]) == 2
    assert float(state.value("V")) == 2.0
