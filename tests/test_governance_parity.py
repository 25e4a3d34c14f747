"""The original procela's governance example, reproduced step by step.

The world of the original ``Executive`` docstring: three variables X, Y, Z, each
proposed by an adder of the two others and by a halver of itself; a RUNTIME
safety invariant that, the first time a running mean exceeds a threshold, adds an
emergency mechanism (``0.3 * value`` with confidence 1) and switches every
variable to highest-confidence resolution; a pre-step hook that removes the
emergency mechanism at step 80.

Both engines are fed the same confidences, drawn beforehand, and compared after
every step in float64: values, latest and mean confidences, count, mean, std,
violation counts, which mechanisms proposed and which policy resolved.

In procela_jax the emergency mechanism is declared from the start and disabled;
the handler enables it. Timing matches the original: a mechanism added (here:
enabled) by a RUNTIME handler proposes from the next step on, a policy switched
there resolves this very step.
"""

import logging
import random

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela
import procela_jax as pj

STEPS = 100
REMOVE_AT = 80
INIT = {"X": 1.8, "Y": -0.5, "Z": 9.2}


@pytest.fixture(scope="module")
def x64():
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture(scope="module")
def jax_world(x64):
    """One executive (one compilation) for every threshold: the threshold lives in ``aux``."""
    ex = build_jax(draws())
    assert ex.dtype == "float64"
    cache = {}

    def run(threshold):
        if threshold not in cache:
            cache[threshold] = run_jax(ex, threshold)
        return cache[threshold]

    return run


def draws(seed=42, steps=STEPS):
    """The confidences the docstring's mechanisms draw from ``random.seed(42)``, in the
    order they draw them each step: add->Z, add->Y, add->X, then halve X, Y, Z."""
    rng = random.Random(seed)
    table = np.array([[rng.uniform(0.0, 1.0) for _ in range(6)] for _ in range(steps)])
    return {"add_z": table[:, 0], "add_y": table[:, 1], "add_x": table[:, 2], "halve": table[:, 3:]}


# ---- the original ------------------------------------------------------------------
def run_original(threshold, table):
    X = procela.Variable("X", procela.RangeDomain(-100.0, 100.0), policy=procela.WeightedVotingPolicy())
    Y = procela.Variable("Y", procela.RangeDomain(-100.0, 100.0), policy=procela.WeightedVotingPolicy())
    Z = procela.Variable("Z", procela.RangeDomain(-100.0, 100.0), policy=procela.WeightedVotingPolicy())
    variables = [X, Y, Z]
    for v in variables:
        v.init(procela.VariableRecord(INIT[v.name], confidence=1.0))
    proposed = []  # (step, mechanism name)

    class Add(procela.Mechanism):
        def __init__(self, reads, writes, name):
            super().__init__(reads, writes)
            self.label = name

        def transform(self):
            t = executive.step_index()
            proposed.append((t, self.label))
            a, b = [v.value for v in self.reads()]
            self.writes()[0].add_hypothesis(
                procela.VariableRecord(a + b, confidence=float(table[self.label][t]), source=self.key())
            )

    class Halve(procela.Mechanism):
        def transform(self):
            t = executive.step_index()
            proposed.append((t, "halve"))
            for j, v in enumerate(self.writes()):
                v.add_hypothesis(
                    procela.VariableRecord(v.value * 0.5, confidence=float(table["halve"][t, j]), source=self.key())
                )

    class Emergency(procela.Mechanism):
        def transform(self):
            proposed.append((executive.step_index(), "emergency"))
            for v in self.writes():
                v.add_hypothesis(procela.VariableRecord(v.value * 0.3, confidence=1.0, source=self.key()))

    emergency = Emergency([], variables)
    logger = logging.Logger("procela-parity")
    logger.addHandler(logging.NullHandler())
    executive = procela.Executive(
        mechanisms=[Add([X, Y], [Z], "add_z"), Add([X, Z], [Y], "add_y"), Add([Y, Z], [X], "add_x"),
                    Halve([], variables)],
        logger=logger,
    )
    added = []

    def condition(snapshot):
        return all(view.stats.mean <= threshold for view in snapshot.views)

    def respond(violation, snapshot):
        if not added:
            executive.add_mechanism(emergency)
            for v in variables:
                v.policy = procela.HighestConfidencePolicy()
            added.append(snapshot.step)

    safety = procela.SystemInvariant("safety", condition=condition, on_violation=respond,
                                     phase=procela.InvariantPhase.RUNTIME, message="mean too high")
    executive.add_invariant(safety)

    def pre_step(ex, i):
        if i == REMOVE_AT:
            ex.remove_mechanism(emergency)

    rows = []

    def post_step(ex, i):
        row = {"violations": safety.violation_count, "emergency": emergency in ex.mechanisms()}
        for v in variables:
            st = v.stats
            row[v.name] = dict(
                value=v.value, confidence=v.memory.latest()[1].confidence, count=st.count,
                mean=st.mean(), std=st.std(), mean_confidence=st.confidence(),
                highest=isinstance(v.policy, procela.HighestConfidencePolicy),
            )
        rows.append(row)

    executive.run(steps=STEPS, pre_step=pre_step, post_step=post_step)
    return rows, proposed, added


# ---- procela_jax -------------------------------------------------------------------
class Add(pj.Mechanism):
    """Proposes the sum of the two variables it reads."""

    confidences: jax.Array  # one per step, drawn beforehand

    def transform(self, values, key):
        a, b = self.reads
        return {self.writes[0]: pj.VariableRecord(values[a] + values[b], confidence=self.confidences[values.step])}


class Halve(pj.Mechanism):
    """Proposes half of each variable it writes."""

    confidences: jax.Array  # (steps, number of writes)

    def transform(self, values, key):
        return {name: pj.VariableRecord(values[name] * 0.5, confidence=self.confidences[values.step, j])
                for j, name in enumerate(self.writes)}


