"""The four governance units of the AMR study, as invariants whose experiment state
machines live in ``state.aux``.

Each unit (but the emergency) runs small experiments: on a trigger it changes the
model's structure (a policy, the enabled families), records the recent error, and
after a fixed time keeps or reverts the change depending on whether the error
fell. The bookkeeping (ending an experiment, counting decay) runs at every check
through ``SystemInvariant(update=...)``; the condition is the trigger; the handler
starts the experiment.
"""

from __future__ import annotations

import equinox as eqx
import jax.numpy as jnp
import numpy as np

from ..._invariant import InvariantPhase, SystemInvariant
from ..._policy import HighestConfidencePolicy, WeightedConfidencePolicy
from ._model import FAMILIES, FAMILY_OF, MECHANISMS, is_set, recent_error

#: Thresholds as the study configures them.
FRAGILITY = dict(fragility_threshold=0.6, error_threshold=1.0, duration=10)
COVERAGE = dict(threshold=0.85, decay_steps=3, duration=10)
PROBE = dict(interval=25, duration=20)

#: The governance units, in registration order (coverage is checked before the
#: emergency in the POST phase).
UNITS = ("fragility", "coverage", "probe", "emergency")


def _unit_state(**extra) -> dict:
    i32 = lambda x: np.asarray(x, np.int32)  # noqa: E731
    return dict(on=np.asarray(False), start=i32(0), pre=np.asarray(0.0), recent=np.asarray(0.0), done=i32(0),
                wins=i32(0), **extra)


def initial_aux() -> dict:
    """Each unit's experiment state: ``on`` (experimenting), ``start`` step, ``pre``
    (recent error when it started), ``recent`` (the recent error at the last check),
    ``done``/``wins`` (experiments ended/successful)."""
    return dict(
        fragility=_unit_state(),
        coverage=_unit_state(counts=np.zeros((3,), np.int32), family=np.asarray(0, np.int32),
                             hit=np.asarray(False)),
        probe=_unit_state(next=np.asarray(PROBE["interval"], np.int32), k=np.asarray(0, np.int32)),
    )


def _with_unit(state, name, **changes):
    return state.with_aux({**state.aux, name: {**state.aux[name], **changes}})


def _end(unit, due, win, recent):
    """Bookkeeping of an experiment's end; ``recent`` (the recent error at this check)
    is kept for the handler of the same check."""
    return dict(on=unit["on"] & ~due, done=unit["done"] + due, wins=unit["wins"] + (due & win), recent=recent)


_FAMILY_OF = np.asarray(FAMILY_OF, np.int32)


def _set_enabled(state, enabled, when):
    """Set the theories' enabled flags to ``enabled`` where ``when`` (one state update)."""
    return eqx.tree_at(lambda s: s.enabled, state, jnp.where(when, enabled, state.enabled))


def _families(state, on, when):
    """Set each theory's enabled flag to ``on[its family]`` where ``when``."""
    return _set_enabled(state, jnp.asarray(on)[_FAMILY_OF], when)


def _one_family(state, f, on, when):
    """Enable (``on``) or disable family ``f`` (an index, possibly traced) where ``when``."""
    return _set_enabled(state, jnp.full(len(MECHANISMS), on), when & (_FAMILY_OF == f))


# ---- policy fragility (RUNTIME) ----------------------------------------------------------
def _fragility_update(state, view):
    unit, t = state.aux["fragility"], view.step
    due = unit["on"] & (unit["start"] != 0) & (t - unit["start"] >= FRAGILITY["duration"])
    recent = recent_error(view)
    win = (unit["pre"] != 0) & (recent < unit["pre"])
    state = state.set_policy("intervention_code", WeightedConfidencePolicy, when=due & ~win)
    return _with_unit(state, "fragility", **_end(unit, due, win, recent))


def _fragility_calm(view):
    unit = view.aux["fragility"]
    ready = is_set(view, "policy_fragility") & is_set(view, "error_colonized")
    fragile = (view["policy_fragility"] > FRAGILITY["fragility_threshold"]) & (
        view["error_colonized"] > FRAGILITY["error_threshold"]
    )
    return unit["on"] | ~ready | ~fragile


