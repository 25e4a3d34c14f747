"""Every executive variant of the seed's guide (``executive-guide.md``), in procela_jax's idiom.

The guide subclasses the original ``Executive`` to add ordering, conditions,
reproducibility, named checkpoints, threads, process pools, events, lazy
resolution, profiling, retries, training phases and adaptive policies. In
procela_jax each of these is a constructor argument, a pure function traced into
the step, a JAX transformation or a few lines of user code around the pure core.
Each test checks the variant against an independent truth: a plain Python loop,
a hand computation, or a straight run that the variant must reproduce.
"""

import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela_jax as pj
from procela_jax import _step

STEPS = 30
CHUNK = 10  # every Simulation here runs in jitted chunks of this length: one compilation per model


@pytest.fixture(scope="module")
def sir():
    """The SIR demo (two theories: deterministic and seasonal with noise), built once."""
    return pj.demos.sir.make_executive()


def run_values(ex, state, steps, save=pj.Save()):
    final, traj = ex.run(state, steps, save=save)
    return final, {n: np.asarray(traj.value(n)) for n in traj.names}


class Const(pj.Mechanism):
    """Proposes fixed values, one per written variable, with fixed confidences."""

    values: tuple
    confidences: tuple

    def transform(self, values, key):
        return {n: pj.VariableRecord(v, confidence=c)
                for n, v, c in zip(self.writes, self.values, self.confidences)}


# ---- OrderedExecutive --------------------------------------------------------------
@pytest.mark.parametrize("order", ["abc", "bac", "cab"])
def test_ordered_execution_order_sets_slot_order(order):
    """``execution_order=`` is the order hypotheses reach the policies: it decides
    ties (highest confidence keeps the first) and the order of float32 sums."""
    big = float(2**25)  # 2**25 + 1 rounds back to 2**25 in float32
    T = pj.Variable("T", policy=pj.HighestConfidencePolicy(), init=0.0)
    S = pj.Variable("S", policy=pj.WeightedVotingPolicy(), init=0.0)
    proposals = {"a": (1.0, big, 0.5), "b": (2.0, 1.0, 0.5), "c": (3.0, -big, 0.4)}
    mechs = [Const(values=(t, s), confidences=(c, c), writes=[T, S], name=n)
             for n, (t, s, c) in proposals.items()]
    ex = pj.Executive(variables=[T, S], mechanisms=mechs, execution_order=list(order))
    assert ex.layout.mechanisms == tuple(order)
    state = ex.step(ex.init(jax.random.key(0)))
    # by hand: the first of the two most confident (a, b) in this order wins T
    tied = [m for m in order if m in "ab"]
    assert float(state.value("T")) == proposals[tied[0]][0]
    # by hand: the float32 sum left to right in this order, then the mean
    total = functools.reduce(lambda acc, m: np.float32(acc + np.float32(proposals[m][1])), order, np.float32(0))
    assert float(state.value("S")) == float(np.float32(total) / np.float32(3))


# ---- ConditionalExecutive ----------------------------------------------------------
class Grow(pj.Mechanism):
    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["X"] + 1.0, confidence=0.8)}


class Decay(pj.Mechanism):
    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["X"] * 0.5, confidence=0.6)}


def test_conditional_schedule_decides_which_mechanisms_run():
    """``schedule(view)`` is the guide's ``condition_func``: a pure function of the
    committed state choosing the mechanisms of the step."""
    X = pj.Variable("X", init=0.0)
    ex = pj.Executive(
        variables=[X],
        mechanisms=[Grow(reads=[X], writes=[X], name="grow"), Decay(reads=[X], writes=[X], name="decay")],
        schedule=lambda view: {"grow": (view.step % 3) != 2, "decay": view["X"] > 2.5},
    )
    final, traj = ex.run(ex.init(jax.random.key(0)), 20,
                         save=pj.Save(fields=("value", "count", "mean"), fn=lambda s: s.proposed))
    # a plain Python loop with the same rules (weighted voting with unit weights = mean)
    x, count, total = 0.0, 1, 0.0
    want_x, want_count, want_mean, want_ran = [], [], [], []
    for t in range(20):
        ran = [t % 3 != 2, x > 2.5]
        props = [p for p, on in zip([x + 1.0, x * 0.5], ran) if on]
        count += 1  # a writable variable commits every step, even with no hypothesis
        if props:
            x = sum(props) / len(props)
            total += x
        want_x.append(x)
        want_count.append(count)
        want_mean.append(total / count)
        want_ran.append(ran)
    np.testing.assert_allclose(np.asarray(traj.value("X")), want_x, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(traj.field("X", "count")), want_count)
    np.testing.assert_allclose(np.asarray(traj.field("X", "mean")), want_mean, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(traj.extra), want_ran)
    assert {tuple(r) for r in want_ran} == {(False, False), (False, True), (True, False), (True, True)}


