"""calibrate: the contract, what the history records (checked against plain runs),
bounds, optimiser steps against finite differences, early stopping, multi-start,
common random numbers, rematerialisation, and fits on synthetic and real data.

Several tests share one compiled fit: the same executive structure, data shapes,
parameters, optimiser object and chunk length give the same static configuration.
"""

from __future__ import annotations

import importlib.resources

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import procela_jax as pj
from procela_jax.demos.growth import Gompertz, Logistic

STEPS = 120
T_OBS = np.arange(0, STEPS, 2)
TRUE = {"sir.beta": 0.4, "sir.gamma": 0.15}
ADAM = optax.adam(0.05)


@pytest.fixture(scope="module")
def base(sir):
    """The session's SIR demo with the seasonal theory's weight 0, so that the
    resolved value is the deterministic theory's and beta and gamma of ``sir`` are
    identifiable. Every SIR test derives its executive from this one with
    ``replace`` (same static structure: compilations are shared)."""
    return sir.replace({"seasonal.weight": 0.0})


def _observe(ex, names=("I",), steps=STEPS, key=0):
    _, traj = ex.run(ex.init(jax.random.key(key)), steps=steps)
    return {n: np.asarray(traj.value(n), np.float64) for n in names}


def _mse(ex, data, steps=STEPS, key=None):
    """The default loss, computed from a plain run with numpy."""
    key = jax.random.key(0) if key is None else key
    _, traj = ex.run(ex.init(key), steps=steps)
    err = []
    for n, (t, y) in data.items():
        p = np.asarray(traj.value(n), np.float64)[np.asarray(t)]
        ok = ~np.isnan(y)
        err.append((p[ok] - np.asarray(y)[ok]) ** 2)
    return float(np.concatenate(err).mean())


@pytest.fixture(scope="module")
def sir_data(base):
    ex = base
    I = _observe(ex.replace(TRUE))["I"]  # noqa: E741
    rng = np.random.default_rng(7)
    noisy = I[T_OBS] * (1 + 0.05 * rng.standard_normal(T_OBS.size))  # 5% multiplicative noise
    return ex, {"I": (T_OBS, noisy)}


@pytest.fixture(scope="module")
def contract_fit(sir_data):
    ex, data = sir_data
    fitted, history = pj.calibrate(ex, data=data, params=["sir.beta", "sir.gamma"], steps=STEPS,
                                   optimizer=ADAM, iterations=500, seed=0, progress=False)
    return fitted, history


# ---------------------------------------------------------------- the contract
def test_contract_recovers_beta_and_gamma(sir_data, contract_fit):
    ex, _ = sir_data
    fitted, history = contract_fit
    assert isinstance(fitted, pj.Executive)
    assert len(history.loss) == 500 and history.iterations == 500
    for name, truth in TRUE.items():
        got = float(fitted.get(name))
        assert abs(got - truth) / truth < 0.02, (name, got)
        assert float(fitted.mechanisms[0].__getattribute__(name.split(".")[1])) == got
    assert history.loss[-1] < 1e-2 * history.loss[0]
    # nothing else moved
    assert float(fitted.get("seasonal.beta")) == float(ex.get("seasonal.beta"))
    assert float(fitted.get("I.init")) == float(ex.get("I.init"))


def test_history_losses_are_losses_of_plain_runs(sir_data, contract_fit):
    ex, data = sir_data
    fitted, history = contract_fit
    np.testing.assert_allclose(history.params["sir.beta"][0], 0.3, rtol=1e-6)
    np.testing.assert_allclose(history.params["sir.gamma"][0], 0.1, rtol=1e-6)
    for j in (0, 1, 100, 499):
        at = ex.replace({k: float(v[j]) for k, v in history.params.items()})
        np.testing.assert_allclose(history.loss[j], _mse(at, data), rtol=2e-4)
    # the returned parameters are those of the lowest loss seen, and its loss is recorded
    j = int(np.argmin(history.loss))
    assert history.best_loss == pytest.approx(history.loss[j], rel=1e-6)
    for k, v in history.params.items():
        np.testing.assert_allclose(history.fitted[k], v[j], rtol=1e-6)
        np.testing.assert_allclose(float(fitted.get(k)), v[j], rtol=1e-6)
    np.testing.assert_allclose(history.best_loss, _mse(fitted, data), rtol=2e-4)
    assert "iterations=500" in repr(history)


