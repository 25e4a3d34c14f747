"""Theories: mechanisms grouped into families, and the step's proposals.

Mechanisms of one class with the same static configuration, the same shapes and
dtypes of array fields and the same numbers of reads and writes form a
*family*. A family is traced once: its members' array fields are stacked along
a leading axis, its reads and writes become index arrays, and its ``transform``
is applied to every member with ``vmap``. Each member's key is still folded from
the step key by the stable id of its own name, so every draw is the one the
member would make alone.

A family is traced on a *template*: one member whose name, reads and writes are
placeholders (:class:`_Slot`). ``values[self.reads[0]]`` then reads the member's
own variable through an index array. A transform that uses a placeholder in any
other way (compares its own name, formats it, slices it) cannot be batched: the
placeholder refuses, and the family's members are traced one by one, as are the
members of a family that literally names a variable some member does not declare.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._mechanism import Mechanism
from ._plan import TracePlan
from ._record import VariableRecord
from ._resolution import Proposals
from ._state import State
from ._view import View


class NotBatchable(Exception):
    """A family's transform used something that differs between its members."""


_SAFE = {"__hash__", "__repr__", "__new__", "__init__", "__class__", "__getattribute__", "__eq__", "__ne__",
         "__reduce__", "__reduce_ex__", "__getnewargs__", "__init_subclass__", "__subclasshook__",
         "__setattr__", "__delattr__", "__dir__", "__sizeof__", "__doc__", "__getstate__", "__dict__"}


class _Slot(str):
    """A placeholder for one of a family member's names: ``role`` is ``"read"``,
    ``"write"`` or ``"name"``, ``k`` its position. It can be hashed, compared with
    other placeholders and used to index a view or a dict; anything else (which
    would depend on the member) raises :class:`NotBatchable`."""

    def __new__(cls, role: str, k: int = 0):
        obj = super().__new__(cls, f"<{role} {k}>")
        obj.tag = (role, k)
        return obj

    def __hash__(self):
        return str.__hash__(self)

    def __eq__(self, other):
        if isinstance(other, _Slot):
            return self.tag == other.tag
        raise NotBatchable(f"a family member's {self.tag[0]} was compared with {other!r}")

    def __ne__(self, other):
        return not self.__eq__(other)


def _refuse(name):
    def method(self, *args, **kwargs):
        raise NotBatchable(f"a family member's {self.tag[0]} was used with str.{name}")

    return method


for _name in dir(str):
    if _name not in _SAFE and callable(getattr(str, _name)):
        setattr(_Slot, _name, _refuse(_name))


def _tag(key):
    """``("read"|"write"|"name", k)`` for a placeholder, ``("var", name)`` otherwise."""
    if isinstance(key, _Slot):
        return key.tag
    return ("var", getattr(key, "name", key))


@dataclasses.dataclass(frozen=True)
class Family:
    """A static description of one family of mechanisms.

    ``members``: mechanism indices, in declaration order. ``batchable``: traced once
    for all members. ``variables``: per member, the variable indices of its reads
    then its writes (the placeholders' targets). ``outputs``: the template's output
    keys (tags). ``proposals``: per member, the proposal index of each output key.
    """

    cls: str
    members: tuple[int, ...]
    batchable: bool
    variables: tuple[tuple[int, ...], ...] = ()
    outputs: tuple[tuple, ...] = ()
    proposals: tuple[tuple[int, ...], ...] = ()
    reason: str = ""


def _template(mech: Mechanism) -> Mechanism:
    """``mech`` with placeholders for its name, reads and writes, and the base
    flags of a template (members differ in them; the step reads them from tables)."""
    out = copy.copy(mech)
    object.__setattr__(out, "name", _Slot("name"))
    object.__setattr__(out, "reads", tuple(_Slot("read", k) for k in range(len(mech.reads))))
    object.__setattr__(out, "writes", tuple(_Slot("write", k) for k in range(len(mech.writes))))
    object.__setattr__(out, "enabled", True)
    object.__setattr__(out, "run_in_safe_mode", True)
    return out


