"""Executive: validates a model once, then steps and runs it as pure jitted functions."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import operator
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from ._errors import ModelError
from ._hints import batched, fence, materialize
from ._invariant import InvariantPhase, InvariantSeverity, InvariantSoftness, SystemInvariant
from ._jit import unrolled_threefry
from ._recovery import (
    FAILURE_INVALID_PROPOSAL,
    FAILURE_INVARIANT,
    FAILURE_NON_FINITE,
    FailureLog,
    Recovery,
)
from ._layout import Layout
from ._mechanism import BASE_FIELDS, Mechanism, stable_id
from ._memory import SOURCE_BLEND, SOURCE_EXTERNAL, Memory
from ._record import VariableRecord
from ._save import Save, Trajectory, empty_trajectory, extract
from ._state import State, commit_records, put
from ._statistics import Stats
from ._variable import Variable, apply_validators
from ._view import View

#: Incremented each time a step or a run is traced (tests use it to catch recompiles).
TRACE_COUNT = {"step": 0, "run": 0}


@dataclasses.dataclass(frozen=True)
class _Plan:
    """Static tables: which mechanism output feeds which hypothesis slot."""

    prop_mech: tuple[int, ...]  # per proposal: the mechanism index
    prop_var: tuple[int, ...]  # per proposal: the variable index
    slot_prop: tuple[tuple[int, ...], ...]  # per variable: proposal index per slot (pad: n_props)
    slot_mech: tuple[tuple[int, ...], ...]  # per variable: mechanism index per slot (pad: -1)
    groups: tuple[tuple[tuple, tuple[int, ...]], ...]  # (candidate policies, variable indices)
    mech_ids: tuple[int, ...]
    safe: tuple[bool, ...]


def _to_arrays(tree, dtype):
    """Python floats become arrays of the model dtype (so new values never recompile)."""

    def conv(x):
        if isinstance(x, float):
            return jnp.asarray(x, dtype)
        if isinstance(x, (np.ndarray, jax.Array)) and jnp.issubdtype(x.dtype, jnp.floating):
            return jnp.asarray(x, dtype)
        return x

    return jax.tree.map(conv, tree)


def _as_key(key):
    key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    if key.dtype == jnp.uint32 and key.shape[-1:] == (2,):
        return jax.random.wrap_key_data(key)
    raise TypeError(
        f"expected a PRNG key (jax.random.key(seed) or jax.random.PRNGKey(seed)), got "
        f"an array of dtype {key.dtype} and shape {key.shape}"
    )


def _tree_where(pred, new, old):
    return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def _match_types(new, old, where: str):
    """Cast a handler's output leaves to the dtypes of its input (weak types in, fine)."""
    new_leaves, new_def = jax.tree.flatten(new)
    old_leaves, old_def = jax.tree.flatten(old)
    if new_def != old_def:
        raise ModelError(f"{where} must return a State of the same structure it was given")
    return jax.tree.unflatten(
        old_def, [jnp.asarray(a, b.dtype).reshape(jnp.shape(b)) for a, b in zip(new_leaves, old_leaves)]
    )


