"""pj.infer: posteriors against closed forms (conjugate models), against the same
SIR written directly in NumPyro, the contract of Posterior, and the errors
raised before sampling. Chains are short; tolerances come from Monte Carlo errors."""

from __future__ import annotations

import math
import warnings

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS, init_to_value

import procela_jax as pj

# short chains: an R-hat a little above 1.01 is expected, and tested where it matters
pytestmark = pytest.mark.filterwarnings("ignore::procela_jax.ConvergenceWarning")


class Drift(pj.Mechanism):
    """X grows by ``rate`` each step."""

    rate: float = 0.5

    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["X"] + self.rate, confidence=1.0)}


class Level(pj.Mechanism):
    """X is ``level`` plus, optionally, Gaussian noise drawn from the step's key."""

    level: float = 1.0
    noise: float = 0.0

    def transform(self, values, key):
        x = self.level + self.noise * jax.random.normal(key, dtype=values["X"].dtype)
        return {"X": pj.VariableRecord(x, confidence=1.0)}


def one_variable(mech, domain=None, init=0.0):
    X = pj.Variable("X", domain or pj.RealDomain(), init=init)
    return pj.Executive(variables=[X], mechanisms=[mech(reads=[X], writes=[X], name="m")])


def sir(**kw):
    return pj.demos.sir.make_executive(**kw).remove_mechanism("seasonal")


def within_mc_error(a, b, mcse, k=4.0):
    return abs(a - b) <= k * mcse


# ---------------------------------------------------------------------------- the contract
@pytest.fixture(scope="module")
def fitted():
    """The SIR demo's beta and gamma with an unknown noise level, from synthetic data."""
    truth = sir(beta=0.35, gamma=0.1)
    _, traj = truth.run(truth.init(jax.random.key(0)), steps=40)
    rows = np.arange(1, 40, 3)
    observed = np.asarray(traj.value("I"))[rows] + np.random.default_rng(1).normal(0, 3.0, rows.size)
    observed[2] = np.nan  # missing
    ex = truth.replace({"sir.beta": 0.3, "sir.gamma": 0.12})
    post = pj.infer(ex, data={"I": (rows, observed)},
                    priors={"sir.beta": dist.LogNormal(-1.0, 0.5), "sir.gamma": dist.LogNormal(-2.3, 0.5)},
                    likelihood=pj.likelihood.Normal(sigma=dist.HalfNormal(5.0)),
                    warmup=150, samples=150, chains=2, seed=0, progress=False)
    return post, ex, rows, observed


def test_posterior_contract(fitted):
    post, ex, rows, observed = fitted
    assert set(post.samples) == {"sir.beta", "sir.gamma", "sigma"}
    assert all(v.shape == (2, 150) for v in post.samples.values())
    assert post.parameters == ("sir.beta", "sir.gamma")
    beta = post.samples["sir.beta"]
    assert abs(beta.mean() - 0.35) < 0.02 and abs(post.samples["sir.gamma"].mean() - 0.1) < 0.02

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", pj.ConvergenceWarning)
        table = post.summary()
    assert list(table.index) == ["sir.beta", "sir.gamma", "sigma"]
    for col in ("mean", "sd", "hdi_5%", "hdi_95%", "r_hat", "ess_bulk"):
        assert col in table.columns
    assert table.loc["sir.beta", "mean"] == pytest.approx(beta.mean(), rel=1e-5)
    assert table.attrs["divergences"] == post.divergences
    assert "divergent transitions" in repr(table)

    idata = post.to_arviz()
    assert {"posterior", "sample_stats", "observed_data"} <= set(idata.groups())
    assert idata.sample_stats["diverging"].shape == (2, 150)
    np.testing.assert_array_equal(idata.observed_data["I"].values, observed)
    np.testing.assert_array_equal(idata.observed_data["I_row"].values, rows)


