"""An SIR epidemic with two competing theories resolved by weighted voting.

``sir`` is the textbook deterministic theory (parameters ``beta``, ``gamma``);
``seasonal`` believes transmission follows the seasons and is noisy (daily
multiplicative noise on new infections), so it proposes with a lower, randomly
varying confidence. Both conserve the population, and so does their weighted
mean. One step is one day.

>>> import jax, procela_jax as pj
>>> ex = pj.demos.sir.make_executive()
>>> state, traj = ex.run(ex.init(jax.random.key(0)), steps=365)
>>> traj.value("I").shape
(365,)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .._domain import RangeDomain
from .._executive import Executive
from .._mechanism import Mechanism
from .._policy import HighestConfidencePolicy, WeightedVotingPolicy
from .._record import VariableRecord
from .._variable import Variable

POPULATION = 1000.0


class DeterministicSIR(Mechanism):
    """Mass-action SIR: ``beta * S * I / N`` new infections, ``gamma * I`` recoveries."""

    beta: float = 0.3
    gamma: float = 0.1
    confidence: float = 0.8
    weight: float = 1.0
    population: float = POPULATION

    def transform(self, values, key):
        s, i, r = values["S"], values["I"], values["R"]
        infections = self.beta * s * i / self.population
        recoveries = self.gamma * i
        rec = lambda x: VariableRecord(x, confidence=self.confidence, weight=self.weight)
        return {"S": rec(s - infections), "I": rec(i + infections - recoveries), "R": rec(r + recoveries)}


class SeasonalSIR(Mechanism):
    """SIR whose transmission swings with the seasons, with noisy daily infections."""

    beta: float = 0.3
    gamma: float = 0.1
    amplitude: float = 0.25
    noise: float = 0.1
    weight: float = 1.0
    population: float = POPULATION

    def transform(self, values, key):
        k_noise, k_conf = jax.random.split(key)
        s, i, r = values["S"], values["I"], values["R"]
        season = 1.0 + self.amplitude * jnp.cos(2 * jnp.pi * values.step / 365.0)
        shock = jnp.exp(self.noise * jax.random.normal(k_noise, dtype=s.dtype))
        infections = jnp.minimum(self.beta * season * shock * s * i / self.population, s)
        recoveries = self.gamma * i
        conf = jax.random.uniform(k_conf, dtype=s.dtype, minval=0.4, maxval=0.7)
        rec = lambda x: VariableRecord(x, confidence=conf, weight=self.weight)
        return {"S": rec(s - infections), "I": rec(i + infections - recoveries), "R": rec(r + recoveries)}


def make_executive(
    *,
    beta: float = 0.3,
    gamma: float = 0.1,
    amplitude: float = 0.25,
    noise: float = 0.1,
    infected: float = 10.0,
    population: float = POPULATION,
    **kwargs,
) -> Executive:
    """The SIR demo executive (variables ``S``, ``I``, ``R``; mechanisms ``sir``,
    ``seasonal``). Extra keyword arguments go to :class:`Executive`."""
    domain = RangeDomain(0.0, population)
    policies = dict(policy=WeightedVotingPolicy(), alternatives=(HighestConfidencePolicy(),))
    S = Variable("S", domain, init=population - infected, out_of_domain="clip", units="people", **policies)
    I = Variable("I", domain, init=infected, out_of_domain="clip", units="people", **policies)  # noqa: E741
    R = Variable("R", domain, init=0.0, out_of_domain="clip", units="people", **policies)
    sir = DeterministicSIR(beta=beta, gamma=gamma, population=population, reads=[S, I, R], writes=[S, I, R], name="sir")
    seasonal = SeasonalSIR(
        beta=beta, gamma=gamma, amplitude=amplitude, noise=noise, population=population,
        reads=[S, I, R], writes=[S, I, R], name="seasonal",
    )
    return Executive(variables=[S, I, R], mechanisms=[sir, seasonal], **kwargs)


def main(out: str = "sir_demo.png", seed: int = 0, steps: int = 365) -> dict:
    """Run the demo for a year of days, print a summary and write a plot."""
    import numpy as np

    from .._timer import Timer

    ex = make_executive()
    state = ex.init(jax.random.key(seed))
    with Timer() as compile_timer:
        jax.block_until_ready(ex.run(state, steps))
    with Timer() as timer:
        final, traj = jax.block_until_ready(ex.run(state, steps))
    I = np.asarray(traj.value("I"))  # noqa: E741
    peak_day = int(np.argmax(I)) + 1
    summary = {
        "S": float(final.value("S")),
        "I": float(final.value("I")),
        "R": float(final.value("R")),
        "peak_infected": float(I.max()),
        "peak_day": peak_day,
        "mean_confidence_I": float(final.stats("I").confidence),
    }
    print(f"SIR epidemic, two competing theories (deterministic, seasonal+noisy), {steps} daily steps, seed {seed}")
    print(f"  final   S={summary['S']:8.1f}  I={summary['I']:8.1f}  R={summary['R']:8.1f}")
    print(f"  peak    {summary['peak_infected']:.1f} infected on day {peak_day}")
    print(f"  confidence of I: last {float(final.confidence('I')):.3f}, mean over the year {summary['mean_confidence_I']:.3f}")
    print(f"  compile+run {compile_timer.elapsed:.2f} s, run {timer.elapsed * 1e3:.1f} ms "
          f"({steps / max(timer.elapsed, 1e-9):,.0f} steps/s)")
    _plot(traj, out)
    print(f"  plot written to {out}")
    return summary


def _plot(traj, out):
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    import numpy as np

    days = np.asarray(traj.steps)
    fig, (ax, axc) = plt.subplots(2, 1, figsize=(8, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    for name, color in (("S", "tab:blue"), ("I", "tab:red"), ("R", "tab:green")):
        ax.plot(days, np.asarray(traj.value(name)), color=color, label=name)
    ax.set_ylabel("people")
    ax.set_title("SIR: deterministic vs seasonal theory, weighted voting")
    ax.legend()
    axc.plot(days, np.asarray(traj.confidence("I")), color="tab:red")
    axc.set_ylabel("confidence (I)")
    axc.set_xlabel("day")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
