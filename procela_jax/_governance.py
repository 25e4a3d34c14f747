"""Governance inside a step: invariant phases, failure detection, retries and rollback."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ModelError
from ._invariant import InvariantPhase, InvariantSeverity, InvariantSoftness
from ._recovery import FAILURE_INVALID_PROPOSAL, FAILURE_INVARIANT, FAILURE_NON_FINITE
from ._state import State, put
from ._view import View


def tree_where(pred, new, old):
    """``new`` where ``pred``, else ``old``, leaf by leaf."""
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def match_types(new, old, where: str):
    """Cast a handler's output leaves to the dtypes of its input (weak types in, fine)."""
    new_leaves, new_def = jax.tree.flatten(new)
    old_leaves, old_def = jax.tree.flatten(old)
    if new_def != old_def:
        raise ModelError(f"{where} must return a State of the same structure it was given")
    return jax.tree.unflatten(
        old_def, [jnp.asarray(a, b.dtype).reshape(jnp.shape(b)) for a, b in zip(new_leaves, old_leaves)]
    )


def check_phase(ex, state: State, phase: InvariantPhase, pending=None) -> State:
    for k, inv in enumerate(ex.invariants):
        if inv.phase is not phase:
            continue
        if inv.update is not None:
            def track(s, update=inv.update, name=inv.name):
                return match_types(update(s, View(s, pending)), s, f"the update of invariant {name!r}")

            state = jax.lax.cond(state.invariant_active[k] & ~state.halted, track, lambda s: s, state)
        view = View(state, pending)
        ok = jnp.asarray(inv.condition(view))
        if ok.shape != () :
            raise ModelError(
                f"invariant {inv.name!r}: condition must return one boolean, got shape {ok.shape}"
            )
        violated = (~ok.astype(bool)) & state.invariant_active[k] & ~state.halted
        t = state.step
        state = eqx.tree_at(
            lambda s: (s.violation_count, s.violation_first_step, s.violation_last_step),
            state,
            (
                put(state.violation_count, k, state.violation_count[k] + violated.astype(jnp.int32)),
                put(state.violation_first_step, k,
                    jnp.where(violated & (state.violation_first_step[k] < 0), t, state.violation_first_step[k])),
                put(state.violation_last_step, k, jnp.where(violated, t, state.violation_last_step[k])),
            ),
        )
        if inv.on_violation is not None:
            handler = inv.on_violation

            def apply(s, handler=handler, view=view, name=inv.name):
                return match_types(handler(s, view), s, f"the on_violation handler of invariant {name!r}")

            state = jax.lax.cond(violated, apply, lambda s: s, state)
        if inv.softness is InvariantSoftness.SOFT:
            continue
        if inv.severity is InvariantSeverity.CRITICAL:
            state = eqx.tree_at(lambda s: s.safe_mode, state, state.safe_mode | violated)
        elif inv.severity is InvariantSeverity.FATAL:
            first = violated & ~state.halted
            state = eqx.tree_at(
                lambda s: (s.halted, s.halted_by, s.halted_at),
                state,
                (
                    state.halted | violated,
                    jnp.where(first, k, state.halted_by),
                    jnp.where(first, t, state.halted_at),
                ),
            )
    return state

def failure(ex, before: State, after: State):
    """Did the step from ``before`` to ``after`` fail? Returns (failed, kind, who)."""
    m = len(ex.layout.mechanisms)
    failed = jnp.asarray(False)
    kind = jnp.asarray(0, jnp.int32)
    who = jnp.asarray(-1, jnp.int32)
    checks = []
    if m:
        new_invalid = after.invalid_proposals > before.invalid_proposals
        checks.append((FAILURE_INVALID_PROPOSAL, new_invalid))
    writable = np.asarray(ex.layout.writable, bool)
    checks.append((FAILURE_NON_FINITE, ~jnp.isfinite(after.values) & writable))
    rb = np.asarray([inv.rollback for inv in ex.invariants], bool)
    if rb.any():
        checks.append((FAILURE_INVARIANT, (after.violation_count > before.violation_count) & rb))
    for code, mask in reversed(checks):  # the first check wins
        hit = jnp.any(mask)
        kind = jnp.where(hit, code, kind)
        who = jnp.where(hit, jnp.argmax(mask).astype(jnp.int32), who)
        failed = failed | hit
    return failed & ~before.halted, kind, who


def recovering_step(ex, state: State, attempt) -> State:
    """A step with retries and rollback (an executive with ``recovery``).

    ``attempt(state, retry)`` is one try at the step (``retry`` None first, then
    1, 2, ...: each retry draws from its own key)."""
    rec = ex.recovery
    cand = attempt(state, None)
    failed, kind, who = failure(ex, state, cand)
    attempts = jnp.asarray(1, jnp.int32)
    # what every attempt recorded: counts add up, first/last steps are this step's
    counters = lambda s: (s.invalid_proposals, s.invalid_first_step, s.violation_count,
                          s.violation_first_step, s.violation_last_step, s.nonfinite_resolved,
                          s.nonfinite_first_step)
    kinds = ("count", "first", "count", "first", "last", "count", "first")
    tally = counters(cand)
    for r in range(1, rec.retries + 1):
        def retry(_, r=r):
            return attempt(state, r)

        again = jax.lax.cond(failed, retry, lambda c: c, cand)
        ran = failed
        attempts = attempts + ran.astype(jnp.int32)
        tally = tuple(
            total + jnp.where(ran, now - was, 0) if kind == "count"
            else jnp.where(total >= 0, total, now) if kind == "first"
            else jnp.maximum(total, now)
            for kind, total, now, was in zip(kinds, tally, counters(again), counters(state))
        )
        cand = again
        still, _, _ = failure(ex, state, cand)
        failed = failed & still
    cand = eqx.tree_at(counters, cand, tally)
    # every attempt failed: keep the previous world, skip the step, keep the counters
    rolled = eqx.tree_at(
        lambda s: (s.step, *counters(s), s.safe_mode, s.halted, s.halted_by, s.halted_at),
        state,
        (state.step + 1, *tally, cand.safe_mode, cand.halted, cand.halted_by, cand.halted_at),
    )
    out = tree_where(failed, rolled, cand)
    first_failed = (attempts > 1) | failed
    log = out.failures.record(first_failed, state.step, kind, who, attempts, failed)
    return eqx.tree_at(lambda s: s.failures, out, log)