def test_predict_runs_each_draw_as_a_single_run_would(fitted):
    post, ex, rows, observed = fitted
    pred = post.predict(steps=60, draws=6, seed=1)
    assert isinstance(pred, pj.SweepResult) and pred.value("I").shape == (6, 60)
    pick = pred.info["posterior_draws"]
    for i in (0, 5):
        c, d = pick[i]
        beta, gamma = post.samples["sir.beta"][c, d], post.samples["sir.gamma"][c, d]
        assert pred.inputs.params["sir.beta"][i] == beta
        one = ex.replace({"sir.beta": beta, "sir.gamma": gamma})
        _, traj = one.run(one.init(jax.random.key(post.seed)), 60)
        np.testing.assert_allclose(pred.value("I")[i], np.asarray(traj.value("I")), rtol=1e-5, atol=1e-4)
    assert pred.inputs.seeds.tolist() == [post.seed] * 6  # the key the posterior is conditioned on
    ds = pred.to_xarray()
    assert ds["value"].dims == ("scenario", "step", "variable")
    np.testing.assert_array_equal(ds["sir.beta"].values, pred.inputs.params["sir.beta"])
    # the same seed picks the same draws; the likelihood's noise around them
    np.testing.assert_array_equal(post.predict(steps=5, draws=6, seed=1).info["posterior_draws"], pick)
    y = post.observe(pred, "I", seed=0)
    assert y.shape == (6, 60)
    sigma = post.samples["sigma"][pick[:, 0], pick[:, 1]]
    z = (y - pred.value("I")) / sigma[:, None]
    assert abs(z.std() - 1) < 0.15


def test_convergence_problems_are_reported_and_warned(fitted):
    post = fitted[0]
    beta = post.samples["sir.beta"]
    stats = {k: np.array(v) for k, v in post.stats.items()}
    stats["diverging"][0, :3] = True
    bad = pj.Posterior(samples={"sir.beta": np.stack([beta[0], beta[1] + 1.0])}, stats=stats,
                       problem=post._problem, seconds=0.0, warmup=post.warmup)
    with pytest.warns(pj.ConvergenceWarning, match=r"3 divergent transitions.*R-hat above 1.01 for sir.beta"):
        table = bad.summary()
    assert table.attrs["divergences"] == 3 and table.loc["sir.beta", "r_hat"] > 1.01


# ---------------------------------------------------------------------------- closed forms
def test_normal_posterior_of_a_noisy_model_is_the_conjugate_one_given_the_runs_key():
    """x_t = level + e_t, where e_t is the mechanism's noise drawn from the run's key;
    y ~ Normal(x, sigma) with sigma known and a Normal prior on the level. Conditioned
    on the key (common random numbers) e_t is known, so the posterior is Normal with
    a closed-form mean and sd. Another key would move the mean by about
    noise / sqrt(n) = 0.22, some 40 Monte Carlo errors."""
    ex = one_variable(Level).replace({"m.level": 1.0, "m.noise": 1.0})
    e = np.asarray(ex.replace({"m.level": 0.0}).run(ex.init(jax.random.key(5)), 20)[1].value("X"))
    rows = np.arange(20)
    sigma, s0 = 0.5, 5.0
    y = 2.0 + e + np.random.default_rng(0).normal(0, sigma, rows.size)
    prec = 1 / s0**2 + rows.size / sigma**2
    mean, sd = np.sum(y - e) / sigma**2 / prec, prec**-0.5
    post = pj.infer(ex, {"X": (rows, y)}, {"m.level": dist.Normal(0.0, s0)}, pj.likelihood.Normal(sigma=sigma),
                    warmup=200, samples=300, chains=2, seed=5, progress=False)
    draws = post.samples["m.level"]
    ess = float(az.ess(draws))
    assert within_mc_error(draws.mean(), mean, sd / math.sqrt(ess))
    assert abs(draws.std() / sd - 1) < 4 / math.sqrt(2 * ess) + 0.02


