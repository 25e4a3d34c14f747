"""NUTS through procela_jax against the same model written directly in NumPyro.

Run from the repository root::

    python benchmarks/bench_infer.py                 # 4 chains x (500 warmup + 500 samples)
    python benchmarks/bench_infer.py --figure docs/bayesian.png

The model: the SIR demo's deterministic theory (``pj.demos.sir``, the seasonal
theory removed; 1000 people, 10 infected at the start), 60 daily steps, fitted
to synthetic counts drawn from a negative binomial around a run with
``beta = 0.35, gamma = 0.1`` (every third day observed). Priors on beta, gamma
and the concentration. The contenders:

* ``pj.infer``: the executive inside NumPyro's NUTS (chains vectorised);
* direct: the same discrete-time SIR (the same update, the same clipping to
  [0, N]) written as a ``lax.scan`` in a NumPyro model, same priors, same
  starting point, same sampler settings.

Both run twice in this process, alternating; the second runs are reported
(the first includes compilation, also reported). Figures: wall time, gradient
evaluations per second (leapfrog steps of the sampling phase over its
share of the wall time, and a batched value-and-gradient of the log density
timed on its own, 4 chains at once), and effective samples per second (ArviZ's
bulk ESS, the smallest over the parameters, over the wall time). Target:
procela_jax at least 0.5x the direct model's effective samples per second.
"""

from __future__ import annotations

import argparse
import time

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.infer import MCMC, NUTS, init_to_value
from numpyro.infer.util import initialize_model

import procela_jax as pj

N, I0, STEPS = 1000.0, 10.0, 60
PRIORS = {"beta": dist.LogNormal(-1.0, 0.5), "gamma": dist.LogNormal(-2.3, 0.5),
          "concentration": dist.Exponential(0.2)}
START = {"beta": 0.3, "gamma": 0.12}


def data():
    truth = pj.demos.sir.make_executive(beta=0.35, gamma=0.1).remove_mechanism("seasonal")
    _, traj = truth.run(truth.init(jax.random.key(0)), STEPS)
    rows = np.arange(2, STEPS, 3)
    m = np.asarray(traj.value("I"))[rows]
    y = np.asarray(dist.NegativeBinomial2(jnp.asarray(m), 20.0).sample(jax.random.PRNGKey(1)), float)
    return rows, y


def direct_model(rows, y):
    def sim(beta, gamma):
        def step(c, _):
            s, i, r = c
            new, rec = beta * s * i / N, gamma * i
            c = tuple(jnp.clip(x, 0.0, N) for x in (s - new, i + new - rec, r + rec))
            return c, c[1]

        return jax.lax.scan(step, (N - I0, I0, 0.0), None, length=STEPS)[1]

    def model():
        beta = numpyro.sample("beta", PRIORS["beta"])
        gamma = numpyro.sample("gamma", PRIORS["gamma"])
        phi = numpyro.sample("concentration", PRIORS["concentration"])
        m = jnp.maximum(sim(beta, gamma)[rows], 1e-9)
        numpyro.sample("y", dist.NegativeBinomial2(m, phi), obs=y)

    return model


def run_direct(model, warmup, samples, chains, seed):
    init = dict(START, concentration=float(PRIORS["concentration"].icdf(0.5)))
    mcmc = MCMC(NUTS(model, init_strategy=init_to_value(values=init)), num_warmup=warmup, num_samples=samples,
                num_chains=chains, chain_method="vectorized", progress_bar=False)
    t = time.perf_counter()
    mcmc.run(jax.random.PRNGKey(seed), extra_fields=("num_steps",))
    wall = time.perf_counter() - t
    draws = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    steps = int(np.asarray(mcmc.get_extra_fields()["num_steps"]).sum())
    div = int(np.asarray(mcmc.get_extra_fields()["diverging"]).sum())
    return draws, wall, steps, div


def run_pj(ex, rows, y, warmup, samples, chains, seed):
    t = time.perf_counter()
    post = pj.infer(ex, {"I": (rows, y)}, {"sir.beta": PRIORS["beta"], "sir.gamma": PRIORS["gamma"]},
                    pj.likelihood.NegativeBinomial(concentration=PRIORS["concentration"]),
                    warmup=warmup, samples=samples, chains=chains, seed=seed, progress=False)
    wall = time.perf_counter() - t
    draws = {"beta": post.samples["sir.beta"], "gamma": post.samples["sir.gamma"],
             "concentration": post.samples["concentration"]}
    return draws, wall, int(post.stats["n_steps"].sum()), post.divergences, post


def gradient_rate(model, start, chains, rounds=200):
    """Batched value-and-gradient evaluations of the potential per second (chains at once)."""
    info = initialize_model(jax.random.PRNGKey(0), model, init_strategy=init_to_value(values=start))
    z = jax.tree.map(lambda x: jnp.broadcast_to(x, (chains, *jnp.shape(x))), info.param_info.z)
    f = jax.jit(jax.vmap(jax.value_and_grad(info.potential_fn)))
    jax.block_until_ready(f(z))
    t = time.perf_counter()
    for _ in range(rounds):
        jax.block_until_ready(f(z))
    return rounds * chains / (time.perf_counter() - t)


