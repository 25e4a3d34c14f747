"""The executive: build-time validation, and the semantics pinned by the issue
(first record, empty steps, invalid proposals, keys, compile once, dtype, trajectory
rows, Save, enabled flags and policy switches as data)."""

import jax
import jax.numpy as jnp
import numpy as np
import procela
import pytest
from conftest import quiet_logger

import procela_jax as pj
from procela_jax import _step


class Growth(pj.Mechanism):
    """x * (1 + rate), confidence ``conf``."""

    rate: float
    conf: float = 0.5

    def transform(self, values, key):
        w = self.writes[0]
        return {w: pj.VariableRecord(values[w] * (1 + self.rate), confidence=self.conf)}


class Noisy(pj.Mechanism):
    """x + scale * N(0, 1) from its own key; confidence uniform in [0, 1)."""

    scale: float = 1.0

    def transform(self, values, key):
        k1, k2 = jax.random.split(key)
        w = self.writes[0]
        x = values[w]
        return {w: pj.VariableRecord(x + self.scale * jax.random.normal(k1, dtype=x.dtype),
                                     confidence=jax.random.uniform(k2, dtype=x.dtype))}


class Table(pj.Mechanism):
    """Proposes ``values[step]`` with ``confs[step]`` (and ``weights[step]``)."""

    values: jax.Array
    confs: jax.Array
    weights: jax.Array | None = None

    def transform(self, view, key):
        t = view.step
        w = 1.0 if self.weights is None else self.weights[t]
        return {self.writes[0]: pj.VariableRecord(self.values[t], confidence=self.confs[t], weight=w)}


def build(mechanisms, *variables, **kw):
    return pj.Executive(variables=list(variables), mechanisms=list(mechanisms), **kw)


# ---- build-time validation ------------------------------------------------------------
X0 = pj.Variable("X", init=1.0)
Y0 = pj.Variable("Y", init=2.0)


class ReadsY(pj.Mechanism):
    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["Y"], confidence=0.5)}


def _out(make, **kw):
    import equinox as eqx

    class _Out(pj.Mechanism):
        fn: object = eqx.field(static=True, default=None)

        def transform(self, values, key):
            return self.fn(values)

    kw.setdefault("writes", [X0])
    kw.setdefault("name", "bad")
    return _Out(fn=make, **kw)


class Boom(pj.Mechanism):
    def transform(self, values, key):
        return {"X": pj.VariableRecord(values["X"] / jnp.zeros((3,)) @ jnp.ones((4,)))}


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: build([], X0, pj.Variable("X")), r"duplicate variable names \['X'\]"),
        (lambda: build([Growth(rate=0.1, writes=[X0], name="g"), Growth(rate=0.2, writes=[X0], name="g")], X0),
         r"duplicate mechanism names \['g'\]"),
        (lambda: build([Growth(rate=0.1, writes=["Q"], name="g")], X0), r"'g' writes unknown variables \['Q'\]"),
        (lambda: build([Growth(rate=0.1, reads=["Q"], writes=[X0], name="g")], X0),
         r"'g' reads unknown variables \['Q'\]"),
        (lambda: build([Growth(rate=0.1, name="g")], X0), r"'g' declares no variables in writes="),
        (lambda: build([Growth(rate=0.1, writes=[X0], name="a.b")], X0), r"'a.b' must be .*without '.'"),
        (lambda: build([ReadsY(writes=[X0], name="r")], X0, Y0), r"'r' reads \['Y'\] but declares reads=\[\]"),
        (lambda: build([_out(lambda v: {"Y": pj.VariableRecord(1.0)})], X0, Y0),
         r"'bad' must return one record for each variable it writes \['X'\]; missing \['X'\], unexpected \['Y'\]"),
        (lambda: build([_out(lambda v: {"X": pj.VariableRecord(1.0), "Y": pj.VariableRecord(1.0)})], X0, Y0),
         r"'bad' .*unexpected \['Y'\]"),
        (lambda: build([_out(lambda v: {"X": pj.VariableRecord(jnp.ones(2))})], X0),
         r"'bad': the value proposed for 'X' must be a scalar, got shape \(2,\)"),
        (lambda: build([_out(lambda v: {"X": pj.VariableRecord(1.0, confidence=jnp.ones(3))})], X0),
         r"'bad': the confidence proposed for 'X' must be a scalar"),
        (lambda: build([_out(lambda v: {"X": 3.0})], X0), r"'bad' returned a bare number or array for 'X'; return a procela_jax.VariableRecord"),
        (lambda: build([_out(lambda v: [pj.VariableRecord(1.0)])], X0), r"'bad': transform must return a dict"),
        (lambda: build([Boom(writes=[X0], name="boom")], X0), r"'boom' failed on a trial step"),
        (lambda: build([3.0], X0), r"each mechanism must be a Mechanism, got 3.0"),
        (lambda: build([], "X"), r"each variable must be a Variable, got 'X'"),
        (lambda: pj.Variable("a.b"), r"may not contain '.'"),
        (lambda: pj.Variable("X", init_confidence=1.5), r"'X': init_confidence must lie in \[0, 1\]"),
    ],
)
def test_build_errors_name_the_culprit(make, match):
    with pytest.raises(pj.ModelError, match=match):
        make()


