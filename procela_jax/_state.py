"""State: everything that changes, as one immutable pytree."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, PyTree

from ._domain import CategoricalDomain
from ._errors import ModelError
from ._hints import materialize
from ._layout import Layout
from ._recovery import FailureLog
from ._memory import SOURCE_EXTERNAL, SOURCE_NONE, Memory
from ._process import Process
from ._statistics import Stats


def put(arr, i, value):
    """``arr`` with entries ``i`` (static: an int or ints) of its last axis set to
    ``value`` (a scalar, or one per leading batch entry). A select with a constant
    mask fuses with the rest of a step; ``arr.at[..., i].set`` is a scatter, a kernel
    of its own on CPU."""
    hit = jnp.asarray(np.isin(np.arange(arr.shape[-1]), np.atleast_1d(np.asarray(i))))
    v = jnp.asarray(value, arr.dtype)
    return jnp.where(hit, v[..., None] if v.ndim else v, arr)


def _when(when, new, old):
    if when is None:
        return new
    return jax.tree.map(lambda a, b: jnp.where(when, a, b), new, old)


class State(eqx.Module):
    """The whole world at one step: a pytree, so a checkpoint is just this value.

    Arrays are indexed by variable (``value``, ``confidence``, ``stats``,
    ``memory``, ``active_policy``, ``domain_violations``), by mechanism
    (``enabled``, ``invalid_proposals``) or by invariant (``violation_count``,
    ``invariant_active``). ``failures`` is the bounded log of failed steps,
    ``audit`` (when the executive was built with ``audit=True``) the hypotheses
    and the deciding source of the last step, and ``aux`` governance's own state.
    ``joined`` marks the variables that steps commit: a written variable joins
    when a state is made (``init``, ``carry_over``) with one of its writers
    enabled, or at the first resolution where one is, and stays.
    ``nonfinite_resolved`` counts, per variable, resolutions that gave a
    non-finite value from valid hypotheses (``nonfinite_first_step``: the first
    such step). Read them by name with the accessors below; change them
    with the methods, which return a new state and take an optional traced
    ``when=`` condition, so governance can use them inside ``jit``.

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=2.0)], mechanisms=[])
    >>> s = ex.init(jax.random.key(0))
    >>> float(s.value("X")), int(s.step)
    (2.0, 0)
    >>> float(s.set("X", 5.0).value("X"))
    5.0
    """

    step: Array
    key: Array
    values: Array
    confidences: Array
    stats_: Stats
    memory: Memory
    active_policy: Array
    enabled: Array
    proposed: Array
    invalid_proposals: Array
    invalid_first_step: Array
    domain_violations: Array
    domain_first_step: Array
    violation_count: Array
    violation_first_step: Array
    violation_last_step: Array
    invariant_active: Array
    safe_mode: Array
    halted: Array
    halted_by: Array
    halted_at: Array
    failures: FailureLog
    audit: dict | None
    aux: PyTree[Any]
    joined: Array
    nonfinite_resolved: Array
    nonfinite_first_step: Array
    layout: Layout = eqx.field(static=True)

    # ---- reading -----------------------------------------------------------------
    def value(self, name) -> Array:
        """The value last committed to a variable."""
        return self.values[..., self.layout.var(name)]

    def confidence(self, name) -> Array:
        """The confidence of the variable's last resolved record."""
        return self.confidences[..., self.layout.var(name)]

    def stats(self, name) -> Stats:
        """The running statistics of a variable (see :class:`Stats`)."""
        return self.stats_[self.layout.var(name)]

    def recent(self, name) -> dict[str, Array]:
        """The variable's ring buffer, oldest first, with a ``valid`` mask."""
        return self.memory.ordered(self.layout.var(name))

    def _mechs(self, name):
        if isinstance(name, Process):  # every member of a process
            return np.asarray([self.layout.mech(m) for m in name.members])
        return self.layout.mech(name)

    def is_enabled(self, name) -> Array:
        """Whether a mechanism is enabled (for a :class:`Process`: all its members)."""
        i = self._mechs(name)
        if isinstance(i, np.ndarray):
            return jnp.all(self.enabled[..., i], axis=-1)
        return self.enabled[..., i]

    def is_joined(self, name) -> Array:
        """Whether steps commit the variable: one of its writers was enabled when
        the state was made, or at a resolution since."""
        return self.joined[..., self.layout.var(name)]

    def policy_index(self, name) -> Array:
        """Index of the variable's active policy among its candidates."""
        return self.active_policy[..., self.layout.var(name)]

    def violations(self, name) -> Array:
        """How many times an invariant has been violated."""
        return self.violation_count[..., self.layout.inv(name)]

    # ---- changing (pure; each returns a new state) -----------------------------
    def enable(self, name, when=None) -> State:
        """Enable a mechanism, or every member of a :class:`Process` (from the next
        proposal phase on)."""
        i = self._mechs(name)
        return eqx.tree_at(lambda s: s.enabled, self, _when(when, put(self.enabled, i, True), self.enabled))

    def disable(self, name, when=None) -> State:
        """Disable a mechanism, or every member of a :class:`Process`: their
        hypotheses are masked out of resolution."""
        i = self._mechs(name)
        return eqx.tree_at(lambda s: s.enabled, self, _when(when, put(self.enabled, i, False), self.enabled))

    def set_policy(self, name, policy, when=None) -> State:
        """Switch a variable's active policy among its candidates (matched by type)."""
        i = self.layout.var(name)
        k = self.layout.policy(i, policy)
        new = put(self.active_policy, i, k)
        return eqx.tree_at(lambda s: s.active_policy, self, _when(when, new, self.active_policy))

    def set_invariant_active(self, name, active, when=None) -> State:
        i = self.layout.inv(name)
        new = put(self.invariant_active, i, active)
        return eqx.tree_at(lambda s: s.invariant_active, self, _when(when, new, self.invariant_active))

    def set(self, name, value, confidence=1.0, when=None) -> State:
        """Commit a record at once, as the original's ``Variable.set``: the value,
        its statistics and memory change now (source ``SOURCE_EXTERNAL``).

        A value outside the domain is handled by the variable's
        ``out_of_domain`` choice and counted, like a resolved one.
        """
        i = self.layout.var(name)
        value = _edge_value(self.layout, i, value, "State.set")
        n = len(self.layout.variables)
        dtype = self.values.dtype
        commit = np.zeros(n, bool)
        commit[i] = True
        commit = jnp.asarray(commit)
        if when is not None:
            commit = commit & jnp.asarray(when)
        vals = put(self.values, i, jnp.asarray(value, dtype))
        confs = put(self.confidences, i, jnp.asarray(confidence, dtype))
        return commit_records(
            self, commit, jnp.ones_like(commit), vals, confs,
            jnp.full((n,), SOURCE_EXTERNAL, jnp.int32),
        )

    def set_many(self, values: dict, confidence=1.0, when=None) -> State:
        """Commit one record to each of several variables at once: the same as a
        ``set`` per name, in one update of the statistics and memory (a smaller
        traced graph when a hook writes many observations each step).

        >>> import jax, procela_jax as pj
        >>> ex = pj.Executive(variables=[pj.Variable("A"), pj.Variable("B")], mechanisms=[])
        >>> s = ex.init(jax.random.key(0)).set_many({"A": 1.0, "B": 2.0}, confidence=0.9)
        >>> float(s.value("A")), float(s.value("B")), int(s.stats("B").count)
        (1.0, 2.0, 2)
        """
        n = len(self.layout.variables)
        dtype = self.values.dtype
        commit = np.zeros(n, bool)
        vals, confs = self.values, self.confidences
        for name, value in values.items():
            i = self.layout.var(name)
            if commit[i]:
                raise ValueError(f"set_many: variable {name!r} given twice")
            value = _edge_value(self.layout, i, value, "State.set_many")
            commit[i] = True
            vals = vals.at[..., i].set(jnp.asarray(value, dtype))
            confs = confs.at[..., i].set(jnp.asarray(confidence, dtype))
        commit = jnp.asarray(commit)
        if when is not None:
            commit = commit & jnp.asarray(when)
        return commit_records(
            self, commit, jnp.ones_like(commit), vals, confs,
            jnp.full((n,), SOURCE_EXTERNAL, jnp.int32),
        )

    def with_aux(self, aux) -> State:
        """Replace the governance state ``aux``."""
        return eqx.tree_at(lambda s: s.aux, self, aux, is_leaf=lambda x: x is None)


