"""The AMR hospital model: the hidden world, the variables, the eleven theories and
the per-step signals (prediction errors, family coverage, policy fragility)."""

from __future__ import annotations

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ..._domain import RangeDomain, RealDomain
from ..._mechanism import Mechanism
from ..._policy import HighestConfidencePolicy, WeightedConfidencePolicy
from ..._record import VariableRecord
from ..._variable import Variable

# ---- the families and their theories ---------------------------------------------------
#: Ontology families, in registry order, with the intervention each one advocates.
FAMILIES = ("contact", "environmental", "selection")
#: Intervention codes: 0 none, 1 isolation (contact), 2 cleaning (environmental),
#: 3 stewardship (selection).
INTERVENTIONS = ("none", "isolation", "cleaning", "stewardship")

#: One row per theory, in execution order:
#: (name, family, driver variable, theta, confidence, bias, noise sd, intervention effect).
THEORIES = (
    ("Contact", 0, "colonized", 0.03, 0.80, 1.0, 0.5, 0.3),
    ("ContactNoisy", 0, "colonized", 0.03, 0.64, 1.0, 1.0, 0.3),
    ("ContactOverestimate", 0, "colonized", 0.03, 0.72, 1.5, 0.5, 0.3),
    ("Environmental", 1, "environmental_load", 0.08, 0.80, 1.0, 0.5, 0.5),
    ("EnvironmentalNoisy", 1, "environmental_load", 0.08, 0.64, 1.0, 1.0, 0.5),
    ("EnvironmentalLagged", 1, "environmental_load", 0.08, 0.68, 0.7, 0.5, 0.5),
    ("EnvironmentalOverestimate", 1, "environmental_load", 0.08, 0.72, 1.3, 0.5, 0.5),
    ("Selection", 2, "antibiotic_usage", 0.05, 0.80, 1.0, 0.5, 0.6),
    ("SelectionNoisy", 2, "antibiotic_usage", 0.05, 0.80, 1.0, 1.5, 0.6),
    ("SelectionBiased", 2, "antibiotic_usage", 0.05, 0.68, 1.4, 0.5, 0.6),
    ("SelectionUnderestimate", 2, "antibiotic_usage", 0.05, 0.72, 0.6, 0.5, 0.6),
)
MECHANISMS = tuple(row[0] for row in THEORIES)
FAMILY_OF = tuple(row[1] for row in THEORIES)
N_MECH = len(THEORIES)

#: Coverage: a theory's proposal within ``COVERAGE_SIGMA`` patients scores exp(-1);
#: each family's score is smoothed with weight ``COVERAGE_ALPHA`` on the newest value.
COVERAGE_SIGMA = 5.0
COVERAGE_ALPHA = 0.2
#: Policy fragility is the mean of the last ``FRAGILITY_WINDOW`` proposal spreads.
FRAGILITY_WINDOW = 5
#: Governance judges experiments on the mean of the last ``ERROR_WINDOW`` errors.
ERROR_WINDOW = 10

# ---- the hidden world ---------------------------------------------------------------------
#: World constants: selection, environmental and contact coefficients, clearance,
#: and the noise sd of colonisation, antibiotic usage and environmental load.
WORLD = dict(alpha=0.05, beta=0.08, gamma=0.03, delta=0.02, sd_c=0.25, sd_a=1.1, sd_e=2.0)
#: Last step of the selection regime and of the environmental regime.
REGIME_ENDS = (60, 110)


def world_normals(steps: int, seed: int = 42) -> np.ndarray:
    """The world's standard normal draws, shape ``(steps, 3)``: row ``t`` drives step
    ``t`` (antibiotic usage, environmental load, colonisation); row 0 is unused.

    The original draws them from ``numpy.random.default_rng(seed)`` (seed 42 in
    every run), three per step from step 1 on.

    >>> z = world_normals(4)
    >>> z.shape, bool((z[0] == 0).all())
    ((4, 3), True)
    """
    z = np.zeros((steps, 3))
    if steps > 1:
        z[1:] = np.random.default_rng(seed).standard_normal(3 * (steps - 1)).reshape(steps - 1, 3)
    return z


