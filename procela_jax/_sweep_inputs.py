"""Sweep inputs: seeds or keys, initial values and parameters, one per scenario,
checked and normalised before anything runs; :func:`grid` for Cartesian products."""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from ._errors import ModelError
from ._executive import Executive
from ._paths import parameter


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

