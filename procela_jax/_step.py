"""Step and run: one step in the seed's order, and ``lax.scan`` over many.

Every function here takes the executive, the state and a :class:`TracePlan`
(static: it chooses the forms, never the numbers); ``gate`` is the runtime
``True`` that :func:`_hints.fence` branches on, or None.
"""

from __future__ import annotations

import functools
import operator

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ModelError
from ._governance import check_phase, match_types, recovering_step, tree_where
from ._invariant import InvariantPhase, InvariantSeverity
from ._plan import BLOCK_BYTES, TracePlan
from ._resolution import resolve
from ._save import Save, Trajectory, empty_trajectory, extract
from ._state import State, commit_records
from ._theories import propose, stack_families

#: Incremented each time a step or a run is traced (tests use it to catch recompiles).
TRACE_COUNT = {"step": 0, "run": 0}


def step_impl(ex, state: State, plan: TracePlan, gate=None, retry=None, stacked=None) -> State:
    """One step: pre-step hook, PRE invariants, proposals, RUNTIME invariants,
    resolution, domain enforcement and commit, POST invariants, post-step hook,
    step + 1. ``retry``: the attempt's number (a retry draws from its own key).
    ``stacked``: the families' stacked parameters (``stack_families``)."""
    layout = ex.layout
    guard = any(inv.severity is InvariantSeverity.FATAL for inv in ex.invariants)
    start = state
    t = state.step
    step_key = jax.random.fold_in(state.key, t)
    if retry is not None:
        step_key = jax.random.fold_in(step_key, retry)

    def guarded(before, after):
        return tree_where(before.halted, before, after) if guard else after

    # 1. pre-step hook, PRE invariants
    if ex.pre_step is not None:
        state = guarded(state, match_types(ex.pre_step(state, t), state, "pre_step"))
    state = check_phase(ex, state, InvariantPhase.PRE)
    before = state
    # 2. mechanisms propose (each reads the values committed at the previous step)
    props, mech_active = propose(ex, plan, state, step_key, stacked)
    state = eqx.tree_at(lambda s: s.proposed, state, mech_active)
    # 3. RUNTIME invariants see the pending hypotheses; 4. each variable's active policy resolves
    state, before, (res_v, res_c, has_value, source), audit = resolve(
        ex, plan, gate, state, before, t, guarded, props)
    # 5. domain enforcement and commit (every joined variable, even without hypotheses)
    if plan.commit == "writable":  # every written variable has joined (checked by the caller)
        commit = jnp.asarray(np.asarray(layout.writable, bool))
    else:
        commit = join(ex, state)
        state = eqx.tree_at(lambda s: s.joined, state, commit)
    state = count_nonfinite(state, commit & has_value & ~jnp.isfinite(res_v), t)
    state = commit_records(state, commit, has_value, res_v, res_c, source, record_step=t + 1, plan=plan)
    if ex.audit:
        audit["source"] = jnp.where(has_value, source, -3).astype(jnp.int32)
        state = eqx.tree_at(lambda s: s.audit, state, audit)
    state = guarded(before, state)
    # 6. POST invariants, post-step hook, step + 1
    state = check_phase(ex, state, InvariantPhase.POST)
    if ex.post_step is not None:
        state = guarded(state, match_types(ex.post_step(state, t), state, "post_step"))
    state = guarded(state, eqx.tree_at(lambda s: s.step, state, state.step + 1))
    if guard:
        state = tree_where(start.halted, start, state)
    return state


def join(ex, state: State):
    """The variables this step commits: those joined before, and those with a
    writer enabled now (after the RUNTIME invariants, which may enable one). A
    mechanism declared ``enabled=False`` and enabled later brings its variables in
    from that step, as one added at run time does in the original."""
    return state.joined | writer_enabled(ex, state.enabled)


def writer_enabled(ex, enabled):
    """Per variable: is one of its writers enabled (``enabled``: per mechanism; a
    NumPy array gives a NumPy answer)?"""
    xp = np if isinstance(enabled, np.ndarray) else jnp
    slot_mech = np.asarray(ex.tables.slot_mech, np.int32).reshape(len(ex.layout.variables), -1)
    if not slot_mech.size:
        return xp.zeros(enabled.shape[:-1] + (len(ex.layout.variables),), bool)
    on = xp.where(slot_mech >= 0, enabled[..., np.maximum(slot_mech, 0)], False)
    return functools.reduce(operator.or_, [on[..., j] for j in range(on.shape[-1])])  # elementwise: fuses


def unjoined(ex, joined) -> list[str]:
    """The written variables that have not joined in ``joined`` (concrete; one
    state's flags or a batch's, where a variable must have joined in every row)."""
    every = np.asarray(joined).reshape(-1, len(ex.layout.variables)).all(axis=0)
    return [v for v, w, j in zip(ex.layout.variables, ex.layout.writable, every) if w and not j]


def joined_at_init(ex) -> np.ndarray:
    """The variables ``ex.init`` marks joined: those with a writer declared enabled."""
    return writer_enabled(ex, np.asarray([m.enabled for m in ex.mechanisms], bool).reshape(-1))


def starts_joined(ex) -> bool:
    """Does ``ex.init`` join every written variable? (Then so has every state that
    descends from it by steps: a variable never leaves.)"""
    return not unjoined(ex, joined_at_init(ex))


