"""Running statistics against the original's ``MemoryStatistics`` in float64.

A sequence of commits mixes numeric records and ``None`` conclusions (our "no valid
hypothesis" steps: the count grows, nothing else changes). Our ``Stats.update`` runs
jitted under ``lax.scan``, the way the executive runs it, and every field must equal
the original's after every commit."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import procela
import pytest

import procela_jax as pj


def original_stats(seq, alpha):
    """The original's statistics after each commit of ``seq`` [(value|None, conf)]."""
    stats = procela.MemoryStatistics.empty()
    out = []
    for value, conf in seq:
        record = None if value is None else procela.VariableRecord(value, confidence=conf)
        stats = stats.update(record, alpha=alpha)
        out.append(stats)
    return out


@jax.jit
def _scan_stats(values, confs, numeric, alpha):
    def one(st, x):
        v, c, num = x
        st = st.update(jnp.ones((1,), bool), num[None], v[None], c[None], alpha, 1 - alpha)
        return st, dict(count=st.count[0], mean=st.mean[0], std=st.std[0], min=st.min[0], max=st.max[0],
                        last=st.last[0], ewma=st.ewma[0], confidence=st.confidence[0], sum=st.sum[0])

    return jax.lax.scan(one, pj.Stats.empty(1, values.dtype), (values, confs, numeric))[1]


def our_stats(seq, alpha):
    """Our statistics after each commit, as a dict of float64 arrays."""
    values = np.asarray([0.0 if v is None else v for v, _ in seq])
    confs = np.asarray([c for _, c in seq])
    numeric = np.asarray([v is not None for v, _ in seq])
    out = _scan_stats(values, confs, numeric, np.float64(alpha))
    assert out["mean"].dtype == jnp.float64
    return {k: np.asarray(v) for k, v in out.items()}


def _none_to_nan(x):
    return math.nan if x is None else x


def assert_same(ours, theirs, t, exact=True):
    for field, want in [
        ("count", theirs.count),
        ("sum", theirs.sum),
        ("mean", theirs.mean()),
        ("std", theirs.std()),
        ("min", theirs.min),
        ("max", theirs.max),
        ("last", theirs.last_value),
        ("ewma", theirs.ewma),
        ("confidence", theirs.confidence()),
    ]:
        if want is None and field in ("sum", "min", "max"):
            # before any value the original has None; ours holds the neutral element
            assert float(ours[field][t]) == {"sum": 0.0, "min": math.inf, "max": -math.inf}[field]
            continue
        got, want = float(ours[field][t]), _none_to_nan(want)
        if math.isnan(want):
            assert math.isnan(got), (field, t, got)
        elif exact and field != "std":
            assert got == want, (field, t, got, want)
        else:  # std: sqrt of a difference, identical operations; allow 1e-12 anyway
            assert got == pytest.approx(want, rel=1e-12, abs=1e-12), (field, t, got, want)


def random_sequence(rng, n, p_none=0.25, first_numeric=True):
    seq = []
    for t in range(n):
        if rng.uniform() < p_none and not (first_numeric and t == 0):
            seq.append((None, 0.0))
        else:
            seq.append((float(rng.normal(rng.uniform(-50, 50), rng.uniform(0.1, 30))), float(rng.uniform())))
    return seq


@pytest.mark.parametrize("alpha", [0.3, 0.05, 1.0])
def test_running_stats_equal_the_original(x64, alpha):
    rng = np.random.default_rng(int(alpha * 100))
    for k in range(6):
        seq = random_sequence(rng, 40, p_none=0.1 * k)
        ours, theirs = our_stats(seq, alpha), original_stats(seq, alpha)
        for t in range(len(seq)):
            assert_same(ours, theirs[t], t)


def test_none_commits_count_but_change_nothing_else(x64):
    seq = [(10.0, 0.5), (30.0, 1.0), (None, 0.0)]
    ours = our_stats(seq, 0.3)
    # the original's documented example: 10, 30, None -> mean 13.333 (count includes None)
    assert ours["count"][-1] == 3 and ours["mean"][-1] == pytest.approx(40.0 / 3)
    assert ours["last"][-1] == 30.0 and ours["ewma"][-1] == ours["ewma"][-2]
    assert ours["confidence"][-1] == pytest.approx(1.5 / 3)
    assert_same(ours, original_stats(seq, 0.3)[2], 2)


