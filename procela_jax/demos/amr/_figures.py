"""Per-step traces of the AMR study and its figures."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..._jit import lean_jit
from ..._save import Save
from ._model import FAMILIES, FAMILY_OF, N_MECH
from ._protocol import ACTIVE, SETTINGS, _check, _flags, make_executive, numpy_noise

_SAVED = ("colonized", "predicted_colonized", "baseline_colonized", "intervention_code", "error_colonized",
          "error_baseline_colonized", *(f"{f}_coverage" for f in FAMILIES), "policy_fragility", "regime")
_REGIME_COLOURS = ("#f4c7c3", "#cfe8cf", "#c9daf8")  # selection, environmental, contact
_FAMILY_COLOURS = ("tab:blue", "tab:green", "tab:red")


def _extra(state):
    hyp = state.audit
    ip = state.layout.var("predicted_colonized")
    return dict(
        proposals=hyp["values"][ip, :N_MECH], proposed=hyp["mask"][ip, :N_MECH],
        confidences=hyp["confidences"][ip, :N_MECH], hc=state.policy_index("intervention_code") == 1,
        regret=state.aux["tally"]["regret"],
        experimenting=jnp.stack([state.aux[u]["on"] for u in ("fragility", "coverage", "probe")]),
    )


@lean_jit
def _trace_batch(ex, streams, keys, flags, steps):
    def one(stream, key, on):
        aux = ex.aux if stream is None else {**ex.aux, "noise": stream}
        state = ex.init(key, active_invariants=_flags(on), aux=aux)
        _, traj = ex.run(state, steps, save=Save(variables=_SAVED, fields=("value",), fn=_extra))
        return {n: traj.value(n) for n in _SAVED}, traj.extra

    return jax.vmap(one, in_axes=(None if streams is None else 0, 0, 0))(streams, keys, flags)


def trace(seeds=(0,), steps: int = 160, noise: str = "numpy", settings=SETTINGS) -> dict:
    """Per-step quantities of every (setting, seed) run: a dict of arrays of shape
    ``(settings, seeds, steps, ...)``: the saved variables (``colonized``,
    ``predicted_colonized``, ..., the coverages, ``policy_fragility``), each theory's
    forecast ``proposals`` with ``proposed`` (its mask) and ``confidences``, ``hc``
    (HighestConfidence in force), ``regret`` (the cumulative baseline-minus-actual
    error) and ``experimenting`` (fragility, coverage, probe), plus ``settings``.

    >>> from procela_jax.demos import amr
    >>> tr = amr.trace(seeds=(0,), steps=20, noise="jax")
    >>> tr["colonized"].shape, tr["proposals"].shape
    ((5, 1, 20), (5, 1, 20, 11))
    """
    seeds = np.asarray(list(seeds))
    _check(steps=steps, noise=noise, seeds=seeds)
    settings = tuple(settings)
    ex = make_executive(steps=steps, noise=noise)
    n_set, n_seed = len(settings), len(seeds)
    flags = jnp.asarray(np.repeat(np.asarray([ACTIVE[s] for s in settings]), n_seed, axis=0))
    keys = jax.vmap(jax.random.key)(jnp.asarray(np.tile(seeds, n_set), jnp.uint32))
    streams = None
    if noise == "numpy":
        streams = jnp.asarray(np.tile(np.stack([numpy_noise(int(s), steps) for s in seeds]), (n_set, 1)))
    values, extra = jax.device_get(_trace_batch(ex, streams, keys, flags, int(steps)))
    out = {k: np.asarray(v).reshape((n_set, n_seed) + np.shape(v)[1:]) for k, v in {**values, **extra}.items()}
    out["settings"] = settings
    return out


def _shade_regimes(ax, regime):
    t = np.arange(len(regime))
    for r, colour in enumerate(_REGIME_COLOURS):
        ax.fill_between(t, 0, 1, where=regime == r, color=colour, alpha=0.5, lw=0,
                        transform=ax.get_xaxis_transform())


def _family_mean(tr, i, j, f):
    members = np.asarray(FAMILY_OF) == f
    w = tr["confidences"][i, j][:, members] * tr["proposed"][i, j][:, members]
    v = tr["proposals"][i, j][:, members]
    total = w.sum(1)
    return np.where(total > 0, (w * v).sum(1) / np.where(total > 0, total, 1), np.nan)


def figure_predictions(tr, setting="none", seed_index=0):
    """Colonisation against each family's forecast (its theories' confidence-weighted
    mean) and the resolved forecast, one step ahead.

    >>> from procela_jax.demos import amr
    >>> fig = amr.figure_predictions(amr.trace(seeds=(0,), steps=20, noise="jax"))
    >>> len(fig.axes) > 0
    True
    """
    import matplotlib.pyplot as plt

    i = tr["settings"].index(setting)
    c = tr["colonized"][i, seed_index]
    t = np.arange(len(c))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    _shade_regimes(ax, tr["regime"][i, seed_index])
    ax.plot(t[1:], c[1:], color="black", lw=2, label="colonised (world)")
    for f, fam in enumerate(FAMILIES):
        ax.plot(t[1:], _family_mean(tr, i, seed_index, f)[:-1], color=_FAMILY_COLOURS[f], lw=1, label=f"{fam} family")
    ax.plot(t[1:], tr["predicted_colonized"][i, seed_index][:-1], color="purple", ls="--", lw=1.5,
            label="resolved forecast")
    ax.set_xlabel("step")
    ax.set_ylabel("colonised patients")
    ax.set_title(f"Forecasts one step ahead ({setting} governance); shading: true driver "
                 "(selection, environment, contact)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig


def _setting_rows(tr, columns, width, row_height):
    """A figure with one row of ``columns`` panels per governance setting, sharing
    the step axis: ``(fig, axes)`` with ``axes`` of shape ``(settings, columns)``."""
    import matplotlib.pyplot as plt

    n = len(tr["settings"])
    return plt.subplots(n, columns, figsize=(width, row_height * n + 0.6), sharex=True, squeeze=False)


def figure_trust(tr, seed_index=0):
    """Which family the resolution trusted: each family's share of the confidence
    behind the forecast, per step, for every governance setting.

    >>> from procela_jax.demos import amr
    >>> fig = amr.figure_trust(amr.trace(seeds=(0,), steps=20, noise="jax"))
    >>> len(fig.axes) > 0
    True
    """
    fig, axes = _setting_rows(tr, columns=1, width=9, row_height=1.6)
    axes = axes[:, 0]
    for i, (ax, s) in enumerate(zip(axes, tr["settings"])):
        w = tr["confidences"][i, seed_index] * tr["proposed"][i, seed_index]
        share = np.stack([w[:, np.asarray(FAMILY_OF) == f].sum(1) for f in range(3)]) / w.sum(1)
        ax.stackplot(np.arange(share.shape[1]), share, colors=_FAMILY_COLOURS, labels=FAMILIES, alpha=0.8)
        on = tr["experimenting"][i, seed_index].any(-1)
        ax.fill_between(np.arange(len(on)), 1.0, 1.08, where=on, color="black", lw=0, clip_on=False)
        ax.set_ylim(0, 1)
        ax.set_ylabel(s, rotation=0, ha="right", va="center")
    axes[0].legend(loc="upper right", ncol=3, fontsize=8)
    axes[0].set_title("Share of the forecast's confidence by family (black bar: an experiment is running)", pad=10)
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    return fig


def figure_signals(tr, seed_index=0):
    """Governance signals per setting: family coverage and policy fragility.

    >>> from procela_jax.demos import amr
    >>> fig = amr.figure_signals(amr.trace(seeds=(0,), steps=20, noise="jax"))
    >>> len(fig.axes) > 0
    True
    """
    fig, axes = _setting_rows(tr, columns=2, width=11, row_height=1.7)
    for i, s in enumerate(tr["settings"]):
        t = np.arange(tr["colonized"].shape[2])
        for f, fam in enumerate(FAMILIES):
            axes[i, 0].plot(t[1:], tr[f"{fam}_coverage"][i, seed_index][1:], color=_FAMILY_COLOURS[f], label=fam)
        axes[i, 0].axhline(0.85, color="grey", ls=":", lw=1)
        axes[i, 0].set_ylabel(s, rotation=0, ha="right", va="center")
        axes[i, 1].plot(t, tr["policy_fragility"][i, seed_index], color="black")
        axes[i, 1].axhline(0.6, color="grey", ls=":", lw=1)
        axes[i, 1].set_ylim(-0.05, 1.0)
    axes[0, 0].set_title("family coverage (threshold 0.85)")
    axes[0, 1].set_title("policy fragility (threshold 0.6)")
    axes[0, 0].legend(fontsize=7, loc="lower left")
    axes[-1, 0].set_xlabel("step")
    axes[-1, 1].set_xlabel("step")
    fig.tight_layout()
    return fig


def figure_regret(tr):
    """Cumulative regret (baseline error minus actual error, summed), mean over the
    runs with a ±1 sd band, per governance setting.

    >>> from procela_jax.demos import amr
    >>> fig = amr.figure_regret(amr.trace(seeds=(0,), steps=20, noise="jax"))
    >>> len(fig.axes) > 0
    True
    """
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    colours = ("black", "tab:orange", "tab:blue", "tab:green", "tab:purple")
    for i, s in enumerate(tr["settings"]):
        d = tr["regret"][i][:, 1:-1]  # steps 1 .. steps-2, as the original plots it
        m, sd = d.mean(0), d.std(0)
        t = np.arange(1, d.shape[1] + 1)
        ax.plot(t, m, color=colours[i % len(colours)], label=f"{s} (final {m[-1]:.1f})")
        ax.fill_between(t, m - sd, m + sd, color=colours[i % len(colours)], alpha=0.15, lw=0)
    ax.set_xlabel("step")
    ax.set_ylabel("cumulative regret")
    ax.set_title(f"Cumulative regret, mean ± sd over {tr['regret'].shape[1]} runs")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def save_figures(out_dir: str = "amr_figures", seeds=range(50), steps: int = 160, noise: str = "numpy") -> list:
    """Write the study's figures as PNG files into ``out_dir``; returns their paths.
    (``noise="numpy"`` needs ``jax_enable_x64``.)

    >>> import tempfile
    >>> from procela_jax.demos import amr
    >>> with tempfile.TemporaryDirectory() as d:
    ...     [p.rsplit("/", 1)[-1] for p in amr.save_figures(d, seeds=(0,), steps=20, noise="jax")]
    ['amr_predictions.png', 'amr_trust.png', 'amr_signals.png', 'amr_regret.png']
    """
    import os

    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    os.makedirs(out_dir, exist_ok=True)
    tr = trace(seeds=seeds, steps=steps, noise=noise)
    paths = []
    for name, fig in (("predictions", figure_predictions(tr)), ("trust", figure_trust(tr)),
                      ("signals", figure_signals(tr)), ("regret", figure_regret(tr))):
        path = os.path.join(out_dir, f"amr_{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths
