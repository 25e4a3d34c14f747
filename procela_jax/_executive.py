"""Executive: validates a model once, then steps and runs it as pure jitted functions."""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from ._errors import ModelError
from ._invariant import SystemInvariant
from ._layout import Layout
from ._mechanism import Mechanism, stable_id
from ._memory import SOURCE_EXTERNAL, Memory
from ._paths import parameter
from ._plan import TracePlan, choose_plan, lowering
from ._recovery import FailureLog, Recovery
from ._save import Save, Trajectory
from ._state import State, commit_records
from ._statistics import Stats
from ._step import joined_at_init, run_jit, step_jit, unjoined, writer_enabled
from ._theories import Family, build_families
from ._validate import check_fields, trial_trace
from ._variable import Variable


@dataclasses.dataclass(frozen=True)
class Tables:
    """Static tables: which mechanism output feeds which hypothesis slot, and how
    the mechanisms group into families."""

    prop_mech: tuple[int, ...]  # per proposal: the mechanism index
    prop_var: tuple[int, ...]  # per proposal: the variable index
    prop_start: tuple[int, ...]  # per mechanism: the index of its first proposal
    slot_prop: tuple[tuple[int, ...], ...]  # per variable: proposal index per slot (pad: n_props)
    slot_mech: tuple[tuple[int, ...], ...]  # per variable: mechanism index per slot (pad: -1)
    groups: tuple[tuple[tuple, tuple[int, ...]], ...]  # (candidate policies, variable indices)
    mech_ids: tuple[int, ...]
    safe: tuple[bool, ...]
    families: tuple[Family, ...] = ()


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
    tables: Tables = eqx.field(static=True)
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
        clash = sorted(set(names) & set(mnames))
        if clash:
            raise ModelError(
                f"Executive: {clash} name both a variable and a mechanism; parameter paths like "
                f"'{clash[0]}.init' would be ambiguous: rename the mechanism (name=...)"
            )
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
        prop_mech, prop_var, prop_start = [], [], []
        for mi, m in enumerate(mechanisms):
            prop_start.append(len(prop_mech))
            for w in m.writes:
                prop_mech.append(mi)
                prop_var.append(index[w])
        n_props = len(prop_mech)
        slots = [[] for _ in variables]
        for p, vi in enumerate(prop_var):
            slots[vi].append(p)
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
        tables = Tables(
            prop_mech=tuple(prop_mech),
            prop_var=tuple(prop_var),
            prop_start=tuple(prop_start),
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
        # ---- families: traced once each, on an abstract initial state
        check_fields(self.mechanisms)
        self.tables = tables
        proxy = types.SimpleNamespace(**{f: getattr(self, f) for f in _INIT_FIELDS})
        state = jax.eval_shape(lambda: _initial_state(proxy, jax.random.key(0), {}, None, None))
        prop_index = {(mi, k): prop_start[mi] + k for mi, m in enumerate(mechanisms) for k in range(len(m.writes))}
        self.tables = dataclasses.replace(
            tables, families=build_families(self.mechanisms, self.layout, state, prop_index, dtype))

    def __check_init__(self):
        trial_trace(self)

    # ---- access ---------------------------------------------------------------
    def mechanism(self, name) -> Mechanism:
        """The mechanism called ``name``."""
        return self.mechanisms[self.layout.mech(name)]

    def variable(self, name) -> Variable:
        """The variable called ``name``."""
        return self.variables[self.layout.var(name)]

    @property
    def families(self) -> tuple[dict, ...]:
        """How the mechanisms are grouped: per family its class, its members' names,
        whether it is traced once for all of them (``batched``) and, if not, why.

        >>> import procela_jax as pj
        >>> [(f["class"], f["members"]) for f in pj.demos.sir.make_executive().families]
        [('DeterministicSIR', ('sir',)), ('SeasonalSIR', ('seasonal',))]
        """
        names = self.layout.mechanisms
        return tuple(dict({"class": f.cls, "members": tuple(names[i] for i in f.members), "batched": f.batchable},
                          **({"reason": f.reason} if f.reason else {})) for f in self.tables.families)

    def get(self, path: str):
        """A parameter by path: ``"<mechanism>.<field>"`` or ``"<variable>.init"``.

        >>> import procela_jax as pj
        >>> ex = pj.demos.sir.make_executive()
        >>> round(float(ex.get("sir.beta")), 3)
        0.3
        """
        return parameter(self, path).get(self)

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
            param = parameter(ex, path)
            old = param.get(ex)
            new = jnp.asarray(value, getattr(old, "dtype", self.dtype))
            if jnp.shape(new) != jnp.shape(old):
                raise ModelError(
                    f"parameter {path!r} has shape {jnp.shape(old)}, got a value of shape {jnp.shape(new)}"
                )
            ex = param.set(ex, new)
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

    def step(self, state: State, *, plan: TracePlan | None = None) -> State:
        """One step, jit-compiled once per model structure. ``plan`` forces a
        :class:`TracePlan` (default: :func:`choose_plan`'s)."""
        _check_state(self, state, "step")
        plan = _plan_for(self, state, plan)
        with lowering(plan):
            return step_jit(self, state, plan)

    def run(
        self,
        state: State,
        steps: int,
        *,
        save: Save | None = Save(),
        remat: bool = False,
        plan: TracePlan | None = None,
    ) -> tuple[State, Trajectory]:
        """Run ``steps`` steps with ``lax.scan``; returns the final state and the trajectory.

        ``save=None`` keeps only the final state. ``remat=True`` recomputes each
        saved chunk in the backward pass (``jax.checkpoint``), so the memory of
        gradients through long runs grows with ``steps / save.every`` only.
        ``plan`` forces a :class:`TracePlan` (default: :func:`choose_plan`'s).
        """
        if not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        if save is not None and not isinstance(save, Save):
            raise TypeError(f"save must be a procela_jax.Save or None, got {save!r}")
        if save is not None and save.variables is not None:
            for n in save.variables:
                self.layout.var(n)
        _check_state(self, state, "run")
        plan = _plan_for(self, state, plan)
        with lowering(plan):
            return run_jit(self, state, int(steps), save, remat, plan)

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
_STATE_STRUCTURES: dict = {}


def _structure(state: State):
    """What must match between a state and its executive: the layout and every
    leaf's place (the governance state ``aux`` may be replaced at ``init``)."""
    fields = [f.name for f in dataclasses.fields(state) if f.name not in ("aux", "layout")]
    return state.layout, jax.tree.structure([getattr(state, f) for f in fields])


def _check_state(ex: Executive, state, where: str) -> None:
    """Refuse a state that another executive built (its structure differs: other
    variables, mechanisms, invariants, domain rules, memory sizes...)."""
    if not isinstance(state, State):
        raise TypeError(f"Executive.{where}: expected a procela_jax.State, got {type(state).__name__}")
    key = jax.tree.structure(ex)
    if key not in _STATE_STRUCTURES:
        if len(_STATE_STRUCTURES) > 256:
            _STATE_STRUCTURES.clear()
        _STATE_STRUCTURES[key] = _structure(ex.abstract_state())
    if _structure(state) == _STATE_STRUCTURES[key]:
        return
    mine, theirs = ex.layout, state.layout
    diffs = [f"{label} {list(b)} here, {list(a)} in the state"
             for label, a, b in (("variables", theirs.variables, mine.variables),
                                 ("mechanisms", theirs.mechanisms, mine.mechanisms),
                                 ("invariants", theirs.invariants, mine.invariants)) if a != b]
    if not diffs and theirs != mine:
        diffs = ["the same names with other rules (domains, policies, out-of-domain choices or EWMA factors)"]
    if not diffs:
        diffs = ["another structure (memory sizes, governance state, failure log or audit)"]
    raise ModelError(
        f"Executive.{where}: this state was built by another executive: {'; '.join(diffs)}. "
        "Move it into this executive with ex.carry_over(state), or start from ex.init(key)."
    )


def _plan_for(ex: Executive, state: State, plan: TracePlan | None) -> TracePlan:
    """The given plan, or the one chosen for a single run (a run inside ``vmap``,
    ``grad`` or an enclosing ``jit`` keeps JAX's own hash lowering)."""
    if plan is not None:
        if not isinstance(plan, TracePlan):
            raise TypeError(f"plan must be a procela_jax.TracePlan, got {plan!r}")
        late = [] if isinstance(state.joined, jax.core.Tracer) else unjoined(ex, state.joined)
        if plan.commit == "writable" and late:
            raise ValueError(f"plan commit='writable' needs every written variable joined; {late} "
                             "have not (use commit='joined')")
        return plan
    traced = any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves((ex, state)))
    return choose_plan(ex, traced=traced, all_joined=not traced and not unjoined(ex, state.joined))