def test_init_override_outside_the_domain_names_the_variable():
    ex = build([], pj.Variable("X", pj.RangeDomain(0.0, 1.0), init=0.5))
    with pytest.raises(pj.ModelError, match=r"'X': value 5.0 lies outside its domain"):
        ex.init(jax.random.key(0), init={"X": 5.0})
    with pytest.raises(KeyError, match=r"unknown variable 'Q'"):
        ex.init(jax.random.key(0), init={"Q": 0.5})


def test_parameter_paths_are_checked():
    ex = build([Growth(rate=0.1, writes=[X0], name="g")], X0)
    assert float(ex.get("g.rate")) == pytest.approx(0.1)
    with pytest.raises(pj.ModelError, match=r"'g' has no parameter 'speed'; its parameters: \['rate', 'conf'\]"):
        ex.get("g.speed")
    with pytest.raises(pj.ModelError, match=r"'h' in 'h.rate' is neither a mechanism"):
        ex.replace({"h.rate": 1.0})
    with pytest.raises(pj.ModelError, match=r"'g.rate' has shape \(\), got a value of shape \(2,\)"):
        ex.replace({"g.rate": [1.0, 2.0]})
    assert float(ex.replace({"X.init": 3.0}).init(jax.random.key(0)).value("X")) == 3.0


def test_bad_run_arguments():
    ex = build([Growth(rate=0.1, writes=[X0], name="g")], X0)
    s = ex.init(jax.random.key(0))
    with pytest.raises(ValueError, match="steps must be a non-negative int"):
        ex.run(s, -1)
    with pytest.raises(KeyError, match="unknown variable 'Q'"):
        ex.run(s, 2, save=pj.Save(variables=["Q"]))
    with pytest.raises(TypeError, match="expected a PRNG key"):
        ex.init(jnp.zeros(3))


# ---- pinned semantics ---------------------------------------------------------------
def test_initial_value_is_the_first_record():
    X = pj.Variable("X", init=4.0, init_confidence=0.8)
    ex = build([Growth(rate=0.5, writes=[X])], X)
    s = ex.init(jax.random.key(0))
    st = s.stats("X")
    assert int(st.count) == 1 and float(st.mean) == 4.0 and float(st.ewma) == 4.0
    assert float(st.confidence) == pytest.approx(0.8) and float(s.confidence("X")) == pytest.approx(0.8)
    rec = s.recent("X")
    assert int(rec["valid"].sum()) == 1
    assert float(rec["value"][-1]) == 4.0 and int(rec["source"][-1]) == pj.SOURCE_EXTERNAL
    assert int(s.step) == 0


