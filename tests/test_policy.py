"""Resolution policies: by hand, against the original ``procela`` in float64 (edge
cases included), masking, batching, and user-defined policies in an executive."""

import jax
import jax.numpy as jnp
import numpy as np
import procela
import pytest
from conftest import orig_hypotheses

import procela_jax as pj

ORIGINAL = {
    pj.WeightedVotingPolicy: procela.WeightedVotingPolicy,
    pj.WeightedConfidencePolicy: procela.WeightedConfidencePolicy,
    pj.HighestConfidencePolicy: procela.HighestConfidencePolicy,
}


def resolve(policy, values, confs, weights=None, mask=None, dtype=None):
    values = jnp.asarray(values, dtype)
    confs = jnp.asarray(confs, values.dtype)
    weights = jnp.ones_like(values) if weights is None else jnp.asarray(weights, values.dtype)
    mask = jnp.ones(values.shape, bool) if mask is None else jnp.asarray(mask)
    v, c, w = policy.resolve(values, confs, weights, mask)
    return float(v), float(c), int(w)


def original(policy_cls, values, confs, weights=None):
    out = ORIGINAL[policy_cls]().resolve(orig_hypotheses(values, confs, weights))
    return out.value, out.confidence


# ---- by hand ---------------------------------------------------------------------
def test_weighted_voting_by_hand():
    p = pj.WeightedVotingPolicy()
    v, c, w = resolve(p, [10.0, 20.0], [0.2, 0.6], weights=[1.0, 3.0])
    assert v == pytest.approx((10 + 60) / 4) and c == pytest.approx((0.2 + 1.8) / 4) and w == -1
    # all weights zero: plain means
    v, c, _ = resolve(p, [10.0, 20.0], [0.2, 0.6], weights=[0.0, 0.0])
    assert v == pytest.approx(15.0) and c == pytest.approx(0.4)


def test_weighted_confidence_by_hand():
    p = pj.WeightedConfidencePolicy()
    v, c, _ = resolve(p, [1.0, 3.0, 5.0], [0.5, 0.25, 0.25])
    assert v == pytest.approx((0.5 + 0.75 + 1.25) / 1.0) and c == pytest.approx(1.0 / 3)
    v, c, _ = resolve(p, [1.0, 3.0], [0.0, 0.0])  # all confidences zero: mean value, confidence 0
    assert (v, c) == (2.0, 0.0)


def test_highest_confidence_by_hand():
    p = pj.HighestConfidencePolicy()
    assert resolve(p, [1.0, 2.0, 3.0], [0.2, 0.9, 0.4]) == pytest.approx((2.0, 0.9, 1))
    assert resolve(p, [1.0, 2.0, 3.0], [0.2, 0.9, 0.9]) == pytest.approx((2.0, 0.9, 1))  # tie: first
    assert resolve(p, [4.0, 2.0], [0.0, 0.0]) == (4.0, 0.0, 0)  # all zero: first
    # a masked slot with a higher confidence never wins
    assert resolve(p, [7.0, 2.0], [1.0, 0.3], mask=[False, True]) == pytest.approx((2.0, 0.3, 1))


def test_mean_policy_by_hand():
    v, c, w = resolve(pj.MeanPolicy(), [1.0, 2.0, 6.0, 100.0], [0.1, 0.2, 0.6, 1.0],
                      weights=[5.0, 1.0, 1.0, 1.0], mask=[True, True, True, False])
    assert v == pytest.approx(3.0) and c == pytest.approx(0.3) and w == -1  # weights ignored


@pytest.mark.parametrize(
    "values, mask, median",
    [
        ([5.0, 1.0, 3.0], None, 3.0),
        ([5.0, 1.0, 3.0, 10.0], None, 4.0),  # even count: mean of the two middle ones
        ([5.0, -1e9, 3.0, 10.0], [True, False, True, True], 5.0),  # masked outlier ignored
        ([2.0], None, 2.0),
        ([4.0, 4.0, 1.0, 9.0], None, 4.0),
    ],
)
def test_median_policy_by_hand(values, mask, median):
    confs = [0.1 * (i + 1) for i in range(len(values))]
    v, c, _ = resolve(pj.MedianPolicy(), values, confs, mask=mask)
    kept = [cf for cf, m in zip(confs, mask or [True] * len(values)) if m]
    assert v == pytest.approx(median) and c == pytest.approx(sum(kept) / len(kept))


