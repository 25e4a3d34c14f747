"""The reproduction table: the port's figures beside the original's published ones."""

from __future__ import annotations

import math

import numpy as np

#: The original's published protocol (``main.py -r 50 -s 160``, seeds 0..49): per
#: setting the mean over runs of the mean error, its sample sd, the 95% CI of that
#: mean (t(0.975, 49) = 2.0096), the mean within-run std, the mean final diff, and the
#: printed improvements against ``none`` (mean error, final diff), in %.
PUBLISHED = {
    "none": dict(mean=0.534898, sd=0.018793, ci=(0.5296, 0.5402), within=0.383491, final=14.1338,
                 improvement=None, regret=None),
    "fragility": dict(mean=0.543646, sd=0.018870, ci=(0.5383, 0.5490), within=0.386221, final=12.7710,
                      improvement=-1.636, regret=-9.6),
    "coverage": dict(mean=0.425623, sd=0.035863, ci=(0.4154, 0.4358), within=0.326890, final=19.4133,
                     improvement=20.429, regret=37.4),
    "probe": dict(mean=0.485100, sd=0.019762, ci=(0.4795, 0.4907), within=0.364297, final=23.8929,
                  improvement=9.310, regret=69.0),
    "all": dict(mean=0.491099, sd=0.029871, ci=(0.4826, 0.4996), within=0.378457, final=23.0640,
                improvement=8.188, regret=63.2),
}
PUBLISHED_RUNS = 50


def _t975(df: int) -> float:
    """Student's t 97.5% quantile (Cornish-Fisher expansion; 2.0096 at df = 49)."""
    z = 1.959963984540054
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2) + (
        3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)


def summarise(res) -> dict:
    """Per setting: the port's statistics and their comparison with the original's.

    ``in_ci``: the port's mean error lies inside the original's 95% CI;
    ``compatible``: it lies within ``3 * sqrt(SEM_orig^2 + SEM_port^2)`` of the original's
    mean (the test for two independent samples; a plain CI test fails about 17% of the
    time for a perfect port with 50 runs).

    >>> from procela_jax.demos import amr
    >>> summary = amr.summarise(amr.run_protocol(seeds=range(2), steps=20, noise="jax"))
    >>> sorted(summary["probe"])[:4], summary["none"]["improvement"] is None
    (['below_none', 'ci', 'compatible', 'final'], True)
    """
    out = {}
    none = res.row("none") if "none" in res.settings else None
    for i, s in enumerate(res.settings):
        me = np.asarray(res.mean_error[i], float)
        n = me.size
        sd = float(me.std(ddof=1)) if n > 1 else float("nan")
        mean = float(me.mean())
        fd = float(np.mean(res.final_diff[i]))
        pub = PUBLISHED[s]
        row = dict(
            runs=n, mean=mean, sd=sd, ci=(mean - _t975(n - 1) * sd / math.sqrt(n), mean + _t975(n - 1) * sd / math.sqrt(n))
            if n > 1 else (float("nan"),) * 2,
            within=float(np.mean(res.std_error[i])), final=fd, published=pub,
        )
        sem_port = sd / math.sqrt(n) if n > 1 else float("inf")
        sem_orig = pub["sd"] / math.sqrt(PUBLISHED_RUNS)
        row["in_ci"] = pub["ci"][0] <= mean <= pub["ci"][1]
        row["compatible"] = abs(mean - pub["mean"]) <= 3 * math.sqrt(sem_orig**2 + sem_port**2)
        if none is not None:
            m0 = float(np.mean(res.mean_error[none]))
            f0 = float(np.mean(res.final_diff[none]))
            row["improvement"] = None if i == none else (m0 - mean) / m0 * 100
            row["regret"] = None if i == none else (fd - f0) / f0 * 100
            row["below_none"] = None if i == none else float(np.mean(res.mean_error[i] < res.mean_error[none]))
        out[s] = row
    return out