def test_the_first_adam_step(sir_data, contract_fit):
    """The first adam step of the fit moves each parameter by the learning rate
    against the sign of the loss's gradient (a finite difference of plain runs).
    (The plain equinox gradient of a run is checked in tests/test_gradients.py.)"""
    ex, data = sir_data
    _, history = contract_fit
    for name in ("sir.beta", "sir.gamma"):
        x = float(ex.get(name))
        h = 1e-3 * x
        g = (_mse(ex.replace({name: x + h}), data) - _mse(ex.replace({name: x - h}), data)) / (2 * h)
        step = history.params[name][1] - history.params[name][0]
        np.testing.assert_allclose(step, -0.05 * np.sign(g), rtol=1e-4)


def test_progress_bar(sir_data, capsys):
    ex, data = sir_data
    _, history = pj.calibrate(ex, data, ["sir.beta", "sir.gamma"], steps=STEPS, optimizer=ADAM,
                              iterations=50, chunk=25, progress=True)
    err = capsys.readouterr().err
    assert "calibrate" in err and "50/50" in err
    assert len(history.loss) == 50


# ---------------------------------------------------------------- optimiser and transforms
def test_bounds_and_random_starts(sir_data):
    """Four starts under vmap, drawn uniformly within the bounds (the first is the
    executive's own value); every start stays inside the bounds, and the one the
    truth (beta = 0.4) lies beyond is pressed against the upper bound."""
    ex, data = sir_data
    fitted, h = pj.calibrate(ex.replace({"sir.gamma": TRUE["sir.gamma"]}), data, ["sir.beta"], steps=STEPS,
                             bounds={"sir.beta": (0.1, 0.38)}, optimizer=optax.adam(0.2), iterations=100,
                             starts=4, progress=False)
    init = h.start_init["sir.beta"]
    assert init.shape == (4,) and init[0] == pytest.approx(0.3)
    assert np.all((init > 0.1) & (init < 0.38)) and len(set(np.round(init, 6))) == 4
    beta = h.params["sir.beta"]
    assert np.all((beta > 0.1) & (beta < 0.38))
    fitted_all = h.start_fitted["sir.beta"]
    assert np.all((fitted_all > 0.1) & (fitted_all < 0.38))
    assert beta[-1] > 0.375  # pressed against the bound
    assert h.best_loss == pytest.approx(np.min(h.start_best_loss))
    assert float(fitted.get("sir.beta")) == pytest.approx(fitted_all[h.best_start], rel=1e-6)


def test_bad_input_is_reported_early(sir_data):
    ex, data = sir_data
    call = lambda **kw: pj.calibrate(**{"ex": ex, "data": data, "params": ["sir.beta"], "progress": False, **kw})
    with pytest.raises(pj.ModelError, match="strictly inside"):
        call(bounds={"sir.beta": (0.5, 1.0)})
    with pytest.raises(pj.ModelError, match="no parameter 'betta'"):
        call(params=["sir.betta"])
    with pytest.raises(pj.ModelError, match="not fitted"):
        call(bounds={"sir.gamma": (0, 1)})
    with pytest.raises(pj.ModelError, match="say which parameters"):
        call(params=None)
    with pytest.raises(pj.ModelError, match="unknown variable 'Q'"):
        call(data={"Q": ([1], [2.0])})
    with pytest.raises(ValueError, match="needs steps > 118"):
        call(steps=100)
    with pytest.raises(ValueError, match="same length"):
        call(data={"I": ([1, 2], [2.0])})
    with pytest.raises(ValueError, match="iterations"):
        call(iterations=0)
    with pytest.raises(ValueError, match="remat"):
        call(remat=-3)
    with pytest.raises(pj.ModelError, match="on its bound|strictly inside"):
        call(params=["R.init"])  # 0, on the lower bound of its domain
    with pytest.raises(TypeError, match="optax"):
        call(optimizer="adam")


