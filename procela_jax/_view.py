"""View: the read-only snapshot handed to mechanisms, invariants and signals."""

from __future__ import annotations



from ._state import State
from ._statistics import Stats


class View:
    """A read-only view of a :class:`State` (and, in the RUNTIME phase, of the
    pending hypotheses).

    ``view["X"]`` is the value last committed to ``X``; ``view.step`` the global
    step; ``view.stats("X")``, ``view.confidence("X")``, ``view.recent("X")``,
    ``view.is_enabled("m")``, ``view.policy_index("X")``, ``view.violations("inv")``,
    ``view.aux``;
    ``view.pending("X")`` (RUNTIME only) gives the slot arrays
    ``values, confidences, weights, mask, sources`` of the hypotheses awaiting
    resolution, in mechanism order (``view.hypotheses(name)`` is the same).

    >>> import jax, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=3.0)], mechanisms=[])
    >>> view = pj.View(ex.init(jax.random.key(0)))
    >>> float(view["X"]), int(view.step)
    (3.0, 0)
    """

    __slots__ = ("state", "_pending", "_allowed", "_owner", "accessed")

    def __init__(self, state: State, pending=None, *, allowed=None, owner=None):
        self.state = state
        self._pending = pending
        self._allowed = allowed
        self._owner = owner
        self.accessed = set()

    def _check(self, name):
        name = getattr(name, "name", name)
        self.state.layout.var(name)  # raises a KeyError naming the known variables
        if self._allowed is not None and name not in self._allowed:
            self.accessed.add(name)
        return name

    def __getitem__(self, name):
        return self.state.value(self._check(name))

    def value(self, name):
        return self[name]

    @property
    def step(self):
        return self.state.step

    @property
    def aux(self):
        return self.state.aux

    @property
    def values(self):
        """Every variable's value, as a dict."""
        return {n: self.state.values[..., i] for i, n in enumerate(self.state.layout.variables)}

    def confidence(self, name):
        return self.state.confidence(self._check(name))

    def stats(self, name) -> Stats:
        return self.state.stats(self._check(name))

    def recent(self, name):
        return self.state.recent(self._check(name))

    def is_enabled(self, name):
        return self.state.is_enabled(name)

    def policy_index(self, name):
        return self.state.policy_index(self._check(name))

    @property
    def safe_mode(self):
        return self.state.safe_mode

    def pending(self, name):
        """The pending hypotheses of a variable (RUNTIME phase only)."""
        if self._pending is None:
            raise RuntimeError(
                "pending hypotheses are only visible in the RUNTIME phase "
                "(InvariantPhase.RUNTIME); this view has none"
            )
        i = self.state.layout.var(self._check(name))
        return {k: v[i] for k, v in self._pending.items()}

    def hypotheses(self, name):
        """Alias of :meth:`pending`: the hypotheses awaiting resolution (RUNTIME)."""
        return self.pending(name)

    def violations(self, name):
        """How many times an invariant has been violated so far."""
        return self.state.violations(name)

    def __repr__(self):
        return f"View(step={self.state.step}, variables={list(self.state.layout.variables)})"



