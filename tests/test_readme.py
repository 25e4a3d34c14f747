"""The README's Python examples run as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_block_runs(i, capsys):
    exec(compile(BLOCKS[i], f"README.md[python block {i}]", "exec"), {"__name__": "__readme__"})
    capsys.readouterr()


def test_readme_starts_with_the_two_setup_commands():
    text = README.read_text()
    first = re.search(r"```bash\n(.*?)```", text, flags=re.S).group(1).strip().splitlines()
    assert first == ['pip install -e . && procela-jax demo', 'pip install -e ".[test]" && python -m pytest']
    ci = (README.parent / ".ci" / "run").read_text()
    assert first[1] in ci
    after = text.split("```", 2)[2].split("\n\n")[1]  # the paragraph beside the test command
    assert re.search(r"\d+ minutes", after) and re.search(r"\d+ GiB", after), after


def test_the_hooks_step_index_is_stated_once_and_holds_here_and_in_the_original():
    """The README states the hooks' step index in one place, beside the step order,
    and what it states holds: here both hooks of step t get t and see state.step == t;
    in the original the post-step hook runs after the increment (step_index() == t + 1)
    with a counter that restarts on every run()."""
    import jax
    import jax.numpy as jnp
    import procela

    import procela_jax as pj

    text = README.read_text()
    bullets = [b for b in re.split(r"\n- ", text) if "post-step hook" in b and "step_index" in b]
    assert len(bullets) == 1 and bullets[0].startswith("**Step order")
    assert "**Hooks** receive" not in text

    def record(slot):
        def hook(state, t):
            row = jnp.stack([jnp.asarray(t, jnp.float32), state.step.astype(jnp.float32)])
            return state.with_aux({**state.aux, slot: state.aux[slot].at[t].set(row)})
        return hook

    X = pj.Variable("X", init=0.0)
    ex = pj.Executive(variables=[X], aux={"pre": jnp.zeros((6, 2)), "post": jnp.zeros((6, 2))},
                      pre_step=record("pre"), post_step=record("post"))
    state, _ = ex.run(ex.init(jax.random.key(0)), 3)
    state, _ = ex.run(state, 3)  # a second run: the index keeps counting
    for slot in ("pre", "post"):
        assert state.aux[slot].tolist() == [[t, t] for t in range(6)]

    class Still(procela.Mechanism):
        def __init__(self, v):
            super().__init__(reads=[v], writes=[v])
            self.v = v

        def transform(self):
            self.v.add_hypothesis(procela.VariableRecord(0.0, confidence=1.0))

    v = procela.Variable("X", procela.RealDomain())
    v.init(procela.VariableRecord(0.0, confidence=1.0))
    orig = procela.Executive(mechanisms=[Still(v)])
    seen = []
    for _ in range(2):
        orig.run(3, pre_step=lambda e, i: seen.append(("pre", i, e.step_index())),
                 post_step=lambda e, i: seen.append(("post", i, e.step_index())))
    assert seen[:2] == [("pre", 0, 0), ("post", 0, 1)]  # after the increment
    assert seen[6:8] == [("pre", 0, 3), ("post", 0, 4)]  # the counter restarts, the index does not


def test_the_memory_example_prints_what_it_says_and_the_original_pruner_is_a_gate(capsys):
    """The README's example of what replaces the memory pruner prints what its comments
    say; and the original's pruner is the commit gate the README describes."""
    import procela

    (block,) = [b for b in BLOCKS if "memory=4" in b]
    exec(compile(block, "README.md[memory example]", "exec"), {"__name__": "__readme__"})
    assert capsys.readouterr().out.splitlines() == ["1.0 11", "[ 7  8  9 10]"]

    class Up(procela.Mechanism):
        def __init__(self, v):
            super().__init__(reads=[v], writes=[v])
            self.v = v

        def transform(self):
            self.v.add_hypothesis(procela.VariableRecord(self.v.value + 1.0, confidence=1.0))

    v = procela.Variable("X", procela.RealDomain(), policy=procela.WeightedVotingPolicy(),
                         memory_pruner=lambda var: var.stats.count < 3)
    v.init(procela.VariableRecord(0.0, confidence=1.0))
    procela.Executive(mechanisms=[Up(v)]).run(5)
    # the commits of steps 2, 3, 4 were skipped whole: no record, no statistics, the value frozen
    assert v.stats.count == 3 and v.value == 2.0 and len(list(v.records())) == 3
