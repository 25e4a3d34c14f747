"""pj.plot: every figure renders to a non-empty PNG and draws the numbers it claims."""

import io
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402

import procela_jax as pj  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def png_pixels(ax):
    buf = io.BytesIO()
    ax.figure.savefig(buf, format="png", dpi=50)
    buf.seek(0)
    return mpimg.imread(buf)


def assert_drawn(ax):
    img = png_pixels(ax)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50
    assert img[..., :3].std() > 0.02  # not a blank canvas


def band_at(coll, x):
    """The (low, high) y of a fill_between band at abscissa x."""
    verts = np.concatenate([p.vertices for p in coll.get_paths()])
    ys = verts[np.isclose(verts[:, 0], x), 1]
    return ys.min(), ys.max()


class Const(pj.Mechanism):
    """Proposes ``level + slope * step`` with a confidence that switches at ``switch``."""

    level: float
    slope: float = 0.0
    conf_before: float = 0.5
    conf_after: float = 0.5
    switch: int = 10**9
    weight: float = 1.0

    def transform(self, values, key):
        t = values.step.astype(jnp.float32)
        conf = jnp.where(values.step < self.switch, self.conf_before, self.conf_after)
        rec = pj.VariableRecord(self.level + self.slope * t, confidence=conf, weight=self.weight)
        return {self.writes[0]: rec}


class Walk(pj.Mechanism):
    """A random walk: the previous value plus a standard normal step."""

    def transform(self, values, key):
        name = self.writes[0]
        return {name: pj.VariableRecord(values[name] + jax.random.normal(key), confidence=0.5)}


def two_theories(policy, *, pre_step=None, b_weight=1.0):
    X = pj.Variable("X", pj.RealDomain(), init=0.0, policy=policy)
    a = Const(level=1.0, slope=1.0, conf_before=0.9, conf_after=0.3, switch=10, writes=[X], name="a")
    b = Const(level=5.0, slope=0.5, conf_before=0.5, conf_after=0.5, weight=b_weight, writes=[X], name="b")
    return pj.Executive(variables=[X], mechanisms=[a, b], audit=True, pre_step=pre_step)


# ---- trajectories -------------------------------------------------------------------
def test_trajectories_hypothesis_band_is_the_range_of_the_theories():
    ex = two_theories(pj.WeightedVotingPolicy())
    _, traj = ex.run(ex.init(jax.random.key(0)), 20, save=pj.Save(audit=True))
    ax = pj.plot.trajectories(traj)
    assert_drawn(ax)
    (line,) = ax.get_lines()
    assert line.get_label() == "X"
    np.testing.assert_allclose(line.get_xdata(), np.arange(1, 21))
    np.testing.assert_allclose(line.get_ydata(), np.asarray(traj.value("X")), rtol=1e-6)
    (band,) = ax.collections
    for t in (1, 7, 20):  # step t's proposals read step t-1: a = 1 + (t-1), b = 5 + 0.5 (t-1)
        a, b = 1.0 + (t - 1), 5.0 + 0.5 * (t - 1)
        np.testing.assert_allclose(band_at(band, t), (min(a, b), max(a, b)), rtol=1e-6)
    assert ax.get_xlabel() == "step" and ax.get_ylabel() == "value"
    assert "hypotheses" in ax.get_title()


def test_trajectories_confidence_band_without_audit():
    ex = two_theories(pj.HighestConfidencePolicy())
    _, traj = ex.run(ex.init(jax.random.key(0)), 20)  # value + confidence saved
    ax = pj.plot.trajectories(traj, ["X"])
    (band,) = ax.collections
    v, c = np.asarray(traj.value("X")), np.asarray(traj.confidence("X"))
    for i in (0, 9, 15):
        half = (1 - c[i]) * abs(v[i])
        np.testing.assert_allclose(band_at(band, i + 1), (v[i] - half, v[i] + half), rtol=1e-6)
    assert_drawn(ax)


