"""The ``procela-jax`` command line (also ``python -m procela_jax``).

Commands::

    procela-jax demo [--force]       the SIR demo; writes sir_demo.png here
    procela-jax demo amr [--force]   the AMR case study (when installed); writes amr_demo.png here
    procela-jax run MODEL [--steps N] [--scenarios M] [--seed S] [--save-every K]
                          [--out PATH.npz|PATH.nc|PATH.zarr] [--force] [--no-progress]
    procela-jax bench                a quick benchmark summary (< 30 s)

``MODEL`` is a Python file (``model.py``) or an importable module name
(``package.model``) that defines ``executive`` (a :class:`procela_jax.Executive`),
or ``make_executive()`` returning one, or else exactly one Executive under any
name (``ex = pj.Executive(...)``). Errors (a missing file, a model that defines
no executive, a bad number, an existing output) exit with status 1 or 2 and one
line on stderr that names the problem. Every output path is checked before
anything runs; no command replaces an existing file without ``--force``, and a
directory is never an output.

Output of ``run``: a NumPy ``.npz`` archive
---------------------------------------------

Why ``.npz``: it is read by NumPy alone (``numpy.load``), which every tool of
the scientific Python stack already has, so writing it adds no dependency; it
stores every array bit for bit with its dtype (no text conversion, no float
rounding), and loads without pickle (``allow_pickle=False``: strings are
fixed-width unicode arrays, the attributes one JSON string). NetCDF would need
xarray plus netCDF4 or h5netcdf, and Parquet pyarrow, for arrays whose natural
shape is a dense ``(scenario, step, variable)`` cube; the schema below maps
one to one onto an ``xarray.Dataset`` when one is wanted. Beside it, a PNG
plot (fan charts across scenarios, or the trajectory with its confidence band
for one scenario) with the same name and suffix ``.png``.

Schema (``format = "procela_jax.run"``, ``format_version = 1``):

==================  =====================  =================================================
array               dims                   meaning
==================  =====================  =================================================
``value``           scenario, step, var    resolved value of each variable (model dtype)
``confidence``      scenario, step, var    confidence of that value, in [0, 1]
``step``            step                   steps completed when the row was saved
                                           (row ``i`` is after step ``(i + 1) * save_every``)
``seed``            scenario               the seed of each scenario (``jax.random.key(seed)``)
``variable``        var                    variable names (unicode)
``final_value``     scenario, var          values after the last step
``final_confidence`` scenario, var         confidences after the last step
``halted``          scenario               True if a FATAL invariant halted the scenario
``halted_at``       scenario               the step it halted at (-1: never)
``halted_by``       scenario               index of that invariant in ``attrs["invariants"]`` (-1)
``attrs``           (scalar)               JSON: format, format_version, model,
                                           procela_jax_version, jax_version, steps,
                                           scenarios, seed, save_every, dims,
                                           mechanisms, invariants, created (UTC, ISO 8601)
==================  =====================  =================================================

Read it back with :func:`load_results` (arrays plus the parsed ``attrs``), or
with ``numpy.load(path)`` directly.

``--out PATH.nc`` (NetCDF 4, written with h5netcdf) and ``--out PATH.zarr``
(a Zarr folder, format 2) hold the same results as labelled data: the
``xarray.Dataset`` of ``SweepResult.to_xarray()`` (``value``, ``confidence``
with dims ``scenario, step, variable``; ``final_value``, ``final_confidence``,
``halted``, ``halted_at``, ``halted_by``; coordinates ``scenario``, ``step``,
``variable``, ``seed``; schema in ``procela_jax._labelled``) whose attributes
add the run's (``model``, ``steps``, ``scenarios``, ``seed``, ``save_every``,
``created``; lists as JSON). Read them with
``xarray.open_dataset(path, engine="h5netcdf")`` or ``xarray.open_zarr(path)``.

>>> import os, tempfile
>>> from procela_jax.cli import main, load_results
>>> out = os.path.join(tempfile.mkdtemp(), "sir.npz")
>>> main(["run", "procela_jax.demos.sir", "--steps", "20", "--scenarios", "2",
...       "--save-every", "5", "--out", out, "--no-progress"])  # doctest: +ELLIPSIS
procela-jax: ...
0
>>> r = load_results(out)
>>> r["value"].shape, r["step"].tolist(), r["attrs"]["scenarios"]
((2, 4, 3), [5, 10, 15, 20], 2)
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import inspect
import json
import os
import sys
import time

import jax
import numpy as np

from ._executive import Executive
from ._save import Save

FORMAT = "procela_jax.run"
FORMAT_VERSION = 1


class CliError(Exception):
    """A problem to report on one line (``code`` is the exit status).

    >>> from procela_jax.cli import CliError
    >>> e = CliError("--steps must be a positive integer, got 0", code=2)
    >>> str(e), e.code
    ('--steps must be a positive integer, got 0', 2)
    """

    def __init__(self, message: str, code: int = 1):
        super().__init__(message)
        self.code = code


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, no usage block
        raise CliError(f"{message} (see '{self.prog} --help')", code=2)


def _int_arg(flag: str, minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
        if value < minimum:
            kind = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise argparse.ArgumentTypeError(f"must be {kind}, got {value}")
        return value

    parse.__name__ = flag
    return parse


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="procela-jax", description="procela_jax command line")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="run a built-in demo and write its plot into the working folder")
    demo.add_argument("name", nargs="?", default="sir", help="sir (default) or amr")
    demo.add_argument("--seed", type=_int_arg("--seed", 0), default=None,
                      help="seed of the run, jax.random.key(seed); amr: the first of its seeds (default: 0)")
    demo.add_argument("--steps", type=_int_arg("--steps", 1), default=None,
                      help="steps to run (default: 365 for sir, 160 for amr)")
    demo.add_argument("--out", default=None, help="plot file (default: <demo>_demo.png)")
    demo.add_argument("--force", action="store_true", help="overwrite an existing plot file")

    run = sub.add_parser("run", help="run a model's scenarios and write results (.npz) and a plot (.png)")
    run.add_argument("model", help="a Python file or a module name defining `executive`, `make_executive()` "
                                   "or a single Executive under any name")
    run.add_argument("--steps", type=_int_arg("--steps", 1), default=100,
                     help="steps to run in every scenario (default: %(default)s)")
    run.add_argument("--scenarios", type=_int_arg("--scenarios", 1), default=1,
                     help="number of scenarios, run batched with pj.sweep (default: %(default)s)")
    run.add_argument("--seed", type=_int_arg("--seed", 0), default=0,
                     help="seed of the first scenario; scenario k runs from jax.random.key(seed + k) "
                          "(default: %(default)s)")
    run.add_argument("--save-every", type=_int_arg("--save-every", 1), default=1,
                     help="keep the values of every k-th step in the results; the final values are "
                          "always kept (default: %(default)s, every step)")
    run.add_argument("--out", default=None,
                     help="results: .npz (NumPy), .nc (NetCDF) or .zarr (Zarr) (default: <model>.npz); "
                          "the plot goes beside it with suffix .png")
    run.add_argument("--force", action="store_true", help="overwrite existing output files")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")

    bench = sub.add_parser("bench", help="print a quick benchmark summary")
    bench.add_argument("--steps", type=_int_arg("--steps", 1), default=365)
    bench.add_argument("--scenarios", type=_int_arg("--scenarios", 1), default=256)
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 on success).

    >>> from procela_jax.cli import main
    >>> main(["run", "no_such_model.py"])
    1
    """
    try:
        args = _parser().parse_args(argv)
        if args.command == "demo":
            return _demo(args)
        if args.command == "run":
            return _run(args)
        return _bench(args)
    except CliError as e:
        _fail(str(e))
        return e.code
    except KeyboardInterrupt:
        _fail("interrupted")
        return 130
    except Exception as e:  # noqa: BLE001 - the contract: one line, never a traceback
        _fail(f"{type(e).__name__}: {e}")
        return 1


