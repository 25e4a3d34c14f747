"""Simulation: a thin stateful shell over the pure core, for notebooks and scripts."""

from __future__ import annotations

import dataclasses
import warnings

import jax
import numpy as np

from ._errors import InvalidProposalError, InvariantViolationFatal
from ._executive import Executive
from ._save import Save
from ._state import State


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A snapshot of a :class:`Simulation`: its state (a value) and history length."""

    state: State
    history_length: int


class Simulation:
    """Holds an executive and its current state; every call runs the pure core.

    ``seed=s`` means ``jax.random.key(s)``. ``run`` continues from the current
    state and raises, with names, what the core recorded: a FATAL invariant
    (:class:`InvariantViolationFatal`) or invalid proposals
    (:class:`InvalidProposalError`); out-of-domain events raise a warning.
    ``history(name)`` starts with the initial value (the first record).

    >>> import procela_jax as pj
    >>> sim = pj.Simulation(pj.demos.sir.make_executive(), seed=0)
    >>> sim.run(steps=10)
    >>> sim.history("I").shape
    (11,)
    >>> cp = sim.create_checkpoint(); sim.run(steps=5); sim.restore_checkpoint(cp)
    >>> int(sim.step)
    10
    """

    def __init__(self, executive: Executive, seed: int = 0, *, init: dict | None = None, chunk: int = 1000):
        if not isinstance(executive, Executive):
            raise TypeError(f"Simulation needs an Executive, got {type(executive).__name__}")
        if not isinstance(chunk, int) or chunk < 1:
            raise ValueError(f"chunk must be a positive int, got {chunk!r}")
        self.executive = executive
        self.seed = seed
        self.chunk = chunk
        self._init = init
        self.reset()

    # ---- lifecycle -------------------------------------------------------------
    def reset(self) -> None:
        """A fresh world with the same seed and configuration."""
        self.state = self.executive.init(jax.random.key(self.seed), self._init)
        self._values = [np.asarray(self.state.values)[None]]
        self._confidences = [np.asarray(self.state.confidences)[None]]

    def run(self, steps: int = 1, *, progress: bool = False) -> None:
        """Run ``steps`` more steps (in jitted chunks of ``self.chunk`` steps)."""
        if not isinstance(steps, (int, np.integer)) or steps < 0:
            raise ValueError(f"steps must be a non-negative int, got {steps!r}")
        before = self.state
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(steps), unit="step", desc="simulating")
        left = int(steps)
        save = Save(every=1, fields=("value", "confidence"))
        try:
            while left > 0:
                n = min(left, self.chunk)
                self.state, traj = self.executive.run(self.state, n, save=save)
                self._values.append(np.asarray(traj.data["value"]))
                self._confidences.append(np.asarray(traj.data["confidence"]))
                left -= n
                if bar is not None:
                    bar.update(n)
                if bool(self.state.halted):
                    break
        finally:
            if bar is not None:
                bar.close()
        self._raise_recorded(before)

    def _raise_recorded(self, before: State) -> None:
        s = self.state
        layout = s.layout
        new_invalid = np.asarray(s.invalid_proposals) - np.asarray(before.invalid_proposals)
        if bool(s.halted) and not bool(before.halted):
            k = int(s.halted_by)
            inv = self.executive.invariants[k]
            raise InvariantViolationFatal(inv.name, inv.message, int(s.halted_at))
        if np.any(new_invalid > 0):
            i = int(np.argmax(new_invalid > 0))
            raise InvalidProposalError(
                layout.mechanisms[i], int(np.asarray(s.invalid_first_step)[i]), int(np.asarray(s.invalid_proposals)[i])
            )
        new_domain = np.asarray(s.domain_violations) - np.asarray(before.domain_violations)
        if np.any(new_domain > 0):
            names = [layout.variables[i] for i in np.flatnonzero(new_domain > 0)]
            warnings.warn(
                f"resolved values fell outside the domain of {names} "
                f"({int(new_domain.sum())} events; see state.domain_violations)",
                RuntimeWarning,
                stacklevel=3,
            )

    # ---- reading ---------------------------------------------------------------
    @property
    def step(self) -> int:
        return int(self.state.step)

    def value(self, name) -> float:
        return float(self.state.value(name))

    def confidence(self, name) -> float:
        return float(self.state.confidence(name))

    def stats(self, name):
        return self.state.stats(name)

    def history(self, name) -> np.ndarray:
        """Every value committed since the reset, the initial value first."""
        i = self.state.layout.var(name)
        return np.concatenate(self._values)[:, i]

    def confidence_history(self, name) -> np.ndarray:
        i = self.state.layout.var(name)
        return np.concatenate(self._confidences)[:, i]

    # ---- checkpoints -----------------------------------------------------------
    def create_checkpoint(self) -> Checkpoint:
        """The current state and history length (a value; nothing is copied)."""
        return Checkpoint(self.state, sum(len(v) for v in self._values))

    def restore_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Go back to a checkpoint; the history is cut back to it."""
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError("restore_checkpoint needs a Checkpoint from create_checkpoint()")
        if checkpoint.state.layout != self.state.layout:
            raise ValueError("this checkpoint belongs to a simulation of another model")
        self.state = checkpoint.state
        values = np.concatenate(self._values)[: checkpoint.history_length]
        confs = np.concatenate(self._confidences)[: checkpoint.history_length]
        self._values, self._confidences = [values], [confs]
