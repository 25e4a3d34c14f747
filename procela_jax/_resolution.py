"""Resolution: the proposals become hypothesis slots, which each variable's active
policy resolves into one value; invalid proposals are counted per mechanism.

Proposals arrive in proposal order (mechanism by mechanism, each mechanism's
writes in order) either as lists of scalars or as one array each
(:class:`Proposals`); the static tables of the executive (``ex.tables``) say which
proposal feeds which slot of which variable.
"""

from __future__ import annotations

import functools
import operator
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._governance import check_phase
from ._hints import fence, materialize
from ._invariant import InvariantPhase
from ._memory import SOURCE_BLEND
from ._plan import TracePlan
from ._state import State
from ._variable import apply_validators


class Proposals(NamedTuple):
    """One entry per proposal: a list of scalars, or one array, per field."""

    values: list | jax.Array
    confidences: list | jax.Array
    weights: list | jax.Array
    active: list | jax.Array  # the proposing mechanism runs this step


def valid(values, confidences, weights):
    """Which proposals are hypotheses: finite, confidence in [0, 1], weight >= 0."""
    return (jnp.isfinite(values) & jnp.isfinite(confidences) & (confidences >= 0) & (confidences <= 1)
            & jnp.isfinite(weights) & (weights >= 0))


def take_slots(items, table, fill, dtype, plan: TracePlan):
    """``items[table]`` for proposals ``items`` (a list of scalars or an array) and a
    static 2-D index table whose entries ``len(items)`` give ``fill``: built from
    static slices (``plan.slots == "static"`` and scalars), else gathered."""
    table = np.asarray(table)
    if isinstance(items, list) and plan.slots == "static":
        fill = jnp.asarray(fill, dtype)
        return jnp.stack([jnp.stack([items[p] if p < len(items) else fill for p in row]) for row in table])
    flat = jnp.stack(items) if isinstance(items, list) else items
    if not table.size:
        return jnp.zeros(table.shape, dtype)
    return jnp.concatenate([jnp.asarray(flat, dtype), jnp.asarray([fill], dtype)])[table]


def _columns(reduce, a):
    """Reduce the last axis of a small 2-D array column by column (elementwise)."""
    return functools.reduce(reduce, [a[:, j] for j in range(a.shape[1])])


def sum_per_mechanism(counts, mechanisms, m: int):
    """``(m,)`` sums of scalar ``counts``, each added to the total of its mechanism
    (elementwise: it fuses with the rest of the step)."""
    cells = [[] for _ in range(m)]
    for x, mi in zip(counts, mechanisms):
        cells[mi].append(x)
    zero = jnp.zeros((), jnp.int32)
    return jnp.stack([functools.reduce(operator.add, c, zero) for c in cells])


def count_invalid(state: State, t, per_mech) -> State:
    """Add each mechanism's invalid proposals of this step to its counters."""
    counts = state.invalid_proposals + per_mech
    new = counts > state.invalid_proposals  # (per_mech is not kept: one kernel less)
    first = jnp.where(new & (state.invalid_first_step < 0), t, state.invalid_first_step)
    return eqx.tree_at(lambda s: (s.invalid_proposals, s.invalid_first_step), state, (counts, first))


def active_policy_result(outs, choice):
    """``(value, confidence, winner)`` of the policy ``choice`` indexes in ``outs``."""
    if len(outs) == 1:
        return outs[0]
    return tuple(jnp.select([choice == q for q in range(len(outs))], [o[j] for o in outs]) for j in range(3))


def resolve(ex, plan: TracePlan, gate, state: State, before: State, t, guarded, props: Proposals):
    """Steps 2 (the proposals' validity) to 4 of a step in the form ``plan``
    chooses. Returns the state, the state the resolution started from,
    ``(values, confidences, has_value, source)`` and the slots for the audit."""
    if plan.resolution == "by_variable":
        return _resolve_by_variable(ex, plan, gate, state, before, t, guarded, props)
    return _resolve_stacked(ex, plan, state, before, t, guarded, props)


