"""Build-time validation: bad models fail at ``Executive(...)`` with a ModelError
that names the culprit (and chains the cause), never deep inside a trace."""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import procela_jax as pj


class Step(pj.Mechanism):
    delta: float = 1.0

    def transform(self, values, key):
        return {self.writes[0]: pj.VariableRecord(values[self.reads[0]] + self.delta, confidence=0.5)}


def _x():
    return pj.Variable("X", pj.RangeDomain(-100.0, 100.0), init=1.0)


def test_a_text_field_must_be_declared_static():
    class Moded(pj.Mechanism):
        mode: str = "fast"

        def transform(self, values, key):
            return {"X": pj.VariableRecord(values["X"], confidence=0.5)}

    with pytest.raises(pj.ModelError, match=r"mechanism 'Moded': field 'mode' holds 'fast'.*eqx.field\(static=True"):
        pj.Executive(variables=[_x()], mechanisms=[Moded(reads=["X"], writes=["X"])])

    class Static(pj.Mechanism):
        mode: str = eqx.field(static=True, default="fast")

        def transform(self, values, key):
            return {"X": pj.VariableRecord(values["X"] + (1.0 if self.mode == "fast" else 0.0), confidence=0.5)}

    ex = pj.Executive(variables=[_x()], mechanisms=[Static(reads=["X"], writes=["X"])])
    assert float(ex.step(ex.init(jax.random.key(0))).value("X")) == 2.0


def test_a_mechanism_named_like_a_variable_is_refused():
    with pytest.raises(pj.ModelError, match=r"\['X'\] name both a variable and a mechanism"):
        pj.Executive(variables=[_x()], mechanisms=[Step(name="X", reads=["X"], writes=["X"])])


def test_an_invariant_whose_condition_raises_is_named_with_its_cause():
    bad = pj.SystemInvariant("broken", lambda s: s["X"] < 1 / 0)
    with pytest.raises(pj.ModelError, match="the condition of invariant 'broken' failed") as err:
        pj.Executive(variables=[_x()], mechanisms=[Step(reads=["X"], writes=["X"])], invariants=[bad])
    assert isinstance(err.value.__cause__, ZeroDivisionError)


def test_an_invariant_reading_an_unknown_variable_is_named():
    ghost = pj.SystemInvariant("haunted", lambda s: s["Ghost"] < 1.0, phase=pj.InvariantPhase.POST)
    with pytest.raises(pj.ModelError, match=r"invariant 'haunted'.*unknown variable 'Ghost'"):
        pj.Executive(variables=[_x()], mechanisms=[Step(reads=["X"], writes=["X"])], invariants=[ghost])


@pytest.mark.parametrize("label", ["pre_step", "post_step"])
def test_a_failing_hook_is_named(label):
    def hook(state, t):
        raise ArithmeticError("nope")

    with pytest.raises(pj.ModelError, match=f"{label} failed on a trial step: ArithmeticError: nope") as err:
        pj.Executive(variables=[_x()], mechanisms=[Step(reads=["X"], writes=["X"])], **{label: hook})
    assert isinstance(err.value.__cause__, ArithmeticError)


def test_a_schedule_of_the_wrong_shape_is_refused():
    mechs = [Step(name="a", reads=["X"], writes=["X"]), Step(name="b", reads=["X"], writes=["X"])]
    with pytest.raises(pj.ModelError, match=r"one boolean per mechanism, shape \(2,\).*got shape \(1,\)"):
        pj.Executive(variables=[_x()], mechanisms=mechs, schedule=lambda v: jnp.array([False]))
    with pytest.raises(pj.ModelError, match="unknown mechanism 'c'"):
        pj.Executive(variables=[_x()], mechanisms=mechs, schedule=lambda v: {"c": True})
    ex = pj.Executive(variables=[_x()], mechanisms=mechs, schedule=lambda v: jnp.array([True, False]))
    # only a (delta 1, confidence 0.5) runs: X goes 1 -> 2
    assert float(ex.step(ex.init(jax.random.key(0))).value("X")) == 2.0


def test_a_failing_schedule_is_named():
    with pytest.raises(pj.ModelError, match="the schedule failed on a trial step"):
        pj.Executive(variables=[_x()], mechanisms=[Step(reads=["X"], writes=["X"])],
                     schedule=lambda v: v["Nope"] > 0)


def test_a_state_of_another_executive_is_refused_with_what_to_call():
    sir = pj.demos.sir.make_executive()
    state = sir.init(jax.random.key(0))

    class Extra(pj.Mechanism):
        def transform(self, values, key):
            return {"I": pj.VariableRecord(values["I"], confidence=0.1)}

    bigger = sir.add_mechanism(Extra(reads=["I"], writes=["I"]))
    with pytest.raises(pj.ModelError, match=r"another executive: mechanisms .*'Extra'.*carry_over"):
        bigger.run(state, 3)
    with pytest.raises(pj.ModelError, match="carry_over"):
        bigger.step(state)
    bigger.run(bigger.carry_over(state), 3)  # what the message says to do works
    # the same names under other domain rules
    S, I, R = (pj.Variable(v.name, v.domain, init=v.init, policy=v.policy, out_of_domain="clip")
               for v in sir.variables)
    other = sir.rebuild(variables=[S, I, R])
    with pytest.raises(pj.ModelError, match="same names with other rules"):
        other.run(state, 2)
