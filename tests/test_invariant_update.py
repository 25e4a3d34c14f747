"""SystemInvariant(update=...): an invariant's own bookkeeping, run at every check."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import procela_jax as pj


class Walk(pj.Mechanism):
    """Proposes the previous value plus a standard normal step."""

    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["X"] + jax.random.normal(key, dtype=values["X"].dtype), confidence=0.5)}


def _streak_model(active=True):
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
    ex = pj.Executive(
        variables=[X], mechanisms=[Walk(reads=[X], writes=[X])], invariants=[watchdog],
        aux={"streak": jnp.asarray(0, jnp.int32), "checks": jnp.asarray(0, jnp.int32)},
    )
    return ex, ex.init(jax.random.key(3), active_invariants={"streak": active})


def test_update_runs_every_check_and_condition_sees_it():
    ex, state = _streak_model()
    steps = 40
    final, traj = ex.run(state, steps, save=pj.Save(fn=lambda s: s.aux["streak"]))
    free, _ = _streak_model(active=False)
    # replay the walk's steps (the same keys: the mechanism does not depend on governance)
    _, free_traj = free.run(free.init(jax.random.key(3), active_invariants={"streak": False}), steps)
    steps_taken = np.diff(np.concatenate([[0.0], np.asarray(free_traj.value("X"))]))
    # a plain loop of the same rule
    x, streak, resets, want_x, want_streak = 0.0, 0, 0, [], []
    for d in steps_taken:
        x = x + d
        streak = streak + 1 if x > 0 else 0
        if streak >= 3:
            x, streak, resets = 0.0, 0, resets + 1
        want_x.append(x)
        want_streak.append(streak)
    np.testing.assert_allclose(np.asarray(traj.value("X")), want_x, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(traj.extra), want_streak)
    assert int(final.aux["checks"]) == steps
    assert resets > 0 and int(final.violations("streak")) == resets


def test_inactive_invariant_does_not_update():
    ex, state = _streak_model(active=False)
    final, _ = ex.run(state, 10, save=None)
    assert int(final.aux["checks"]) == 0


def test_update_must_be_callable():
    with pytest.raises(pj.ModelError, match="update must be callable"):
        pj.SystemInvariant("bad", lambda snap: True, update=3)
