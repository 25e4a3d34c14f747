"""The trace plan chooses forms, never numbers: a zoo of models run under every form
a plan can take, every leaf of the final state and of the trajectory compared bit
for bit with the plainest form, in float32 and float64."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela_jax as pj
from conftest import host_leaves
from procela_jax._plan import BY_VARIABLE_SLOTS, STATIC_SLOTS, lowering
from procela_jax._step import run_impl, unjoined

STEPS = 9
#: the plainest form: every mechanism traced alone, static slots, stacked
#: resolution and statistics, blended ring buffers, rows one by one, JAX's hash
PLAIN = pj.TracePlan(family_members=10**9, slots="static", resolution="stacked", memory="blend",
                     stats="stacked", block_rows=False, materialize=False, fence=False, hash="default")


# ---- the zoo -------------------------------------------------------------------------
class Pull(pj.Mechanism):
    """Moves its first write towards its second read, with a random confidence."""

    rate: float = 0.1

    def transform(self, values, key):
        a, b = values[self.reads[0]], values[self.reads[1]]
        k1, k2 = jax.random.split(key)
        return {self.writes[0]: pj.VariableRecord(a + self.rate * (b - a) + 0.01 * jax.random.normal(k1),
                                                  confidence=jax.random.uniform(k2))}


class Spread(pj.Mechanism):
    """Writes every variable it declares, now and then an invalid (NaN) proposal."""

    scale: float = 1.0

    def transform(self, values, key):
        k1, k2, k3 = jax.random.split(key, 3)
        out = {}
        for j, n in enumerate(self.writes):
            v = values[n] + self.scale * jax.random.normal(jax.random.fold_in(k1, j))
            v = jnp.where(jax.random.uniform(jax.random.fold_in(k3, j)) < 0.08, jnp.nan, v)
            out[n] = pj.VariableRecord(v, confidence=jax.random.uniform(jax.random.fold_in(k2, j)),
                                       weight=1.0 + j)
        return out


class Named(pj.Mechanism):
    """Branches in Python on its own name: a family that cannot be batched."""

    def transform(self, values, key):
        bump = 1.0 if self.name.endswith("0") else -1.0
        return {self.writes[0]: pj.VariableRecord(values[self.reads[0]] + bump, confidence=0.6)}


class Toggle(pj.Mechanism):
    """Proposes a category of a categorical and a boolean variable."""

    def transform(self, values, key):
        k1, k2 = jax.random.split(key)
        return {"mode": pj.VariableRecord(jax.random.randint(k1, (), 0, 3).astype(values["mode"].dtype),
                                          confidence=0.7),
                "flag": pj.VariableRecord(jax.random.bernoulli(k2).astype(values["flag"].dtype), confidence=0.9)}


def ring(n, *, rates=(0.1, 0.05), offsets=(1, 3), memory=4, **kw):
    """``n`` variables, each written by one Pull per rate, classes interleaved with
    a one-member family and a family that cannot be batched; every other variable
    resolves by a winner (its record's source is the winning mechanism)."""
    policies = (pj.WeightedVotingPolicy(), pj.HighestConfidencePolicy())
    vs = [pj.Variable(f"v{i}", pj.RangeDomain(-50.0, 50.0), init=float(i % 7), memory=memory + i % 3,
                      policy=policies[i % 2], alternatives=policies[1 - i % 2:2 - i % 2], out_of_domain="clip")
          for i in range(n)]
    ms = [Named(name="named0", reads=["v0"], writes=["v1"])]
    for i in range(n):
        for r, (rate, off) in enumerate(zip(rates, offsets)):
            ms.append(Pull(rate=rate, name=f"p{r}_{i}", reads=[f"v{(i + off) % n}", f"v{i}"][::-1],
                           writes=[f"v{i}"]))
        if i == 1:
            ms.append(Spread(scale=0.3, name="spread", reads=["v0", "v1"], writes=["v1", "v0"]))
    ms.append(Named(name="named1", reads=["v2"], writes=["v0"]))
    return pj.Executive(variables=vs, mechanisms=ms, **kw)


def governed():
    """Invariants of every phase (a FATAL halt among them), a policy switch, members
    disabled and enabled, a schedule, validators, audit."""
    def switch(state, view):
        return state.set_policy("v2", pj.HighestConfidencePolicy).disable("p1_3")

    def reenable(state, view):
        return state.enable("p1_3")

    invs = [
        pj.SystemInvariant("calm", lambda v: (v["v0"] < 3.0) & (v.step != 2), on_violation=switch,
                           phase=pj.InvariantPhase.POST, severity=pj.InvariantSeverity.WARNING),
        pj.SystemInvariant("pending", lambda v: jnp.sum(v.pending("v1")["mask"]) >= 1,
                           phase=pj.InvariantPhase.RUNTIME, severity=pj.InvariantSeverity.INFO),
        pj.SystemInvariant("wake", lambda v: v.step % 4 != 3, on_violation=reenable, phase=pj.InvariantPhase.PRE,
                           severity=pj.InvariantSeverity.WARNING),
        pj.SystemInvariant("limit", lambda v: (v["v3"] > -40.0) & (v.step < 7), phase=pj.InvariantPhase.POST,
                           severity=pj.InvariantSeverity.FATAL),
    ]
    vs = [pj.Variable(f"v{i}", pj.RangeDomain(-50.0, 50.0), init=float(i), memory=3,
                      alternatives=(pj.HighestConfidencePolicy(), pj.MedianPolicy()),
                      validators=(lambda v, c: c > 0.05,) if i == 2 else ())
          for i in range(5)]
    ms = [Pull(rate=0.2 + 0.1 * (i % 2), name=f"p{i % 2}_{i}", reads=[f"v{(i + 1) % 5}", f"v{i}"],
               writes=[f"v{i}"], enabled=i != 4) for i in range(5)]
    ms += [Spread(scale=4.0, name="spread", reads=["v1", "v3"], writes=["v3", "v1"], run_in_safe_mode=False)]
    return pj.Executive(variables=vs, mechanisms=ms, invariants=invs, audit=True,
                        schedule=lambda v: jnp.arange(6) != (v.step % 6))


def recovering():
    vs = [pj.Variable(f"v{i}", init=float(i), memory=5) for i in range(3)]
    ms = [Spread(scale=1.0, name=f"s{i}", reads=["v0", "v1", "v2"], writes=["v0", "v1", "v2"]) for i in range(4)]
    return pj.Executive(variables=vs, mechanisms=ms, recovery=pj.Recovery(retries=1), failure_log_size=4)


def categorical():
    vs = [pj.Variable("mode", pj.CategoricalDomain([0.0, 1.0, 2.0]), init=1.0, policy=pj.MajorityVotingPolicy()),
          pj.Variable("flag", pj.BooleanDomain(), init=0.0, policy=pj.HighestConfidencePolicy()),
          pj.Variable("x", init=1.0, policy=pj.SoftMedianPolicy(temperature=0.5))]
    ms = [Pull(rate=0.3, name=f"x{i}", reads=["mode", "x"], writes=["x"]) for i in range(4)]
    ms += [Toggle(name=f"t{i}", reads=["mode", "flag"], writes=["mode", "flag"]) for i in range(5)]
    return pj.Executive(variables=vs, mechanisms=ms)


class Scale(pj.Mechanism):
    """Scales every variable it writes, one random confidence for all."""

    rate: float = 1.0

    def transform(self, values, key):
        c = jax.random.uniform(key)
        return {n: pj.VariableRecord(values[n] * self.rate, confidence=c) for n in self.writes}


def wide(n_vars, n_mechs, cls=Spread):
    """``n_mechs`` mechanisms of one class writing every one of ``n_vars`` variables."""
    vs = [pj.Variable(f"w{i}", init=float(i), memory=2) for i in range(n_vars)]
    names = [v.name for v in vs]
    ms = [cls(name=f"s{k}", reads=names, writes=names[k % 3:] + names[:k % 3]) for k in range(n_mechs)]
    return pj.Executive(variables=vs, mechanisms=ms)


def joining():
    """Variables that join mid-run: one through the pre-step hook, one through a
    RUNTIME handler (committed from that very step, before its writer proposes)."""
    vs = [pj.Variable(n, pj.RangeDomain(-50.0, 50.0), init=float(i + 1), memory=3) for i, n in enumerate("xyz")]
    ms = [Pull(rate=0.2, name="px", reads=["x", "y"], writes=["x"]),
          Pull(rate=0.3, name="late", reads=["y", "x"], writes=["y"], enabled=False),
          Pull(rate=0.4, name="later", reads=["z", "x"], writes=["z"], enabled=False)]
    call = pj.SystemInvariant("call", lambda v: v.step != 4, on_violation=lambda s, v: s.enable("later"),
                              phase=pj.InvariantPhase.RUNTIME, severity=pj.InvariantSeverity.WARNING)
    return pj.Executive(variables=vs, mechanisms=ms, invariants=[call],
                        pre_step=lambda s, t: s.enable("late", when=t == 2).disable("late", when=t == 6))


ZOO = {
    "joining": joining,
    "ring": lambda: ring(6),
    "governed": governed,
    "recovering": recovering,
    "categorical": categorical,
    "wide_36_slots": lambda: wide(6, 6, Scale),
    "wide_70_slots": lambda: wide(7, 10, Scale),
    "wide_1056_slots": lambda: wide(33, 32, Scale),
}


# ---- the forms -----------------------------------------------------------------------
#: single runs: each choice away from the plainest form, and all of them at once
SINGLE = [
    PLAIN.replace(family_members=1, slots="gather"),
    PLAIN.replace(memory="scatter", block_rows=True, stats="columns"),
    PLAIN.replace(commit="writable"),
    PLAIN.replace(family_members=1, slots="gather", memory="scatter", stats="columns", block_rows=True,
                  materialize=True, hash="unrolled", commit="writable"),
]
#: batched runs (vmap over scenarios), against PLAIN under the same vmap
BATCHED = [
    PLAIN.replace(resolution="by_variable", fence=True, materialize=True, family_members=1),
    PLAIN.replace(memory="scatter", stats="columns", materialize=True, slots="gather", hash="batched",
                  commit="writable"),
]


def _single(ex, plan, state):
    return ex.run(state, STEPS, plan=plan, save=pj.Save(audit=ex.audit, fields=("value", "confidence", "count")))


def _batched(ex, plan, states):
    save = pj.Save(fields=("value", "confidence", "count"))

    @eqx.filter_jit
    def f(ex, s, gate):
        return jax.vmap(lambda s: run_impl(ex, s, STEPS, save, False, plan, gate))(s)

    with lowering(plan):
        return f(ex, states, jnp.asarray(True) if plan.fence else None)


def _same(a, b, label):
    la, lb = host_leaves(a), host_leaves(b)
    assert len(la) == len(lb), label
    for i, (x, y) in enumerate(zip(la, lb)):
        assert x.dtype == y.dtype and x.shape == y.shape, (label, i)
        if x.dtype.kind == "f":
            x, y = x.view(f"i{x.itemsize}"), y.view(f"i{y.itemsize}")  # every bit, NaN payloads too
        np.testing.assert_array_equal(x, y, err_msg=f"{label}: leaf {i}")


def _check(name, dtype, single=SINGLE, batched=BATCHED):
    ex = ZOO[name]()
    assert ex.dtype == dtype
    state = ex.init(jax.random.key(3))
    if name == "governed":  # the run switches a policy, disables a member and halts
        final = ex.run(state, STEPS, plan=PLAIN)[0]
        assert bool(final.halted) and int(final.halted_at) == 7
        assert int(final.policy_index("v2")) == 1
        assert int(final.violations("calm")) >= 1 and int(final.violations("wake")) >= 1
    base = PLAIN
    if len(ex.tables.slot_prop) * len(ex.tables.slot_prop[0]) > STATIC_SLOTS:
        # static slots unrolled over more than STATIC_SLOTS entries are never chosen
        base = PLAIN.replace(slots="gather")
        single = [p.replace(slots="gather") for p in single]
    plain = _single(ex, base, state)
    for plan in single:
        if plan.commit == "writable" and unjoined(ex, state.joined):
            # valid from a state whose written variables have all joined: the end of the run
            later = plain[0]
            if not unjoined(ex, later.joined):
                _same(_single(ex, base, later), _single(ex, plan, later), f"{name} {plan} from step {STEPS}")
            continue
        _same(plain, _single(ex, plan, state), f"{name} {plan}")
    if name in ("governed", "wide_1056_slots"):  # (audit and validators: no batched form of its own)
        return
    states = jax.vmap(ex.init)(jax.vmap(jax.random.key)(jnp.arange(3)))
    base = _batched(ex, PLAIN, states)
    for plan in batched:
        if plan.resolution == "by_variable" and len(ex.tables.slot_prop) * len(ex.tables.slot_prop[0]) > BY_VARIABLE_SLOTS:
            continue  # unrolled per slot: the plan never chooses it for such models
        if plan.commit == "writable" and unjoined(ex, states.joined):
            plan = plan.replace(commit="joined")
        _same(base, _batched(ex, plan, states), f"{name} batched {plan}")


@pytest.mark.parametrize("name", list(ZOO))
def test_every_form_gives_the_same_bits_float32(name):
    _check(name, "float32")


@pytest.mark.parametrize("name", ["ring", "governed", "joining", "categorical", "wide_70_slots"])
def test_every_form_gives_the_same_bits_float64(name, x64):
    # every choice away from the plainest form at once (the float32 runs take them one by one)
    _check(name, "float64", SINGLE[-1:], BATCHED[:1])


def test_the_zoo_covers_what_the_plan_distinguishes():
    """The models reach every threshold and every kind the forms depend on."""
    exs = {name: make() for name, make in ZOO.items()}
    slots = {n: len(e.tables.slot_prop) * len(e.tables.slot_prop[0]) for n, e in exs.items()}
    assert max(slots.values()) > STATIC_SLOTS and any(32 < s <= 64 for s in slots.values())
    assert any(s > 64 for s in slots.values())
    ring_ = exs["ring"]
    fams = ring_.families
    assert any(f["batched"] and len(f["members"]) >= 4 for f in fams)
    assert any(len(f["members"]) == 1 for f in fams)
    assert any(not f["batched"] for f in fams)  # Named branches on its own name
    # slot order differs from mechanism order (slot j is not mechanism j)
    assert any(m != j for row in ring_.tables.slot_mech for j, m in enumerate(row) if m >= 0)
    # classes interleave in declaration order
    classes = [type(m).__name__ for m in ring_.mechanisms]
    assert classes.index("Spread") < max(i for i, c in enumerate(classes) if c == "Pull")
    # variables join mid-run (by a hook and by a RUNTIME handler), one never does
    late = exs["joining"]
    state = late.init(jax.random.key(0))
    assert unjoined(late, state.joined) == ["y", "z"] and unjoined(late, late.run(state, STEPS)[0].joined) == []
    governed_end = exs["governed"].run(exs["governed"].init(jax.random.key(0)), STEPS)[0]
    assert not bool(governed_end.is_joined("v4"))
    assert pj.choose_plan(exs["wide_70_slots"], batch=100).resolution == "stacked"
    assert pj.choose_plan(exs["recovering"], batch=100).resolution == "by_variable"


def test_the_engine_chooses_forms_the_harness_runs():
    """Every value a chosen plan takes appears in the harness's plans."""
    forms = [PLAIN, *SINGLE, *BATCHED]
    for make in ZOO.values():
        ex = make()
        for plan in (pj.choose_plan(ex), pj.choose_plan(ex, batch=64), pj.choose_plan(ex, traced=True),
                     pj.choose_plan(ex, all_joined=True), pj.choose_plan(ex, batch=64, all_joined=True)):
            for field in ("slots", "resolution", "memory", "stats", "block_rows", "materialize", "fence", "hash",
                          "commit"):
                assert getattr(plan, field) in {getattr(f, field) for f in forms}, (field, plan)


def test_a_plan_is_printable_and_checked():
    plan = pj.choose_plan(ring(4))
    assert "TracePlan(" in repr(plan) and "slots=" in repr(plan)
    with pytest.raises(ValueError, match="resolution"):
        pj.TracePlan(resolution="sideways")


def test_the_plan_commits_every_written_variable_only_once_all_have_joined():
    ex = joining()
    state = ex.init(jax.random.key(0))
    from procela_jax._executive import _plan_for
    assert _plan_for(ex, state, None).commit == "joined"
    later = ex.run(state, STEPS)[0]
    assert _plan_for(ex, later, None).commit == "writable"
    assert _plan_for(ring(4), ring(4).init(jax.random.key(0)), None).commit == "writable"
    with pytest.raises(ValueError, match=r"commit='writable' needs every written variable joined; \['y', 'z'\]"):
        ex.run(state, 1, plan=PLAIN.replace(commit="writable"))


def test_a_step_stacks_families_as_a_run_does():
    """A run stacks the families' parameters once before its loop; a step stacks them
    itself: the same bits, step after step."""
    ex = ring(6)
    plan = PLAIN.replace(family_members=1)
    state = ex.init(jax.random.key(5))
    stepped = state
    for _ in range(STEPS):
        stepped = ex.step(stepped, plan=plan)
    ran, _ = ex.run(state, STEPS, plan=plan, save=None)
    _same(ran, stepped, "step against run")