def _resolve_stacked(ex, plan: TracePlan, state: State, before: State, t, guarded, props: Proposals):
    """Resolution on the hypothesis slots stacked as ``(variables, slots)`` arrays,
    each group of variables that share candidate policies at once."""
    layout, tables = ex.layout, ex.tables
    n, m = len(layout.variables), len(layout.mechanisms)
    slot_prop = np.asarray(tables.slot_prop, np.int32).reshape(n, -1)
    width = slot_prop.shape[1]
    dtype = jnp.dtype(ex.dtype)
    pv, pc, pw, prop_active = props
    if width:
        sv = take_slots(pv, slot_prop, 0, dtype, plan)
        sc = take_slots(pc, slot_prop, 0, dtype, plan)
        sw = take_slots(pw, slot_prop, 0, dtype, plan)
        sactive = take_slots(prop_active, slot_prop, False, jnp.bool_, plan)
    else:
        sv = sc = sw = jnp.zeros((n, 0), dtype)
        sactive = jnp.zeros((n, 0), bool)
    ok = valid(sv, sc, sw)
    smask = ok & sactive
    if plan.materialize:  # every policy and counter reads the slots: lay them out once
        sv, sc, smask = materialize(sv), materialize(sc), materialize(smask)
    slot_mech = np.asarray(tables.slot_mech, np.int32).reshape(n, width)
    if m:
        # invalid proposals of enabled mechanisms, counted per mechanism
        bad = (sactive & ~ok).astype(jnp.int32)
        if plan.slots == "static":  # each proposal has one slot: add the mechanism's slots
            cells = list(zip(*np.nonzero(slot_mech >= 0)))
            per_mech = sum_per_mechanism([bad[i, j] for i, j in cells], [slot_mech[i, j] for i, j in cells], m)
        else:
            flat = slot_mech.reshape(-1)
            per_mech = jax.ops.segment_sum(
                jnp.where(flat >= 0, bad.reshape(-1), 0), np.where(flat >= 0, flat, 0), m
            )
        state = count_invalid(state, t, per_mech)
    if width and any(v.validators for v in ex.variables):
        smask = apply_validators(ex.variables, sv, sc, smask)
    pending = dict(values=sv, confidences=sc, weights=sw, mask=smask, sources=jnp.asarray(slot_mech))
    state = guarded(before, state)
    # 3. RUNTIME invariants see the pending hypotheses
    state = check_phase(ex, state, InvariantPhase.RUNTIME, pending)
    before = state
    # 4. resolution with each variable's active policy
    res_v = state.values
    res_c = state.confidences
    winner = jnp.full((n,), -1, jnp.int32)
    for policies, members in tables.groups:
        whole = tuple(members) == tuple(range(n))
        idx = slice(None) if whole else np.asarray(members)
        gv, gc, gw, gm = sv[idx], sc[idx], sw[idx], smask[idx]
        outs = [p.resolve(gv, gc, gw, gm) for p in policies]
        v, c, w = active_policy_result(outs, state.active_policy[idx])
        if whole:
            res_v, res_c = jnp.asarray(v, res_v.dtype), jnp.asarray(c, res_c.dtype)
            winner = jnp.asarray(w, jnp.int32)
        else:
            res_v = res_v.at[idx].set(jnp.asarray(v, res_v.dtype))
            res_c = res_c.at[idx].set(jnp.asarray(c, res_c.dtype))
            winner = winner.at[idx].set(jnp.asarray(w, jnp.int32))
    if not width:
        has_value = jnp.zeros((n,), bool)
        source = jnp.full((n,), SOURCE_BLEND, jnp.int32)
    elif plan.slots == "static":  # elementwise: fuses with the rest of the step
        has_value = _columns(operator.or_, smask)
        source = jnp.full((n,), SOURCE_BLEND, jnp.int32)
        for j in range(width):
            source = jnp.where(winner == j, jnp.asarray(slot_mech[:, j]), source)
    else:
        has_value = jnp.any(smask, axis=-1)
        source = jnp.where(
            winner >= 0,
            jnp.take_along_axis(jnp.asarray(slot_mech), jnp.clip(winner, 0, None)[:, None], -1)[:, 0],
            SOURCE_BLEND,
        )
    if plan.materialize:  # one buffer each, read by the commit's large kernels
        res_v, res_c, has_value, source = (materialize(x) for x in (res_v, res_c, has_value, source))
    audit = dict(values=sv, confidences=sc, weights=sw, mask=smask)
    return state, before, (res_v, res_c, has_value, source), audit


