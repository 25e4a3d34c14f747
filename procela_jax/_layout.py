"""Layout: the static shape of a model (names, tables), shared by State and Executive."""

from __future__ import annotations

import dataclasses
import functools

from ._domain import Domain
from ._errors import ModelError


@dataclasses.dataclass(frozen=True)
class Layout:
    """Static, hashable description of a model's structure."""

    variables: tuple[str, ...]
    mechanisms: tuple[str, ...]
    invariants: tuple[str, ...]
    policies: tuple[tuple[str, ...], ...]  # candidate policy names per variable
    domains: tuple[Domain, ...]
    out_of_domain: tuple[str, ...]
    alphas: tuple[float, ...]
    writable: tuple[bool, ...]

    @functools.cached_property
    def var_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.variables)}

    @functools.cached_property
    def mech_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.mechanisms)}

    @functools.cached_property
    def inv_index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.invariants)}

    def var(self, name) -> int:
        return _lookup("variable", self.var_index, name)

    def mech(self, name) -> int:
        return _lookup("mechanism", self.mech_index, name)

    def inv(self, name) -> int:
        return _lookup("invariant", self.inv_index, name)

    def policy(self, var: int, policy) -> int:
        """Index of ``policy`` (a type, an instance, a name or an int) among a variable's candidates."""
        cands = self.policies[var]
        if isinstance(policy, int):
            if not 0 <= policy < len(cands):
                raise ModelError(f"variable {self.variables[var]!r} has {len(cands)} candidate policies")
            return policy
        if isinstance(policy, str):
            key = policy
        elif isinstance(policy, type):
            key = policy.__name__
        else:
            key = getattr(policy, "name", type(policy).__name__)
        if key not in cands:
            raise ModelError(
                f"variable {self.variables[var]!r} cannot switch to {key}: its candidate "
                f"policies are {list(cands)} (declare it with Variable(..., alternatives=[...]))"
            )
        return cands.index(key)


def _lookup(kind: str, table: dict[str, int], name) -> int:
    name = getattr(name, "name", name)
    try:
        return table[name]
    except KeyError:
        raise KeyError(f"unknown {kind} {name!r}; known {kind}s: {list(table)}") from None