# ---- ReproducibleExecutive ---------------------------------------------------------
def test_reproducible_same_seed_same_world(sir):
    """The random state is a key in the state: same seed, bit-identical world; another
    seed, another world; ``reset`` replays; splitting a run changes nothing."""
    _, a = run_values(sir, sir.init(jax.random.key(7)), STEPS)
    _, b = run_values(sir, sir.init(jax.random.key(7)), STEPS)
    _, c = run_values(sir, sir.init(jax.random.key(8)), STEPS)
    for n in "SIR":
        np.testing.assert_array_equal(a[n], b[n])
    assert not np.array_equal(a["I"], c["I"])
    sim = pj.Simulation(sir, seed=7, chunk=CHUNK)
    sim.run(STEPS)
    first = sim.history("I").copy()
    np.testing.assert_array_equal(first[1:], a["I"])
    sim.reset()
    sim.run(CHUNK)
    sim.run(STEPS - CHUNK)  # the draws of a step depend on the global step, not on the call
    np.testing.assert_array_equal(sim.history("I"), first)


# ---- CheckpointManager -------------------------------------------------------------
class CheckpointManager:
    """Named checkpoints of a simulation, as a user writes them (a checkpoint is a value)."""

    def __init__(self, sim: pj.Simulation):
        self.sim = sim
        self.checkpoints: dict[str, pj.Checkpoint] = {}

    def save_checkpoint(self, name):
        self.checkpoints[name] = self.sim.create_checkpoint()
        return self.checkpoints[name]

    def restore_checkpoint(self, name):
        self.sim.restore_checkpoint(self.checkpoints[name])


