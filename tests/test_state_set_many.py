"""State.set and State.set_many: several records in one commit, the same as one set per name;
what the Python edge accepts (numbers, arrays, category labels) and refuses."""

import jax
import numpy as np
import pytest

import procela_jax as pj


def _state():
    vs = [pj.Variable("A", pj.RangeDomain(0.0, 10.0), init=1.0), pj.Variable("B", init=2.0), pj.Variable("C", init=3.0)]
    return pj.Executive(variables=vs, mechanisms=[]).init(jax.random.key(0))


@pytest.mark.parametrize("when", [None, True, False])
def test_set_many_equals_one_set_per_name(when):
    s = _state()
    one_by_one = s.set("A", 12.0, 0.5, when=when).set("C", -1.0, 0.5, when=when)
    at_once = s.set_many({"A": 12.0, "C": -1.0}, confidence=0.5, when=when)
    parts = lambda st: (st.values, st.confidences, st.stats_, st.memory, st.domain_violations, st.domain_first_step)  # noqa: E731
    for a, b in zip(jax.tree.leaves(parts(one_by_one)), jax.tree.leaves(parts(at_once))):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    if when is not False:
        assert float(at_once.value("A")) == 12.0 and int(at_once.domain_violations[0]) == 1


def test_set_many_rejects_unknown_and_repeated_names():
    s = _state()
    with pytest.raises(KeyError, match="unknown variable 'Z'"):
        s.set_many({"Z": 1.0})
    with pytest.raises(ValueError, match="given twice"):
        s.set_many({"A": 1.0, pj.Variable("A"): 2.0})


@pytest.mark.parametrize("value", ["3", b"3", np.str_("3"), np.array(["3"]), None, [1.0, "x"]])
def test_a_non_number_for_a_numeric_domain_is_refused_at_the_edge(value):
    """As the original (``Value 3 is not numeric``), and before anything is traced:
    a ModelError naming the variable (it used to store the string "3" as 3.0)."""
    s = _state()
    with pytest.raises(pj.ModelError, match=r"State.set: variable 'B'.*not a number.*float"):
        s.set("B", value)
    with pytest.raises(pj.ModelError, match=r"State.set_many: variable 'A'.*not a number"):
        s.set_many({"C": 1.0, "A": value})
    with pytest.raises(pj.ModelError, match=r"Variable 'V'.*not a number"):
        pj.Variable("V", pj.RangeDomain(0.0, 10.0), init="3")


def test_category_labels_are_encoded_at_the_edge():
    W = pj.Variable("W", pj.CategoricalDomain(["low", "high"]), init="low")
    s = pj.Executive(variables=[W, pj.Variable("B")], mechanisms=[]).init(jax.random.key(0))
    assert float(s.set("W", "high").value("W")) == 1.0  # the label's position
    assert float(s.set_many({"W": "high", "B": 2.0}).value("W")) == 1.0
    with pytest.raises(pj.ModelError, match=r"variable 'W'.*'medium' is not one of the categories"):
        s.set("W", "medium")
    # numbers, NumPy and JAX arrays, and traced values pass through as before
    assert float(s.set("B", np.float32(4.0)).value("B")) == 4.0
    assert float(jax.jit(lambda st, v: st.set("B", v))(s, 5.0).value("B")) == 5.0
