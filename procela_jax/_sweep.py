"""Sweeps: one executive over a batch of scenarios, on every device, in bounded memory."""

from __future__ import annotations

from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._distributed import addressable_rows, gather_rows
from ._errors import ModelError
from ._executive import Executive
from ._paths import parameter
from ._plan import VALUES_BUDGET, TracePlan, choose_plan, lowering
from ._save import Save, Trajectory
from ._state import State
from ._step import run_impl, starts_joined
from ._sweep_inputs import _inputs
from ._sweep_plan import _DEFAULT, _block_plan, _placement, _save_spec, _stat_key, _summary_spec

#: Incremented each time a sweep function is traced (tests use it to catch recompiles).
TRACES = {"init": 0, "block": 0, "reduce": 0}

class SweepInterrupted(KeyboardInterrupt):
    """Raised by :func:`sweep` when it is interrupted (Ctrl-C); ``.result`` holds
    what finished: whole chunks of scenarios (``result.done``), or, with
    ``summaries=``, the saved steps reduced so far."""

    def __init__(self, result: SweepResult):
        self.result = result
        done = int(result.done.sum())
        super().__init__(
            f"sweep interrupted: {done} of {len(result.done)} scenarios finished, "
            f"{len(result.steps)} saved steps kept; the partial result is in .result"
        )


class SweepResult:
    """The outcome of :func:`sweep`; every array is a read-only NumPy array on the host.

    - ``value(name)``, ``confidence(name)``, ``field(name, field)``: per-scenario
      trajectories, shape ``(scenarios, saved steps)`` (``trajectory`` holds them
      all, as a :class:`Trajectory` with a leading scenario axis).
    - ``summary(name, stat, field="value")``: a reduction across scenarios,
      shape ``(saved steps,)``, when the sweep ran with ``summaries=``;
      ``summaries`` holds them all as ``{field: {"mean" | "std" | "min" | "max" |
      "q<quantile>": (saved steps, variables)}}`` (variables in ``summary_names``).
    - ``steps``: the global step of each saved row, ``(saved steps,)``.
    - ``final``: the batched final :class:`State` (leading scenario axis).
    - ``halted``, ``halted_at``, ``halted_by``: which scenarios a FATAL invariant
      stopped, when, and which (index into ``invariants``; -1 if none).
    - ``inputs``: a :class:`SweepInputs`, row ``i`` giving what produced row ``i``.
    - ``rows``: the global row of each local row (all rows on one process).
    - ``done``: rows that finished (all True unless the sweep was interrupted).
    - ``info``: chunking, devices, blocks and memory estimates.
    """

    def __init__(self, *, trajectory, summaries, summary_names, steps, final, halted, halted_at,
                 halted_by, inputs, rows, done, invariants, info):
        self.trajectory = trajectory
        self.summaries = summaries
        self.summary_names = summary_names
        self.steps = steps
        self.final = final
        self.halted = halted
        self.halted_at = halted_at
        self.halted_by = halted_by
        self.inputs = inputs
        self.rows = rows
        self.done = done
        self.invariants = invariants
        self.info = info

    def __len__(self) -> int:
        return len(self.rows)

    def __repr__(self):
        kept = "summaries" if self.summaries is not None else (
            "trajectories" if self.trajectory is not None else "final states")
        return (f"SweepResult({len(self)} scenarios, {len(self.steps)} saved steps, {kept}, "
                f"{int(self.halted.sum())} halted)")

    # ---- per-scenario trajectories ---------------------------------------------
    def _traj(self) -> Trajectory:
        if self.trajectory is None:
            why = ("the sweep kept only summaries across scenarios (summaries=...); use "
                   "res.summary(name, stat)") if self.summaries is not None else (
                "the sweep ran with save=None (or fewer steps than save.every)")
            raise KeyError(f"no per-scenario trajectories: {why}")
        return self.trajectory

    def field(self, name, field: str) -> np.ndarray:
        """``(scenarios, saved steps)`` of a saved field of a variable."""
        return self._traj().field(name, field)

    def value(self, name) -> np.ndarray:
        """``(scenarios, saved steps)``: the value of ``name`` after each saved step."""
        return self.field(name, "value")

    def confidence(self, name) -> np.ndarray:
        return self.field(name, "confidence")

    # ---- summaries across scenarios --------------------------------------------
    def summary(self, name, stat="mean", field: str = "value") -> np.ndarray:
        """``(saved steps,)``: ``stat`` (``"mean"``, ``"std"``, ``"min"``, ``"max"``, or a
        quantile in [0, 1] such as ``0.5`` or ``"q0.5"``) of ``field`` of ``name`` across scenarios."""
        if self.summaries is None:
            raise KeyError("the sweep kept no summaries; run it with summaries=(...)")
        name = getattr(name, "name", name)
        if field not in self.summaries:
            raise KeyError(f"field {field!r} was not summarised; summarised fields: {list(self.summaries)}")
        stats = self.summaries[field]
        key = _stat_key(stat)
        if key not in stats:
            raise KeyError(f"statistic {stat!r} was not kept; kept: {list(stats)}")
        if name not in self.summary_names:
            raise KeyError(f"variable {name!r} was not summarised; summarised: {list(self.summary_names)}")
        return stats[key][:, self.summary_names.index(name)]

    def halt_reasons(self) -> dict[int, tuple[str, int]]:
        """``{row: (invariant name, step)}`` for each halted scenario."""
        return {int(i): (self.invariants[int(self.halted_by[i])], int(self.halted_at[i]))
                for i in np.flatnonzero(self.halted & self.done)}

    def to_xarray(self, ex: Executive | None = None):
        """An ``xarray.Dataset``: each saved field with dims ``(scenario, step,
        variable)``, inputs as coordinates (schema in ``procela_jax._labelled``).

        >>> import procela_jax as pj
        >>> pj.sweep(pj.demos.sir.make_executive(), 4, seeds=[0, 1]).to_xarray()["value"].shape
        (2, 4, 3)
        """
        from ._labelled import to_xarray

        return to_xarray(self, ex)

    @property
    def nbytes(self) -> int:
        """Bytes of the arrays this result holds on the host."""
        leaves = jax.tree.leaves((self.trajectory, self.summaries, self.final, self.steps))
        size = lambda x: (jax.random.key_data(x).nbytes
                          if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key) else x.nbytes)
        return int(sum(size(x) for x in leaves))


