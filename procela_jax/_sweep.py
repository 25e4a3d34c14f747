"""Sweeps: one executive over a batch of scenarios, on every device, in bounded memory."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import math
import os
from collections.abc import Mapping

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._distributed import Placement, addressable_rows, gather_rows, scenario_mesh
from ._errors import ModelError
from ._executive import Executive
from ._jit import batched_threefry
from ._paths import parameter
from ._plan import TracePlan, choose_plan
from ._step import run_impl
from ._save import Save, Trajectory
from ._state import State

#: Statistics ``summaries=`` understands by name (numbers in [0, 1] are quantiles).
SUMMARY_STATS = ("mean", "std", "min", "max")
#: ``summaries=True`` keeps these.
DEFAULT_SUMMARIES = ("mean", "std", "min", "max", 0.05, 0.25, 0.5, 0.75, 0.95)
#: Incremented each time a sweep function is traced (tests use it to catch recompiles).
TRACES = {"init": 0, "block": 0, "reduce": 0}

#: Rows per device are padded to a multiple of this. With one row per device XLA
#: drops the batch dimension and compiles scalar code, which may contract
#: ``a * b + c`` into multiply-adds differently from batched code; a few rows keep
#: every configuration on the same batched code (and fill one AVX2 vector).
ROW_TILE = 8

_DEFAULT = object()
_VALUES_BUDGET = 256 << 20  # bytes of per-scenario values one summary block may gather


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


# ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SweepInputs:
    """What produced each row of a sweep: ``seeds`` (None when keys were given),
    ``key_data`` (raw PRNG key data), ``init`` ({variable: values}) and
    ``params`` ({"<mechanism>.<field>": values}), all with one entry per row, as
    they were given (the scenarios ran with them cast to the model's dtype).

    >>> import procela_jax as pj
    >>> res = pj.sweep(pj.demos.sir.make_executive(), 5, seeds=[3, 4],
    ...                params={"sir.beta": [0.2, 0.4]}, save=None)
    >>> res.inputs.row(1)
    {'seed': 4, 'init': {}, 'params': {'sir.beta': 0.4...}}
    """

    seeds: np.ndarray | None
    key_data: np.ndarray
    key_impl: str
    init: dict[str, np.ndarray]
    params: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.key_data)

    @property
    def keys(self) -> jax.Array:
        """The PRNG key of each row."""
        return jax.random.wrap_key_data(self.key_data, impl=self.key_impl)

    def row(self, i: int) -> dict:
        """Seed (or key data), initial values and parameters of row ``i``."""
        py = lambda a: a.item() if a.ndim == 0 else a.tolist()
        out = {"seed": int(self.seeds[i])} if self.seeds is not None else {"key": self.key_data[i].tolist()}
        out["init"] = {k: py(v[i]) for k, v in self.init.items()}
        out["params"] = {k: py(v[i]) for k, v in self.params.items()}
        return out

    def columns(self) -> dict[str, np.ndarray]:
        """Flat columns (``seed``, ``"<variable>.init"``, parameter paths), e.g. for a DataFrame."""
        out = {"seed": self.seeds} if self.seeds is not None else {"key": self.key_data}
        out.update({f"{k}.init": v for k, v in self.init.items()})
        out.update(self.params)
        return out

    def take(self, rows) -> SweepInputs:
        return SweepInputs(
            seeds=None if self.seeds is None else self.seeds[rows],
            key_data=self.key_data[rows],
            key_impl=self.key_impl,
            init={k: v[rows] for k, v in self.init.items()},
            params={k: v[rows] for k, v in self.params.items()},
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
def grid(*, seeds=None, keys=None, init: Mapping | None = None, params: Mapping | None = None) -> dict:
    """The Cartesian product of the given axes, as keyword arguments for :func:`sweep`.

    Each entry is one axis: ``seeds`` (or ``keys``), each variable in ``init`` and
    each path in ``params``. Rows run over the product in that order, the last
    axis varying fastest (like ``itertools.product``).

    >>> import procela_jax as pj
    >>> g = pj.grid(seeds=range(2), params={"sir.beta": [0.2, 0.3, 0.4]})
    >>> g["seeds"].tolist(), g["params"]["sir.beta"].tolist()
    ([0, 0, 0, 1, 1, 1], [0.2, 0.3, 0.4, 0.2, 0.3, 0.4])
    >>> res = pj.sweep(pj.demos.sir.make_executive(), 3, **g, save=None)
    >>> len(res)
    6
    """
    if seeds is not None and keys is not None:
        raise ModelError("grid: give seeds= or keys=, not both")
    axes: list[tuple[str, str | None, np.ndarray]] = []
    if seeds is not None:
        axes.append(("seeds", None, _as_seed_array(seeds, "grid: seeds")))
    if keys is not None:
        axes.append(("keys", None, _key_data(keys, "grid: keys")[0]))
    for group, entries in (("init", init), ("params", params)):
        for k, v in dict(entries or {}).items():
            v = np.asarray(v)
            if v.ndim == 0:
                raise ModelError(f"grid: {group}[{k!r}] must list the values of its axis, got a scalar")
            axes.append((group, k, v))
    if not axes:
        raise ModelError("grid: give at least one axis (seeds=, keys=, init= or params=)")
    for _, k, v in axes:
        if len(v) == 0:
            raise ModelError(f"grid: the axis {k!r} is empty")
    index = np.asarray(list(itertools.product(*[range(len(v)) for _, _, v in axes])), np.int64)
    out: dict = {}
    for j, (group, k, v) in enumerate(axes):
        col = v[index[:, j]]
        if k is None:
            out[group] = col
        else:
            out.setdefault(group, {})[k] = col
    if "keys" in out:
        out["keys"] = jax.random.wrap_key_data(out["keys"], impl=_key_data(keys, "grid: keys")[1])
    return out


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
    if stats is not None:  # one block of every scenario's saved values stays under _VALUES_BUDGET
        names = save.variables if save.variables is not None else ex.layout.variables
        per_save = spec.n * len(names) * len(save.fields) * np.dtype(ex.dtype).itemsize
        cap = max(1, _VALUES_BUDGET // max(1, per_save))
    plan = _block_plan(steps, save, block_steps, n_blocks_hint, cap)
    runner = _Runner(ex, spec, steps, save, stats, placement, plan, keep_final, progress, sizes)
    return runner.run()


# ---- input normalisation ------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class _Spec:
    n: int
    inputs: SweepInputs
    init: dict[str, np.ndarray]  # variable -> (n,)
    mech: dict[str, np.ndarray]  # "<mech>.<field>" -> (n, *shape)
    init_conf: dict[int, np.ndarray]  # variable index -> (n,)


def _as_seed_array(seeds, where) -> np.ndarray:
    try:
        arr = np.asarray(list(seeds) if not isinstance(seeds, np.ndarray) else seeds)
    except TypeError:
        raise ModelError(f"{where} must be an int or a sequence of ints, got {seeds!r}") from None
    if arr.ndim != 1 or (arr.size and not np.issubdtype(arr.dtype, np.integer)):
        raise ModelError(f"{where} must be a sequence of ints, got an array of dtype {arr.dtype} and shape {arr.shape}")
    return arr.astype(np.int64)


def _key_data(keys, where):
    keys = keys if isinstance(keys, jax.Array) else jnp.asarray(keys)
    if jax.dtypes.issubdtype(keys.dtype, jax.dtypes.prng_key):
        if keys.ndim != 1:
            raise ModelError(f"{where}: expected one key per scenario (shape (n,)), got shape {keys.shape}")
        return np.asarray(jax.random.key_data(keys)), str(jax.random.key_impl(keys))
    if keys.dtype == jnp.uint32 and keys.ndim == 2:
        impl = str(jax.random.key_impl(jax.random.key(0)))
        return np.asarray(keys), impl
    raise ModelError(
        f"{where} must be PRNG keys, one per scenario (jax.random.split(jax.random.key(0), n)), "
        f"got dtype {keys.dtype} and shape {keys.shape}"
    )


def _seed_keys(seeds: np.ndarray) -> tuple[np.ndarray, str]:
    """Key data of ``jax.random.key(s)`` for each seed, computed in one batch."""
    if seeds.size and seeds.min() >= np.iinfo(np.int32).min and seeds.max() <= np.iinfo(np.int32).max:
        arr = seeds.astype(np.int32)
    elif seeds.size and seeds.min() >= 0 and seeds.max() <= np.iinfo(np.uint32).max:
        arr = seeds.astype(np.uint32)
    elif jax.config.jax_enable_x64:
        arr = seeds
    else:  # jax.random.key keeps the low 32 bits of a seed when 64-bit mode is off
        arr = (seeds % (1 << 32)).astype(np.uint32)
    keys = _batch_keys(str(jax.config.jax_default_prng_impl))(jnp.asarray(arr))
    return np.asarray(jax.random.key_data(keys)), str(jax.random.key_impl(keys))


@functools.cache
def _batch_keys(impl: str):
    """``vmap(jax.random.key)``, compiled once per default implementation (run op by
    op, it cost a small sweep a third of its time)."""
    return jax.jit(jax.vmap(lambda s: jax.random.key(s, impl=impl)))


def _inputs(ex: Executive, seeds, keys, init, params) -> _Spec:
    lengths: dict[str, int] = {}
    if seeds is not None and keys is not None:
        raise ModelError("sweep: give seeds= or keys=, not both")
    seed_arr = None
    if keys is not None:
        kd, impl = _key_data(keys, "sweep: keys")
        lengths["keys"] = len(kd)
    elif seeds is not None and not isinstance(seeds, (int, np.integer)):
        seed_arr = _as_seed_array(seeds, "sweep: seeds")
        lengths["seeds"] = len(seed_arr)
    layout = ex.layout
    init_arr: dict[str, np.ndarray] = {}
    for name, v in dict(init or {}).items():
        name = getattr(name, "name", name)
        if name not in layout.var_index:
            raise ModelError(f"sweep: init names unknown variable {name!r}; the variables are {list(layout.variables)}")
        init_arr[name] = np.asarray(v)
        lengths[f"init[{name!r}]"] = _length(init_arr[name], f"init[{name!r}]")
    mech_arr: dict[str, np.ndarray] = {}
    conf_arr: dict[int, np.ndarray] = {}
    given_params: dict[str, np.ndarray] = {}  # as the user gave them, for res.inputs
    for path, v in dict(params or {}).items():
        param = parameter(ex, path)  # names the culprit if the path is wrong
        owner, field = path.split(".")
        v = np.asarray(v)
        lengths[f"params[{path!r}]"] = _length(v, f"params[{path!r}]")
        if owner in layout.var_index and field == "init":
            if owner in init_arr:
                raise ModelError(f"sweep: the initial value of {owner!r} is given twice, in init= and as "
                                 f"params['{path}']")
            init_arr[owner] = v
            continue
        old = param.get(ex)
        shape = tuple(jnp.shape(old))
        if v.shape[1:] != shape:
            raise ModelError(
                f"sweep: params[{path!r}] must have shape (scenarios, *{shape}) = (n, {', '.join(map(str, shape))}), "
                f"one value per scenario; got shape {v.shape}"
            )
        dtype = getattr(old, "dtype", None) or np.result_type(old)
        if owner in layout.var_index:
            conf_arr[layout.var_index[owner]] = v.astype(dtype)
        else:
            mech_arr[path] = v.astype(dtype)
        given_params[path] = v
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k}: {n}" for k, n in lengths.items())
        raise ModelError(f"sweep: seeds/keys, init and params are zipped, one entry per scenario, so their "
                         f"lengths must agree; got {listed}")
    if not lengths:
        raise ModelError("sweep: say how many scenarios to run with seeds=, keys=, init= or params= "
                         "(a sequence with one entry per scenario)")
    n = next(iter(lengths.values()))
    if n == 0:
        raise ModelError("sweep: no scenarios (the inputs are empty)")
    given_init = dict(init_arr)
    for name, v in init_arr.items():
        var = ex.variable(name)
        if v.dtype.kind in "OUS" or v.dtype == bool:
            v = np.asarray([var.encode(x) for x in v.tolist()])
        else:  # the domain check of ex.init, on the whole column at once
            try:
                vf = v.astype(np.float64)
            except (TypeError, ValueError):
                raise ModelError(f"sweep: init[{name!r}] must hold numbers, got dtype {v.dtype}") from None
            inside = np.asarray(var.domain.contains(jnp.asarray(vf))) & ~np.isnan(vf)
            if not inside.all():
                i = int(np.flatnonzero(~inside)[0])
                raise ModelError(f"sweep: init[{name!r}][{i}] = {float(vf[i])!r} lies outside the domain "
                                 f"{var.domain!r} of variable {name!r}")
        init_arr[name] = v.astype(ex.dtype)
    if keys is None:
        if seed_arr is None:
            seed_arr = np.full((n,), 0 if seeds is None else int(seeds), np.int64)
        kd, impl = _seed_keys(seed_arr)
    inputs = SweepInputs(seeds=seed_arr, key_data=kd, key_impl=impl, init=given_init, params=given_params)
    return _Spec(n=n, inputs=inputs, init=init_arr, mech=mech_arr, init_conf=conf_arr)


def _length(v: np.ndarray, where: str) -> int:
    if v.ndim == 0:
        raise ModelError(f"sweep: {where} must hold one value per scenario, got a scalar "
                         f"(for one value shared by every scenario use ex.replace(...))")
    return len(v)


def _save_spec(ex, save, save_every, variables, fields) -> Save | None:
    short = {k: v for k, v in (("save_every", save_every), ("variables", variables), ("fields", fields))
             if v is not None}
    if save is _DEFAULT:
        kw = {}
        if save_every is not None:
            kw["every"] = save_every
        if variables is not None:
            kw["variables"] = (variables,) if isinstance(variables, str) else tuple(variables)
        if fields is not None:
            kw["fields"] = fields
        save = Save(**kw)
    elif short:
        raise ModelError(f"sweep: give save=Save(...) or the shorthands {sorted(short)}, not both")
    if save is not None:
        if not isinstance(save, Save):
            raise ModelError(f"sweep: save must be a procela_jax.Save or None, got {save!r}")
        for name in save.variables or ():
            if name not in ex.layout.var_index:
                raise ModelError(f"sweep: save names unknown variable {name!r}; the variables are "
                                 f"{list(ex.layout.variables)}")
        if save.audit and not ex.audit:
            raise ModelError("sweep: Save(audit=True) needs an executive built with audit=True")
    return save


def _stat_key(stat) -> str:
    """The key of a statistic in ``res.summaries``: its name, or ``"q<quantile>"``."""
    if isinstance(stat, str):
        return stat
    return f"q{float(stat):g}"


def _summary_spec(summaries, save):
    if summaries is None or summaries is False:
        return None
    if summaries is True:
        summaries = DEFAULT_SUMMARIES
    if isinstance(summaries, (str, float, int)):
        summaries = (summaries,)
    out = []
    for s in summaries:
        if isinstance(s, str):
            if s not in SUMMARY_STATS:
                raise ModelError(f"sweep: unknown summary {s!r}; use {SUMMARY_STATS} or quantiles in [0, 1]")
            out.append(s)
        elif isinstance(s, (int, float, np.floating, np.integer)) and not isinstance(s, bool) and 0 <= s <= 1:
            out.append(float(s))
        else:
            raise ModelError(f"sweep: summary {s!r} is neither one of {SUMMARY_STATS} nor a quantile in [0, 1]")
    if not out or len(set(out)) != len(out):
        raise ModelError(f"sweep: summaries must list distinct statistics, got {tuple(summaries)}")
    if save is None:
        raise ModelError("sweep: summaries= reduce what save= keeps; save=None keeps nothing")
    if save.fn is not None or save.audit:
        raise ModelError("sweep: summaries= reduce saved fields only; Save(fn=...) and Save(audit=True) "
                         "need per-scenario trajectories (summaries=None)")
    return tuple(out)


# ---- sizes, chunks and blocks -------------------------------------------------
def _tree_bytes(tree) -> int:
    total = 0
    for x in jax.tree.leaves(tree):
        dtype = x.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            total += math.prod(x.shape) * 8
        else:
            total += math.prod(x.shape) * np.dtype(dtype).itemsize
    return total


def _save_bytes(ex, save) -> int:
    """Bytes one scenario keeps per saved step (fields, the step, ``Save.fn`` output)."""
    if save is None:
        return 0
    names = save.variables if save.variables is not None else ex.layout.variables
    item = np.dtype(ex.dtype).itemsize
    total = len(names) * len(save.fields) * item + 4
    if save.fn is not None:
        total += _tree_bytes(jax.eval_shape(save.fn, ex.abstract_state()))
    if save.audit:
        width = len(ex.tables.slot_prop[0]) if ex.layout.variables else 0
        total += len(names) * (width * (3 * item + 1) + 4)
    return total


def _available_host_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _device_budget(mesh) -> int:
    """Bytes one device may give a chunk: half its free memory, or a quarter of the
    host's free memory (at most 1 GiB) shared by the local devices when it reports
    none (CPU)."""
    dev = mesh.devices.flat[0]
    try:
        ms = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - some backends do not implement it
        ms = {}
    if "bytes_limit" in ms:
        return max(1 << 20, (ms["bytes_limit"] - ms.get("bytes_in_use", 0)) // 2)
    share = min(_available_host_bytes() // 4, 1 << 30)  # bounded, so peaks do not track free memory
    return max(1 << 20, share // max(1, jax.local_device_count()))


_SIZES: dict = {}


def _sizes(ex, save) -> tuple[int, int]:
    """(bytes of one scenario's state, bytes it keeps per saved step), cached per model."""
    leaves, treedef = jax.tree.flatten(ex)
    key = (treedef, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x)))) for x in leaves), save)
    try:
        hit = _SIZES.get(key)
    except TypeError:  # something unhashable in the static structure: no cache
        return _tree_bytes(ex.abstract_state()), _save_bytes(ex, save)
    if hit is None:
        if len(_SIZES) > 64:
            _SIZES.clear()
        hit = _SIZES[key] = (_tree_bytes(ex.abstract_state()), _save_bytes(ex, save))
    return hit