def _fail(message: str) -> None:
    print(f"procela-jax: error: {' '.join(str(message).split())}", file=sys.stderr)


# ---- demo ------------------------------------------------------------------------
def _demo(args) -> int:
    if args.name not in ("sir", "amr"):
        raise CliError(f"unknown demo {args.name!r}; demos are 'sir' and 'amr'", code=2)
    out = args.out if args.out is not None else f"{args.name}_demo.png"
    _check_outputs([out], force=args.force)
    if args.name == "sir":
        from .demos import sir

        sir.main(out=out, seed=0 if args.seed is None else args.seed, steps=365 if args.steps is None else args.steps)
        return 0
    if args.name == "amr":
        if importlib.util.find_spec("procela_jax.demos.amr") is None:
            raise CliError("the AMR demo is not installed (procela_jax.demos.amr is missing)")
        amr = importlib.import_module("procela_jax.demos.amr")
        if not callable(getattr(amr, "main", None)):
            raise CliError("the AMR demo is not installed (procela_jax.demos.amr defines no main())")
        given = {"out": out, "seed": args.seed, "steps": args.steps}
        accepted = inspect.signature(amr.main).parameters
        kwargs = {k: v for k, v in given.items() if v is not None and k in accepted}
        ignored = [f"--{k}" for k, v in given.items() if v is not None and k not in accepted]
        if ignored:
            raise CliError(f"the AMR demo does not take {', '.join(ignored)}")
        amr.main(**kwargs)
        return 0


# ---- run -------------------------------------------------------------------------
def load_model(spec: str):
    """The executive defined by a model file or module; returns ``(executive, label)``.

    The model defines ``executive`` (an :class:`Executive`) or ``make_executive()``
    returning one, or else exactly one Executive under another name (the
    README's ``ex``). Raises :class:`CliError` naming what is wrong.

    >>> from procela_jax.cli import load_model
    >>> ex, label = load_model("procela_jax.demos.sir")
    >>> label, ex.layout.variables
    ('procela_jax.demos.sir', ('S', 'I', 'R'))
    """
    looks_like_file = spec.endswith(".py") or os.sep in spec or (os.altsep or os.sep) in spec
    if os.path.isfile(spec):
        label = os.path.abspath(spec)
        stem = os.path.splitext(os.path.basename(spec))[0]
        mod_spec = importlib.util.spec_from_file_location(f"_procela_jax_model_{stem}", spec)
        if mod_spec is None or mod_spec.loader is None:
            raise CliError(f"cannot load model file {spec} (is it a Python file?)")
        module = importlib.util.module_from_spec(mod_spec)
        try:
            mod_spec.loader.exec_module(module)
        except Exception as e:  # noqa: BLE001
            raise CliError(f"model file {spec} failed to load: {type(e).__name__}: {e}") from None
    elif looks_like_file or os.path.isdir(spec):
        raise CliError(f"model file {spec} not found" if not os.path.isdir(spec) else f"model {spec} is a folder, not a Python file")
    else:
        label = spec
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as e:
            if e.name and spec.startswith(e.name):
                raise CliError(f"no model file or module named {spec!r}") from None
            raise CliError(f"model module {spec} failed to import: ModuleNotFoundError: {e}") from None
        except Exception as e:  # noqa: BLE001
            raise CliError(f"model module {spec} failed to import: {type(e).__name__}: {e}") from None
    if hasattr(module, "executive"):
        ex = module.executive
        where = f"`executive` in {spec}"
    elif callable(getattr(module, "make_executive", None)):
        try:
            ex = module.make_executive()
        except Exception as e:  # noqa: BLE001
            raise CliError(f"make_executive() in {spec} raised {type(e).__name__}: {e}") from None
        where = f"make_executive() in {spec}"
    else:
        found = [n for n, v in vars(module).items() if isinstance(v, Executive) and not n.startswith("_")]
        if len(found) > 1:
            raise CliError(
                f"{spec} defines {len(found)} executives ({', '.join(found)}) and no `executive`; "
                "name the one to run `executive` (or define make_executive())")
        if not found:
            raise CliError(f"{spec} defines no `executive` and no `make_executive()`, nor any other Executive")
        ex = getattr(module, found[0])
        where = f"`{found[0]}` in {spec}"
    if not isinstance(ex, Executive):
        raise CliError(f"{where} gave a {type(ex).__name__} object, not a procela_jax.Executive")
    return ex, label