def family_key(mech: Mechanism):
    """What members of one family share: class, static configuration (the template's
    structure, which holds every static field and non-array leaf), the shapes and
    dtypes of array fields, and the numbers of reads and writes. None when the
    static part is not hashable (the mechanism is then a family of its own)."""
    dynamic, static = eqx.partition(_template(mech), eqx.is_array)
    leaves, treedef = jax.tree.flatten(dynamic)
    key = (type(mech), treedef, jax.tree.structure(static), tuple(jax.tree.leaves(static)),
           tuple((jnp.shape(x), jnp.result_type(x)) for x in leaves), len(mech.reads), len(mech.writes))
    try:
        hash(key)
    except TypeError:
        return None
    return key


class MemberView(View):
    """The view a family's template reads: placeholders index the member's own
    variables (traced indices under ``vmap``); literal names are recorded."""

    __slots__ = ("_targets", "literals")

    def __init__(self, state: State, targets: dict):
        super().__init__(state)
        self._targets = targets
        self.literals = set()

    def _index(self, name):
        if isinstance(name, _Slot):
            if name.tag not in self._targets:
                raise NotBatchable(f"a family member's {name.tag[0]} was used as a variable")
            return self._targets[name.tag]
        name = getattr(name, "name", name)
        self.literals.add(name)
        return self.state.layout.var(name)

    def __getitem__(self, name):
        return self.state.values[..., self._index(name)]

    def confidence(self, name):
        return self.state.confidences[..., self._index(name)]

    def stats(self, name):
        return self.state.stats_[self._index(name)]

    def policy_index(self, name):
        return self.state.active_policy[..., self._index(name)]

    def recent(self, name):
        if isinstance(name, _Slot):  # each variable has its own capacity
            raise NotBatchable("recent() of a family member's variable")
        return super().recent(name)


def _targets(mech_like, idx):
    """Placeholder tag -> variable index (``idx``: reads then writes)."""
    n_reads = len(mech_like.reads)
    out = {("read", k): idx[k] for k in range(n_reads)}
    out.update({("write", k): idx[n_reads + k] for k in range(len(mech_like.writes))})
    return out


def _records(out, keys, dtype):
    found = {_tag(k): rec for k, rec in out.items()}
    return [tuple(jnp.asarray(getattr(found[key], f), dtype) for f in ("value", "confidence", "weight"))
            for key in keys]


def build_families(mechanisms: Sequence[Mechanism], layout, state: State, prop_index, dtype) -> tuple[Family, ...]:
    """Group ``mechanisms`` into families and trace each family's template once
    (abstractly) to learn whether it can be batched and how its outputs map to
    proposals. ``prop_index[(mechanism, write position)]`` is a proposal's index."""
    groups: dict = {}
    for mi, m in enumerate(mechanisms):
        key = family_key(m)
        groups.setdefault(key if key is not None else ("alone", mi), []).append(mi)
    families = []
    for members in groups.values():
        first = mechanisms[members[0]]
        cls = type(first).__name__
        try:
            families.append(_batchable_family(mechanisms, members, layout, state, prop_index, dtype))
        except NotBatchable as e:
            families.append(Family(cls, tuple(members), False, reason=str(e)))
        except Exception as e:  # noqa: BLE001 - the members' own traces name the error
            families.append(Family(cls, tuple(members), False, reason=f"{type(e).__name__}: {e}"))
    return tuple(sorted(families, key=lambda f: f.members[0]))


def _batchable_family(mechanisms, members, layout, state, prop_index, dtype) -> Family:
    first = mechanisms[members[0]]
    template = _template(first)
    n_reads, n_writes = len(first.reads), len(first.writes)
    holder = {}

    def trace(st):
        view = MemberView(st, {("read", k): k for k in range(n_reads)} | {("write", k): k for k in range(n_writes)})
        out = template.transform(view, jax.random.key(0))
        holder["literals"], holder["out"] = view.literals, out
        return 0

    jax.eval_shape(trace, state)
    out = holder["out"]
    if not isinstance(out, dict):
        raise NotBatchable("transform does not return a dict")
    keys = tuple(_tag(k) for k in out)
    if len(set(keys)) != len(keys):
        raise NotBatchable("duplicate output keys")
    for rec in out.values():
        if not isinstance(rec, VariableRecord):
            raise NotBatchable("an output is not a VariableRecord")
        if any(jnp.shape(getattr(rec, f)) != () for f in ("value", "confidence", "weight")):
            raise NotBatchable("an output is not a scalar")
    variables, proposals = [], []
    for mi in members:
        m = mechanisms[mi]
        declared = set(m.reads) | set(m.writes)
        if not holder["literals"] <= declared:
            raise NotBatchable(f"mechanism {m.name!r} reads {sorted(holder['literals'] - declared)} by name")
        written = []
        for role, k in keys:
            if role == "write":
                written.append(k)
            elif role == "var" and k in m.writes:
                written.append(m.writes.index(k))
            else:
                raise NotBatchable(f"mechanism {m.name!r} would propose to {k!r}")
        if sorted(written) != list(range(n_writes)):
            raise NotBatchable(f"mechanism {m.name!r}'s outputs do not match its writes")
        variables.append(tuple(layout.var(n) for n in (*m.reads, *m.writes)))
        proposals.append(tuple(prop_index[(mi, k)] for k in written))
    return Family(type(first).__name__, tuple(members), True, tuple(variables), keys, tuple(proposals))


