"""State.set_many: several records in one commit, the same as one set per name."""

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
