"""Recovery: retry or roll back a failed step, and keep a bounded log of failures."""

from __future__ import annotations

import dataclasses

import equinox as eqx
import jax.numpy as jnp
from jaxtyping import Array

from ._errors import ModelError

#: failure kinds recorded in the log
FAILURE_INVALID_PROPOSAL = 1  # an active mechanism proposed a NaN/inf value or a bad confidence
FAILURE_NON_FINITE = 2  # a committed value is not finite
FAILURE_INVARIANT = 3  # an invariant marked rollback=True was violated
FAILURE_KINDS = {
    FAILURE_INVALID_PROPOSAL: "invalid proposal",
    FAILURE_NON_FINITE: "non-finite value",
    FAILURE_INVARIANT: "invariant violated",
}


@dataclasses.dataclass(frozen=True)
class Recovery:
    """How an executive reacts to a failed step.

    A step fails when an active mechanism proposes an invalid record, a committed
    value is not finite, or an invariant marked ``rollback=True`` is violated. The
    step is then retried up to ``retries`` times, each retry folding its number
    into the step key (so it does not replay the same draws). If every attempt
    fails, the step is rolled back: values, statistics and memory stay as before
    the step, the step index still advances (the step is skipped), and the failure
    is logged. Counters (invalid proposals, violations) add up what every
    attempt recorded, failed ones included, so nothing is lost.

    >>> import procela_jax as pj
    >>> pj.Recovery(retries=2)
    Recovery(retries=2)
    """

    retries: int = 1

    def __post_init__(self):
        if not isinstance(self.retries, int) or self.retries < 0:
            raise ModelError(f"Recovery: retries must be a non-negative int, got {self.retries!r}")


class FailureLog(eqx.Module):
    """A bounded log of failed steps (a ring buffer; ``count`` is the total ever).

    Per entry: ``step``, ``kind`` (1 invalid proposal, 2 non-finite value,
    3 invariant), ``who`` (mechanism, variable or invariant index, by kind),
    ``attempts`` and ``rolled_back``.
    """

    step: Array
    kind: Array
    who: Array
    attempts: Array
    rolled_back: Array
    count: Array

    @classmethod
    def empty(cls, size: int) -> FailureLog:
        z = jnp.zeros((size,), jnp.int32)
        return cls(step=z - 1, kind=z, who=z - 1, attempts=z, rolled_back=jnp.zeros((size,), bool),
                   count=jnp.asarray(0, jnp.int32))

    def record(self, when, step, kind, who, attempts, rolled_back) -> FailureLog:
        size = self.step.shape[-1]
        if size == 0:
            return self
        i = self.count % size
        put = lambda a, v: a.at[i].set(jnp.where(when, v, a[i]))
        return FailureLog(
            step=put(self.step, step),
            kind=put(self.kind, kind),
            who=put(self.who, who),
            attempts=put(self.attempts, attempts),
            rolled_back=put(self.rolled_back, rolled_back),
            count=self.count + when.astype(jnp.int32),
        )

    def entries(self, layout=None) -> list[dict]:
        """The logged failures, oldest first, as plain dicts (host side)."""
        import numpy as np

        size = self.step.shape[-1]
        n = int(self.count)
        out = []
        for j in range(max(0, n - size), n):
            i = j % size
            kind = int(np.asarray(self.kind)[i])
            who = int(np.asarray(self.who)[i])
            entry = {
                "step": int(np.asarray(self.step)[i]),
                "kind": FAILURE_KINDS.get(kind, str(kind)),
                "attempts": int(np.asarray(self.attempts)[i]),
                "rolled_back": bool(np.asarray(self.rolled_back)[i]),
            }
            if layout is not None and who >= 0:
                names = {1: layout.mechanisms, 2: layout.variables, 3: layout.invariants}[kind]
                entry["who"] = names[who]
            else:
                entry["who"] = who
            out.append(entry)
        return out
