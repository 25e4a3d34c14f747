"""Side by side with the original ``procela`` in float64: the same model built in
both libraries, with the same hypotheses fed in, gives the same values,
confidences and statistics at every step.

Randomness is injected: the confidences (and noise) are drawn once in numpy or
Python's ``random`` and given to both libraries (ours reads them from a
mechanism parameter array indexed by ``values.step``).

1. The executive docstring world of the original (X, Y, Z; three add mechanisms
   and a divide-by-2 mechanism; a RUNTIME safety invariant that brings in an
   emergency mechanism and switches every policy to highest confidence; the
   emergency mechanism removed before step 80). With the docstring's own draws
   (``random.seed(42)``) the final lines equal the documented output.
2. The same world with other policies (weighted confidence; weighted voting with
   per-hypothesis weights, the original's ``metadata["weight"]``).
3. The SIR demo's two theories with the seasonal noise injected.
"""

import random

import jax
import jax.numpy as jnp
import numpy as np
import procela as P
import pytest
from conftest import quiet_logger

import procela_jax as pj

FIELDS = ("value", "confidence", "mean", "std", "ewma", "min", "max", "count")
STEPS = 100
THRESHOLD = 700000.0  # the docstring's SafetyInvariant(threshold=700000.0)
DOCUMENTED = {  # the docstring's printed output: name, value, history-mean confidence
    "X": (35.499546845738266, 0.6239227647681721),
    "Y": (95.6222768274126, 0.5870536688252231),
    "Z": (12.311591567968035, 0.6060587403984868),
}
INIT = {"X": 1.8, "Y": -0.5, "Z": 9.2}


def docstring_draws(steps=STEPS):
    """The docstring's ``random.uniform(0, 1)`` calls, in execution order per step:
    add->Z, add->Y, add->X, then divide for X, Y, Z (the emergency mechanism draws none)."""
    state = random.getstate()
    try:
        random.seed(42)
        return np.asarray([[random.uniform(0.0, 1.0) for _ in range(6)] for _ in range(steps)])
    finally:
        random.setstate(state)


# ---- the original ----------------------------------------------------------------------
def run_original(conf, weights=None, policies=None, governance=True, steps=STEPS):
    """Build and run the world in the original; returns per-step rows and the variables."""
    policies = policies or {n: P.WeightedVotingPolicy for n in "XYZ"}
    V = {n: P.Variable(n, P.RangeDomain(-100.0, 100.0), policy=policies[n]()) for n in "XYZ"}
    for n, v in V.items():
        v.init(P.VariableRecord(INIT[n], confidence=1.0))
    clock = {}

    def record(value, j):
        t = clock["ex"].step_index()
        meta = {} if weights is None else {"weight": float(weights[t, j])}
        return P.VariableRecord(value, confidence=float(conf[t, j]), metadata=meta)

    class Add(P.Mechanism):
        def __init__(self, reads, writes, col):
            super().__init__(reads, writes)
            self.col = col

        def transform(self):
            a, b = [v.value for v in self.reads()]
            self.writes()[0].add_hypothesis(record(a + b, self.col))

    class Divide(P.Mechanism):
        def transform(self):
            for j, v in enumerate(self.writes()):
                v.add_hypothesis(record(v.value * 0.5, 3 + j))

    class Emergency(P.Mechanism):
        def transform(self):
            for v in self.writes():
                v.add_hypothesis(P.VariableRecord(v.value * 0.3, confidence=1.0))

    X, Y, Z = V["X"], V["Y"], V["Z"]
    ex = P.Executive(
        mechanisms=[Add([X, Y], [Z], 0), Add([X, Z], [Y], 1), Add([Y, Z], [X], 2), Divide([], [X, Y, Z])],
        logger=quiet_logger(),
    )
    clock["ex"] = ex
    emergency = Emergency([], [X, Y, Z])
    added = []

    def condition(snapshot):
        return not any(view.stats.mean > THRESHOLD for view in snapshot.views)

    def handle(violation, snapshot):
        if not added:
            ex.add_mechanism(emergency)
            for v in (X, Y, Z):
                v.policy = P.HighestConfidencePolicy()
            added.append(True)

    if governance:
        ex.add_invariant(P.SystemInvariant("SafetyInvariant", condition=condition, on_violation=handle,
                                           phase=P.InvariantPhase.RUNTIME, message=""))

    def pre_step(executive, step):
        if step == 80 and emergency in executive.mechanisms():
            executive.remove_mechanism(emergency)

    rows = []

    def post_step(executive, step):
        row = {}
        for n, v in V.items():
            s = v.stats
            row[n] = dict(value=v.value, confidence=v.memory.latest()[1].confidence, mean=s.mean(),
                          std=s.std(), ewma=s.ewma, min=s.min, max=s.max, count=s.count,
                          history_confidence=v.confidence)
        rows.append(row)

    ex.run(steps=steps, pre_step=pre_step, post_step=post_step)
    return rows, V


