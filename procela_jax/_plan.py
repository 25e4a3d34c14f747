"""The trace plan: which form each stage of a step takes, chosen once, in one place.

A step can be laid out in several forms that compute the same numbers: one
scenario's step is a chain of tiny kernels, where XLA's CPU runtime mostly pays
for launching them, so elementwise forms that fuse win; a step traced for
thousands of scenarios (``sweep``) has large kernels, where the opposite holds.
A model's size matters too: a form that unrolls a Python loop over mechanisms or
slots compiles in time proportional to the model. :func:`choose_plan` makes every
such choice from the backend, the batch and the model's size; the result is a
static, printable value handed to the step, and tests force each form.
The thresholds below are the only size limits the step knows of (their timings
are in ``benchmarks/README.md``).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Literal

import jax

from ._jit import batched_threefry, unrolled_threefry

#: Slot tables of at most this many entries (variables x slots) are applied with
#: static slices, which XLA fuses into the step's elementwise kernels; larger
#: ones with one gather.
STATIC_SLOTS = 64
#: A batched step of at most this many slots resolves variable by variable.
BY_VARIABLE_SLOTS = 32
#: Ring buffers of at most this many entries are written with a masked blend in
#: a single run (one fused loop); larger or batched ones with a scatter.
BLEND_ENTRIES = 1 << 16
#: Bytes of one trajectory buffer written by the innermost loop of a single run:
#: rows are gathered in blocks of at most this size.
BLOCK_BYTES = 256
#: A sweep's rows per device are padded to a multiple of this. With one row per device XLA
#: drops the batch dimension and compiles scalar code, which may contract
#: ``a * b + c`` into multiply-adds differently from batched code; a few rows keep
#: every configuration on the same batched code (and fill one AVX2 vector).
ROW_TILE = 8
#: Bytes of per-scenario values one block of a sweep with ``summaries=`` may gather.
VALUES_BUDGET = 256 << 20
#: Mechanisms of one family with at least this many members are traced once and
#: applied with ``vmap``; smaller families are traced member by member.
FAMILY_MEMBERS = 4


@dataclasses.dataclass(frozen=True)
class TracePlan:
    """How a step is traced. Every combination computes the same values.

    - ``family_members``: families (mechanisms of one class and static
      configuration) with at least this many members are traced once and
      ``vmap``-ped over their stacked parameters; the others member by member.
    - ``slots``: ``"static"`` builds the hypothesis slots from static slices,
      ``"gather"`` with gathers of the proposals.
    - ``resolution``: ``"stacked"`` resolves ``(variables, slots)`` arrays with
      each policy group; ``"by_variable"`` resolves each variable's slots as
      scalars (columns of scenarios under ``vmap``).
    - ``memory``: ``"blend"`` writes the ring buffer with a masked blend,
      ``"scatter"`` one entry per variable.
    - ``stats``: ``"stacked"`` updates the statistics as one ``(n, 7)`` array,
      ``"columns"`` as seven columns.
    - ``block_rows``: gather saved rows in blocks (``_step.rows_per_block``).
    - ``materialize``: lay shared intermediates out once (``_hints.materialize``).
    - ``fence``: run the by-variable resolution as the taken branch of a
      conditional on a runtime ``True`` (``_hints.fence``).
    - ``hash``: the threefry lowering: ``"default"`` (JAX's), ``"unrolled"`` or
      ``"batched"`` (``_jit``).
    - ``commit``: ``"joined"`` commits the variables that have joined
      (``State.joined``: each step adds those with a writer enabled);
      ``"writable"`` commits every written variable, which is the same once
      all of them have joined, and lets XLA drop the per-variable masks. It is
      chosen only for a run that starts with every written variable joined.

    >>> import procela_jax as pj
    >>> ex = pj.demos.sir.make_executive()
    >>> pj.choose_plan(ex).resolution, pj.choose_plan(ex, batch=10_000).resolution
    ('stacked', 'by_variable')
    """

    family_members: int = FAMILY_MEMBERS
    slots: Literal["static", "gather"] = "static"
    resolution: Literal["stacked", "by_variable"] = "stacked"
    memory: Literal["blend", "scatter"] = "blend"
    stats: Literal["stacked", "columns"] = "stacked"
    block_rows: bool = True
    materialize: bool = False
    fence: bool = False
    hash: Literal["default", "unrolled", "batched"] = "default"
    commit: Literal["joined", "writable"] = "joined"

    def __post_init__(self):
        for name, allowed in (("slots", ("static", "gather")), ("resolution", ("stacked", "by_variable")),
                              ("memory", ("blend", "scatter")), ("stats", ("stacked", "columns")),
                              ("hash", ("default", "unrolled", "batched")), ("commit", ("joined", "writable"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"TracePlan.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not isinstance(self.family_members, int) or self.family_members < 1:
            raise ValueError(f"TracePlan.family_members must be an int >= 1, got {self.family_members!r}")

    def replace(self, **changes) -> TracePlan:
        """A copy with some choices changed (``plan.replace(resolution="stacked")``)."""
        return dataclasses.replace(self, **changes)


def choose_plan(ex, *, batch: int | None = None, backend: str | None = None, traced: bool = False,
                all_joined: bool = False) -> TracePlan:
    """The plan for ``ex``: a single run (``batch=None``) or a sweep of ``batch``
    scenarios per device, on ``backend`` (default: JAX's default backend).
    ``traced``: the run is itself inside a transformation (``grad``, ``vmap``, an
    outer ``jit``), whose lowering the engine does not choose. ``all_joined``:
    every written variable of the state(s) the run starts from has joined
    (``State.joined``).

    >>> import procela_jax as pj
    >>> plan = pj.choose_plan(pj.demos.sir.make_executive())
    >>> plan.slots, plan.memory, plan.stats
    ('static', 'blend', 'stacked')
    """
    backend = backend or jax.default_backend()
    cpu = backend == "cpu"
    tables = ex.tables
    n = len(tables.slot_prop)
    width = len(tables.slot_prop[0]) if n else 0
    slots = n * width
    entries = n * max((v.memory for v in ex.variables), default=1)
    batched = batch is not None
    by_variable = (batched and 0 < slots <= BY_VARIABLE_SLOTS and not ex.audit
                   and not any(v.validators for v in ex.variables))
    if not cpu or traced:
        hash_ = "default"
    else:
        hash_ = "batched" if batched else "unrolled"
    return TracePlan(
        slots="static" if slots <= STATIC_SLOTS else "gather",
        resolution="by_variable" if by_variable else "stacked",
        memory="scatter" if batched or entries > BLEND_ENTRIES else "blend",
        stats="columns" if batched else "stacked",
        block_rows=not batched,
        materialize=batched and cpu,
        fence=batched and by_variable and cpu,
        hash=hash_,
        commit="writable" if all_joined else "joined",
    )


def lowering(plan: TracePlan):
    """The threefry lowering ``plan.hash`` names, while the enclosed code traces and
    compiles (a context manager; ``"default"`` changes nothing)."""
    if plan.hash == "unrolled":
        return unrolled_threefry()
    if plan.hash == "batched":
        return batched_threefry()
    return contextlib.nullcontext()