def _unique_names(kind: str, items, cls) -> list[str]:
    for item in items:
        if not isinstance(item, cls):
            raise ModelError(f"Executive: each {kind} must be a {cls.__name__}, got {item!r}")
    names = [item.name for item in items]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ModelError(f"Executive: duplicate {kind} names {dup}; give each a unique name")
    return names

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


#: What building an initial state reads of an executive.
_INIT_FIELDS = ("layout", "tables", "variables", "mechanisms", "init_values", "init_confidences", "aux",
                "failure_log_size", "audit", "dtype")


def _initial_state(ex: Executive, key, overrides, active, aux) -> State:
    layout = ex.layout
    n, m, k = len(layout.variables), len(layout.mechanisms), len(layout.invariants)
    dtype = jnp.dtype(ex.dtype)
    values = ex.init_values
    for i, v in overrides.items():
        values = values.at[i].set(v)
    if active is None:
        inv_active = jnp.ones((k,), bool)
    elif isinstance(active, dict):
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
        joined=jnp.asarray(joined_at_init(ex)),
        nonfinite_resolved=z(n),
        nonfinite_first_step=neg(n),
        layout=layout,
    )
    everything = jnp.ones((n,), bool)
    return commit_records(
        state, everything, everything, values, ex.init_confidences,
        jnp.full((n,), SOURCE_EXTERNAL, jnp.int32),
    )