def test_trajectories_scenario_band_is_the_quantile_range():
    X, Y = pj.Variable("X", init=0.0), pj.Variable("Y", init=0.0)
    ex = pj.Executive(variables=[X, Y], mechanisms=[Walk(writes=[X], name="wx"), Walk(writes=[Y], name="wy")])
    keys = jax.random.split(jax.random.key(1), 16)
    _, traj = jax.vmap(lambda s: ex.run(s, 30, save=pj.Save(every=3)))(jax.vmap(ex.init)(keys))
    ax = pj.plot.trajectories(traj, ["X", "Y"], quantiles=(0.1, 0.9))
    assert [ln.get_label() for ln in ax.get_lines()] == ["X", "Y"]
    assert len(ax.collections) == 2
    I = np.asarray(traj.value("Y"))  # noqa: E741
    col = 4  # step 15
    ranked = np.sort(I[:, col])
    np.testing.assert_allclose(ax.get_lines()[1].get_ydata()[col], (ranked[7] + ranked[8]) / 2, rtol=1e-6)
    lo_hand = ranked[1] + 0.5 * (ranked[2] - ranked[1])  # linear interpolation at 0.1 * 15 = 1.5
    hi_hand = ranked[13] + 0.5 * (ranked[14] - ranked[13])
    np.testing.assert_allclose(band_at(ax.collections[1], 15), (lo_hand, hi_hand), rtol=1e-5)
    assert "16 scenarios" in ax.get_title()
    assert_drawn(ax)
    one = pj.plot.trajectories(traj, ["Y"], scenario=3, band=None)
    np.testing.assert_allclose(one.get_lines()[0].get_ydata(), I[3])
    assert len(one.collections) == 0


def test_trajectories_errors_name_what_is_missing():
    ex = two_theories(pj.MeanPolicy())
    _, traj = ex.run(ex.init(jax.random.key(0)), 5)
    with pytest.raises(ValueError, match="audit=True"):
        pj.plot.trajectories(traj, band="hypotheses")
    with pytest.raises(ValueError, match="batched"):
        pj.plot.trajectories(traj, band="scenarios")
    with pytest.raises(ValueError, match="band must be one of"):
        pj.plot.trajectories(traj, band="std")
    with pytest.raises(KeyError, match="Y"):
        pj.plot.trajectories(traj, ["Y"])


# ---- hypotheses and dominance ----------------------------------------------------------
def test_hypotheses_one_line_per_mechanism_with_gaps_where_disabled():
    ex = two_theories(pj.WeightedVotingPolicy(), pre_step=lambda s, t: s.disable("b", when=t >= 12))
    _, traj = ex.run(ex.init(jax.random.key(0)), 15, save=pj.Save(audit=True))
    ax = pj.plot.hypotheses(traj, "X", ex)
    lines = ax.get_lines()
    conf_a = np.asarray([0.9 if t < 10 else 0.3 for t in range(15)])
    assert lines[0].get_label() == f"a (mean confidence {conf_a.mean():.2f})"
    assert lines[1].get_label() == "b (mean confidence 0.50)"
    a = np.asarray([1.0 + t for t in range(15)])
    np.testing.assert_allclose(lines[0].get_ydata(), a)
    b = np.asarray(lines[1].get_ydata())
    assert np.isnan(b[12:]).all()  # disabled from step 12: no hypothesis, a gap in the line
    np.testing.assert_allclose(b[:12], [5.0 + 0.5 * t for t in range(12)])
    np.testing.assert_allclose(lines[2].get_ydata(), np.asarray(traj.value("X")), rtol=1e-6)
    assert lines[2].get_linewidth() > lines[0].get_linewidth()
    assert ax.get_ylabel() == "X"
    assert_drawn(ax)
    unnamed = pj.plot.hypotheses(traj, "X")
    assert [ln.get_label().split(" (")[0] for ln in unnamed.get_lines()] == ["slot 0", "slot 1", "resolved"]