def test_poisson_posterior_of_a_level_is_the_gamma_one():
    """y ~ Poisson(level) with a Gamma(a, b) prior: the posterior is Gamma(a + sum y,
    b + n) over the observed entries (a NaN is missing, not zero)."""
    ex = one_variable(Level, pj.RangeDomain(0.0, None), init=0.0)  # row 0 is 0 -> floored, not observed
    rows = np.arange(1, 9)
    y = np.array([3, 5, 2, np.nan, 4, 6, 3, 4], float)
    a, b = 2.0, 0.5
    post = pj.infer(ex, {"X": (rows, y)}, {"m.level": dist.Gamma(a, b)}, pj.likelihood.Poisson(),
                    warmup=200, samples=300, chains=2, seed=1, progress=False)
    shape, rate = a + np.nansum(y), b + np.sum(~np.isnan(y))
    mean, sd = shape / rate, math.sqrt(shape) / rate
    draws = post.samples["m.level"]
    ess = float(az.ess(draws))
    assert within_mc_error(draws.mean(), mean, sd / math.sqrt(ess))
    q05 = np.quantile(draws, 0.05)
    exact_q05 = float(np.quantile(np.random.default_rng(0).gamma(shape, 1 / rate, 200_000), 0.05))
    assert within_mc_error(q05, exact_q05, float(az.mcse(draws, method="quantile", prob=0.05)))


# ---------------------------------------------------------------------------- a reference model
BOARDING = pj.datasets.boarding_school()


def direct_sir(beta, gamma, steps, n=763.0, i0=1.0):
    """The discrete-time SIR of the demo's deterministic theory, written out (clipped to [0, N])."""

    def step(c, _):
        s, i, r = c
        new, rec = beta * s * i / n, gamma * i
        c = tuple(jnp.clip(x, 0.0, n) for x in (s - new, i + new - rec, r + rec))
        return c, c[1]

    return jax.lax.scan(step, (n - i0, i0, 0.0), None, length=steps)[1]


def test_boarding_school_posterior_matches_the_model_written_in_numpyro():
    y = BOARDING.in_bed.astype(float)
    rows = np.arange(len(y))  # day d is row d - 1 (one step a day)
    priors = {"beta": dist.LogNormal(0.0, 0.5), "gamma": dist.LogNormal(-1.0, 0.5), "concentration": dist.Exponential(0.2)}
    start = {"beta": 1.5, "gamma": 0.45}
    kw = dict(warmup=300, samples=300, chains=2)

    ex = sir(population=763.0, infected=1.0, beta=start["beta"], gamma=start["gamma"])
    post = pj.infer(ex, {"I": (rows, y)}, {"sir.beta": priors["beta"], "sir.gamma": priors["gamma"]},
                    pj.likelihood.NegativeBinomial(concentration=priors["concentration"]),
                    seed=0, progress=False, **kw)

    def model():
        beta = numpyro.sample("beta", priors["beta"])
        gamma = numpyro.sample("gamma", priors["gamma"])
        phi = numpyro.sample("concentration", priors["concentration"])
        m = jnp.maximum(direct_sir(beta, gamma, len(y)), 1e-9)
        numpyro.sample("y", dist.NegativeBinomial2(m, phi), obs=y)

    init = dict(start, concentration=float(priors["concentration"].icdf(0.5)))
    mcmc = MCMC(NUTS(model, init_strategy=init_to_value(values=init)), num_warmup=kw["warmup"],
                num_samples=kw["samples"], num_chains=kw["chains"], chain_method="vectorized", progress_bar=False)
    mcmc.run(jax.random.PRNGKey(11))
    ref = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}

    for name, ours in (("beta", post.samples["sir.beta"]), ("gamma", post.samples["sir.gamma"]),
                       ("concentration", post.samples["concentration"])):
        theirs = ref[name]
        err = math.hypot(float(az.mcse(ours)), float(az.mcse(theirs)))
        assert within_mc_error(ours.mean(), theirs.mean(), err), (name, ours.mean(), theirs.mean(), err)
        for q in (0.05, 0.95):
            err = math.hypot(float(az.mcse(ours, method="quantile", prob=q)),
                             float(az.mcse(theirs, method="quantile", prob=q)))
            a, b = np.quantile(ours, q), np.quantile(theirs, q)
            assert within_mc_error(a, b, err), (name, q, a, b, err)
    r0 = post.samples["sir.beta"] / post.samples["sir.gamma"]
    assert 2.0 < np.median(r0) < 6.0