class Executive(eqx.Module):
    """The orchestrator: a validated model whose step and run are pure functions.

    Build it once from variables, mechanisms and governance; it checks every name
    and every mechanism's output on a trial trace and fails with an error that
    names the culprit. The executive is a pytree: mechanism parameters (and the
    initial values) are its array leaves, so ``eqx.filter_grad`` differentiates
    with respect to them and ``eqx.filter_vmap`` batches them.

    Arguments:
        variables: the :class:`Variable` declarations.
        mechanisms: the :class:`Mechanism` instances, in execution order.
        invariants: :class:`SystemInvariant` governance units.
        pre_step, post_step: pure hooks ``(state, step) -> state`` run at the
            start and the end of each step (``step`` is the global step index).
        schedule: optional pure ``schedule(view) -> bool array (n_mechanisms,)``
            deciding which mechanisms run this step (conditional execution).
        execution_order: optional list of mechanism names giving the order.
        aux: initial governance state (any pytree), readable and writable as
            ``state.aux`` from invariants and hooks.
        recovery: a :class:`Recovery` to retry or roll back failed steps.
        audit: keep the last step's hypotheses in ``state.audit`` (save them
            per step with ``Save(audit=True)``).
        failure_log_size: capacity of the bounded failure log ``state.failures``.
        dtype: float dtype of all values (default float32, or float64 when
            ``jax_enable_x64`` is on when the executive is built).

    >>> import jax, procela_jax as pj
    >>> X = pj.Variable("X", pj.RangeDomain(-100.0, 100.0), init=1.8)
    >>> class Drift(pj.Mechanism):
    ...     delta: float
    ...     def transform(self, values, key):
    ...         return {"X": pj.VariableRecord(values["X"] + self.delta, confidence=0.5)}
    >>> ex = pj.Executive(variables=[X], mechanisms=[Drift(delta=1.0, reads=[X], writes=[X])])
    >>> state, traj = ex.run(ex.init(jax.random.key(0)), steps=3)
    >>> [round(float(v), 4) for v in traj.value("X")]
    [2.8, 3.8, 4.8]
    """

    mechanisms: tuple[Mechanism, ...]
    init_values: Array
    init_confidences: Array
    aux: PyTree[Any]
    variables: tuple[Variable, ...] = eqx.field(static=True)
    invariants: tuple[SystemInvariant, ...] = eqx.field(static=True)
    pre_step: Callable | None = eqx.field(static=True)
    post_step: Callable | None = eqx.field(static=True)
    schedule: Callable | None = eqx.field(static=True)
    recovery: Recovery | None = eqx.field(static=True)
    audit: bool = eqx.field(static=True)
    failure_log_size: int = eqx.field(static=True)
    layout: Layout = eqx.field(static=True)
    plan: _Plan = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def __init__(
        self,
        variables: Sequence[Variable] = (),
        mechanisms: Sequence[Mechanism] = (),
        *,
        invariants: Sequence[SystemInvariant] = (),
        pre_step: Callable | None = None,
        post_step: Callable | None = None,
        schedule: Callable | None = None,
        execution_order: Sequence[str] | None = None,
        aux: PyTree[Any] = None,
        recovery: Recovery | None = None,
        audit: bool = False,
        failure_log_size: int = 16,
        dtype=None,
    ):
        dtype = jnp.dtype(dtype if dtype is not None else jnp.result_type(float))
        self.dtype = dtype.name
        variables = tuple(variables)
        mechanisms = tuple(mechanisms)
        invariants = tuple(invariants)
        names = _unique_names("variable", variables, Variable)
        known = set(names)
        mnames = _unique_names("mechanism", mechanisms, Mechanism)
        for m in mechanisms:
            if not isinstance(m.name, str) or not m.name or "." in m.name:
                raise ModelError(f"mechanism name {m.name!r} must be a non-empty string without '.'")
            if not m.writes:
                raise ModelError(f"mechanism {m.name!r} declares no variables in writes=")
            for kind, ns in (("reads", m.reads), ("writes", m.writes)):
                unknown = [n for n in ns if n not in known]
                if unknown:
                    raise ModelError(
                        f"mechanism {m.name!r} {kind} unknown variables {unknown}; "
                        f"the executive's variables are {names}"
                    )
            if len(set(m.writes)) != len(m.writes):
                raise ModelError(f"mechanism {m.name!r} lists a variable twice in writes=")
        if execution_order is not None:
            order = [getattr(o, "name", o) for o in execution_order]
            if sorted(order) != sorted(mnames):
                raise ModelError(
                    f"execution_order {order} must list every mechanism exactly once: {mnames}"
                )
            mechanisms = tuple(mechanisms[mnames.index(o)] for o in order)
            mnames = order
        self.mechanisms = tuple(_to_arrays(m, dtype) for m in mechanisms)
        inames = _unique_names("invariant", invariants, SystemInvariant)
        for label, fn in (("pre_step", pre_step), ("post_step", post_step), ("schedule", schedule)):
            if fn is not None and not callable(fn):
                raise ModelError(f"Executive: {label} must be callable, got {fn!r}")
        if recovery is not None and not isinstance(recovery, Recovery):
            raise ModelError(f"Executive: recovery must be a procela_jax.Recovery, got {recovery!r}")
        if not isinstance(failure_log_size, int) or failure_log_size < 0:
            raise ModelError(f"Executive: failure_log_size must be a non-negative int, got {failure_log_size!r}")
        self.recovery = recovery
        self.audit = bool(audit)
        self.failure_log_size = failure_log_size
        self.variables = variables
        self.invariants = invariants
        self.pre_step = pre_step
        self.post_step = post_step
        self.schedule = schedule
        self.aux = _to_arrays(aux, dtype)
        self.init_values = jnp.asarray(np.asarray([v.init for v in variables], float), dtype)
        self.init_confidences = jnp.asarray(
            np.asarray([v.init_confidence for v in variables], float), dtype
        )
        # ---- static tables
        index = {n: i for i, n in enumerate(names)}
        prop_mech, prop_var = [], []
        for mi, m in enumerate(mechanisms):
            for w in m.writes:
                prop_mech.append(mi)
                prop_var.append(index[w])
        n_props = len(prop_mech)
        slots = [[p for p in range(n_props) if prop_var[p] == vi] for vi in range(len(variables))]
        width = max((len(s) for s in slots), default=0)
        slot_prop = tuple(tuple(s + [n_props] * (width - len(s))) for s in slots)
        slot_mech = tuple(
            tuple([prop_mech[p] for p in s] + [-1] * (width - len(s))) for s in slots
        )
        writable = tuple(len(s) > 0 for s in slots)
        groups: dict = {}
        for vi, v in enumerate(variables):
            if writable[vi]:
                groups.setdefault(v.policies, []).append(vi)
        self.plan = _Plan(
            prop_mech=tuple(prop_mech),
            prop_var=tuple(prop_var),
            slot_prop=slot_prop,
            slot_mech=slot_mech,
            groups=tuple((k, tuple(g)) for k, g in groups.items()),
            mech_ids=tuple(stable_id(n) for n in mnames),
            safe=tuple(m.run_in_safe_mode for m in mechanisms),
        )
        self.layout = Layout(
            variables=tuple(names),
            mechanisms=tuple(mnames),
            invariants=tuple(inames),
            policies=tuple(tuple(p.name for p in v.policies) for v in variables),
            domains=tuple(v.domain for v in variables),
            out_of_domain=tuple(v.out_of_domain for v in variables),
            alphas=tuple(float(v.ewma_alpha) for v in variables),
            writable=writable,
        )

    def __check_init__(self):
        _trial_trace(self)

    # ---- access ---------------------------------------------------------------
    def mechanism(self, name) -> Mechanism:
        """The mechanism called ``name``."""
        return self.mechanisms[self.layout.mech(name)]

    def variable(self, name) -> Variable:
        return self.variables[self.layout.var(name)]

    def get(self, path: str):
        """A parameter by path: ``"<mechanism>.<field>"`` or ``"<variable>.init"``.

        >>> import procela_jax as pj
        >>> ex = pj.demos.sir.make_executive()
        >>> round(float(ex.get("sir.beta")), 3)
        0.3
        """
        return _getter(self, path)(self)

    def replace(self, params: dict | None = None, **kwargs) -> Executive:
        """A copy with parameters replaced, ``{"<mechanism>.<field>": value}`` (or
        ``"<variable>.init"``). Values become arrays of the model dtype.

        >>> import procela_jax as pj
        >>> ex = pj.demos.sir.make_executive().replace({"sir.beta": 0.5})
        >>> float(ex.get("sir.beta"))
        0.5
        """
        params = dict(params or {}, **kwargs)
        ex = self
        for path, value in params.items():
            getter = _getter(ex, path)
            old = getter(ex)
            new = jnp.asarray(value, getattr(old, "dtype", self.dtype))
            if jnp.shape(new) != jnp.shape(old):
                raise ModelError(
                    f"parameter {path!r} has shape {jnp.shape(old)}, got a value of shape {jnp.shape(new)}"
                )
            ex = _setter(ex, path)(ex, new)
        return ex

    # ---- pure core ------------------------------------------------------------
    def init(
        self,
        key,
        init: dict | None = None,
        *,
        active_invariants=None,
        aux: PyTree[Any] = None,
    ) -> State:
        """A fresh world: each variable's initial value committed as its first record.

        ``init={"X": value}`` overrides initial values (arrays allowed, so it can be
        vmapped); ``active_invariants`` (names, or ``{name: bool}``) chooses which
        invariants watch this world; ``aux`` overrides the initial governance state.
        """
        return _init(self, key, init, active_invariants, aux)

    def step(self, state: State) -> State:
        """One step, jit-compiled once per model structure."""
        return _step_jit(self, state)

    def run(
        self,
        state: State,
        steps: int,
        *,
        save: Save | None = Save(),
        remat: bool = False,
    ) -> tuple[State, Trajectory]:
        """Run ``steps`` steps with ``lax.scan``; returns the final state and the trajectory.

        ``save=None`` keeps only the final state. ``remat=True`` recomputes each
        saved chunk in the backward pass (``jax.checkpoint``), so the memory of
        gradients through long runs grows with ``steps / save.every`` only.
        """
        if not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        if save is not None and not isinstance(save, Save):
            raise TypeError(f"save must be a procela_jax.Save or None, got {save!r}")
        if save is not None and save.variables is not None:
            for n in save.variables:
                self.layout.var(n)
        with _lowering(self, state):
            return _run_jit(self, state, int(steps), save, remat)

    def abstract_state(self) -> State:
        """The state's structure (shapes and dtypes), without computing anything."""
        return jax.eval_shape(lambda ex: ex.init(jax.random.key(0)), self)

    # ---- structure changes (build-time: a new executive) -----------------------
    def rebuild(self, **changes) -> Executive:
        """A new executive with some constructor arguments changed."""
        args = dict(
            variables=self.variables,
            mechanisms=self.mechanisms,
            invariants=self.invariants,
            pre_step=self.pre_step,
            post_step=self.post_step,
            schedule=self.schedule,
            aux=self.aux,
            recovery=self.recovery,
            audit=self.audit,
            failure_log_size=self.failure_log_size,
            dtype=self.dtype,
        )
        args.update(changes)
        return Executive(**args)

    def add_mechanism(self, mechanism: Mechanism) -> Executive:
        """A new executive with ``mechanism`` appended (carry a state over with
        :meth:`carry_over`)."""
        return self.rebuild(mechanisms=(*self.mechanisms, mechanism))

    def remove_mechanism(self, name) -> Executive:
        i = self.layout.mech(name)
        return self.rebuild(mechanisms=self.mechanisms[:i] + self.mechanisms[i + 1 :])

    def add_invariant(self, invariant: SystemInvariant) -> Executive:
        return self.rebuild(invariants=(*self.invariants, invariant))

    def remove_invariant(self, name) -> Executive:
        i = self.layout.inv(name)
        return self.rebuild(invariants=self.invariants[:i] + self.invariants[i + 1 :])

    def carry_over(self, state: State) -> State:
        """Move a state of another executive of the same variables into this one.

        Values, confidences, statistics, memory, active policies, counters and the
        key are kept; mechanisms and invariants are matched by name (new ones start
        enabled and uncounted).
        """
        return _carry_over(self, state)


