"""Process: a named group of mechanisms that governance switches as one."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from ._errors import ModelError
from ._mechanism import Mechanism


@dataclasses.dataclass(frozen=True, eq=False, init=False)
class Process:
    """A named, ordered group of mechanisms (for example one family of competing
    theories), switched as one by governance: ``state.enable(process)``,
    ``state.disable(process)`` and ``state.is_enabled(process)`` (all members
    enabled) work inside ``jit`` with ``when=`` like their one-mechanism forms.

    Members are :class:`Mechanism` objects, mechanism names, or other processes:
    a process of processes is their composition (members concatenated in order,
    each once). Iterating a process yields its mechanism objects, so an
    executive is built with ``mechanisms=[*family_a, *family_b]``.

    Differences from the original: a process has no enabled flag of its own
    beside its members' (enabling it enables every member, so a member disabled
    on its own is enabled again), and processes are not run before the other
    mechanisms: the executive's mechanism order is the execution order.

    >>> import jax, jax.numpy as jnp, procela_jax as pj
    >>> X = pj.Variable("X", init=0.0)
    >>> class Const(pj.Mechanism):
    ...     v: float
    ...     def transform(self, values, key):
    ...         return {"X": pj.VariableRecord(jnp.asarray(self.v), confidence=0.5)}
    >>> low = pj.Process("low", [Const(v=1.0, writes=[X], name="a"), Const(v=2.0, writes=[X], name="b")])
    >>> high = pj.Process("high", [Const(v=9.0, writes=[X], name="c")])
    >>> ex = pj.Executive(variables=[X], mechanisms=[*low, *high])
    >>> s = ex.init(jax.random.key(0)).disable(high)
    >>> float(ex.step(s).value("X")), bool(s.is_enabled(low)), bool(s.is_enabled(pj.Process("all", [low, high])))
    (1.5, True, False)
    """

    name: str
    members: tuple[str, ...]
    mechanisms: tuple[Mechanism, ...]

    def __init__(self, name: str, mechanisms: Sequence[Mechanism | str | Process]):
        if not isinstance(name, str) or not name:
            raise ModelError(f"Process name must be a non-empty string, got {name!r}")
        if isinstance(mechanisms, (str, Mechanism, Process)):
            mechanisms = [mechanisms]
        names: list[str] = []
        objects: list[Mechanism] = []
        for m in mechanisms:
            if isinstance(m, Process):
                pairs = [(n, next((o for o in m.mechanisms if o.name == n), None)) for n in m.members]
            elif isinstance(m, Mechanism):
                pairs = [(m.name, m)]
            elif isinstance(m, str):
                pairs = [(m, None)]
            else:
                raise ModelError(
                    f"Process {name!r}: members must be mechanisms, mechanism names or processes, got {m!r}"
                )
            for n, obj in pairs:
                if n in names:
                    continue
                names.append(n)
                if obj is not None:
                    objects.append(obj)
        if not names:
            raise ModelError(f"Process {name!r} has no mechanisms")
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "members", tuple(names))
        object.__setattr__(self, "mechanisms", tuple(objects))

    def __iter__(self) -> Iterator[Mechanism]:
        return iter(self.mechanisms)

    def __add__(self, other: Process) -> Process:
        """``a + b``: the composition of two processes."""
        if not isinstance(other, Process):
            return NotImplemented
        return Process(f"{self.name}+{other.name}", [self, other])

    def __repr__(self):
        return f"Process({self.name!r}, {list(self.members)})"
