"""Governance inside the step: phases, severities, hooks, aux, recovery, audit, events."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela_jax as pj

P, S = pj.InvariantPhase, pj.InvariantSeverity


class Const(pj.Mechanism):
    """Proposes a fixed value with a fixed confidence."""

    value: float
    conf: float = 0.5

    def transform(self, values, key):
        return {self.writes[0]: pj.VariableRecord(jnp.asarray(self.value), confidence=self.conf)}


class Step(pj.Mechanism):
    """Proposes previous value + delta."""

    delta: float
    conf: float = 0.5

    def transform(self, values, key):
        name = self.writes[0]
        return {name: pj.VariableRecord(values[name] + self.delta, confidence=self.conf)}


def var(name="X", **kw):
    kw.setdefault("init", 0.0)
    kw.setdefault("alternatives", (pj.HighestConfidencePolicy(),))
    return pj.Variable(name, pj.RealDomain(), **kw)


def values(ex, state, steps):
    _, traj = ex.run(state, steps)
    return np.asarray(traj.value("X"))


# ---- timing of structural changes ------------------------------------------------
def test_mechanism_enabled_in_pre_step_proposes_that_step():
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Const(value=1.0, writes=[X], name="a"), Const(value=3.0, writes=[X], name="b")],
        pre_step=lambda s, t: s.enable("b", when=t == 2),
    )
    got = values(ex, ex.init(jax.random.key(0)).disable("b"), 4)
    np.testing.assert_allclose(got, [1.0, 1.0, 2.0, 2.0])  # mean of 1 and 3 from step 2 on


@pytest.mark.parametrize("phase, first", [(P.PRE, 2), (P.RUNTIME, 3), (P.POST, 3)])
def test_enable_timing_by_phase(phase, first):
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Const(value=1.0, writes=[X], name="a"), Const(value=3.0, writes=[X], name="b")],
        invariants=[pj.SystemInvariant("at2", lambda v: v.step != 2, lambda s, v: s.enable("b"),
                                       phase=phase, severity=S.INFO)],
    )
    got = values(ex, ex.init(jax.random.key(0)).disable("b"), 5)
    expected = [1.0 if t < first else 2.0 for t in range(5)]
    np.testing.assert_allclose(got, expected)


@pytest.mark.parametrize("phase, first", [(P.PRE, 2), (P.RUNTIME, 2), (P.POST, 3)])
def test_policy_switch_timing_by_phase(phase, first):
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Const(value=1.0, conf=0.9, writes=[X], name="a"), Const(value=3.0, conf=0.1, writes=[X], name="b")],
        invariants=[pj.SystemInvariant("at2", lambda v: v.step != 2,
                                       lambda s, v: s.set_policy("X", pj.HighestConfidencePolicy),
                                       phase=phase, severity=S.INFO)],
    )
    got = values(ex, ex.init(jax.random.key(0)), 5)
    expected = [2.0 if t < first else 1.0 for t in range(5)]
    np.testing.assert_allclose(got, expected)


def test_set_policy_rejects_undeclared_policy():
    X = pj.Variable("X", init=0.0)
    ex = pj.Executive(variables=[X], mechanisms=[Const(value=1.0, writes=[X])])
    with pytest.raises(pj.ModelError, match="candidate policies"):
        ex.init(jax.random.key(0)).set_policy("X", pj.MedianPolicy)


# ---- severities -------------------------------------------------------------------
def test_info_and_warning_are_counted_with_steps():
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Step(delta=1.0, writes=[X], reads=[X])],
        invariants=[
            pj.SystemInvariant("over3", lambda v: v["X"] <= 3, phase=P.POST, severity=S.INFO),
            pj.SystemInvariant("over5", lambda v: v["X"] <= 5, phase=P.PRE, severity=S.WARNING),
        ],
    )
    s, _ = ex.run(ex.init(jax.random.key(0)), 8)
    # POST sees values 1..8 at steps 0..7: violated at steps 3..7 (values 4..8)
    assert int(s.violations("over3")) == 5
    assert int(s.violation_first_step[0]) == 3 and int(s.violation_last_step[0]) == 7
    # PRE sees previous values 0..7 at steps 0..7: violated at steps 6, 7
    assert int(s.violations("over5")) == 2 and int(s.violation_first_step[1]) == 6
    assert not bool(s.safe_mode) and not bool(s.halted)


def test_critical_switches_safe_mode_and_stops_unsafe_mechanisms():
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Step(delta=1.0, writes=[X], reads=[X], name="safe"),
                    Step(delta=10.0, writes=[X], reads=[X], name="risky", run_in_safe_mode=False)],
        invariants=[pj.SystemInvariant("cap", lambda v: v["X"] < 10, phase=P.POST, severity=S.CRITICAL)],
    )
    got = values(ex, ex.init(jax.random.key(0)), 4)
    # step 0: mean(1, 10) = 5.5; step 1: mean(6.5, 15.5) = 11 -> critical; then only +1
    np.testing.assert_allclose(got, [5.5, 11.0, 12.0, 13.0])


@pytest.mark.parametrize("phase", [P.PRE, P.RUNTIME, P.POST])
def test_fatal_halts_and_freezes_the_world(phase):
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Step(delta=1.0, writes=[X], reads=[X])],
        invariants=[pj.SystemInvariant("stop", lambda v: v.step != 3, phase=phase, severity=S.FATAL,
                                       message="stop at 3")],
    )
    s, traj = ex.run(ex.init(jax.random.key(0)), 6)
    got = np.asarray(traj.value("X"))
    committed = 4.0 if phase is P.POST else 3.0  # POST: step 3's commit is kept
    np.testing.assert_allclose(got, [1, 2, 3] + [committed] * 3)
    assert bool(s.halted) and int(s.halted_at) == 3 and int(s.halted_by) == 0
    assert int(s.step) == 3  # the halting step is not counted as done
    assert int(s.stats("X").count) == int(committed) + 1
    with pytest.raises(pj.InvariantViolationFatal, match="'stop' violated at step 3: stop at 3"):
        pj.Simulation(ex, seed=0).run(6)


def test_soft_fatal_is_only_counted():
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Step(delta=1.0, writes=[X], reads=[X])],
        invariants=[pj.SystemInvariant("soft", lambda v: v.step != 1, phase=P.POST, severity=S.FATAL,
                                       softness=pj.InvariantSoftness.SOFT)],
    )
    s, _ = ex.run(ex.init(jax.random.key(0)), 4)
    assert not bool(s.halted) and int(s.violations("soft")) == 1 and float(s.value("X")) == 4.0


def test_each_scenario_halts_on_its_own_under_vmap():
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Step(delta=1.0, writes=[X], reads=[X])],
        invariants=[pj.SystemInvariant("cap", lambda v: v["X"] < 5, phase=P.POST, severity=S.FATAL)],
    )
    inits = jnp.asarray([0.0, 2.0, 10.0])
    run = jax.vmap(lambda x0: ex.run(ex.init(jax.random.key(0), {"X": x0}), 6))
    s, traj = run(inits)
    for row, x0 in enumerate([0.0, 2.0, 10.0]):
        x, expect = x0, []
        halted = False
        for _ in range(6):
            if not halted:
                x += 1
                halted = x >= 5
            expect.append(x)
        np.testing.assert_allclose(np.asarray(traj.value("X"))[row], expect)
    np.testing.assert_array_equal(np.asarray(s.halted), [True, True, True])
    np.testing.assert_array_equal(np.asarray(s.halted_at), [4, 2, 0])


# ---- hooks, aux, per-scenario invariants ---------------------------------------------
def test_hooks_get_the_global_step_and_set_commits_a_record():
    X, Y = var("X"), var("Y")
    seen = []
    ex = pj.Executive(
        variables=[X, Y],
        mechanisms=[Step(delta=1.0, writes=[X], reads=[X])],
        pre_step=lambda s, t: s.set("Y", t * 10.0),
        post_step=lambda s, t: s.with_aux(s.aux + t),
        aux=jnp.asarray(0.0),
    )
    s = ex.init(jax.random.key(0))
    s, _ = ex.run(s, 3)
    s, _ = ex.run(s, 2)  # global step continues: hooks saw 0..4
    assert float(s.aux) == 0 + 1 + 2 + 3 + 4
    assert float(s.value("Y")) == 40.0
    st = s.stats("Y")  # init + 5 sets; Y is never resolved (no mechanism writes it)
    assert int(st.count) == 6 and float(st.sum) == 0 + 0 + 10 + 20 + 30 + 40
    rec = s.recent("Y")
    np.testing.assert_array_equal(np.asarray(rec["source"])[np.asarray(rec["valid"])], [pj.SOURCE_EXTERNAL] * 6)
    del seen


def test_aux_state_machine_differs_per_scenario():
    """Count consecutive steps above a threshold in aux; disable the mechanism after 3."""
    X = var()

    def watch(state, t):
        above = state.value("X") > state.aux["threshold"]
        run = jnp.where(above, state.aux["run"] + 1, 0)
        state = state.with_aux({**state.aux, "run": run})
        return state.disable("up", when=run >= 3)

    ex = pj.Executive(
        variables=[X],
        mechanisms=[Step(delta=1.0, writes=[X], reads=[X], name="up")],
        post_step=watch,
        aux={"threshold": jnp.asarray(0.0), "run": jnp.asarray(0, jnp.int32)},
    )
    thresholds = jnp.asarray([2.0, 5.0])

    def one(th):
        s = ex.init(jax.random.key(0), aux={"threshold": th, "run": jnp.asarray(0, jnp.int32)})
        return ex.run(s, 10)

    _, traj = jax.vmap(one)(thresholds)
    got = np.asarray(traj.value("X"))
    for row, th in enumerate([2.0, 5.0]):
        x, run, on, expect = 0.0, 0, True, []
        for _ in range(10):
            if on:
                x += 1
            run = run + 1 if x > th else 0
            on = on and run < 3
            expect.append(x)
        np.testing.assert_allclose(got[row], expect)


def test_active_invariants_are_per_scenario_data():
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Step(delta=1.0, writes=[X], reads=[X])],
        invariants=[pj.SystemInvariant("a", lambda v: v["X"] < 2, phase=P.POST, severity=S.INFO),
                    pj.SystemInvariant("b", lambda v: v["X"] < 2, phase=P.POST, severity=S.INFO)],
    )
    s, _ = ex.run(ex.init(jax.random.key(0), active_invariants=["b"]), 5)
    assert int(s.violations("a")) == 0 and int(s.violations("b")) == 4
    s, _ = ex.run(ex.init(jax.random.key(0), active_invariants={"b": False}), 5)
    assert int(s.violations("a")) == 4 and int(s.violations("b")) == 0


def test_handler_with_wrong_output_fails_at_build():
    X = var()
    with pytest.raises(pj.ModelError, match="on_violation handler of invariant 'bad'"):
        pj.Executive(
            variables=[X],
            mechanisms=[Step(delta=1.0, writes=[X], reads=[X])],
            invariants=[pj.SystemInvariant("bad", lambda v: v["X"] < 2, lambda s, v: {"not": "a state"})],
        )
    with pytest.raises(pj.ModelError, match="one boolean"):
        pj.Executive(
            variables=[X],
            mechanisms=[Step(delta=1.0, writes=[X], reads=[X])],
            invariants=[pj.SystemInvariant("vec", lambda v: jnp.ones(3) > 0)],
        )


# ---- recovery ---------------------------------------------------------------------
class Flaky(pj.Mechanism):
    """Fails (NaN) with probability p, else proposes previous + 1."""

    p: float

    def transform(self, values, key):
        bad = jax.random.uniform(key) < self.p
        return {"X": pj.VariableRecord(jnp.where(bad, jnp.nan, values["X"] + 1.0), confidence=0.5)}


def test_retries_use_fresh_draws_and_rollback_keeps_the_world():
    X = var()
    ex = pj.Executive(variables=[X], mechanisms=[Flaky(p=0.5, writes=[X], reads=[X])],
                      recovery=pj.Recovery(retries=3), failure_log_size=64)
    s, traj = ex.run(ex.init(jax.random.key(1)), 30)
    log = s.failures.entries(s.layout)
    # replay by hand: attempt r of step t uses fold_in(fold_in(fold_in(key, t), r?), id)
    key = jax.random.key(1)
    mid = pj.Mechanism.__dict__  # noqa: F841 - id comes from the name
    from procela_jax._mechanism import stable_id

    x, expect, expect_log = 0.0, [], []
    for t in range(30):
        step_key = jax.random.fold_in(key, t)
        for r in range(4):
            k = step_key if r == 0 else jax.random.fold_in(step_key, r)
            bad = bool(jax.random.uniform(jax.random.fold_in(k, stable_id("Flaky"))) < 0.5)
            if not bad:
                break
        if r > 0 or bad:
            expect_log.append((t, r + 1, bad))
        if not bad:
            x += 1
        expect.append(x)
    np.testing.assert_allclose(np.asarray(traj.value("X")), expect)
    assert [(e["step"], e["attempts"], e["rolled_back"]) for e in log] == expect_log
    assert all(e["kind"] == "invalid proposal" and e["who"] == "Flaky" for e in log)
    assert int(s.step) == 30


def test_rollback_invariant_rolls_back_the_step():
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Step(delta=1.0, writes=[X], reads=[X])],
        invariants=[pj.SystemInvariant("le3", lambda v: v["X"] <= 3, phase=P.POST, severity=S.WARNING, rollback=True)],
        recovery=pj.Recovery(retries=0),
    )
    s, traj = ex.run(ex.init(jax.random.key(0)), 6)
    np.testing.assert_allclose(np.asarray(traj.value("X")), [1, 2, 3, 3, 3, 3])
    assert int(s.stats("X").count) == 4  # init + three kept commits
    assert int(s.violations("le3")) == 3 and int(s.failures.count) == 3
    assert [e["who"] for e in s.failures.entries(s.layout)] == ["le3"] * 3


# ---- audit ------------------------------------------------------------------------
def test_audit_records_every_hypothesis_and_the_winner():
    X = var(policy=pj.HighestConfidencePolicy(), alternatives=())

    class Noisy(pj.Mechanism):
        def transform(self, values, key):
            k1, k2 = jax.random.split(key)
            return {"X": pj.VariableRecord(jax.random.normal(k1), confidence=jax.random.uniform(k2))}

    mechs = [Noisy(writes=[X], name="n1"), Noisy(writes=[X], name="n2"), Noisy(writes=[X], name="n3")]
    ex = pj.Executive(variables=[X], mechanisms=mechs, audit=True)
    _, traj = ex.run(ex.init(jax.random.key(3)), 20, save=pj.Save(audit=True))
    h = traj.hypotheses("X")
    conf = np.asarray(h["confidences"])
    vals = np.asarray(h["values"])
    winner = conf.argmax(axis=1)
    np.testing.assert_array_equal(np.asarray(h["source"]), winner)
    np.testing.assert_allclose(np.asarray(traj.value("X")), vals[np.arange(20), winner])
    assert conf.shape == (20, 3) and np.asarray(h["mask"]).all()


def test_audit_requires_an_auditing_executive():
    X = var()
    ex = pj.Executive(variables=[X], mechanisms=[Step(delta=1.0, writes=[X], reads=[X])])
    with pytest.raises(pj.ModelError, match="audit=True"):
        ex.run(ex.init(jax.random.key(0)), 2, save=pj.Save(audit=True))


# ---- events -----------------------------------------------------------------------
def test_events_arrive_in_step_order_and_handler_errors_are_raised():
    X = var()
    ex = pj.Executive(variables=[X], mechanisms=[Step(delta=1.0, writes=[X], reads=[X], name="up"),
                                                 Step(delta=3.0, writes=[X], reads=[X], name="up3")])
    sim = pj.Simulation(ex, seed=0, chunk=3)
    log = []
    sim.on("pre_step", lambda t: log.append(("pre", t)))
    sim.on("post_mechanism", lambda m, t: log.append((m, t)))
    sim.on("post_resolution", lambda v, t: log.append(("res", v["X"], t)))
    sim.on("post_step", lambda t: log.append(("post", t)))
    sim.run(4)
    expect = []
    for t in range(4):
        expect += [("pre", t), ("up", t), ("up3", t), ("res", 2.0 * (t + 1), t), ("post", t)]
    assert log == expect
    errors = []
    sim.on("error", lambda e, t: errors.append(type(e).__name__))
    sim.on("post_step", lambda t: 1 / 0)
    with pytest.raises(pj.EventHandlerError, match="ZeroDivisionError"):
        sim.run(2)
    assert errors == ["ZeroDivisionError"] and sim.step == 6  # the steps already run are kept
    with pytest.raises(ValueError, match="unknown event"):
        sim.on("post_everything", print)


# ---- build-time restructuring ---------------------------------------------------------
def test_add_and_remove_mechanism_carry_the_state_over():
    X = var()
    ex = pj.Executive(variables=[X], mechanisms=[Step(delta=1.0, writes=[X], reads=[X], name="up")])
    s, _ = ex.run(ex.init(jax.random.key(0)), 5)
    ex2 = ex.add_mechanism(Step(delta=3.0, writes=[X], reads=[X], name="up3"))
    s2 = ex2.carry_over(s)
    assert int(s2.stats("X").count) == 6 and float(s2.value("X")) == 5.0 and int(s2.step) == 5
    s2, traj = ex2.run(s2, 2)
    np.testing.assert_allclose(np.asarray(traj.value("X")), [7.0, 9.0])
    ex3 = ex2.remove_mechanism("up")
    s3, traj = ex3.run(ex3.carry_over(s2), 1)
    assert float(s3.value("X")) == 12.0 and int(s3.stats("X").count) == 9
    with pytest.raises(pj.ModelError, match="duplicate mechanism"):
        ex2.add_mechanism(Step(delta=3.0, writes=[X], reads=[X], name="up3"))


def test_schedule_decides_which_mechanisms_run():
    X = var()
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Const(value=1.0, writes=[X], name="odd"), Const(value=2.0, writes=[X], name="even")],
        schedule=lambda v: {"odd": v.step % 2 == 1, "even": v.step % 2 == 0},
    )
    np.testing.assert_allclose(values(ex, ex.init(jax.random.key(0)), 4), [2.0, 1.0, 2.0, 1.0])


def test_simulation_restructures_and_keeps_history():
    X = var()
    ex = pj.Executive(variables=[X], mechanisms=[Step(delta=1.0, writes=[X], reads=[X], name="up")])
    sim = pj.Simulation(ex, seed=0)
    sim.run(3)
    sim.add_mechanism(Step(delta=3.0, writes=[X], reads=[X], name="up3"))
    sim.run(2)
    sim.remove_mechanism("up3")
    sim.add_invariant(pj.SystemInvariant("cap", lambda v: v["X"] < 9, phase=P.POST, severity=S.INFO))
    sim.run(2)
    np.testing.assert_allclose(sim.history("X"), [0, 1, 2, 3, 5, 7, 8, 9])
    assert int(sim.state.violations("cap")) == 1 and int(sim.stats("X").count) == 8