def reproduction_table(res) -> str:
    """The reproduction table as text: per setting the mean prediction error ± sd over
    the runs, the cumulative-regret (final diff) and mean-error improvements against
    ``none``, each beside the original's published figure, and whether the port's mean
    lies within the original's 95% CI.

    >>> from procela_jax.demos import amr
    >>> res = amr.run_protocol(seeds=range(2), steps=20, noise="jax")
    >>> print(amr.reproduction_table(res).splitlines()[0])  # doctest: +ELLIPSIS
    AMR protocol: 2 runs per setting, 20 steps, noise=jax ...
    """
    summ = summarise(res)
    pct = lambda x: "      -" if x is None else f"{x:+7.1f}"  # noqa: E731
    lines = [
        f"AMR protocol: {res.mean_error.shape[1]} runs per setting, {res.steps} steps, noise={res.noise} "
        f"(original: {PUBLISHED_RUNS} runs, 160 steps)",
        "",
        f"{'setting':<10} {'mean error ± sd':>17} {'original':>17}  {'in CI':>5} {'3σ':>3}"
        f" {'regret impr. %':>15} {'error impr. %':>15}  {'within-run std':>15}",
        f"{'':<10} {'(port)':>17} {'(published)':>17}  {'':>5} {'':>3} {'port / orig':>15} {'port / orig':>15}"
        f"  {'port / orig':>15}",
    ]
    for s, row in summ.items():
        pub = row["published"]
        lines.append(
            f"{s:<10} {row['mean']:8.4f} ± {row['sd']:6.4f} {pub['mean']:8.4f} ± {pub['sd']:6.4f}"
            f"  {'yes' if row['in_ci'] else 'no':>5} {'ok' if row['compatible'] else 'no':>3}"
            f" {pct(row.get('regret'))} /{pct(pub['regret'])} {pct(row.get('improvement'))} /{pct(pub['improvement'])}"
            f"  {row['within']:6.4f} / {pub['within']:6.4f}"
        )
    lines += [
        "",
        "in CI: the port's mean lies inside the original's 95% CI; 3σ: within 3 sd of the difference of two",
        "independent means. Regret improvement: (final diff - final diff of none) / final diff of none, where",
        "the final diff is the cumulative (baseline error - error) up to step steps-2.",
    ]
    if res.noise == "numpy" and res.steps == 160 and list(res.seeds) == list(range(PUBLISHED_RUNS)):
        lines.append("This is the exact replay of the original's runs (its numpy noise): the figures must match.")
    return "\n".join(lines)


def print_table(res) -> None:
    """Print :func:`reproduction_table`.

    >>> from procela_jax.demos import amr
    >>> amr.print_table(amr.run_protocol(seeds=range(2), steps=20, noise="jax"))  # doctest: +ELLIPSIS
    AMR protocol: 2 runs per setting, 20 steps, noise=jax (original: 50 runs, 160 steps)
    ...
    """
    print(reproduction_table(res))


def main(seeds: int = PUBLISHED_RUNS, steps: int = 160, noise: str = "numpy", seed: int = 0, out: str | None = None) -> dict:
    """The study for the command line: ``seeds`` runs of every governance setting
    (seeds ``seed .. seed + seeds - 1``; by default the original's 50, so 250 runs
    that replay its published ones) in one batch, the reproduction table, and the
    timings; with ``out``, also a figure of the cumulative regret of those runs,
    written to that path (``procela-jax demo amr`` writes ``amr_demo.png``).

    ``noise="numpy"`` replays the original's runs and switches ``jax_enable_x64`` on
    for this process. Returns the per-setting summary (:func:`summarise`).

    >>> from procela_jax.demos import amr
    >>> summary = amr.main(seeds=2, steps=20, noise="jax")  # doctest: +ELLIPSIS
    Antimicrobial resistance in a hospital: ...
    >>> list(summary)
    ['none', 'fragility', 'coverage', 'probe', 'all']
    """
    import time

    import jax

    from ._protocol import run_protocol

    if noise == "numpy":
        jax.config.update("jax_enable_x64", True)
    chosen = range(seed, seed + seeds)
    t0 = time.perf_counter()
    run_protocol(seeds=chosen, steps=steps, noise=noise)
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = run_protocol(seeds=chosen, steps=steps, noise=noise)
    again = time.perf_counter() - t0
    print("Antimicrobial resistance in a hospital: 11 competing theories, 4 governance units")
    print(f"({len(res.settings)} settings x {seeds} seeds = {len(res.settings) * seeds} runs of {steps} steps, one batch)")
    print()
    print(reproduction_table(res))
    print()
    print(f"first call (compile + run) {first:.1f} s; again {again * 1e3:.0f} ms "
          f"({again / (len(res.settings) * seeds) * 1e3:.2f} ms per run)")
    if out is not None:
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from ._figures import figure_regret, trace

        fig = figure_regret(trace(seeds=chosen, steps=steps, noise=noise))
        fig.savefig(out, dpi=110)
        plt.close(fig)
        print(f"cumulative regret figure written to {out}")
    return summarise(res)
