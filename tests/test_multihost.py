"""Two processes joined by jax.distributed (loopback, CPU, gloo collectives) run one sweep.

Each process has two CPU devices, so the mesh spans four devices in two
processes; each keeps the rows on its own devices. Together they must equal the
sweep run here in one process, bit for bit, and both must hold the same
summaries across all scenarios.
"""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np

import procela_jax as pj

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, STEPS = 45, 12
BETAS = np.linspace(0.2, 0.5, N)
STATS = ("mean", "std", 0.1, 0.5, 0.9)

WORKER = textwrap.dedent(
    """
    import json, sys
    import jax
    import numpy as np
    pid, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=pid,
                               initialization_timeout=120)
    import procela_jax as pj
    N, STEPS = %d, %d
    betas = np.linspace(0.2, 0.5, N)
    ex = pj.demos.sir.make_executive()
    kw = dict(seeds=range(N), params={"sir.beta": betas}, chunk_size=8)
    res = pj.sweep(ex, STEPS, **kw)
    summ = pj.sweep(ex, STEPS, **kw, summaries=%r, variables=["I"], fields=["value"])
    np.savez(out, rows=res.rows, I=res.value("I"), S=res.value("S"), final=res.final.values,
             seeds=res.inputs.seeds, beta=res.inputs.params["sir.beta"], halted=res.halted,
             **{"summary_" + k: v for k, v in summ.summaries["value"].items()})
    print(json.dumps(dict(pid=pid, devices=len(jax.devices()), local=len(jax.local_devices()),
                          info=res.info)), flush=True)
    jax.distributed.shutdown()
    """
) % (N, STEPS, STATS)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_together_equal_one_process(tmp_path):
    port = _free_port()
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu",
               PYTHONPATH=ROOT)
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(pid), str(port), str(tmp_path / f"p{pid}.npz")],
                         env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for pid in (0, 1)
    ]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=420)
            assert p.returncode == 0, err[-4000:]
            outs.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["devices"] for o in outs] == [4, 4] and [o["local"] for o in outs] == [2, 2]
    parts = [np.load(tmp_path / f"p{pid}.npz") for pid in (0, 1)]
    # 4 devices x 8 rows (ROW_TILE) = chunks of 32: process 0 holds rows 0-15 and 32-44, process 1 rows 16-31
    rows = np.concatenate([p["rows"] for p in parts])
    assert sorted(rows.tolist()) == list(range(N)) and len(set(rows.tolist())) == N
    assert len(parts[0]["rows"]) > 0 and len(parts[1]["rows"]) > 0

    ex = pj.demos.sir.make_executive()
    kw = dict(seeds=range(N), params={"sir.beta": BETAS})
    one = pj.sweep(ex, STEPS, **kw)
    summ = pj.sweep(ex, STEPS, **kw, summaries=STATS, variables=["I"], fields=["value"])
    for p in parts:
        r = p["rows"]
        np.testing.assert_array_equal(p["I"], one.value("I")[r])
        np.testing.assert_array_equal(p["S"], one.value("S")[r])
        np.testing.assert_array_equal(p["final"], one.final.values[r])
        np.testing.assert_array_equal(p["seeds"], np.arange(N)[r])
        np.testing.assert_array_equal(p["beta"], one.inputs.params["sir.beta"][r])
        np.testing.assert_array_equal(p["halted"], one.halted[r])
        for k, v in summ.summaries["value"].items():
            np.testing.assert_array_equal(p["summary_" + k], v)
