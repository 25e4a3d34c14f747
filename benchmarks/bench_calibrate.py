"""Calibration benchmark and the fits that show it on real work.

Run from the repository root::

    python benchmarks/bench_calibrate.py            # everything (a few minutes on 2 cores)
    python benchmarks/bench_calibrate.py --only speed memory
    python benchmarks/bench_calibrate.py --plot calibrate_influenza.png

Sections (every ratio is measured in this one process):

* ``speed``: one optimiser step (loss, gradient through the whole run, optax
  update) against one forward run of the same model, and against a central
  finite-difference gradient (2 runs per parameter, looped and vmapped).
* ``memory``: the compiled gradient's temporary memory against the number of
  steps, without rematerialisation, with ``remat=True`` (every step recomputed)
  and with ``remat=k`` segments (k ≈ √steps).
* ``sir``: beta and gamma of the SIR demo recovered from noisy synthetic data.
* ``mixing``: the mixing weights of two competing growth theories.
* ``influenza``: the 1978 boarding-school influenza outbreak (real data), with a
  plot of fit and data.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.resources
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import procela_jax as pj
from procela_jax.demos.growth import Gompertz, Logistic
from procela_jax._calibrate import _Config, _objective, _resolve_params, _simulate, mse_loss


def interleaved(fns: dict, rounds=60):
    """Best time of each function over ``rounds`` interleaved rounds (each round
    calls every function once), so all of them see the same machine load."""
    for f in fns.values():
        jax.block_until_ready(f())  # compile
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(f())
            best[k] = min(best[k], time.perf_counter() - t)
    return best


def _config(plist, names, steps, remat=False, segment=None):
    return _Config(params=tuple(plist), names=tuple(names), steps=steps, remat=remat, segment=segment,
                   samples=1, resample=False, tol=None, atol=0.0, patience=1, chunk=1, loss=mse_loss,
                   optimizer=optax.adam(0.05))


# ------------------------------------------------------------------ speed
def speed(horizons=(120, 1000)):
    from procela_jax._calibrate import _fittable, _run_chunk, _unconstrain

    ex = pj.demos.sir.make_executive()
    key = jax.random.key(0)
    all_params = [n for n in _fittable(ex) if not n.endswith(".population") and n != "R.init"]
    for steps in horizons:
        print(f"== speed: the SIR demo (two theories, weighted voting), {steps} steps, float32, "
              f"{jax.default_backend()}; best of interleaved rounds")
        t_obs = jnp.arange(0, steps, 2)
        _, traj = ex.run(ex.init(key), steps=steps)
        obs = {"I": traj.value("I")[t_obs] * 1.05}
        idx = (t_obs,)
        for names in (["sir.beta", "sir.gamma"], all_params):
            plist = _resolve_params(ex, names, None)
            P = len(plist)
            cfg = _config(plist, ("I",), steps)
            opt = cfg.optimizer
            theta = tuple(jnp.asarray(p.get(ex)) for p in plist)
            state = opt.init(theta)
            obj = lambda th, e: _objective(cfg, th, e, key, obs, idx)
            loss = jax.jit(obj)
            vg = jax.jit(jax.value_and_grad(obj))

            @jax.jit
            def step(th, s, e):
                v, g = jax.value_and_grad(obj)(th, e)
                u, s = opt.update(g, s, th)
                return optax.apply_updates(th, u), s, v

            eye = jnp.eye(P)

            @jax.jit
            def fd_vmap(th, e):
                flat = jnp.stack(th)
                pts = jnp.concatenate([flat + 1e-3 * eye, flat - 1e-3 * eye])
                vals = jax.vmap(lambda x: obj(tuple(x), e))(pts)
                return (vals[:P] - vals[P:]) / 2e-3

            def fd_loop():
                out = []
                for i in range(P):
                    up = tuple(t + 1e-3 if j == i else t for j, t in enumerate(theta))
                    dn = tuple(t - 1e-3 if j == i else t for j, t in enumerate(theta))
                    out.append((loss(up, ex) - loss(dn, ex)) / 2e-3)
                return out

            # calibrate's own loop body: a jitted chunk of 20 optimiser steps (vmap over 1 start)
            chunk = 20
            cfg_c = dataclasses.replace(cfg, chunk=chunk)
            th0 = tuple(jnp.asarray(_unconstrain(np.asarray(t), None))[None] for t in theta)
            z = jnp.zeros((1,), jnp.int32)
            carry = (th0, jax.vmap(opt.init)(th0), th0, jnp.full((1,), jnp.inf), jnp.full((1,), jnp.inf), z,
                     jnp.zeros((1,), bool), z, z)
            run_chunk = lambda: _run_chunk(cfg_c, carry, ex, key, obs, idx, jnp.int32(0), jnp.int32(chunk))
            best = interleaved({
                "loss": lambda: loss(theta, ex),
                "value+gradient": lambda: vg(theta, ex),
                "adam step": lambda: step(theta, state, ex),
                "calibrate loop (per iteration)": run_chunk,
                "FD, vmapped": lambda: fd_vmap(theta, ex),
                "FD, looped": fd_loop,
            }, rounds=40 if steps < 500 else 15)
            best["calibrate loop (per iteration)"] /= chunk
            base = best["loss"]
            print(f"  {P:2d} parameters   (one forward run + loss: {base * 1e3:.3f} ms)")
            for k, v in best.items():
                if k != "loss":
                    print(f"    {k:32s} {v * 1e3:8.3f} ms   {v / base:6.2f}x the forward run"
                          + (f"   {v / best['value+gradient']:5.2f}x the gradient" if k.startswith("FD") else ""))


# ------------------------------------------------------------------ memory
def memory(step_counts=(100, 400, 1600, 6400)):
    print("== memory: temporary bytes of the compiled value+gradient of the calibration loss (SIR demo)")
    ex = pj.demos.sir.make_executive()
    key = jax.random.key(0)
    plist = _resolve_params(ex, ["sir.beta", "sir.gamma"], None)
    theta = tuple(jnp.asarray(p.get(ex)) for p in plist)
    print(f"  {'steps':>6} {'no remat':>12} {'remat=True':>12} {'remat=k':>12}  k")
    for steps in step_counts:
        idx = (jnp.arange(0, steps, 5),)
        obs = {"I": jnp.ones(idx[0].shape)}
        k = max(1, int(round(math.sqrt(steps))))
        row = []
        for remat, seg in ((False, None), (True, None), (True, k)):
            cfg = _config(plist, ("I",), steps, remat, seg)
            f = jax.jit(jax.value_and_grad(lambda th, e: _objective(cfg, th, e, key, obs, idx)))
            mem = f.lower(theta, ex).compile().memory_analysis()
            row.append(mem.temp_size_in_bytes if mem is not None else float("nan"))
        print(f"  {steps:6d} {row[0] / 2**10:10.1f}KB {row[1] / 2**10:10.1f}KB {row[2] / 2**10:10.1f}KB  {k}")


# ------------------------------------------------------------------ recoveries
def sir(iterations=500):
    print("== sir: recover beta and gamma of the SIR demo from noisy synthetic data (5% noise, every 2nd day)")
    truth = {"sir.beta": 0.4, "sir.gamma": 0.15}
    rng = np.random.default_rng(7)
    t = np.arange(0, 120, 2)
    cases = [
        ("seasonal theory's weight 0 (the resolved value is the deterministic theory's)",
         {"seasonal.weight": 0.0}, {}),
        ("both theories on, seasonal rates known (same in data and model, same key)",
         {"seasonal.weight": 1.0}, {}),
        ("both theories on, data's seasonal rates also 0.4/0.15 but left at 0.3/0.1 in the model",
         {"seasonal.weight": 1.0}, {"seasonal.beta": 0.4, "seasonal.gamma": 0.15}),
    ]
    for label, model, extra in cases:
        ex = pj.demos.sir.make_executive().replace(model)
        _, traj = ex.replace({**truth, **extra}).run(ex.init(jax.random.key(0)), steps=120)
        y = np.asarray(traj.value("I"))[t] * (1 + 0.05 * rng.standard_normal(t.size))
        t0 = time.perf_counter()
        fitted, h = pj.calibrate(ex, data={"I": (t, y)}, params=["sir.beta", "sir.gamma"], steps=120,
                                 optimizer=optax.adam(0.05), iterations=iterations, seed=0, progress=False)
        dt = time.perf_counter() - t0
        errs = {k: abs(float(fitted.get(k)) - v) / v for k, v in truth.items()}
        print(f"  {label}:\n    {h.iterations} iterations, loss {h.loss[0]:.1f} -> {h.best_loss:.3f}, "
              + ", ".join(f"{k}={float(fitted.get(k)):.4f} (err {100 * e:.2f}%)" for k, e in errs.items())
              + f", {dt:.1f} s")


def mixing():
    print("== mixing: weights of two competing growth theories under weighted voting (1% noise)")

    N = pj.Variable("N", pj.RangeDomain(0.0, None), init=5.0)
    ex = pj.Executive(variables=[N], mechanisms=[
        Logistic(r=0.25, K=100.0, weight=1.0, reads=[N], writes=[N], name="logistic"),
        Gompertz(r=0.12, K=140.0, weight=1.0, reads=[N], writes=[N], name="gompertz"),
    ])
    params = ["logistic.weight", "gompertz.weight"]
    t = np.arange(40)
    for share in (0.7, 0.25):
        truth = ex.replace({"logistic.weight": share, "gompertz.weight": 1 - share})
        _, traj = truth.run(truth.init(jax.random.key(0)), steps=40)
        y = np.asarray(traj.value("N"))[t] * (1 + 0.01 * np.random.default_rng(3).standard_normal(t.size))
        t0 = time.perf_counter()
        fitted, h = pj.calibrate(ex, {"N": (t, y)}, params, steps=40, optimizer=optax.adam(0.05),
                                 bounds={p: (0.0, None) for p in params}, iterations=300, progress=False)
        w = np.array([float(fitted.get(p)) for p in params])
        got = w[0] / w.sum()
        print(f"  true logistic share {share:.2f}: fitted {got:.4f} (err {100 * abs(got - share) / share:.2f}%), "
              f"weights {w.round(4)} (only their ratio is identifiable), {h.iterations} iterations, "
              f"loss {h.loss[0]:.2f} -> {h.best_loss:.3f}, {time.perf_counter() - t0:.1f} s")


def influenza(plot=None, k=8):
    print("== influenza: the 1978 boarding-school outbreak (763 boys, number in bed on 14 days)")
    path = importlib.resources.files("procela_jax") / "data" / "influenza_england_1978_school.csv"
    table = np.genfromtxt(str(path), delimiter=",", names=True, dtype=None, encoding=None)
    y = table["in_bed"].astype(float)
    t = (np.arange(len(y)) + 1) * k - 1  # k steps a day, observed at the end of each day
    ex = pj.demos.sir.make_executive(population=763.0, infected=1.0, beta=1.0 / k, gamma=0.2 / k)
    ex = ex.replace({"seasonal.weight": 0.0})
    t0 = time.perf_counter()
    fitted, h = pj.calibrate(ex, {"I": (t, y)}, ["sir.beta", "sir.gamma"], steps=int(t[-1]) + 1,
                             bounds={"sir.beta": (0.0, 5.0 / k), "sir.gamma": (0.0, 1.0 / k)},
                             optimizer=optax.adam(0.05), iterations=1000, starts=4, tol=1e-6, patience=20,
                             progress=False)
    dt = time.perf_counter() - t0
    beta, gamma = float(fitted.get("sir.beta")) * k, float(fitted.get("sir.gamma")) * k
    print(f"  {k} steps a day, 4 starts, stopped by tol after {h.iterations} iterations (best start), {dt:.1f} s: "
          f"beta {beta:.3f}/day, "
          f"gamma {gamma:.3f}/day, R0 {beta / gamma:.2f}, RMSE {math.sqrt(h.best_loss):.1f} people "
          f"(from {math.sqrt(h.loss[0]):.1f}); start losses {np.round(h.start_best_loss, 1)}")
    if plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        _, traj = fitted.run(fitted.init(jax.random.key(0)), steps=int(t[-1]) + 1 + 4 * k)
        days = (np.arange(len(traj)) + 1) / k
        fig, (ax, axl) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [2, 1]})
        ax.plot(days, np.asarray(traj.value("I")), color="tab:red", label="fitted SIR: I (infectious)")
        ax.plot(days, np.asarray(traj.value("R")), color="tab:green", alpha=0.5, label="fitted SIR: R")
        ax.plot(np.arange(1, len(y) + 1), y, "ko", label="boys in bed (data)")
        ax.set_xlabel("day (day 1 = 22 Jan 1978)")
        ax.set_ylabel("boys")
        ax.set_title(f"Influenza, boarding school 1978: beta={beta:.2f}/d, gamma={gamma:.2f}/d, R0={beta / gamma:.2f}")
        ax.legend()
        axl.semilogy(h.loss, color="tab:blue")
        axl.set_xlabel("iteration")
        axl.set_ylabel("loss (MSE, people²)")
        axl.set_title("calibration loss (best start)")
        fig.tight_layout()
        fig.savefig(plot, dpi=110)
        plt.close(fig)
        print(f"  plot written to {plot}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", default=["speed", "memory", "sir", "mixing", "influenza"])
    parser.add_argument("--plot", default="calibrate_influenza.png")
    args = parser.parse_args()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    for name in args.only:
        if name == "influenza":
            influenza(args.plot)
        else:
            globals()[name]()


if __name__ == "__main__":
    main()
