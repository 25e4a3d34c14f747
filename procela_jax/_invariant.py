"""SystemInvariant: a governance unit that watches the world and may act on it."""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable

from ._errors import ModelError


class InvariantPhase(enum.Enum):
    """When an invariant is checked within a step.

    ``PRE``: before the mechanisms propose; ``RUNTIME``: after they propose and
    before resolution (pending hypotheses are visible); ``POST``: after commit.
    """

    PRE = "pre"
    RUNTIME = "runtime"
    POST = "post"


class InvariantSeverity(enum.Enum):
    """What a violation does beyond being counted.

    ``INFO``/``WARNING``: counted and recorded (which invariant, which step).
    ``CRITICAL``: also switches safe mode on (only mechanisms with
    ``run_in_safe_mode=True`` run from then on). ``FATAL``: halts the world; the
    remaining steps leave the state unchanged and the Python entry points raise
    :class:`InvariantViolationFatal`.
    """

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"
    FATAL = "fatal"


class InvariantSoftness(enum.Enum):
    """``HARD`` invariants act on their severity; ``SOFT`` ones are only counted and
    their handler applied (the original's SOFT never raises, whatever the severity)."""

    HARD = "hard"
    SOFT = "soft"


@dataclasses.dataclass(frozen=True)
class SystemInvariant:
    """An invariant: ``condition(snapshot)`` must hold; when it does not, the
    violation is counted and ``on_violation(state, snapshot) -> state`` is applied.

    Both functions are pure and traced into the step. Defaults follow the
    original: ``phase=RUNTIME``, ``severity=CRITICAL``, ``softness=HARD``.
    ``update(state, snapshot) -> state``, when given, runs at every check of an
    active invariant, before its condition: the invariant's own bookkeeping in
    ``state.aux`` (counters, the end of an experiment it started), which the
    original keeps in the condition's side effects. The condition then sees the
    updated state.
    ``rollback=True`` makes a violation a failure of the step, which an executive
    with a :class:`Recovery` retries or rolls back.

    >>> import procela_jax as pj
    >>> inv = pj.SystemInvariant("bounded", lambda snap: snap["X"] < 10.0,
    ...                          severity=pj.InvariantSeverity.WARNING)
    >>> inv.phase, inv.severity.value
    (<InvariantPhase.RUNTIME: 'runtime'>, 'warning')
    """

    name: str
    condition: Callable
    on_violation: Callable | None = None
    phase: InvariantPhase = InvariantPhase.RUNTIME
    severity: InvariantSeverity = InvariantSeverity.CRITICAL
    message: str = ""
    softness: InvariantSoftness = InvariantSoftness.HARD
    rollback: bool = False
    update: Callable | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name or "." in self.name:
            raise ModelError(f"invariant name must be a non-empty string without '.', got {self.name!r}")
        if not callable(self.condition):
            raise ModelError(f"invariant {self.name!r}: condition must be callable")
        if self.on_violation is not None and not callable(self.on_violation):
            raise ModelError(f"invariant {self.name!r}: on_violation must be callable or None")
        if self.update is not None and not callable(self.update):
            raise ModelError(f"invariant {self.name!r}: update must be callable or None")
        if not isinstance(self.phase, InvariantPhase):
            raise ModelError(f"invariant {self.name!r}: phase must be an InvariantPhase, got {self.phase!r}")
        if not isinstance(self.severity, InvariantSeverity):
            raise ModelError(
                f"invariant {self.name!r}: severity must be an InvariantSeverity, got {self.severity!r}"
            )
        if not isinstance(self.softness, InvariantSoftness):
            raise ModelError(
                f"invariant {self.name!r}: softness must be an InvariantSoftness, got {self.softness!r}"
            )
        if not self.message:
            object.__setattr__(self, "message", f"Invariant violated: {self.name}")
