"""Scenarios spread over 8 (virtual CPU) devices equal the single-device sweep, bit for bit.

The check runs in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` so this test process keeps
its one device.
"""

import json
import os
import subprocess
import sys
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SCRIPT = textwrap.dedent(
    """
    import json
    import jax, numpy as np
    import procela_jax as pj
    from procela_jax import _sweep
    from conftest import host_leaves
    from test_sweep import small

    devices = jax.devices()
    assert len(devices) == 8, devices
    seen = []
    real = _sweep._run_block

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(len(out[0].values.sharding.device_set))
        return out

    _sweep._run_block = spy

    def same(a, b):
        la, lb = host_leaves(a), host_leaves(b)
        assert len(la) == len(lb)
        for x, y in zip(la, lb):
            np.testing.assert_array_equal(x, y)

    report = {}
    # the SIR demo: 8 devices, 1 device, 3 devices with padding, and chunks of 8
    ex = pj.demos.sir.make_executive()
    n, steps = 45, 30
    kw = dict(seeds=range(n), init={"I": np.linspace(1, 50, n)}, params={"sir.beta": np.linspace(0.2, 0.5, n)})
    runs = {
        "8 devices": pj.sweep(ex, steps, **kw),
        "1 device, chunks of 16": pj.sweep(ex, steps, **kw, chunk_size=16, devices=devices[:1]),
        "3 devices, chunks of 24": pj.sweep(ex, steps, **kw, chunk_size=24, devices=devices[:3]),
    }
    report["sharded_over"] = sorted(set(seen))
    report["sir_info"] = {k: [r.info["devices"], r.info["per_device"], r.info["chunks"]] for k, r in runs.items()}
    base = runs["1 device, chunks of 16"]
    for name, r in runs.items():
        same(r.trajectory, base.trajectory)
        same(r.final, base.final)
    # governance: scenarios halted by a FATAL invariant, and summaries across scenarios
    small_ex = small()
    rates = np.linspace(0.0, 4.0, 19)
    kw = dict(seeds=range(19), params={"grow.rate": rates})
    a = pj.sweep(small_ex, 6, **kw)
    b = pj.sweep(small_ex, 6, **kw, devices=devices[:1])
    same(a.trajectory, b.trajectory)
    same(a.final, b.final)
    np.testing.assert_array_equal(a.halted, b.halted)
    report["halted"] = int(a.halted.sum())
    stats = ("mean", "std", 0.1, 0.5, 0.9)
    sa = pj.sweep(small_ex, 6, **kw, summaries=stats)  # the trajectories' compiles serve the summaries
    sb = pj.sweep(small_ex, 6, **kw, summaries=stats, devices=devices[:1])
    for field in sa.summaries:
        for stat in sa.summaries[field]:
            np.testing.assert_array_equal(sa.summaries[field][stat], sb.summaries[field][stat])
    report["ok"] = True
    print(json.dumps(report))
    """
)


def test_eight_devices_equal_one_device_bit_for_bit():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([ROOT, os.path.join(ROOT, "tests")]))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-4000:]
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"]
    assert 8 in report["sharded_over"] and 1 in report["sharded_over"] and 3 in report["sharded_over"]
    assert report["sir_info"] == {"8 devices": [8, 8, 1], "1 device, chunks of 16": [1, 16, 3],
                                  "3 devices, chunks of 24": [3, 8, 2]}
    assert report["halted"] > 0
