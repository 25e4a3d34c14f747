"""The seam to JAX's internals (``procela_jax._jit``) and the persistent cache
(``procela_jax._cache``): hooks that degrade, never break; ``PROCELA_JAX_PLAIN=1``
and the cache change no bit; GPU programs carry none of the CPU's forms."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import equinox as eqx
import jax
from jax import export as jax_export
import jax.numpy as jnp
import numpy as np
import pytest

import procela_jax as pj
from procela_jax import _jit
from procela_jax._hints import materialize

ROOT = Path(__file__).resolve().parent.parent
CORE = Path(__file__).with_name("seam_core.py")


def _python(*args, env=None, cwd=None):
    """Run a fresh Python with this checkout first on the path."""
    full = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
            "MPLBACKEND": "Agg", **(env or {})}
    full = {k: v for k, v in full.items() if v is not None}
    out = subprocess.run([sys.executable, *args], env=full, cwd=cwd or ROOT, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def _core(tmp_path, name, **env):
    path = tmp_path / f"{name}.npz"
    _python(str(CORE), str(path), env=env)
    return dict(np.load(path))


def _results(d):
    return {k: v for k, v in d.items() if k.split("/")[0] not in ("events", "plain", "cache")}


# ---- PROCELA_JAX_PLAIN=1 and the persistent cache change no bit ---------------------
@pytest.mark.slow
def test_plain_jax_and_the_cache_give_the_same_bits(tmp_path):
    # Without fused multiply-adds: the hooks change how XLA compiles a program, and
    # XLA may then contract ``a * b + c`` in other places (last-bit differences in a
    # single SIR run at jax 0.7; none at 0.10). Every other operation is the same.
    no_fma = {"XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_max_isa=AVX".strip()}
    cache = str(tmp_path / "cache")
    first = _core(tmp_path, "first", PROCELA_JAX_CACHE=cache, **no_fma)
    second = _core(tmp_path, "second", PROCELA_JAX_CACHE=cache, **no_fma)
    plain = _core(tmp_path, "plain", PROCELA_JAX_PLAIN="1", PROCELA_JAX_CACHE="0", **no_fma)
    assert not first["plain"] and plain["plain"] and str(plain["cache"]) == "None"
    # the second process compiled nothing: every program came from the cache
    assert int(first["events/misses"]) > 0
    assert int(second["events/misses"]) == 0 and int(second["events/hits"]) > 0
    assert int(plain["events/hits"]) == int(plain["events/misses"]) == 0
    want = _results(first)
    assert len(want) > 100  # single runs, steps, sweeps, summaries, gradients, calibration
    for other in (second, plain):
        got = _results(other)
        assert got.keys() == want.keys()
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def test_plain_installs_no_hook():
    out = _python("-c", "import procela_jax._jit as s, jax; print(s.PRIM, s.compiler_options(s.LEAN_CPU), "
                  "sorted(s.report().items()))", env={"PROCELA_JAX_PLAIN": "1", "PROCELA_JAX_CACHE": "0"})
    assert out.stdout.split()[:2] == ["None", "None"]
    assert "off: PROCELA_JAX_PLAIN=1" in out.stdout


# ---- compiler options -------------------------------------------------------------
def test_lean_cpu_is_known_to_this_backend():
    if jax.default_backend() != "cpu" or _jit.PLAIN:
        pytest.skip("LEAN_CPU is for the CPU")
    # if XLA ever drops the flag, it is dropped with a warning; this test says so
    assert _jit.compiler_options(_jit.LEAN_CPU) == _jit.LEAN_CPU


@pytest.mark.skipif(_jit.PLAIN, reason="PROCELA_JAX_PLAIN=1 passes no option")
def test_an_unknown_compiler_option_is_dropped_with_one_warning():
    odd = {"xla_procela_no_such_option": True, **_jit.LEAN_CPU}
    with pytest.warns(RuntimeWarning, match="xla_procela_no_such_option"):
        kept = _jit.compiler_options(odd)
    assert "xla_procela_no_such_option" not in (kept or {})
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # asked again: no second warning
        assert _jit.compiler_options(odd) == kept
    f = _jit.lean_jit(lambda x, n: x * n, cpu_options=odd)
    assert int(f(jnp.asarray(3), 2)) == 6
    assert "xla_procela_no_such_option" in _jit.report()["compiler_options"]


def test_lean_options_change_at_most_the_last_bits(sir):
    """XLA's two CPU emitters may contract ``a * b + c`` into one multiply-add in
    different places: :data:`LEAN_CPU` (used by the AMR study's entry points only,
    never by runs, sweeps or calibration) is the same arithmetic up to rounding."""
    state = sir.init(jax.random.key(2))
    run = lambda e, s: e.run(s, 30, save=pj.Save(every=3))  # noqa: E731
    want = jax.tree.leaves(eqx.filter_jit(run)(sir, state))
    got = jax.tree.leaves(_jit.lean_jit(run)(sir, state))
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
            a, b = jax.random.key_data(a), jax.random.key_data(b)
        a, b = np.asarray(a), np.asarray(b)
        if np.issubdtype(a.dtype, np.floating):
            np.testing.assert_array_max_ulp(a, b, maxulp=8)
        else:
            np.testing.assert_array_equal(a, b)


# ---- import-time fallback -----------------------------------------------------------
def test_a_missing_private_hook_falls_back_at_import():
    code = (
        "import warnings, equinox, jax._src.interpreters.mlir as m\n"
        "from jax.extend.random import threefry2x32_p as p\n"
        "saved = m._platform_specific_lowerings['cpu'].pop(p)\n"  # as if JAX had moved its CPU rule
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    import procela_jax as pj, procela_jax._jit as s\n"
        "m._platform_specific_lowerings['cpu'][p] = saved\n"
        "print(s.PRIM, len([x for x in w if 'threefry' in str(x.message)]), s.report()['threefry_lowering'][:4])\n"
        "ex = pj.demos.sir.make_executive()\n"
        "import jax\n"
        "print(float(ex.run(ex.init(jax.random.key(1)), 5)[1].value('I')[-1]))\n"
    )
    out = _python("-c", code, env={"PROCELA_JAX_CACHE": "0"})
    first, second = out.stdout.strip().splitlines()
    assert first.split() == ["None", "1", "off:"]
    ex = pj.demos.sir.make_executive()
    assert float(second) == float(ex.run(ex.init(jax.random.key(1)), 5)[1].value("I")[-1])


# ---- CPU-only forms --------------------------------------------------------------------
def test_on_cpu_is_the_identity_in_other_programs():
    fn = _jit.on_cpu(materialize)
    x = jnp.linspace(-1.0, 1.0, 12).reshape(4, 3)
    f = jax.jit(jax.vmap(lambda v: fn(jnp.sin(v)) * 2))
    np.testing.assert_array_equal(np.asarray(f(x)), np.asarray(jnp.sin(x) * 2))
    cuda = jax_export.export(f, platforms=["cuda"])(x).mlir_module()
    cpu = jax_export.export(f, platforms=["cpu"])(x).mlir_module()
    assert "stablehlo.or" not in cuda and "stablehlo.or" in cpu


# ---- the GPU on paper -------------------------------------------------------------
# What a program for the GPU must not contain: host callbacks, custom calls the GPU
# runtime lacks (LAPACK, the CPU's callbacks), the conditional that wraps each hash
# on the CPU, or the CPU's bitwise-OR layout fences.
_CALL_TARGET = re.compile(r'(?:call_target_name = |custom_call @)"?([\w.$-]+)')
_GPU_TARGETS = {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "annotate_device_placement"}


def _gpu_problems(text: str) -> list[str]:
    problems = [f"custom call {t}" for t in _CALL_TARGET.findall(text) if t not in _GPU_TARGETS]
    if "callback" in text:
        problems.append("host callback")
    if re.search(r"stablehlo\.case.*\n(.*\n){0,3}.*tensor<[\dx]*ui32>, tensor<[\dx]*ui32>", text):
        problems.append("a conditional around the hash")
    if re.search(r"stablehlo\.reduce\(.*\) applies stablehlo\.or", text):
        problems.append("bitwise-OR fence")
    return problems


def _export(fn, *args, platform="cuda"):
    return jax_export.export(jax.jit(fn), platforms=[platform])(*args).mlir_module()


def test_the_single_run_program_exports_for_the_gpu_without_cpu_forms(sir):
    state = sir.init(jax.random.key(0))
    run = lambda e, s: e.run(s, 21, save=pj.Save(every=7))  # noqa: E731
    plain = _export(run, sir, state)
    with _jit.unrolled_threefry():
        swapped = _export(run, sir, state)
    assert swapped == plain  # the CPU's rule never reaches a GPU program
    assert _gpu_problems(plain) == []


def _block(n: int, ex):
    """The sweep's block program for ``n`` scenarios, as ``pj.sweep`` builds it off
    the CPU (the plan for a GPU: no gate, no layout fences)."""
    from procela_jax import _sweep

    keys = jax.random.key_data(jax.random.split(jax.random.key(0), n))
    start = _sweep._Start(key_data=keys, init={}, impl=str(jax.random.key_impl(jax.random.key(0))))
    rows = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    save = pj.Save(every=7)
    plan = pj.choose_plan(ex, batch=n, backend="gpu")
    return (lambda e, s: _sweep._run_block_jit(e, {}, {}, s, 21, save, rows, None, plan)), start


def test_the_sweep_program_exports_for_the_gpu_without_the_cpu_hash(sir):
    block, start = _block(64, sir)
    plain = _export(block, sir, start)
    with _jit.batched_threefry():
        swapped = _export(block, sir, start)
        cpu = _export(block, sir, start, platform="cpu")
    assert swapped == plain  # the CPU's rule never reaches a GPU program...
    assert "a conditional around the hash" in _gpu_problems(cpu)  # ...and is found where it is
    assert _gpu_problems(plain) == []


def test_the_sweep_program_for_the_gpu_has_no_layout_fences(sir):
    block, start = _block(64, sir)
    assert _gpu_problems(_export(block, sir, start)) == []


# ---- the persistent cache's setup ---------------------------------------------------
_SHOW = ("import warnings\nwith warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter('always')\n"
         "    import procela_jax as pj, jax\n"
         "print(repr(pj._cache.STATUS), pj._cache.CACHE_DIR, jax.config.jax_persistent_cache_min_compile_time_secs,"
         " len([x for x in w if 'cache' in str(x.message)]))\n")


def test_the_cache_goes_to_the_xdg_folder_unless_told_otherwise(tmp_path):
    def show(**env):
        return _python("-c", _SHOW, env={"PROCELA_JAX_CACHE": None, "JAX_COMPILATION_CACHE_DIR": None, **env}).stdout

    assert show(XDG_CACHE_HOME=str(tmp_path)).split() == ["'on'", str(tmp_path / "procela_jax"), "0.0", "0"]
    off = show(PROCELA_JAX_CACHE="0")
    assert "off" in off and off.split()[-3:] == ["None", "1.0", "0"]
    own = show(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "own"))  # the user's own cache is left alone
    assert "user's own" in own and own.split()[-3:] == ["None", "1.0", "0"]
    (tmp_path / "file").write_text("")
    blocked = show(PROCELA_JAX_CACHE=str(tmp_path / "file" / "cache"))  # cannot be a folder: one warning
    assert "cannot be written" in blocked and blocked.split()[-3:] == ["None", "1.0", "1"]
