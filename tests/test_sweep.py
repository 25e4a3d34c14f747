"""Sweeps: rows equal single runs, inputs map back, chunks and blocks change nothing, summaries, memory."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela_jax as pj
from conftest import host_leaves
from procela_jax import _sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Grow(pj.Mechanism):
    rate: float = 0.1

    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["X"] * (1 + self.rate), confidence=0.7)}


class Noise(pj.Mechanism):
    scale: float = 1.0

    def transform(self, values, key):
        k_value, k_conf = jax.random.split(key)
        x = values["X"] + self.scale * jax.random.normal(k_value)
        return {"X": pj.VariableRecord(x, confidence=jax.random.uniform(k_conf))}


def small(cap=50.0):
    """Two variables; X has a deterministic and a noisy theory and a FATAL cap."""
    X = pj.Variable("X", pj.RangeDomain(-1e6, 1e6), init=1.0, alternatives=(pj.HighestConfidencePolicy(),))
    Y = pj.Variable("Y", pj.RealDomain(), init=0.0)
    return pj.Executive(
        variables=[X, Y],
        mechanisms=[Grow(reads=[X], writes=[X], name="grow"), Noise(reads=[X], writes=[X], name="noise")],
        invariants=[pj.SystemInvariant("cap", lambda v: v["X"] < cap, phase=pj.InvariantPhase.POST,
                                       severity=pj.InvariantSeverity.FATAL)],
    )


def close(a, b):
    """Rows of a batched run against a single run: XLA may contract a*b+c into one
    FMA in one and not the other (the last bit differs); see the sweep docstring."""
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def single(ex, seed, steps, params=None, init=None, save=pj.Save()):
    """The truth: one scenario run by the executive itself."""
    exi = ex.replace(params or {})
    state, traj = exi.run(exi.init(jax.random.key(seed), init=init), steps, save=save)
    return state, traj


EX = small()  # one executive for the module: its compiled sweeps are reused across tests
STEPS = 6
C = dict(chunk_size=8)  # one chunk shape for most tests: one compile


# ---- the contract -------------------------------------------------------------
def test_sir_contract_rows_equal_single_runs():
    ex = pj.demos.sir.make_executive()
    n, steps = 12, 40
    betas = jnp.linspace(0.2, 0.5, n)
    infected = jnp.linspace(1, 50, n)
    res = pj.sweep(ex, steps=steps, seeds=range(100, 100 + n), init={"I": infected},
                   params={"sir.beta": betas}, save_every=1, chunk_size=None, progress=True)
    assert res.value("I").shape == (n, steps)
    assert res.final.values.shape == (n, 3)
    assert res.done.all() and not res.halted.any()
    np.testing.assert_array_equal(res.steps, np.arange(1, steps + 1))
    for i in (0, 5, n - 1):
        state, traj = single(ex, 100 + i, steps, {"sir.beta": betas[i]}, {"I": float(infected[i])})
        for name in ("S", "I", "R"):
            np.testing.assert_array_equal(res.value(name)[i], np.asarray(traj.value(name)))
            np.testing.assert_array_equal(res.confidence(name)[i], np.asarray(traj.confidence(name)))
        for a, b in zip(host_leaves(res.final), host_leaves(state), strict=True):
            np.testing.assert_array_equal(a[i], b)
        row = res.inputs.row(i)
        assert row["seed"] == 100 + i
        assert row["init"]["I"] == pytest.approx(float(infected[i]))
        assert row["params"]["sir.beta"] == pytest.approx(float(betas[i]))


class Spiky(pj.Mechanism):
    """Proposes for both variables; now and then a NaN (an invalid hypothesis)."""

    def transform(self, values, key):
        k1, k2, k3 = jax.random.split(key, 3)
        x = values["X"] + jax.random.normal(k1)
        x = jnp.where(jax.random.uniform(k3) < 0.15, jnp.nan, x)
        return {"X": pj.VariableRecord(x, confidence=jax.random.uniform(k2)),
                "Y": pj.VariableRecord(values["Y"] + 1.0, confidence=0.5)}


def governed():
    """A RUNTIME invariant that reads the pending hypotheses and switches X's policy
    where they disagree widely (in some scenarios only), invalid proposals, a FATAL cap."""
    X = pj.Variable("X", pj.RangeDomain(-1e6, 1e6), init=1.0, alternatives=(pj.HighestConfidencePolicy(),))
    Y = pj.Variable("Y", pj.RealDomain(), init=0.0, policy=pj.MeanPolicy())

    def agree(view):
        p = view.pending("X")
        spread = jnp.abs(p["values"][0] - p["values"][1])
        return ~(p["mask"][0] & p["mask"][1]) | (spread < 2.5)

    def switch(state, view):
        return state.set_policy("X", pj.HighestConfidencePolicy)

    return pj.Executive(
        variables=[X, Y],
        mechanisms=[Grow(reads=[X], writes=[X], name="grow"), Spiky(reads=[X, Y], writes=[X, Y], name="spiky")],
        invariants=[
            pj.SystemInvariant("agree", agree, phase=pj.InvariantPhase.RUNTIME,
                               severity=pj.InvariantSeverity.WARNING, on_violation=switch),
            pj.SystemInvariant("cap", lambda v: v["X"] < 40.0, phase=pj.InvariantPhase.POST,
                               severity=pj.InvariantSeverity.FATAL),
        ],
    )


def test_governed_rows_equal_single_runs():
    """Resolution variable by variable (a batched step) keeps what governance sees
    and does: pending hypotheses, per-row policy switches, invalid-proposal
    counters, halting."""
    ex = governed()
    n, steps = 10, 30
    rates = np.linspace(0.0, 0.2, n)
    res = pj.sweep(ex, steps, seeds=range(n), params={"grow.rate": rates})
    policies = np.asarray(res.final.active_policy)[:, 0]
    assert 0 < policies.sum() < n  # some scenarios switched, others did not
    assert res.halted.any() and not res.halted.all()
    assert (np.asarray(res.final.invalid_proposals)[:, 1] > 0).all()
    for i in range(n):
        state, traj = single(ex, i, steps, {"grow.rate": rates[i]})
        for name in ("X", "Y"):
            close(res.value(name)[i], np.asarray(traj.value(name)))
        for a, b in zip(host_leaves(res.final), host_leaves(state), strict=True):
            if a.dtype.kind == "f":
                close(a[i], b)
            else:
                np.testing.assert_array_equal(a[i], b)


def test_a_sweep_of_no_steps_keeps_the_initial_states():
    ex = pj.demos.sir.make_executive()
    infected = np.asarray([3.0, 7.0, 11.0])
    for kw in (dict(), dict(summaries=("mean",))):
        res = pj.sweep(ex, 0, seeds=[5, 6, 7], init={"I": infected}, params={"sir.beta": [0.2, 0.3, 0.4]}, **kw)
        assert res.info["block_steps"] == []
        for i, seed in enumerate((5, 6, 7)):
            expected = ex.init(jax.random.key(seed), init={"I": float(infected[i])})
            for a, b in zip(host_leaves(res.final), host_leaves(expected), strict=True):
                np.testing.assert_array_equal(a[i], b)


def test_zipped_lengths_must_agree_and_the_error_names_them():
    ex = pj.demos.sir.make_executive()
    with pytest.raises(pj.ModelError, match=r"seeds: 10.*init\['I'\]: 9.*params\['sir.beta'\]: 10"):
        pj.sweep(ex, 3, seeds=range(10), init={"I": np.ones(9)}, params={"sir.beta": np.ones(10)})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(seeds=range(2), init={"Q": [1.0, 2.0]}), "unknown variable 'Q'"),
        (dict(seeds=range(2), params={"sir.delta": [1.0, 2.0]}), "no parameter 'delta'"),
        (dict(seeds=range(2), params={"nope.beta": [1.0, 2.0]}), "neither a mechanism"),
        (dict(params={"sir.beta": np.ones((2, 2))}), r"shape \(scenarios, \*\(\)\)"),
        (dict(params={"sir.beta": 0.3}), "one value per scenario"),
        (dict(seeds=range(2), init={"I": [1.0, 5000.0]}), r"init\[.I.\]\[1\] = 5000.0 lies outside the domain"),
        (dict(seeds=range(2), keys=jax.random.split(jax.random.key(0), 2)), "not both"),
        (dict(seeds=range(2), save=pj.Save(), save_every=2), "not both"),
        (dict(seeds=range(2), summaries=("median",)), "unknown summary"),
        (dict(seeds=range(2), summaries=(1.5,)), "quantile in"),
        (dict(seeds=range(2), summaries=("mean",), save=None), "keeps nothing"),
        (dict(seeds=range(2), variables=["Q"]), "unknown variable 'Q'"),
        (dict(seeds=range(2), chunk_size=0), "chunk_size"),
        (dict(seeds=range(2), block_steps=3, save_every=2), "block_steps"),
        (dict(), "how many scenarios"),
        (dict(seeds=[]), "no scenarios"),
    ],
)
def test_bad_inputs_fail_early_with_a_clear_error(kwargs, match):
    ex = pj.demos.sir.make_executive()
    before = dict(_sweep.TRACES)
    with pytest.raises(pj.ModelError, match=match):
        pj.sweep(ex, 3, **kwargs)
    assert _sweep.TRACES == before  # refused before anything was compiled


# ---- inputs ---------------------------------------------------------------------
def test_grid_is_the_cartesian_product_and_inputs_map_rows_back():
    ex = EX
    g = pj.grid(seeds=[3, 4], init={"X": [1.0, 2.0]}, params={"grow.rate": [0.0, 0.1, 0.2]})
    expected = [(s, x, r) for s in (3, 4) for x in (1.0, 2.0) for r in (0.0, 0.1, 0.2)]
    got = list(zip(g["seeds"].tolist(), g["init"]["X"].tolist(), g["params"]["grow.rate"].tolist()))
    assert got == expected
    res = pj.sweep(ex, STEPS, **g, **C)
    assert len(res) == 12
    cols = res.inputs.columns()
    assert list(cols) == ["seed", "X.init", "grow.rate"]
    for i in (0, 7, 11):
        s, x, r = expected[i]
        assert res.inputs.row(i) == {"seed": s, "init": {"X": x}, "params": {"grow.rate": pytest.approx(r)}}
        _, traj = single(ex, s, STEPS, {"grow.rate": r}, {"X": x})
        close(res.value("X")[i], np.asarray(traj.value("X")))


def test_keys_and_variable_init_paths():
    ex = EX
    keys = jax.random.split(jax.random.key(7), 5)
    inits = np.linspace(0.5, 2.5, 5)
    a = pj.sweep(ex, STEPS, keys=keys, params={"X.init": inits}, **C)
    b = pj.sweep(ex, STEPS, keys=jax.random.key_data(keys), init={"X": inits}, **C)  # raw uint32 keys
    np.testing.assert_array_equal(a.value("X"), b.value("X"))
    assert a.inputs.seeds is None and list(a.inputs.init) == ["X"]
    np.testing.assert_array_equal(jax.random.key_data(a.inputs.keys), jax.random.key_data(keys))
    for i in range(5):
        exi = ex
        _, traj = exi.run(exi.init(keys[i], init={"X": float(inits[i])}), STEPS)
        close(a.value("X")[i], np.asarray(traj.value("X")))


def test_seeds_follow_jax_random_key_for_large_and_negative_seeds():
    seeds = [0, -1, 2**31 - 1, 2**31 + 5, 2**32 - 1]
    res = pj.sweep(EX, STEPS, seeds=seeds, **C)
    for i, s in enumerate(seeds):
        np.testing.assert_array_equal(res.inputs.key_data[i], jax.random.key_data(jax.random.key(s)))


def test_default_seed_is_zero_for_every_scenario():
    ex = EX
    res = pj.sweep(ex, STEPS, params={"grow.rate": [0.1, 0.1]}, **C)
    np.testing.assert_array_equal(res.value("X")[0], res.value("X")[1])
    _, traj = single(ex, 0, STEPS)
    close(res.value("X")[0], np.asarray(traj.value("X")))


# ---- chunks, blocks, compiles ---------------------------------------------------------
def test_chunks_and_blocks_change_nothing_and_compile_once_per_chunk_shape():
    ex = EX
    n, steps = 23, STEPS
    rates = np.linspace(0.0, 0.6, n)
    whole = pj.sweep(ex, steps, seeds=range(n), params={"grow.rate": rates})
    before = dict(_sweep.TRACES)
    parts = pj.sweep(ex, steps, seeds=range(n), params={"grow.rate": rates}, chunk_size=8, block_steps=2)
    assert parts.info["chunks"] == 3 and parts.info["block_steps"] == [2, 2, 2]
    # 3 chunks x 3 blocks: at most one compile each (none if an earlier test compiled this shape)
    assert _sweep.TRACES["block"] - before["block"] <= 1
    assert _sweep.TRACES["init"] - before["init"] <= 1
    after = dict(_sweep.TRACES)
    for a, b in zip(jax.tree.leaves(whole.trajectory), jax.tree.leaves(parts.trajectory)):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(host_leaves(whole.final), host_leaves(parts.final), strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole.halted, parts.halted)
    # one chunk keeps the device's own buffers, several are copied into host buffers:
    # both are results, read-only
    assert whole.info["chunks"] == 1
    for res in (whole, parts):
        for a in jax.tree.leaves((res.trajectory, res.halted, res.done)) + host_leaves(res.final):
            assert isinstance(a, np.ndarray) and not a.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            res.value("X")[0, 0] = 1.0
    # other values, other scenario counts, same chunk shape: no new compile
    again = pj.sweep(ex, steps, seeds=range(7), params={"grow.rate": rates[:7] + 0.01}, chunk_size=8, block_steps=2)
    assert _sweep.TRACES == after
    assert again.value("X").shape == (7, steps)


def test_save_every_with_a_tail_and_chosen_fields():
    ex = EX
    save = pj.Save(every=3, variables=("X",), fields=("value", "mean", "count"))
    res = pj.sweep(ex, 10, seeds=range(4), save=save, progress=True, **C)
    assert res.field("X", "mean").shape == (4, 3)
    np.testing.assert_array_equal(res.steps, [3, 6, 9])
    with pytest.raises(KeyError, match="'Y' was not saved"):
        res.value("Y")
    with pytest.raises(KeyError, match="'confidence' was not saved"):
        res.confidence("X")
    for i in range(4):
        state, traj = single(ex, i, 10, save=save)
        for f in save.fields:
            close(res.field("X", f)[i], np.asarray(traj.field("X", f)))
        np.testing.assert_array_equal(res.trajectory.steps[i], np.asarray(traj.steps))
        close(res.final.values[i], np.asarray(state.values))
        assert int(res.final.step[i]) == 10


def test_save_fn_is_kept_per_scenario_and_save_none_keeps_only_final():
    ex = EX
    save = pj.Save(fields=("value",), fn=lambda s: {"twice": 2 * s.value("X")})
    res = pj.sweep(ex, STEPS, seeds=range(3), save=save, **C)
    np.testing.assert_array_equal(res.trajectory.extra["twice"], 2 * res.value("X"))
    bare = pj.sweep(ex, STEPS, seeds=range(3), save=None, **C)
    assert bare.trajectory is None and len(bare.steps) == 0
    np.testing.assert_array_equal(bare.final.values, res.final.values)
    with pytest.raises(KeyError, match="save=None"):
        bare.value("X")


def test_halted_scenarios_are_reported_like_single_runs():
    ex = EX
    rates = np.array([0.0, 0.1, 3.0, 5.0])
    res = pj.sweep(ex, STEPS, seeds=range(4), params={"grow.rate": rates}, **C)
    for i, r in enumerate(rates):
        state, _ = single(ex, i, STEPS, {"grow.rate": r})
        assert bool(res.halted[i]) == bool(state.halted)
        assert int(res.halted_at[i]) == int(state.halted_at)
    assert res.halted[2] and res.halted[3]
    reasons = res.halt_reasons()
    assert set(reasons) == set(np.flatnonzero(res.halted).tolist())
    assert all(name == "cap" for name, _ in reasons.values())


# ---- summaries ----------------------------------------------------------------------
def test_summaries_equal_numpy_over_the_trajectories_and_ignore_chunking():
    ex = EX
    n, steps = 37, STEPS
    kw = dict(seeds=range(n), params={"noise.scale": np.linspace(0.5, 3.0, n)},
              save=pj.Save(variables=("X",), fields=("value", "confidence")))
    full = pj.sweep(ex, steps, **kw, **C)
    stats = ("mean", "std", "min", "max", 0.1, 0.5, 0.9)
    s1 = pj.sweep(ex, steps, **kw, summaries=stats)  # one chunk of 40 rows
    s2 = pj.sweep(ex, steps, **kw, summaries=stats, **C)  # five chunks of 8
    assert s1.trajectory is None
    with pytest.raises(KeyError, match="summaries"):
        s1.value("X")
    for field in ("value", "confidence"):
        x = full.field("X", field).astype(np.float64)  # (n, steps): numpy in float64 is the truth
        expect = {"mean": x.mean(0), "std": x.std(0), "min": x.min(0), "max": x.max(0),
                  0.1: np.quantile(x, 0.1, axis=0), 0.5: np.quantile(x, 0.5, axis=0), 0.9: np.quantile(x, 0.9, axis=0)}
        for stat, e in expect.items():
            np.testing.assert_allclose(s1.summary("X", stat, field), e, rtol=2e-6, atol=1e-6)
            np.testing.assert_array_equal(s1.summary("X", stat, field), s2.summary("X", stat, field))
    np.testing.assert_array_equal(s1.summary("X", "min"), full.value("X").min(0))  # exact, order-free
    np.testing.assert_array_equal(s1.final.values, full.final.values)


def test_summaries_default_set_and_missing_statistic():
    res = pj.sweep(EX, STEPS, seeds=range(5), summaries=True, variables="X", fields="value", keep_final=False, **C)
    assert list(res.summaries["value"]) == ["mean", "std", "min", "max", "q0.05", "q0.25", "q0.5", "q0.75", "q0.95"]
    np.testing.assert_array_equal(res.summary("X", 0.5), res.summary("X", "q0.5"))
    assert res.final is None
    with pytest.raises(KeyError, match="not kept"):
        res.summary("X", 0.33)
    with pytest.raises(KeyError, match="not summarised"):
        res.summary("X", "mean", "confidence")


# ---- interruption ------------------------------------------------------------------
def _interrupt_after(monkeypatch, calls):
    real = _sweep._run_block
    count = {"n": 0}

    def flaky(*args, **kwargs):
        count["n"] += 1
        if count["n"] > calls:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_sweep, "_run_block", flaky)


def test_interrupted_sweep_keeps_finished_chunks(monkeypatch):
    ex = EX
    kw = dict(seeds=range(20), chunk_size=8, block_steps=3)
    full = pj.sweep(ex, STEPS, **kw)
    _interrupt_after(monkeypatch, 4)  # 2 blocks per chunk of 8: chunks 0 and 1 finish, chunk 2 does not
    with pytest.raises(pj.SweepInterrupted) as info:
        pj.sweep(ex, STEPS, **kw)
    assert isinstance(info.value, KeyboardInterrupt)
    part = info.value.result
    np.testing.assert_array_equal(part.done, np.arange(20) < 16)
    np.testing.assert_array_equal(part.value("X")[:16], full.value("X")[:16])
    np.testing.assert_array_equal(part.final.values[:16], full.final.values[:16])
    assert np.isnan(part.value("X")[16:]).all()
    assert not part.info["complete"]


def test_interrupted_summary_sweep_keeps_finished_blocks(monkeypatch):
    ex = EX
    kw = dict(seeds=range(12), chunk_size=8, block_steps=2, summaries=("mean",), variables="X")
    full = pj.sweep(ex, STEPS, **kw)
    _interrupt_after(monkeypatch, 4)  # 2 chunks per block: blocks 0 and 1 finish
    with pytest.raises(pj.SweepInterrupted) as info:
        pj.sweep(ex, STEPS, **kw)
    part = info.value.result
    np.testing.assert_array_equal(part.steps, [1, 2, 3, 4])
    np.testing.assert_array_equal(part.summary("X", "mean"), full.summary("X", "mean")[:4])
    assert not part.done.any()


def test_summary_blocks_are_cut_to_bound_the_gathered_values(monkeypatch):
    kw = dict(seeds=range(12), chunk_size=8, summaries=("mean", 0.5), variables="X")
    whole = pj.sweep(EX, STEPS, **kw)
    assert whole.info["block_steps"] == [STEPS]
    # one saved step of every scenario's values: 12 scenarios x 1 variable x 2 fields x 4 bytes
    monkeypatch.setattr(_sweep, "VALUES_BUDGET", 2 * 12 * 1 * 2 * 4)
    cut = pj.sweep(EX, STEPS, **kw)
    assert cut.info["block_steps"] == [2, 2, 2]
    for stat in ("mean", 0.5):
        np.testing.assert_array_equal(cut.summary("X", stat), whole.summary("X", stat))


# ---- memory -------------------------------------------------------------------------
def test_host_memory_follows_the_documented_formula():
    ex = EX
    n, steps = 16, STEPS
    state_bytes = sum(np.dtype(x.dtype).itemsize * x.size if not jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)
                      else 8 * x.size for x in jax.tree.leaves(ex.abstract_state()))
    res = pj.sweep(ex, steps, seeds=range(n), save=pj.Save(variables=("X",), fields=("value",)), **C)
    assert res.info["state_bytes"] == state_bytes
    V, F, b, K = 1, 1, 4, steps
    assert res.info["bytes_per_saved_step"] == V * F * b + 4
    assert res.nbytes == n * K * (V * F * b + 4) + n * state_bytes + 4 * K
    summ = pj.sweep(ex, steps, seeds=range(n), variables=("X", "Y"), fields=("value",),
                    summaries=("mean", 0.5, 0.9), keep_final=False, **C)
    assert summ.nbytes == K * 3 * 2 * 1 * b + 4 * K


@pytest.mark.slow
def test_100k_sir_scenarios_for_a_year_with_daily_summaries_fit_in_4_gib():
    code = textwrap.dedent(
        """
        import json, sys
        import jax, numpy as np
        import procela_jax as pj

        def hwm():  # peak resident memory of this process (ru_maxrss would include the parent's, inherited at exec)
            with open("/proc/self/status") as f:
                return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM:"))
        ex = pj.demos.sir.make_executive()
        n = 100_000
        res = pj.sweep(ex, 365, seeds=range(n), params={"sir.beta": np.linspace(0.15, 0.45, n)},
                       summaries=("mean", 0.05, 0.5, 0.95), variables=["I"], fields=["value"])
        peak = hwm()
        print(json.dumps(dict(peak=peak, nbytes=res.nbytes, state=res.info["state_bytes"],
                              mean_last=float(res.summary("I", "mean")[-1]),
                              median_peak=float(res.summary("I", 0.5).max()), halted=int(res.halted.sum()))))
        """
    )
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["peak"] < 4 * 2**30, f"peak host memory {got['peak'] / 2**30:.2f} GiB"
    # the documented host formula: K.Q.V.F.b of summaries + n.Σ of final states (+ the steps)
    assert got["nbytes"] == 365 * 4 * 1 * 1 * 4 + 100_000 * got["state"] + 365 * 4
    assert 0 < got["median_peak"] < 1000 and got["halted"] == 0