@pytest.mark.parametrize(
    "values, confs, weights, mask, expected",
    [
        ([1.0, 2.0, 2.0], [0.9, 0.4, 0.6], None, None, (2.0, 0.5)),  # two votes beat one
        ([1.0, 2.0], [0.9, 0.4], None, None, (1.0, 0.9)),  # tie: the value proposed first
        ([2.0, 1.0], [0.4, 0.9], None, None, (2.0, 0.4)),
        ([1.0, 2.0, 2.0], [0.9, 0.4, 0.6], [3.0, 1.0, 1.0], None, (1.0, 0.9)),  # weighted votes
        ([1.0, 2.0, 2.0, 1.0], [0.9, 0.4, 0.6, 0.3], None, [True, True, True, False], (2.0, 0.5)),
        ([0.0, 1.0, 1.0, 0.0, 0.0], [0.2, 0.8, 0.6, 0.4, 0.3], None, None, (0.0, 0.3)),
    ],
)
def test_majority_voting_by_hand(values, confs, weights, mask, expected):
    v, c, _ = resolve(pj.MajorityVotingPolicy(), values, confs, weights=weights, mask=mask)
    assert (v, c) == pytest.approx(expected)


# ---- against the original, float64 ------------------------------------------------
def _random_cases(seed=0, n_cases=40):
    rng = np.random.default_rng(seed)
    cases = []
    for k in range(n_cases):
        n = int(rng.integers(1, 7))
        values = rng.normal(0, 50, n)
        confs = rng.uniform(0, 1, n)
        weights = rng.choice([0.0, 0.5, 1.0, 2.0, 3.7], n)
        if k % 5 == 0:
            confs[:] = 0.0  # all confidences zero
        if k % 7 == 0:
            weights[:] = 0.0  # all weights zero
        if k % 3 == 0 and n > 1:
            confs[-1] = confs.max()  # a tie on the highest confidence
        cases.append((values, confs, weights))
    cases.append((np.asarray([1.0, 2.0]), np.asarray([0.7, 0.7]), np.ones(2)))  # order-sensitive
    cases.append((np.asarray([-3.25]), np.asarray([0.0]), np.asarray([0.0])))  # single, all zero
    return cases


@pytest.mark.parametrize("policy_cls", list(ORIGINAL), ids=lambda c: c.__name__)
def test_policies_equal_the_original_in_float64(x64, policy_cls):
    policy = policy_cls()
    jitted = jax.jit(lambda v, c, w, m: policy.resolve(v, c, w, m))
    for values, confs, weights in _random_cases():
        uses_weights = policy_cls is pj.WeightedVotingPolicy
        w_ours = weights if uses_weights else np.ones_like(values)
        want = original(policy_cls, values, confs, weights if uses_weights else None)
        got = jitted(values, confs, w_ours, np.ones(values.shape, bool))
        assert got[0].dtype == jnp.float64
        assert (float(got[0]), float(got[1])) == want, (values, confs, weights)


def test_original_metadata_weight_is_our_record_weight(x64):
    """Weights given to mechanisms' records reach WeightedVoting as the original's
    ``metadata["weight"]`` does: run one step of both libraries."""
    from conftest import quiet_logger

    values, confs, weights = [3.0, 11.0, -4.0], [0.3, 0.9, 0.5], [2.0, 0.5, 1.0]
    # original
    X = procela.Variable("X", procela.RealDomain(), policy=procela.WeightedVotingPolicy())
    X.init(procela.VariableRecord(0.0, confidence=1.0))

    class Fixed(procela.Mechanism):
        def __init__(self, j):
            super().__init__([], [X])
            self.j = j

        def transform(self):
            X.add_hypothesis(procela.VariableRecord(values[self.j], confidence=confs[self.j],
                                                    metadata={"weight": weights[self.j]}))

    ex_o = procela.Executive(mechanisms=[Fixed(j) for j in range(3)], logger=quiet_logger())
    ex_o.run(1)

    # ours
    class Const(pj.Mechanism):
        value: float
        conf: float
        weight: float

        def transform(self, v, key):
            return {"X": pj.VariableRecord(self.value, confidence=self.conf, weight=self.weight)}

    Xj = pj.Variable("X", init=0.0)
    mechs = [Const(value=values[j], conf=confs[j], weight=weights[j], writes=[Xj], name=f"m{j}") for j in range(3)]
    ex = pj.Executive(variables=[Xj], mechanisms=mechs)
    s = ex.step(ex.init(jax.random.key(0)))
    assert float(s.value("X")) == X.value
    assert float(s.confidence("X")) == X.memory.latest()[1].confidence
    assert float(s.stats("X").confidence) == X.confidence


@pytest.mark.parametrize("policy_cls", list(ORIGINAL) + [pj.MeanPolicy, pj.MedianPolicy, pj.MajorityVotingPolicy],
                         ids=lambda c: c.__name__)