# ---- ours ----------------------------------------------------------------------------
class Add(pj.Mechanism):
    """``a + b`` with the injected confidence (and weight) of the step."""

    conf: jax.Array
    weight: jax.Array

    def transform(self, values, key):
        a, b = values[self.reads[0]], values[self.reads[1]]
        t = values.step
        return {self.writes[0]: pj.VariableRecord(a + b, confidence=self.conf[t], weight=self.weight[t])}


class Divide(pj.Mechanism):
    conf: jax.Array
    weight: jax.Array

    def transform(self, values, key):
        t = values.step
        return {w: pj.VariableRecord(values[w] * 0.5, confidence=self.conf[t, j], weight=self.weight[t, j])
                for j, w in enumerate(self.writes)}


class Emergency(pj.Mechanism):
    def transform(self, values, key):
        return {w: pj.VariableRecord(values[w] * 0.3, confidence=1.0) for w in self.writes}


def safety_condition(view):
    return ~jnp.any(jnp.stack([view.stats(n).mean > THRESHOLD for n in "XYZ"]))


def bring_in_emergency(state, view):
    first = ~state.aux  # the original's "added" flag
    state = state.enable("emergency", when=first)
    for n in "XYZ":
        state = state.set_policy(n, pj.HighestConfidencePolicy, when=first)
    return state.with_aux(jnp.asarray(True))


def remove_emergency(state, step):
    return state.disable("emergency", when=step == 80)


def build_ours(conf, weights=None, policies=None, governance=True):
    policies = policies or {n: pj.WeightedVotingPolicy for n in "XYZ"}
    weights = np.ones_like(conf) if weights is None else weights
    alt = lambda n: () if policies[n] is pj.HighestConfidencePolicy else (pj.HighestConfidencePolicy(),)
    V = {n: pj.Variable(n, pj.RangeDomain(-100.0, 100.0), policy=policies[n](), alternatives=alt(n), init=INIT[n])
         for n in "XYZ"}
    X, Y, Z = V["X"], V["Y"], V["Z"]
    mechanisms = [
        Add(conf=conf[:, 0], weight=weights[:, 0], reads=[X, Y], writes=[Z], name="add_z"),
        Add(conf=conf[:, 1], weight=weights[:, 1], reads=[X, Z], writes=[Y], name="add_y"),
        Add(conf=conf[:, 2], weight=weights[:, 2], reads=[Y, Z], writes=[X], name="add_x"),
        Divide(conf=conf[:, 3:6], weight=weights[:, 3:6], writes=[X, Y, Z], name="divide"),
    ]
    kw = {}
    if governance:
        mechanisms.append(Emergency(writes=[X, Y, Z], name="emergency"))
        kw = dict(
            invariants=[pj.SystemInvariant("SafetyInvariant", safety_condition, bring_in_emergency)],
            pre_step=remove_emergency,
            aux=jnp.asarray(False),
        )
    ex = pj.Executive(variables=[X, Y, Z], mechanisms=mechanisms, **kw)
    state = ex.init(jax.random.key(0))
    if governance:
        state = state.disable("emergency")  # brought in by the invariant
    return ex, state


