"""The AMR case study: exact replay against the original library (Tier 1), and the
statistics of the port's own noise against the original's published figures (Tier 2)."""

import jax
import numpy as np
import pytest

import procela_jax as pj
from procela_jax.demos import amr
from procela_jax.demos.amr._original import OriginalStudy

SETTINGS = ("none", "fragility", "coverage", "probe", "all")


# ---- Tier 1: exact replay ------------------------------------------------------------------------
REPLAY_SEEDS = (0, 1)


@pytest.fixture(scope="module")
def replay():
    with jax.enable_x64(True):
        return amr.run_protocol(seeds=REPLAY_SEEDS, steps=160, noise="numpy")


def test_replay_shapes_and_settings(replay):
    assert replay.settings == SETTINGS
    assert replay.mean_error.shape == replay.final_diff.shape == (5, len(REPLAY_SEEDS))
    assert replay.mean_error.dtype == np.float64


@pytest.mark.parametrize("setting", SETTINGS)
def test_replay_equals_original_run_for_run(replay, setting):
    """Per run, as Tier 1 asks (mean error within 1e-9, final diff within 1e-7); in
    fact within a few ulps: XLA fuses some multiply-adds that numpy rounds twice."""
    i = replay.row(setting)
    for j, seed in enumerate(REPLAY_SEEDS):
        ref = OriginalStudy(setting, seed).run(160)
        np.testing.assert_allclose(replay.mean_error[i, j], ref["mean_error"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(replay.std_error[i, j], ref["std_error"], rtol=0, atol=1e-12)
        np.testing.assert_allclose(replay.final_diff[i, j], ref["final_diff"], rtol=0, atol=1e-9)
        for unit, n in ref["events"].items():
            assert replay.started[unit][i, j] == n, (setting, seed, unit)


def test_reference_behaves_as_documented():
    """The in-test original study shows the documented behaviour of the original
    protocol: seed 0 under coverage runs experiments back to back from step 41."""
    out = OriginalStudy("coverage", 0).run(160)
    assert out["events"]["coverage"] == 12  # started at 41, 51, ..., 151


def test_numpy_noise_needs_x64():
    with jax.enable_x64(False), pytest.raises(pj.ModelError, match="jax_enable_x64"):
        amr.run_protocol(seeds=range(2), steps=160, noise="numpy")


def test_bad_arguments_fail_early():
    with pytest.raises(ValueError, match="noise"):
        amr.run_protocol(seeds=range(2), noise="torch")
    with pytest.raises(ValueError, match="governance setting"):
        amr.run_protocol(seeds=range(2), noise="jax", settings=("none", "sometimes"))
    with pytest.raises(ValueError, match="seeds"):
        amr.run_protocol(seeds=[], noise="jax")


# ---- Tier 2: statistics of the port's own noise (float32, x64 off) --------------------------------
#: The original's 1000-seed reference (its numpy streams, seeds 0..999; spec §8.3): mean
#: and sd over runs of the mean error. (The exact replay reproduces these digits.)
REFERENCE_1000 = {"none": (0.5367, 0.0165), "fragility": (0.5453, 0.0168), "coverage": (0.4260, 0.0311),
                  "probe": (0.4893, 0.0192), "all": (0.4972, 0.0324)}
N_STAT = 600
#: Tolerance in standard errors of the difference of the two means. 4 rather than 3:
#: the reference's coverage mean is itself low by chance (the original's streams on
#: seeds 1000..4999 give 0.4288 ± 0.0010, 2.8 of its standard errors above 0.4260).
K_SE = 4


@pytest.fixture(scope="module")
def own_noise():
    with jax.enable_x64(False):
        return amr.run_protocol(seeds=range(N_STAT), steps=160, noise="jax")


def test_own_noise_statistics_match_reference(own_noise):
    res = own_noise
    assert res.mean_error.dtype == np.float32
    for s, (mean, sd) in REFERENCE_1000.items():
        got = res.mean_error[res.row(s)]
        tol = K_SE * sd * np.sqrt(1 / N_STAT + 1 / 1000)
        assert abs(got.mean() - mean) <= tol, (s, got.mean(), mean, tol)
        assert 0.85 < got.std(ddof=1) / sd < 1.15, (s, got.std(ddof=1), sd)
    means = {s: res.mean_error[res.row(s)].mean() for s in SETTINGS}
    assert means["coverage"] < means["probe"] < means["all"] < means["none"] < means["fragility"]
    fd = {s: res.final_diff[res.row(s)].mean() for s in SETTINGS}
    assert fd["probe"] > fd["all"] > fd["coverage"] > fd["none"] > fd["fragility"]


def test_own_noise_paired_comparisons(own_noise):
    """Same key for every setting of a seed: paired differences as in the original."""
    res = own_noise
    none = res.mean_error[res.row("none")]
    for s, frac in (("fragility", 0.919), ("coverage", 0.980), ("probe", 0.996), ("all", 0.894)):
        diff = res.mean_error[res.row(s)] - none
        got = np.mean(diff > 0) if s == "fragility" else np.mean(diff < 0)
        assert abs(got - frac) < 0.05, (s, got, frac)


def test_exact_mechanics_whatever_the_noise(own_noise):
    res = own_noise
    none, probe = res.row("none"), res.row("probe")
    # without governance: cleaning is in force at every step, never HighestConfidence
    np.testing.assert_array_equal(res.code_fraction[none], np.tile([0, 0, 1, 0], (N_STAT, 1)))
    assert (res.hc_fraction[none] == 0).all()
    # the probe isolates each family for 20 of 160 steps, three probes per run
    np.testing.assert_array_equal(res.family_fraction[probe], np.full((N_STAT, 3), 0.75))
    assert (res.started["probe"][probe] == 3).all() and (res.completed["probe"][probe] == 3).all()
    # the emergency fires only when coverage and probe together leave no family
    for s in ("none", "fragility", "coverage", "probe"):
        assert (res.started["emergency"][res.row(s)] == 0).all()
    assert (res.domain_violations == 0).all()
