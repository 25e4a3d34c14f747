"""The procela-jax command line: demo, run, bench, and one-line errors."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap
import types

import jax
import matplotlib.image as mpimg
import numpy as np
import pytest

import procela_jax as pj
from procela_jax import cli
from procela_jax._bench import sir_scan

ROOT = pathlib.Path(__file__).parents[1]

WALK = textwrap.dedent(
    """
    import jax
    import procela_jax as pj


    class Walk(pj.Mechanism):
        drift: float = 0.5

        def transform(self, values, key):
            return {
                "X": pj.VariableRecord(values["X"] + self.drift + jax.random.normal(key), confidence=0.8),
                "Y": pj.VariableRecord(values["Y"] - 1.0, confidence=0.6),
            }


    def make_executive():
        X, Y = pj.Variable("X", init=0.0), pj.Variable("Y", init=10.0)
        return pj.Executive(variables=[X, Y], mechanisms=[Walk(reads=[X, Y], writes=[X, Y], name="walk")]{extra})
    """
)


def model_file(tmp_path, name="walk.py", extra=""):
    path = tmp_path / name
    path.write_text(WALK.replace("{extra}", extra))
    return path


@pytest.fixture(scope="module")
def walk_module(tmp_path_factory):
    """The walk model as an importable module (imported once, so its runs compile once)."""
    folder = tmp_path_factory.mktemp("models")
    (folder / "walk_model.py").write_text(WALK.replace("{extra}", ""))
    sys.path.insert(0, str(folder))
    yield "walk_model"
    sys.path.remove(str(folder))
    sys.modules.pop("walk_model", None)


def load(path):
    """Import a model file the way a user would, independently of the CLI."""
    ns = {}
    exec(compile(pathlib.Path(path).read_text(), str(path), "exec"), ns)
    return ns["make_executive"]()


def one_error_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("procela-jax: error: ")
    assert "Traceback" not in err[0]
    return err[0]


# ---- run ------------------------------------------------------------------------
def test_run_writes_the_documented_schema_and_matches_independent_runs(tmp_path, capsys):
    path = model_file(tmp_path)
    out = tmp_path / "res.npz"
    argv = ["run", str(path), "--steps", "10", "--scenarios", "3", "--seed", "5", "--save-every", "3",
            "--out", str(out)]
    assert cli.main(argv) == 0
    captured = capsys.readouterr()
    assert "3 scenarios x 10 steps" in captured.out and str(out) in captured.out
    assert "sweep (scenario-steps)" in captured.err  # the progress bar
    r = cli.load_results(out)
    assert set(r) == {"value", "confidence", "step", "seed", "variable", "final_value", "final_confidence",
                      "halted", "halted_at", "halted_by", "attrs"}
    assert r["value"].shape == r["confidence"].shape == (3, 3, 2)  # rows after steps 3, 6, 9
    assert r["step"].tolist() == [3, 6, 9]
    assert r["seed"].tolist() == [5, 6, 7]
    assert r["variable"].tolist() == ["X", "Y"]
    assert r["halted"].tolist() == [False] * 3 and r["halted_at"].tolist() == [-1] * 3
    assert r["halted_by"].tolist() == [-1] * 3
    a = r["attrs"]
    assert a["format"] == "procela_jax.run" and a["format_version"] == 1
    assert a["model"] == str(path.resolve()) and a["procela_jax_version"] == pj.__version__
    assert (a["steps"], a["scenarios"], a["seed"], a["save_every"]) == (10, 3, 5, 3)
    assert a["dims"]["value"] == ["scenario", "step", "variable"] and a["mechanisms"] == ["walk"]
    for name, arr in r.items():  # every array's rank matches its declared dims
        if name != "attrs":
            assert arr.ndim == len(a["dims"][name]), name
    ex = load(path)
    for k, seed in enumerate([5, 6, 7]):  # scenario k is the run from jax.random.key(seed)
        final, traj = ex.run(ex.init(jax.random.key(seed)), 10, save=pj.Save(every=3))
        np.testing.assert_array_equal(r["value"][k], np.asarray(traj.data["value"]))
        np.testing.assert_array_equal(r["confidence"][k], np.asarray(traj.data["confidence"]))
        np.testing.assert_array_equal(r["final_value"][k], np.asarray(final.values))  # includes step 10
    np.testing.assert_allclose(r["value"][:, :, 1], [[7.0, 4.0, 1.0]] * 3)  # Y: 10 - t, by hand
    assert r["final_value"][0, 1] == pytest.approx(0.0)
    with np.load(out, allow_pickle=False) as raw:  # plain numpy, no pickle
        assert raw["value"].dtype == np.float32
    img = mpimg.imread(tmp_path / "res.png")
    assert img[..., :3].std() > 0.02


def test_run_a_module_single_scenario_and_chunked_progress(tmp_path, capsys, monkeypatch, walk_module):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", walk_module, "--steps", "45", "--seed", "2", "--no-progress"]) == 0
    assert capsys.readouterr().err == ""
    r = cli.load_results("walk_model.npz")  # default name: the module's last part
    assert os.path.exists("walk_model.png")
    ex = sys.modules[walk_module].make_executive()
    _, traj = ex.run(ex.init(jax.random.key(2)), 45)
    np.testing.assert_allclose(r["value"][0], np.asarray(traj.data["value"]), rtol=1e-6)
    assert r["step"].tolist() == list(range(1, 46))


def test_run_records_scenarios_halted_by_a_fatal_invariant(tmp_path, capsys):
    inv = ", invariants=[pj.SystemInvariant('positive', lambda v: v['Y'] > 4.5, phase=pj.InvariantPhase.POST, severity=pj.InvariantSeverity.FATAL)]"
    path = model_file(tmp_path, extra=inv)
    out = tmp_path / "h.npz"
    assert cli.main(["run", str(path), "--steps", "8", "--scenarios", "2", "--out", str(out), "--no-progress"]) == 0
    assert "2 scenarios halted by a FATAL invariant" in capsys.readouterr().out
    r = cli.load_results(out)
    assert r["halted"].tolist() == [True, True]
    assert r["halted_at"].tolist() == [5, 5]  # Y = 10 - (t + 1) drops to 4 at step index 5
    assert r["halted_by"].tolist() == [0, 0] and r["attrs"]["invariants"] == ["positive"]
    np.testing.assert_allclose(r["value"][0, :, 1], [9, 8, 7, 6, 5, 4, 4, 4])  # frozen after halting


def test_run_never_overwrites_without_force(tmp_path, capsys, walk_module):
    out = tmp_path / "r.npz"
    argv = ["run", walk_module, "--steps", "3", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    capsys.readouterr()
    before = out.read_bytes()
    assert cli.main(argv + ["--seed", "3"]) == 1
    assert "r.npz exists; pass --force" in one_error_line(capsys)
    assert out.read_bytes() == before
    out.unlink()  # the plot alone also blocks
    assert cli.main(argv) == 1
    assert "r.png exists" in one_error_line(capsys)
    assert cli.main(argv + ["--seed", "3", "--force"]) == 0
    assert cli.load_results(out)["seed"].tolist() == [3]


README = (ROOT / "README.md").read_text()


def test_the_readme_first_model_runs_as_written(tmp_path, capsys, monkeypatch):
    """Saved as model.py, the README's first model (its executive is called ``ex``) runs."""
    first = re.search(r"```python\n(.*?)```", README, flags=re.S).group(1)
    (tmp_path / "model.py").write_text(first)
    monkeypatch.chdir(tmp_path)
    assert cli.main(["run", "model.py", "--steps", "5", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "(5 saved steps x 1 variable)" in out and "1 scenario x 5 steps" in out
    ns = {}
    exec(compile(first, "README", "exec"), ns)  # the same model, run by hand
    _, traj = ns["ex"].run(ns["ex"].init(jax.random.key(0)), 5)
    np.testing.assert_array_equal(cli.load_results("model.npz")["value"][0], np.asarray(traj.data["value"]))


def test_a_module_with_several_executives_names_them(tmp_path, capsys):
    path = tmp_path / "two.py"
    path.write_text("import procela_jax as pj\na = pj.Executive(variables=[pj.Variable('X')])\n"
                    "b = pj.Executive(variables=[pj.Variable('Y')])\n")
    assert cli.main(["run", str(path), "--steps", "2"]) == 1
    line = one_error_line(capsys)
    assert "defines 2 executives (a, b)" in line and "`executive`" in line


def test_run_help_documents_every_option_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", "--help"])
    entries, flag = {}, None
    for line in capsys.readouterr().out.splitlines():  # "  --flag METAVAR  help", continued indented
        m = re.match(r"  (--[\w-]+)(?: [A-Z_]+)?\s*(.*)", line)
        if m:
            flag = m.group(1)
            entries[flag] = m.group(2)
        elif flag and line.startswith("      "):
            entries[flag] += " " + line.strip()
        else:
            flag = None
    for flag, default in (("--steps", 100), ("--scenarios", 1), ("--save-every", 1), ("--seed", 0)):
        text = entries[flag]
        assert len(text.split("(default")[0].split()) >= 3, (flag, text)  # a description
        assert re.search(r"\(default: (\d+)", text).group(1) == str(default), (flag, text)
        assert getattr(cli._parser().parse_args(["run", "m.py"]), flag[2:].replace("-", "_")) == default


def test_outputs_get_the_default_permissions(tmp_path, capsys, walk_module):
    old = os.umask(0o022)
    try:
        assert cli.main(["run", walk_module, "--steps", "3", "--out", str(tmp_path / "r.npz"), "--no-progress"]) == 0
    finally:
        os.umask(old)
    assert (tmp_path / "r.npz").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "r.png").stat().st_mode & 0o777 == 0o644


def test_the_run_figure_has_one_legend(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    rng = np.random.default_rng(0)
    results = {"variable": np.asarray(["S", "I", "R"]), "step": np.arange(1, 6),
               "value": rng.normal(size=(4, 5, 3)), "confidence": np.full((4, 5, 3), 0.5)}
    cli._plot_results(results, str(tmp_path / "f.png"), "m.py")
    (fig,) = figures
    assert sum(ax.get_legend() is not None for ax in fig.axes) == 1
    monkeypatch.undo()
    plt.close(fig)


@pytest.mark.parametrize("which", ["r.npz", "r.png"])
def test_an_output_that_is_a_directory_is_refused_before_running(tmp_path, capsys, monkeypatch, walk_module, which):
    (tmp_path / which).mkdir()
    monkeypatch.setattr(cli, "simulate", lambda *a, **k: pytest.fail("ran before checking its outputs"))
    for force in ([], ["--force"]):
        assert cli.main(["run", walk_module, "--steps", "3", "--out", str(tmp_path / "r.npz"), *force]) == 1
        assert f"{tmp_path / which} is a directory" in one_error_line(capsys)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sir_demo.png").mkdir()
    assert cli.main(["demo", "--steps", "2", "--force"]) == 1
    assert "sir_demo.png is a directory" in one_error_line(capsys)


@pytest.mark.parametrize(
    "args, code, words",
    [
        (["--steps", "0"], 2, "--steps: must be a positive integer, got 0"),
        (["--steps", "abc"], 2, "--steps: must be an integer, got 'abc'"),
        (["--steps", "-3"], 2, "--steps: must be a positive integer"),
        (["--scenarios", "0"], 2, "--scenarios: must be a positive integer"),
        (["--seed", "-1"], 2, "--seed: must be an integer >= 0"),
        (["--save-every", "2.5"], 2, "--save-every: must be an integer, got '2.5'"),
        (["--steps", "3", "--save-every", "4"], 2, "--save-every (4) must not exceed --steps (3)"),
        (["--out", "results.csv"], 2, "--out must name a .npz, .nc (NetCDF) or .zarr (Zarr) output"),
        (["--out", "no/such/folder/r.npz"], 1, "the folder of --out does not exist"),
    ],
)
def test_run_bad_arguments_fail_on_one_line(tmp_path, capsys, monkeypatch, args, code, words):
    monkeypatch.chdir(tmp_path)
    path = model_file(tmp_path)
    assert cli.main(["run", str(path), *args]) == code
    assert words in one_error_line(capsys)
    assert not list(tmp_path.glob("*.npz"))


@pytest.mark.parametrize(
    "source, words",
    [
        (None, "model file {path} not found"),
        ("x = 1\n", "{path} defines no `executive` and no `make_executive()`"),
        ("executive = [1, 2]\n", "`executive` in {path} gave a list object, not a procela_jax.Executive"),
        ("def make_executive():\n    return 3\n", "make_executive() in {path} gave a int object, not a procela_jax.Executive"),
        ("import jax\nraise RuntimeError('no data here')\n", "failed to load: RuntimeError: no data here"),
        ("def make_executive():\n    return undefined_name\n", "make_executive() in {path} raised NameError"),
        ("def broken(:\n", "failed to load: SyntaxError"),
    ],
)
def test_bad_model_files_fail_on_one_line(tmp_path, capsys, source, words):
    path = tmp_path / "model.py"
    if source is not None:
        path.write_text(source)
    assert cli.main(["run", str(path), "--steps", "2"]) == 1
    assert words.format(path=path) in one_error_line(capsys)


def test_bad_model_modules_fail_on_one_line(capsys):
    assert cli.main(["run", "no_such_module_xyz"]) == 1
    assert "no model file or module named 'no_such_module_xyz'" in one_error_line(capsys)
    assert cli.main(["run", "json"]) == 1
    assert "json defines no `executive`" in one_error_line(capsys)


def test_model_errors_at_build_time_are_one_line(tmp_path, capsys):
    path = tmp_path / "m.py"
    path.write_text("import procela_jax as pj\nexecutive = pj.Executive(variables=[pj.Variable('X'), pj.Variable('X')])\n")
    assert cli.main(["run", str(path)]) == 1
    assert "ModelError: Executive: duplicate variable names ['X']" in one_error_line(capsys)


def test_usage_errors_are_one_line(capsys):
    assert cli.main([]) == 2
    assert "required: command" in one_error_line(capsys)
    assert cli.main(["frobnicate"]) == 2
    assert "invalid choice: 'frobnicate'" in one_error_line(capsys)
    assert cli.main(["run"]) == 2
    assert "required: model" in one_error_line(capsys)


# ---- demo ------------------------------------------------------------------------
def test_demo_writes_sir_demo_png_into_the_working_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo"]) == 0
    out = capsys.readouterr().out
    assert "365 daily steps, seed 0" in out and "plot written to sir_demo.png" in out
    ex = pj.demos.sir.make_executive()
    final, _ = ex.run(ex.init(jax.random.key(0)), 365)
    assert f"I={float(final.value('I')):8.1f}" in out  # the printed summary is the demo's run
    assert mpimg.imread(tmp_path / "sir_demo.png")[..., :3].std() > 0.02


def test_demo_refuses_to_overwrite_without_force_like_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sir_demo.png").write_bytes(b"mine")
    assert cli.main(["demo", "--steps", "3"]) == 1
    assert "sir_demo.png exists; pass --force to overwrite it" in one_error_line(capsys)
    assert (tmp_path / "sir_demo.png").read_bytes() == b"mine"
    assert cli.main(["demo", "--steps", "3", "--force"]) == 0
    assert mpimg.imread(tmp_path / "sir_demo.png").ndim == 3


def test_demo_amr_writes_its_figure_and_runs_what_the_readme_says(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("procela_jax.demos.amr")
    fake.main = lambda out=None, seed=0: calls.append(out)  # no figure unless asked, as amr.main
    fake.__spec__ = cli.importlib.machinery.ModuleSpec("procela_jax.demos.amr", None)
    monkeypatch.setitem(sys.modules, "procela_jax.demos.amr", fake)
    assert cli.main(["demo", "amr", "--force"]) == 0
    assert calls == ["amr_demo.png"]  # --help: the plot goes into the working folder
    monkeypatch.undo()
    import inspect

    from procela_jax.demos import amr

    runs = int(re.search(r"The AMR case study's ([\d,]+)\s+runs", README).group(1))
    seeds = inspect.signature(amr.main).parameters["seeds"].default
    assert len(amr.SETTINGS) * seeds == runs == 250  # 50 runs of each of the 5 settings, as the original


def test_demo_amr_missing_is_one_line(capsys, monkeypatch):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec",
                        lambda name, *a: None if name == "procela_jax.demos.amr" else real(name, *a))
    assert cli.main(["demo", "amr"]) == 1
    assert "the AMR demo is not installed" in one_error_line(capsys)


def test_demo_amr_calls_the_case_study_main(capsys, monkeypatch):
    calls = []
    fake = types.ModuleType("procela_jax.demos.amr")
    fake.main = lambda out="amr_demo.png", seed=0: calls.append((out, seed))
    fake.__spec__ = cli.importlib.machinery.ModuleSpec("procela_jax.demos.amr", None)
    monkeypatch.setitem(sys.modules, "procela_jax.demos.amr", fake)
    assert cli.main(["demo", "amr", "--seed", "4"]) == 0
    assert calls == [("amr_demo.png", 4)]
    assert cli.main(["demo", "amr", "--steps", "9"]) == 1  # this main takes no steps
    assert "does not take --steps" in one_error_line(capsys)
    assert cli.main(["demo", "nope"]) == 2
    assert "unknown demo 'nope'" in one_error_line(capsys)


# ---- bench -----------------------------------------------------------------------
def test_hand_written_scan_is_the_same_epidemic_as_the_demo():
    ex = pj.demos.sir.make_executive()
    _, traj = ex.run(ex.init(jax.random.key(3)), 60)
    hand = np.asarray(sir_scan(jax.random.key(3), 60))
    for j, name in enumerate("SIR"):
        np.testing.assert_allclose(hand[:, j], np.asarray(traj.value(name)), rtol=2e-5, atol=1e-4)


def test_bench_prints_a_summary(capsys):
    assert cli.main(["bench", "--steps", "20", "--scenarios", "4"]) == 0
    out = capsys.readouterr().out
    assert "SIR demo" in out and "20 steps" in out
    assert "single run" in out and "batched (4 scenarios)" in out
    assert "final values agree" in out


def test_bench_ratios_are_speed_ratios_and_say_what_they_measure():
    from procela_jax._bench import format_benchmark

    r = {"steps": 10, "scenarios": 2, "backend": "cpu", "same_result": True,
         "single": {"procela_jax": 3e4, "hand": 2e4}, "batched": {"procela_jax": 1e5, "hand": 2e5}}
    text = format_benchmark(r)
    assert "1.50x" in text and "0.50x" in text  # procela_jax's rate over the hand scan's
    assert "higher is faster" in text
    assert "final state only" in text and "bench_core.py" in text  # what the rates measure


# ---- as a program ------------------------------------------------------------------
def test_python_dash_m_runs_and_fails_like_main(tmp_path):
    path = model_file(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    ok = subprocess.run([sys.executable, "-m", "procela_jax", "run", str(path), "--steps", "5", "--no-progress"],
                        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "walk.npz").exists() and (tmp_path / "walk.png").exists()
    bad = subprocess.run([sys.executable, "-m", "procela_jax", "run", str(path), "--steps", "5"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert bad.returncode == 1
    assert bad.stderr.strip().splitlines() == ["procela-jax: error: walk.npz exists; pass --force to overwrite it"]