def _outputs(args, label):
    stem = os.path.splitext(os.path.basename(label))[0] if label.endswith(".py") else label.rsplit(".", 1)[-1]
    out = args.out if args.out is not None else f"{stem}.npz"
    suffix = os.path.splitext(out.rstrip("/\\"))[1]
    if suffix not in (".npz", ".nc", ".zarr"):
        raise CliError(f"--out must name a .npz, .nc (NetCDF) or .zarr (Zarr) output, got {out!r}", code=2)
    out = out.rstrip("/\\")
    png = out[: -len(suffix)] + ".png"
    _check_outputs([out, png], force=args.force)
    return out, png


def _check_outputs(paths, *, force: bool) -> None:
    """Refuse, before anything runs, an output that is a directory, lies in a missing
    folder, or exists (unless ``force``)."""
    for path in paths:
        if os.path.isdir(path) and not (force and path.endswith(".zarr")):  # a Zarr store is a folder
            raise CliError(f"{path} is a directory, not a file; choose another --out")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise CliError(f"the folder of --out does not exist: {folder}")
        if not force and os.path.exists(path):
            raise CliError(f"{path} exists; pass --force to overwrite it")


def simulate(ex, seeds, steps: int, save_every: int = 1, *, progress: bool = False):
    """Run one scenario per seed (``jax.random.key(seed)``) with :func:`procela_jax.sweep`.

    Returns the :class:`SweepResult`: ``res.trajectory.data["value"]`` and
    ``["confidence"]`` of shape ``(scenarios, n_saved, n_variables)``,
    ``res.steps``, ``res.final`` and the halting record. The scenarios run
    batched over every local device, in blocks of steps (the progress bar
    advances after each).

    >>> import procela_jax as pj
    >>> from procela_jax.cli import simulate
    >>> res = simulate(pj.demos.sir.make_executive(), [0, 1, 2], steps=10, save_every=5)
    >>> res.trajectory.data["value"].shape, res.steps.tolist()
    ((3, 2, 3), [5, 10])
    """
    from ._sweep import sweep

    save = Save(every=save_every, fields=("value", "confidence"))
    return sweep(ex, steps, seeds=np.asarray(list(seeds), np.int64), save=save, progress=progress)


def _run(args) -> int:
    ex, label = load_model(args.model)
    if args.save_every > args.steps:
        raise CliError(f"--save-every ({args.save_every}) must not exceed --steps ({args.steps})", code=2)
    out, png = _outputs(args, label)
    from . import __version__

    seeds = list(range(args.seed, args.seed + args.scenarios))
    if seeds[-1] >= 2**32:
        raise CliError(f"seeds must be below 2**32; --seed {args.seed} with {args.scenarios} scenarios exceeds it", code=2)
    t0 = time.perf_counter()
    res = simulate(ex, seeds, args.steps, args.save_every, progress=not args.no_progress)
    elapsed = time.perf_counter() - t0
    names = list(ex.layout.variables)
    n_var = len(names)
    data = res.trajectory.data if res.trajectory is not None else {}
    empty = np.zeros((args.scenarios, 0, n_var), np.dtype(ex.dtype))
    attrs = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model": label,
        "procela_jax_version": __version__,
        "jax_version": jax.__version__,
        "steps": args.steps,
        "scenarios": args.scenarios,
        "seed": args.seed,
        "save_every": args.save_every,
        "dims": {
            "value": ["scenario", "step", "variable"],
            "confidence": ["scenario", "step", "variable"],
            "step": ["step"],
            "seed": ["scenario"],
            "variable": ["variable"],
            "final_value": ["scenario", "variable"],
            "final_confidence": ["scenario", "variable"],
            "halted": ["scenario"],
            "halted_at": ["scenario"],
            "halted_by": ["scenario"],
        },
        "mechanisms": list(ex.layout.mechanisms),
        "invariants": list(ex.layout.invariants),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    results = {
        "value": np.asarray(data.get("value", empty)),
        "confidence": np.asarray(data.get("confidence", empty)),
        "step": np.asarray(res.steps, np.int64),
        "seed": np.asarray(seeds, np.int64),
        "variable": np.asarray(names, dtype=str),
        "final_value": np.asarray(res.final.values),
        "final_confidence": np.asarray(res.final.confidences),
        "halted": np.asarray(res.halted, bool),
        "halted_at": np.asarray(res.halted_at, np.int32),
        "halted_by": np.asarray(res.halted_by, np.int32),
        "attrs": np.asarray(json.dumps(attrs)),
    }
    _write_results(out, results, res, ex, attrs, force=args.force)
    _plot_results(results, png, label)
    halted = int(results["halted"].sum())
    print(
        f"procela-jax: {_count(args.scenarios, 'scenario')} x {_count(args.steps, 'step')} of {label} in "
        f"{elapsed:.2f} s; wrote {out} ({_count(len(results['step']), 'saved step')} x "
        f"{_count(n_var, 'variable')}) and {png}"
        + (f"; {_count(halted, 'scenario')} halted by a FATAL invariant" if halted else "")
    )
    return 0


