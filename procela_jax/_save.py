"""Save and Trajectory: what a run keeps, chosen rather than accidental."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._errors import ModelError

FIELDS = ("value", "confidence", "mean", "std", "ewma", "min", "max", "count", "policy")


@dataclasses.dataclass(frozen=True)
class Save:
    """What :meth:`Executive.run` keeps.

    Arguments:
        every: keep every ``every``-th step (row ``i`` is the state after step
            ``(i + 1) * every``).
        variables: names to keep (default: all).
        fields: per-variable fields among ``value, confidence, mean, std, ewma,
            min, max, count, policy``.
        fn: optional ``fn(state) -> pytree`` of further quantities to keep.
        audit: keep every hypothesis of each saved step (value, confidence,
            weight, mask, and the deciding source); needs ``Executive(audit=True)``.
            Read it with ``traj.hypotheses(name)``.

    Memory: ``steps // every * len(variables) * len(fields)`` numbers (plus
    ``fn``'s output, plus ``4 * n_slots + 1`` per variable with ``audit``) per
    scenario.

    >>> import procela_jax as pj
    >>> pj.Save(every=7, variables=("I",), fields=("value",))
    Save(every=7, variables=('I',), fields=('value',), fn=None, audit=False)
    """

    every: int = 1
    variables: tuple[str, ...] | None = None
    fields: tuple[str, ...] = ("value", "confidence")
    fn: Callable | None = None
    audit: bool = False

    def __post_init__(self):
        if not isinstance(self.every, int) or self.every < 1:
            raise ModelError(f"Save: every must be a positive int, got {self.every!r}")
        if self.variables is not None:
            object.__setattr__(self, "variables", tuple(getattr(v, "name", v) for v in self.variables))
        fields = (self.fields,) if isinstance(self.fields, str) else tuple(self.fields)
        bad = [f for f in fields if f not in FIELDS]
        if bad:
            raise ModelError(f"Save: unknown fields {bad}; choose among {FIELDS}")
        object.__setattr__(self, "fields", fields)


_GETTERS = {
    "value": lambda s: s.values,
    "confidence": lambda s: s.confidences,
    "policy": lambda s: s.active_policy,
    "count": lambda s: s.stats_.count,
    "mean": lambda s: s.stats_.mean,
    "std": lambda s: s.stats_.std,
    "ewma": lambda s: s.stats_.ewma,
    "min": lambda s: s.stats_.min,
    "max": lambda s: s.stats_.max,
}


def extract(state, names_idx, fields):
    """The saved quantities of one state, as a dict field -> array (n_selected,)."""
    n = len(state.layout.variables)
    if len(names_idx) == n and all(int(i) == k for k, i in enumerate(names_idx)):
        return {f: _GETTERS[f](state) for f in fields}  # all of them: no gather
    return {f: _GETTERS[f](state)[..., names_idx] for f in fields}


class Trajectory(eqx.Module):
    """What a run kept: ``traj.value("X")`` has shape ``(..., n_saved)``.

    Row ``i`` is the state after step ``(i + 1) * every`` of the run (leading
    axes are scenario axes of a batched run). ``traj.steps`` gives the global
    step of each row; ``traj.extra`` holds the output of ``Save.fn``.
    """

    data: dict[str, Array]
    steps: Array
    extra: object
    names: tuple[str, ...] = eqx.field(static=True)

    def field(self, name, field: str) -> Array:
        name = getattr(name, "name", name)
        if field not in self.data or field == "audit":
            raise KeyError(f"field {field!r} was not saved; saved fields: {list(self.data)}")
        if name not in self.names:
            raise KeyError(f"variable {name!r} was not saved; saved variables: {list(self.names)}")
        return self.data[field][..., self.names.index(name)]

    def value(self, name) -> Array:
        return self.field(name, "value")

    def hypotheses(self, name) -> dict[str, Array]:
        """The saved hypotheses of a variable: ``values, confidences, weights, mask``
        of shape ``(..., n_saved, n_slots)`` (slots in mechanism order) and
        ``source`` ``(..., n_saved)``: the mechanism index that decided the value,
        or -1 (a blend), -3 (no valid hypothesis)."""
        name = getattr(name, "name", name)
        if "audit" not in self.data:
            raise KeyError("hypotheses were not saved; run with save=Save(audit=True)")
        j = self.names.index(name)
        return {k: v[..., j, :] if v.ndim >= 2 and k != "source" else v[..., j]
                for k, v in self.data["audit"].items()}

    def confidence(self, name) -> Array:
        return self.field(name, "confidence")

    def __len__(self):
        return int(self.steps.shape[-1]) if self.steps.ndim else 0


def empty_trajectory(names):
    return Trajectory(data={}, steps=jnp.zeros((0,), jnp.int32), extra=None, names=tuple(names))
