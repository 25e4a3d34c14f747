"""SystemInvariant(update=...): an invariant's own bookkeeping, run at every check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela_jax as pj

STEPS = 40
DELTAS = np.random.default_rng(5).standard_normal(STEPS) + 0.3  # drifts up: the watchdog fires


class Walk(pj.Mechanism):
    """Proposes the previous value plus this step's increment (from ``aux``)."""

    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["X"] + values.aux["deltas"][values.step], confidence=0.5)}


def _streak_model():
    """A watchdog counting consecutive steps with X > 0 (in aux); when the streak
    reaches 3 it resets X to 0 and the streak to 0."""
    X = pj.Variable("X", pj.RealDomain(), init=0.0)

    def update(state, snap):
        streak = jnp.where(snap["X"] > 0, state.aux["streak"] + 1, 0)
        return state.with_aux({**state.aux, "streak": streak, "checks": state.aux["checks"] + 1})

    def reset(state, snap):
        return state.set("X", 0.0).with_aux({**state.aux, "streak": jnp.zeros_like(state.aux["streak"])})

    watchdog = pj.SystemInvariant(
        "streak", lambda snap: snap.aux["streak"] < 3, reset, phase=pj.InvariantPhase.POST, update=update
    )
    return pj.Executive(
        variables=[X], mechanisms=[Walk(reads=[X], writes=[X])], invariants=[watchdog],
        aux={"streak": jnp.asarray(0, jnp.int32), "checks": jnp.asarray(0, jnp.int32), "deltas": DELTAS},
    )


@pytest.fixture(scope="module")
def runs():
    ex = _streak_model()
    save = pj.Save(fn=lambda s: s.aux["streak"])
    return {on: ex.run(ex.init(jax.random.key(0), active_invariants={"streak": on}), STEPS, save=save)
            for on in (True, False)}


def test_update_runs_every_check_and_condition_sees_it(runs):
    final, traj = runs[True]
    x, streak, resets, want_x, want_streak = 0.0, 0, 0, [], []
    for d in DELTAS:  # the same rule as a plain loop
        x = x + d
        streak = streak + 1 if x > 0 else 0
        if streak >= 3:
            x, streak, resets = 0.0, 0, resets + 1
        want_x.append(x)
        want_streak.append(streak)
    np.testing.assert_allclose(np.asarray(traj.value("X")), want_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(traj.extra), want_streak)
    assert int(final.aux["checks"]) == STEPS
    assert resets > 0 and int(final.violations("streak")) == resets


def test_inactive_invariant_does_not_update(runs):
    final, traj = runs[False]
    assert int(final.aux["checks"]) == 0
    np.testing.assert_allclose(np.asarray(traj.value("X")), np.cumsum(DELTAS), rtol=1e-5, atol=1e-5)


def test_update_must_be_callable():
    with pytest.raises(pj.ModelError, match="update must be callable"):
        pj.SystemInvariant("bad", lambda snap: True, update=3)