def test_all_missing_observations_raise(sir_data):
    """A series of NaN only carries no observation: like an empty one, it raises
    before anything runs (it used to return the start unchanged with loss 0)."""
    ex, data = sir_data
    t, y = data["I"]
    for steps_obs, values in [(t, np.full(len(t), np.nan)), ([3], [np.nan])]:
        with pytest.raises(ValueError, match=r"data\['I'\] has no observations: every value is NaN"):
            pj.calibrate(ex, data={"I": (steps_obs, values)}, params=["sir.beta"], iterations=2,
                         progress=False)
    # one all-missing series among observed ones is refused too, naming it
    with pytest.raises(ValueError, match=r"data\['R'\] has no observations"):
        pj.calibrate(ex, data={"I": (t, y), "R": ([1, 2], [np.nan, np.nan])}, params=["sir.beta"],
                     iterations=2, progress=False)


# ---------------------------------------------------------------- stopping, starts, keys
def test_tol_stops_early_and_remat_changes_nothing_else(sir_data, contract_fit):
    """With ``tol`` the fit stops at the first calm stretch of ``patience``
    iterations; with every step rematerialised in the backward pass it follows the
    same path as the plain fit."""
    ex, data = sir_data
    tol, patience = 1e-5, 5
    _, h = pj.calibrate(ex, data, ["sir.beta", "sir.gamma"], steps=STEPS, optimizer=ADAM, iterations=500,
                        tol=tol, patience=patience, remat=True, progress=False)
    assert h.converged and len(h.loss) < 500
    _, ref = contract_fit
    np.testing.assert_allclose(h.loss, ref.loss[: len(h.loss)], rtol=1e-4)
    change = np.abs(np.diff(h.loss[-patience - 1:])) / np.abs(h.loss[-patience - 1:-1])
    assert np.all(change <= tol)
    earlier = np.abs(np.diff(h.loss[:-patience])) / np.abs(h.loss[:-patience - 1])
    runs = np.convolve(earlier <= tol, np.ones(patience), "valid")
    assert runs.max() < patience  # it stopped at the first calm stretch


def test_converged_is_only_a_verdict_when_a_tolerance_was_given(contract_fit):
    """Without ``tol`` every iteration runs and ``converged`` is False whatever the
    fit: the repr says so rather than print a bare ``converged=False``."""
    _, history = contract_fit
    assert history.converged is False and history.tol is None
    assert "converged=False (tol=None: every iteration ran)" in repr(history)


def test_the_calibration_notebook_fit_converges_by_its_own_tolerance():
    """The notebook's fit, run as written, stops on the tolerance it passes (the loss
    changed by at most tol relative over `patience` iterations, checked from the
    losses) at the classic fit of these data (beta about 1.7, gamma about 0.45 per day)."""
    import json
    import pathlib

    nb = json.loads((pathlib.Path(__file__).parents[1] / "notebooks" / "04_calibration.ipynb").read_text())
    code = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    ns = {}
    for cell in code:
        exec(compile(cell, "04_calibration", "exec"), ns)
        if "history" in ns:
            break
    history, K = ns["history"], ns["K"]
    tol, patience = history.tol, 10  # calibrate's default patience
    assert tol is not None and history.converged and len(history.loss) < 200
    change = np.abs(np.diff(history.loss[-patience - 1:])) / np.abs(history.loss[-patience - 1:-1])
    assert np.all(change <= tol)
    beta, gamma = float(ns["fitted"].get("sir.beta")) * K, float(ns["fitted"].get("sir.gamma")) * K
    assert abs(beta - 1.7) < 0.2 and abs(gamma - 0.45) < 0.05