def stack_families(ex, plan: TracePlan) -> tuple:
    """The array fields of each family the plan batches, stacked along a leading
    axis (one entry per family of ``ex.tables.families``, None for the others).
    A run stacks them once, before its loop, which then carries a few arrays
    instead of every member's own leaves."""
    out = []
    for fam in ex.tables.families:
        if fam.batchable and len(fam.members) >= plan.family_members:
            mechs = [eqx.filter(_template(ex.mechanisms[i]), eqx.is_array) for i in fam.members]
            out.append(jax.tree.map(lambda *xs: jnp.stack(xs), *mechs))
        else:
            out.append(None)
    return tuple(out)


def _family_records(ex, fam: Family, stacked, state: State, step_key, dtype):
    """The family's outputs: per output key, ``(values, confidences, weights)``
    arrays with one entry per member, from one trace of its transform."""
    template = _template(ex.mechanisms[fam.members[0]])
    static = eqx.partition(template, eqx.is_array)[1]
    ids = np.asarray([ex.tables.mech_ids[i] for i in fam.members], np.uint32)
    idx = np.asarray(fam.variables, np.int32).reshape(len(fam.members), -1)

    def one(dynamic, mech_id, targets):
        mech = eqx.combine(dynamic, static)
        view = MemberView(state, _targets(template, targets))
        return _records(mech.transform(view, jax.random.fold_in(step_key, mech_id)), fam.outputs, dtype)

    return jax.vmap(one)(stacked, ids, idx)


def propose(ex, plan: TracePlan, state: State, step_key, stacked=None):
    """Every mechanism proposes. Returns the :class:`Proposals` (lists of scalars
    when every family is traced member by member, else arrays) and the mask of
    mechanisms that run this step. ``stacked``: :func:`stack_families`'s result
    (computed here when None)."""
    dtype = jnp.dtype(ex.dtype)
    tables = ex.tables
    view = View(state)
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
    if not all(tables.safe):
        safe = jnp.asarray(np.asarray(tables.safe))
        active = active & (safe | ~state.safe_mode)

    def alone(mi):
        mech = ex.mechanisms[mi]
        out = mech.transform(view, jax.random.fold_in(step_key, tables.mech_ids[mi]))
        return _records(out, [("var", w) for w in mech.writes], dtype)

    batched = [f for f in tables.families if f.batchable and len(f.members) >= plan.family_members]
    if not batched:  # lists of scalars, one per proposal: the slots are built from them directly
        recs = [r for mi in range(m) for r in alone(mi)]
        pv, pc, pw = ([r[j] for r in recs] for j in range(3))
        return Proposals(pv, pc, pw, [active[i] for i in tables.prop_mech]), active
    if stacked is None:
        stacked = stack_families(ex, plan)
    pieces, order = [], []
    for fam, params in zip(tables.families, stacked):
        if params is not None:
            for k, rec in enumerate(_family_records(ex, fam, params, state, step_key, dtype)):
                pieces.append(rec)
                order.extend(p[k] for p in fam.proposals)
        else:
            for mi in fam.members:
                for k, rec in enumerate(alone(mi)):
                    pieces.append(tuple(x[None] for x in rec))
                    order.append(tables.prop_start[mi] + k)
    inverse = np.argsort(np.asarray(order))
    identity = bool((inverse == np.arange(len(order))).all())
    pv, pc, pw = (jnp.concatenate([p[j] for p in pieces]) for j in range(3))
    if not identity:
        pv, pc, pw = pv[inverse], pc[inverse], pw[inverse]
    return Proposals(pv, pc, pw, active[np.asarray(tables.prop_mech, np.int32)]), active