@functools.lru_cache(maxsize=8)
def world_hook(steps: int, seed: int = 42):
    """The pre-step hook of the hidden world for runs of ``steps`` steps.

    From step 1 on the world advances and its observations are committed, as the
    original's ``Variable.set``, with confidence 0.99. The world is open-loop: it
    reads only its own three observables, so it is the same series in every run.
    (Cached, so that executives built for the same world share one compiled step.)
    """
    normals = world_normals(steps, seed)

    def world_step(state, t):
        z = jnp.asarray(normals, state.values.dtype)[t]
        c, a, e = state.value("colonized"), state.value("antibiotic_usage"), state.value("environmental_load")
        a = jnp.maximum(0.0, a + WORLD["sd_a"] * z[0])
        e = jnp.maximum(0.0, e + WORLD["sd_e"] * z[1])
        regime = jnp.where(t <= REGIME_ENDS[0], 0, jnp.where(t <= REGIME_ENDS[1], 1, 2))
        force = jnp.select(
            [regime == 0, regime == 1], [WORLD["alpha"] * a, WORLD["beta"] * e], WORLD["gamma"] * c
        )
        c = jnp.clip(((c + force) - WORLD["delta"] * c) + WORLD["sd_c"] * z[2], 0.0, 100.0)
        observed = {"antibiotic_usage": a, "environmental_load": e, "regime": regime, "colonized": c}
        return state.set_many(observed, 0.99, when=t >= 1)

    return world_step


#: Folded into each step's key for the theories' draws (``noise="jax"``).
NOISE_TAG = 0x414D52


@functools.lru_cache(maxsize=8)
def pre_step(steps: int, world_seed: int = 42, noise: str = "jax"):
    """The study's pre-step hook: the hidden world advances (:func:`world_hook`); with
    ``noise="jax"`` the theories' standard normal draws of the step are then made at
    once, ``normal(fold_in(fold_in(key, step), NOISE_TAG), (11,))``, into ``aux["z"]``
    (one vectorised draw instead of one key per theory: the same independence, a
    fraction of the work)."""
    world = world_hook(steps, world_seed)
    if noise != "jax":
        return world

    def world_and_noise(state, t):
        state = world(state, t)
        key = jax.random.fold_in(jax.random.fold_in(state.key, t), NOISE_TAG)
        z = jax.random.normal(key, (N_MECH,), dtype=state.values.dtype)
        return state.with_aux({**state.aux, "z": z})

    return world_and_noise


# ---- variables ------------------------------------------------------------------------------
def variables() -> list[Variable]:
    """The study's variables (the observables, the contested decision and forecasts,
    and the governance signals).

    >>> [v.name for v in variables()][:5]
    ['colonized', 'antibiotic_usage', 'environmental_load', 'regime', 'intervention_code']
    """
    contested = dict(policy=WeightedConfidencePolicy())
    signal = dict(memory=1)
    return [
        Variable("colonized", RangeDomain(0.0, 100.0), init=10.0, memory=1, units="patients"),
        Variable("antibiotic_usage", RangeDomain(0.0, 50.0), init=20.0, memory=1, units="DDD"),
        Variable("environmental_load", RangeDomain(0.0, 100.0), init=10.0, memory=1, units="index"),
        Variable("regime", RangeDomain(0.0, 2.0), init=0.0, memory=1,
                 description="true driver: 0 selection, 1 environment, 2 contact"),
        Variable("intervention_code", RangeDomain(0.0, 3.0), init=0.0, memory=1,
                 policy=WeightedConfidencePolicy(), alternatives=(HighestConfidencePolicy(),),
                 description="0 none, 1 isolation, 2 cleaning, 3 stewardship"),
        # forecasts of the next colonisation, with and without the intervention in force;
        # the last two commits are kept (errors compare the previous one with the world)
        Variable("predicted_colonized", RangeDomain(0.0, 100.0), memory=2, units="patients", **contested),
        Variable("baseline_colonized", RangeDomain(0.0, 100.0), memory=2, units="patients", **contested),
        # signals; the first record of each is its declared initial value, which the
        # original does not have (see ``is_set``)
        Variable("error_colonized", RealDomain(), memory=ERROR_WINDOW, units="patients"),
        Variable("error_baseline_colonized", RealDomain(), units="patients", **signal),
        *(Variable(f"{f}_coverage", RangeDomain(0.0, 1.0), **signal) for f in FAMILIES),
        Variable("policy_fragility", RangeDomain(0.0, 1.0), **signal),
    ]


def is_set(view, name):
    """Whether a signal has been written (beyond its declared initial record)."""
    return view.stats(name).count > 1