def pj_model(ex, rows, y):
    """The NumPyro model pj.infer builds (for the gradient timing)."""
    from procela_jax._infer import _model_site, _Problem, _Site

    conc = PRIORS["concentration"]
    sites = (_model_site(ex, "sir.beta", PRIORS["beta"]), _model_site(ex, "sir.gamma", PRIORS["gamma"]),
             _Site("concentration", conc, (), np.asarray(conc.icdf(0.5)), False))
    problem = _Problem(ex=ex, sites=sites, fixed={}, likelihood=pj.likelihood.NegativeBinomial(concentration=conc),
                       names=("I",), rows=(rows,), observed=(y,), steps=int(rows[-1]) + 1, seed=0, remat=False)
    return problem.model, problem.start()


def ess_rate(draws, wall):
    ess = min(float(az.ess(v)) for v in draws.values())
    return ess, ess / wall


def figure(path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    flu = pj.datasets.boarding_school()
    K = 2
    rows = flu.day * K - 1
    ex = pj.demos.sir.make_executive(population=763.0, infected=1.0, beta=1.5 / K, gamma=0.5 / K)
    ex = ex.remove_mechanism("seasonal")
    post = pj.infer(ex, {"I": (rows, flu.in_bed)},
                    {"sir.beta": dist.LogNormal(np.log(1.0 / K), 1.0), "sir.gamma": dist.LogNormal(np.log(0.3 / K), 1.0)},
                    pj.likelihood.NegativeBinomial(concentration=dist.Exponential(0.2)),
                    warmup=500, samples=500, chains=4, seed=0, progress=False)
    pred = post.predict(steps=int(rows[-1]) + 1, draws=400, seed=1)
    counts = post.observe(pred, "I", seed=2)
    beta, gamma = post.samples["sir.beta"].ravel() * K, post.samples["sir.gamma"].ravel() * K
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.4), gridspec_kw={"width_ratios": [1, 1, 1, 1.6]})
    for ax, (name, x) in zip(axes, (("beta (per day)", beta), ("gamma (per day)", gamma), ("R0 = beta / gamma", beta / gamma))):
        ax.hist(x, bins=50, density=True, color="tab:blue", alpha=0.75)
        ax.set_title(f"{name}: {x.mean():.2f} [{np.quantile(x, 0.05):.2f}, {np.quantile(x, 0.95):.2f}]", fontsize=10)
        ax.set_yticks([])
    ax, days = axes[3], pred.steps / K
    ax.fill_between(days, *np.quantile(counts, [0.05, 0.95], axis=0), color="tab:red", alpha=0.15,
                    label="90% predictive interval")
    ax.fill_between(days, *np.quantile(pred.value("I"), [0.05, 0.95], axis=0), color="tab:red", alpha=0.4,
                    label="90% band of simulated I")
    ax.plot(days, np.median(pred.value("I"), axis=0), color="tab:red")
    ax.scatter(flu.day, flu.in_bed, color="black", zorder=3, s=14, label="in bed (BMJ 1978)")
    ax.set_xlabel("day")
    ax.set_ylabel("boys in bed")
    ax.legend(fontsize=8)
    fig.suptitle("pj.infer on the 1978 boarding-school influenza outbreak: SIR, negative binomial, 4 chains x 500",
                 fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"figure written to {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--figure", default=None)
    args = ap.parse_args()
    print(f"procela_jax from {pj.__file__}; jax {jax.__version__}, numpyro {numpyro.__version__}, "
          f"{jax.default_backend()}, {jax.device_count()} device(s)")
    rows, y = data()
    ex = pj.demos.sir.make_executive(beta=START["beta"], gamma=START["gamma"]).remove_mechanism("seasonal")
    direct = direct_model(rows, y)
    kw = dict(warmup=args.warmup, samples=args.samples, chains=args.chains)
    results = {}
    for rnd in range(2):
        for name in ("procela_jax", "direct"):
            if name == "direct":
                draws, wall, steps, div = run_direct(direct, seed=rnd, **kw)
            else:
                draws, wall, steps, div, _ = run_pj(ex, rows, y, seed=rnd, **kw)
            results.setdefault(name, []).append((draws, wall, steps, div))
    start = dict(START, concentration=float(PRIORS["concentration"].icdf(0.5)))
    grads = {"procela_jax": gradient_rate(*pj_model(ex, rows, y), args.chains),
             "direct": gradient_rate(direct, start, args.chains)}
    print(f"\nNUTS, {args.chains} chains x ({args.warmup} warmup + {args.samples} samples), SIR {STEPS} steps, "
          f"{len(rows)} observations")
    print(f"{'':14s} {'first run s':>11s} {'wall s':>8s} {'leapfrog':>9s} {'div':>4s} {'min ESS':>8s} "
          f"{'ESS/s':>8s} {'grad/s (run)':>13s} {'grad/s (alone)':>15s} {'beta mean':>10s}")
    rate = {}
    for name, runs in results.items():
        first, (draws, wall, steps, div) = runs[0], runs[1]
        ess, per_s = ess_rate(draws, wall)
        rate[name] = per_s
        print(f"{name:14s} {first[1]:11.2f} {wall:8.2f} {steps:9d} {div:4d} {ess:8.0f} {per_s:8.1f} "
              f"{steps * (args.warmup + args.samples) / args.samples / wall:13.0f} {grads[name]:15.0f} "
              f"{draws['beta'].mean():10.4f}")
    print(f"\nprocela_jax / direct, effective samples per second: {rate['procela_jax'] / rate['direct']:.2f}x "
          "(target >= 0.5x)")
    print("grad/s (run): sampling-phase leapfrog steps scaled to warmup + samples, over the wall time")
    if args.figure:
        figure(args.figure)


if __name__ == "__main__":
    main()
