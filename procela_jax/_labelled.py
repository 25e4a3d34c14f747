"""Results as labelled arrays: a sweep as an ``xarray.Dataset``, written to NetCDF or Zarr.

Schema of :func:`to_xarray` (``attrs["format"] = "procela_jax.sweep"``,
``format_version = 1``):

==================== ============================ ==============================================
name                 dims                         meaning
==================== ============================ ==============================================
``value``, ...       scenario, step, variable     one data variable per saved field (``value``,
                                                  ``confidence``, ``mean``, ``std``, ``ewma``,
                                                  ``min``, ``max``, ``count``, ``policy``)
``final_value``      scenario, variable           values after the last step (if kept)
``final_confidence`` scenario, variable           their confidences
``halted``           scenario                     a FATAL invariant halted the scenario
``halted_at``        scenario                     the step it halted at (-1: never)
``halted_by``        scenario                     index into ``attrs["invariants"]`` (-1: none)
``scenario``         scenario (coordinate)        the sweep's row
``step``             step (coordinate)            steps completed when the row was saved
``variable``         variable (coordinate)        variable names
``seed``             scenario (coordinate)        the seed of each scenario (``key_data``,
                                                  dims scenario, key_word, when keys were given)
``<var>.init``       scenario (coordinate)        swept initial values
``<mech>.<field>``   scenario[, <path>_dim_k]     swept parameters (posterior draws for
                     (coordinate)                 ``Posterior.predict``)
==================== ============================ ==============================================

A sweep that kept only ``summaries=`` has data variables of dims ``statistic,
step, variable`` instead (coordinate ``statistic``: ``mean``, ``std``,
``q0.05``, ...). Attributes: ``format``, ``format_version``, ``fingerprint``
(the model's structure, as in checkpoints; empty when unknown), ``invariants``
and ``mechanisms`` (JSON lists), the library versions (``procela_jax_version``,
``jax_version``, ``numpy_version``, ``xarray_version``) and ``created`` (UTC).
The output of ``Save.fn`` and audit records are not included.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import tempfile

import jax
import numpy as np

FORMAT = "procela_jax.sweep"
FORMAT_VERSION = 1


def _fingerprint(res, ex) -> str:
    from ._checkpoint import _fingerprint as fingerprint, _with_key_data

    if res.final is not None:
        return fingerprint(_with_key_data(res.final))
    if ex is not None:
        return fingerprint(_with_key_data(ex.init(jax.random.key(0))))
    return ""


def _versions() -> dict:
    import xarray

    from . import __version__

    return {"procela_jax_version": __version__, "jax_version": jax.__version__,
            "numpy_version": np.__version__, "xarray_version": xarray.__version__}


def _text(a: np.ndarray) -> np.ndarray:
    return a.astype(str) if a.dtype.kind in "OUS" else a


def to_xarray(res, ex=None):
    """The :class:`SweepResult` ``res`` as an ``xarray.Dataset`` (schema in this
    module's docstring); ``ex`` supplies the model fingerprint when the sweep
    kept no final states.

    >>> import procela_jax as pj
    >>> res = pj.sweep(pj.demos.sir.make_executive(), 10, seeds=[0, 1], params={"sir.beta": [0.2, 0.4]})
    >>> ds = res.to_xarray()
    >>> ds["value"].dims, ds["value"].sel(variable="I").shape, ds["sir.beta"].values.tolist()
    (('scenario', 'step', 'variable'), (2, 10), [0.2, 0.4])
    """
    import xarray as xr

    coords: dict = {"scenario": np.asarray(res.rows, np.int64), "step": np.asarray(res.steps, np.int64)}
    data: dict = {}
    layout = res.final.layout if res.final is not None else None
    if res.trajectory is not None:
        names = list(res.trajectory.names)
        for field, arr in res.trajectory.data.items():
            if field != "audit":
                data[field] = (("scenario", "step", "variable"), np.asarray(arr))
    elif res.summaries is not None:
        names = list(res.summary_names)
        stats = list(next(iter(res.summaries.values()))) if res.summaries else []
        coords["statistic"] = np.asarray(stats, str)
        for field, per in res.summaries.items():
            data[field] = (("statistic", "step", "variable"), np.stack([np.asarray(per[s]) for s in stats]))
    else:
        names = list(layout.variables) if layout is not None else (list(ex.layout.variables) if ex is not None else [])
    coords["variable"] = np.asarray(names, str)
    if res.final is not None:
        j = np.asarray([layout.var_index[n] for n in names], np.int64)
        data["final_value"] = (("scenario", "variable"), np.asarray(res.final.values)[:, j])
        data["final_confidence"] = (("scenario", "variable"), np.asarray(res.final.confidences)[:, j])
    data["halted"] = (("scenario",), np.asarray(res.halted, bool))
    data["halted_at"] = (("scenario",), np.asarray(res.halted_at, np.int32))
    data["halted_by"] = (("scenario",), np.asarray(res.halted_by, np.int32))
    inputs = res.inputs
    if inputs.seeds is not None:
        coords["seed"] = ("scenario", np.asarray(inputs.seeds, np.int64))
    else:
        coords["key_data"] = (("scenario", "key_word"), np.asarray(inputs.key_data))
    for name, v in inputs.init.items():
        coords[f"{name}.init"] = ("scenario", _text(np.asarray(v)))
    for path, v in inputs.params.items():
        v = _text(np.asarray(v))
        coords[path] = (("scenario", *[f"{path}_dim_{k}" for k in range(v.ndim - 1)]), v)
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "fingerprint": _fingerprint(res, ex),
        "invariants": json.dumps(list(res.invariants)),
        "mechanisms": json.dumps(list(layout.mechanisms if layout is not None else
                                      (ex.layout.mechanisms if ex is not None else ()))),
        **_versions(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    return xr.Dataset(data, coords=coords, attrs=attrs)


def write(ds, path: str, *, overwrite: bool = False) -> str:
    """Write a Dataset to ``path``: NetCDF (``.nc``, with h5netcdf) or Zarr
    (``.zarr``, a folder); into a temporary file or folder beside it, moved into
    place when complete. An existing path is replaced only with ``overwrite``.
    Read back with ``xarray.open_dataset(path, engine="h5netcdf")`` or
    ``xarray.open_zarr(path)``.

    >>> import os, tempfile, xarray as xr, procela_jax as pj
    >>> from procela_jax._labelled import write
    >>> ds = pj.sweep(pj.demos.sir.make_executive(), 5, seeds=[0, 1]).to_xarray()
    >>> path = write(ds, os.path.join(tempfile.mkdtemp(), "sir.nc"))
    >>> xr.open_dataset(path, engine="h5netcdf")["value"].shape
    (2, 5, 3)
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--force) to replace it")
    folder = os.path.dirname(os.path.abspath(path))
    if path.endswith(".nc"):
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".nc", dir=folder)
        os.close(fd)
        try:
            ds.to_netcdf(tmp, engine="h5netcdf", invalid_netcdf=False)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    elif path.endswith(".zarr"):
        tmp = tempfile.mkdtemp(prefix=".tmp-", suffix=".zarr", dir=folder)
        try:
            ds.to_zarr(tmp, mode="w", consolidated=True, zarr_format=2)  # format 2: a stable spec for strings
            if os.path.exists(path):
                shutil.rmtree(path) if os.path.isdir(path) else os.unlink(path)
            os.rename(tmp, path)
        finally:
            if os.path.exists(tmp):
                shutil.rmtree(tmp)
    else:
        raise ValueError(f"write: {path!r} must end in .nc (NetCDF) or .zarr (Zarr)")
    return path
