"""The sweep's memory and block plan: what one scenario keeps, how many rows fit
on a device, how the steps split into blocks."""

from __future__ import annotations

import dataclasses
import math
import os

import jax
import numpy as np

from ._distributed import Placement, scenario_mesh
from ._errors import ModelError
from ._plan import ROW_TILE
from ._save import Save

#: Statistics ``summaries=`` understands by name (numbers in [0, 1] are quantiles).
SUMMARY_STATS = ("mean", "std", "min", "max")
#: ``summaries=True`` keeps these.
DEFAULT_SUMMARIES = ("mean", "std", "min", "max", 0.05, 0.25, 0.5, 0.75, 0.95)

#: ``save=``'s default (a sentinel: ``None`` means keeping final states only).
_DEFAULT = object()


def _save_spec(ex, save, save_every, variables, fields) -> Save | None:
    short = {k: v for k, v in (("save_every", save_every), ("variables", variables), ("fields", fields))
             if v is not None}
    if save is _DEFAULT:
        kw = {}
        if save_every is not None:
            kw["every"] = save_every
        if variables is not None:
            kw["variables"] = (variables,) if isinstance(variables, str) else tuple(variables)
        if fields is not None:
            kw["fields"] = fields
        save = Save(**kw)
    elif short:
        raise ModelError(f"sweep: give save=Save(...) or the shorthands {sorted(short)}, not both")
    if save is not None:
        if not isinstance(save, Save):
            raise ModelError(f"sweep: save must be a procela_jax.Save or None, got {save!r}")
        for name in save.variables or ():
            if name not in ex.layout.var_index:
                raise ModelError(f"sweep: save names unknown variable {name!r}; the variables are "
                                 f"{list(ex.layout.variables)}")
        if save.audit and not ex.audit:
            raise ModelError("sweep: Save(audit=True) needs an executive built with audit=True")
    return save


def _stat_key(stat) -> str:
    """The key of a statistic in ``res.summaries``: its name, or ``"q<quantile>"``."""
    if isinstance(stat, str):
        return stat
    return f"q{float(stat):g}"


def _summary_spec(summaries, save):
    if summaries is None or summaries is False:
        return None
    if summaries is True:
        summaries = DEFAULT_SUMMARIES
    if isinstance(summaries, (str, float, int)):
        summaries = (summaries,)
    out = []
    for s in summaries:
        if isinstance(s, str):
            if s not in SUMMARY_STATS:
                raise ModelError(f"sweep: unknown summary {s!r}; use {SUMMARY_STATS} or quantiles in [0, 1]")
            out.append(s)
        elif isinstance(s, (int, float, np.floating, np.integer)) and not isinstance(s, bool) and 0 <= s <= 1:
            out.append(float(s))
        else:
            raise ModelError(f"sweep: summary {s!r} is neither one of {SUMMARY_STATS} nor a quantile in [0, 1]")
    if not out or len(set(out)) != len(out):
        raise ModelError(f"sweep: summaries must list distinct statistics, got {tuple(summaries)}")
    if save is None:
        raise ModelError("sweep: summaries= reduce what save= keeps; save=None keeps nothing")
    if save.fn is not None or save.audit:
        raise ModelError("sweep: summaries= reduce saved fields only; Save(fn=...) and Save(audit=True) "
                         "need per-scenario trajectories (summaries=None)")
    return tuple(out)


# ---- sizes, chunks and blocks -------------------------------------------------
def _tree_bytes(tree) -> int:
    total = 0
    for x in jax.tree.leaves(tree):
        dtype = x.dtype
        if jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
            total += math.prod(x.shape) * 8
        else:
            total += math.prod(x.shape) * np.dtype(dtype).itemsize
    return total


def _save_bytes(ex, save) -> int:
    """Bytes one scenario keeps per saved step (fields, the step, ``Save.fn`` output)."""
    if save is None:
        return 0
    names = save.variables if save.variables is not None else ex.layout.variables
    item = np.dtype(ex.dtype).itemsize
    total = len(names) * len(save.fields) * item + 4
    if save.fn is not None:
        total += _tree_bytes(jax.eval_shape(save.fn, ex.abstract_state()))
    if save.audit:
        width = len(ex.tables.slot_prop[0]) if ex.layout.variables else 0
        total += len(names) * (width * (3 * item + 1) + 4)
    return total