def count_nonfinite(state: State, bad, t) -> State:
    """Count resolutions that gave a non-finite value (``bad``, per variable) as
    invalid proposals are counted: the total and the first step."""
    first = jnp.where(bad & (state.nonfinite_first_step < 0), t, state.nonfinite_first_step)
    return eqx.tree_at(lambda s: (s.nonfinite_resolved, s.nonfinite_first_step), state,
                       (state.nonfinite_resolved + bad.astype(jnp.int32), first))


def advance(ex, state: State, plan: TracePlan, gate=None, stacked=None) -> State:
    """One step, with retries and rollback when the executive has a ``recovery``."""
    if ex.recovery is not None:
        return recovering_step(ex, state, lambda s, retry: step_impl(ex, s, plan, gate, retry, stacked))
    return step_impl(ex, state, plan, gate, None, stacked)


def _step_traced(ex, state, plan):
    TRACE_COUNT["step"] += 1
    return advance(ex, state, plan)


step_jit = eqx.filter_jit(_step_traced)


def run_impl(ex, state: State, steps: int, save: Save | None, remat: bool, plan: TracePlan, gate=None):
    """``steps`` steps of ``state``, saving what ``save`` asks for."""
    TRACE_COUNT["run"] += 1
    if plan.stats == "stacked":
        return _run_body(ex, state, steps, save, remat, plan, gate)
    # the statistics are carried as columns (see Stats); states are stored stacked
    state = eqx.tree_at(lambda s: s.stats_, state, state.stats_.columns())
    state, traj = _run_body(ex, state, steps, save, remat, plan, gate)
    return eqx.tree_at(lambda s: s.stats_, state, state.stats_.stacked()), traj


def _run_body(ex, state: State, steps: int, save: Save | None, remat: bool, plan: TracePlan, gate):
    stacked = stack_families(ex, plan)  # once, outside the loop

    def one(s, _):
        return advance(ex, s, plan, gate, stacked), None

    if save is None:
        state, _ = jax.lax.scan(one, state, None, length=steps)
        return state, empty_trajectory(())
    names = save.variables if save.variables is not None else ex.layout.variables
    idx = np.asarray([ex.layout.var(nm) for nm in names], np.int32)
    every = save.every
    n_saves, rest = divmod(steps, every)

    # the step index grows by one each step unless a FATAL invariant can halt the
    # world: then the saved steps are known in advance and need not be recorded
    halting = any(inv.severity is InvariantSeverity.FATAL for inv in ex.invariants)
    start = state.step

    def chunk(s, _):
        if every == 1:
            s = advance(ex, s, plan, gate, stacked)
        else:
            s, _ = jax.lax.scan(one, s, None, length=every)
        extra = save.fn(s) if save.fn is not None else None
        data = extract(s, idx, save.fields)
        if save.audit:
            if s.audit is None:
                raise ModelError("Save(audit=True) needs an executive built with audit=True")
            data["audit"] = {k: v[idx] for k, v in s.audit.items()}
        return s, (data, s.step if halting else None, extra)

    if remat:
        chunk = jax.checkpoint(chunk)
    block = rows_per_block(ex, state, idx, save, n_saves) if plan.block_rows else 1
    state, (data, steps_arr, extra) = _scan_rows(chunk, state, n_saves, block)
    if not halting:
        steps_arr = start + every * jnp.arange(1, n_saves + 1, dtype=start.dtype)
    if rest:
        state, _ = jax.lax.scan(one, state, None, length=rest)
    return state, Trajectory(data=data, steps=steps_arr, extra=extra, names=tuple(names))


run_jit = eqx.filter_jit(run_impl)


def rows_per_block(ex, state: State, idx, save: Save, n_rows: int) -> int:
    """How many saved rows the inner loop gathers before writing them out: the
    largest divisor of ``n_rows`` that keeps a block under ``BLOCK_BYTES`` (a
    divisor, so that the step is traced and compiled once).

    XLA's CPU runtime runs a loop body whose buffers are all small inline, kernel
    after kernel; one larger buffer (such as a whole trajectory written row by
    row) makes it schedule every kernel of the step as a task. Rows are therefore
    written in blocks, and each block is copied into the trajectory once."""
    row = [len(idx) * jnp.dtype(ex.dtype).itemsize]  # value, confidence, statistics
    if "policy" in save.fields or "count" in save.fields:
        row.append(len(idx) * 4)
    if save.audit and state.audit is not None:
        row += [len(idx) * v[0].size * v.dtype.itemsize for v in state.audit.values()]
    most = max(1, min(64, BLOCK_BYTES // max(row)))
    return max(k for k in range(1, most + 1) if n_rows % k == 0)


def _scan_rows(chunk, state, n_rows: int, block: int):
    """``lax.scan(chunk, state, None, length=n_rows)``, rows written ``block`` at a
    time (``block`` divides ``n_rows``)."""
    if block <= 1:
        return jax.lax.scan(chunk, state, None, length=n_rows)
    state, rows = jax.lax.scan(lambda s, _: jax.lax.scan(chunk, s, None, length=block), state, None,
                               length=n_rows // block)
    return state, jax.tree.map(lambda a: a.reshape((n_rows,) + a.shape[2:]), rows)
