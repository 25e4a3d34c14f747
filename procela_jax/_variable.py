"""Variable: the static declaration of one epistemic variable."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp

from ._domain import CategoricalDomain, Domain, RealDomain
from ._errors import ModelError
from ._policy import Policy, WeightedVotingPolicy, as_policy

OUT_OF_DOMAIN = ("commit", "clip", "hold")


@dataclasses.dataclass(frozen=True)
class Variable:
    """A variable: a named authority over one scalar quantity.

    It keeps a memory of what was claimed about it; mechanisms only propose
    hypotheses and its active policy resolves them. The declaration is static;
    the values live in the :class:`State`.

    Arguments:
        name: unique name (no ``"."``).
        domain: the values it may take (default :class:`RealDomain`).
        policy: the resolution policy used from the start.
        alternatives: further policies it may switch to at run time
            (``state.set_policy(name, PolicyType)``); keep them few, since under
            ``vmap`` every candidate is computed.
        init: initial value, committed as the first record (count 1). A category
            label is accepted for a :class:`CategoricalDomain`. Default: the point
            of the domain nearest to 0.
        init_confidence: confidence of the initial record.
        memory: capacity of the ring buffer of recent records.
        out_of_domain: what happens to a resolved value outside the domain:
            ``"commit"`` keeps it (the original's behaviour, the default),
            ``"clip"`` projects it into the domain, ``"hold"`` keeps the previous
            value. Each event is counted in the state whatever the choice.
        ewma_alpha: smoothing factor of the running EWMA (original default 0.3).
        validators: pure functions ``f(value, confidence) -> bool`` of one
            hypothesis; a hypothesis any of them rejects takes no part in the
            resolution (nor in the pending mask a RUNTIME invariant sees). When
            all are rejected the step commits no value, as without hypotheses.
            Unlike the original, whose policy still receives the rejected
            hypotheses (validators there only matter when they reject all).
        units, description: documentation only.

    >>> import procela_jax as pj
    >>> X = pj.Variable("X", pj.RangeDomain(0, 100), init=5.0)
    >>> X.name, X.policy.name, X.init
    ('X', 'WeightedVotingPolicy', 5.0)
    """

    name: str
    domain: Domain = dataclasses.field(default_factory=RealDomain)
    policy: Any = dataclasses.field(default_factory=WeightedVotingPolicy, kw_only=True)
    alternatives: tuple = dataclasses.field(default=(), kw_only=True)
    init: Any = dataclasses.field(default=None, kw_only=True)
    init_confidence: float = dataclasses.field(default=1.0, kw_only=True)
    memory: int = dataclasses.field(default=16, kw_only=True)
    out_of_domain: str = dataclasses.field(default="commit", kw_only=True)
    ewma_alpha: float = dataclasses.field(default=0.3, kw_only=True)
    validators: tuple = dataclasses.field(default=(), kw_only=True)
    units: str = dataclasses.field(default="", kw_only=True)
    description: str = dataclasses.field(default="", kw_only=True)

    def __post_init__(self):
        where = f"Variable {self.name!r}"
        if not isinstance(self.name, str) or not self.name:
            raise ModelError(f"Variable name must be a non-empty string, got {self.name!r}")
        if "." in self.name:
            raise ModelError(f"{where}: names may not contain '.' (it separates '<name>.<field>')")
        if not isinstance(self.domain, Domain):
            raise ModelError(f"{where}: domain must be a procela_jax domain, got {self.domain!r}")
        try:
            policy = as_policy(self.policy)
            alternatives = tuple(as_policy(p) for p in self.alternatives)
        except TypeError as e:
            raise ModelError(f"{where}: {e}") from None
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "alternatives", alternatives)
        kinds = [type(p).__name__ if not hasattr(p, "label") else p.name for p in self.policies]
        if len(set(kinds)) != len(kinds):
            raise ModelError(f"{where}: candidate policies must differ in type, got {kinds}")
        validators = (self.validators,) if callable(self.validators) else tuple(self.validators)
        for k, f in enumerate(validators):
            _check_validator(where, k, f)
        object.__setattr__(self, "validators", validators)
        if self.out_of_domain not in OUT_OF_DOMAIN:
            raise ModelError(
                f"{where}: out_of_domain={self.out_of_domain!r}; choose one of {OUT_OF_DOMAIN}"
            )
        if not isinstance(self.memory, int) or self.memory < 1:
            raise ModelError(f"{where}: memory must be a positive int, got {self.memory!r}")
        if not (0.0 <= float(self.ewma_alpha) <= 1.0):
            raise ModelError(f"{where}: ewma_alpha must lie in [0, 1], got {self.ewma_alpha}")
        if not (0.0 <= float(self.init_confidence) <= 1.0):
            raise ModelError(
                f"{where}: init_confidence must lie in [0, 1], got {self.init_confidence}"
            )
        if self.init is None:
            init = self.domain.project_python(0.0)
        else:
            init = self.encode(self.init)
        object.__setattr__(self, "init", init)

    def encode(self, value) -> float:
        """The number stored for a user-facing value (category labels become codes)."""
        where = f"Variable {self.name!r}"
        if isinstance(self.domain, CategoricalDomain):
            try:
                value = self.domain.encode(value)
            except ModelError as e:
                raise ModelError(f"{where}: {e}") from None
        if isinstance(value, (str, bytes)):  # float("3") would read it; the original refuses it
            raise ModelError(f"{where}: value {value!r} is not a number; pass a number (e.g. float(text))")
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise ModelError(f"{where}: value {value!r} is not a number") from None
        if math.isnan(value) or not self.domain.contains_python(value):
            raise ModelError(f"{where}: value {value!r} lies outside its domain {self.domain!r}")
        return value

    @property
    def policies(self) -> tuple[Policy, ...]:
        """The candidate policies: ``policy`` first, then the alternatives."""
        return (self.policy, *self.alternatives)

    def __repr__(self):
        return f"Variable({self.name!r}, {self.domain!r}, policy={self.policy.name})"


def _check_validator(where: str, k: int, f) -> None:
    """Trace a validator once on abstract scalars; name it in any error."""
    label = f"{where}: validator {k} ({getattr(f, '__name__', repr(f))})"
    if not callable(f):
        raise ModelError(f"{label} is not callable; give f(value, confidence) -> bool")
    x = jax.ShapeDtypeStruct((), jnp.float32)
    try:
        out = jax.eval_shape(f, x, x)
    except Exception as e:  # noqa: BLE001 - re-raised with the variable's name
        raise ModelError(f"{label} failed on a trial call f(value, confidence): {type(e).__name__}: {e}") from e
    if not hasattr(out, "shape") or out.shape != ():
        raise ModelError(f"{label} must return one boolean per hypothesis, got {out!r}")


def apply_validators(variables, values, confidences, mask):
    """``mask`` with the hypotheses rejected by each variable's validators masked out.

    Arrays have shape ``(n_variables, n_slots)``; each validator is mapped over
    the slots of its variable.
    """
    for i, v in enumerate(variables):
        if not v.validators:
            continue
        ok = mask[i]
        for f in v.validators:
            ok = ok & jnp.asarray(jax.vmap(f)(values[i], confidences[i])).astype(bool)
        mask = mask.at[i].set(ok)
    return mask
