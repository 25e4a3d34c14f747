"""Placing scenarios on devices: a 1-D mesh, global arrays built from host rows, and back.

The same helpers serve one device, all local devices and several processes
started with :func:`jax.distributed.initialize`: every array a sweep feeds to
its compiled functions is a global ``jax.Array`` sharded over the scenario axis
of a mesh of *all* devices, each process supplying (and reading back) only the
rows that live on its own devices.
"""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "scenarios"


def scenario_mesh(devices=None) -> Mesh:
    """A 1-D mesh over ``devices`` (default: every device of every process), axis ``"scenarios"``.

    >>> import procela_jax as pj
    >>> pj.scenario_mesh().axis_names
    ('scenarios',)
    """
    if isinstance(devices, Mesh):
        if devices.axis_names != (AXIS,):
            raise ValueError(f"a sweep's mesh must be 1-D with axis {AXIS!r}, got axes {devices.axis_names}")
        return devices
    devices = list(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices must name at least one device")
    return Mesh(np.asarray(devices, dtype=object), (AXIS,))


@dataclasses.dataclass(frozen=True)
class Placement:
    """How chunks of scenarios map onto a mesh: ``per_device`` rows per device and chunk."""

    mesh: Mesh
    per_device: int

    @property
    def n_devices(self) -> int:
        return self.mesh.devices.size

    @property
    def chunk(self) -> int:
        """Rows of one (padded) chunk."""
        return self.per_device * self.n_devices

    @property
    def rows(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec(AXIS))

    @property
    def replicated(self) -> NamedSharding:
        return NamedSharding(self.mesh, PartitionSpec())

    def local_blocks(self) -> list[int]:
        """Chunk-relative first rows of the blocks held by this process's devices."""
        me = jax.process_index()
        return [i * self.per_device for i, d in enumerate(self.mesh.devices.flat) if d.process_index == me]

    def local_rows(self, n: int) -> np.ndarray:
        """The global rows (of ``n``) whose results this process holds, in order."""
        blocks = self.local_blocks()
        out = []
        for start in range(0, n, self.chunk):
            for b in blocks:
                lo, hi = start + b, min(start + b + self.per_device, n)
                if lo < hi:
                    out.append(np.arange(lo, hi))
        return np.concatenate(out) if out else np.zeros((0,), np.int64)

    def put_rows(self, host: np.ndarray) -> jax.Array:
        """A global array of one chunk (``host`` has ``chunk`` rows, identical on every process)."""
        return jax.make_array_from_callback(host.shape, self.rows, lambda idx: host[idx])

    def put_replicated(self, x):
        """A leaf placed whole on every device of the mesh (typed PRNG keys included)."""
        if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
            impl = jax.random.key_impl(x)
            data = self.put_replicated(jax.random.key_data(x))
            return jax.random.wrap_key_data(data, impl=impl)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, self.replicated, lambda idx: host[idx])


def addressable_rows(x: jax.Array):
    """``(first_row, numpy_block)`` for each distinct row block held by this process."""
    seen = set()
    for shard in x.addressable_shards:
        idx = shard.index[0] if shard.index else slice(None)
        start = idx.start or 0
        if start in seen:
            continue
        seen.add(start)
        yield start, np.asarray(shard.data)


def gather_rows(x: jax.Array) -> np.ndarray:
    """Every row of a global array, on every process (a collective when several run)."""
    if jax.process_count() == 1:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