def test_a_step_without_proposals_holds_the_value_like_the_original():
    """Disable the only proposer for two steps: the value is held, the count grows
    and the history-mean confidence decays, exactly as in the original."""
    # original
    Xo = procela.Variable("X", procela.RealDomain(), policy=procela.WeightedVotingPolicy())
    Xo.init(procela.VariableRecord(1.0, confidence=1.0))

    class G(procela.Mechanism):
        def transform(self):
            Xo.add_hypothesis(procela.VariableRecord(Xo.value * 1.5, confidence=0.5))

    g = G([Xo], [Xo])
    ex_o = procela.Executive(mechanisms=[g], logger=quiet_logger())
    trace_o = []
    for enabled in [True, True, False, False, True]:
        g.enable() if enabled else g.disable()
        ex_o.step()
        trace_o.append((Xo.value, Xo.stats.count, Xo.stats.mean(), Xo.confidence))
    # ours
    X = pj.Variable("X", init=1.0)
    ex = build([Growth(rate=0.5, writes=[X], name="g")], X)
    s = ex.init(jax.random.key(0))
    for (enabled, want) in zip([True, True, False, False, True], trace_o):
        s = ex.step(s.enable("g") if enabled else s.disable("g"))
        st = s.stats("X")
        got = (float(s.value("X")), int(st.count), float(st.mean), float(st.confidence))
        assert got == pytest.approx(want, rel=1e-6)
    assert int(s.recent("X")["source"][-2]) == pj.SOURCE_NONE  # the empty step is recorded


def test_invalid_proposals_are_masked_and_counted_per_mechanism():
    nan = np.nan
    bad_values = np.asarray([1.0, nan, 3.0, 4.0, np.inf, 6.0], np.float32)
    bad_confs = np.asarray([0.5, 0.5, 1.5, -0.1, 0.5, 0.5], np.float32)
    bad_weights = np.asarray([1.0, 1.0, 1.0, 1.0, 1.0, -2.0], np.float32)
    X = pj.Variable("X", init=0.0)
    good = Table(values=np.full(6, 10.0, np.float32), confs=np.full(6, 0.5, np.float32), writes=[X], name="good")
    bad = Table(values=bad_values, confs=bad_confs, weights=bad_weights, writes=[X], name="bad")
    ex = build([good, bad], X)
    s, traj = ex.run(ex.init(jax.random.key(0)), 6)
    # step 0 is valid: mean of 10 and 1; every other step only "good" is valid
    np.testing.assert_allclose(np.asarray(traj.value("X")), [5.5, 10, 10, 10, 10, 10])
    np.testing.assert_array_equal(np.asarray(s.invalid_proposals), [0, 5])
    np.testing.assert_array_equal(np.asarray(s.invalid_first_step), [-1, 1])
    # a disabled mechanism's invalid proposals are not counted
    s2, _ = ex.run(ex.init(jax.random.key(0)).disable("bad"), 6)
    np.testing.assert_array_equal(np.asarray(s2.invalid_proposals), [0, 0])


def test_per_mechanism_keys_are_independent_of_the_others():
    X, Y = pj.Variable("X", init=0.0), pj.Variable("Y", init=0.0)
    a = Noisy(writes=[X], name="a")
    b = Noisy(scale=3.0, writes=[Y], name="b")
    key = jax.random.key(11)
    alone = build([a], X, Y).run(build([a], X, Y).init(key), 8)[1].value("X")
    ex2 = build([b, a], X, Y)  # another mechanism, run first
    with_b = ex2.run(ex2.init(key), 8)[1].value("X")
    without_b = ex2.run(ex2.init(key).disable("b"), 8)[1].value("X")
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(with_b))
    np.testing.assert_array_equal(np.asarray(alone), np.asarray(without_b))
    # and the draws do depend on the mechanism's own name
    renamed = build([Noisy(writes=[X], name="c")], X, Y)
    assert not np.array_equal(np.asarray(alone), np.asarray(renamed.run(renamed.init(key), 8)[1].value("X")))


def test_same_key_is_bit_identical_and_legacy_keys_are_accepted():
    X = pj.Variable("X", init=0.0)
    ex = build([Noisy(writes=[X], name="a"), Noisy(scale=0.5, writes=[X], name="b")], X)
    run = lambda key: np.asarray(ex.run(ex.init(key), 20)[1].value("X"))
    first = run(jax.random.key(5))
    np.testing.assert_array_equal(first, run(jax.random.key(5)))
    np.testing.assert_array_equal(first, run(jax.random.PRNGKey(5)))  # same key data
    assert not np.array_equal(first, run(jax.random.key(6)))


