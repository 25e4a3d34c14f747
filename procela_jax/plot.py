"""Plots of what users look at: trajectories, hypotheses, dominance, fan charts, losses.

Every function draws on a matplotlib ``Axes`` (a new figure when ``ax`` is not
given) and returns that ``Axes``; its figure is ``ax.figure``. matplotlib is
imported when a function is first called, never when ``procela_jax`` is
imported.

Bands, and what they mean (``trajectories(..., band=...)``):

- ``"scenarios"`` (a batched run, leading scenario axis): the median across
  scenarios, shaded between the ``quantiles`` (default 5 % and 95 %). This is
  the spread of outcomes the model itself produces.
- ``"hypotheses"`` (a run saved with ``Save(audit=True)``): the resolved value,
  shaded between the lowest and the highest valid hypothesis of that step.
  This is the disagreement of the competing theories: a thin band means they
  agree, a wide one that the resolved value rests on a contested choice.
- ``"confidence"``: the resolved value ``v`` shaded over ``v ± (1 - c)|v|``
  where ``c`` is its confidence: the confidence read as a relative precision
  (``c = 1`` draws a line, ``c = 0.5`` a ±50 % band). A convention, shown when
  nothing better was saved.
- ``"auto"`` (default) picks the first of these the trajectory allows;
  ``None`` draws no band.

>>> import matplotlib; matplotlib.use("Agg")
>>> import jax, procela_jax as pj
>>> ex = pj.demos.sir.make_executive()
>>> _, traj = ex.run(ex.init(jax.random.key(0)), steps=30)
>>> ax = pj.plot.trajectories(traj, ["I"])
>>> [line.get_label() for line in ax.get_lines()]
['I']
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["dominance", "dominant_mechanism", "fan", "hypotheses", "loss", "trajectories"]

_BANDS = ("auto", "scenarios", "hypotheses", "confidence", None)


def _pyplot():
    import matplotlib.pyplot as plt

    return plt


def _axes(ax, figsize=(8, 4)):
    if ax is not None:
        return ax
    fig, ax = _pyplot().subplots(figsize=figsize)
    return ax


def _select(traj, scenario):
    """One scenario of a batched trajectory (``scenario`` indexes the leading axes)."""
    if scenario is None:
        return traj
    import jax

    idx = scenario if isinstance(scenario, tuple) else (scenario,)
    return jax.tree.map(lambda a: a[idx], traj)


def _single(traj, scenario, what):
    traj = _select(traj, scenario)
    if np.ndim(traj.steps) != 1:
        raise ValueError(
            f"{what} draws one scenario, but this trajectory has scenario axes of shape "
            f"{np.shape(traj.steps)[:-1]}; pass scenario=i"
        )
    return traj


def _slot_labels(traj, name, executive):
    """Mechanism index and label of each hypothesis slot of ``name``."""
    width = np.shape(traj.hypotheses(name)["values"])[-1]
    if executive is None:
        return [None] * width, [f"slot {k}" for k in range(width)]
    j = executive.layout.var(name)
    mech = [int(m) for m in executive.tables.slot_mech[j]][:width]
    labels = [executive.layout.mechanisms[m] if m >= 0 else f"slot {k}" for k, m in enumerate(mech)]
    return mech, labels


def trajectories(
    traj,
    variables: Sequence[str] | None = None,
    *,
    band: str | None = "auto",
    quantiles: tuple[float, float] = (0.05, 0.95),
    scenario=None,
    ax=None,
):
    """Resolved values over the steps, one line per variable, with a band.

    **Arguments:**

    - `traj`: a [`procela_jax.Trajectory`][] (single or batched).
    - `variables`: names to draw (default: every saved variable).
    - `band`: ``"auto"``, ``"scenarios"``, ``"hypotheses"``, ``"confidence"``
      or ``None``; see the module docstring for what each shows.
    - `quantiles`: the lower and upper quantile of the ``"scenarios"`` band.
    - `scenario`: draw only this scenario of a batched trajectory.
    - `ax`: the Axes to draw on (default: a new figure).

    **Returns:** the Axes, with one line per variable labelled by its name and
    one shaded band per variable (none with ``band=None``).

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import jax, procela_jax as pj
    >>> ex = pj.demos.sir.make_executive()
    >>> keys = jax.random.split(jax.random.key(0), 8)
    >>> _, traj = jax.vmap(lambda s: ex.run(s, 50))(jax.vmap(ex.init)(keys))
    >>> ax = pj.plot.trajectories(traj, ["S", "I"])
    >>> len(ax.get_lines()), len(ax.collections)
    (2, 2)
    """
    if band not in _BANDS:
        raise ValueError(f"band must be one of {_BANDS}, got {band!r}")
    traj = _select(traj, scenario)
    names = list(traj.names if variables is None else [getattr(v, "name", v) for v in variables])
    steps = np.asarray(traj.steps)
    batched = steps.ndim > 1
    if batched:
        steps = steps.reshape(-1, steps.shape[-1])[0]
    has_audit = "audit" in traj.data
    has_conf = "confidence" in traj.data
    kind = band
    if band == "auto":
        kind = "scenarios" if batched else "hypotheses" if has_audit else "confidence" if has_conf else None
    if kind == "scenarios" and not batched:
        raise ValueError("band='scenarios' needs a batched trajectory (a leading scenario axis)")
    if kind == "hypotheses" and not has_audit:
        raise ValueError("band='hypotheses' needs a run saved with Save(audit=True) on an Executive(audit=True)")
    if kind == "confidence" and not has_conf:
        raise ValueError("band='confidence' needs the 'confidence' field saved (Save(fields=(..., 'confidence')))")
    if batched and kind in ("hypotheses", "confidence"):
        raise ValueError(f"band={kind!r} draws one scenario; pass scenario=i or band='scenarios'")
    lo_q, hi_q = quantiles
    if not 0.0 <= lo_q < hi_q <= 1.0:
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1, got {quantiles!r}")
    ax = _axes(ax)
    for name in names:
        v = np.asarray(traj.value(name), float)
        if batched:
            v = v.reshape(-1, v.shape[-1])
            center = np.median(v, axis=0)
        else:
            center = v
        (line,) = ax.plot(steps, center, label=name)
        color = line.get_color()
        lo = hi = None
        if kind == "scenarios":
            lo, hi = np.quantile(v, lo_q, axis=0), np.quantile(v, hi_q, axis=0)
        elif kind == "hypotheses":
            h = traj.hypotheses(name)
            mask = np.asarray(h["mask"], bool)
            hv = np.asarray(h["values"], float)
            lo = np.where(mask.any(-1), np.min(np.where(mask, hv, np.inf), -1), np.nan)
            hi = np.where(mask.any(-1), np.max(np.where(mask, hv, -np.inf), -1), np.nan)
        elif kind == "confidence":
            c = np.asarray(traj.confidence(name), float)
            half = (1.0 - c) * np.abs(center)
            lo, hi = center - half, center + half
        if lo is not None:
            ax.fill_between(steps, lo, hi, color=color, alpha=0.25, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    title = {
        "scenarios": f"median and {lo_q:.0%}-{hi_q:.0%} across {int(np.prod(np.shape(traj.steps)[:-1]))} scenarios",
        "hypotheses": "resolved value; band: range of the competing hypotheses",
        "confidence": "resolved value; band: ±(1 - confidence)·|value|",
        None: "resolved value",
    }[kind]
    ax.set_title(title)
    ax.legend(loc="best")
    return ax


def hypotheses(traj, name: str, executive=None, *, scenario=None, ax=None):
    """Each mechanism's hypothesis for ``name`` against the resolved value.

    Needs a trajectory saved with ``Save(audit=True)`` from an
    ``Executive(audit=True)``. One thin line per hypothesis slot (gaps where a
    slot proposed nothing valid: disabled, not scheduled, or invalid), labelled
    with its mechanism and its mean confidence, and one thick black line for
    the resolved value. Pass the ``executive`` to name the slots after their
    mechanisms (otherwise ``slot k``).

    **Returns:** the Axes, with ``n_slots + 1`` lines (the resolved one last).

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import jax, procela_jax as pj
    >>> ex = pj.demos.sir.make_executive(audit=True)
    >>> _, traj = ex.run(ex.init(jax.random.key(0)), 60, save=pj.Save(audit=True))
    >>> ax = pj.plot.hypotheses(traj, "I", ex)
    >>> [line.get_label().split(" ")[0] for line in ax.get_lines()]
    ['sir', 'seasonal', 'resolved']
    """
    name = getattr(name, "name", name)
    traj = _single(traj, scenario, "hypotheses")
    h = traj.hypotheses(name)
    steps = np.asarray(traj.steps)
    hv = np.asarray(h["values"], float)
    hc = np.asarray(h["confidences"], float)
    mask = np.asarray(h["mask"], bool)
    _, labels = _slot_labels(traj, name, executive)
    ax = _axes(ax)
    for k, label in enumerate(labels):
        shown = np.where(mask[:, k], hv[:, k], np.nan)
        conf = hc[mask[:, k], k]
        mean_conf = f"{conf.mean():.2f}" if conf.size else "n/a"
        ax.plot(steps, shown, linewidth=1.2, alpha=0.85, label=f"{label} (mean confidence {mean_conf})")
    if "value" in traj.data:
        ax.plot(steps, np.asarray(traj.value(name), float), color="black", linewidth=2.2, label="resolved")
    else:
        raise ValueError("hypotheses needs the 'value' field saved to draw the resolved value")
    ax.set_xlabel("step")
    ax.set_ylabel(name)
    ax.set_title(f"{name}: competing hypotheses and the resolved value")
    ax.legend(loc="best")
    return ax


def dominant_mechanism(traj, name: str, executive, *, scenario=None) -> np.ndarray:
    """Which mechanism dominated ``name`` at each saved step, as mechanism indices.

    A step decided by one hypothesis (for example under
    :class:`HighestConfidencePolicy`) is credited to its mechanism (the audit's
    ``source``). A blended step (``source == -1``, for example weighted voting)
    is credited to the valid hypothesis with the largest ``weight *
    confidence``, its share of the blend; ties go to the first slot. A step
    with no valid hypothesis gets ``-1``. Indices refer to
    ``executive.layout.mechanisms``.

    **Returns:** an int array of shape ``(n_saved,)``.

    >>> import jax, procela_jax as pj
    >>> ex = pj.demos.sir.make_executive(audit=True)
    >>> _, traj = ex.run(ex.init(jax.random.key(0)), 5, save=pj.Save(audit=True))
    >>> pj.plot.dominant_mechanism(traj, "I", ex).tolist()  # sir: 0.8 > seasonal: 0.4..0.7
    [0, 0, 0, 0, 0]
    """
    name = getattr(name, "name", name)
    traj = _single(traj, scenario, "dominant_mechanism")
    h = traj.hypotheses(name)
    mask = np.asarray(h["mask"], bool)
    score = np.where(mask, np.asarray(h["weights"], float) * np.asarray(h["confidences"], float), -np.inf)
    mech, _ = _slot_labels(traj, name, executive)
    slot_to_mech = np.asarray(mech, int)
    if slot_to_mech.size == 0:
        return np.full(mask.shape[:-1], -1, int)
    blended = slot_to_mech[np.argmax(score, axis=-1)]
    source = np.asarray(h["source"], int)
    out = np.where(source >= 0, source, blended)
    return np.where(mask.any(-1), out, -1).astype(int)


def dominance(traj, name: str, executive, *, scenario=None, ax=None):
    """A timeline of which mechanism dominated ``name`` (see :func:`dominant_mechanism`).

    One row per mechanism that writes ``name``; a bar covers each saved
    interval that mechanism dominated. The legend gives each mechanism's
    share of the saved steps.

    **Returns:** the Axes; its y tick labels are the mechanism names.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import jax, procela_jax as pj
    >>> ex = pj.demos.sir.make_executive(audit=True)
    >>> _, traj = ex.run(ex.init(jax.random.key(0)), 20, save=pj.Save(audit=True))
    >>> ax = pj.plot.dominance(traj, "I", ex)
    >>> [t.get_text() for t in ax.get_yticklabels()]
    ['sir', 'seasonal']
    """
    name = getattr(name, "name", name)
    traj = _single(traj, scenario, "dominance")
    who = dominant_mechanism(traj, name, executive)
    steps = np.asarray(traj.steps, float)
    mech, rows = _slot_labels(traj, name, executive)
    if steps.size > 1:
        widths = np.diff(steps, prepend=2 * steps[0] - steps[1])
    else:
        widths = steps.copy()
    ax = _axes(ax, figsize=(8, 1 + 0.5 * max(len(rows), 1)))
    colors = _pyplot().rcParams["axes.prop_cycle"].by_key().get("color", ["C0"])
    for r, (m, label) in enumerate(zip(mech, rows)):
        hit = who == m
        spans = [(s - w, w) for s, w in zip(steps[hit], widths[hit])]
        share = hit.mean() if who.size else 0.0
        ax.broken_barh(spans, (r - 0.4, 0.8), color=colors[r % len(colors)], label=f"{label} ({share:.0%})")
    ax.set_yticks(range(len(rows)), rows)
    ax.set_ylim(len(rows) - 0.4, -0.6)
    ax.set_xlabel("step")
    ax.set_title(f"which mechanism dominated {name}")
    ax.legend(loc="upper right", fontsize="small")
    return ax


def fan(
    values,
    steps=None,
    *,
    levels: Sequence[float] = (0.5, 0.9),
    label: str | None = None,
    color=None,
    ax=None,
    legend: bool = True,
):
    """A fan chart: the median of ``values`` across scenarios with nested central bands.

    **Arguments:**

    - `values`: an array of shape ``(scenarios, steps)``.
    - `steps`: the x values (default ``1 .. n_steps``).
    - `levels`: central probability mass of each band (``0.9`` shades between the
      5 % and the 95 % quantile); wider bands are lighter, and each legend swatch
      has the shade its band shows (inner bands lie over the outer ones).
    - `label`: legend label of the median line.
    - `legend`: draw the legend on ``ax`` (pass ``False`` on all but one panel of
      a figure of several fans).

    **Returns:** the Axes, with one median line and one band per level.

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import numpy as np, procela_jax as pj
    >>> walks = np.cumsum(np.random.default_rng(0).normal(size=(500, 100)), axis=1)
    >>> ax = pj.plot.fan(walks, label="random walk")
    >>> len(ax.get_lines()), len(ax.collections)
    (1, 2)
    """
    v = np.asarray(values, float)
    if v.ndim != 2:
        raise ValueError(f"fan needs values of shape (scenarios, steps), got shape {v.shape}")
    x = np.arange(1, v.shape[1] + 1) if steps is None else np.asarray(steps)
    if x.shape != (v.shape[1],):
        raise ValueError(f"steps must have shape ({v.shape[1]},), got {x.shape}")
    levels = sorted(float(level) for level in levels)
    if any(not 0.0 < level < 1.0 for level in levels):
        raise ValueError(f"levels must lie strictly between 0 and 1, got {levels}")
    from matplotlib.patches import Patch

    ax = _axes(ax)
    (line,) = ax.plot(x, np.median(v, axis=0), color=color, label=label or "median")
    color = line.get_color()
    # widest first, each lying over the wider ones; band k (from the widest) shows the
    # opacity shown[k], which its own alpha turns into over the bands below it
    shown = np.linspace(0.15, 0.5, len(levels)) if len(levels) > 1 else np.array([0.25])
    below = np.concatenate([[0.0], shown[:-1]])
    swatches = []
    for level, opacity, under in zip(reversed(levels), shown, below):
        lo, hi = np.quantile(v, [(1 - level) / 2, (1 + level) / 2], axis=0)
        alpha = 1 - (1 - opacity) / (1 - under)
        ax.fill_between(x, lo, hi, color=color, alpha=alpha, linewidth=0, label=f"{level:.0%} band")
        swatches.append(Patch(facecolor=color, alpha=opacity, linewidth=0, label=f"{level:.0%} band"))
    ax.set_xlabel("step")
    ax.set_title(f"fan chart over {v.shape[0]} scenarios")
    if legend:
        ax.legend(handles=[line, *reversed(swatches)], loc="best")
    return ax


def loss(losses, *, log: bool | None = None, ax=None):
    """A calibration loss curve, with the best iteration marked.

    ``log=None`` uses a log scale when every loss is positive and they span
    more than two orders of magnitude.

    **Returns:** the Axes, with one line (the losses) and one marker (the minimum).

    >>> import matplotlib; matplotlib.use("Agg")
    >>> import procela_jax as pj
    >>> ax = pj.plot.loss([4.0, 1.0, 0.25, 0.0625, 0.03])
    >>> ax.get_yscale(), len(ax.get_lines())
    ('log', 1)
    """
    y = np.asarray(losses, float).reshape(-1)
    if y.size == 0:
        raise ValueError("loss needs at least one loss value")
    ax = _axes(ax, figsize=(6, 4))
    x = np.arange(y.size)
    ax.plot(x, y, label="loss")
    finite = np.isfinite(y)
    if finite.any():
        best = int(np.nanargmin(np.where(finite, y, np.nan)))
        ax.scatter([best], [y[best]], color="black", zorder=3, label=f"best {y[best]:.3g} (iteration {best})")
    if log is None:
        pos = y[finite]
        log = bool(pos.size and (pos > 0).all() and pos.max() / pos.min() > 100)
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss")
    ax.set_title("calibration loss")
    ax.legend(loc="best")
    return ax