def _fragility_experiment(state, view):
    state = state.set_policy("intervention_code", HighestConfidencePolicy)
    return _with_unit(state, "fragility", on=True, start=view.step, pre=state.aux["fragility"]["recent"])


# ---- coverage decay (POST) -------------------------------------------------------------------
def _coverage_update(state, view):
    unit, t = state.aux["coverage"], view.step
    due = unit["on"] & (t - unit["start"] >= COVERAGE["duration"])
    recent = recent_error(view)
    win = (unit["pre"] != 0) & (recent < unit["pre"])
    state = _one_family(state, unit["family"], True, due & ~win)
    on = unit["on"] & ~due
    # decay counters, in registry order, up to the first family that decayed long enough
    cov = jnp.stack([view[f"{f}_coverage"] for f in FAMILIES])
    ready = is_set(view, f"{FAMILIES[0]}_coverage")
    low = cov < COVERAGE["threshold"]
    cand = jnp.where(ready, jnp.where(low, unit["counts"] + 1, 0), unit["counts"])
    decayed = ready & low & (cand >= COVERAGE["decay_steps"])
    first = jnp.argmax(decayed)
    hit = ~on & jnp.any(decayed)
    upto = ~jnp.any(decayed) | (jnp.arange(3) <= first)
    counts = jnp.where(~on & upto, cand, unit["counts"])
    family = jnp.where(hit, first, unit["family"])
    return _with_unit(state, "coverage", **_end(unit, due, win, recent), counts=counts, family=family, hit=hit)


def _coverage_steady(view):
    return ~view.aux["coverage"]["hit"]


def _coverage_experiment(state, view):
    unit = state.aux["coverage"]
    state = _one_family(state, unit["family"], False, jnp.asarray(True))
    return _with_unit(state, "coverage", on=True, start=view.step, pre=unit["recent"], hit=False)


# ---- structural probe (PRE) ---------------------------------------------------------------------
def _probe_update(state, view):
    unit, t = state.aux["probe"], view.step
    due = unit["on"] & (unit["start"] != 0) & (t - unit["start"] >= PROBE["duration"])
    recent = recent_error(view)
    win = (unit["pre"] != 0) & (recent < unit["pre"])  # recorded only
    state = _families(state, jnp.ones((3,), bool), due)
    nxt = jnp.where(due, t + PROBE["interval"], unit["next"])
    return _with_unit(state, "probe", **_end(unit, due, win, recent), next=nxt)


def _probe_waiting(view):
    unit = view.aux["probe"]
    return unit["on"] | (view.step < unit["next"])


def _probe_experiment(state, view):
    unit = state.aux["probe"]
    f = unit["k"] % 3
    state = _families(state, jnp.arange(3) == f, jnp.asarray(True))
    return _with_unit(state, "probe", on=True, start=view.step, pre=unit["recent"], k=unit["k"] + 1)


# ---- emergency (POST, always on) -------------------------------------------------------------------
def _some_family_on(view):
    return jnp.any(jnp.stack([view.is_enabled(n) for n in MECHANISMS]))


def _restore_all(state, view):
    return _families(state, jnp.ones((3,), bool), jnp.asarray(True))


def invariants() -> list[SystemInvariant]:
    """The governance units, in the original's registration order.

    >>> [(i.name, i.phase.value) for i in invariants()]
    [('fragility', 'runtime'), ('coverage', 'post'), ('probe', 'pre'), ('emergency', 'post')]
    """
    return [
        SystemInvariant("fragility", _fragility_calm, _fragility_experiment, phase=InvariantPhase.RUNTIME,
                        update=_fragility_update,
                        message="intervention proposals fragile and forecasts poor: try HighestConfidence"),
        SystemInvariant("coverage", _coverage_steady, _coverage_experiment, phase=InvariantPhase.POST,
                        update=_coverage_update,
                        message="a family's coverage decayed: try without it"),
        SystemInvariant("probe", _probe_waiting, _probe_experiment, phase=InvariantPhase.PRE,
                        update=_probe_update, message="time to probe one family alone"),
        SystemInvariant("emergency", _some_family_on, _restore_all, phase=InvariantPhase.POST,
                        message="no family left: restore all"),
    ]