def test_dominant_mechanism_from_source_under_highest_confidence():
    ex = two_theories(pj.HighestConfidencePolicy())
    _, traj = ex.run(ex.init(jax.random.key(0)), 20, save=pj.Save(audit=True))
    # a proposes with 0.9 until step 10, then 0.3; b always 0.5
    expected = [0 if t < 10 else 1 for t in range(20)]
    assert pj.plot.dominant_mechanism(traj, "X", ex).tolist() == expected
    assert np.asarray(traj.hypotheses("X")["source"]).tolist() == expected  # decided by one slot


def test_dominant_mechanism_of_a_blend_is_the_largest_weight_times_confidence():
    ex = two_theories(pj.WeightedVotingPolicy(), b_weight=1.5)
    _, traj = ex.run(ex.init(jax.random.key(0)), 20, save=pj.Save(audit=True, every=2))
    expected = []
    for t in range(2, 21, 2):  # saved rows: after steps 2, 4, ..., 20; proposals at step t-1
        score_a = 1.0 * (0.9 if t - 1 < 10 else 0.3)
        score_b = 1.5 * 0.5
        expected.append(0 if score_a >= score_b else 1)
    assert (np.asarray(traj.hypotheses("X")["source"]) == -1).all()
    assert pj.plot.dominant_mechanism(traj, "X", ex).tolist() == expected


def test_dominant_mechanism_is_minus_one_without_hypotheses():
    ex = two_theories(pj.MeanPolicy(), pre_step=lambda s, t: s.disable("a").disable("b", when=t >= 3))
    _, traj = ex.run(ex.init(jax.random.key(0)), 5, save=pj.Save(audit=True))
    assert pj.plot.dominant_mechanism(traj, "X", ex).tolist() == [1, 1, 1, -1, -1]


def test_dominance_bars_cover_the_steps_each_mechanism_won():
    ex = two_theories(pj.HighestConfidencePolicy())
    _, traj = ex.run(ex.init(jax.random.key(0)), 24, save=pj.Save(audit=True, every=3))
    ax = pj.plot.dominance(traj, "X", ex)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b"]
    bars_a, bars_b = ax.collections
    width = lambda coll: sum(np.ptp(p.vertices[:, 0]) for p in coll.get_paths())  # noqa: E731
    won_a = sum(3 for t in range(3, 25, 3) if t - 1 < 10)  # rows after steps 3, 6, 9 (proposed at 2, 5, 8)
    assert width(bars_a) == pytest.approx(won_a)
    assert width(bars_b) == pytest.approx(24 - won_a)
    shares = [f"a ({won_a / 24:.0%})", f"b ({1 - won_a / 24:.0%})"]
    assert [t.get_text() for t in ax.get_legend().get_texts()] == shares
    assert_drawn(ax)


def test_hypotheses_need_one_scenario_and_audit():
    ex = two_theories(pj.MeanPolicy())
    keys = jax.random.split(jax.random.key(0), 3)
    _, traj = jax.vmap(lambda s: ex.run(s, 4, save=pj.Save(audit=True)))(jax.vmap(ex.init)(keys))
    with pytest.raises(ValueError, match="scenario=i"):
        pj.plot.hypotheses(traj, "X", ex)
    ax = pj.plot.hypotheses(traj, "X", ex, scenario=2)
    assert len(ax.get_lines()) == 3
    _, plain = ex.run(ex.init(jax.random.key(0)), 4)
    with pytest.raises(KeyError, match="audit=True"):
        pj.plot.dominance(plain, "X", ex)


