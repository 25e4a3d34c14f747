"""Domains: membership against the original, projection by hand, composition, errors,
and the out-of-domain choices applied by the executive to every kind of domain."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import procela
import pytest

import procela_jax as pj

PROBES = [-math.inf, -100.5, -100.0, -3.0, 0.0, 0.5, 1.0, 2.0, 99.99, 100.0, 100.5, math.inf, math.nan]


def contains(domain, x):
    return bool(domain.contains(jnp.asarray(x, jnp.float32)))


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (pj.RangeDomain(-100.0, 100.0), procela.RangeDomain(-100.0, 100.0)),
        (pj.RangeDomain(0.0, None), procela.RangeDomain(0.0, None)),
        (pj.RangeDomain(None, 1.0), procela.RangeDomain(None, 1.0)),
        (pj.RangeDomain(), procela.RangeDomain()),
        (pj.RealDomain(), procela.RealDomain()),
        (pj.CategoricalDomain([0, 1, 2]), procela.CategoricalDomain([0, 1, 2])),
        (pj.BooleanDomain(), procela.BooleanDomain()),
    ],
    ids=["range", "lower-only", "upper-only", "unbounded", "real", "categorical", "boolean"],
)
def test_membership_matches_the_original(ours, theirs):
    for x in PROBES:
        assert contains(ours, x) == bool(theirs.validate(x)), x


def test_composite_is_the_conjunction_like_the_original():
    ours = pj.RangeDomain(0.0, 10.0) & pj.CategoricalDomain([0, 5, 20])
    theirs = procela.CompositeDomain([procela.RangeDomain(0.0, 10.0), procela.CategoricalDomain([0, 5, 20])])
    for x in [-1.0, 0.0, 5.0, 7.0, 10.0, 20.0, math.nan]:
        assert contains(ours, x) == bool(theirs.validate(x)), x
    # nesting flattens, and the constructor accepts a list
    nested = pj.CompositeDomain([ours, pj.RangeDomain(1.0, None)])
    assert len(nested.parts) == 3
    assert not contains(nested, 0.0) and contains(nested, 5.0)


def test_projection_by_hand():
    r = pj.RangeDomain(-1.0, 2.0)
    got = np.asarray(r.project(jnp.asarray([-5.0, 0.5, 7.0, jnp.nan])))
    np.testing.assert_array_equal(got, [-1.0, 0.5, 2.0, -1.0])  # NaN goes to the lower bound
    c = pj.CategoricalDomain([0, 5, 20])
    got = np.asarray(c.project(jnp.asarray([-3.0, 2.4, 2.6, 14.0, 100.0])))
    np.testing.assert_array_equal(got, [0.0, 0.0, 5.0, 20.0, 20.0])
    b = pj.BooleanDomain()
    np.testing.assert_array_equal(np.asarray(b.project(jnp.asarray([0.2, 0.7]))), [0.0, 1.0])
    assert float(pj.RealDomain().project(jnp.asarray(jnp.nan))) == 0.0


def test_labels_are_encoded_by_position():
    d = pj.CategoricalDomain(["low", "mid", "high"])
    assert d.labels and d.codes == (0.0, 1.0, 2.0)
    assert d.encode("high") == 2.0 and d.decode(1.0) == "mid"
    X = pj.Variable("X", d, init="mid")
    assert X.init == 1.0
    with pytest.raises(pj.ModelError, match="'X'.*'extreme'"):
        pj.Variable("X", d, init="extreme")
    assert pj.BooleanDomain().encode(True) == 1.0


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: pj.RangeDomain(2.0, 1.0), "lower bound 2.0 is above upper bound 1.0"),
        (lambda: pj.RangeDomain(math.nan, 1.0), "lo=nan"),
        (lambda: pj.RangeDomain("a", 1.0), "lo='a'"),
        (lambda: pj.CategoricalDomain([]), "at least one category"),
        (lambda: pj.CategoricalDomain([1, 1]), "duplicate categories"),
        (lambda: pj.CompositeDomain(), "at least one domain"),
        (lambda: pj.CompositeDomain(pj.RealDomain(), 3), "3 is not a domain"),
        (lambda: pj.Variable("X", pj.RangeDomain(0.0, 1.0), init=2.0), "'X'.*outside its domain"),
        (lambda: pj.Variable("X", pj.RangeDomain(0.0, 1.0), init=math.nan), "'X'.*outside"),
        (lambda: pj.Variable("X", domain=(0, 1)), "'X'.*domain must be"),
        (lambda: pj.Variable("X", out_of_domain="drop"), "'X'.*out_of_domain='drop'"),
    ],
)
def test_bad_domains_fail_early_with_the_culprit(build, match):
    with pytest.raises(pj.ModelError, match=match):
        build()


def test_default_init_is_the_domain_point_nearest_zero():
    assert pj.Variable("A", pj.RangeDomain(3.0, 5.0)).init == 3.0
    assert pj.Variable("B", pj.RangeDomain(-5.0, -1.0)).init == -1.0
    assert pj.Variable("C", pj.CategoricalDomain([7, 9])).init == 7.0
    assert pj.Variable("D").init == 0.0
    assert pj.Variable("E").out_of_domain == "commit"  # the documented default


class Propose(pj.Mechanism):
    """Proposes, for each variable it writes, the value in ``table`` at the step."""

    table: jax.Array

    def transform(self, values, key):
        row = self.table[values.step]
        return {w: pj.VariableRecord(row[j], confidence=0.5) for j, w in enumerate(self.writes)}


@pytest.mark.parametrize("mode", ["commit", "clip", "hold"])
def test_out_of_domain_choices_on_mixed_domains(mode):
    """Range, categorical, boolean and composite variables in one model: each
    out-of-domain value is committed, projected or rejected as chosen, and counted."""
    domains = {
        "R": pj.RangeDomain(0.0, 10.0),
        "C": pj.CategoricalDomain([0, 5, 20]),
        "B": pj.BooleanDomain(),
        "K": pj.RangeDomain(0.0, 10.0) & pj.CategoricalDomain([0, 5, 20]),
        "U": pj.RealDomain(),
    }
    names = list(domains)
    variables = [pj.Variable(n, d, init=0.0, out_of_domain=mode) for n, d in domains.items()]
    table = np.asarray(
        [
            [3.0, 5.0, 1.0, 5.0, 1e30],  # all inside
            [12.0, 6.0, 0.4, 20.0, -2.0],  # R, C, B, K outside
            [-1.0, 20.0, 0.0, 4.0, 7.0],  # R, K outside
        ],
        np.float32,
    )
    ex = pj.Executive(variables=variables, mechanisms=[Propose(table=table, writes=names)])
    state, traj = ex.run(ex.init(jax.random.key(0)), steps=3)
    got = np.stack([np.asarray(traj.value(n)) for n in names], axis=1)
    expected = np.zeros_like(table)
    previous = np.zeros(len(names), np.float32)
    counts = np.zeros(len(names), int)
    for t, row in enumerate(table):
        for j, n in enumerate(names):
            x = row[j]
            inside = contains(domains[n], x)
            counts[j] += not inside
            if inside or mode == "commit":
                expected[t, j] = x
            elif mode == "clip":
                expected[t, j] = float(domains[n].project(jnp.asarray(x, jnp.float32)))
            else:
                expected[t, j] = previous[j]
        previous = expected[t]
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(np.asarray(state.domain_violations), counts)
    first = [1 if c else -1 for c in counts]  # every violation here starts at step 1
    np.testing.assert_array_equal(np.asarray(state.domain_first_step), first)
    # "hold" rejects the value but still commits a record: the count grows each step
    assert int(state.stats("R").count) == 4


@pytest.mark.parametrize(
    "domain", [pj.RangeDomain(0.0, 3.0), pj.CategoricalDomain([1, 2]), pj.BooleanDomain(),
               pj.RangeDomain(0.0, 3.0) & pj.CategoricalDomain([1, 2]), pj.RealDomain()]
)
def test_plain_python_numbers_are_accepted(domain):
    for x in (1.0, 2, 0.5):
        assert bool(domain.contains(x)) == contains(domain, x)
        assert float(domain.project(x)) == float(domain.project(jnp.asarray(x, jnp.float32)))


def test_numpy_scalars_are_numbers():
    """NumPy scalars are accepted wherever a plain number is (bounds, categories, k)."""
    d = pj.RangeDomain(np.float32(0.0), np.int64(10))
    assert (d.lo, d.hi) == (0.0, 10.0) and type(d.lo) is float and type(d.hi) is float
    assert d == pj.RangeDomain(0.0, 10.0)  # the same static configuration, so no recompile
    with pytest.raises(pj.ModelError, match="lo=np.float64\\(nan\\)|lo=nan"):
        pj.RangeDomain(np.float64("nan"), 1.0)
    c = pj.CategoricalDomain([np.int64(1), np.int64(3)])
    assert not c.labels and c.codes == (1.0, 3.0) and c.encode(np.int64(3)) == 3
    assert pj.StatisticalDomain(k=np.float32(2.0)).k == 2.0


# ---- build-time membership, computed in Python ---------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-1e3, 1e3),
                     st.sampled_from([0.0, -0.0, 0.1, 0.2, 1.0, 1e-46, 3.4e38, 3.5e38, 1.0000001]))
_DOMAINS = st.one_of(
    st.just(pj.RealDomain()),
    st.builds(lambda a, b: pj.RangeDomain(min(a, b), max(a, b)), _NUMBERS.filter(math.isfinite),
              _NUMBERS.filter(math.isfinite)),
    st.builds(lambda a: pj.RangeDomain(a, None), _NUMBERS.filter(math.isfinite)),
    st.builds(pj.CategoricalDomain, st.lists(_NUMBERS.filter(math.isfinite), min_size=1, max_size=4, unique=True)),
    st.just(pj.BooleanDomain()),
    st.just(pj.StatisticalDomain(k=2.0)),
    st.builds(lambda a, b: pj.RangeDomain(min(a, b), max(a, b)) & pj.CategoricalDomain([0.1, 1.0, 5.0]),
              _NUMBERS.filter(math.isfinite), _NUMBERS.filter(math.isfinite)),
)


def _python_and_array_membership_agree(domain, x):
    with np.errstate(over="ignore"):  # beyond the float32 range: inf
        engine = jnp.asarray(x, dtype=float)
    array = bool(domain.contains(engine))
    assert domain.contains_python(x) == array, (domain, x)
    projected = float(domain.project(engine))
    assert np.asarray(domain.project_python(x)).tobytes() == np.asarray(projected).tobytes(), (domain, x)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")  # the array form's
@settings(max_examples=300, deadline=None)
@given(_DOMAINS, _NUMBERS)
def test_build_time_membership_equals_the_array_form(domain, x):
    """Variables check (``contains_python``) and by default choose
    (``project_python(0.0)``) their initial value in Python, without compiling a
    program; both must equal the array forms on the engine's float, bit for bit."""
    _python_and_array_membership_agree(domain, x)


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
@settings(max_examples=100, deadline=None)
@given(_DOMAINS, _NUMBERS)
def test_build_time_membership_equals_the_array_form_in_float64(domain, x):
    previous = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        _python_and_array_membership_agree(domain, x)
    finally:
        jax.config.update("jax_enable_x64", previous)
