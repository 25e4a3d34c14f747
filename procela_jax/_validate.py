"""Build-time validation: every mechanism, invariant, hook and the schedule traced
once on abstract values (a family of mechanisms once for all its members), and
every failure reported as a :class:`ModelError` that names the culprit."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ModelError
from ._governance import match_types
from ._mechanism import BASE_FIELDS
from ._plan import choose_plan
from ._record import VariableRecord
from ._step import advance
from ._view import View


def check_fields(mechanisms) -> None:
    """Parameters are numbers or arrays; anything else must be a static field."""
    for m in mechanisms:
        for f in dataclasses.fields(m):
            if f.name in BASE_FIELDS or f.metadata.get("static", False):
                continue
            value = getattr(m, f.name, None)
            bad = [x for x in jax.tree.leaves(value) if isinstance(x, (str, bytes))]
            if bad:
                raise ModelError(
                    f"mechanism {m.name!r}: field {f.name!r} holds {bad[0]!r}, which is not a number or an "
                    f"array; declare configuration as a static field: "
                    f"{f.name}: {type(bad[0]).__name__} = eqx.field(static=True, default=...)"
                )


def trial_trace(ex) -> None:
    """Trace what the step calls once on abstract values; name the culprit.

    The step is traced whole; only if that fails is each invariant and hook traced
    alone, to name the one that fails (tracing them first would trace every
    governance function twice for every model that builds)."""
    state = jax.eval_shape(lambda e: e.init(jax.random.key(0)), ex)
    for fam in ex.tables.families:
        if not fam.batchable:  # a batchable family was traced once, on its template
            for mi in fam.members:
                _trial_mechanism(ex.mechanisms[mi], state)
    _trial_schedule(ex, state)
    try:
        jax.eval_shape(lambda e, s: advance(e, s, choose_plan(e)), ex, state)
    except Exception as e:
        _trial_governance(ex, state)  # raises, naming the function, if one fails alone
        if isinstance(e, KeyError):
            raise ModelError(f"a governance function failed on a trial step: {e.args[0]}") from None
        raise


def _trial_mechanism(mech, state) -> None:
    allowed = set(mech.reads) | set(mech.writes)
    holder = {}

    def fn(mech_, st):
        view = View(st, allowed=allowed)
        out = mech_.transform(view, jax.random.key(0))
        holder["accessed"] = view.accessed
        return out

    try:
        out = jax.eval_shape(fn, mech, state)
    except KeyError as e:
        raise ModelError(f"mechanism {mech.name!r} failed on a trial step: {e.args[0]}") from None
    except Exception as e:  # noqa: BLE001 - re-raised with the mechanism's name
        raise ModelError(f"mechanism {mech.name!r} failed on a trial step: {type(e).__name__}: {e}") from e
    if holder.get("accessed"):
        raise ModelError(
            f"mechanism {mech.name!r} reads {sorted(holder['accessed'])} but declares "
            f"reads={list(mech.reads)}; add them to reads="
        )
    if not isinstance(out, dict):
        raise ModelError(
            f"mechanism {mech.name!r}: transform must return a dict "
            f"{{variable name: VariableRecord}}, got {type(out).__name__}"
        )
    keys = {getattr(k, "name", k) for k in out}
    missing = sorted(set(mech.writes) - keys)
    extra = sorted(keys - set(mech.writes))
    if missing or extra:
        raise ModelError(
            f"mechanism {mech.name!r} must return one record for each variable it writes "
            f"{list(mech.writes)}; missing {missing}, unexpected {extra}"
        )
    for k, rec in out.items():
        if not isinstance(rec, VariableRecord):
            # the trial trace turns numbers and arrays into ShapeDtypeStructs
            what = "a bare number or array" if isinstance(rec, jax.ShapeDtypeStruct) else type(rec).__name__
            raise ModelError(
                f"mechanism {mech.name!r} returned {what} for {k!r}; "
                "return a procela_jax.VariableRecord(value, confidence=...)"
            )
        for field in ("value", "confidence", "weight"):
            shape = jnp.shape(getattr(rec, field))
            if shape != ():
                raise ModelError(
                    f"mechanism {mech.name!r}: the {field} proposed for {k!r} must be a "
                    f"scalar, got shape {shape}"
                )


def _pending(ex, state):
    n = len(ex.layout.variables)
    width = len(ex.tables.slot_prop[0]) if n else 0
    dtype = jnp.dtype(ex.dtype)
    z = jax.ShapeDtypeStruct((n, width), dtype)
    return dict(values=z, confidences=z, weights=z, mask=jax.ShapeDtypeStruct((n, width), bool),
                sources=jax.ShapeDtypeStruct((n, width), jnp.int32))


def _abstract(what: str, fn, *args):
    """``jax.eval_shape(fn, *args)``, any failure a ModelError naming ``what``."""
    try:
        return jax.eval_shape(fn, *args)
    except ModelError:
        raise
    except KeyError as e:
        raise ModelError(f"{what} failed on a trial step: {e.args[0]}") from e
    except Exception as e:  # noqa: BLE001 - re-raised with the culprit's name
        raise ModelError(f"{what} failed on a trial step: {type(e).__name__}: {e}") from e


def _trial_governance(ex, state) -> None:
    """Each invariant and hook alone, so a failure names its owner."""
    pending = _pending(ex, state)
    for inv in ex.invariants:
        runtime = inv.phase.name == "RUNTIME"

        def view(st, p=None, runtime=runtime):
            return View(st, p if runtime else None)

        what = f"invariant {inv.name!r}"
        _abstract(f"the condition of {what}", lambda st, p, inv=inv, view=view: inv.condition(view(st, p)),
                  state, pending)
        for label in ("update", "on_violation handler"):
            fn = getattr(inv, label.split()[0])
            if fn is not None:
                where = f"the {label} of {what}"
                _abstract(where, lambda st, p, fn=fn, view=view, where=where: match_types(fn(st, view(st, p)), st, where),
                          state, pending)
    for label in ("pre_step", "post_step"):
        fn = getattr(ex, label)
        if fn is not None:
            _abstract(label, lambda st, fn=fn, label=label: match_types(fn(st, st.step), st, label), state)


def _trial_schedule(ex, state) -> None:
    """The schedule alone: its output's shape is checked (the step would broadcast it)."""
    if ex.schedule is not None:
        out = _abstract("the schedule", lambda st: ex.schedule(View(st)), state)
        m = len(ex.layout.mechanisms)
        if isinstance(out, dict):
            for name in out:
                if name not in ex.layout.mech_index:
                    raise ModelError(f"the schedule names an unknown mechanism {name!r}; "
                                     f"the mechanisms are {list(ex.layout.mechanisms)}")
        elif np.shape(out) not in ((), (m,)):
            raise ModelError(
                f"the schedule must return one boolean per mechanism, shape ({m},) in the order "
                f"{list(ex.layout.mechanisms)} (or a dict {{name: bool}}), got shape {np.shape(out)}"
            )