def _edge_value(layout: Layout, i: int, value, where: str):
    """Check a value handed in from Python for variable ``i``: numbers (and arrays of
    them, traced or not) pass; a category label becomes its code; anything else
    raises :class:`ModelError`, as the original refuses a non-numeric value."""
    if isinstance(value, jax.Array):
        return value
    domain, name = layout.domains[i], layout.variables[i]
    if isinstance(value, (str, np.str_)) and isinstance(domain, CategoricalDomain) and domain.labels:
        try:
            return domain.encode(value)
        except ModelError as e:
            raise ModelError(f"{where}: variable {name!r}: {e}") from None
    try:
        kind = np.asarray(value).dtype.kind
    except (TypeError, ValueError):
        kind = "O"
    if isinstance(value, (str, bytes)) or kind not in "biuf":
        raise ModelError(
            f"{where}: variable {name!r} (domain {domain!r}) got {value!r}, which is not a number; "
            "pass a number or a numeric array (convert text first, e.g. float(text))"
        )
    return value


def enforce_domains(layout: Layout, has_value, values, previous, stats: Stats | None = None):
    """Apply each variable's out-of-domain choice to candidate ``values``.

    ``stats`` (the statistics before this commit) is handed to the domains that
    use them (``Domain.uses_stats``, e.g. ``StatisticalDomain``).

    Returns ``(values, keep, violated)``: ``keep`` is False where the value is
    rejected ("hold"); ``violated`` marks out-of-domain events.
    """
    n = len(layout.variables)
    inside = jnp.ones((n,), bool)
    projected = values
    groups: dict = {}
    for i, d in enumerate(layout.domains):
        groups.setdefault(d, []).append(i)
    range_like = [i for i, d in enumerate(layout.domains) if type(d).__name__ in ("RangeDomain", "RealDomain")]
    if range_like:
        idx = np.asarray(range_like)
        lo = np.asarray([getattr(layout.domains[i], "lo", None) for i in range_like], dtype=object)
        hi = np.asarray([getattr(layout.domains[i], "hi", None) for i in range_like], dtype=object)
        lo = jnp.asarray(np.where(lo == None, -np.inf, lo).astype(float), values.dtype)  # noqa: E711
        hi = jnp.asarray(np.where(hi == None, np.inf, hi).astype(float), values.dtype)  # noqa: E711
        whole = len(range_like) == n
        v = values if whole else values[idx]
        ok = ~jnp.isnan(v) & (v >= lo) & (v <= hi)
        clean = jnp.where(jnp.isnan(v), jnp.where(jnp.isfinite(lo), lo, 0), v)
        if whole:
            inside, projected = ok, jnp.clip(clean, lo, hi)
        else:
            inside = inside.at[idx].set(ok)
            projected = projected.at[idx].set(jnp.clip(clean, lo, hi))
    for d, members in groups.items():
        if type(d).__name__ in ("RangeDomain", "RealDomain"):
            continue
        idx = np.asarray(members)
        v = values[idx]
        if getattr(d, "uses_stats", False):
            st = None if stats is None else stats[idx]
            inside = inside.at[idx].set(d.contains(v, st))
            projected = projected.at[idx].set(d.project(v, st))
            continue
        inside = inside.at[idx].set(d.contains(v))
        projected = projected.at[idx].set(d.project(v))
    violated = has_value & ~inside
    modes = np.asarray(layout.out_of_domain)
    clip = jnp.asarray(modes == "clip")
    hold = jnp.asarray(modes == "hold")
    out = jnp.where(violated & clip, projected, values)
    keep = ~(violated & hold)
    return out, keep, violated