# ------------------------------------------------------------------------------
def sweep(
    ex: Executive,
    steps: int,
    *,
    seeds=None,
    keys=None,
    init: Mapping | None = None,
    params: Mapping | None = None,
    save: Save | None = _DEFAULT,
    save_every: int | None = None,
    variables=None,
    fields=None,
    summaries=None,
    chunk_size: int | None = None,
    devices=None,
    keep_final: bool = True,
    block_steps: int | None = None,
    progress: bool = False,
) -> SweepResult:
    """Run one executive over a batch of scenarios; row ``i`` is scenario ``i``.

    Scenario ``i`` starts from ``ex.replace(params_i).init(key_i, init=init_i)`` and
    runs ``steps`` steps as ``ex.run`` would: row ``i`` of a sweep with seed ``s``
    equals ``ex.run(ex.init(jax.random.key(s)), steps)``. Rows never depend on the
    number of devices or the chunk size (bit for bit). Against a single ``ex.run``
    they agree bit for bit in the SIR demo and in general to the last bit or so:
    XLA may fuse ``a * b + c`` into one multiply-add in batched code and not in
    single code, or the other way round (``XLA_FLAGS=--xla_cpu_max_isa=AVX``, a CPU
    without FMA, makes them identical).

    Arguments:
        ex: the executive.
        steps: steps per scenario.
        seeds: one int per scenario (or one int for all); default: seed 0 for every
            scenario (common random numbers).
        keys: PRNG keys instead of seeds, one per scenario.
        init: ``{variable: values}``, one initial value per scenario.
        params: ``{"<mechanism>.<field>": values}`` (or ``"<variable>.init"``), one
            value per scenario (shape ``(scenarios, *parameter shape)``).
            ``seeds``, ``init`` and ``params`` are zipped: their lengths must agree.
            Use :func:`grid` for Cartesian products.
        save: a :class:`Save` (every, variables, fields, fn), or ``None`` to keep only
            final states. ``save_every``, ``variables`` and ``fields`` are shorthands
            for ``Save(every=..., variables=..., fields=...)``.
        summaries: keep only reductions across scenarios of what ``save`` selects, per
            saved step, computed on device: a tuple of ``"mean"``, ``"std"``, ``"min"``,
            ``"max"`` and quantiles (numbers in [0, 1]); ``True`` for
            ``DEFAULT_SUMMARIES``. Per-scenario trajectories are then not kept.
        chunk_size: scenarios per compiled chunk (default: all of them, or as many as
            fit the device memory). Every chunk is padded to ``chunk_size`` rows
            (rounded up to a multiple of the number of devices), so sweeps with one
            chunk size share one compile whatever their number of scenarios. Rows per
            device are rounded up to a multiple of ``ROW_TILE`` (8).
        devices: devices (or a 1-D mesh with axis ``"scenarios"``) to spread the
            scenarios over; default every device (of every process, after
            ``jax.distributed.initialize()``).
        keep_final: keep the batched final states (``res.final``).
        block_steps: steps per host-side block (a multiple of ``save.every``); the
            progress bar and an interruption act between blocks. Default: the whole
            run, or about ten blocks with ``progress=True``.
        progress: show a tqdm progress bar over chunks and blocks.

    Execution: scenarios are cut into chunks of ``C = devices * per_device`` rows
    (the last one padded), each a global array sharded over a 1-D mesh of the
    devices (``NamedSharding`` on the scenario axis). One ``jit`` of
    ``vmap(init then run)`` serves the first block of every chunk and one of
    ``vmap(run)`` the later blocks; the run is traced for a batch (each variable
    resolved from its proposals one by one, the resolution and each random-number
    hash computed once, in a branch of their own, ring buffers written by scatter:
    the same numbers, laid out for thousands of rows). Without summaries the host
    loops over chunks, then over blocks of steps (the results of a single chunk on
    a single device are its output buffers themselves); with summaries all
    chunks advance block by block and each block's saved values (every scenario)
    are reduced on one device, so the statistics do not depend on the chunking.
    Several processes: each feeds and keeps the rows on its own devices
    (``res.rows``); summaries are gathered so every process holds all of them.

    Interruption: Ctrl-C raises :class:`SweepInterrupted` (a ``KeyboardInterrupt``)
    whose ``.result`` keeps every finished chunk (``result.done``) or, with
    summaries, every finished block of saved steps.

    Memory, with ``n`` scenarios, ``K = steps // every`` saved steps, ``V`` saved
    variables, ``F`` saved fields of ``b`` bytes (4 in float32), ``Σ`` bytes of one
    scenario's state (``ex.abstract_state()``), ``Q`` statistics, ``C`` rows per
    chunk and ``B`` saved steps per block:

    - host, trajectories: ``n·K·(V·F·b + 4)`` (+ ``Save.fn`` output) ``+ n·Σ`` (final
      states; ``keep_final=False`` drops them) ``+ 4·K`` (``res.steps``);
    - host, summaries: ``K·Q·V·F·b + n·Σ + 4·K``;
    - device, trajectories: about ``2·C·(2Σ + B·(V·F·b + 4))`` (two blocks in flight);
    - device, summaries: ``n·Σ`` (every chunk's state stays resident)
      ``+ 2·n·B·V·F·b`` (one block of values, gathered); ``B`` is chosen so that
      ``n·B·V·F·b`` stays under 256 MiB.

    The SIR demo has ``Σ = 1,254`` bytes: 100,000 scenarios for 365 days keeping four
    daily summaries of ``I`` hold ``365·4·4`` bytes of summaries and 125 MB of final
    states; the whole process peaks at about 1 GiB (``benchmarks/bench_scale.py``;
    ``tests/test_sweep.py`` checks it stays under 4 GiB).

    >>> import jax.numpy as jnp, procela_jax as pj
    >>> ex = pj.demos.sir.make_executive()
    >>> res = pj.sweep(ex, steps=30, seeds=range(4), init={"I": jnp.linspace(1, 50, 4)},
    ...                params={"sir.beta": jnp.array([0.2, 0.3, 0.4, 0.5])})
    >>> res.value("I").shape, res.final.values.shape
    ((4, 30), (4, 3))
    >>> s = pj.sweep(ex, steps=30, seeds=range(8), summaries=("mean", 0.5), variables=["I"])
    >>> s.summary("I", 0.5).shape
    (30,)
    """
    if not isinstance(ex, Executive):
        raise TypeError(f"sweep needs an Executive, got {type(ex).__name__}")
    if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 0:
        raise ModelError(f"sweep: steps must be a non-negative int, got {steps!r}")
    steps = int(steps)
    spec = _inputs(ex, seeds, keys, init, params)
    save = _save_spec(ex, save, save_every, variables, fields)
    stats = _summary_spec(summaries, save)
    placement, sizes, n_blocks_hint = _placement(ex, spec, steps, save, stats, chunk_size, devices, progress)
    cap = None
    if stats is not None:  # one block of every scenario's saved values stays under VALUES_BUDGET
        names = save.variables if save.variables is not None else ex.layout.variables
        per_save = spec.n * len(names) * len(save.fields) * np.dtype(ex.dtype).itemsize
        cap = max(1, VALUES_BUDGET // max(1, per_save))
    plan = _block_plan(steps, save, block_steps, n_blocks_hint, cap)
    runner = _Runner(ex, spec, steps, save, stats, placement, plan, keep_final, progress, sizes)
    return runner.run()


# ---- the compiled pieces ------------------------------------------------------
def _with_params(ex: Executive, mech: dict, init_conf: dict) -> Executive:
    for path, value in mech.items():
        param = parameter(ex, path)
        ex = param.set(ex, jnp.asarray(value, getattr(param.get(ex), "dtype", None)))
    if init_conf:
        conf = ex.init_confidences
        for j, c in init_conf.items():
            conf = conf.at[j].set(c)
        ex = eqx.tree_at(lambda e: e.init_confidences, ex, conf)
    return ex


class _Start(eqx.Module):
    """The inputs of a chunk's initial states, handed to its first block: initialised
    inside the block's computation, the leaves every row starts with alike (the
    step, the active policies, the enabled mechanisms, ...) stay unbatched in the
    loop as long as no row changes them, instead of being carried once per row."""

    key_data: jax.Array
    init: dict
    impl: str = eqx.field(static=True)

    def state(self, ex: Executive) -> State:
        """One row's initial state (under ``vmap``)."""
        return ex.init(jax.random.wrap_key_data(self.key_data, impl=self.impl), init=self.init or None)


@eqx.filter_jit
def _init_chunk(ex, start, mech, init_conf, sharding):
    """The initial states alone (a sweep of 0 steps)."""
    TRACES["init"] += 1
    out = jax.vmap(lambda s, mp, ic: s.state(_with_params(ex, mp, ic)))(start, mech, init_conf)
    return jax.lax.with_sharding_constraint(out, sharding)


def _run_block(ex, mech, init_conf, state, steps, save, sharding, gate, plan: TracePlan):
    """``steps`` steps of every row (``state`` a batched State, or a ``_Start``),
    traced in the form ``plan`` chooses for a batch, with its threefry lowering
    (``_jit.batched_threefry`` on the CPU: the same bits). ``gate``: a replicated
    ``True`` for ``_hints.fence``, or None."""
    with lowering(plan):
        return _run_block_jit(ex, mech, init_conf, state, steps, save, sharding, gate, plan)


@eqx.filter_jit
def _run_block_jit(ex, mech, init_conf, state, steps, save, sharding, gate, plan):
    TRACES["init" if isinstance(state, _Start) else "block"] += 1

    def one(mp, ic, s):
        exi = _with_params(ex, mp, ic)
        if isinstance(s, _Start):
            s = s.state(exi)
        return run_impl(exi, s, steps, save, False, plan, gate)

    out = jax.vmap(one)(mech, init_conf, state)
    return jax.lax.with_sharding_constraint(out, sharding)


@eqx.filter_jit
def _reduce(values, stats, dtype):
    """Statistics across scenarios (axis 0) of ``{field: (n, B, V)}``, in ``stats`` order."""
    TRACES["reduce"] += 1
    qs = [s for s in stats if not isinstance(s, str)]
    named = {"mean": jnp.mean, "std": jnp.std, "min": jnp.min, "max": jnp.max}
    out = {}
    for field, x in values.items():
        x = x.astype(dtype)
        q = jnp.quantile(x, jnp.asarray(qs, dtype), axis=0) if qs else None
        out[field] = tuple(named[s](x, axis=0) if isinstance(s, str) else q[qs.index(s)] for s in stats)
    return out


# ---- the host loop ------------------------------------------------------------
class _HostState:
    """Host buffers of the batched final states, allocated from the first chunk
    (a typed key is kept as its key data)."""

    def __init__(self, n_local: int):
        self.n_local = n_local
        self.bufs = None

    def _leaves(self, state: State) -> list:
        """``state``'s leaves, typed keys as their key data (their implementations and
        the tree structure are noted)."""
        leaves, self.treedef = jax.tree.flatten(state)
        self.impls = [str(jax.random.key_impl(x)) if _is_key(x) else None for x in leaves]
        return [jax.random.key_data(x) if i else x for x, i in zip(leaves, self.impls)]

    def write(self, state: State, put):
        leaves = self._leaves(state)
        if self.bufs is None:
            self.bufs = [np.zeros((self.n_local, *x.shape[1:]), x.dtype) for x in leaves]
        for buf, x in zip(self.bufs, leaves):
            put(buf, x)

    def adopt(self, state: State, rows: int):
        """Keep the first ``rows`` rows of ``state``'s own host buffers (one device
        on the CPU: numpy views, no copy)."""
        self.bufs = [np.asarray(x)[:rows] for x in self._leaves(state)]

    def tree(self) -> State | None:
        if self.bufs is None:
            return None
        leaves = [jax.random.wrap_key_data(b, impl=i) if i else b for b, i in zip(self.bufs, self.impls)]
        return jax.tree.unflatten(self.treedef, leaves)


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


class _Runner:
    def __init__(self, ex, spec, steps, save, stats, placement, plan, keep_final, progress, sizes):
        self.ex, self.spec, self.steps, self.save, self.stats = ex, spec, steps, save, stats
        self.pl, self.plan, self.keep_final = placement, plan, keep_final
        n = spec.n
        C = placement.chunk
        self.n_chunks = -(-n // C)
        self.rows = placement.local_rows(n) if jax.process_count() > 1 else np.arange(n)
        self.local_of = None
        if jax.process_count() > 1:
            self.local_of = {int(g): i for i, g in enumerate(self.rows)}
        self.n_local = len(self.rows)
        self.impl = spec.inputs.key_impl
        self.ex_rep = jax.tree.map(lambda x: placement.put_replicated(x) if eqx.is_array(x) else x, ex)
        # fences (_hints.fence) are conditionals on this: on the CPU only, where
        # they save work; elsewhere a conditional reads its predicate on the host
        on_cpu = placement.mesh.devices.flat[0].platform == "cpu"
        # every scenario starts from ex.init
        self.trace_plan = choose_plan(ex, batch=placement.chunk, backend="cpu" if on_cpu else "gpu",
                                      all_joined=starts_joined(ex))
        self.gate = placement.put_replicated(np.asarray(True)) if self.trace_plan.fence else None
        from tqdm.auto import tqdm

        self.bar = tqdm(total=n * steps, unit="step", unit_scale=True, desc="sweep (scenario-steps)",
                        disable=not progress or jax.process_index() != 0, leave=False)
        # one chunk on one device of one process: its outputs are the results (on the
        # CPU, numpy views of the device buffers) instead of being copied into them
        self.adopt = self.n_chunks == 1 and placement.n_devices == 1 and jax.process_count() == 1
        self.done = np.zeros(self.n_local, bool)
        self.final = _HostState(self.n_local) if keep_final else None
        self.halted = np.zeros(self.n_local, bool)
        self.halted_at = np.full(self.n_local, -1, np.int32)
        self.halted_by = np.full(self.n_local, -1, np.int32)
        self.info = dict(
            scenarios=n, local_scenarios=self.n_local, devices=placement.n_devices,
            per_device=placement.per_device, chunk_size=C, chunks=self.n_chunks,
            block_steps=[b for b, _ in plan.blocks], every=plan.every,
            processes=jax.process_count(), process_index=jax.process_index(),
            **sizes,
        )

    # -- placing rows ---------------------------------------------------------
    def _chunk_inputs(self, c):
        n, C = self.spec.n, self.pl.chunk
        lo, hi = c * C, min((c + 1) * C, n)
        idx = np.concatenate([np.arange(lo, hi), np.full(C - (hi - lo), lo, np.int64)])  # pads repeat a real row
        put = lambda a: self.pl.put_rows(np.ascontiguousarray(a[idx]))
        arrays = (put(self.spec.inputs.key_data), {k: put(v) for k, v in self.spec.init.items()},
                  {k: put(v) for k, v in self.spec.mech.items()}, {k: put(v) for k, v in self.spec.init_conf.items()})
        return arrays, hi - lo

    def _start(self, c):
        """``(start, mech, init_conf, real rows)`` of chunk ``c``: ``start`` is what its
        first block begins from (the initial states themselves when no block runs)."""
        (kd, iv, mp, ic), real = self._chunk_inputs(c)
        start = _Start(key_data=kd, init=iv, impl=self.impl)
        if self.plan.blocks:
            return start, mp, ic, real
        return _init_chunk(self.ex_rep, start, mp, ic, self.pl.rows), mp, ic, real

    def _writer(self, c, time_slice=None):
        """``put(buf, global_array)``: copy this process's real rows of chunk ``c`` into ``buf``."""
        n, C = self.spec.n, self.pl.chunk
        base = c * C

        def put(buf, x):
            if buf.size == 0:  # e.g. per-invariant counters of a model without invariants
                return
            for start, data in addressable_rows(x):
                g_lo = base + start
                g_hi = min(g_lo + len(data), n)
                if g_hi <= g_lo:
                    continue
                data = data[: g_hi - g_lo]
                l_lo = g_lo if self.local_of is None else self.local_of[g_lo]
                dst = buf[l_lo : l_lo + len(data)]
                if time_slice is not None:
                    dst = buf[l_lo : l_lo + len(data), time_slice]
                dst[...] = data
        return put

    def _local_range(self, c):
        n, C = self.spec.n, self.pl.chunk
        g = np.arange(c * C, min((c + 1) * C, n))
        if self.local_of is None:
            return g
        return np.asarray([self.local_of[int(i)] for i in g if int(i) in self.local_of], np.int64)

    def _keep_final(self, c, state):
        put = self._writer(c)
        if self.final is not None and self.adopt:
            self.final.adopt(state, self.n_local)
        elif self.final is not None:
            self.final.write(state, put)
        put(self.halted, state.halted)
        put(self.halted_at, state.halted_at)
        put(self.halted_by, state.halted_by)

    # -- the loops ------------------------------------------------------------
    def run(self) -> SweepResult:
        try:
            if self.stats is None:
                self._run_trajectories()
            else:
                self._run_summaries()
        except KeyboardInterrupt:
            self.bar.close()
            raise SweepInterrupted(self._result(complete=False)) from None
        self.bar.close()
        return self._result(complete=True)

    def _blocks(self):
        return list(self.plan.blocks)

    def _run_trajectories(self):
        ex, pl = self.ex_rep, self.pl
        blocks = self._blocks()
        self.traj = None
        # host copies lag one dispatch behind, so the device computes while the host copies
        pending: list[tuple[object, object]] = []  # (arrays it reads, copy)

        def drain(keep):
            while len(pending) > keep:
                pending.pop(0)[1]()

        try:
            for c in range(self.n_chunks):
                state, mp, ic, real = self._start(c)
                t0 = 0
                for steps_b, save_b in blocks:
                    state, traj = _run_block(ex, mp, ic, state, steps_b, save_b, pl.rows, self.gate, self.trace_plan)
                    if save_b is not None:
                        k = steps_b // save_b.every
                        pending.append((traj, self._copy_traj(c, traj, slice(t0, t0 + k), real * steps_b)))
                        t0 += k
                    else:
                        pending.append((state, lambda: None))
                        self.bar.update(real * steps_b)
                    drain(1)
                pending.append((state, self._finish_chunk(c, state)))
                drain(1)
            drain(0)
        except KeyboardInterrupt:  # keep what the device already finished, wait for nothing else
            # (a key leaf comes out of the same computation as the other leaves)
            while pending and all(x.is_ready() for x in jax.tree.leaves(pending[0][0]) if not _is_key(x)):
                pending.pop(0)[1]()
            raise

    def _copy_traj(self, c, traj, tslice, amount):
        def f():
            if self.adopt and tslice == slice(0, self.plan.n_saves):  # the whole trajectory at once
                self.traj = jax.tree.map(lambda x: np.asarray(x)[: self.n_local], traj)
                self.bar.update(amount)
                return
            if self.traj is None:
                self.traj = self._allocate_trajectory(traj)
            put = self._writer(c, tslice)
            for buf, x in zip(jax.tree.leaves(self.traj), jax.tree.leaves(traj)):
                put(buf, x)
            self.bar.update(amount)
        return f

    def _finish_chunk(self, c, state):
        def f():
            self._keep_final(c, state)
            self.done[self._local_range(c)] = True
        return f

    def _allocate_trajectory(self, traj):
        K = self.plan.n_saves

        def alloc(x):
            shape = (self.n_local, K, *x.shape[2:])
            if np.issubdtype(x.dtype, np.floating):
                return np.full(shape, np.nan, x.dtype)
            return np.zeros(shape, x.dtype)

        return jax.tree.map(alloc, traj)

    def _run_summaries(self):
        ex, pl = self.ex_rep, self.pl
        blocks = self._blocks()
        names = self.save.variables if self.save.variables is not None else self.ex.layout.variables
        self.summary_names = tuple(names)
        K = self.plan.n_saves
        dtype = np.dtype(self.ex.dtype)
        self.sums = {f: {_stat_key(s): np.full((K, len(names)), np.nan, dtype) for s in self.stats}
                     for f in self.save.fields}
        self.sums_done = 0
        chunks = []
        for c in range(self.n_chunks):
            chunks.append(list(self._start(c)))
        dev0 = jax.local_devices()[0]
        t0 = 0
        for steps_b, save_b in blocks:
            parts = []
            for ch in chunks:
                ch[0], traj = _run_block(ex, ch[1], ch[2], ch[0], steps_b, save_b, pl.rows, self.gate, self.trace_plan)
                if save_b is not None:
                    parts.append((traj.data, ch[3]))
            if save_b is not None:
                values = {f: self._gather(parts, f, dev0) for f in self.save.fields}
                red = _reduce(values, self.stats, dtype)
                k = steps_b // save_b.every
                for f, per in red.items():
                    for stat, arr in zip(self.stats, per):
                        self.sums[f][_stat_key(stat)][t0 : t0 + k] = np.asarray(arr)
                t0 += k
                self.sums_done = t0
            else:
                jax.block_until_ready(chunks[-1][0])
            self.bar.update(self.spec.n * steps_b)
        for c, ch in enumerate(chunks):
            self._keep_final(c, ch[0])
            self.done[self._local_range(c)] = True

    def _gather(self, parts, field, dev0):
        """Every real row of one block's values of ``field``, on one local device."""
        if jax.process_count() == 1:
            pieces = [jax.device_put(data[field], dev0)[:real] for data, real in parts]
        else:
            pieces = [jax.device_put(gather_rows(data[field])[:real], dev0) for data, real in parts]
        return pieces[0] if len(pieces) == 1 else jnp.concatenate(pieces, axis=0)

    # -- the result -----------------------------------------------------------
    def _result(self, complete: bool) -> SweepResult:
        every = self.plan.every
        if self.stats is None:
            K = self.plan.n_saves
            traj = getattr(self, "traj", None)
            trajectory = None
            if traj is not None:
                names = self.save.variables if self.save.variables is not None else self.ex.layout.variables
                trajectory = Trajectory(data=traj.data, steps=traj.steps, extra=traj.extra, names=tuple(names))
            summaries, summary_names = None, None
        else:
            K = getattr(self, "sums_done", 0)
            summaries = {f: {s: a[:K] for s, a in per.items()} for f, per in getattr(self, "sums", {}).items()}
            summary_names = getattr(self, "summary_names", None)
            trajectory = None
        info = dict(self.info, complete=complete)
        final = self.final.bufs if self.final is not None else None
        kept = (trajectory, summaries, final, self.halted, self.halted_at, self.halted_by, self.done)
        for leaf in jax.tree.leaves(kept):
            if isinstance(leaf, np.ndarray):
                leaf.flags.writeable = False  # results, not work space (some are views of device buffers)
        return SweepResult(
            trajectory=trajectory,
            summaries=summaries,
            summary_names=summary_names,
            steps=(np.arange(1, K + 1, dtype=np.int32) * every),
            final=self.final.tree() if self.final is not None else None,
            halted=self.halted,
            halted_at=self.halted_at,
            halted_by=self.halted_by,
            inputs=self.spec.inputs if self.local_of is None else self.spec.inputs.take(self.rows),
            rows=self.rows,
            done=self.done,
            invariants=self.ex.layout.invariants,
            info=info,
        )

