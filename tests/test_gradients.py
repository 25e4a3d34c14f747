"""Gradients through a run (lax.scan), policy resolution and domain enforcement,
checked against central finite differences in float64.

Each model is built after x64 is switched on (the dtype of an executive is fixed
when it is built). A gradient is taken the plain equinox way,
``eqx.filter_grad(lambda ex: loss(ex.run(ex.init(key), steps)))(ex)``, and each
parameter's entry is compared with ``(f(x + h) - f(x - h)) / 2h`` of the same
jitted forward function, parameters set with ``ex.replace``.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela_jax as pj
from procela_jax.demos.growth import Exponential, Logistic

REL = 1e-4


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _check(ex, loss, params, steps, key=None, remat=False):
    """AD gradient vs central finite differences, parameter by parameter.

    One compiled function gives both (the FD evaluations use its value), so each
    model compiles once.
    """
    key = jax.random.key(3) if key is None else key
    assert ex.dtype == "float64"

    def f(e):
        _, traj = e.run(e.init(key), steps=steps, remat=remat)
        return loss(traj)

    vg = eqx.filter_jit(eqx.filter_value_and_grad(f))
    _, grads = vg(ex)
    value = lambda e: float(vg(e)[0])
    report = {}
    for p in params:
        x = float(ex.get(p))
        h = 1e-6 * max(1.0, abs(x))
        fd = (value(ex.replace({p: x + h})) - value(ex.replace({p: x - h}))) / (2 * h)
        ad = float(grads.get(p))
        report[p] = (ad, fd)
        assert abs(fd) > 1e-8, f"{p}: the finite-difference gradient is ~0; the check would be empty"
        assert abs(ad - fd) <= REL * abs(fd), f"{p}: AD {ad!r} vs FD {fd!r} (rel {abs(ad - fd) / abs(fd):.2e})"
    return grads


# ---------------------------------------------------------------- model 1: the SIR demo
def test_sir_demo_two_theories_weighted_voting():
    """Two competing theories (one noisy, same key each time) resolved by weighted
    voting, clipped to [0, N]; gradients reach both theories' parameters, their
    weights and confidences and the initial values."""
    ex = pj.demos.sir.make_executive(beta=0.35, gamma=0.12).replace(
        {"seasonal.weight": 0.6, "seasonal.beta": 0.4, "sir.confidence": 0.7}
    )

    def loss(traj):
        return jnp.sum((traj.value("I") / 100.0) ** 2) + jnp.sum(traj.confidence("I")) + jnp.mean(traj.value("R")) / 50

    params = [
        "sir.beta", "sir.gamma", "sir.confidence", "sir.weight",
        "seasonal.beta", "seasonal.gamma", "seasonal.amplitude", "seasonal.noise", "seasonal.weight",
        "I.init", "S.init",
    ]
    _check(ex, loss, params, steps=40)


# ---------------------------------------------------------------- model 2: soft choice of theory
def _growth(policy, cap=60.0):
    X = pj.Variable("X", pj.RangeDomain(0.0, cap), policy=policy, init=5.0, out_of_domain="clip")
    return pj.Executive(
        variables=[X],
        mechanisms=[
            Logistic(r=0.3, K=50.0, confidence=0.5, reads=[X], writes=[X], name="logistic"),
            Exponential(r=0.15, confidence=0.6, reads=[X], writes=[X], name="exp"),
        ],
    )


def test_soft_highest_confidence_with_binding_clip():
    """The blend of the two theories crosses the domain's upper bound, so clipping
    binds on the late steps; confidences decide the blend."""
    ex = _growth(pj.SoftHighestConfidencePolicy(temperature=0.1))
    _, traj = ex.run(ex.init(jax.random.key(0)), steps=30)
    x = np.asarray(traj.value("X"))
    assert x.max() == 60.0 and (x < 60.0).sum() >= 10  # clipped late, free early

    def loss(traj):
        return jnp.sum(traj.value("X")) + 10 * jnp.sum(traj.confidence("X"))

    params = ["logistic.r", "logistic.K", "logistic.confidence", "exp.r", "exp.confidence", "X.init"]
    _check(ex, loss, params, steps=30, remat=True)  # each step rematerialised in the backward pass


def test_hard_highest_confidence_gradient_flows_to_the_winner_only():
    ex = _growth(pj.HighestConfidencePolicy(), cap=1e6)

    g = _check(ex, lambda t: jnp.sum(t.value("X")), ["exp.r", "X.init"], steps=20, key=jax.random.key(0))
    # the losing theory gets no gradient: a hard choice is flat in what decides it
    assert float(g.get("logistic.r")) == 0.0 and float(g.get("logistic.confidence")) == 0.0
    assert float(g.get("exp.confidence")) == 0.0


# ---------------------------------------------------------------- model 3: predator-prey
class PreyLV(pj.Mechanism):
    a: float
    b: float

    def transform(self, values, key):
        h, l = values["H"], values["L"]
        return {"H": pj.VariableRecord(h + self.a * h - self.b * h * l, confidence=0.8)}


class PreyCapped(pj.Mechanism):
    a: float
    b: float
    K: float

    def transform(self, values, key):
        h, l = values["H"], values["L"]
        return {"H": pj.VariableRecord(h + self.a * h * (1 - h / self.K) - self.b * h * l, confidence=0.7)}


class PreyNaive(pj.Mechanism):
    g: float

    def transform(self, values, key):
        return {"H": pj.VariableRecord(values["H"] * (1 + self.g), confidence=0.4)}


class PredatorLV(pj.Mechanism):
    c: float
    d: float
    sharpness: float

    def transform(self, values, key):
        h, l = values["H"], values["L"]
        conf = jax.nn.sigmoid(self.sharpness * (h - 20.0) / 20.0)  # trusted when prey is abundant
        return {"L": pj.VariableRecord(l + self.d * h * l - self.c * l, confidence=conf)}


class PredatorDecay(pj.Mechanism):
    c: float

    def transform(self, values, key):
        return {"L": pj.VariableRecord(values["L"] * (1 - self.c), confidence=0.3)}


def _predator_prey():
    H = pj.Variable("H", pj.RangeDomain(0.0, None), policy=pj.MedianPolicy(),
                    alternatives=(pj.MeanPolicy(),), init=30.0, out_of_domain="clip")
    L = pj.Variable("L", pj.RangeDomain(0.0, 6.5), policy=pj.WeightedConfidencePolicy(), init=4.0,
                    out_of_domain="hold")
    # governance: once the prey passes 38, its variable switches to the mean of the theories
    switch = pj.SystemInvariant(
        "prey_boom", lambda snap: snap["H"] < 38.0,
        on_violation=lambda state, snap: state.set_policy("H", pj.MeanPolicy),
        phase=pj.InvariantPhase.POST, severity=pj.InvariantSeverity.INFO,
    )
    return pj.Executive(
        variables=[H, L],
        mechanisms=[
            PreyLV(a=0.12, b=0.025, reads=[H, L], writes=[H], name="lv"),
            PreyCapped(a=0.2, b=0.02, K=80.0, reads=[H, L], writes=[H], name="capped"),
            PreyNaive(g=0.05, reads=[H], writes=[H], name="naive"),
            PredatorLV(c=0.1, d=0.004, sharpness=2.0, reads=[H, L], writes=[L], name="pred"),
            PredatorDecay(c=0.05, reads=[L], writes=[L], name="decay"),
        ],
        invariants=[switch],
    )


@pytest.mark.slow
def test_predator_prey_median_weighted_confidence_governance_and_hold():
    ex = _predator_prey()
    state, traj = ex.run(ex.init(jax.random.key(0)), steps=60)
    pol = np.asarray(traj.field("H", "policy")) if "policy" in traj.data else None
    # the run exercises what the gradient must go through
    assert int(state.violations("prey_boom")) > 0  # the policy switch happened
    assert int(state.policy_index("H")) == 1
    assert int(state.domain_violations[1]) > 0  # L was held at its bound
    assert pol is None or pol.max() == 1

    def loss(traj):
        return jnp.sum(traj.value("H")) / 10 + jnp.sum(traj.value("L") ** 2) / 10 + jnp.sum(traj.confidence("L"))

    _check(ex, loss, ["lv.a", "lv.b", "capped.a", "capped.K", "naive.g", "pred.c", "pred.d",
                      "pred.sharpness", "decay.c", "H.init", "L.init"], steps=60)


# ---------------------------------------------------------------- model 4: soft median and majority
class Toward(pj.Mechanism):
    target: float
    rate: float

    def transform(self, values, key):
        y = values["Y"]
        return {"Y": pj.VariableRecord(y + self.rate * (self.target - y), confidence=0.5)}


class Stay(pj.Mechanism):
    weight: float

    def transform(self, values, key):
        return {"Z": pj.VariableRecord(values["Z"], confidence=0.6, weight=self.weight)}


class Grow(pj.Mechanism):
    g: float
    weight: float

    def transform(self, values, key):
        z, y = values["Z"], values["Y"]
        return {"Z": pj.VariableRecord(z * (1 + self.g) + 0.01 * y, confidence=0.9, weight=self.weight)}


def test_soft_median_and_soft_majority():
    Y = pj.Variable("Y", policy=pj.SoftMedianPolicy(temperature=0.5), init=1.0)
    Z = pj.Variable("Z", policy=pj.SoftMajorityVotingPolicy(temperature=0.7), init=2.0)
    ex = pj.Executive(
        variables=[Y, Z],
        mechanisms=[
            Toward(target=10.0, rate=0.2, reads=[Y], writes=[Y], name="up"),
            Toward(target=-4.0, rate=0.1, reads=[Y], writes=[Y], name="down"),
            Toward(target=3.0, rate=0.3, reads=[Y], writes=[Y], name="mid"),
            Stay(weight=1.0, reads=[Z], writes=[Z], name="stay_a"),
            Stay(weight=0.8, reads=[Z], writes=[Z], name="stay_b"),
            Grow(g=0.05, weight=1.5, reads=[Z, Y], writes=[Z], name="grow"),
        ],
    )

    def loss(traj):
        return jnp.sum(traj.value("Y") ** 2) / 10 + jnp.sum(traj.value("Z")) + jnp.sum(traj.confidence("Z"))

    _check(ex, loss, ["up.target", "up.rate", "down.target", "mid.target", "mid.rate",
                      "stay_a.weight", "stay_b.weight", "grow.g", "grow.weight", "Y.init", "Z.init"],
           steps=25)


@pytest.mark.slow
def test_calibration_objective_matches_finite_differences():
    """The objective calibrate differentiates (bounded parameters through their
    transform, sparse observations) against finite differences in the
    unconstrained coordinates."""
    from procela_jax._calibrate import _Config, _objective, _resolve_params, mse_loss, _unconstrain

    import optax

    ex = pj.demos.sir.make_executive()
    plist = _resolve_params(ex, ["sir.beta", "sir.gamma", "I.init"], {"sir.beta": (0, 2)})
    cfg = _Config(params=tuple(plist), names=("I", "R"), steps=40, remat=True, segment=7, samples=1,
                  resample=False, tol=None, atol=0.0, patience=1, chunk=1, loss=mse_loss,
                  optimizer=optax.sgd(0.1))
    idx = (jnp.asarray([3, 9, 20, 39]), jnp.asarray([5, 30]))
    obs = {"I": jnp.asarray([15.0, 30.0, 80.0, 60.0]), "R": jnp.asarray([5.0, 300.0])}
    theta = tuple(jnp.asarray(_unconstrain(np.asarray(p.get(ex)), p.bounds)) for p in plist)
    key = jax.random.key(1)
    vg = jax.jit(jax.value_and_grad(lambda th, e: _objective(cfg, th, e, key, obs, idx)))
    _, g = vg(theta, ex)
    for i, p in enumerate(plist):
        h = 1e-6 * max(1.0, abs(float(theta[i])))
        up = tuple(t + h if j == i else t for j, t in enumerate(theta))
        dn = tuple(t - h if j == i else t for j, t in enumerate(theta))
        fd = (float(vg(up, ex)[0]) - float(vg(dn, ex)[0])) / (2 * h)
        assert abs(fd) > 1e-8
        assert abs(float(g[i]) - fd) <= REL * abs(fd), (p.name, float(g[i]), fd)