_init_jit = eqx.filter_jit(_initial_state)


def _empty_audit(ex: Executive) -> dict:
    n = len(ex.layout.variables)
    width = len(ex.tables.slot_prop[0]) if n else 0
    dtype = jnp.dtype(ex.dtype)
    return dict(
        values=jnp.zeros((n, width), dtype),
        confidences=jnp.zeros((n, width), dtype),
        weights=jnp.zeros((n, width), dtype),
        mask=jnp.zeros((n, width), bool),
        source=jnp.full((n,), -3, jnp.int32),
    )


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

    halted_by = np.full(len(ol.invariants) + 1, -1, np.int32)  # old index -> new (-1 -> -1)
    for a, b in inv_map:
        halted_by[b] = a

    def remap(new_arr, old_arr, pairs):
        for a, b in pairs:
            new_arr = new_arr.at[a].set(old_arr[b])
        return new_arr

    enabled = remap(new.enabled, old.enabled, mech_map)
    return eqx.tree_at(
        lambda s: (
            s.step, s.key, s.values, s.confidences, s.stats_, s.memory, s.active_policy,
            s.domain_violations, s.domain_first_step, s.safe_mode, s.halted, s.halted_by, s.halted_at,
            s.aux, s.joined, s.nonfinite_resolved, s.nonfinite_first_step,
            s.enabled, s.invalid_proposals, s.invalid_first_step,
            s.violation_count, s.violation_first_step, s.violation_last_step, s.invariant_active,
            s.failures,
        ),
        new,
        (
            old.step, old.key, old.values, old.confidences, old.stats_, old.memory, old.active_policy,
            old.domain_violations, old.domain_first_step, old.safe_mode, old.halted,
            jnp.asarray(halted_by)[old.halted_by], old.halted_at,
            old.aux if jax.tree.structure(old.aux) == jax.tree.structure(new.aux) else new.aux,
            old.joined | writer_enabled(ex, enabled), old.nonfinite_resolved, old.nonfinite_first_step,
            enabled,
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