# ---- fan and loss -------------------------------------------------------------------------
def test_fan_median_and_nested_bands():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(101, 12)).cumsum(axis=1)
    ax = pj.plot.fan(v, steps=np.arange(10, 130, 10), levels=(0.5, 0.9), label="walk")
    (line,) = ax.get_lines()
    assert line.get_label() == "walk"
    np.testing.assert_allclose(line.get_ydata(), [sorted(v[:, j])[50] for j in range(12)])
    wide, narrow = ax.collections  # drawn widest first
    col = 5
    ranked = np.sort(v[:, col])  # 101 samples: quantile q sits exactly at index 100 q
    np.testing.assert_allclose(band_at(wide, 60), (ranked[5], ranked[95]))
    np.testing.assert_allclose(band_at(narrow, 60), (ranked[25], ranked[75]))
    assert "101 scenarios" in ax.get_title()
    assert_drawn(ax)
    with pytest.raises(ValueError, match=r"\(scenarios, steps\)"):
        pj.plot.fan(v[0])
    with pytest.raises(ValueError, match="levels"):
        pj.plot.fan(v, levels=(1.5,))


def test_fan_bands_look_different_and_the_legend_shows_them_as_drawn():
    """Each band's legend swatch has the colour its band shows on the plot (the inner
    band lies over the outer one), and the two colours are far apart."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=(2001, 12))  # quantiles about -1.64, -0.67, 0, 0.67, 1.64 at every step
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    pj.plot.fan(v, ax=ax, color="tab:blue")
    leg = ax.get_legend()
    swatch = {t.get_text(): h for t, h in zip(leg.get_texts(), leg.legend_handles)}
    assert list(swatch) == ["median", "50% band", "90% band"]
    fig.canvas.draw()
    pixels = np.asarray(fig.canvas.buffer_rgba())[..., :3] / 255.0
    height = pixels.shape[0]

    def drawn(y):  # the colour on the plot at step 6, value y
        px, py = ax.transData.transform((6, y))
        return pixels[int(round(height - py)), int(round(px))]

    def shown(patch):  # the swatch's colour over the white background
        r, g, b, a = patch.get_facecolor()
        return 1 - a * (1 - np.array([r, g, b]))

    np.testing.assert_allclose(drawn(-1.15), shown(swatch["90% band"]), atol=3 / 255)
    np.testing.assert_allclose(drawn(-0.35), shown(swatch["50% band"]), atol=3 / 255)
    assert np.abs(shown(swatch["90% band"]) - shown(swatch["50% band"])).max() > 0.15
    # a figure of several panels gets one legend
    fig, axes = plt.subplots(3, 1)
    for i, a in enumerate(axes):
        pj.plot.fan(v, ax=a, legend=i == 0)
    assert [a.get_legend() is not None for a in axes] == [True, False, False]


def test_loss_curve_marks_the_minimum_and_picks_the_scale():
    losses = [3.0, 2.0, 0.5, 0.7, 0.6]
    ax = pj.plot.loss(losses)
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), losses)
    (marker,) = ax.collections
    np.testing.assert_allclose(marker.get_offsets(), [[2, 0.5]])
    assert ax.get_yscale() == "linear"  # spans less than 100x
    assert ax.get_xlabel() == "iteration" and ax.get_ylabel() == "loss"
    assert_drawn(ax)
    assert pj.plot.loss(np.geomspace(10.0, 0.01, 20)).get_yscale() == "log"
    assert pj.plot.loss([1.0, -1.0, 1e4]).get_yscale() == "linear"  # a negative loss: never log
    with pytest.raises(ValueError, match="at least one"):
        pj.plot.loss([])


def test_plots_draw_on_a_given_axes():
    fig, (a1, a2) = plt.subplots(1, 2)
    assert pj.plot.loss([1.0, 0.5], ax=a2) is a2
    assert pj.plot.fan(np.ones((3, 4)), ax=a1) is a1
    assert a1.figure is fig


def test_importing_procela_jax_does_not_import_matplotlib():
    code = "import sys, procela_jax; print('matplotlib' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(pathlib.Path(__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"
