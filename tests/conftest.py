"""Shared fixtures and helpers of the test suite.

* ``quiet_logger()``: a logger for the original ``procela`` ``Executive`` (without
  ``logger=`` it creates ``./logs/`` and prints every step).
* ``x64``: a fixture that switches ``jax_enable_x64`` on for one test and restores
  it afterwards. An executive's dtype is fixed when it is built, so build the
  executives of a float64 comparison inside the test (or a fixture depending on
  ``x64``).
* ``orig_hypotheses(values, confidences, weights)``: the original's hypothesis
  records for a direct policy call.

The persistent compilation cache that importing ``procela_jax`` turns on goes to a
fresh temporary folder per test process (unless ``PROCELA_JAX_CACHE`` is set), so
the suite never writes to the user's cache and never depends on a warm one.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import tempfile

import jax
import pytest
from hypothesis import settings

from _leaves import host_leaves  # noqa: F401 - the tests import it from here

if "PROCELA_JAX_CACHE" not in os.environ:  # before any test module imports procela_jax
    _cache_dir = tempfile.mkdtemp(prefix="procela-jax-test-cache-")
    os.environ["PROCELA_JAX_CACHE"] = _cache_dir
    atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)

settings.register_profile("procela_jax", max_examples=12, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "procela_jax"))


def quiet_logger(name: str = "procela-tests") -> logging.Logger:
    """A logger that drops everything (pass it as the original ``Executive(logger=...)``)."""
    log = logging.getLogger(name)
    if not any(isinstance(h, logging.NullHandler) for h in log.handlers):
        log.addHandler(logging.NullHandler())
    log.propagate = False
    return log


def orig_hypotheses(values, confidences, weights=None):
    """The original's ``HypothesisRecord`` list for ``policy.resolve``.

    ``weights=None`` leaves ``metadata`` empty (the original's default weight 1).
    """
    from procela import HypothesisRecord, VariableRecord

    out = []
    for i, (v, c) in enumerate(zip(values, confidences)):
        meta = {} if weights is None else {"weight": float(weights[i])}
        out.append(HypothesisRecord(VariableRecord(float(v), confidence=float(c), metadata=meta)))
    return out


@pytest.fixture
def x64():
    """Run the test with ``jax_enable_x64`` on (float64 executives), then restore."""
    enable = getattr(jax, "enable_x64", None)  # public from jax 0.8; jax.experimental's before
    if enable is None:
        from jax.experimental import enable_x64 as enable
    with enable(True):
        yield


@pytest.fixture(scope="session")
def sir():
    """One SIR demo executive (float32) shared by the whole session, so its step and
    run are compiled once."""
    import procela_jax as pj

    return pj.demos.sir.make_executive()