def run_ours(conf, weights=None, policies=None, governance=True, steps=STEPS):
    ex, state = build_ours(conf, weights, policies, governance)
    assert ex.dtype == "float64"
    return ex.run(state, steps, save=pj.Save(fields=FIELDS))


def assert_same_every_step(traj, final, rows):
    for t, row in enumerate(rows):
        for n in "XYZ":
            for field in FIELDS:
                got = traj.field(n, field)[t]
                want = row[n][field]
                if field == "count":
                    assert int(got) == want, (t, n, field)
                elif want is None:
                    assert np.isnan(float(got)), (t, n, field)
                else:
                    assert float(got) == want, (t, n, field, float(got), want)
    for n in "XYZ":
        assert float(final.stats(n).confidence) == rows[-1][n]["history_confidence"]


# ---- the tests -----------------------------------------------------------------------
def test_docstring_world_reproduces_the_documented_output(x64):
    final, _ = run_ours(docstring_draws())
    for n, (value, confidence) in DOCUMENTED.items():
        assert float(final.value(n)) == value
        assert float(final.stats(n).confidence) == confidence  # the original's Variable.confidence
    # the safety invariant fired from step 67 on (means above 700000); only the first
    # violation brought the emergency mechanism in; it left before step 80
    assert int(final.violations("SafetyInvariant")) == STEPS - 67
    assert not bool(final.is_enabled("emergency"))
    assert int(final.policy_index("X")) == 1
    # out-of-domain values are committed (the original's behaviour) and counted
    assert int(final.domain_violations.sum()) > 0