# ---- the theories ---------------------------------------------------------------------------
class Theory(Mechanism):
    """One causal theory of colonisation: ``C' = C + theta * X * bias * m + noise``.

    ``X`` is the theory's driver (colonisation itself, environmental load or
    antibiotic usage), ``m = 1 - effect`` when the intervention in force
    (``round`` of the last committed ``intervention_code``) is the one this theory's
    family advocates, else 1. It proposes that forecast to ``predicted_colonized``
    (confidence ``confidence``), the forecast without the intervention to
    ``baseline_colonized`` (confidence ``0.9 * confidence``), and its family's
    intervention code to ``intervention_code``; one noise draw serves both forecasts.

    With ``noise="numpy"`` the draw is read from ``aux["noise"]`` (a per-run
    numpy stream consumed in mechanism order by the enabled theories, the
    original's order); with ``noise="jax"`` it is this theory's entry of the step's
    draws ``aux["z"]`` (see :func:`pre_step`), so disabling one theory never changes
    another's noise.
    """

    theta: float
    confidence: float
    bias: float
    sigma: float
    effect: float
    code: int = eqx.field(static=True, default=1)
    driver: str = eqx.field(static=True, default="colonized")
    index: int = eqx.field(static=True, default=0)
    noise: str = eqx.field(static=True, default="jax")

    def transform(self, values, key):
        c = values["colonized"]
        x = values[self.driver]
        advocated = jnp.round(values["intervention_code"]) == self.code
        m = jnp.where(advocated, 1.0 - self.effect, 1.0)
        if self.noise == "numpy":
            rank = sum((values.is_enabled(n).astype(jnp.int32) for n in MECHANISMS[: self.index]),
                       jnp.asarray(0, jnp.int32))
            z = values.aux["noise"][values.aux["cursor"] + rank]
        else:
            z = values.aux["z"][self.index]
        eps = self.sigma * z
        drive = self.theta * x * self.bias
        with_ = jnp.clip((c + drive * m) + eps, 0.0, 100.0)
        without = jnp.clip((c + drive) + eps, 0.0, 100.0)
        return {
            "predicted_colonized": VariableRecord(with_, confidence=self.confidence),
            "baseline_colonized": VariableRecord(without, confidence=self.confidence * 0.9),
            "intervention_code": VariableRecord(jnp.asarray(float(self.code), c.dtype), confidence=self.confidence),
        }


def theories(noise: str) -> list[Theory]:
    """The eleven theories, in execution order (contact, environmental, selection).

    >>> [(t.name, t.code, t.driver) for t in theories("jax")][::4]
    [('Contact', 1, 'colonized'), ('EnvironmentalNoisy', 2, 'environmental_load'), ('SelectionNoisy', 3, 'antibiotic_usage')]
    """
    out = []
    for i, (name, fam, driver, theta, conf, bias, sd, effect) in enumerate(THEORIES):
        reads = ["colonized", "intervention_code"] + ([] if driver == "colonized" else [driver])
        out.append(Theory(
            theta=theta, confidence=conf, bias=bias, sigma=sd, effect=effect, code=fam + 1, driver=driver,
            index=i, noise=noise, name=name, reads=reads,
            writes=["predicted_colonized", "baseline_colonized", "intervention_code"],
        ))
    return out


# ---- numpy's summation order (governance thresholds are strict, so the replay keeps it) ---
def np_mean_trailing(v, n):
    """``numpy.mean`` of the last ``n`` entries of ``v`` (the others are 0), summed in
    numpy's order: left to right below 8 terms, eight pairwise partial sums above.

    >>> import jax, numpy as np
    >>> v = np.random.default_rng(0).random(10)
    >>> with jax.enable_x64(True):
    ...     tail = lambda n: jnp.asarray(np.where(np.arange(10) >= 10 - n, v, 0.0))
    ...     same = [float(np_mean_trailing(tail(n), n)) == np.mean(v[10 - n:]) for n in range(1, 11)]
    >>> all(same)
    True
    """
    size = v.shape[-1]
    total = functools.reduce(lambda a, b: a + b, [v[..., i] for i in range(size)])
    for k in range(8, size + 1):
        x = [v[..., size - k + j] for j in range(k)]
        r = ((x[0] + x[1]) + (x[2] + x[3])) + ((x[4] + x[5]) + (x[6] + x[7]))
        for j in range(8, k):
            r = r + x[j]
        total = jnp.where(n == k, r, total)
    return total / n


def recent_error(view):
    """Mean of the last ``ERROR_WINDOW`` prediction errors (the governance window)."""
    r = view.recent("error_colonized")
    ok = r["valid"] & (r["step"] >= 1)
    return np_mean_trailing(jnp.where(ok, r["value"], 0.0), jnp.sum(ok))


