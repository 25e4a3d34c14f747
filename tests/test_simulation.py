"""The Simulation shell: the same numbers as the pure core, history, checkpoints,
reset, and errors raised with names."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela_jax as pj


def test_seed_means_jax_random_key(sir):
    sim = pj.Simulation(sir, seed=7)
    sim.run(steps=8)
    state, traj = sir.run(sir.init(jax.random.key(7)), 8)
    for name in ("S", "I", "R"):
        assert sim.value(name) == float(state.value(name))
        assert sim.confidence(name) == float(state.confidence(name))
        hist = sim.history(name)
        assert hist.shape == (9,)
        assert hist[0] == float(sir.init(jax.random.key(7)).value(name))  # the initial record first
        np.testing.assert_array_equal(hist[1:], np.asarray(traj.value(name)))
        np.testing.assert_array_equal(sim.confidence_history(name)[1:], np.asarray(traj.confidence(name)))
    assert sim.step == 8 and float(sim.stats("I").mean) == float(state.stats("I").mean)


def test_runs_continue_and_chunks_do_not_matter(sir):
    whole = pj.Simulation(sir, seed=1)
    whole.run(steps=8)
    parts = pj.Simulation(sir, seed=1, chunk=4)  # 4 + 4
    parts.run(steps=8)
    np.testing.assert_array_equal(whole.history("I"), parts.history("I"))
    whole.run(steps=8)
    for _ in range(2):
        parts.run(steps=4)
    np.testing.assert_array_equal(whole.history("I"), parts.history("I"))
    assert whole.step == parts.step == 16


def test_checkpoint_restore_and_reset(sir):
    sim = pj.Simulation(sir, seed=2)
    sim.run(steps=4)
    cp = sim.create_checkpoint()
    sim.run(steps=4)
    after = sim.history("S").copy()
    sim.restore_checkpoint(cp)
    assert sim.step == 4 and sim.history("S").shape == (5,)
    np.testing.assert_array_equal(sim.history("S"), after[:5])
    sim.run(steps=4)
    np.testing.assert_array_equal(sim.history("S"), after)  # replays bit-identically
    sim.reset()
    fresh = pj.Simulation(sir, seed=2)
    assert sim.step == 0 and sim.history("S").shape == (1,)
    sim.run(steps=4)
    fresh.run(steps=4)
    np.testing.assert_array_equal(sim.history("I"), fresh.history("I"))
    with pytest.raises(TypeError, match="create_checkpoint"):
        sim.restore_checkpoint(sim.state)


def test_a_checkpoint_of_another_model_is_refused(sir):
    other = pj.Executive(variables=[pj.Variable("X")], mechanisms=[])
    cp = pj.Simulation(other).create_checkpoint()
    with pytest.raises(ValueError, match="another model"):
        pj.Simulation(sir).restore_checkpoint(cp)


class Spiky(pj.Mechanism):
    """Proposes 1.0, or NaN at step ``bad_step``."""

    bad_step: int

    def transform(self, values, key):
        v = jnp.where(values.step == self.bad_step, jnp.nan, 1.0)
        return {"X": pj.VariableRecord(v, confidence=0.5)}


class Fine(pj.Mechanism):
    def transform(self, values, key):
        return {"X": pj.VariableRecord(2.0, confidence=0.5)}


def test_invalid_proposals_raise_with_the_mechanism_and_first_step():
    X = pj.Variable("X", init=0.0)
    ex = pj.Executive(variables=[X], mechanisms=[Fine(writes=[X], name="fine"),
                                                 Spiky(bad_step=3, writes=[X], name="spiky")])
    sim = pj.Simulation(ex)
    sim.run(steps=3)  # steps 0..2 are fine
    with pytest.raises(pj.InvalidProposalError, match=r"'spiky'.*first at step 3") as err:
        sim.run(steps=4)
    assert err.value.mechanism == "spiky" and err.value.step == 3 and err.value.count == 1
    # the run completed; the NaN was masked out, "fine" decided step 3 alone
    assert sim.step == 7 and sim.history("X")[4] == 2.0 and sim.history("X")[5] == 1.5


def test_out_of_domain_events_warn():
    X = pj.Variable("X", pj.RangeDomain(0.0, 1.0), init=0.0)
    sim = pj.Simulation(pj.Executive(variables=[X], mechanisms=[Fine(writes=[X], name="fine")]))
    with pytest.warns(RuntimeWarning, match=r"outside the domain of \['X'\]"):
        sim.run(steps=2)
    assert sim.value("X") == 2.0  # "commit": kept, flagged


def test_bad_arguments():
    with pytest.raises(TypeError, match="needs an Executive"):
        pj.Simulation("model")
    sim = pj.Simulation(pj.Executive(variables=[pj.Variable("X")], mechanisms=[]))
    with pytest.raises(ValueError, match="non-negative int"):
        sim.run(steps=-2)


class Inc(pj.Mechanism):
    """X + 1 at every step, with full confidence: after step t, X = t + 1."""

    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["X"] + 1.0, confidence=1.0)}


def _capped(phase):
    X = pj.Variable("X", init=0.0)
    cap = pj.SystemInvariant("cap", lambda s: s["X"] < 2.5, phase=phase,
                             severity=pj.InvariantSeverity.FATAL, message="X passed 2.5")
    return pj.Executive(variables=[X], mechanisms=[Inc(writes=[X], name="inc")], invariants=[cap])


# By hand: X = 0, 1, 2, 3 after steps -, 0, 1, 2. A POST check sees X = 3 after the commit
# of step 2 and halts there; a PRE check sees it before anything runs at step 3. Either
# way the values committed are 0, 1, 2, 3 and nothing after.
@pytest.mark.parametrize("phase, halted_at", [(pj.InvariantPhase.POST, 2), (pj.InvariantPhase.PRE, 3)])
@pytest.mark.parametrize("chunk", [1000, 2, 1])
def test_history_stops_at_a_fatal_halt_whatever_the_chunk(phase, halted_at, chunk):
    sim = pj.Simulation(_capped(phase), chunk=chunk)
    seen = []
    sim.on("post_step", seen.append)
    with pytest.raises(pj.InvariantViolationFatal, match=f"'cap' violated at step {halted_at}"):
        sim.run(steps=10)
    np.testing.assert_array_equal(sim.history("X"), [0.0, 1.0, 2.0, 3.0])
    assert len(sim.confidence_history("X")) == 4 == int(sim.stats("X").count)
    assert seen == [0, 1, 2]  # events of the steps that committed, none after the halt


def test_a_halted_simulation_raises_again_naming_the_invariant_and_step():
    sim = pj.Simulation(_capped(pj.InvariantPhase.POST))
    errors = []
    sim.on("error", lambda e, step: errors.append((type(e).__name__, step)))
    with pytest.raises(pj.InvariantViolationFatal):
        sim.run(steps=10)
    state = sim.state
    for steps in (5, 1):
        with pytest.raises(pj.InvariantViolationFatal, match=r"'cap' violated at step 2: .*halted.*reset") as err:
            sim.run(steps=steps)
        assert err.value.name == "cap" and err.value.step == 2
    assert sim.state is state and len(sim.history("X")) == 4  # nothing ran
    assert len(errors) == 3
    sim.reset()
    sim.run(steps=2)  # a reset world runs again
    assert sim.value("X") == 2.0


def test_a_halted_simulation_still_names_its_invariant_after_a_structure_change():
    sim = pj.Simulation(_capped(pj.InvariantPhase.POST))
    with pytest.raises(pj.InvariantViolationFatal):
        sim.run(steps=10)
    # the halting invariant keeps its name when others are added before or after it
    sim.add_invariant(pj.SystemInvariant("watch", lambda s: s["X"] < 100.0))
    with pytest.raises(pj.InvariantViolationFatal, match=r"'cap' violated at step 2"):
        sim.run(steps=1)
    sim.remove_invariant("cap")
    assert bool(sim.state.halted) and int(sim.state.halted_by) == -1
    with pytest.raises(pj.InvariantViolationFatal, match=r"'<removed>' violated at step 2: .*was removed"):
        sim.run(steps=1)


def test_restoring_a_checkpoint_taken_before_a_structure_change(sir):
    """The checkpoint brings back the mechanisms (and their flags) it was taken with, as
    the original does; the replay equals a simulation that never changed."""
    X = pj.Variable("X", init=0.0)
    ex = pj.Executive(variables=[X], mechanisms=[Inc(writes=[X], name="inc"),
                                                 Fine(writes=[X], name="fine", enabled=False)])
    sim = pj.Simulation(ex, seed=3)
    sim.run(steps=3)
    cp = sim.create_checkpoint()
    sim.add_mechanism(Fine(writes=[X], name="late"))
    sim.state = sim.state.enable("fine")
    sim.run(steps=3)
    assert sim.state.layout.mechanisms == ("inc", "fine", "late")
    sim.restore_checkpoint(cp)
    assert sim.executive is ex and sim.state.layout.mechanisms == ("inc", "fine")
    assert np.asarray(sim.state.enabled).tolist() == [True, False]
    sim.run(steps=3)
    plain = pj.Simulation(ex, seed=3)
    plain.run(steps=6)
    np.testing.assert_array_equal(sim.history("X"), plain.history("X"))
    np.testing.assert_array_equal(sim.history("X"), [0, 1, 2, 3, 4, 5, 6])
    # a checkpoint of another simulation with other mechanisms is still refused
    other = pj.Simulation(ex.add_mechanism(Fine(writes=[X], name="late")))
    with pytest.raises(ValueError, match="another model"):
        other.restore_checkpoint(cp)