def test_multi_start_equals_separate_fits(sir_data):
    ex, data = sir_data
    starts = {"sir.beta": np.array([0.3, 0.9]), "sir.gamma": np.array([0.1, 0.5])}
    _, h = pj.calibrate(ex, data, ["sir.beta", "sir.gamma"], steps=STEPS, optimizer=ADAM, iterations=25,
                        chunk=25, starts=starts, progress=False)
    assert h.start_loss.shape == (2, 25)
    for k in range(2):
        single = ex.replace({n: float(v[k]) for n, v in starts.items()})
        _, hk = pj.calibrate(single, data, ["sir.beta", "sir.gamma"], steps=STEPS, optimizer=ADAM,
                             iterations=25, chunk=25, progress=False)
        np.testing.assert_allclose(h.start_loss[k], hk.loss, rtol=1e-4)
        assert h.start_best_loss[k] == pytest.approx(hk.best_loss, rel=1e-4)
    assert h.best_start == int(np.argmin(h.start_best_loss))
    np.testing.assert_allclose(h.loss, h.start_loss[h.best_start])


@pytest.mark.slow
def test_common_random_numbers(base):
    """With the noisy seasonal theory on, every iteration uses the same key: at a
    zero learning rate the loss repeats exactly, and it is the loss of a plain run
    with jax.random.key(seed)."""
    ex = base.replace({"seasonal.weight": 1.0})
    y = _observe(ex, key=5)["I"]
    data = {"I": (T_OBS, y[T_OBS])}
    frozen = optax.sgd(0.0)
    _, h = pj.calibrate(ex, data, ["sir.beta"], steps=STEPS, optimizer=frozen, iterations=4, seed=3,
                        progress=False)
    np.testing.assert_array_equal(h.loss, np.full(4, h.loss[0]))
    np.testing.assert_allclose(h.loss[0], _mse(ex, data, key=jax.random.key(3)), rtol=1e-4)
    # fresh keys each iteration, each loss the mean over two runs
    _, hr = pj.calibrate(ex, data, ["sir.beta"], steps=STEPS, optimizer=frozen, iterations=4, seed=3,
                         resample=True, samples=2, progress=False)
    assert len(set(hr.loss.tolist())) == 4
    for i in (0, 3):
        keys = jax.random.split(jax.random.fold_in(jax.random.key(3), i), 2)
        want = np.mean([_mse(ex, data, key=k) for k in keys])
        np.testing.assert_allclose(hr.loss[i], want, rtol=1e-4)


def test_filter_spec_and_user_loss(sir_data):
    """Parameters chosen by an equinox filter; a user loss on log counts; sparse
    data on two variables, one observation missing."""
    ex, _ = sir_data
    truth = _observe(ex.replace(TRUE), names=("I", "R"))
    t_i, t_r = np.array([5, 20, 40, 80]), np.array([60, 119])
    y_i = truth["I"][t_i].copy()
    y_i[1] = np.nan
    data = {"I": (t_i, y_i), "R": (t_r, truth["R"][t_r])}

    def log_mse(pred, obs):
        tot, cnt = 0.0, 0
        for n in obs:
            ok = ~jnp.isnan(obs[n])
            d = jnp.where(ok, jnp.log(pred[n]) - jnp.log(jnp.where(ok, obs[n], 1.0)), 0.0)
            tot, cnt = tot + jnp.sum(d**2), cnt + jnp.sum(ok)
        return tot / cnt

    spec = jax.tree.map(lambda _: False, ex)
    spec = eqx.tree_at(lambda e: (e.mechanisms[0].beta, e.mechanisms[0].gamma), spec, (True, True))
    fitted, h = pj.calibrate(ex, data, spec, steps=STEPS, loss=log_mse, optimizer=optax.adam(0.02),
                             iterations=200, progress=False)
    assert set(h.params) == {"sir.beta", "sir.gamma"}
    _, traj = ex.run(ex.init(jax.random.key(0)), steps=STEPS)
    p_i, p_r = np.asarray(traj.value("I"))[t_i], np.asarray(traj.value("R"))[t_r]
    ok = ~np.isnan(y_i)
    want = np.concatenate([(np.log(p_i[ok]) - np.log(y_i[ok])) ** 2, (np.log(p_r) - np.log(truth["R"][t_r])) ** 2])
    np.testing.assert_allclose(h.loss[0], want.mean(), rtol=1e-4)
    for k, v in TRUE.items():
        assert abs(float(fitted.get(k)) - v) / v < 0.01