def test_sequences_starting_with_none_equal_the_original(x64):
    """Not reachable through an executive (the initial value is always committed
    first) but ``Stats`` is public: a leading ``None`` must not start the EWMA at 0
    or give a mean before any value."""
    rng = np.random.default_rng(7)
    for _ in range(3):
        seq = [(None, 0.0), (None, 0.0)] + random_sequence(rng, 12)
        ours, theirs = our_stats(seq, 0.3), original_stats(seq, 0.3)
        for t in range(len(seq)):
            assert_same(ours, theirs[t], t)


def test_std_and_mean_need_values(x64):
    ours = our_stats([(4.0, 1.0)], 0.3)
    assert ours["count"][0] == 1 and ours["mean"][0] == 4.0
    assert math.isnan(ours["std"][0])  # the original's None while count < 2
    empty = pj.Stats.empty(1, jnp.float64)
    assert math.isnan(float(empty.mean[0])) and math.isnan(float(empty.confidence[0]))


def test_executive_stats_equal_the_original_with_none_steps(x64):
    """Through the executive: a mechanism that proposes a NaN (masked, so no valid
    hypothesis) on some steps gives ``None`` commits like the original's empty steps."""
    rng = np.random.default_rng(3)
    steps = 30
    proposals = rng.normal(5, 3, steps)
    proposals[rng.uniform(size=steps) < 0.3] = np.nan
    confs = rng.uniform(size=steps)

    class Table(pj.Mechanism):
        values: jax.Array
        confs: jax.Array

        def transform(self, view, key):
            return {"X": pj.VariableRecord(self.values[view.step], confidence=self.confs[view.step])}

    X = pj.Variable("X", init=2.5, init_confidence=0.75, ewma_alpha=0.2)
    ex = pj.Executive(variables=[X], mechanisms=[Table(values=proposals, confs=confs, writes=[X])])
    fields = ("value", "confidence", "mean", "std", "ewma", "min", "max", "count")
    state, traj = ex.run(ex.init(jax.random.key(0)), steps, save=pj.Save(fields=fields))
    seq = [(2.5, 0.75)] + [(None if np.isnan(v) else float(v), float(c)) for v, c in zip(proposals, confs)]
    theirs = original_stats(seq, 0.2)[1:]
    for t in range(steps):
        o = theirs[t]
        assert int(traj.field("X", "count")[t]) == o.count
        for field, want in [("mean", o.mean()), ("ewma", o.ewma), ("min", o.min), ("max", o.max),
                            ("value", o.last_value)]:
            assert float(traj.field("X", field)[t]) == want, (field, t)
        assert float(traj.field("X", "std")[t]) == pytest.approx(o.std(), rel=1e-12)
    assert float(state.stats("X").confidence) == theirs[-1].confidence()
    # NaN proposals are invalid: counted against the mechanism, first at the first NaN step
    nan_steps = np.flatnonzero(np.isnan(proposals))
    assert int(state.invalid_proposals[0]) == len(nan_steps)
    assert int(state.invalid_first_step[0]) == nan_steps[0]


def test_the_column_form_computes_the_same_statistics():
    # batched runs carry the statistics as seven columns (Stats.columns); every
    # field and the restacked state must equal the stored stacked form's
    rng = np.random.default_rng(3)
    n, steps = 4, 30
    values = rng.normal(size=(steps, n)).astype(np.float32)
    confs = rng.uniform(size=(steps, n)).astype(np.float32)
    numeric = rng.uniform(size=(steps, n)) > 0.3

    @jax.jit
    def run(stats):
        def one(st, x):
            v, c, num = x
            st = st.update(jnp.ones((n,), bool), num, v, c, 0.3, 0.7)
            return st, (st.sum, st.sumsq, st.min, st.max, st.last, st.ewma, st.confidence_sum, st.mean, st.std)
        return jax.lax.scan(one, stats, (values, confs, numeric))

    empty = pj.Stats.empty(n, jnp.float32)
    assert isinstance(empty.columns().data, tuple) and empty.columns().stacked().data.shape == (n, 7)
    final_s, rows_s = run(empty)
    final_c, rows_c = run(empty.columns())
    for a, b in zip(rows_s, rows_c, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(final_c.stacked().data), np.asarray(final_s.data))
    np.testing.assert_array_equal(np.asarray(final_c[2].mean), np.asarray(final_s[2].mean))
