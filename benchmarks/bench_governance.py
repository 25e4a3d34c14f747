"""Governance overhead: the SIR demo with five invariants and two hooks vs without.

The governed model watches the epidemic in every phase of the step (PRE, RUNTIME,
POST), each invariant with a handler, and two hooks keep a small state machine in
``state.aux``. Both models run one scenario for ``--steps`` steps as one jitted
scan; rounds alternate between the two models and the medians are compared.

    python benchmarks/bench_governance.py [--steps 5000] [--rounds 9]

Target: governed speed at least 0.5x the plain model's.
"""

from __future__ import annotations

import argparse
import statistics

import jax
import jax.numpy as jnp

import procela_jax as pj

P, S = pj.InvariantPhase, pj.InvariantSeverity
N = pj.demos.sir.POPULATION


def conserved(snap):
    return jnp.abs(snap["S"] + snap["I"] + snap["R"] - N) < 1e-2 * N


def agreement(snap):
    h = snap.pending("I")
    hi = jnp.max(jnp.where(h["mask"], h["values"], -jnp.inf))
    lo = jnp.min(jnp.where(h["mask"], h["values"], jnp.inf))
    return hi - lo < 5.0


def confident(snap):
    h = snap.pending("S")
    return jnp.sum(jnp.where(h["mask"], h["confidences"], 0.0)) > 0.3 * jnp.sum(h["mask"])


def bounded(snap):
    return snap["I"] <= 0.3 * N


def below_peak(snap):
    return snap["I"] <= snap.aux["peak"]


def count_renorm(state, snap):
    return state.with_aux({**state.aux, "renorm": state.aux["renorm"] + 1})


def trust_the_best(state, snap):
    for name in "SIR":  # all three, so the resolved world still conserves the population
        state = state.set_policy(name, pj.HighestConfidencePolicy())
    return state


def note_doubt(state, snap):
    return state.with_aux({**state.aux, "doubt": state.aux["doubt"] + 1})


def raise_alarm(state, snap):
    return state.with_aux({**state.aux, "alarm": jnp.where(state.aux["alarm"] < 0, snap.step, state.aux["alarm"])})


def new_peak(state, snap):
    return state.with_aux({**state.aux, "peak": snap["I"]})


INVARIANTS = [
    pj.SystemInvariant("conserved", conserved, count_renorm, phase=P.PRE, severity=S.WARNING),
    pj.SystemInvariant("agreement", agreement, trust_the_best, phase=P.RUNTIME, severity=S.WARNING),
    pj.SystemInvariant("confident", confident, note_doubt, phase=P.RUNTIME, severity=S.INFO),
    pj.SystemInvariant("bounded", bounded, raise_alarm, phase=P.POST, severity=S.CRITICAL),
    pj.SystemInvariant("below_peak", below_peak, new_peak, phase=P.POST, severity=S.INFO),
]


def pre_step(state, step):
    """The seasonal theory sits out the second half of each year."""
    off = (step % 365) >= 182
    return state.disable("seasonal", when=off).enable("seasonal", when=~off)


def post_step(state, step):
    """A smoothed prevalence, kept by governance for its own use."""
    aux = state.aux
    return state.with_aux({**aux, "smooth_I": 0.9 * aux["smooth_I"] + 0.1 * state.value("I")})


AUX = {"renorm": jnp.asarray(0), "doubt": jnp.asarray(0), "alarm": jnp.asarray(-1),
       "peak": jnp.asarray(0.0), "smooth_I": jnp.asarray(0.0)}


def models():
    plain = pj.demos.sir.make_executive()
    governed = pj.demos.sir.make_executive(invariants=INVARIANTS, pre_step=pre_step, post_step=post_step, aux=AUX)
    return plain, governed


def steps_per_second(ex, state, steps, save):
    with pj.Timer() as t:
        jax.block_until_ready(ex.run(state, steps, save=save))
    return steps / t.elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--rounds", type=int, default=9)
    args = parser.parse_args(argv)
    plain, governed = models()
    print(f"SIR demo, one scenario, {args.steps} steps, {args.rounds} interleaved rounds, "
          f"backend {jax.default_backend()}")
    print(f"governed: {len(INVARIANTS)} invariants (PRE 1, RUNTIME 2, POST 2, each with a handler), "
          "pre_step and post_step hooks")
    ratios = {}
    for label, save in (("trajectory saved", pj.Save()), ("final state only", None)):
        states = {}
        for name, ex in (("plain", plain), ("governed", governed)):
            states[name] = ex.init(jax.random.key(0))
            jax.block_until_ready(ex.run(states[name], args.steps, save=save))  # compile
        rates = {"plain": [], "governed": []}
        for _ in range(args.rounds):
            for name, ex in (("plain", plain), ("governed", governed)):
                rates[name].append(steps_per_second(ex, states[name], args.steps, save))
        med = {k: statistics.median(v) for k, v in rates.items()}
        ratios[label] = med["governed"] / med["plain"]
        print(f"  {label:17s}: plain {med['plain']:>10,.0f} steps/s   governed {med['governed']:>10,.0f} steps/s"
              f"   ratio {ratios[label]:.2f}x (target >= 0.5x)")
    final, _ = governed.run(governed.init(jax.random.key(0)), args.steps, save=None)
    counts = {inv.name: int(final.violations(inv.name)) for inv in INVARIANTS}
    print(f"  governed run: violations {counts}, safe mode {bool(final.safe_mode)}")
    return ratios


if __name__ == "__main__":
    main()