def test_run_and_step_compile_once_per_structure():
    # names no other test uses: models equal by value share their compilations
    X = pj.Variable("X_compile_once", init=1.0)
    mech = lambda rate, conf=0.5: Growth(rate=rate, conf=conf, writes=[X], name="g_compile_once")
    ex = build([mech(0.1)], X)
    count = _step.TRACE_COUNT
    runs, steps = count["run"], count["step"]
    s, _ = ex.run(ex.init(jax.random.key(0)), 7)
    ex.step(s)
    # at most one trace each (none when an equal model was compiled earlier in the process)
    assert count["run"] - runs <= 1 and count["step"] - steps <= 1
    runs, steps = count["run"], count["step"]
    # a new state, initial values, parameters (incl. a plain Python float at build
    # time and in replace), and a new executive of the same structure: no retrace
    out = [
        ex.run(ex.init(jax.random.key(1)), 7)[0],
        ex.run(ex.init(jax.random.key(1), init={"X_compile_once": 3.0}), 7)[0],
        ex.run(s, 7)[0],
        ex.replace({"g_compile_once.rate": 0.7}).run(s, 7)[0],
        ex.replace({"g_compile_once.rate": jnp.asarray(0.9)}).run(s, 7)[0],
        build([mech(0.3, conf=0.25)], X).run(s, 7)[0],
        ex.replace({"g_compile_once.rate": 0.2}).step(s),
    ]
    assert (count["run"] - runs, count["step"] - steps) == (0, 0)
    # and the new values were used
    x = float(s.value("X_compile_once"))
    assert float(out[3].value("X_compile_once")) == pytest.approx(x * 1.7**7, rel=1e-5)
    assert float(out[5].value("X_compile_once")) == pytest.approx(x * 1.3**7, rel=1e-5)
    # a different number of steps is a different structure (one more trace)
    ex.run(s, 29)
    assert count["run"] - runs == 1


def test_python_float_parameters_become_model_dtype_arrays():
    ex = build([Growth(rate=0.1, writes=[X0], name="g")], X0)
    rate = ex.get("g.rate")
    assert isinstance(rate, jax.Array) and rate.dtype == jnp.float32


def test_dtype_is_float32_by_default():
    ex = build([Noisy(writes=[X0], name="a")], X0)
    s, traj = ex.run(ex.init(jax.random.key(0)), 3)
    assert ex.dtype == "float32"
    assert s.values.dtype == jnp.float32 and traj.value("X").dtype == jnp.float32
    assert s.stats("X").sum.dtype == jnp.float32


def test_dtype_is_float64_when_x64_is_on_at_build(x64):
    X = pj.Variable("X", init=1.0)
    ex = build([Noisy(writes=[X], name="a"), Growth(rate=0.1, writes=[X], name="g")], X)
    s, traj = ex.run(ex.init(jax.random.key(0)), 3)
    assert ex.dtype == "float64" and ex.get("g.rate").dtype == jnp.float64
    assert s.values.dtype == jnp.float64 and traj.value("X").dtype == jnp.float64
    assert float(ex.get("g.rate")) == 0.1  # exactly the Python float


def test_trajectory_row_i_is_the_value_after_step_i_plus_1():
    X = pj.Variable("X", init=0.0)
    ex = build([Noisy(writes=[X], name="a")], X)
    s0 = ex.init(jax.random.key(2))
    final, traj = ex.run(s0, 5, save=pj.Save(fields=("value", "confidence", "mean", "count")))
    s = s0
    for i in range(5):
        s = ex.step(s)
        assert float(traj.value("X")[i]) == float(s.value("X"))
        assert float(traj.confidence("X")[i]) == float(s.confidence("X"))
        assert float(traj.field("X", "mean")[i]) == float(s.stats("X").mean)
        assert int(traj.field("X", "count")[i]) == i + 2
    np.testing.assert_array_equal(np.asarray(traj.steps), [1, 2, 3, 4, 5])
    assert len(traj) == 5 and traj.value("X").shape == (5,)
    with pytest.raises(KeyError, match="field 'std' was not saved"):
        traj.field("X", "std")


