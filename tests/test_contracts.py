"""The entry points the issues pin down, called exactly as written there."""

import os

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import procela_jax as pj


class Add(pj.Mechanism):
    def transform(self, values, key):
        a, b = values[self.reads[0]], values[self.reads[1]]
        return {self.writes[0]: pj.VariableRecord(a + b, confidence=jax.random.uniform(key))}


class Growth(pj.Mechanism):
    rate: float

    def transform(self, values, key):
        x = values[self.reads[0]]
        return {self.writes[0]: pj.VariableRecord(x * (1 + self.rate), confidence=0.5)}


class Emergency(pj.Mechanism):
    def transform(self, values, key):
        return {n: pj.VariableRecord(jnp.asarray(0.0), confidence=1.0) for n in self.writes}


def xyz():
    X = pj.Variable("X", pj.RangeDomain(-100.0, 100.0), policy=pj.WeightedVotingPolicy(),
                    alternatives=[pj.HighestConfidencePolicy()], init=1.8)
    Y = pj.Variable("Y", pj.RangeDomain(-100.0, 100.0), init=2.0)
    Z = pj.Variable("Z", pj.RangeDomain(-100.0, 100.0), init=0.5)
    return X, Y, Z


def test_core_contract(tmp_path):
    X, Y, Z = xyz()
    add = Add(reads=[X, Y], writes=[Z], name="add_z")
    grow = Growth(rate=0.1, reads=[X], writes=[X])
    assert add.reads == ("X", "Y") and add.writes == ("Z",) and grow.name == "Growth"
    ex = pj.Executive(variables=[X, Y, Z], mechanisms=[add, grow])
    assert ex.mechanisms[0].name == "add_z" and isinstance(ex.mechanisms[1].rate, jax.Array)
    state = ex.init(jax.random.key(0))
    assert int(state.stats("X").count) == 1
    state = ex.step(state)
    state, traj = ex.run(state, steps=100)
    assert traj.value("X").shape == (100,)
    np.testing.assert_allclose(float(traj.value("X")[0]), 1.8 * 1.1**2, rtol=1e-6)
    assert float(state.value("Z")) == pytest.approx(float(state.value("X")) / 1.1 + 2.0, rel=1e-5)
    assert int(state.step) == 101 and 0 <= float(state.confidence("Z")) <= 1
    assert float(state.stats("Y").mean) == 2.0
    legacy = ex.init(jax.random.PRNGKey(0), init={"X": 3.0})
    assert float(legacy.value("X")) == 3.0
    sim = pj.Simulation(ex, seed=0)
    sim.run(steps=10)
    assert sim.value("X") == pytest.approx(float(ex.run(ex.init(jax.random.key(0)), 10)[0].value("X")))
    assert sim.history("X").shape == (11,)
    cp = sim.create_checkpoint()
    sim.run(steps=3)
    sim.restore_checkpoint(cp)
    assert sim.step == 10
    sim.reset()
    assert sim.step == 0
    path = os.path.join(tmp_path, "world.ckpt")
    pj.save_checkpoint(path, state)
    loaded = pj.load_checkpoint(path, ex)
    assert float(loaded.value("X")) == float(state.value("X"))
    with pytest.raises(FileExistsError):
        pj.save_checkpoint(path, state)
    pj.save_checkpoint(path, state, overwrite=True)
    assert issubclass(pj.CheckpointError, ValueError)


def test_governance_contract():
    X, Y, Z = xyz()
    emergency = Emergency(reads=[], writes=[X, Y, Z], name="emergency", enabled=False)

    def calm(snap):
        snap.value("X"), snap.confidence("X"), snap.step, snap.violations("safety")
        st = snap.stats("X")
        st.count, st.mean, st.std, st.min, st.max, st.ewma, st.confidence
        snap.hypotheses("X")
        return snap.stats("X").mean <= 75.0

    def respond(state, snap):
        return state.enable("emergency").set_policy("X", pj.HighestConfidencePolicy())

    inv = pj.SystemInvariant("safety", condition=calm, on_violation=respond,
                             phase=pj.InvariantPhase.RUNTIME, severity=pj.InvariantSeverity.WARNING,
                             message="X too high")
    grow = Growth(rate=0.5, reads=[X], writes=[X])
    ex = pj.Executive(variables=[X, Y, Z], mechanisms=[grow, emergency], invariants=[inv],
                      pre_step=lambda state, step: state.disable("emergency", when=step == 80),
                      aux={"note": jnp.asarray(0.0)})
    state = ex.init(jax.random.key(0))
    assert not bool(state.is_enabled("emergency"))
    state, traj = ex.run(state, 100)
    assert int(state.violations("safety")) > 0 and not bool(state.halted)
    assert int(state.policy_index("X")) == 1
    assert not bool(state.is_enabled("emergency"))  # removed at step 80
    fatal = pj.SystemInvariant("never", lambda s: s.step < 3, severity=pj.InvariantSeverity.FATAL)
    with pytest.raises(pj.InvariantViolationFatal, match="never"):
        pj.Simulation(ex.add_invariant(fatal), seed=0).run(10)


def test_sweep_contract():
    ex = pj.demos.sir.make_executive()
    n = 8
    betas = jnp.linspace(0.2, 0.4, n)
    res = pj.sweep(ex, steps=30, seeds=range(n), init={"I": jnp.linspace(1, 50, n)},
                   params={"sir.beta": betas}, save_every=1, chunk_size=None, progress=False)
    assert res.value("I").shape == (n, 30)
    assert res.final.values.shape == (n, 3)
    row = 3
    single = ex.replace({"sir.beta": betas[row]})
    _, traj = single.run(single.init(jax.random.key(row), init={"I": float(jnp.linspace(1, 50, n)[row])}), 30)
    np.testing.assert_allclose(res.value("I")[row], traj.value("I"), rtol=1e-5)
    with pytest.raises(ValueError):
        pj.sweep(ex, steps=5, seeds=range(3), params={"sir.beta": betas})


def test_calibrate_contract():
    ex = pj.demos.sir.make_executive().replace({"seasonal.weight": 0.0})
    truth = ex.replace({"sir.beta": 0.35, "sir.gamma": 0.12})
    _, traj = truth.run(truth.init(jax.random.key(0)), 40)
    steps_observed = np.arange(0, 40, 4)
    values_observed = np.asarray(traj.value("I"))[steps_observed]
    fitted, history = pj.calibrate(ex, data={"I": (steps_observed, values_observed)},
                                   params=["sir.beta", "sir.gamma"], steps=40,
                                   optimizer=optax.adam(0.02), iterations=30, seed=0, progress=False)
    assert len(history.loss) == 30 and history.loss[-1] < history.loss[0]
    assert isinstance(fitted.mechanisms[0].beta, jax.Array)
    key = jax.random.key(0)
    grads = eqx.filter_grad(lambda e: e.run(e.init(key), steps=20)[0].value("I"))(ex)
    assert np.isfinite(float(grads.mechanism("sir").beta))


def test_amr_contract_jax_noise():
    from procela_jax.demos import amr

    res = amr.run_protocol(seeds=range(2), steps=20, noise="jax")
    assert res.settings == ("none", "fragility", "coverage", "probe", "all")
    assert res.mean_error.shape == (5, 2) and res.final_diff.shape == (5, 2)
    assert np.all(np.isfinite(res.mean_error))