# ---------------------------------------------------------------- real work
@pytest.mark.slow
def test_mixing_weights_of_two_competing_theories_are_recovered():
    """Weighted voting mixes the theories with fractions w / sum(w); only the
    fractions are identifiable (scaling both weights changes nothing), so that is
    what is checked."""
    N = pj.Variable("N", pj.RangeDomain(0.0, None), init=5.0)
    ex = pj.Executive(variables=[N], mechanisms=[
        Logistic(r=0.25, K=100.0, weight=1.0, reads=[N], writes=[N], name="logistic"),
        Gompertz(r=0.12, K=140.0, weight=1.0, reads=[N], writes=[N], name="gompertz"),
    ])
    truth = ex.replace({"logistic.weight": 0.7, "gompertz.weight": 0.3})
    y = _observe(truth, names=("N",), steps=40)["N"]
    t = np.arange(40)
    noisy = y[t] * (1 + 0.01 * np.random.default_rng(3).standard_normal(t.size))  # 1% noise
    params = ["logistic.weight", "gompertz.weight"]
    fitted, h = pj.calibrate(ex, {"N": (t, noisy)}, params, steps=40, optimizer=optax.adam(0.05),
                             bounds={p: (0.0, None) for p in params}, iterations=300, progress=False)
    w = np.array([float(fitted.get(p)) for p in params])
    share = w[0] / w.sum()
    assert abs(share - 0.7) / 0.7 < 0.02, share
    truth_loss = float(np.mean((y[t] - noisy) ** 2))
    assert h.best_loss <= 1.001 * truth_loss  # as good a fit as the truth itself


@pytest.mark.slow
def test_fit_to_the_1978_boarding_school_influenza_outbreak():
    """A real epidemic: 763 boys, the number in bed on each of 14 days. The SIR
    demo with its deterministic theory, 4 steps a day (observed at the end of
    each day), one index case; beta and gamma fitted from a poor start."""
    path = importlib.resources.files("procela_jax") / "data" / "influenza_england_1978_school.csv"
    table = np.genfromtxt(str(path), delimiter=",", names=True, dtype=None, encoding=None)
    y = table["in_bed"].astype(float)
    assert y.tolist()[:6] == [3, 8, 26, 76, 225, 298] and len(y) == 14
    k = 4
    t = (np.arange(len(y)) + 1) * k - 1
    ex = pj.demos.sir.make_executive(population=763.0, infected=1.0, beta=1.0 / k, gamma=0.2 / k)
    ex = ex.replace({"seasonal.weight": 0.0})
    fitted, h = pj.calibrate(ex, {"I": (t, y)}, ["sir.beta", "sir.gamma"], steps=int(t[-1]) + 1,
                             bounds={"sir.beta": (0.0, 5.0 / k), "sir.gamma": (0.0, 1.0 / k)},
                             optimizer=optax.adam(0.05), iterations=400, progress=False)
    beta, gamma = float(fitted.get("sir.beta")) * k, float(fitted.get("sir.gamma")) * k
    rmse = np.sqrt(h.best_loss)
    assert rmse < 25 and np.sqrt(h.loss[0]) > 100  # from a poor start to a close fit
    # published SIR fits of these data: beta ≈ 1.7 / day, gamma ≈ 0.45 / day, R0 ≈ 3.7
    assert 1.5 < beta < 2.0 and 0.4 < gamma < 0.5 and 3.3 < beta / gamma < 4.3

