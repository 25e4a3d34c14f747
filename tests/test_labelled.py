"""SweepResult.to_xarray and the labelled files of `procela-jax run` (NetCDF, Zarr), read back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import procela_jax as pj
from procela_jax.cli import load_results, main


@pytest.fixture(scope="module")
def res(sir):
    return pj.sweep(sir, 12, seeds=[4, 5, 6], init={"I": [5.0, 10.0, 20.0]},
                    params={"sir.beta": [0.2, 0.3, 0.4]}, save=pj.Save(every=3, fields=("value", "confidence", "mean")))


def test_every_saved_field_is_a_labelled_cube(res, sir):
    ds = res.to_xarray()
    assert set(ds.data_vars) >= {"value", "confidence", "mean", "final_value", "halted"}
    for field in ("value", "confidence", "mean"):
        assert ds[field].dims == ("scenario", "step", "variable")
        for name in ("S", "I", "R"):
            np.testing.assert_array_equal(ds[field].sel(variable=name).values, res.field(name, field))
    assert ds["step"].values.tolist() == [3, 6, 9, 12]
    assert ds["seed"].values.tolist() == [4, 5, 6]
    assert ds["I.init"].values.tolist() == [5.0, 10.0, 20.0]
    assert ds["sir.beta"].values.tolist() == [0.2, 0.3, 0.4]
    # a row of the dataset is the single run its coordinates describe
    one = sir.replace({"sir.beta": 0.4})
    import jax

    _, traj = one.run(one.init(jax.random.key(6), init={"I": 20.0}), 12)
    row = ds["value"].sel(scenario=2, variable="I").values
    np.testing.assert_allclose(row, np.asarray(traj.value("I"))[2::3], rtol=1e-6)
    assert ds.attrs["format"] == "procela_jax.sweep" and len(ds.attrs["fingerprint"]) == 64
    assert ds.attrs["jax_version"] == jax.__version__ and json.loads(ds.attrs["mechanisms"]) == ["sir", "seasonal"]


def test_summaries_and_keys_are_labelled_too(sir):
    import jax

    s = pj.sweep(sir, 6, keys=jax.random.split(jax.random.key(0), 4), summaries=("mean", 0.5), variables=["I"],
                 keep_final=False)
    ds = s.to_xarray(sir)
    assert ds["value"].dims == ("statistic", "step", "variable")
    np.testing.assert_array_equal(ds["value"].sel(statistic="q0.5", variable="I").values, s.summary("I", 0.5))
    assert ds["key_data"].dims == ("scenario", "key_word")
    assert len(ds.attrs["fingerprint"]) == 64


@pytest.mark.parametrize("suffix", ["nc", "zarr", "npz"])
def test_run_writes_and_reads_back(tmp_path, suffix):
    out = tmp_path / f"sir.{suffix}"
    args = ["run", "procela_jax.demos.sir", "--steps", "10", "--scenarios", "2", "--seed", "3",
            "--save-every", "5", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    assert (tmp_path / "sir.png").exists()
    ref = pj.sweep(pj.demos.sir.make_executive(), 10, seeds=[3, 4], save_every=5)
    if suffix == "npz":
        r = load_results(out)
        np.testing.assert_array_equal(r["value"], ref.trajectory.data["value"])
        return
    ds = xr.open_dataset(out, engine="h5netcdf") if suffix == "nc" else xr.open_zarr(out)
    with ds:
        assert ds["value"].dims == ("scenario", "step", "variable")
        assert ds["variable"].values.tolist() == ["S", "I", "R"] and ds["step"].values.tolist() == [5, 10]
        np.testing.assert_array_equal(ds["value"].values, ref.trajectory.data["value"])
        np.testing.assert_array_equal(ds["confidence"].values, ref.trajectory.data["confidence"])
        assert ds["seed"].values.tolist() == [3, 4] and ds["halted"].dtype == bool
        assert ds.attrs["model"] == "procela_jax.demos.sir" and ds.attrs["steps"] == 10
    assert main(args) == 1  # never overwritten without --force
    assert main([*args, "--force"]) == 0