def _placement(ex, spec, steps, save, stats, chunk_size, devices, progress):
    mesh = scenario_mesh(devices)
    n_dev = mesh.devices.size
    n = spec.n
    state_bytes, per_save = _sizes(ex, save)
    every = save.every if save is not None else 1
    n_saves = steps // every if save is not None else 0
    blocks_hint = 10 if progress else 1
    if chunk_size is not None:
        if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ModelError(f"sweep: chunk_size must be a positive int, got {chunk_size!r}")
        per_device = -(-int(chunk_size) // n_dev)  # fixed, whatever n: one compile per chunk_size
    else:
        budget = _device_budget(mesh)
        block = max(1, -(-n_saves // blocks_hint)) if n_saves else 0
        if stats is None:
            need = 2 * (2 * state_bytes + block * per_save)
        else:
            need = 2 * state_bytes
        per_device = max(1, min(-(-n // n_dev), budget // max(1, need)))
    per_device = -(-per_device // ROW_TILE) * ROW_TILE
    placement = Placement(mesh=mesh, per_device=per_device)
    # host memory: refuse early what cannot fit
    n_local = n if jax.process_count() == 1 else len(placement.local_rows(n))
    if stats is None:
        host = n_local * (n_saves * per_save + state_bytes)
        avail = _available_host_bytes()
        if host > avail:
            raise ModelError(
                f"sweep: keeping {n_local} scenarios x {n_saves} saved steps needs about {host / 2**30:.1f} GiB "
                f"of host memory, more than the {avail / 2**30:.1f} GiB available; save fewer variables or fields "
                f"(save=Save(every=..., variables=..., fields=...)), keep summaries across scenarios "
                f"(summaries=...), or sweep fewer scenarios at a time"
            )
    return placement, dict(state_bytes=state_bytes, bytes_per_saved_step=per_save), blocks_hint


@dataclasses.dataclass(frozen=True)
class _BlockPlan:
    """Host-side blocks of a run: ``(steps, save or None)`` each, saved blocks first."""

    blocks: tuple[tuple[int, Save | None], ...]
    every: int

    @property
    def n_saves(self) -> int:
        return sum(s // save.every for s, save in self.blocks if save is not None)


def _block_plan(steps, save, block_steps, n_blocks_hint, cap=None) -> _BlockPlan:
    every = save.every if save is not None else 1
    if block_steps is not None:
        if (not isinstance(block_steps, (int, np.integer)) or isinstance(block_steps, bool)
                or block_steps < 1 or block_steps % every):
            raise ModelError(f"sweep: block_steps must be a positive multiple of save.every={every}, "
                             f"got {block_steps!r}")
    n_units, tail = divmod(steps, every)  # units: saved steps (or single steps without save)
    if block_steps is not None:
        per = int(block_steps) // every
    else:
        target = max(1, -(-n_units // n_blocks_hint))
        per = _nice_divisor(n_units, target if cap is None else min(target, cap))
    full, rest = divmod(n_units, per)
    units = (per,) * full + ((rest,) if rest else ())
    blocks = tuple((u * every, save) for u in units)
    if tail:
        blocks += ((tail, None),)
    return _BlockPlan(blocks=blocks, every=every)


def _nice_divisor(total: int, target: int) -> int:
    """A block length near ``target`` that divides ``total`` when one is close (one compile)."""
    if total <= 0:
        return max(1, target)
    for d in range(target, max(1, target // 2) - 1, -1):
        if total % d == 0:
            return d
    for d in range(target + 1, min(total, 2 * target) + 1):
        if total % d == 0:
            return d
    return target


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
    with batched_threefry() if plan.hash == "batched" else contextlib.nullcontext():
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
        self.trace_plan = choose_plan(ex, batch=placement.chunk, backend="cpu" if on_cpu else "gpu")
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