class Emergency(pj.Mechanism):
    """Damps every variable it writes to 30 % with full confidence."""

    def transform(self, values, key):
        return {name: pj.VariableRecord(values[name] * 0.3, confidence=1.0) for name in self.writes}


def build_jax(table):
    def var(name):
        return pj.Variable(name, pj.RangeDomain(-100.0, 100.0), policy=pj.WeightedVotingPolicy(),
                           alternatives=[pj.HighestConfidencePolicy()], init=INIT[name])

    X, Y, Z = var("X"), var("Y"), var("Z")
    mechanisms = [
        Add(confidences=table["add_z"], reads=[X, Y], writes=[Z], name="add_z"),
        Add(confidences=table["add_y"], reads=[X, Z], writes=[Y], name="add_y"),
        Add(confidences=table["add_x"], reads=[Y, Z], writes=[X], name="add_x"),
        Halve(confidences=table["halve"], writes=[X, Y, Z], name="halve"),
        Emergency(writes=[X, Y, Z], name="emergency"),
    ]

    def calm(snap):
        threshold = snap.aux["threshold"]
        return (snap.stats("X").mean <= threshold) & (snap.stats("Y").mean <= threshold) & (
            snap.stats("Z").mean <= threshold)

    def respond(state, snap):
        first = ~state.aux["added"]
        state = state.enable("emergency", when=first)
        for name in "XYZ":
            state = state.set_policy(name, pj.HighestConfidencePolicy(), when=first)
        return state.with_aux({**state.aux, "added": jnp.asarray(True)})

    safety = pj.SystemInvariant("safety", condition=calm, on_violation=respond,
                                phase=pj.InvariantPhase.RUNTIME, severity=pj.InvariantSeverity.WARNING,
                                message="mean too high")
    return pj.Executive(
        variables=[X, Y, Z], mechanisms=mechanisms, invariants=[safety],
        pre_step=lambda state, step: state.disable("emergency", when=step == REMOVE_AT),
        aux={"added": jnp.asarray(False), "threshold": jnp.asarray(0.0)},
    )


def _extra(s):
    return dict(mean_confidence=s.stats_.confidence, violations=s.violations("safety"),
                enabled=s.enabled, proposed=s.proposed)


# one Save value (its fn is part of the compiled run's static key)
SAVE = pj.Save(fields=("value", "confidence", "count", "mean", "std", "policy"), fn=_extra)


def run_jax(ex, threshold):
    aux = {"added": jnp.asarray(False), "threshold": jnp.asarray(threshold, ex.dtype)}
    state = ex.init(jax.random.key(0), aux=aux).disable("emergency")
    final, traj = ex.run(state, STEPS, save=SAVE)
    return final, traj


@pytest.mark.parametrize("threshold", [700000.0, 75.0, 1e300])
def test_governance_example_step_by_step(jax_world, threshold):
    rows, proposed, added = run_original(threshold, draws())
    final, traj = jax_world(threshold)
    layout = final.layout
    mech = list(layout.mechanisms)
    extra = jax.tree.map(np.asarray, traj.extra)
    np.testing.assert_array_equal(np.asarray(traj.steps), np.arange(1, STEPS + 1))
    for name in "XYZ":
        for field in ("value", "confidence", "count", "mean", "std", "mean_confidence"):
            got = np.asarray(extra[field][:, layout.var(name)] if field == "mean_confidence"
                             else traj.field(name, field))
            want = np.array([np.nan if r[name][field] is None else r[name][field] for r in rows], float)
            if field == "std":  # sqrt(sumsq/n - mean**2): XLA may contract it into FMAs (1 ulp)
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=0, err_msg=f"{name}.{field}")
            else:  # same sums in the same order: bit-identical
                np.testing.assert_array_equal(got, want, err_msg=f"{name}.{field}")
        highest = np.asarray(traj.field(name, "policy")) == 1
        np.testing.assert_array_equal(highest, [r[name]["highest"] for r in rows], err_msg=f"{name} policy")
    np.testing.assert_array_equal(extra["violations"], [r["violations"] for r in rows])
    np.testing.assert_array_equal(extra["enabled"][:, mech.index("emergency")], [r["emergency"] for r in rows])
    # which mechanisms proposed at each step
    want = np.zeros((STEPS, len(mech)), bool)
    for t, name in proposed:
        want[t, mech.index(name)] = True
    np.testing.assert_array_equal(extra["proposed"], want)
    # the scenario did what it is meant to do (when the threshold is reachable)
    if added:
        first = added[0]
        assert first < REMOVE_AT
        em = want[:, mech.index("emergency")]
        np.testing.assert_array_equal(np.flatnonzero(em), np.arange(first + 1, REMOVE_AT))
        assert int(final.violations("safety")) >= 1
    else:
        assert int(final.violations("safety")) == 0 and not want[:, mech.index("emergency")].any()


def test_documented_output(jax_world):
    """With the docstring's own draws, both engines print what the docstring says."""
    rows, _, added = run_original(700000.0, draws())
    final, _ = jax_world(700000.0)
    # the docstring prints "Step 68..80: Mechanism has been added." (added at the RUNTIME of step 67)
    assert added == [67]
    documented = {"X": (35.499546845738266, 0.6239227647681721),
                  "Y": (95.6222768274126, 0.5870536688252231),
                  "Z": (12.311591567968035, 0.6060587403984868)}
    for name, (value, confidence) in documented.items():
        assert rows[-1][name]["value"] == value
        assert rows[-1][name]["mean_confidence"] == confidence
        assert float(final.value(name)) == value
        assert float(final.stats(name).confidence) == confidence
