"""Laws that must hold for every input (property tests with hypothesis):
scan equals repeated steps, a restored checkpoint continues bit-identically, vmap
over keys equals a Python loop, and policies do not depend on slot order."""

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st

import procela_jax as pj
from procela_jax._checkpoint import _with_key_data

seeds = st.integers(0, 2**31 - 1)
# perturbations of the SIR world: infected at the start, transmission rate
infected = st.floats(1.0, 200.0, allow_nan=False)
betas = st.floats(0.05, 0.9, allow_nan=False)


def leaves(state):
    return [np.asarray(x) for x in jax.tree.leaves(_with_key_data(state))]


def assert_bit_identical(a, b):
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def world(sir, seed, infected, beta):
    ex = sir.replace({"sir.beta": beta, "seasonal.beta": beta})
    s = ex.init(jax.random.key(seed), init={"I": infected, "S": 1000.0 - infected})
    return ex, s


@given(seed=seeds, infected=infected, beta=betas)
def test_scan_equals_repeated_step(sir, seed, infected, beta):
    ex, s = world(sir, seed, infected, beta)
    final, traj = ex.run(s, 4)
    for i in range(4):
        s = ex.step(s)
        np.testing.assert_array_equal(np.asarray(traj.data["value"][i]), np.asarray(s.values))
    assert_bit_identical(final, s)


@given(seed=seeds, infected=infected, beta=betas)
def test_restored_checkpoint_continues_bit_identically(sir, tmp_path_factory, seed, infected, beta):
    ex, s = world(sir, seed, infected, beta)
    _, straight = ex.run(s, 8)
    half, _ = ex.run(s, 4)
    # in memory: the state is the checkpoint
    sim = pj.Simulation(ex, seed=seed, init={"I": infected, "S": 1000.0 - infected})
    sim.run(steps=4)
    cp = sim.create_checkpoint()
    sim.run(steps=4)
    sim.restore_checkpoint(cp)
    sim.run(steps=4)
    # on disk
    path = tmp_path_factory.mktemp("ckpt") / "half.ckpt"
    pj.save_checkpoint(path, half)
    resumed, rest = ex.run(pj.load_checkpoint(path, ex), 4)
    np.testing.assert_array_equal(np.asarray(rest.data["value"]), np.asarray(straight.data["value"][4:]))
    np.testing.assert_array_equal(sim.history("I")[1:], np.asarray(straight.value("I")))
    assert_bit_identical(resumed, ex.run(half, 4)[0])


@given(seed_list=st.lists(seeds, min_size=3, max_size=3), beta=betas)
def test_vmap_over_keys_equals_a_python_loop(sir, seed_list, beta):
    ex = sir.replace({"sir.beta": beta})
    keys = jnp.stack([jax.random.key(s) for s in seed_list])
    batched_final, batched = jax.vmap(lambda k: ex.run(ex.init(k), 4))(keys)
    for j, seed in enumerate(seed_list):
        final, traj = ex.run(ex.init(jax.random.key(seed)), 4)
        np.testing.assert_array_equal(np.asarray(batched.data["value"][j]), np.asarray(traj.data["value"]))
        assert_bit_identical(jax.tree.map(lambda x: x[j], batched_final), final)


# ---- policies ---------------------------------------------------------------------
def hypotheses(min_size=1, max_size=6, values=None):
    values = values if values is not None else st.floats(-1e3, 1e3, allow_nan=False)
    row = st.tuples(values, st.floats(0.0, 1.0), st.floats(0.0, 5.0))
    return st.lists(row, min_size=min_size, max_size=max_size, unique_by=lambda r: r[1])  # no confidence ties


def resolve(policy, rows, order, mask=None):
    rows = [rows[i] for i in order]
    v, c, w = (jnp.asarray([r[k] for r in rows], jnp.float64) for k in range(3))
    m = jnp.ones(len(rows), bool) if mask is None else jnp.asarray([mask[i] for i in order])
    out = policy.resolve(v, c, w, m)
    return float(out[0]), float(out[1])


def check_invariance(policy, rows, perm, mask=None, rel=1e-9):
    with jax.enable_x64(True):
        a = resolve(policy, rows, range(len(rows)), mask)
        b = resolve(policy, rows, perm, mask)
    np.testing.assert_allclose(a, b, rtol=rel, atol=1e-9)


@given(data=st.data())
def test_blending_policies_are_permutation_invariant(data):
    rows = data.draw(hypotheses())
    perm = data.draw(st.permutations(range(len(rows))))
    mask = data.draw(st.lists(st.booleans(), min_size=len(rows), max_size=len(rows)))
    assume(any(mask))
    for policy in (pj.WeightedVotingPolicy(), pj.WeightedConfidencePolicy(), pj.MeanPolicy(), pj.MedianPolicy()):
        check_invariance(policy, rows, perm, mask)


@given(data=st.data())
def test_highest_confidence_is_permutation_invariant_without_ties(data):
    rows = data.draw(hypotheses())
    perm = data.draw(st.permutations(range(len(rows))))
    check_invariance(pj.HighestConfidencePolicy(), rows, perm, rel=0)


@given(data=st.data())
def test_majority_voting_is_permutation_invariant_without_ties(data):
    rows = data.draw(hypotheses(values=st.sampled_from([0.0, 1.0, 2.0])))
    votes = {}
    for v, _, w in rows:
        votes[v] = votes.get(v, 0.0) + w
    top = sorted(votes.values(), reverse=True)
    assume(len(top) == 1 or top[0] - top[1] > 1e-6)  # a unique winner
    perm = data.draw(st.permutations(range(len(rows))))
    check_invariance(pj.MajorityVotingPolicy(), rows, perm)
