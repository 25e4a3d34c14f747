"""Parameter paths: ``"<mechanism>.<field>"`` and ``"<variable>.init"`` as values."""

from __future__ import annotations

import dataclasses

import equinox as eqx

from ._errors import ModelError
from ._mechanism import BASE_FIELDS


@dataclasses.dataclass(frozen=True)
class Parameter:
    """One parameter of an executive, addressed by its path.

    ``"<mechanism>.<field>"`` is a field of one mechanism (a member of a family
    too: each member keeps its own parameters); ``"<variable>.init"`` and
    ``"<variable>.init_confidence"`` are a variable's initial value and confidence.
    ``get`` and ``set`` are pure, so they can be used under ``jit``, ``grad`` and
    ``vmap``; :func:`parameter` checks the path against an executive once.

    >>> import procela_jax as pj
    >>> ex = pj.demos.sir.make_executive()
    >>> beta = pj.parameter(ex, "sir.beta")
    >>> beta.kind, round(float(beta.get(ex)), 3)
    ('mechanism', 0.3)
    >>> round(float(beta.get(beta.set(ex, 0.5))), 3)
    0.5
    """

    path: str
    kind: str  # "mechanism", "init" or "init_confidence"
    owner: str
    field: str
    index: int  # the mechanism's or the variable's index

    def get(self, ex):
        """The parameter's value in ``ex``."""
        if self.kind == "mechanism":
            return getattr(ex.mechanisms[self.index], self.field)
        return self._array(ex)[self.index]

    def set(self, ex, value):
        """A copy of ``ex`` with the parameter set to ``value`` (no conversion)."""
        if self.kind == "mechanism":
            return eqx.tree_at(lambda e: getattr(e.mechanisms[self.index], self.field), ex, value)
        return eqx.tree_at(self._array, ex, self._array(ex).at[self.index].set(value))

    def _array(self, ex):
        return ex.init_values if self.kind == "init" else ex.init_confidences


def parameter(ex, path: str) -> Parameter:
    """The :class:`Parameter` at ``path`` in ``ex``, or a :class:`ModelError` that
    says what the executive has.

    >>> import procela_jax as pj
    >>> pj.parameter(pj.demos.sir.make_executive(), "I.init").index
    1
    """
    if not isinstance(path, str) or path.count(".") != 1:
        raise ModelError(f"parameter path {path!r} must look like '<mechanism>.<field>' or '<variable>.init'")
    owner, field = path.split(".")
    layout = ex.layout
    if owner in layout.mech_index:
        i = layout.mech_index[owner]
        fields = [f.name for f in dataclasses.fields(ex.mechanisms[i]) if f.name not in BASE_FIELDS]
        if field not in fields:
            raise ModelError(f"mechanism {owner!r} has no parameter {field!r}; its parameters: {fields}")
        return Parameter(path, "mechanism", owner, field, i)
    if owner in layout.var_index:
        if field not in ("init", "init_confidence"):
            raise ModelError(f"variable {owner!r} has parameters 'init' and 'init_confidence', not {field!r}")
        return Parameter(path, field, owner, field, layout.var_index[owner])
    raise ModelError(
        f"{owner!r} in {path!r} is neither a mechanism {list(layout.mechanisms)} "
        f"nor a variable {list(layout.variables)}"
    )