def test_masked_nan_slots_never_leak(x64, policy_cls):
    """Masked slots hold NaN and inf: results equal those of the valid slots alone,
    and the gradient is finite (the double-where trick)."""
    policy = policy_cls()
    values = np.asarray([np.nan, 4.0, np.inf, 1.0, 9.0, -np.inf])
    confs = np.asarray([np.nan, 0.4, 0.9, 0.8, 0.3, 2.0])
    weights = np.asarray([np.nan, 1.0, 1.0, 2.0, 0.5, -1.0])
    mask = np.asarray([False, True, False, True, True, False])
    got = policy.resolve(jnp.asarray(values), jnp.asarray(confs), jnp.asarray(weights), jnp.asarray(mask))
    clean = policy.resolve(jnp.asarray(values[mask]), jnp.asarray(confs[mask]),
                           jnp.asarray(weights[mask]), jnp.ones(3, bool))
    assert float(got[0]) == float(clean[0]) and float(got[1]) == float(clean[1])
    if policy_cls in ORIGINAL:
        w = weights[mask] if policy_cls is pj.WeightedVotingPolicy else None
        assert (float(got[0]), float(got[1])) == original(policy_cls, values[mask], confs[mask], w)

    def loss(v, c):
        out = policy.resolve(v, c, jnp.asarray(weights), jnp.asarray(mask))
        return out[0] + out[1]

    gv, gc = jax.grad(loss, argnums=(0, 1))(jnp.asarray(values), jnp.asarray(confs))
    assert np.all(np.isfinite(np.asarray(gv))) and np.all(np.isfinite(np.asarray(gc)))
    assert np.all(np.asarray(gv)[~mask] == 0) and np.all(np.asarray(gc)[~mask] == 0)


@pytest.mark.parametrize("policy_cls", list(ORIGINAL) + [pj.MeanPolicy, pj.MedianPolicy, pj.MajorityVotingPolicy],
                         ids=lambda c: c.__name__)
def test_fully_masked_rows_are_nan_free_and_rows_batch(policy_cls):
    """Leading axes batch variables: row r of a batch equals the row resolved alone;
    a fully masked row gives finite numbers (computed and discarded by the executive)."""
    rng = np.random.default_rng(1)
    values = rng.integers(0, 3, (4, 5)).astype(np.float32)
    confs = rng.uniform(0, 1, (4, 5)).astype(np.float32)
    weights = rng.uniform(0, 2, (4, 5)).astype(np.float32)
    mask = rng.uniform(size=(4, 5)) < 0.7
    mask[0] = False
    policy = policy_cls()
    bv, bc, _ = policy.resolve(jnp.asarray(values), jnp.asarray(confs), jnp.asarray(weights), jnp.asarray(mask))
    assert np.all(np.isfinite(np.asarray(bv))) and np.all(np.isfinite(np.asarray(bc)))
    for r in range(1, 4):
        v, c, _ = policy.resolve(*(jnp.asarray(a[r]) for a in (values, confs, weights, mask)))
        assert float(bv[r]) == float(v) and float(bc[r]) == float(c)


