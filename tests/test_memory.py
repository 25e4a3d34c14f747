"""The ring buffer of recent records: contents, order, sources, fixed size."""

import jax
import jax.numpy as jnp
import numpy as np

import procela_jax as pj


class Count(pj.Mechanism):
    """Proposes the step number + ``offset`` with confidence ``conf``; nothing valid
    (NaN) on steps listed in ``gaps``."""

    offset: float
    conf: float
    gaps: tuple = ()

    def transform(self, values, key):
        t = values.step
        v = t + self.offset
        for g in self.gaps:
            v = jnp.where(t == g, jnp.nan, v)
        return {w: pj.VariableRecord(v, confidence=self.conf) for w in self.writes}


def test_ring_buffer_keeps_the_latest_records_in_order():
    X = pj.Variable("X", init=-1.0, memory=4, policy=pj.HighestConfidencePolicy())
    Y = pj.Variable("Y", init=-1.0, memory=2)  # weighted voting: a blend
    ex = pj.Executive(variables=[X, Y], mechanisms=[
        Count(offset=0.0, conf=0.2, writes=[X, Y], name="low", gaps=(7,)),
        Count(offset=100.0, conf=0.9, writes=[X], name="high", gaps=(7, 8)),
    ])
    s = ex.init(jax.random.key(0))
    shapes = [np.shape(x) for x in jax.tree.leaves(s)]
    # before the buffer wraps: the initial record, then the first commits
    s = ex.step(ex.step(s))
    r = s.recent("X")
    np.testing.assert_array_equal(np.asarray(r["valid"]), [False, True, True, True])
    np.testing.assert_array_equal(np.asarray(r["value"])[1:], [-1.0, 100.0, 101.0])
    np.testing.assert_array_equal(np.asarray(r["source"])[1:], [pj.SOURCE_EXTERNAL, 1, 1])
    for _ in range(8):
        s = ex.step(s)
    assert [np.shape(x) for x in jax.tree.leaves(s)] == shapes  # the state never grows
    r = s.recent("X")  # steps 7..10 were committed last (record step = step index + 1)
    assert bool(np.all(np.asarray(r["valid"])))
    np.testing.assert_array_equal(np.asarray(r["step"]), [7, 8, 9, 10])
    # step index 6: "high" wins; 7: nothing valid (value held); 8: only "low"; 9: "high"
    np.testing.assert_array_equal(np.asarray(r["value"]), [106.0, 106.0, 8.0, 109.0])
    np.testing.assert_array_equal(np.asarray(r["source"]), [1, pj.SOURCE_NONE, 0, 1])
    np.testing.assert_allclose(np.asarray(r["confidence"]), [0.9, 0.0, 0.2, 0.9])
    ry = s.recent("Y")
    assert ry["value"].shape == (2,)
    np.testing.assert_array_equal(np.asarray(ry["value"]), [8.0, 9.0])
    np.testing.assert_array_equal(np.asarray(ry["source"]), [pj.SOURCE_BLEND, pj.SOURCE_BLEND])
    assert int(s.memory.written[0]) == int(s.stats("X").count) == 11
