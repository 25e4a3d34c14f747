"""Simulation: a thin stateful shell over the pure core, for notebooks and scripts."""

from __future__ import annotations

import dataclasses
import time
import warnings

import jax
import numpy as np

from ._errors import EventHandlerError, InvalidProposalError, InvariantViolationFatal, NonFiniteResolutionError
from ._executive import Executive
from ._invariant import InvariantPhase
from ._save import Save
from ._state import State


EVENTS = ("pre_step", "post_mechanism", "post_resolution", "post_step", "error")


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A snapshot of a :class:`Simulation`: its state (a value), history length and
    executive (the structure: mechanisms and invariants, as they were)."""

    state: State
    history_length: int
    executive: Executive | None = None
    owner: object = dataclasses.field(default=None, repr=False, compare=False)


class Simulation:
    """Holds an executive and its current state; every call runs the pure core.

    ``seed=s`` means ``jax.random.key(s)``. ``run`` continues from the current
    state and raises, with names, what the core recorded: a FATAL invariant
    (:class:`InvariantViolationFatal`), invalid proposals
    (:class:`InvalidProposalError`) or a non-finite resolved value
    (:class:`NonFiniteResolutionError`); out-of-domain events raise a warning.
    ``history(name)`` starts with the initial value (the first record) and holds
    every value committed after it: after a FATAL halt, nothing past the halt
    (a POST invariant's step committed; a PRE or RUNTIME invariant's did not). A
    halted simulation raises the same error again on every ``run`` until
    :meth:`reset` or :meth:`restore_checkpoint`.

    Events: ``sim.on(event, handler)`` for ``pre_step(step)``,
    ``post_mechanism(name, step)`` (each mechanism that proposed),
    ``post_resolution(values, step)`` (a dict of the committed values),
    ``post_step(step)`` and ``error(exception, step)``. They are delivered on the
    host between jitted chunks of ``chunk`` steps, in step order, so the compiled
    core never waits for Python; handlers observe, they cannot change the world
    (use hooks and invariants for that). An exception in a handler is re-raised
    as :class:`EventHandlerError` after the ``error`` handlers saw it.

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
        self._handlers: dict[str, list] = {e: [] for e in EVENTS}
        self._owner = object()  # identifies this simulation's checkpoints
        self.timings: list[tuple[int, float]] = []
        self.reset()

    # ---- events ----------------------------------------------------------------
    def on(self, event: str, handler) -> None:
        """Register ``handler`` for ``event`` (one of ``EVENTS``)."""
        if event not in self._handlers:
            raise ValueError(f"unknown event {event!r}; events are {list(EVENTS)}")
        if not callable(handler):
            raise TypeError(f"handler for {event!r} must be callable, got {handler!r}")
        self._handlers[event].append(handler)

    def _emit(self, event, *args):
        for handler in self._handlers[event]:
            try:
                handler(*args)
            except Exception as e:  # noqa: BLE001 - reported, then re-raised
                if event != "error":
                    self._emit("error", e, args[-1])
                raise EventHandlerError(
                    f"the {event!r} handler {getattr(handler, '__name__', handler)!r} raised "
                    f"{type(e).__name__}: {e}"
                ) from e

    def _deliver(self, traj, first: int, rows: int) -> None:
        if not any(self._handlers[e] for e in EVENTS if e != "error"):
            return
        names = self.state.layout.variables
        mechs = self.state.layout.mechanisms
        values = np.asarray(traj.data["value"])
        proposed = np.asarray(traj.extra)
        for row in range(rows):
            t = first + row
            self._emit("pre_step", t)
            for j in np.flatnonzero(proposed[row]):
                self._emit("post_mechanism", mechs[j], t)
            self._emit("post_resolution", dict(zip(names, values[row].tolist())), t)
            self._emit("post_step", t)

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
        if bool(self.state.halted):
            e = self._fatal(
                " (the world is halted: nothing was run; call reset() or restore_checkpoint() to go on)")
            self._emit("error", e, self.step)
            raise e
        before = self.state
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=int(steps), unit="step", desc="simulating")
        left = int(steps)
        save = Save(every=1, fields=("value", "confidence"), fn=_proposed)
        try:
            while left > 0:
                n = min(left, self.chunk)
                first = int(self.state.step)
                start = time.perf_counter()
                new_state, traj = self.executive.run(self.state, n, save=save)
                values = np.asarray(traj.data["value"])  # waits for the device
                self.timings.append((n, time.perf_counter() - start))
                self.state = new_state
                rows = self._rows_committed(first, n)
                self._values.append(values[:rows])
                self._confidences.append(np.asarray(traj.data["confidence"])[:rows])
                left -= n
                if bar is not None:
                    bar.update(n)
                self._deliver(traj, first, rows)
                if bool(self.state.halted):
                    break
        finally:
            if bar is not None:
                bar.close()
        try:
            self._raise_recorded(before)
        except (InvariantViolationFatal, InvalidProposalError, NonFiniteResolutionError) as e:
            self._emit("error", e, self.step)
            raise

    def _rows_committed(self, first: int, n: int) -> int:
        """How many of a chunk's ``n`` rows (steps ``first``, ``first + 1``, ...) hold
        committed values: all of them, unless a FATAL invariant halted the world, whose
        later steps ran as no-ops. A POST invariant halts after its step's commit."""
        if not bool(self.state.halted):
            return n
        inv = self._halting()
        last = int(self.state.halted_at) + (inv is not None and inv.phase is InvariantPhase.POST)
        return max(0, min(n, last - first))

    def _fatal(self, note: str = "") -> InvariantViolationFatal:
        inv = self._halting()
        if inv is None:
            return InvariantViolationFatal("<removed>", "the invariant that halted the world was removed since"
                                           + note, int(self.state.halted_at))
        return InvariantViolationFatal(inv.name, inv.message + note, int(self.state.halted_at))

    def _halting(self):
        """The invariant that halted the world (None if it was removed since)."""
        i = int(self.state.halted_by)
        return self.executive.invariants[i] if i >= 0 else None

    def _raise_recorded(self, before: State) -> None:
        s = self.state
        layout = s.layout
        if bool(s.halted) and not bool(before.halted):
            raise self._fatal()
        for error, names, count, first in (
            (InvalidProposalError, layout.mechanisms, "invalid_proposals", "invalid_first_step"),
            (NonFiniteResolutionError, layout.variables, "nonfinite_resolved", "nonfinite_first_step"),
        ):
            now = np.asarray(getattr(s, count))
            grew = np.flatnonzero(now > np.asarray(getattr(before, count)))
            if grew.size:
                i = int(grew[0])
                raise error(names[i], int(np.asarray(getattr(s, first))[i]), int(now[i]))
        new_domain = np.asarray(s.domain_violations) - np.asarray(before.domain_violations)
        if np.any(new_domain > 0):
            names = [layout.variables[i] for i in np.flatnonzero(new_domain > 0)]
            warnings.warn(
                f"resolved values fell outside the domain of {names} "
                f"({int(new_domain.sum())} events; see state.domain_violations)",
                RuntimeWarning,
                stacklevel=3,
            )

    # ---- structure changes (a new executive, the state carried over) ------------
    def _restructure(self, executive: Executive) -> None:
        self.state = executive.carry_over(self.state)
        self.executive = executive

    def add_mechanism(self, mechanism) -> None:
        """Add a mechanism; values, memory, statistics and counters are kept."""
        self._restructure(self.executive.add_mechanism(mechanism))

    def remove_mechanism(self, name) -> None:
        self._restructure(self.executive.remove_mechanism(name))

    def add_invariant(self, invariant) -> None:
        self._restructure(self.executive.add_invariant(invariant))

    def remove_invariant(self, name) -> None:
        self._restructure(self.executive.remove_invariant(name))

    def run_experiment(self, steps: int, *, save: Save | None = Save()):
        """A what-if run from the current state: returns ``(state, trajectory)`` and
        leaves the simulation where it was."""
        return self.executive.run(self.state, steps, save=save)

    def timing_report(self) -> dict:
        """Wall-clock figures of the runs so far (the first includes compilation)."""
        steps = sum(n for n, _ in self.timings)
        total = sum(t for _, t in self.timings)
        later = self.timings[1:]
        warm_steps = sum(n for n, _ in later)
        warm_time = sum(t for _, t in later)
        return {
            "runs": len(self.timings),
            "steps": steps,
            "seconds": total,
            "first_run_seconds": self.timings[0][1] if self.timings else 0.0,
            "steps_per_second_after_first": warm_steps / warm_time if warm_time > 0 else float("nan"),
        }

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
        """The current state, history length and executive (values; nothing is copied)."""
        return Checkpoint(self.state, sum(len(v) for v in self._values), self.executive, self._owner)

    def restore_checkpoint(self, checkpoint: Checkpoint) -> None:
        """Go back to a checkpoint; the history is cut back to it.

        A checkpoint taken before a structure change (``add_mechanism``,
        ``remove_invariant``, ...) of this simulation brings back the structure it
        was taken with: its mechanisms, invariants and their flags.
        """
        if not isinstance(checkpoint, Checkpoint):
            raise TypeError("restore_checkpoint needs a Checkpoint from create_checkpoint()")
        ours = checkpoint.owner is self._owner and checkpoint.executive is not None
        if checkpoint.state.layout != self.state.layout and not ours:
            raise ValueError(
                "this checkpoint belongs to a simulation of another model "
                f"(mechanisms {list(checkpoint.state.layout.mechanisms)}, here "
                f"{list(self.state.layout.mechanisms)}); restore it in the simulation that created it"
            )
        if ours:
            self.executive = checkpoint.executive
        self.state = checkpoint.state
        values = np.concatenate(self._values)[: checkpoint.history_length]
        confs = np.concatenate(self._confidences)[: checkpoint.history_length]
        self._values, self._confidences = [values], [confs]


def _proposed(state):
    return state.proposed