# ------------------------------------------------------------------------------
def _lowering(ex: Executive, state: State):
    """How a run compiles: the unrolled threefry for one scenario on concrete values;
    JAX's default under a transformation (``vmap``: the rolled loops are faster for
    many rows; ``grad`` or an enclosing ``jit`` lower elsewhere anyway)."""
    if any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((ex, state))):
        return contextlib.nullcontext()
    return unrolled_threefry()


def _unique_names(kind: str, items, cls) -> list[str]:
    for item in items:
        if not isinstance(item, cls):
            raise ModelError(f"Executive: each {kind} must be a {cls.__name__}, got {item!r}")
    names = [item.name for item in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ModelError(f"Executive: duplicate {kind} names {dup}; give each a unique name")
    return names


def _getter(ex: Executive, path: str):
    if not isinstance(path, str) or path.count(".") != 1:
        raise ModelError(f"parameter path {path!r} must look like '<mechanism>.<field>' or '<variable>.init'")
    owner, field = path.split(".")
    if owner in ex.layout.mech_index:
        i = ex.layout.mech_index[owner]
        m = ex.mechanisms[i]
        if field not in {f.name for f in dataclasses.fields(m)} or field in BASE_FIELDS:
            params = [f.name for f in dataclasses.fields(m) if f.name not in BASE_FIELDS]
            raise ModelError(f"mechanism {owner!r} has no parameter {field!r}; its parameters: {params}")
        return lambda e: getattr(e.mechanisms[i], field)
    if owner in ex.layout.var_index:
        j = ex.layout.var_index[owner]
        if field == "init":
            return lambda e: e.init_values[j]
        if field == "init_confidence":
            return lambda e: e.init_confidences[j]
        raise ModelError(f"variable {owner!r} has parameters 'init' and 'init_confidence', not {field!r}")
    raise ModelError(
        f"{owner!r} in {path!r} is neither a mechanism {list(ex.layout.mechanisms)} "
        f"nor a variable {list(ex.layout.variables)}"
    )


def _setter(ex: Executive, path: str):
    """``set(ex, value) -> ex`` for a parameter path (pure, differentiable).

    Mechanism fields are leaves (``eqx.tree_at``); initial values are entries of
    one array, set with ``.at[j].set``.
    """
    getter = _getter(ex, path)
    owner, field = path.split(".")
    if owner in ex.layout.mech_index:
        return lambda e, value: eqx.tree_at(getter, e, value)
    j = ex.layout.var_index[owner]
    where = (lambda e: e.init_values) if field == "init" else (lambda e: e.init_confidences)
    return lambda e, value: eqx.tree_at(where, e, where(e).at[j].set(value))


def _init(ex: Executive, key, init, active_invariants, aux) -> State:
    """Resolve names and labels here (Python), then build the state in one jitted call:
    eager construction compiled dozens of tiny ops for every new model."""
    layout = ex.layout
    k = len(layout.invariants)
    dtype = jnp.dtype(ex.dtype)
    overrides = {}
    for name, v in (init or {}).items():
        i = layout.var(name)
        if isinstance(v, (int, float, str, bool)):
            v = ex.variables[i].encode(v)
        overrides[i] = jnp.asarray(v, dtype)
    if active_invariants is None:
        active = np.ones((k,), bool)
    elif isinstance(active_invariants, dict):
        active = {layout.inv(name): jnp.asarray(on, bool) for name, on in active_invariants.items()}
    else:
        chosen = {layout.inv(nm) for nm in active_invariants}
        active = np.asarray([i in chosen for i in range(k)], bool)
    aux = None if aux is None else _to_arrays(aux, dtype)
    return _init_jit(ex, key, overrides, active, aux)


@eqx.filter_jit
def _init_jit(ex: Executive, key, overrides, active, aux) -> State:
    layout = ex.layout
    n, m, k = len(layout.variables), len(layout.mechanisms), len(layout.invariants)
    dtype = jnp.dtype(ex.dtype)
    values = ex.init_values
    for i, v in overrides.items():
        values = values.at[i].set(v)
    if isinstance(active, dict):
        inv_active = jnp.ones((k,), bool)
        for i, on in active.items():
            inv_active = inv_active.at[i].set(on)
    else:
        inv_active = jnp.asarray(active)
    z = lambda size: jnp.zeros((size,), jnp.int32)
    neg = lambda size: jnp.full((size,), -1, jnp.int32)
    state = State(
        step=jnp.asarray(0, jnp.int32),
        key=_as_key(key),
        values=values,
        confidences=ex.init_confidences,
        stats_=Stats.empty(n, dtype),
        memory=Memory.empty(tuple(v.memory for v in ex.variables), dtype),
        active_policy=z(n),
        enabled=jnp.asarray(np.asarray([mech.enabled for mech in ex.mechanisms], bool).reshape(m)),
        proposed=jnp.zeros((m,), bool),
        invalid_proposals=z(m),
        invalid_first_step=neg(m),
        domain_violations=z(n),
        domain_first_step=neg(n),
        violation_count=z(k),
        violation_first_step=neg(k),
        violation_last_step=neg(k),
        invariant_active=inv_active,
        safe_mode=jnp.asarray(False),
        halted=jnp.asarray(False),
        halted_by=jnp.asarray(-1, jnp.int32),
        halted_at=jnp.asarray(-1, jnp.int32),
        failures=FailureLog.empty(ex.failure_log_size),
        audit=_empty_audit(ex) if ex.audit else None,
        aux=ex.aux if aux is None else _to_arrays(aux, dtype),
        layout=layout,
    )
    everything = jnp.ones((n,), bool)
    return commit_records(
        state, everything, everything, values, ex.init_confidences,
        jnp.full((n,), SOURCE_EXTERNAL, jnp.int32),
    )


def _empty_audit(ex: Executive) -> dict:
    n = len(ex.layout.variables)
    width = len(ex.plan.slot_prop[0]) if n else 0
    dtype = jnp.dtype(ex.dtype)
    return dict(
        values=jnp.zeros((n, width), dtype),
        confidences=jnp.zeros((n, width), dtype),
        weights=jnp.zeros((n, width), dtype),
        mask=jnp.zeros((n, width), bool),
        source=jnp.full((n,), -3, jnp.int32),
    )


def _check_phase(ex: Executive, state: State, phase: InvariantPhase, pending=None) -> State:
    for k, inv in enumerate(ex.invariants):
        if inv.phase is not phase:
            continue
        if inv.update is not None:
            def track(s, update=inv.update, name=inv.name):
                return _match_types(update(s, View(s, pending)), s, f"the update of invariant {name!r}")

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
                return _match_types(handler(s, view), s, f"the on_violation handler of invariant {name!r}")

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


def _propose(ex: Executive, state: State, step_key):
    """Every mechanism proposes; returns flat proposal arrays and the active mask."""
    dtype = jnp.dtype(ex.dtype)
    plan = ex.plan
    view = View(state)
    pv, pc, pw = [], [], []
    for mi, mech in enumerate(ex.mechanisms):
        key = jax.random.fold_in(step_key, plan.mech_ids[mi])
        out = mech.transform(view, key)
        for name in mech.writes:
            rec = out[name]
            pv.append(jnp.asarray(rec.value, dtype))
            pc.append(jnp.asarray(rec.confidence, dtype))
            pw.append(jnp.asarray(rec.weight, dtype))
    m = len(ex.mechanisms)
    active = state.enabled
    if ex.schedule is not None:
        sched = ex.schedule(view)
        if isinstance(sched, dict):
            arr = jnp.ones((m,), bool)
            for name, on in sched.items():
                arr = arr.at[ex.layout.mech(name)].set(on)
            sched = arr
        active = active & jnp.asarray(sched, bool)
    if not all(plan.safe):
        safe = jnp.asarray(np.asarray(plan.safe))
        active = active & (safe | ~state.safe_mode)
    # lists of scalars, one per proposal: the slots are built from them directly
    return pv, pc, pw, [active[i] for i in plan.prop_mech], active


#: Up to this many entries, static tables are applied with static slices, which XLA
#: fuses into the step's elementwise kernels (a gather or a reduction is a kernel of
#: its own on CPU, and tiny kernels dominate the cost of a small model's step).
_SMALL = 1024


def _take_static(items, table, fill, dtype):
    """``items[table]`` for a list of scalars and a static 2-D index table (entries
    ``len(items)`` give ``fill``): stacked directly when small, gathered otherwise."""
    table = np.asarray(table)
    if table.size > _SMALL:
        return jnp.concatenate([jnp.stack(items).astype(dtype), jnp.asarray([fill], dtype)])[table]
    fill = jnp.asarray(fill, dtype)
    return jnp.stack([jnp.stack([items[p] if p < len(items) else fill for p in row]) for row in table])


def _columns(reduce, a):
    """Reduce the last axis of a small 2-D array column by column (elementwise)."""
    return functools.reduce(reduce, [a[:, j] for j in range(a.shape[1])])


def _step_impl(ex: Executive, state: State, retry=None) -> State:
    layout = ex.layout
    guard = any(inv.severity is InvariantSeverity.FATAL for inv in ex.invariants)
    start = state
    t = state.step
    step_key = jax.random.fold_in(state.key, t)
    if retry is not None:
        step_key = jax.random.fold_in(step_key, retry)

    def guarded(before, after):
        return _tree_where(before.halted, before, after) if guard else after

    # 1. pre-step hook, PRE invariants
    if ex.pre_step is not None:
        state = guarded(state, _match_types(ex.pre_step(state, t), state, "pre_step"))
    state = _check_phase(ex, state, InvariantPhase.PRE)
    before = state
    # 2. mechanisms propose (each reads the values committed at the previous step)
    pv, pc, pw, prop_active, mech_active = _propose(ex, state, step_key)
    state = eqx.tree_at(lambda s: s.proposed, state, mech_active)
    # 3. RUNTIME invariants see the pending hypotheses; 4. each variable's active policy resolves
    resolve = _resolve_by_variable if _by_variable(ex) else _resolve_stacked
    state, before, (res_v, res_c, has_value, source), audit = resolve(
        ex, state, before, t, guarded, pv, pc, pw, prop_active)
    # 5. domain enforcement and commit (every writable variable, even without hypotheses)
    commit = jnp.asarray(np.asarray(layout.writable, bool))
    state = commit_records(state, commit, has_value, res_v, res_c, source, record_step=t + 1)
    if ex.audit:
        audit["source"] = jnp.where(has_value, source, -3).astype(jnp.int32)
        state = eqx.tree_at(lambda s: s.audit, state, audit)
    state = guarded(before, state)
    # 6. POST invariants, post-step hook, step + 1
    state = _check_phase(ex, state, InvariantPhase.POST)
    if ex.post_step is not None:
        state = guarded(state, _match_types(ex.post_step(state, t), state, "post_step"))
    state = guarded(state, eqx.tree_at(lambda s: s.step, state, state.step + 1))
    if guard:
        state = _tree_where(start.halted, start, state)
    return state


def _valid(values, confidences, weights):
    """Which proposals are hypotheses: finite, confidence in [0, 1], weight >= 0."""
    return (jnp.isfinite(values) & jnp.isfinite(confidences) & (confidences >= 0) & (confidences <= 1)
            & jnp.isfinite(weights) & (weights >= 0))


def _sum_per_mechanism(counts, mechanisms, m: int):
    """``(m,)`` sums of scalar ``counts``, each added to the total of its mechanism
    (elementwise: it fuses with the rest of the step)."""
    cells = [[] for _ in range(m)]
    for x, mi in zip(counts, mechanisms):
        cells[mi].append(x)
    zero = jnp.zeros((), jnp.int32)
    return jnp.stack([functools.reduce(operator.add, c, zero) for c in cells])


def _count_invalid(state: State, t, per_mech) -> State:
    """Add each mechanism's invalid proposals of this step to its counters."""
    counts = state.invalid_proposals + per_mech
    new = counts > state.invalid_proposals  # (per_mech is not kept: one kernel less)
    first = jnp.where(new & (state.invalid_first_step < 0), t, state.invalid_first_step)
    return eqx.tree_at(lambda s: (s.invalid_proposals, s.invalid_first_step), state, (counts, first))


def _active_policy_result(outs, choice):
    """``(value, confidence, winner)`` of the policy ``choice`` indexes in ``outs``."""
    if len(outs) == 1:
        return outs[0]
    return tuple(jnp.select([choice == q for q in range(len(outs))], [o[j] for o in outs]) for j in range(3))


def _resolve_stacked(ex: Executive, state: State, before: State, t, guarded, pv, pc, pw, prop_active):
    """Steps 2 (the proposals' validity) to 4 of a step, on the hypothesis slots
    stacked as ``(variables, slots)`` arrays. Returns the state, the state the
    resolution started from, ``(values, confidences, has_value, source)`` and the
    slots for the audit."""
    layout, plan = ex.layout, ex.plan
    n, m = len(layout.variables), len(layout.mechanisms)
    slot_prop = np.asarray(plan.slot_prop, np.int32).reshape(n, -1)
    width = slot_prop.shape[1]
    dtype = jnp.dtype(ex.dtype)
    if width:
        sv = _take_static(pv, slot_prop, 0, dtype)
        sc = _take_static(pc, slot_prop, 0, dtype)
        sw = _take_static(pw, slot_prop, 0, dtype)
        sactive = _take_static(prop_active, slot_prop, False, jnp.bool_)
    else:
        sv = sc = sw = jnp.zeros((n, 0), dtype)
        sactive = jnp.zeros((n, 0), bool)
    valid = _valid(sv, sc, sw)
    smask = valid & sactive
    if batched():  # every policy and counter reads the slots: lay them out once
        sv, sc, smask = materialize(sv), materialize(sc), materialize(smask)
    if m:
        # invalid proposals of enabled mechanisms, counted per mechanism
        bad = (sactive & ~valid).astype(jnp.int32)
        slot_mech_np = np.asarray(plan.slot_mech, np.int32).reshape(n, width)
        if n * width <= _SMALL:  # each proposal has one slot: add the mechanism's slots
            cells = list(zip(*np.nonzero(slot_mech_np >= 0)))
            per_mech = _sum_per_mechanism([bad[i, j] for i, j in cells], [slot_mech_np[i, j] for i, j in cells], m)
        else:
            flat = slot_mech_np.reshape(-1)
            per_mech = jax.ops.segment_sum(
                jnp.where(flat >= 0, bad.reshape(-1), 0), np.where(flat >= 0, flat, 0), m
            )
        state = _count_invalid(state, t, per_mech)
    if width and any(v.validators for v in ex.variables):
        smask = apply_validators(ex.variables, sv, sc, smask)
    slot_mech = np.asarray(plan.slot_mech, np.int32).reshape(n, width)
    pending = dict(values=sv, confidences=sc, weights=sw, mask=smask, sources=jnp.asarray(slot_mech))
    state = guarded(before, state)
    # 3. RUNTIME invariants see the pending hypotheses
    state = _check_phase(ex, state, InvariantPhase.RUNTIME, pending)
    before = state
    # 4. resolution with each variable's active policy
    res_v = state.values
    res_c = state.confidences
    winner = jnp.full((n,), -1, jnp.int32)
    for policies, members in plan.groups:
        whole = tuple(members) == tuple(range(n))
        idx = slice(None) if whole else np.asarray(members)
        gv, gc, gw, gm = sv[idx], sc[idx], sw[idx], smask[idx]
        outs = [p.resolve(gv, gc, gw, gm) for p in policies]
        v, c, w = _active_policy_result(outs, state.active_policy[idx])
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
    elif n * width <= _SMALL:  # elementwise: fuses with the rest of the step
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
    if batched():  # one buffer each, read by the commit's large kernels
        res_v, res_c, has_value, source = (materialize(x) for x in (res_v, res_c, has_value, source))
    audit = dict(values=sv, confidences=sc, weights=sw, mask=smask)
    return state, before, (res_v, res_c, has_value, source), audit


#: Up to this many hypothesis slots (variables x slots per variable), a batched
#: step resolves variable by variable. Each variable is then a chain of its own:
#: for two mechanisms writing every variable, at 10,000 scenarios, 10% faster steps
#: with 3 variables and 5% with 10 (compiled in 2.4 s against 1.3 s); at 2,000
#: scenarios, even with 30 (compiled in 5.3 s against 2.1 s) and 20% slower with
#: 100 (compiled in 14 s against 3 s).
_BY_VARIABLE_SLOTS = 32


def _by_variable(ex: Executive) -> bool:
    """Whether a step resolves variable by variable from the proposals as scalars
    (``_resolve_by_variable``): in a batched trace of a small model without
    validators or audit, which read the stacked slots."""
    n, width = len(ex.plan.slot_prop), len(ex.plan.slot_prop[0]) if ex.plan.slot_prop else 0
    return (batched() and 0 < n * width <= _BY_VARIABLE_SLOTS and not ex.audit
            and not any(v.validators for v in ex.variables))


def _resolve_by_variable(ex: Executive, state: State, before: State, t, guarded, pv, pc, pw, prop_active):
    """``_resolve_stacked`` for a batched trace, the same results: under ``vmap``
    each proposal is one column of scenarios, and the resolution runs on those
    columns, variable by variable (``Policy.resolve_slots``), inside a
    :func:`fence`, instead of on ``(scenarios, variables, slots)`` arrays, which
    XLA's CPU kernels walk element by element. No audit."""
    plan = ex.plan
    m = len(ex.layout.mechanisms)
    valid = [_valid(v, c, w) for v, c, w in zip(pv, pc, pw)]
    if m:  # invalid proposals of enabled mechanisms, counted per mechanism
        bad = [(a & ~ok).astype(jnp.int32) for a, ok in zip(prop_active, valid)]
        state = _count_invalid(state, t, _sum_per_mechanism(bad, plan.prop_mech, m))
    pmask = [a & b for a, b in zip(valid, prop_active)]
    slot_prop = np.asarray(plan.slot_prop, np.int32)
    dtype = jnp.dtype(ex.dtype)
    pending = dict(  # stacked only if a RUNTIME invariant reads them
        values=_take_static(pv, slot_prop, 0, dtype), confidences=_take_static(pc, slot_prop, 0, dtype),
        weights=_take_static(pw, slot_prop, 0, dtype), mask=_take_static(pmask, slot_prop, False, jnp.bool_),
        sources=jnp.asarray(np.asarray(plan.slot_mech, np.int32)),
    )
    state = guarded(before, state)
    state = _check_phase(ex, state, InvariantPhase.RUNTIME, pending)
    before = state
    resolved = fence(functools.partial(_resolve_variables, ex), state.values, state.confidences,
                     state.active_policy, pv, pc, pw, pmask)
    return state, before, resolved, None


def _resolve_variables(ex: Executive, values, confidences, active_policy, pv, pc, pw, pmask):
    """Each variable's ``(value, confidence, has_value, source)`` from the proposals
    as scalars, resolved from its slots one by one, then stacked (a variable that
    no mechanism writes keeps its value and confidence, and has none)."""
    plan = ex.plan
    dtype = jnp.dtype(ex.dtype)
    fill, off = jnp.zeros((), dtype), jnp.zeros((), bool)
    slot = lambda items, p, empty: items[p] if p < len(items) else empty  # noqa: E731
    policies_of = {i: policies for policies, members in plan.groups for i in members}
    rv, rc, rhas, rsrc = [], [], [], []
    for i, row in enumerate(plan.slot_prop):
        args = ([slot(pv, p, fill) for p in row], [slot(pc, p, fill) for p in row],
                [slot(pw, p, fill) for p in row], [slot(pmask, p, off) for p in row])
        if i not in policies_of:
            rv.append(values[i])
            rc.append(confidences[i])
            rhas.append(off)
            rsrc.append(jnp.asarray(SOURCE_BLEND, jnp.int32))
            continue
        v, c, w = _active_policy_result([p.resolve_slots(*args) for p in policies_of[i]], active_policy[i])
        source = jnp.asarray(SOURCE_BLEND, jnp.int32)
        for j, mi in enumerate(plan.slot_mech[i]):
            source = jnp.where(w == j, mi, source)
        rv.append(jnp.asarray(v, dtype))
        rc.append(jnp.asarray(c, dtype))
        rhas.append(functools.reduce(operator.or_, args[3]))
        rsrc.append(source)
    return jnp.stack(rv), jnp.stack(rc), jnp.stack(rhas), jnp.stack(rsrc)


def _failure(ex: Executive, before: State, after: State):
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


def _recovering_step(ex: Executive, state: State) -> State:
    """A step with retries and rollback (an executive with ``recovery``)."""
    rec = ex.recovery
    cand = _step_impl(ex, state)
    failed, kind, who = _failure(ex, state, cand)
    attempts = jnp.asarray(1, jnp.int32)
    # what every attempt recorded: counts add up, first/last steps are this step's
    tally = (cand.invalid_proposals, cand.invalid_first_step, cand.violation_count,
             cand.violation_first_step, cand.violation_last_step)
    for r in range(1, rec.retries + 1):
        def retry(_, r=r):
            return _step_impl(ex, state, retry=r)

        again = jax.lax.cond(failed, retry, lambda c: c, cand)
        ran = failed
        attempts = attempts + ran.astype(jnp.int32)
        tally = (
            tally[0] + jnp.where(ran, again.invalid_proposals - state.invalid_proposals, 0),
            jnp.where(tally[1] >= 0, tally[1], again.invalid_first_step),
            tally[2] + jnp.where(ran, again.violation_count - state.violation_count, 0),
            jnp.where(tally[3] >= 0, tally[3], again.violation_first_step),
            jnp.maximum(tally[4], again.violation_last_step),
        )
        cand = again
        still, _, _ = _failure(ex, state, cand)
        failed = failed & still
    counters = lambda s: (s.invalid_proposals, s.invalid_first_step, s.violation_count,
                          s.violation_first_step, s.violation_last_step)
    cand = eqx.tree_at(counters, cand, tally)
    # every attempt failed: keep the previous world, skip the step, keep the counters
    rolled = eqx.tree_at(
        lambda s: (s.step, *counters(s), s.safe_mode, s.halted, s.halted_by, s.halted_at),
        state,
        (state.step + 1, *tally, cand.safe_mode, cand.halted, cand.halted_by, cand.halted_at),
    )
    out = _tree_where(failed, rolled, cand)
    first_failed = (attempts > 1) | failed
    log = out.failures.record(first_failed, state.step, kind, who, attempts, failed)
    return eqx.tree_at(lambda s: s.failures, out, log)


def _advance(ex: Executive, state: State) -> State:
    if ex.recovery is not None:
        return _recovering_step(ex, state)
    return _step_impl(ex, state)


def _step_traced(ex, state):
    TRACE_COUNT["step"] += 1
    return _advance(ex, state)


_step_jit = eqx.filter_jit(_step_traced)


def _run_impl(ex: Executive, state: State, steps: int, save: Save | None, remat: bool, blocks: bool = True):
    """The run. ``blocks=False`` writes rows one by one: better when the run is
    batched (rows of many scenarios are large already; see ``_rows_per_block``)."""
    TRACE_COUNT["run"] += 1
    if not batched():
        return _run_body(ex, state, steps, save, remat, blocks)
    # a batch carries its statistics as columns (see Stats); states are stored stacked
    state = eqx.tree_at(lambda s: s.stats_, state, state.stats_.columns())
    state, traj = _run_body(ex, state, steps, save, remat, blocks)
    return eqx.tree_at(lambda s: s.stats_, state, state.stats_.stacked()), traj


def _run_body(ex: Executive, state: State, steps: int, save: Save | None, remat: bool, blocks: bool):
    def one(s, _):
        return _advance(ex, s), None

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
            s = _advance(ex, s)
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
    block = _rows_per_block(ex, state, idx, save, n_saves) if blocks else 1
    state, (data, steps_arr, extra) = _scan_rows(chunk, state, n_saves, block)
    if not halting:
        steps_arr = start + every * jnp.arange(1, n_saves + 1, dtype=start.dtype)
    if rest:
        state, _ = jax.lax.scan(one, state, None, length=rest)
    return state, Trajectory(data=data, steps=steps_arr, extra=extra, names=tuple(names))


_run_jit = eqx.filter_jit(_run_impl)

#: Bytes of one trajectory buffer written by the innermost loop. XLA's CPU runtime
#: runs a loop body whose buffers are all small (under 512 bytes) inline, kernel
#: after kernel; one larger buffer (such as a whole trajectory written row by row)
#: makes it schedule every kernel of the step as a task, which costs about as much
#: as the small model's step itself. Rows are therefore written in blocks of this
#: size, and each block is copied into the trajectory once.
_BLOCK_BYTES = 256


def _rows_per_block(ex: Executive, state: State, idx, save: Save, n_rows: int) -> int:
    """How many saved rows the inner loop gathers before writing them out: the
    largest divisor of ``n_rows`` that keeps a block under ``_BLOCK_BYTES`` (a
    divisor, so that the step is traced and compiled once)."""
    row = [len(idx) * jnp.dtype(ex.dtype).itemsize]  # value, confidence, statistics
    if "policy" in save.fields or "count" in save.fields:
        row.append(len(idx) * 4)
    if save.audit and state.audit is not None:
        row += [len(idx) * v[0].size * v.dtype.itemsize for v in state.audit.values()]
    most = max(1, min(64, _BLOCK_BYTES // max(row)))
    return max(k for k in range(1, most + 1) if n_rows % k == 0)


def _scan_rows(chunk, state, n_rows: int, block: int):
    """``lax.scan(chunk, state, None, length=n_rows)``, rows written ``block`` at a
    time (``block`` divides ``n_rows``)."""
    if block <= 1:
        return jax.lax.scan(chunk, state, None, length=n_rows)
    state, rows = jax.lax.scan(lambda s, _: jax.lax.scan(chunk, s, None, length=block), state, None,
                               length=n_rows // block)
    return state, jax.tree.map(lambda a: a.reshape((n_rows,) + a.shape[2:]), rows)


def _trial_trace(ex: Executive) -> None:
    """Trace each mechanism, invariant and hook once on abstract values; name the culprit."""
    state = jax.eval_shape(lambda e: e.init(jax.random.key(0)), ex)
    layout = ex.layout

    for mech in ex.mechanisms:
        allowed = set(mech.reads) | set(mech.writes)

        def call(mech_, st, allowed=allowed):
            view = View(st, allowed=allowed)
            out = mech_.transform(view, jax.random.key(0))
            return out, view.accessed

        try:
            holder = {}

            def fn(mech_, st):
                out, accessed = call(mech_, st)
                holder["accessed"] = accessed
                return out

            out = jax.eval_shape(fn, mech, state)
        except KeyError as e:
            raise ModelError(f"mechanism {mech.name!r} failed on a trial step: {e.args[0]}") from None
        except Exception as e:  # noqa: BLE001 - re-raised with the mechanism's name
            raise ModelError(
                f"mechanism {mech.name!r} failed on a trial step: {type(e).__name__}: {e}"
            ) from e
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
    # every hook, invariant and the schedule, through one abstract step
    try:
        jax.eval_shape(_advance, ex, state)
    except ModelError:
        raise
    except KeyError as e:
        raise ModelError(f"a governance function failed on a trial step: {e.args[0]}") from None
    _ = layout


def _carry_over(ex: Executive, old: State) -> State:
    new = ex.init(old.key)
    ol, nl = old.layout, ex.layout
    if ol.variables != nl.variables:
        raise ModelError(
            f"carry_over needs the same variables in the same order; had {list(ol.variables)}, "
            f"now {list(nl.variables)}"
        )
    mech_map = [(nl.mech_index[n], ol.mech_index[n]) for n in nl.mechanisms if n in ol.mech_index]
    inv_map = [(nl.inv_index[n], ol.inv_index[n]) for n in nl.invariants if n in ol.inv_index]

    def remap(new_arr, old_arr, pairs):
        for a, b in pairs:
            new_arr = new_arr.at[a].set(old_arr[b])
        return new_arr

    return eqx.tree_at(
        lambda s: (
            s.step, s.key, s.values, s.confidences, s.stats_, s.memory, s.active_policy,
            s.domain_violations, s.domain_first_step, s.safe_mode, s.halted, s.halted_at, s.aux,
            s.enabled, s.invalid_proposals, s.invalid_first_step,
            s.violation_count, s.violation_first_step, s.violation_last_step, s.invariant_active,
            s.failures,
        ),
        new,
        (
            old.step, old.key, old.values, old.confidences, old.stats_, old.memory, old.active_policy,
            old.domain_violations, old.domain_first_step, old.safe_mode, old.halted, old.halted_at,
            old.aux if jax.tree.structure(old.aux) == jax.tree.structure(new.aux) else new.aux,
            remap(new.enabled, old.enabled, mech_map),
            remap(new.invalid_proposals, old.invalid_proposals, mech_map),
            remap(new.invalid_first_step, old.invalid_first_step, mech_map),
            remap(new.violation_count, old.violation_count, inv_map),
            remap(new.violation_first_step, old.violation_first_step, inv_map),
            remap(new.violation_last_step, old.violation_last_step, inv_map),
            remap(new.invariant_active, old.invariant_active, inv_map),
            old.failures if old.failures.step.shape == new.failures.step.shape else new.failures,
        ),
        is_leaf=lambda x: x is None,
    )
