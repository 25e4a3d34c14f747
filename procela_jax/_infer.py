"""Bayesian inference: posteriors of an executive's parameters with NumPyro's NUTS.

A run of the executive is a differentiable ``lax.scan``, so the log density of
its parameters given observed data has a gradient, and NumPyro's No-U-Turn
sampler can draw from the posterior. :func:`infer` builds the NumPyro model
(priors on parameters named as in :func:`calibrate`, the simulation, a
likelihood from :mod:`procela_jax.likelihood`), runs the chains together under
``vmap`` (``chain_method="vectorized"``: one compilation), and returns a
:class:`Posterior` with ArviZ diagnostics and posterior predictive sweeps.

Randomness: every evaluation of the log density runs the executive from the
same key, ``jax.random.key(seed)`` (common random numbers). A model with
stochastic mechanisms is therefore fitted *conditioned on that key*: its noise
is one fixed realisation, not integrated over. :meth:`Posterior.predict` runs
with the same key unless given ``seeds=``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import time
import warnings
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._calibrate import _default_bounds, _fittable, _prepare_data, _simulate
from ._domain import CategoricalDomain
from ._errors import ModelError
from ._executive import Executive
from ._paths import parameter
from .likelihood import Likelihood

__all__ = ["ConvergenceWarning", "Posterior", "infer"]

#: ``Posterior.summary`` and :func:`infer` warn when a split R-hat exceeds this.
RHAT_LIMIT = 1.01


class ConvergenceWarning(UserWarning):
    """The chains show divergent transitions or an R-hat above 1.01: the
    posterior draws may not represent the posterior."""


# ---------------------------------------------------------------------------- priors
@dataclasses.dataclass(frozen=True)
class _Site:
    """One sampled quantity: a model parameter (``path``) or a likelihood parameter."""

    name: str
    prior: object  # a numpyro distribution whose sample has the parameter's shape
    shape: tuple[int, ...]
    start: np.ndarray  # the chains' starting value (constrained)
    model: bool  # True: an executive parameter; False: a likelihood parameter


def _support_bounds(support):
    """``(lo, hi)`` of a real support (infinite where open-ended), or None if unknown."""
    from numpyro.distributions import constraints

    base = getattr(support, "base_constraint", support)
    lo, hi = getattr(base, "lower_bound", None), getattr(base, "upper_bound", None)
    if lo is None and hi is None and base is not constraints.real:
        return None
    lo = -math.inf if lo is None else float(np.min(np.asarray(lo)))
    hi = math.inf if hi is None else float(np.max(np.asarray(hi)))
    return lo, hi


def _model_site(ex: Executive, path, prior) -> _Site:
    from numpyro.distributions import Distribution

    if not isinstance(path, str):
        raise ModelError(f"infer: priors are keyed by parameter names like 'sir.beta', got {path!r}")
    try:
        leaf = parameter(ex, path).get(ex)
    except ModelError as e:
        raise ModelError(f"infer: priors[{path!r}]: {e}") from None
    if not isinstance(prior, Distribution):
        raise ModelError(
            f"infer: priors[{path!r}] must be a numpyro distribution (e.g. dist.LogNormal(-1.0, 0.5)), "
            f"got {prior!r}"
        )
    if not eqx.is_inexact_array(leaf):
        raise ModelError(
            f"infer: parameter {path!r} is {type(leaf).__name__} {leaf!r}, not a float array; only float "
            "parameters can be inferred"
        )
    if prior.support.is_discrete:
        raise ModelError(
            f"infer: the prior of {path!r} ({type(prior).__name__}) is discrete; NUTS needs continuous "
            "priors"
        )
    owner, field = path.split(".")
    if owner in ex.layout.var_index and field == "init" and isinstance(ex.variable(owner).domain, CategoricalDomain):
        raise ModelError(
            f"infer: {path!r} is the initial value of a categorical variable; NUTS needs continuous parameters"
        )
    bounds = _default_bounds(ex, path)
    support = _support_bounds(prior.support)
    if bounds is not None and support is not None:
        lo, hi = (-math.inf if b is None else b for b in bounds)
        if support[0] < lo or support[1] > hi:
            what = "the domain of variable " + repr(owner) if field == "init" else "[0, 1]"
            raise ModelError(
                f"infer: the prior of {path!r} ({type(prior).__name__}, support {prior.support}) reaches "
                f"outside {what}, [{lo}, {hi}]; its samples could not be simulated. Use a prior inside "
                f"it, e.g. dist.Uniform({lo}, {hi}) or dist.TruncatedNormal(loc, scale, low={lo}, high={hi})"
            )
    shape = tuple(jnp.shape(leaf))
    pshape = tuple(prior.shape())
    if pshape == shape:
        d = prior.to_event(len(prior.batch_shape)) if prior.batch_shape else prior
    elif pshape == ():
        d = prior.expand(shape).to_event(len(shape)) if shape else prior
    else:
        raise ModelError(
            f"infer: the prior of {path!r} has shape {pshape}, but the parameter has shape {shape}; give a "
            f"scalar prior (applied to every entry) or one of shape {shape}"
        )
    x0 = np.asarray(leaf)
    inside = bool(np.all(np.asarray(prior.support(jnp.asarray(x0, jnp.result_type(float))))))
    lp = float(d.log_prob(jnp.asarray(x0))) if inside else -math.inf
    if not (inside and math.isfinite(lp)):
        shown = x0.tolist()
        raise ModelError(
            f"infer: the chains start at the current value of {path!r}, {shown}, where its prior "
            f"{type(prior).__name__} (support {prior.support}) has no density; set a value inside "
            f"with ex.replace({{{path!r}: ...}}) or choose another prior"
        )
    return _Site(path, d, shape, x0, True)


def _median(d) -> np.ndarray:
    """A starting value for a likelihood parameter: its prior median."""
    try:
        m = np.asarray(d.icdf(0.5))
        if np.all(np.isfinite(m)):
            return m
    except Exception:  # noqa: BLE001 - icdf is optional in NumPyro (and needs extras for some)
        pass
    draws = d.sample(jax.random.PRNGKey(0), (2001,))
    return np.asarray(jnp.median(draws, axis=0))


# ---------------------------------------------------------------------------- the model
@dataclasses.dataclass(frozen=True)
class _Problem:
    """Everything the log density needs; built and checked once by :func:`infer`."""

    ex: Executive
    sites: tuple[_Site, ...]
    fixed: dict  # likelihood parameters held fixed
    likelihood: Likelihood
    names: tuple[str, ...]
    rows: tuple[np.ndarray, ...]
    observed: tuple[np.ndarray, ...]
    steps: int
    seed: int
    remat: bool

    def executive(self, values: Mapping) -> Executive:
        """The executive with the sampled parameter values set (traceable)."""
        ex = self.ex
        dtype = jnp.dtype(ex.dtype)
        for s in self.sites:
            if s.model:
                ex = parameter(ex, s.name).set(ex, jnp.asarray(values[s.name], dtype))
        return ex

    def log_likelihood(self, values: Mapping):
        """``{variable: (simulated m, log density per observation)}``; missing rows give 0."""
        ex = self.executive(values)
        sim = _simulate(ex, jax.random.key(self.seed), self.steps, self.names, self.remat)
        params = dict(self.fixed)
        params.update({s.name: values[s.name] for s in self.sites if not s.model})
        out = {}
        for j, name in enumerate(self.names):
            m = sim[jnp.asarray(self.rows[j]), j]
            obs = jnp.asarray(self.observed[j], m.dtype)
            ok = ~jnp.isnan(obs)
            lp = self.likelihood.log_prob(jnp.where(ok, obs, 0), m, **params)
            out[name] = (m, jnp.where(ok, lp, 0))
        return out

    def model(self):
        """The NumPyro model: priors, simulation, one factor per observed variable."""
        import numpyro

        values = {s.name: numpyro.sample(s.name, s.prior) for s in self.sites}
        for name, (_, lp) in self.log_likelihood(values).items():
            total = jnp.sum(lp)
            # a non-finite density is a rejected proposal (a divergence), never an error
            numpyro.factor(f"log_likelihood:{name}", jnp.where(jnp.isfinite(total), total, -jnp.inf))

    def start(self) -> dict:
        return {s.name: s.start for s in self.sites}


def _describe(values: Mapping) -> str:
    fmt = lambda v: f"{float(v):.6g}" if np.ndim(v) == 0 else np.array2string(np.asarray(v), precision=4)
    return ", ".join(f"{k}={fmt(v)}" for k, v in values.items())


def _check_start(problem: _Problem) -> None:
    """Raise before sampling if the log density or its gradient is not finite at the start."""
    start = {k: jnp.asarray(v) for k, v in problem.start().items()}

    def density(values):
        prior = sum(jnp.sum(s.prior.log_prob(values[s.name])) for s in problem.sites)
        parts = problem.log_likelihood(values)
        return prior + sum(jnp.sum(lp) for _, lp in parts.values()), parts

    (total, parts), grad = jax.jit(jax.value_and_grad(density, has_aux=True))(start)
    where = _describe(problem.start())
    for name, (m, lp) in parts.items():
        lp, m = np.asarray(lp), np.asarray(m)
        bad = np.flatnonzero(~np.isfinite(lp))
        if bad.size:
            j = problem.names.index(name)
            rows, obs = problem.rows[j][bad][:5], problem.observed[j][bad][:5]
            raise ModelError(
                f"infer: the likelihood of data[{name!r}] is not finite at the starting point ({where}): "
                f"at rows {rows.tolist()} the observations {obs.tolist()} have simulated values "
                f"{m[bad][:5].tolist()}. Start elsewhere with ex.replace({{...}}), or check the model, the "
                "data and the likelihood"
            )
    if not np.isfinite(float(total)):
        raise ModelError(f"infer: the log density is not finite at the starting point ({where})")
    for k, g in grad.items():
        if not np.all(np.isfinite(np.asarray(g))):
            raise ModelError(
                f"infer: the gradient of the log density with respect to {k!r} is not finite at the "
                f"starting point ({where}); NUTS cannot start there. Start elsewhere with ex.replace({{...}}) "
                "or make the model differentiable there"
            )


# ---------------------------------------------------------------------------- infer
def infer(
    ex: Executive,
    data: Mapping,
    priors: Mapping,
    likelihood: Likelihood,
    *,
    steps: int | None = None,
    warmup: int = 500,
    samples: int = 500,
    chains: int = 4,
    seed: int = 0,
    progress: bool = True,
    target_accept: float = 0.8,
    max_tree_depth: int = 10,
    remat: bool = False,
) -> Posterior:
    """Draw from the posterior of an executive's parameters given observed data (NumPyro NUTS).

    Arguments:
        ex: the executive; its current parameter values are where every chain starts.
        data: ``{variable name: (rows, observed)}`` as in :func:`calibrate`:
            observation ``k`` is compared with row ``rows[k]`` of
            ``traj.value(name)`` (row ``i`` is the value after step ``i + 1``);
            a NaN marks a missing observation.
        priors: ``{"<mechanism>.<field>" or "<variable>.init": numpyro distribution}``,
            the parameters to infer and their priors (a scalar prior applies to
            every entry of an array parameter). A prior must be continuous, put
            the current value inside its support, and stay inside the
            variable's domain for an initial value.
        likelihood: how observations relate to the simulated values:
            :class:`likelihood.Normal`, :class:`likelihood.Poisson` or
            :class:`likelihood.NegativeBinomial`. A parameter of it given as a
            distribution is sampled too and reported under its own name
            (``sigma``, ``concentration``), starting at its prior median.
        steps: length of each run (default: one past the last observed row).
        warmup, samples, chains: NUTS warmup iterations (step size and mass
            matrix adaptation), kept draws per chain, and chains; the chains run
            together under ``vmap`` (one compilation).
        seed: the run key is ``jax.random.key(seed)`` for every evaluation
            (common random numbers: a stochastic model is conditioned on it);
            the sampler's key derives from it too.
        progress: show NumPyro's progress bar.
        target_accept, max_tree_depth: NUTS settings (the target acceptance
            probability of warmup's step-size adaptation, and the maximal tree depth).
        remat: recompute each step in the backward pass (``ex.run(remat=True)``):
            gradient memory of long runs for some speed.

    Returns:
        A :class:`Posterior`. Nothing raises inside the sampler: a proposal with
        a non-finite density counts as a divergence. Problems found before it
        runs raise :class:`ModelError`: unknown parameters, priors outside a
        parameter's domain or without density at the start, data of the wrong
        shape, data without any observation, counts required but not given, a
        log density or gradient that is not finite at the start (the message
        names the parameter values).

    >>> import jax, numpy as np, numpyro.distributions as dist, procela_jax as pj
    >>> ex = pj.demos.sir.make_executive(beta=0.3).remove_mechanism("seasonal")
    >>> _, traj = ex.run(ex.init(jax.random.key(0)), steps=30)
    >>> rows = np.arange(2, 30, 3)
    >>> noisy = np.asarray(traj.value("I"))[rows] + np.random.default_rng(0).normal(0.0, 2.0, rows.size)
    >>> post = pj.infer(ex.replace({"sir.beta": 0.25}), data={"I": (rows, noisy)},
    ...                 priors={"sir.beta": dist.LogNormal(-1.0, 0.5)},
    ...                 likelihood=pj.likelihood.Normal(sigma=2.0),
    ...                 warmup=100, samples=100, chains=2, progress=False)
    >>> post.samples["sir.beta"].shape, round(float(post.samples["sir.beta"].mean()), 2)
    ((2, 100), 0.3)
    """
    t0 = time.perf_counter()
    if not isinstance(ex, Executive):
        raise TypeError(f"infer: expected an Executive, got {type(ex).__name__}")
    for label, v, low in (("warmup", warmup, 0), ("samples", samples, 1), ("chains", chains, 1),
                          ("max_tree_depth", max_tree_depth, 1)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < low:
            raise ModelError(f"infer: {label} must be an int >= {low}, got {v!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise ModelError(f"infer: seed must be an int >= 0, got {seed!r}")
    if not 0 < float(target_accept) < 1:
        raise ModelError(f"infer: target_accept must lie in (0, 1), got {target_accept!r}")
    if not isinstance(likelihood, Likelihood):
        raise ModelError(
            "infer: likelihood must be one of pj.likelihood.Normal(sigma=...), pj.likelihood.Poisson() or "
            f"pj.likelihood.NegativeBinomial(concentration=...), got {likelihood!r}"
        )
    try:
        names, rows, observed, steps = _prepare_data(ex, data, steps, where="infer")
    except ModelError:
        raise
    except ValueError as e:
        raise ModelError(str(e)) from None
    for name, obs in zip(names, observed):
        if np.isnan(obs).all():
            raise ModelError(f"infer: data[{name!r}] has no observed value (every entry is NaN)")
        likelihood.check_data(name, obs)
    if not isinstance(priors, Mapping) or not priors:
        raise ModelError(
            "infer: give priors for the parameters to infer, e.g. priors={'sir.beta': dist.LogNormal(-1.0, "
            f"0.5)}}; this executive's parameters: {_fittable(ex)}"
        )
    sites = [_model_site(ex, path, prior) for path, prior in priors.items()]
    fixed = {}
    for name, p in likelihood.parameters().items():
        if isinstance(p, (int, float)):
            fixed[name] = float(p)
        else:
            sites.append(_Site(name, p, (), _median(p), False))
    problem = _Problem(
        ex=ex, sites=tuple(sites), fixed=fixed, likelihood=likelihood, names=tuple(names), rows=tuple(rows),
        observed=tuple(observed), steps=int(steps), seed=int(seed), remat=bool(remat),
    )
    _check_start(problem)

    from numpyro.infer import MCMC, NUTS, init_to_value

    kernel = NUTS(
        problem.model, init_strategy=init_to_value(values=problem.start()),
        target_accept_prob=float(target_accept), max_tree_depth=int(max_tree_depth),
    )
    mcmc = MCMC(
        kernel, num_warmup=int(warmup), num_samples=int(samples), num_chains=int(chains),
        chain_method="vectorized", progress_bar=bool(progress),
    )
    fields = ("num_steps", "accept_prob", "energy", "potential_energy", "adapt_state.step_size")
    mcmc.run(jax.random.fold_in(jax.random.PRNGKey(seed), 0x5A3), extra_fields=fields)
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    extra = mcmc.get_extra_fields(group_by_chain=True)
    stats = {
        "diverging": np.asarray(extra["diverging"], bool),
        "n_steps": np.asarray(extra["num_steps"]),
        "acceptance_rate": np.asarray(extra["accept_prob"]),
        "energy": np.asarray(extra["energy"]),
        "lp": -np.asarray(extra["potential_energy"]),
        "step_size": np.asarray(extra["adapt_state.step_size"]),
    }
    post = Posterior(
        samples={s.name: draws[s.name] for s in problem.sites},
        stats=stats,
        problem=problem,
        seconds=time.perf_counter() - t0,
        warmup=int(warmup),
    )
    post._warn(_split_rhat(post.samples))
    return post


def _split_rhat(samples: Mapping) -> dict:
    """Largest split R-hat of each parameter (NumPyro's estimator; NaN if undefined)."""
    from numpyro.diagnostics import split_gelman_rubin

    out = {}
    for k, v in samples.items():
        if v.shape[1] < 4:
            out[k] = math.nan
            continue
        with np.errstate(invalid="ignore", divide="ignore"):
            out[k] = float(np.nanmax(np.atleast_1d(split_gelman_rubin(np.asarray(v, np.float64)))))
    return out


# ---------------------------------------------------------------------------- the result
class Posterior:
    """Draws from the posterior of an executive's parameters (the result of :func:`infer`).

    - ``samples``: ``{name: array (chains, draws, *shape)}``, the model
      parameters (``"sir.beta"``) and the sampled likelihood parameters
      (``"sigma"``, ``"concentration"``).
    - ``stats``: per draw, ``diverging``, ``n_steps`` (leapfrog steps, one
      gradient each), ``acceptance_rate``, ``energy``, ``lp`` (log density) and
      ``step_size``, each ``(chains, draws)``.
    - ``divergences``: the number of divergent transitions after warmup.
    - ``data``: ``{variable: (rows, observed)}`` as fitted.
    - ``executive``: the executive at its starting values; ``steps``, ``seed``,
      ``likelihood``, ``priors`` and ``seconds`` (wall time of :func:`infer`).
    - ``summary()``, ``to_arviz()``, ``predict(...)``, ``observe(...)``.
    """

    def __init__(self, *, samples, stats, problem: _Problem, seconds: float, warmup: int):
        self.samples = samples
        self.stats = stats
        self._problem = problem
        self.seconds = seconds
        self.warmup = warmup
        for v in (*samples.values(), *stats.values()):
            v.flags.writeable = False

    # ---- what was fitted -------------------------------------------------------
    @property
    def executive(self) -> Executive:
        return self._problem.ex

    @property
    def steps(self) -> int:
        return self._problem.steps

    @property
    def seed(self) -> int:
        return self._problem.seed

    @property
    def likelihood(self) -> Likelihood:
        return self._problem.likelihood

    @property
    def priors(self) -> dict:
        return {s.name: s.prior for s in self._problem.sites}

    @property
    def parameters(self) -> tuple[str, ...]:
        """Names of the executive's inferred parameters (likelihood parameters excluded)."""
        return tuple(s.name for s in self._problem.sites if s.model)

    @property
    def data(self) -> dict:
        p = self._problem
        return {n: (r, o) for n, r, o in zip(p.names, p.rows, p.observed)}

    @property
    def chains(self) -> int:
        return int(next(iter(self.samples.values())).shape[0])

    @property
    def draws(self) -> int:
        """Draws per chain."""
        return int(next(iter(self.samples.values())).shape[1])

    @property
    def divergences(self) -> int:
        return int(self.stats["diverging"].sum())

    def __repr__(self):
        means = _describe({k: v.mean(axis=(0, 1)) for k, v in self.samples.items()})
        return (f"Posterior({self.chains} chains x {self.draws} draws, {self.divergences} divergences, "
                f"{self.seconds:.1f} s; means: {means})")

    # ---- diagnostics -----------------------------------------------------------
    def _warn(self, rhat: Mapping) -> None:
        problems = []
        if self.divergences:
            problems.append(f"{self.divergences} divergent transitions of {self.chains * self.draws} draws")
        high = {k: v for k, v in rhat.items() if math.isfinite(v) and v > RHAT_LIMIT}
        if high:
            problems.append("R-hat above 1.01 for " + ", ".join(f"{k} ({v:.3f})" for k, v in high.items()))
        if problems:
            warnings.warn(
                "infer: " + "; ".join(problems) + ". The draws may not represent the posterior: run longer "
                "(warmup=, samples=), raise target_accept, or reparameterise the priors.",
                ConvergenceWarning,
                stacklevel=3,
            )

    def to_arviz(self):
        """An ``arviz.InferenceData``: ``posterior`` (every sampled parameter),
        ``sample_stats`` (``diverging``, ``n_steps``, ``acceptance_rate``,
        ``energy``, ``lp``, ``step_size``) and ``observed_data`` (one array per
        observed variable, with its rows as coordinate ``<variable>_row``).

        >>> post = _example_posterior()
        >>> sorted(post.to_arviz().groups())
        ['observed_data', 'posterior', 'sample_stats']
        """
        az = _arviz()
        observed = {n: o for n, (r, o) in self.data.items()}
        coords = {f"{n}_row": np.asarray(r) for n, (r, o) in self.data.items()}
        dims = {n: [f"{n}_row"] for n in observed}
        from . import __version__

        return az.from_dict(
            posterior=dict(self.samples),
            sample_stats=dict(self.stats),
            observed_data=observed,
            coords=coords,
            dims=dims,
            attrs={"inference_library": "numpyro", "procela_jax_version": __version__,
                   "likelihood": repr(self.likelihood), "run_seed": self.seed, "steps": self.steps},
        )

    def summary(self, hdi_prob: float = 0.9):
        """One row per parameter: ``mean``, ``sd``, ``hdi_5%``, ``hdi_95%`` (the
        highest-density interval of ``hdi_prob``), ``mcse_mean``, ``mcse_sd``,
        ``ess_bulk``, ``ess_tail``, ``r_hat`` (ArviZ), as a pandas DataFrame whose
        printout ends with the number of divergences (also in ``.attrs``). Warns
        (:class:`ConvergenceWarning`) when there are divergences or an R-hat above 1.01.

        >>> post = _example_posterior()
        >>> table = post.summary()
        >>> list(table.index), list(table.columns[:4]), table.attrs["divergences"]
        (['sir.beta'], ['mean', 'sd', 'hdi_5%', 'hdi_95%'], 0)
        """
        az = _arviz()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # ArviZ's own note on R-hat with one chain
            table = az.summary(self.to_arviz(), var_names=list(self.samples), hdi_prob=hdi_prob, round_to="none")
        table = _summary_class()(table)
        table.attrs.update(divergences=self.divergences, draws=self.chains * self.draws, chains=self.chains)
        rhat = {}
        for name in self.samples:
            rows = [i for i in table.index if i == name or i.startswith(name + "[")]
            rhat[name] = float(table.loc[rows, "r_hat"].max()) if rows else math.nan
        self._warn(rhat)
        return table

    # ---- predictions -----------------------------------------------------------
    def _pick(self, draws: int | None, seed: int) -> np.ndarray:
        """``(draws, 2)`` (chain, draw) pairs, chosen at random with ``seed``
        (without replacement unless more are asked for than there are)."""
        total = self.chains * self.draws
        n = total if draws is None else draws
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or n < 1:
            raise ModelError(f"Posterior: draws must be a positive int, got {draws!r}")
        rng = np.random.default_rng(seed)
        flat = rng.choice(total, size=int(n), replace=bool(n > total))
        return np.stack(np.divmod(flat, self.draws), axis=1)

    def draw(self, draws: int | None = None, seed: int = 0) -> dict:
        """``{name: array (draws, *shape)}``: posterior draws picked at random.

        >>> post = _example_posterior()
        >>> post.draw(5, seed=1)["sir.beta"].shape
        (5,)
        """
        pick = self._pick(draws, seed)
        return {k: v[pick[:, 0], pick[:, 1]] for k, v in self.samples.items()}

    def predict(self, steps: int | None = None, draws: int | None = 200, seed: int = 0, *, seeds=None,
                **sweep_options):
        """Posterior predictive runs: a :class:`SweepResult` with one scenario per
        posterior draw (picked at random with ``seed``), run by :func:`sweep`.

        Arguments:
            steps: steps per run (default: those of the fit).
            draws: how many posterior draws (``None``: all of them).
            seed: which draws.
            seeds: run keys, one int per draw; default the fit's key for every
                draw (the key the posterior is conditioned on). Give fresh seeds
                to add a stochastic model's own noise to the band.
            sweep_options: passed to :func:`sweep` (``variables=``, ``fields=``,
                ``save_every=``, ``summaries=``, ``chunk_size=``, ``progress=``).

        ``pred.inputs.params`` holds each scenario's parameter values and
        ``pred.info["posterior_draws"]`` its ``(chain, draw)``.

        >>> post = _example_posterior()
        >>> pred = post.predict(steps=40, draws=8, seed=1)
        >>> pred.value("I").shape
        (8, 40)
        """
        from ._sweep import sweep

        steps = self.steps if steps is None else steps
        pick = self._pick(draws, seed)
        params = {k: self.samples[k][pick[:, 0], pick[:, 1]] for k in self.parameters}
        if seeds is None:
            seeds = np.full((len(pick),), self.seed, np.int64)
        res = sweep(self.executive, steps, params=params, seeds=seeds, **sweep_options)
        res.info["posterior_draws"] = pick
        return res

    def observe(self, pred, name, seed: int = 0) -> np.ndarray:
        """Simulated observations around posterior predictive runs: for each
        scenario of ``pred`` (from :meth:`predict`), a draw from the likelihood
        with that scenario's values of ``name`` and its posterior draw's
        likelihood parameters; ``(draws, saved steps)``. With :meth:`predict`'s
        band it is the posterior predictive distribution of the data.

        >>> post = _example_posterior()
        >>> pred = post.predict(steps=30, draws=8)
        >>> post.observe(pred, "I", seed=2).shape
        (8, 30)
        """
        pick = pred.info.get("posterior_draws") if isinstance(getattr(pred, "info", None), dict) else None
        if pick is None:
            raise ModelError("Posterior.observe: pred must come from Posterior.predict(...)")
        m = jnp.asarray(pred.value(name))
        params = dict(self._problem.fixed)
        for s in self._problem.sites:
            if not s.model:
                params[s.name] = jnp.asarray(self.samples[s.name][pick[:, 0], pick[:, 1]])[:, None]
        d = self.likelihood.distribution(m, **params)
        return np.asarray(d.sample(jax.random.PRNGKey(seed)))


@functools.lru_cache(maxsize=1)
def _summary_class():
    """A pandas DataFrame whose printout ends with the divergences (pandas is imported on first use)."""
    import pandas as pd

    class Summary(pd.DataFrame):
        @property
        def _constructor(self):
            return Summary

        def __repr__(self):
            text = super().__repr__()
            if "divergences" in self.attrs:
                text += (f"\n{self.attrs['divergences']} divergent transitions of {self.attrs['draws']} draws "
                         f"({self.attrs['chains']} chains)")
            return text

    return Summary


def _arviz():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # ArviZ's daily note on its coming 1.0
        import arviz

    return arviz


@functools.lru_cache(maxsize=1)
def _example_posterior() -> Posterior:
    """A tiny posterior for the docstring examples (the SIR demo's beta, 1 chain)."""
    import numpyro.distributions as dist

    from .demos import sir
    from .likelihood import Normal

    ex = sir.make_executive(beta=0.3).remove_mechanism("seasonal")
    _, traj = ex.run(ex.init(jax.random.key(0)), steps=30)
    rows = np.arange(2, 30, 3)
    noisy = np.asarray(traj.value("I"))[rows] + np.random.default_rng(0).normal(0.0, 2.0, rows.size)
    return infer(ex.replace({"sir.beta": 0.25}), {"I": (rows, noisy)}, {"sir.beta": dist.LogNormal(-1.0, 0.5)},
                 Normal(sigma=2.0), warmup=150, samples=150, chains=2, progress=False)