def test_save_every_k_and_final_only():
    X, Y = pj.Variable("X", init=0.0), pj.Variable("Y", init=1.0)
    ex = build([Noisy(writes=[X], name="a"), Growth(rate=0.1, writes=[Y], name="g")], X, Y)
    s0 = ex.init(jax.random.key(4))
    full_state, full = ex.run(s0, 11)
    state3, every3 = ex.run(s0, 11, save=pj.Save(every=3, variables=["X"], fields=("value",)))
    np.testing.assert_array_equal(np.asarray(every3.steps), [3, 6, 9])
    np.testing.assert_array_equal(np.asarray(every3.value("X")), np.asarray(full.value("X"))[[2, 5, 8]])
    assert every3.names == ("X",) and set(every3.data) == {"value"}
    with pytest.raises(KeyError, match="variable 'Y' was not saved"):
        every3.value("Y")
    final, nothing = ex.run(s0, 11, save=None)
    assert len(nothing) == 0
    for st in (state3, final):  # the remainder steps are run too
        assert int(st.step) == 11
        np.testing.assert_array_equal(np.asarray(st.values), np.asarray(full_state.values))


def test_enabled_flags_and_policy_switch_are_data_inside_jit():
    """Disabling a mechanism and switching a policy are traced operations: one jitted
    and vmapped function serves every combination."""
    X = pj.Variable("X", init=0.0, alternatives=[pj.HighestConfidencePolicy()])
    a = Table(values=np.full(3, 2.0, np.float32), confs=np.full(3, 0.2, np.float32), writes=[X], name="a")
    b = Table(values=np.full(3, 6.0, np.float32), confs=np.full(3, 0.6, np.float32), writes=[X], name="b")
    ex = build([a, b], X)

    @jax.jit
    def one(key, off_b, highest):
        s = ex.init(key).disable("b", when=off_b).set_policy("X", pj.HighestConfidencePolicy, when=highest)
        return ex.run(s, 2)[0].values[0]

    keys = jax.random.split(jax.random.key(0), 4)
    off_b = jnp.asarray([False, True, False, True])
    highest = jnp.asarray([False, False, True, True])
    got = np.asarray(jax.vmap(one)(keys, off_b, highest))
    np.testing.assert_allclose(got, [4.0, 2.0, 6.0, 2.0])  # mean, a alone, b wins, a alone
    s = ex.init(jax.random.key(0)).set_policy("X", "HighestConfidencePolicy")
    assert int(s.policy_index("X")) == 1 and not bool(s.disable("a").is_enabled("a"))


def test_execution_order_and_mechanism_access():
    X = pj.Variable("X", init=0.0)
    a, b = Growth(rate=0.1, writes=[X], name="a"), Growth(rate=0.2, writes=[X], name="b")
    ex = build([a, b], X, execution_order=["b", "a"])
    assert [m.name for m in ex.mechanisms] == ["b", "a"]
    assert ex.mechanism("a").name == "a" and ex.variable("X") is X
    with pytest.raises(pj.ModelError, match="execution_order"):
        build([a, b], X, execution_order=["a"])


@pytest.mark.parametrize("steps,every", [(5, 1), (42, 1), (43, 1), (130, 1), (130, 3), (200, 7), (365, 1)])
def test_trajectory_rows_equal_a_python_loop_of_steps(steps, every):
    # runs write their rows in blocks (see _step.rows_per_block); whatever the
    # block and the remainder, row i is the state after step (i + 1) * every
    ex = pj.demos.sir.make_executive()
    assert _step.rows_per_block(ex, ex.abstract_state(), np.arange(3), pj.Save(), 420) == 21
    s = ex.init(jax.random.key(3))
    final, traj = ex.run(s, steps, save=pj.Save(every=every, fields=("value", "confidence", "mean")))
    rows = []
    for t in range(1, steps + 1):
        s = ex.step(s)
        if t % every == 0:
            rows.append((s.values, s.confidences, s.stats_.mean, s.step))
    assert len(traj) == steps // every
    for i, (v, c, m, t) in enumerate(rows):
        np.testing.assert_array_equal(traj.data["value"][i], v)
        np.testing.assert_array_equal(traj.data["confidence"][i], c)
        np.testing.assert_array_equal(traj.data["mean"][i], m)
        assert int(traj.steps[i]) == int(t)
    np.testing.assert_array_equal(final.values, s.values)