def test_docstring_world_equals_the_original_step_by_step(x64):
    conf = docstring_draws()
    rows, V = run_original(conf)
    for n, (value, confidence) in DOCUMENTED.items():  # the original itself, as documented
        assert (V[n].value, V[n].confidence) == (value, confidence)
    final, traj = run_ours(conf)
    assert_same_every_step(traj, final, rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_other_draws_and_policies_equal_the_original(x64, seed):
    """Weighted confidence on X, weighted voting with injected weights (some zero,
    some steps all zero) on Y, highest confidence on Z; confidences drawn in numpy
    (with exact zeros and ties on some steps)."""
    rng = np.random.default_rng(seed)
    steps = 60
    conf = rng.uniform(0, 1, (steps, 6))
    conf[rng.uniform(size=(steps, 6)) < 0.1] = 0.0
    conf[::7, 1] = conf[::7, 4]  # ties between add->Y and divide->Y
    conf[5, :] = 0.0  # a step where every confidence is zero
    weights = rng.choice([0.0, 0.25, 1.0, 2.5], (steps, 6))
    weights[9, :] = 0.0  # a step where every weight is zero
    policies_o = {"X": P.WeightedConfidencePolicy, "Y": P.WeightedVotingPolicy, "Z": P.HighestConfidencePolicy}
    policies = {"X": pj.WeightedConfidencePolicy, "Y": pj.WeightedVotingPolicy, "Z": pj.HighestConfidencePolicy}
    rows, _ = run_original(conf, weights, policies_o, governance=False, steps=steps)
    final, traj = run_ours(conf, weights, policies, governance=False, steps=steps)
    assert_same_every_step(traj, final, rows)


# ---- SIR -------------------------------------------------------------------------------
class InjectedSeasonalSIR(pj.demos.sir.SeasonalSIR):
    """The demo's seasonal theory with its randomness injected: ``factor[t]`` is the
    season times the shock, ``conf[t]`` the confidence."""

    factor: jax.Array = None
    conf: jax.Array = None

    def transform(self, values, key):
        s, i, r = values["S"], values["I"], values["R"]
        t = values.step
        infections = jnp.minimum(self.beta * self.factor[t] * s * i / self.population, s)
        recoveries = self.gamma * i
        rec = lambda x: pj.VariableRecord(x, confidence=self.conf[t], weight=self.weight)
        return {"S": rec(s - infections), "I": rec(i + infections - recoveries), "R": rec(r + recoveries)}


def sir_inputs(steps, seed=0, beta=0.3, gamma=0.1, amplitude=0.25, noise=0.1):
    rng = np.random.default_rng(seed)
    season = 1.0 + amplitude * np.cos(2 * np.pi * np.arange(steps) / 365.0)
    factor = season * np.exp(noise * rng.normal(size=steps))
    conf = rng.uniform(0.4, 0.7, steps)
    return factor, conf


def run_original_sir(factor, conf, steps, beta=0.3, gamma=0.1, population=1000.0, infected=10.0):
    V = {n: P.Variable(n, P.RangeDomain(0.0, population), policy=P.WeightedVotingPolicy()) for n in "SIR"}
    V["S"].init(P.VariableRecord(population - infected, confidence=1.0))
    V["I"].init(P.VariableRecord(infected, confidence=1.0))
    V["R"].init(P.VariableRecord(0.0, confidence=1.0))
    clock = {}

    class Deterministic(P.Mechanism):
        def transform(self):
            s, i, r = (V[n].value for n in "SIR")
            infections = beta * s * i / population
            recoveries = gamma * i
            for n, x in zip("SIR", (s - infections, i + infections - recoveries, r + recoveries)):
                V[n].add_hypothesis(P.VariableRecord(x, confidence=0.8, metadata={"weight": 1.0}))

    class Seasonal(P.Mechanism):
        def transform(self):
            t = clock["ex"].step_index()
            s, i, r = (V[n].value for n in "SIR")
            infections = min(beta * float(factor[t]) * s * i / population, s)
            recoveries = gamma * i
            for n, x in zip("SIR", (s - infections, i + infections - recoveries, r + recoveries)):
                V[n].add_hypothesis(P.VariableRecord(x, confidence=float(conf[t]), metadata={"weight": 1.0}))

    vs = list(V.values())
    ex = P.Executive(mechanisms=[Deterministic(vs, vs), Seasonal(vs, vs)], logger=quiet_logger())
    clock["ex"] = ex
    rows = []
    ex.run(steps=steps, post_step=lambda e, i: rows.append(
        {n: (V[n].value, V[n].memory.latest()[1].confidence, V[n].stats.mean(), V[n].stats.std(),
             V[n].stats.ewma, V[n].confidence) for n in "SIR"}))
    return rows


def test_sir_with_injected_noise_equals_the_original(x64):
    steps = 120
    factor, conf = sir_inputs(steps)
    ex = pj.demos.sir.make_executive()
    assert ex.dtype == "float64"
    seasonal = InjectedSeasonalSIR(factor=factor, conf=conf, reads=["S", "I", "R"], writes=["S", "I", "R"],
                                   name="seasonal")
    ex = pj.Executive(variables=ex.variables, mechanisms=[ex.mechanism("sir"), seasonal])
    final, traj = ex.run(ex.init(jax.random.key(0)), steps, save=pj.Save(fields=("value", "confidence", "mean",
                                                                                    "std", "ewma")))
    rows = run_original_sir(factor, conf, steps)
    for t, row in enumerate(rows):
        for n in "SIR":
            value, confidence, mean, std, ewma, _ = row[n]
            got = [float(traj.field(n, f)[t]) for f in ("value", "confidence", "mean", "std", "ewma")]
            # the mechanisms' own arithmetic (beta * s * i / N ...) is compiled by XLA,
            # which may fuse a multiply and an add; allow a few ulps
            np.testing.assert_allclose(got, [value, confidence, mean, std, ewma], rtol=1e-13, atol=0,
                                       err_msg=f"step {t}, {n}")
    for n in "SIR":
        assert float(final.stats(n).confidence) == pytest.approx(rows[-1][n][5], rel=1e-14)
    # the epidemic actually happened (the comparison is not vacuous)
    assert max(r["I"][0] for r in rows) > 100.0
