"""Exceptions raised by procela_jax.

Build-time problems (a model that cannot be built) raise :class:`ModelError`;
run-time conditions are recorded in the state by the pure core and raised by the
Python entry points (:class:`Simulation`, :func:`sweep`) with names attached.
"""

from __future__ import annotations


class ModelError(ValueError):
    """A model definition is invalid; the message names the culprit."""


class CheckpointError(ValueError):
    """A checkpoint file cannot be loaded: wrong model, wrong format or corrupt."""


class InvalidProposalError(RuntimeError):
    """A mechanism proposed a non-finite value or a confidence outside [0, 1]."""

    def __init__(self, mechanism: str, step: int, count: int):
        self.mechanism = mechanism
        self.step = step
        self.count = count
        super().__init__(
            f"mechanism {mechanism!r} proposed an invalid record (non-finite value or "
            f"confidence outside [0, 1]) first at step {step} ({count} invalid proposals "
            "in all); invalid proposals are masked out of resolution"
        )


class NonFiniteResolutionError(RuntimeError):
    """A variable's policy resolved valid hypotheses to a non-finite value."""

    def __init__(self, variable: str, step: int, count: int):
        self.variable = variable
        self.step = step
        self.count = count
        super().__init__(
            f"variable {variable!r} resolved to a non-finite value from finite hypotheses first at "
            f"step {step} ({count} time{'s' if count != 1 else ''} in all; see state.nonfinite_resolved); the value is "
            "committed under the variable's out_of_domain rule"
        )


class InvariantViolation(RuntimeError):
    """Base class of invariant violations raised by the Python entry points."""

    def __init__(self, name: str, message: str, step: int):
        self.name = name
        self.message = message
        self.step = step
        super().__init__(f"invariant {name!r} violated at step {step}: {message}")


class InvariantViolationFatal(InvariantViolation):
    """A FATAL invariant halted the world."""


class EventHandlerError(RuntimeError):
    """An event handler registered with ``Simulation.on`` raised; the simulation's
    state is kept as it was after the steps already run."""