# ---- post-step signals -------------------------------------------------------------------------
def signals(state, t):
    """Post-step hook: prediction errors (from step 1), family coverage (from step 1)
    and policy fragility (every step), as the original computes them; then the run's
    tallies, and the noise cursor advances past this step's draws."""
    aux = dict(state.aux)
    layout = state.layout
    live = t >= 1
    c = state.value("colonized")
    # errors of the previous step's forecasts against the new observation
    p_prev = state.recent("predicted_colonized")["value"][..., -2]
    b_prev = state.recent("baseline_colonized")["value"][..., -2]
    err, err_b = jnp.abs(p_prev - c), jnp.abs(b_prev - c)
    written = {"error_colonized": err, "error_baseline_colonized": err_b}
    # coverage: how close each theory's previous forecast came; silent theories score 0
    hyp = state.audit
    ip, ii = layout.var("predicted_colonized"), layout.var("intervention_code")
    close = jnp.where(aux["prev_mask"], jnp.exp(-jnp.abs(aux["prev_with"] - c) / COVERAGE_SIGMA), 0.0)
    for f, fam in enumerate(FAMILIES):
        members = [k for k in range(N_MECH) if FAMILY_OF[k] == f]
        raw = functools.reduce(lambda a, b: a + b, [close[..., k] for k in members]) / len(members)
        old = state.value(f"{fam}_coverage")
        written[f"{fam}_coverage"] = jnp.where(t == 1, raw, COVERAGE_ALPHA * raw + (1 - COVERAGE_ALPHA) * old)
    state = state.set_many(written, 0.99, when=live)
    # fragility: spread of this step's intervention proposals, smoothed over 5 steps
    codes, mask = hyp["values"][ii, :N_MECH], hyp["mask"][ii, :N_MECH]
    hi = jnp.max(jnp.where(mask, codes, -jnp.inf))
    lo = jnp.min(jnp.where(mask, codes, jnp.inf))
    spread = jnp.where(jnp.sum(mask) >= 2, (hi - lo) / 3.0, 0.0)
    ring = jnp.concatenate([aux["frag_ring"][1:], spread[None]])
    filled = jnp.minimum(aux["frag_n"] + 1, FRAGILITY_WINDOW)
    fragility = functools.reduce(lambda a, b: a + b, [ring[i] for i in range(FRAGILITY_WINDOW)]) / filled
    state = state.set("policy_fragility", fragility, 0.99)
    # tallies of the run (cumulative regret and what governance did)
    aux.update(
        frag_ring=ring,
        frag_n=filled,
        prev_with=hyp["values"][ip, :N_MECH],
        prev_mask=hyp["mask"][ip, :N_MECH],
        cursor=aux["cursor"] + jnp.sum(state.proposed).astype(aux["cursor"].dtype),
        tally=_tally(aux["tally"], state, t, err, err_b, live),
    )
    return state.with_aux(aux)


def _tally(tally, state, t, err, err_b, live):
    regret = tally["regret"] + jnp.where(live, err_b - err, 0.0)
    regime = state.value("regime").astype(jnp.int32)
    code = jnp.round(state.value("intervention_code")).astype(jnp.int32)
    fam_on = jnp.stack([
        jnp.any(jnp.stack([state.proposed[k] for k in range(N_MECH) if FAMILY_OF[k] == f])) for f in range(3)
    ])
    return dict(
        regret=regret,
        final_diff=jnp.where(t == tally["final_step"], regret, tally["final_diff"]),
        final_step=tally["final_step"],
        hc_steps=tally["hc_steps"] + (state.policy_index("intervention_code") == 1),
        code_steps=tally["code_steps"] + (jnp.arange(4) == code),
        family_steps=tally["family_steps"] + fam_on,
        regime_error=tally["regime_error"] + jnp.where(live & (jnp.arange(3) == regime), err, 0.0),
    )


def initial_aux(steps: int, noise: str) -> dict:
    """The model's own state: the noise stream and its cursor (``noise="numpy"``) or the
    step's draws (``noise="jax"``), the signals' memory (previous forecasts, fragility window) and the run's tallies."""
    i32 = lambda x: np.asarray(x, np.int32)  # noqa: E731
    return dict(
        noise=np.zeros((N_MECH * steps if noise == "numpy" else 0,)),
        z=np.zeros((N_MECH if noise == "jax" else 0,)),
        cursor=i32(0),
        prev_with=np.zeros((N_MECH,)),
        prev_mask=np.zeros((N_MECH,), bool),
        frag_ring=np.zeros((FRAGILITY_WINDOW,)),
        frag_n=i32(0),
        tally=dict(
            regret=np.asarray(0.0),
            final_diff=np.asarray(0.0),
            final_step=i32(steps - 2),
            hc_steps=i32(0),
            code_steps=np.zeros((4,), np.int32),
            family_steps=np.zeros((3,), np.int32),
            regime_error=np.zeros((3,)),
        ),
    )