def commit_records(state: State, commit, has_value, values, confidences, source, record_step=None,
                   plan=None) -> State:
    """Commit one record per variable where ``commit``: statistics, memory, value.

    ``has_value`` False is the original's ``None`` conclusion: the count grows,
    the value is held. Domain enforcement is applied here. ``plan`` (a
    :class:`TracePlan`; default: a single run's) chooses how buffers are written.
    """
    scatter = plan.memory == "scatter" if plan is not None else False
    layout = state.layout
    values = jnp.where(has_value, values, state.values)
    values, keep, violated = enforce_domains(layout, commit & has_value, values, state.values, state.stats_)
    numeric = has_value & keep
    violated = violated & commit
    if plan is not None and plan.materialize:  # the statistics and the ring buffer read these: lay them out once
        values, numeric = materialize(values), materialize(numeric)
    dtype = state.values.dtype
    alpha = jnp.asarray(np.asarray(layout.alphas), dtype)
    one_minus = jnp.asarray(np.asarray([1 - a for a in layout.alphas]), dtype)
    new_step = state.step if record_step is None else record_step
    stats = state.stats_.update(commit, numeric, values, confidences, alpha, one_minus)
    new_values = jnp.where(commit & numeric, values, state.values)
    new_conf = jnp.where(commit & numeric, confidences, state.confidences)
    memory = state.memory.push(
        commit,
        new_values,
        jnp.where(numeric, confidences, 0),
        new_step,
        jnp.where(numeric, source, SOURCE_NONE),
        scatter=scatter,
    )
    first = jnp.where(
        violated & (state.domain_first_step < 0), state.step, state.domain_first_step
    )
    return eqx.tree_at(
        lambda s: (s.values, s.confidences, s.stats_, s.memory, s.domain_violations, s.domain_first_step),
        state,
        (new_values, new_conf, stats, memory, state.domain_violations + violated.astype(jnp.int32), first),
    )
