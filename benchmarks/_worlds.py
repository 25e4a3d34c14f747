"""The worlds bench_scale.py measures, each written three ways.

- with procela_jax (an :class:`Executive`, run by :func:`procela_jax.sweep`);
- by hand in JAX, one scenario as a ``lax.scan`` to be ``vmap``-ed: the same
  arithmetic, the same per-mechanism keys, and the same state (values,
  confidences, running statistics, a 16-record memory per variable), so it
  reproduces the engine's trajectories; plus a "bare" variant keeping only what
  the dynamics need;
- with the original ``procela`` (one scenario at a time, Python's ``random``).

The X, Y, Z world is the original Executive's docstring example: three adders,
a halving mechanism, and a RUNTIME invariant that, once a running mean exceeds a
threshold, brings in an emergency mechanism and switches every variable to
highest-confidence resolution; the emergency mechanism is removed at step 80.
"""

from __future__ import annotations

import logging
import math
import random
import zlib

import jax
import jax.numpy as jnp

import procela_jax as pj

POP = 1000.0
CAP = 16  # memory records per variable (the engine's default)
ALPHA = 0.3  # EWMA factor (the engine's default)
THRESHOLD = 700_000.0


def _id(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


# ---- bookkeeping shared by the hand-written versions ---------------------------
def _book_init(v0, c0):
    n = v0.shape[0]
    f = v0.dtype
    return dict(
        count=jnp.ones(n, jnp.int32), sum=v0, sumsq=v0 * v0, min=v0, max=v0, last=v0, ewma=v0, csum=c0,
        mv=jnp.zeros((n, CAP), f).at[:, 0].set(v0), mc=jnp.zeros((n, CAP), f).at[:, 0].set(c0),
        mt=jnp.full((n, CAP), -1, jnp.int32).at[:, 0].set(0),
        ms=jnp.full((n, CAP), -3, jnp.int32).at[:, 0].set(-2), written=jnp.ones(n, jnp.int32),
    )


def _book_commit(b, v, c, t, src):
    slot = b["written"] % CAP
    hit = jnp.arange(CAP)[None, :] == slot[:, None]
    return dict(
        count=b["count"] + 1, sum=b["sum"] + v, sumsq=b["sumsq"] + v * v,
        min=jnp.minimum(b["min"], v), max=jnp.maximum(b["max"], v), last=v,
        ewma=ALPHA * v + (1 - ALPHA) * b["ewma"], csum=b["csum"] + c,
        mv=jnp.where(hit, v[:, None], b["mv"]), mc=jnp.where(hit, c[:, None], b["mc"]),
        mt=jnp.where(hit, t + 1, b["mt"]), ms=jnp.where(hit, src[:, None], b["ms"]),
        written=b["written"] + 1,
    )


# ---- SIR --------------------------------------------------------------------------
def sir_executive():
    return pj.demos.sir.make_executive()


def sir_hand(full: bool = True, steps: int = 365):
    """One SIR scenario by hand: ``fn(key, beta) -> (final state, values (steps, 3))``; ``beta``
    is the deterministic theory's (the engine's ``"sir.beta"``), the seasonal one keeps 0.3."""
    f = jnp.float32
    id_sea = _id("seasonal")
    gamma, amp, noise, i0, beta_seasonal = 0.1, 0.25, 0.1, 10.0, 0.3

    def fn(key, beta):
        v0 = jnp.array([POP - i0, i0, 0.0], f)

        def step(carry, _):
            v, t, book = carry
            s, i, r = v[0], v[1], v[2]
            k_step = jax.random.fold_in(key, t)
            inf1 = beta * s * i / POP
            rec1 = gamma * i
            p1 = jnp.stack([s - inf1, i + inf1 - rec1, r + rec1])
            k_noise, k_conf = jax.random.split(jax.random.fold_in(k_step, id_sea))
            season = 1.0 + amp * jnp.cos(2 * jnp.pi * t / 365.0)
            shock = jnp.exp(noise * jax.random.normal(k_noise, dtype=f))
            inf2 = jnp.minimum(beta_seasonal * season * shock * s * i / POP, s)
            rec2 = gamma * i
            p2 = jnp.stack([s - inf2, i + inf2 - rec2, r + rec2])
            conf2 = jax.random.uniform(k_conf, dtype=f, minval=0.4, maxval=0.7)
            v = jnp.clip((p1 + p2) / 2.0, 0.0, POP)  # weighted voting, weights 1
            if full:
                c = jnp.full(3, (0.8 + conf2) / 2.0, f)
                book = _book_commit(book, v, c, t, jnp.full(3, -1, jnp.int32))
            return (v, t + 1, book), v

        book = _book_init(v0, jnp.ones(3, f)) if full else None
        (v, _, book), vs = jax.lax.scan(step, (v0, jnp.int32(0), book), None, length=steps)
        return (v, book), vs  # the final state is returned, as the engine's is

    return fn


def quiet_logger() -> logging.Logger:
    """A logger that drops everything: the original logs every step to ``./logs/``
    unless given one, and the benchmarks time its simulation, not its logging."""
    log = logging.getLogger("procela-bench")
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def sir_procela(seed: int, steps: int, beta: float = 0.3):
    """The SIR world with the original procela; returns the final (S, I, R)."""
    return sir_procela_runner(seed, steps, beta)()


def sir_procela_runner(seed: int, steps: int, beta: float = 0.3):
    """Build the SIR world with the original procela; returns ``run() -> (S, I, R)``
    (the final values), so that a benchmark can time the run alone."""
    from procela import Executive, Mechanism, RangeDomain, Variable, VariableRecord, WeightedVotingPolicy

    rng = random.Random(seed)
    gamma, amp, noise = 0.1, 0.25, 0.1
    S, I, R = (Variable(n, RangeDomain(0.0, POP), policy=WeightedVotingPolicy()) for n in "SIR")  # noqa: E741
    S.init(VariableRecord(POP - 10.0, confidence=1.0))
    I.init(VariableRecord(10.0, confidence=1.0))
    R.init(VariableRecord(0.0, confidence=1.0))

    class Deterministic(Mechanism):
        def transform(self):
            s, i, r = S.value, I.value, R.value
            inf, rec = beta * s * i / POP, gamma * i
            for var, x in ((S, s - inf), (I, i + inf - rec), (R, r + rec)):
                var.add_hypothesis(VariableRecord(x, confidence=0.8, source=self.key()))

    class Seasonal(Mechanism):
        def __init__(self, reads, writes):
            super().__init__(reads, writes)
            self.t = 0

        def transform(self):
            s, i, r = S.value, I.value, R.value
            season = 1 + amp * math.cos(2 * math.pi * self.t / 365.0)
            self.t += 1
            inf = min(beta * season * math.exp(noise * rng.gauss(0, 1)) * s * i / POP, s)
            rec = gamma * i
            c = rng.uniform(0.4, 0.7)
            for var, x in ((S, s - inf), (I, i + inf - rec), (R, r + rec)):
                var.add_hypothesis(VariableRecord(x, confidence=c, source=self.key()))

    ex = Executive(mechanisms=[Deterministic([S, I, R], [S, I, R]), Seasonal([S, I, R], [S, I, R])], rng=rng,
                   logger=quiet_logger())

    def run():
        ex.run(steps=steps)
        return S.value, I.value, R.value

    return run


# ---- X, Y, Z -------------------------------------------------------------------------
class Add(pj.Mechanism):
    """Writes the sum of the two variables it reads, with a random confidence."""

    def transform(self, values, key):
        a, b = self.reads
        return {self.writes[0]: pj.VariableRecord(values[a] + values[b], confidence=jax.random.uniform(key))}


class Halve(pj.Mechanism):
    """Proposes half of each variable, each with its own random confidence."""

    def transform(self, values, key):
        c = jax.random.uniform(key, (len(self.writes),))
        return {n: pj.VariableRecord(values[n] * 0.5, confidence=c[j]) for j, n in enumerate(self.writes)}


class Emergency(pj.Mechanism):
    """Proposes 0.3 of each variable with full confidence."""

    def transform(self, values, key):
        return {n: pj.VariableRecord(values[n] * 0.3, confidence=1.0) for n in self.writes}


def xyz_executive(threshold: float = THRESHOLD):
    policies = dict(policy=pj.WeightedVotingPolicy(), alternatives=(pj.HighestConfidencePolicy(),))
    X = pj.Variable("X", pj.RangeDomain(-100.0, 100.0), init=1.8, **policies)
    Y = pj.Variable("Y", pj.RangeDomain(-100.0, 100.0), init=-0.5, **policies)
    Z = pj.Variable("Z", pj.RangeDomain(-100.0, 100.0), init=9.2, **policies)
    mechs = [
        Add(reads=[X, Y], writes=[Z], name="add_z"),
        Add(reads=[X, Z], writes=[Y], name="add_y"),
        Add(reads=[Y, Z], writes=[X], name="add_x"),
        Halve(reads=[X, Y, Z], writes=[X, Y, Z], name="halve"),
        Emergency(reads=[X, Y, Z], writes=[X, Y, Z], name="emergency"),
    ]

    def calm(view):
        return jnp.all(jnp.stack([view.stats(n).mean for n in "XYZ"]) <= threshold)

    def respond(state, view):
        first = ~state.aux["added"]
        for n in "XYZ":
            state = state.set_policy(n, pj.HighestConfidencePolicy, when=first)
        return state.enable("emergency", when=first).with_aux({"added": jnp.asarray(True)})

    safety = pj.SystemInvariant("safety", calm, respond, phase=pj.InvariantPhase.RUNTIME,
                                severity=pj.InvariantSeverity.WARNING)
    # the emergency mechanism is not there at the start, and is removed at step 80
    pre = lambda state, t: state.disable("emergency", when=(t == 0) | (t == 80))  # noqa: E731
    return pj.Executive(variables=[X, Y, Z], mechanisms=mechs, invariants=[safety], pre_step=pre,
                        aux={"added": jnp.asarray(False)})


SLOT_MECH = jnp.asarray([[2, 3, 4], [1, 3, 4], [0, 3, 4]], jnp.int32)  # per variable: mechanism of each slot


def xyz_hand(full: bool = True, steps: int = 100, threshold: float = THRESHOLD):
    """One X, Y, Z scenario by hand: ``fn(key, x0) -> (final state, values (steps, 3))``."""
    f = jnp.float32
    ids = [_id(n) for n in ("add_z", "add_y", "add_x", "halve")]

    def fn(key, x0):
        v0 = jnp.stack([x0, jnp.asarray(-0.5, f), jnp.asarray(9.2, f)]).astype(f)
        c0 = jnp.ones(3, f)

        def step(carry, _):
            v, t, book, added, emergency, highest = carry
            book_outside = book.get("outside")
            emergency = emergency & (t != 80) & (t != 0)
            k_step = jax.random.fold_in(key, t)
            ks = [jax.random.fold_in(k_step, i) for i in ids]
            x, y, z = v[0], v[1], v[2]
            add = jnp.stack([y + z, x + z, x + y])  # proposals for X, Y, Z
            c_add = jnp.stack([jax.random.uniform(ks[2]), jax.random.uniform(ks[1]), jax.random.uniform(ks[0])])
            c_half = jax.random.uniform(ks[3], (3,))
            # slots per variable, in mechanism order: add, halve, emergency
            vals = jnp.stack([add, v * 0.5, v * 0.3], axis=-1)
            confs = jnp.stack([c_add, c_half, jnp.ones(3, f)], axis=-1)
            mask = jnp.stack([jnp.ones(3, bool), jnp.ones(3, bool), jnp.full(3, emergency)], axis=-1)
            # RUNTIME invariant on the running means
            mean = book["sum"] / book["count"].astype(f)
            violated = ~jnp.all(mean <= threshold)
            first = violated & ~added
            highest = highest | first
            emergency_next = emergency | first
            added = added | violated
            # resolution: weighted voting (weights 1) or highest confidence
            w = mask.astype(f)
            wv_v = (vals[:, 0] * w[:, 0] + vals[:, 1] * w[:, 1] + vals[:, 2] * w[:, 2]) / (w[:, 0] + w[:, 1] + w[:, 2])
            wv_c = (confs[:, 0] * w[:, 0] + confs[:, 1] * w[:, 1] + confs[:, 2] * w[:, 2]) / (w[:, 0] + w[:, 1] + w[:, 2])
            rank = jnp.where(mask, confs, -1.0)
            win = jnp.argmax(rank, axis=-1)
            hc_v = jnp.take_along_axis(vals, win[:, None], -1)[:, 0]
            hc_c = jnp.take_along_axis(confs, win[:, None], -1)[:, 0]
            v_new = jnp.where(highest, hc_v, wv_v)
            c_new = jnp.where(highest, hc_c, wv_c)
            src = jnp.where(highest, SLOT_MECH[jnp.arange(3), win], -1)
            if full:
                book = _book_commit(book, v_new, c_new, t, src)
                book["outside"] = book_outside + (jnp.abs(v_new) > 100.0).astype(jnp.int32)
            else:
                book = dict(book, sum=book["sum"] + v_new, count=book["count"] + 1)
            return (v_new, t + 1, book, added, emergency_next, highest), v_new

        book = dict(_book_init(v0, c0), outside=jnp.zeros(3, jnp.int32)) if full else dict(
            sum=v0, count=jnp.ones(3, jnp.int32))
        carry = (v0, jnp.int32(0), book, jnp.asarray(False), jnp.asarray(True), jnp.asarray(False))
        final, vs = jax.lax.scan(step, carry, None, length=steps)
        return final, vs  # the final state is returned, as the engine's is

    return fn


def xyz_procela(seed: int, steps: int, threshold: float = THRESHOLD, x0: float = 1.8):
    """The original Executive docstring example, one scenario; returns the final (X, Y, Z)."""
    return xyz_procela_runner(seed, steps, threshold, x0)()


def xyz_procela_runner(seed: int, steps: int, threshold: float = THRESHOLD, x0: float = 1.8):
    """Build the docstring example with the original procela; returns ``run() -> (X, Y, Z)``."""
    from procela import (
        Executive, HighestConfidencePolicy, InvariantPhase, InvariantSeverity, Mechanism, RangeDomain,
        SystemInvariant, Variable, VariableRecord, WeightedVotingPolicy,
    )

    rng = random.Random(seed)
    X, Y, Z = (Variable(n, RangeDomain(-100.0, 100.0), policy=WeightedVotingPolicy()) for n in "XYZ")
    for var, x in ((X, x0), (Y, -0.5), (Z, 9.2)):
        var.init(VariableRecord(x, confidence=1.0))

    class AddMechanism(Mechanism):
        def transform(self):
            a, b = [var.value for var in self.reads()]
            self.writes()[0].add_hypothesis(VariableRecord(a + b, confidence=rng.uniform(0.0, 1.0), source=self.key()))

    class HalveMechanism(Mechanism):
        def transform(self):
            for var in self.writes():
                var.add_hypothesis(VariableRecord(var.value * 0.5, confidence=rng.uniform(0.0, 1.0), source=self.key()))

    class EmergencyMechanism(Mechanism):
        def transform(self):
            for var in self.writes():
                var.add_hypothesis(VariableRecord(var.value * 0.3, confidence=1.0, source=self.key()))

    emergency = EmergencyMechanism([], [X, Y, Z])
    ex = Executive(mechanisms=[AddMechanism([X, Y], [Z]), AddMechanism([X, Z], [Y]), AddMechanism([Y, Z], [X]),
                               HalveMechanism([], [X, Y, Z])], rng=rng, logger=quiet_logger())
    state = {"added": False}

    def condition(snapshot):
        return all(view.stats.mean <= threshold for view in snapshot.views)

    def respond(invariant, snapshot):
        if not state["added"]:
            ex.add_mechanism(emergency)
            for var in (X, Y, Z):
                var.policy = HighestConfidencePolicy()
            state["added"] = True

    ex.add_invariant(SystemInvariant("safety", condition=condition, on_violation=respond,
                                     phase=InvariantPhase.RUNTIME, severity=InvariantSeverity.WARNING, message=""))

    def pre_step(executive, step):
        if step == 80 and emergency in executive.mechanisms():
            executive.remove_mechanism(emergency)

    def run():
        ex.run(steps=steps, pre_step=pre_step, post_step=None)
        return X.value, Y.value, Z.value

    return run