def _as_scalars(items):
    return items if isinstance(items, list) else [items[i] for i in range(items.shape[0])]


def _resolve_by_variable(ex, plan: TracePlan, gate, state: State, before: State, t, guarded, props: Proposals):
    """The stacked resolution's results, computed from the proposals as scalars:
    under ``vmap`` each proposal is one column of scenarios, and the resolution
    runs on those columns, variable by variable (``Policy.resolve_slots``), inside
    a :func:`fence` where the plan asks for one, instead of on
    ``(scenarios, variables, slots)`` arrays, which XLA's CPU kernels walk element
    by element. No audit and no validators (the plan never chooses this form then)."""
    tables = ex.tables
    m = len(ex.layout.mechanisms)
    pv, pc, pw, prop_active = (_as_scalars(x) for x in props)
    ok = [valid(v, c, w) for v, c, w in zip(pv, pc, pw)]
    if m:  # invalid proposals of enabled mechanisms, counted per mechanism
        bad = [(a & ~o).astype(jnp.int32) for a, o in zip(prop_active, ok)]
        state = count_invalid(state, t, sum_per_mechanism(bad, tables.prop_mech, m))
    pmask = [a & b for a, b in zip(ok, prop_active)]
    slot_prop = np.asarray(tables.slot_prop, np.int32)
    dtype = jnp.dtype(ex.dtype)
    static = plan.replace(slots="static")
    pending = dict(  # stacked only if a RUNTIME invariant reads them
        values=take_slots(pv, slot_prop, 0, dtype, static), confidences=take_slots(pc, slot_prop, 0, dtype, static),
        weights=take_slots(pw, slot_prop, 0, dtype, static), mask=take_slots(pmask, slot_prop, False, jnp.bool_, static),
        sources=jnp.asarray(np.asarray(tables.slot_mech, np.int32)),
    )
    state = guarded(before, state)
    state = check_phase(ex, state, InvariantPhase.RUNTIME, pending)
    before = state
    args = (state.values, state.confidences, state.active_policy, pv, pc, pw, pmask)
    fn = functools.partial(_resolve_variables, ex)
    if plan.fence and gate is not None:
        resolved = fence(gate, fn, *args)
    elif plan.materialize:
        resolved = jax.tree.map(materialize, fn(*args))
    else:
        resolved = fn(*args)
    return state, before, resolved, None


def _resolve_variables(ex, values, confidences, active_policy, pv, pc, pw, pmask):
    """Each variable's ``(value, confidence, has_value, source)`` from the proposals
    as scalars, resolved from its slots one by one, then stacked (a variable that
    no mechanism writes keeps its value and confidence, and has none)."""
    tables = ex.tables
    dtype = jnp.dtype(ex.dtype)
    fill, off = jnp.zeros((), dtype), jnp.zeros((), bool)
    slot = lambda items, p, empty: items[p] if p < len(items) else empty  # noqa: E731
    policies_of = {i: policies for policies, members in tables.groups for i in members}
    rv, rc, rhas, rsrc = [], [], [], []
    for i, row in enumerate(tables.slot_prop):
        args = ([slot(pv, p, fill) for p in row], [slot(pc, p, fill) for p in row],
                [slot(pw, p, fill) for p in row], [slot(pmask, p, off) for p in row])
        if i not in policies_of:
            rv.append(values[i])
            rc.append(confidences[i])
            rhas.append(off)
            rsrc.append(jnp.asarray(SOURCE_BLEND, jnp.int32))
            continue
        v, c, w = active_policy_result([p.resolve_slots(*args) for p in policies_of[i]], active_policy[i])
        source = jnp.asarray(SOURCE_BLEND, jnp.int32)
        for j, mi in enumerate(tables.slot_mech[i]):
            source = jnp.where(w == j, mi, source)
        rv.append(jnp.asarray(v, dtype))
        rc.append(jnp.asarray(c, dtype))
        rhas.append(functools.reduce(operator.or_, args[3]))
        rsrc.append(source)
    return jnp.stack(rv), jnp.stack(rc), jnp.stack(rhas), jnp.stack(rsrc)