def _count(n: int, noun: str) -> str:
    """``1 variable``, ``2 variables``."""
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _write_results(path: str, arrays: dict, res, ex, attrs: dict, *, force: bool) -> None:
    """``.npz``: ``arrays``; ``.nc`` / ``.zarr``: the sweep as labelled data
    (``res.to_xarray()``, schema in ``procela_jax._labelled``) with the run's attributes."""
    if path.endswith(".npz"):
        return _write_npz(path, arrays, force=force)
    from ._labelled import write

    ds = res.to_xarray(ex)
    ds.attrs.update({k: (json.dumps(v) if isinstance(v, (list, dict)) else v)
                     for k, v in attrs.items() if k not in ("dims", "format", "format_version")})
    try:
        write(ds, path, overwrite=force)
    except FileExistsError:
        raise CliError(f"{path} exists; pass --force to overwrite it") from None


def _write_npz(path: str, arrays: dict, *, force: bool) -> None:
    """Write atomically; refuse to replace an existing file unless ``force``."""
    from ._checkpoint import atomic_write

    try:
        atomic_write(path, lambda f: np.savez(f, **arrays), overwrite=force)
    except FileExistsError:
        raise CliError(f"{path} exists; pass --force to overwrite it") from None


def load_results(path) -> dict:
    """Read a ``procela-jax run`` results file: its arrays and the parsed ``attrs``.

    >>> import os, tempfile, numpy as np
    >>> from procela_jax.cli import load_results
    >>> path = os.path.join(tempfile.mkdtemp(), "r.npz")
    >>> np.savez(path, value=np.zeros((1, 2, 1)), attrs=np.asarray('{"format": "procela_jax.run"}'))
    >>> load_results(path)["attrs"]["format"]
    'procela_jax.run'
    """
    with np.load(path, allow_pickle=False) as f:
        out = {k: f[k] for k in f.files}
    if "attrs" in out:
        out["attrs"] = json.loads(str(out["attrs"]))
    return out


def _plot_results(results: dict, png: str, label: str) -> None:
    import matplotlib

    if "matplotlib.pyplot" not in sys.modules:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from . import plot

    names = [str(n) for n in results["variable"]]
    shown = names[:8]
    steps = results["step"]
    value, conf = results["value"], results["confidence"]
    fig, axes = plt.subplots(len(shown), 1, figsize=(8, 2.4 * len(shown) + 0.6), sharex=True, squeeze=False)
    for j, (name, ax) in enumerate(zip(shown, axes[:, 0])):
        if value.shape[0] > 1:  # one legend per figure: the bands mean the same in every panel
            plot.fan(value[:, :, j], steps, ax=ax, legend=j == 0)
        else:
            v, c = value[0, :, j], conf[0, :, j]
            ax.plot(steps, v)
            ax.fill_between(steps, v - (1 - c) * np.abs(v), v + (1 - c) * np.abs(v), alpha=0.25, linewidth=0)
        ax.set_title("")
        ax.set_xlabel("")
        ax.set_ylabel(name)
    axes[-1, 0].set_xlabel("step")
    more = f" (first 8 of {len(names)} variables)" if len(names) > len(shown) else ""
    what = f"median, 50% and 90% bands over {value.shape[0]} scenarios" if value.shape[0] > 1 else "value ± (1 - confidence)·|value|"
    fig.suptitle(f"{os.path.basename(label)}: {what}{more}")
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


# ---- bench -----------------------------------------------------------------------
def _bench(args) -> int:
    from ._bench import format_benchmark, sir_benchmark

    print(format_benchmark(sir_benchmark(steps=args.steps, scenarios=args.scenarios, repeats=3)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