@pytest.mark.parametrize("policy_cls", list(ORIGINAL) + [pj.MeanPolicy, pj.MedianPolicy, pj.MajorityVotingPolicy],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("width", [1, 2, 5])
def test_slot_by_slot_agrees_with_the_stacked_code(policy_cls, width):
    """``resolve_slots`` (how a sweep resolves) against ``resolve`` on the same
    slots padded with masked ones to 70: past 64 slots the built-ins run their
    stacked code (sums by ``jnp.sum``, the winner by ``argmax``), and a masked slot
    changes nothing but the order of a sum."""
    rng = np.random.default_rng(width)
    values = rng.integers(0, 4, (3, width)).astype(np.float32) + rng.uniform(0, 1, (3, width)).astype(np.float32)
    confs = rng.uniform(0, 1, (3, width)).astype(np.float32)
    weights = rng.uniform(0, 2, (3, width)).astype(np.float32)
    mask = rng.uniform(size=(3, width)) < 0.7
    mask[:, 0] = True
    pad = lambda a, fill: np.concatenate([a, np.full((3, 70 - width), fill, a.dtype)], axis=1)  # noqa: E731
    padded = [jnp.asarray(pad(a, f)) for a, f in ((values, 9.0), (confs, 0.5), (weights, 1.0), (mask, False))]
    policy = policy_cls()
    stacked = [np.asarray(x) for x in policy.resolve(*padded)]
    slots = [np.asarray(x) for x in policy.resolve_slots(*([jnp.asarray(a[:, j]) for j in range(width)]
                                                            for a in (values, confs, weights, mask)))]
    for a, b in zip(stacked, slots):
        assert a.shape == b.shape == (3,) and a.dtype == b.dtype
        if a.dtype.kind == "f":
            np.testing.assert_allclose(a, b, rtol=1e-6)
        else:
            np.testing.assert_array_equal(a, b)


# ---- user-defined policies ---------------------------------------------------------
class Const(pj.Mechanism):
    value: float
    conf: float

    def transform(self, values, key):
        return {self.writes[0]: pj.VariableRecord(self.value, confidence=self.conf)}


class Lowest(pj.Policy):
    """The smallest valid value, with its confidence."""

    def resolve(self, values, confidences, weights, mask):
        i = jnp.argmin(jnp.where(mask, values, jnp.inf), axis=-1)
        take = lambda a: jnp.take_along_axis(a, i[..., None], -1)[..., 0]
        return take(values), take(confidences), i.astype(jnp.int32)


def _spread(values, confidences, weights, mask):
    hi = jnp.max(jnp.where(mask, values, -jnp.inf), axis=-1)
    lo = jnp.min(jnp.where(mask, values, jnp.inf), axis=-1)
    return hi - lo, jnp.full(hi.shape, 0.25)


@pytest.mark.parametrize(
    "policy, value, conf, source",
    [
        (Lowest(), 2.0, 0.9, 1),  # the winner's slot is mechanism "b"
        (pj.FunctionPolicy(_spread, name="spread"), 5.0, 0.25, pj.SOURCE_BLEND),
        (_spread, 5.0, 0.25, pj.SOURCE_BLEND),  # a plain function is wrapped
    ],
    ids=["subclass", "FunctionPolicy", "function"],
)
def test_user_defined_policy_through_an_executive(policy, value, conf, source):
    X = pj.Variable("X", init=0.0, policy=policy)
    mechs = [Const(value=7.0, conf=0.5, writes=[X], name="a"), Const(value=2.0, conf=0.9, writes=[X], name="b")]
    ex = pj.Executive(variables=[X], mechanisms=mechs)
    s = ex.step(ex.init(jax.random.key(0)))
    assert float(s.value("X")) == value and float(s.confidence("X")) == pytest.approx(conf)
    assert int(s.recent("X")["source"][-1]) == source
    # a sweep resolves slot by slot: the default resolve_slots stacks them for resolve
    res = pj.sweep(ex, 1, seeds=[0, 1])
    np.testing.assert_array_equal(res.value("X")[:, -1], [value, value])
    np.testing.assert_array_equal(res.final.memory.source[:, 0, 1], [source, source])


def test_not_a_policy_fails_with_the_variable_name():
    with pytest.raises(pj.ModelError, match="'X'.*not a policy"):
        pj.Variable("X", policy=42)
    with pytest.raises(pj.ModelError, match="'X'.*must differ in type"):
        pj.Variable("X", policy=pj.MeanPolicy(), alternatives=[pj.MeanPolicy()])


@pytest.mark.parametrize("policy", [pj.WeightedVotingPolicy(), pj.MedianPolicy(), pj.MeanPolicy(),
                                    pj.WeightedConfidencePolicy()])
@pytest.mark.parametrize("width", [2, 40])  # slot by slot, and stacked
def test_resolution_does_not_overflow_where_the_inputs_do_not(policy, width):
    """Two (or forty) hypotheses near float32's largest value resolve to their mean,
    not inf; ordinary values keep every bit (the rescaling is a power of two)."""
    big = np.full(width, 3e38, np.float32)
    big[0] = 1e38
    want = np.median(big.astype(np.float64)) if isinstance(policy, pj.MedianPolicy) else big.astype(np.float64).mean()
    v, _, _ = policy.resolve(jnp.asarray(big), jnp.ones(width), jnp.ones(width), jnp.ones(width, bool))
    assert np.isfinite(float(v)) and float(v) == pytest.approx(want, rel=1e-6)
    rng = np.random.default_rng(width)
    small = rng.normal(size=(5, width)).astype(np.float32)
    conf = rng.uniform(size=(5, width)).astype(np.float32)
    got = policy.resolve(jnp.asarray(small), jnp.asarray(conf), jnp.ones((5, width)), jnp.ones((5, width), bool))[0]
    if isinstance(policy, (pj.WeightedVotingPolicy, pj.MeanPolicy)):
        plain = np.asarray([sum(np.float32(x) * np.float32(1) for x in row) for row in small], np.float32) / width
        np.testing.assert_array_equal(np.asarray(got), plain.astype(np.float32))
    elif isinstance(policy, pj.WeightedConfidencePolicy):
        num = np.asarray([sum(np.float32(x) * np.float32(y) for x, y in zip(r, q)) for r, q in zip(small, conf)],
                         np.float32)
        den = np.asarray([sum(np.float32(y) for y in q) for q in conf], np.float32)
        np.testing.assert_array_equal(np.asarray(got), (num / den).astype(np.float32))
    else:
        s = np.sort(small, axis=1)
        mid = (s[:, (width - 1) // 2] + s[:, width // 2]) / np.float32(2)
        np.testing.assert_array_equal(np.asarray(got), mid)
