"""Every docstring example of the package runs and prints what it shows."""

import doctest
import importlib
import pkgutil

import pytest

import procela_jax

MODULES = sorted(
    name for _, name, _ in pkgutil.walk_packages(procela_jax.__path__, prefix="procela_jax.")
    if not name.endswith("__main__")
)


def test_every_module_is_collected():
    assert "procela_jax._executive" in MODULES and "procela_jax.demos.sir" in MODULES


@pytest.mark.parametrize("name", ["procela_jax", *MODULES])
def test_docstring_examples(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # examples that write files write them here
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