def test_checkpoint_manager_rollback_then_continue_equals_a_straight_run(sir):
    straight = pj.Simulation(sir, seed=3, chunk=CHUNK)
    straight.run(STEPS)
    sim = pj.Simulation(sir, seed=3, chunk=CHUNK)
    manager = CheckpointManager(sim)
    sim.run(STEPS // 3)
    manager.save_checkpoint("after_10")
    sim.run(STEPS // 3)
    manager.save_checkpoint("after_20")
    sim.run(STEPS // 3)  # an experiment...
    manager.restore_checkpoint("after_10")  # ...rolled back
    assert sim.step == STEPS // 3 and len(sim.history("I")) == STEPS // 3 + 1
    sim.run(STEPS - STEPS // 3)
    for n in "SIR":
        np.testing.assert_array_equal(sim.history(n), straight.history(n))
    np.testing.assert_array_equal(np.asarray(sim.state.memory.value), np.asarray(straight.state.memory.value))
    manager.restore_checkpoint("after_20")
    assert sim.step == 2 * (STEPS // 3)
    np.testing.assert_array_equal(sim.history("I"), straight.history("I")[: 2 * (STEPS // 3) + 1])
    assert float(sim.stats("I").mean) == pytest.approx(float(np.mean(straight.history("I")[: 2 * (STEPS // 3) + 1])),
                                                       rel=1e-5)


# ---- ParallelExecutive -------------------------------------------------------------
class Noisy(pj.Mechanism):
    """Proposes ``x + shift + scale * noise`` with a random confidence."""

    shift: float
    scale: float

    def transform(self, values, key):
        k_noise, k_conf = jax.random.split(key)
        x = values["X"] + self.shift + self.scale * jax.random.normal(k_noise)
        return {"X": pj.VariableRecord(x, confidence=jax.random.uniform(k_conf, minval=0.2, maxval=0.9))}


def test_parallel_one_traced_step_equals_sequential_evaluation():
    """The guide's thread pool becomes one compiled program: every mechanism reads the
    committed state, so the jitted step equals evaluating them one by one in Python."""
    X = pj.Variable("X", init=1.0)
    params = [(0.5, 0.1), (-0.2, 0.3), (1.0, 0.05), (0.0, 1.0)]
    mechs = [Noisy(shift=s, scale=c, reads=[X], writes=[X], name=f"m{i}") for i, (s, c) in enumerate(params)]
    ex = pj.Executive(variables=[X], mechanisms=mechs)
    state = ex.init(jax.random.key(11))
    traces = _step.TRACE_COUNT["step"]
    for _ in range(5):
        # sequentially, eagerly: each mechanism with its own key (the step key folded with its id)
        step_key = jax.random.fold_in(state.key, state.step)
        values, confs = [], []
        for m in ex.mechanisms:
            rec = m.transform(pj.View(state), jax.random.fold_in(step_key, m.id))["X"]
            values.append(float(rec.value))
            confs.append(float(rec.confidence))
        state = ex.step(state)
        assert float(state.value("X")) == pytest.approx(sum(values) / len(values), rel=1e-6)
        assert float(state.confidence("X")) == pytest.approx(sum(confs) / len(confs), rel=1e-6)
    assert _step.TRACE_COUNT["step"] - traces <= 1  # one trace, then the compiled step


# ---- BatchExecutive ----------------------------------------------------------------
def test_batch_of_scenarios_vmap_equals_a_loop(sir):
    """The process pool becomes ``jax.vmap``: scenarios over seeds and parameters."""
    keys = jax.random.split(jax.random.key(0), 4)
    betas = [0.3, 0.3, 0.2, 0.45]  # two seeds at the same beta, then other betas

    def scenario(key, beta):
        ex = sir.replace({"sir.beta": beta, "seasonal.beta": beta})
        return ex.run(ex.init(key), STEPS)

    finals, trajs = jax.vmap(scenario)(keys, jnp.asarray(betas))
    for i in range(4):  # the guide's pool of processes, as a loop of single runs
        final, traj = scenario(keys[i], betas[i])
        for n in "SIR":
            np.testing.assert_allclose(np.asarray(trajs.value(n))[i], np.asarray(traj.value(n)), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(finals.values)[i], np.asarray(final.values), rtol=1e-5)
    ever = np.asarray(finals.values)[:, 1] + np.asarray(finals.values)[:, 2]  # I + R: ever infected
    assert not np.allclose(np.asarray(trajs.value("I"))[0], np.asarray(trajs.value("I"))[1])  # seeds differ
    assert ever[2] < min(ever[0], ever[1]) and ever[3] > max(ever[0], ever[1])  # beta orders the epidemics


# ---- EventDrivenExecutive ----------------------------------------------------------
def test_event_handlers_see_every_step_in_order():
    """``Simulation.on`` handlers observe every step, in order, across jitted chunks; a
    handler's exception reaches the ``error`` handlers and is raised."""
    ex = pj.demos.sir.make_executive(
        pre_step=lambda s, t: s.disable("seasonal", when=t == 5).enable("seasonal", when=t == 12))
    sim = pj.Simulation(ex, seed=1, chunk=CHUNK)
    log = []
    sim.on("pre_step", lambda t: log.append(("pre_step", t)))
    sim.on("post_mechanism", lambda name, t: log.append(("post_mechanism", name, t)))
    sim.on("post_resolution", lambda values, t: log.append(("post_resolution", values, t)))
    sim.on("post_step", lambda t: log.append(("post_step", t)))
    sim.run(20)
    history = {n: sim.history(n) for n in "SIR"}
    want = []
    for t in range(20):  # the guide's step, as a plain loop
        want.append(("pre_step", t))
        for name in ("sir", "seasonal"):
            if name == "sir" or not 5 <= t < 12:
                want.append(("post_mechanism", name, t))
        want.append(("post_resolution", {n: float(history[n][t + 1]) for n in "SIR"}, t))
        want.append(("post_step", t))
    assert log == want
    seen = []
    sim.on("error", lambda e, t: seen.append((type(e), str(e), t)))

    def fragile(values, t):
        if t == 23:
            raise ValueError("I went negative")

    sim.on("post_resolution", fragile)
    with pytest.raises(pj.EventHandlerError, match="fragile.*ValueError: I went negative"):
        sim.run(CHUNK)
    assert seen == [(ValueError, "I went negative", 23)]
    # delivery stopped inside step 23, after the earlier handler of the same event
    assert log[-1][0] == "post_resolution" and log[-1][2] == 23
    assert [e for e in log if e[0] == "post_step"][-1] == ("post_step", 22)


# ---- OptimizedExecutive (lazy resolution) --------------------------------------------
def test_lazy_resolution_is_fused_and_save_keeps_what_is_asked(sir):
    """There is no lazy resolution to switch on: resolution is fused into the compiled
    step, and what costs memory is what a run keeps. ``Save`` asks for exactly that,
    and what it keeps equals the same entries of a full save."""
    state = sir.init(jax.random.key(2))
    full_final, full = sir.run(state, STEPS)
    lean_final, lean = sir.run(state, STEPS, save=pj.Save(every=2, variables=("I",), fields=("value",)))
    assert set(lean.data) == {"value"} and lean.data["value"].shape == (STEPS // 2, 1)
    np.testing.assert_array_equal(np.asarray(lean.value("I")), np.asarray(full.value("I"))[1::2])
    np.testing.assert_array_equal(np.asarray(lean.steps), np.arange(2, STEPS + 1, 2))
    with pytest.raises(KeyError, match="not saved"):
        lean.value("S")
    with pytest.raises(KeyError, match="not saved"):
        lean.confidence("I")
    # the world itself is the same whatever is kept
    np.testing.assert_array_equal(np.asarray(lean_final.values), np.asarray(full_final.values))
    np.testing.assert_array_equal(np.asarray(lean_final.memory.value), np.asarray(full_final.memory.value))


# ---- ProfiledExecutive --------------------------------------------------------------
def test_profiled_timer_and_timing_report(sir):
    with pj.Timer() as t:
        time.sleep(0.02)
    assert t.elapsed >= 0.02 and t.end is not None
    with pj.Timer() as t:
        jax.block_until_ready(sir.run(sir.init(jax.random.key(0)), STEPS))
    assert t.elapsed > 0
    sim = pj.Simulation(sir, seed=0, chunk=CHUNK)
    assert sim.timing_report()["steps"] == 0 and sim.timing_report()["runs"] == 0
    sim.run(STEPS)  # three chunks
    sim.run(CHUNK)
    report = sim.timing_report()
    assert report["runs"] == STEPS // CHUNK + 1 and report["steps"] == STEPS + CHUNK
    assert [n for n, _ in sim.timings] == [CHUNK] * (STEPS // CHUNK + 1)
    assert report["seconds"] == pytest.approx(sum(s for _, s in sim.timings))
    assert 0 < report["first_run_seconds"] <= report["seconds"]
    assert np.isfinite(report["steps_per_second_after_first"]) and report["steps_per_second_after_first"] > 0


# ---- RobustExecutive ----------------------------------------------------------------
class Flaky(pj.Mechanism):
    """Proposes ``x + 3``; fails (NaN) on a random draw below ``p`` or at step ``bad``."""

    p: float
    bad: int = -1

    def transform(self, values, key):
        fail = (jax.random.uniform(key) < self.p) | (values.step == self.bad)
        return {"X": pj.VariableRecord(jnp.where(fail, jnp.nan, values["X"] + 3.0), confidence=0.5)}


class Drift(pj.Mechanism):
    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["X"] + 1.0, confidence=0.9)}


def test_robust_retries_with_new_draws_and_rolls_back():
    """The guide's retry loop (checkpoint, try, restore) inside the compiled step: a
    failed step is retried with a fresh key; if every attempt fails the world stays as
    it was, the failure is logged, and every committed record is kept."""
    retries, steps, bad = 2, 24, 9
    X = pj.Variable("X", init=0.0, memory=32)
    flaky = Flaky(p=0.45, bad=bad, reads=[X], writes=[X], name="flaky")
    ex = pj.Executive(variables=[X], mechanisms=[Drift(reads=[X], writes=[X], name="drift"), flaky],
                      recovery=pj.Recovery(retries=retries), failure_log_size=steps)
    key = jax.random.key(4)
    final, traj = ex.run(ex.init(key), steps)
    # the same loop in Python: attempt r of step t draws with fold_in(fold_in(key, t), r) (r > 0)
    x, committed, log, failed_attempts = 0.0, [0.0], [], 0
    want = []
    for t in range(steps):
        step_key = jax.random.fold_in(key, t)
        for r in range(retries + 1):
            k = step_key if r == 0 else jax.random.fold_in(step_key, r)
            fail = bool(jax.random.uniform(jax.random.fold_in(k, flaky.id)) < 0.45) or t == bad
            failed_attempts += fail
            if not fail:
                break
        if r > 0 or fail:
            log.append({"step": t, "kind": "invalid proposal", "who": "flaky", "attempts": r + 1,
                        "rolled_back": fail})
        if not fail:
            x = (x + 1.0 + x + 3.0) / 2
            committed.append(x)
        want.append(x)
    assert any(e["rolled_back"] for e in log if e["step"] != bad)  # random failures exhausted retries too
    assert any(not e["rolled_back"] for e in log)  # and a retry saved some steps
    np.testing.assert_allclose(np.asarray(traj.value("X")), want, rtol=1e-6)
    assert final.failures.entries(final.layout) == log
    assert {"step": bad, "kind": "invalid proposal", "who": "flaky", "attempts": retries + 1,
            "rolled_back": True} in log
    assert int(final.step) == steps  # a rolled-back step is skipped, not repeated
    # nothing committed is lost: statistics and memory hold exactly the kept records
    st = final.stats("X")
    assert int(st.count) == len(committed)
    assert float(st.sum) == pytest.approx(sum(committed), rel=1e-6)
    rec = final.recent("X")
    np.testing.assert_allclose(np.asarray(rec["value"])[np.asarray(rec["valid"])], committed, rtol=1e-6)
    # and every failed attempt is counted against the mechanism that failed
    assert int(final.invalid_proposals[final.layout.mech("flaky")]) == failed_attempts


# ---- TrainingExecutive -------------------------------------------------------------
class Explore(pj.Mechanism):
    """Proposes a noisy step towards ``target``; ``rate`` scales the exploration noise."""

    rate: float
    target: float = 10.0

    def transform(self, values, key):
        x = values["X"]
        return {"X": pj.VariableRecord(x + 0.2 * (self.target - x) + self.rate * jax.random.normal(key),
                                       confidence=0.7)}


class PhasedExplore(Explore):
    """The same theory with a rate that depends on the step: ``rates[step // length]``."""

    rates: jax.Array = None
    length: int = 10

    def transform(self, values, key):
        phase = jnp.minimum(values.step // self.length, self.rates.shape[0] - 1)
        return Explore(rate=self.rates[phase], target=self.target, reads=self.reads,
                       writes=self.writes, name=self.name).transform(values, key)


def test_multi_phase_training_equals_one_run_with_a_phase_dependent_parameter():
    """Phases are successive runs with a parameter changed by ``ex.replace`` (no
    recompilation, the state carried); the same as one run whose parameter follows
    the phase."""
    rates, length = [0.5, 0.1, 0.02], 10
    X = pj.Variable("X", init=0.0)
    ex = pj.Executive(variables=[X], mechanisms=[Explore(rate=rates[0], reads=[X], writes=[X], name="explore")])
    state = ex.init(jax.random.key(9))
    results, pieces = [], []
    traces = _step.TRACE_COUNT["run"]
    for phase, rate in enumerate(rates):
        ex = ex.replace({"explore.rate": rate})  # configure the phase
        state, traj = ex.run(state, length)
        pieces.append(np.asarray(traj.value("X")))
        results.append({"phase": phase, "final": float(state.value("X")), "std": float(state.stats("X").std)})
    assert _step.TRACE_COUNT["run"] - traces <= 1  # the phases share one compiled run
    phased = pj.Executive(variables=[X], mechanisms=[
        PhasedExplore(rate=0.0, rates=jnp.asarray(rates), length=length, reads=[X], writes=[X], name="explore")])
    one_final, one = phased.run(phased.init(jax.random.key(9)), len(rates) * length,
                                save=pj.Save(fields=("value", "std")))
    np.testing.assert_allclose(np.concatenate(pieces), np.asarray(one.value("X")), rtol=1e-6)
    np.testing.assert_allclose([r["std"] for r in results],
                               np.asarray(one.field("X", "std"))[length - 1::length], rtol=1e-5)
    assert int(one_final.stats("X").count) == int(state.stats("X").count) == len(rates) * length + 1
    # exploration shrinks phase by phase: the late phases wander less around the target
    spread = [np.std(np.diff(p)) for p in pieces]
    assert spread[0] > spread[1] > spread[2]


# ---- AdaptiveExecutive -------------------------------------------------------------
class Table(pj.Mechanism):
    """Proposes ``x + shocks[step]`` with ``confidences[step]``: randomness drawn beforehand."""

    shocks: jax.Array
    confidences: jax.Array

    def transform(self, values, key):
        t = values.step
        return {"X": pj.VariableRecord(values["X"] + self.shocks[t], confidence=self.confidences[t])}


class Anchor(pj.Mechanism):
    target: float = 10.0

    def transform(self, values, key):
        return {"X": pj.VariableRecord(jnp.asarray(self.target), confidence=0.9)}


def test_adaptive_switches_policy_when_performance_drops():
    """Performance is a signal kept in ``state.aux`` by a pure post-step hook (a ring of
    the last ``window`` scores); when its mean drops below a threshold after more than
    ``window`` steps, the hook switches weighted voting to highest confidence."""
    steps, window, threshold, target = 40, 10, 0.4, 10.0
    rng = np.random.default_rng(3)
    # the wild theory overshoots more and more
    shocks = (0.1 * np.arange(steps) + np.abs(rng.normal(0.0, 0.3, steps))).astype(np.float32)
    confs = rng.uniform(0.0, 0.8, steps).astype(np.float32)
    X = pj.Variable("X", policy=pj.WeightedVotingPolicy(), alternatives=[pj.HighestConfidencePolicy()], init=target)

    def adapt(state, t):
        score = 1.0 / (1.0 + jnp.abs(state.value("X") - target))
        aux = state.aux
        ring = aux["scores"].at[t % window].set(score)
        seen = aux["seen"] + 1
        drop = (seen > window) & (jnp.mean(ring) < threshold)
        state = state.set_policy("X", pj.HighestConfidencePolicy(), when=drop)
        return state.with_aux({"scores": ring, "seen": seen})

    ex = pj.Executive(
        variables=[X],
        mechanisms=[Anchor(writes=[X], name="anchor"),
                    Table(shocks=shocks, confidences=confs, reads=[X], writes=[X], name="wild")],
        post_step=adapt,
        aux={"scores": jnp.zeros(window), "seen": jnp.asarray(0)},
    )
    _, traj = ex.run(ex.init(jax.random.key(0)), steps, save=pj.Save(fields=("value", "policy")))
    # the guide's AdaptiveExecutive as a Python loop
    x, policy, history, want_x, want_policy, margins = target, "voting", [], [], [], []
    for t in range(steps):
        props = [(target, 0.9), (x + float(shocks[t]), float(confs[t]))]
        if policy == "voting":
            x = sum(v for v, _ in props) / 2
        else:
            x = max(props, key=lambda p: p[1])[0]
        history.append(1.0 / (1.0 + abs(x - target)))
        if len(history) > window:
            recent = np.mean(history[-window:])
            margins.append(abs(recent - threshold))
            if recent < threshold:
                policy = "highest"
        want_x.append(x)
        want_policy.append(policy == "highest")
    assert min(margins) > 1e-4  # no decision sits on the threshold (float32 vs float64)
    switched = want_policy.index(True)
    assert window < switched < steps - 5  # the switch happens, and not at once
    np.testing.assert_array_equal(np.asarray(traj.field("X", "policy")) == 1, want_policy)
    np.testing.assert_allclose(np.asarray(traj.value("X")), want_x, rtol=1e-5)