def _available_host_bytes() -> int:
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def _device_budget(mesh) -> int:
    """Bytes one device may give a chunk: half its free memory, or a quarter of the
    host's free memory (at most 1 GiB) shared by the local devices when it reports
    none (CPU)."""
    dev = mesh.devices.flat[0]
    try:
        ms = dev.memory_stats() or {}
    except Exception:  # noqa: BLE001 - some backends do not implement it
        ms = {}
    if "bytes_limit" in ms:
        return max(1 << 20, (ms["bytes_limit"] - ms.get("bytes_in_use", 0)) // 2)
    share = min(_available_host_bytes() // 4, 1 << 30)  # bounded, so peaks do not track free memory
    return max(1 << 20, share // max(1, jax.local_device_count()))


_SIZES: dict = {}


def _sizes(ex, save) -> tuple[int, int]:
    """(bytes of one scenario's state, bytes it keeps per saved step), cached per model."""
    leaves, treedef = jax.tree.flatten(ex)
    key = (treedef, tuple((getattr(x, "shape", None), str(getattr(x, "dtype", type(x)))) for x in leaves), save)
    try:
        hit = _SIZES.get(key)
    except TypeError:  # something unhashable in the static structure: no cache
        return _tree_bytes(ex.abstract_state()), _save_bytes(ex, save)
    if hit is None:
        if len(_SIZES) > 64:
            _SIZES.clear()
        hit = _SIZES[key] = (_tree_bytes(ex.abstract_state()), _save_bytes(ex, save))
    return hit


def _placement(ex, spec, steps, save, stats, chunk_size, devices, progress):
    mesh = scenario_mesh(devices)
    n_dev = mesh.devices.size
    n = spec.n
    state_bytes, per_save = _sizes(ex, save)
    every = save.every if save is not None else 1
    n_saves = steps // every if save is not None else 0
    blocks_hint = 10 if progress else 1
    if chunk_size is not None:
        if not isinstance(chunk_size, (int, np.integer)) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ModelError(f"sweep: chunk_size must be a positive int, got {chunk_size!r}")
        per_device = -(-int(chunk_size) // n_dev)  # fixed, whatever n: one compile per chunk_size
    else:
        budget = _device_budget(mesh)
        block = max(1, -(-n_saves // blocks_hint)) if n_saves else 0
        if stats is None:
            need = 2 * (2 * state_bytes + block * per_save)
        else:
            need = 2 * state_bytes
        per_device = max(1, min(-(-n // n_dev), budget // max(1, need)))
    per_device = -(-per_device // ROW_TILE) * ROW_TILE
    placement = Placement(mesh=mesh, per_device=per_device)
    # host memory: refuse early what cannot fit
    n_local = n if jax.process_count() == 1 else len(placement.local_rows(n))
    if stats is None:
        host = n_local * (n_saves * per_save + state_bytes)
        avail = _available_host_bytes()
        if host > avail:
            raise ModelError(
                f"sweep: keeping {n_local} scenarios x {n_saves} saved steps needs about {host / 2**30:.1f} GiB "
                f"of host memory, more than the {avail / 2**30:.1f} GiB available; save fewer variables or fields "
                f"(save=Save(every=..., variables=..., fields=...)), keep summaries across scenarios "
                f"(summaries=...), or sweep fewer scenarios at a time"
            )
    return placement, dict(state_bytes=state_bytes, bytes_per_saved_step=per_save), blocks_hint


@dataclasses.dataclass(frozen=True)
class _BlockPlan:
    """Host-side blocks of a run: ``(steps, save or None)`` each, saved blocks first."""

    blocks: tuple[tuple[int, Save | None], ...]
    every: int

    @property
    def n_saves(self) -> int:
        return sum(s // save.every for s, save in self.blocks if save is not None)


def _block_plan(steps, save, block_steps, n_blocks_hint, cap=None) -> _BlockPlan:
    every = save.every if save is not None else 1
    if block_steps is not None:
        if (not isinstance(block_steps, (int, np.integer)) or isinstance(block_steps, bool)
                or block_steps < 1 or block_steps % every):
            raise ModelError(f"sweep: block_steps must be a positive multiple of save.every={every}, "
                             f"got {block_steps!r}")
    n_units, tail = divmod(steps, every)  # units: saved steps (or single steps without save)
    if block_steps is not None:
        per = int(block_steps) // every
    else:
        target = max(1, -(-n_units // n_blocks_hint))
        per = _nice_divisor(n_units, target if cap is None else min(target, cap))
    full, rest = divmod(n_units, per)
    units = (per,) * full + ((rest,) if rest else ())
    blocks = tuple((u * every, save) for u in units)
    if tail:
        blocks += ((tail, None),)
    return _BlockPlan(blocks=blocks, every=every)


def _nice_divisor(total: int, target: int) -> int:
    """A block length near ``target`` that divides ``total`` when one is close (one compile)."""
    if total <= 0:
        return max(1, target)
    for d in range(target, max(1, target // 2) - 1, -1):
        if total % d == 0:
            return d
    for d in range(target + 1, min(total, 2 * target) + 1):
        if total % d == 0:
            return d
    return target