# ---------------------------------------------------------------------------- errors, before sampling
LIK = pj.likelihood.Normal(sigma=1.0)


@pytest.mark.parametrize("priors, match", [
    ({"I.init": dist.LogNormal(0.0, 1.0)}, r"'I.init'.*reaches outside the domain of variable 'I'"),
    ({"sir.gamma": dist.Uniform(0.5, 1.0)}, r"start at the current value of 'sir.gamma', 0.1"),
    ({"sir.nope": dist.Normal(0, 1)}, r"no parameter 'nope'"),
    ({"sir.beta": 0.3}, r"must be a numpyro distribution"),
    ({"sir.beta": dist.Poisson(1.0)}, r"discrete"),
    ({"sir.beta": dist.Normal(jnp.zeros(2), 1.0)}, r"shape \(2,\)"),
    ({}, r"give priors.*sir.beta"),
])
def test_bad_priors_raise_at_once(priors, match):
    with pytest.raises(pj.ModelError, match=match):
        pj.infer(sir(), {"I": ([0, 1], [10.0, 11.0])}, priors, LIK, progress=False)


@pytest.mark.parametrize("data, likelihood, match", [
    ({"I": ([0, 1, 2], [10.0, 11.0])}, LIK, r"1-D of the same length"),
    ({"I": (np.zeros((2, 2), int), np.zeros((2, 2)))}, LIK, r"1-D of the same length"),
    ({"I": ([0, 1], [np.nan, np.nan])}, LIK, r"every value is NaN"),
    ({"I": ([], [])}, LIK, r"no observations"),
    ({"Q": ([0], [1.0])}, LIK, r"unknown variable 'Q'"),
    ({"I": ([0, 1], [2.5, 3.0])}, pj.likelihood.Poisson(), r"needs counts"),
    ({"I": ([0, 1], [2.0, 3.0])}, "normal", r"likelihood must be one of"),
])
def test_bad_data_raise_at_once(data, likelihood, match):
    with pytest.raises(pj.ModelError, match=match):
        pj.infer(sir(), data, {"sir.beta": dist.LogNormal(-1.0, 0.5)}, likelihood, progress=False)


def test_likelihood_parameters_are_checked():
    with pytest.raises(pj.ModelError, match="finite number > 0"):
        pj.likelihood.Normal(sigma=-1.0)
    with pytest.raises(pj.ModelError, match="positive numbers"):
        pj.likelihood.NegativeBinomial(concentration=dist.Normal(0.0, 1.0))


def test_count_likelihoods_floor_the_mean():
    lp = float(pj.likelihood.Poisson().log_prob(jnp.array(3.0), jnp.array(0.0)))
    assert lp == pytest.approx(3 * math.log(1e-9) - math.log(6), rel=1e-5)
    lp = pj.likelihood.NegativeBinomial(concentration=2.0).log_prob(jnp.array(3.0), jnp.array(-1.0))
    assert np.isfinite(float(lp))


def test_a_density_that_is_not_finite_at_the_start_raises_naming_the_values():
    ex = one_variable(Drift).replace({"m.rate": 3e38})  # x overflows: the likelihood is -inf
    with pytest.raises(pj.ModelError, match=r"not finite at the starting point \(m.rate=3e\+38\)"):
        pj.infer(ex, {"X": ([0, 1, 2], [1.0, 2.0, 3.0])}, {"m.rate": dist.Normal(0.0, 1e38)}, LIK, progress=False)
