"""Checkpoints on disk: a state saved with a header that guards against misuse.

File layout: a magic line, one JSON header line (format version, model
fingerprint, leaf shapes, payload size and SHA-256), then the leaves serialised
by :func:`equinox.tree_serialise_leaves`. Writes go to a temporary file in the
same folder and are moved into place atomically; an existing file is never
replaced unless ``overwrite=True``. A temporary is named after its target, host
and process (``.world.ckpt.tmp-<host>-<pid>-<random>``); one left behind by a
process killed while saving is removed by the next successful save of the same
target.
"""

from __future__ import annotations

import hashlib
import io
import errno
import glob
import json
import os
import secrets
import socket

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from ._errors import CheckpointError

MAGIC = b"PROCELA_JAX_CHECKPOINT\n"
FORMAT_VERSION = 2
#: State fields added by each format version after the first, in field order (at
#: the end of the state); ``_upgrade`` fills them in for an older file.
_ADDED = {2: ("joined", "nonfinite_resolved", "nonfinite_first_step")}
# this host's name as it appears in temporary file names (no separators)
_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"


def _with_key_data(state):
    return eqx.tree_at(lambda s: s.key, state, jax.random.key_data(state.key))


def _fingerprint(state_with_key_data, version: int = FORMAT_VERSION) -> str:
    """The model's structure, as a file of format ``version`` recorded it (the
    state's tree less the fields added by later versions, which are its last)."""
    leaves, treedef = jax.tree.flatten(state_with_key_data)
    layout = state_with_key_data.layout
    tree = str(treedef).replace(repr(layout), "<layout>")
    later = sum(len(f) for v, f in _ADDED.items() if v > version)
    if later:
        tail = ", *" * later + "]))"
        if not tree.endswith(tail):  # not a state of this engine's layout: matches no file
            return ""
        tree = tree[: -len(tail)] + "]))"
        leaves = leaves[:-later]
    desc = repr(
        (
            "layout",
            layout.variables,
            layout.mechanisms,
            layout.invariants,
            layout.policies,
            tuple(repr(d) for d in layout.domains),
            layout.out_of_domain,
            "treedef",
            tree,
            "dtypes",
            tuple(str(jnp.result_type(x)) for x in leaves),
        )
    )
    return hashlib.sha256(desc.encode()).hexdigest()


def _temporary(path: str) -> tuple[int, str]:
    """Create an empty temporary beside ``path``, named after it, with the mode any new
    file gets (``0o666`` less the umask; ``tempfile.mkstemp`` would give ``0o600``)."""
    folder, name = os.path.split(os.path.abspath(path))
    while True:
        tmp = os.path.join(folder, f".{name}.tmp-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as e:  # EPERM: it exists, owned by someone else
        return e.errno != errno.ESRCH
    return True


def _remove_stale_temporaries(path: str) -> None:
    """Remove temporaries of ``path`` left by processes of this host that no longer run."""
    folder, name = os.path.split(os.path.abspath(path))
    prefix = f".{name}.tmp-{_HOST}-"
    for tmp in glob.glob(os.path.join(glob.escape(folder), glob.escape(prefix) + "*")):
        pid = os.path.basename(tmp)[len(prefix):].split("-")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            try:
                os.unlink(tmp)
            except OSError:
                pass


def atomic_write(path: str, write, *, overwrite: bool) -> None:
    """Write ``write(file)`` to a temporary file beside ``path``, then move it into
    place atomically; raise ``FileExistsError`` rather than replace an existing
    file unless ``overwrite``. The file gets the default mode (``0o644`` under
    umask 022); temporaries of ``path`` left by killed processes are removed."""
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give a file name")
    fd, tmp = _temporary(path)
    exists = f"{path} exists; pass overwrite=True to replace it"
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and refuses to replace an existing file
            except FileExistsError:
                raise FileExistsError(exists) from None
            except OSError:
                if os.path.exists(path):
                    raise FileExistsError(exists) from None
                os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _remove_stale_temporaries(path)


def save_checkpoint(path, state, *, overwrite: bool = False) -> str:
    """Save a state (single or batched) to ``path``; returns the path.

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is False.

    >>> import jax, os, tempfile, procela_jax as pj
    >>> ex = pj.Executive(variables=[pj.Variable("X", init=1.0)], mechanisms=[])
    >>> path = os.path.join(tempfile.mkdtemp(), "world.ckpt")
    >>> _ = pj.save_checkpoint(path, ex.init(jax.random.key(0)))
    >>> float(pj.load_checkpoint(path, ex).value("X"))
    1.0
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path} is a directory; give a file name")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    plain = _with_key_data(state)
    buf = io.BytesIO()
    eqx.tree_serialise_leaves(buf, plain)
    payload = buf.getvalue()
    leaves = jax.tree.leaves(plain)
    header = {
        "format_version": FORMAT_VERSION,
        "fingerprint": _fingerprint(plain),
        "shapes": [list(np.shape(x)) for x in leaves],
        "key_impl": str(jax.random.key_impl(state.key)),
        "variables": list(state.layout.variables),
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
    }

    def write(f):
        f.write(MAGIC)
        f.write(json.dumps(header).encode() + b"\n")
        f.write(payload)

    atomic_write(path, write, overwrite=overwrite)
    return path


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_str_list(x) -> bool:
    return isinstance(x, list) and all(isinstance(v, str) for v in x)


def _is_shapes(x) -> bool:
    return isinstance(x, list) and all(
        isinstance(s, list) and all(_is_int(d) and d >= 0 for d in s) for s in x)


# field: (required, test, what it must be)
_HEADER = {
    "format_version": (True, _is_int, "an int"),
    "fingerprint": (True, lambda x: isinstance(x, str), "a string"),
    "shapes": (True, _is_shapes, "a list of shapes (lists of non-negative ints)"),
    "key_impl": (False, lambda x: x is None or isinstance(x, str), "a string"),
    "variables": (False, _is_str_list, "a list of strings"),
    "payload_bytes": (True, lambda x: _is_int(x) and x >= 0, "a non-negative int"),
    "payload_sha256": (True, lambda x: isinstance(x, str), "a string"),
}


def _check_header(path: str, header: dict, fields) -> None:
    for field in fields:
        required, test, what = _HEADER[field]
        if field not in header:
            if required:
                raise CheckpointError(
                    f"{path}: header field {field!r} is missing; the file was not written by "
                    "save_checkpoint or its header was damaged")
        elif not test(header[field]):
            raise CheckpointError(
                f"{path}: header field {field!r} must be {what}, got {header[field]!r:.80}; the file "
                "was not written by save_checkpoint or its header was damaged")


def load_checkpoint(path, executive):
    """Load a state saved by :func:`save_checkpoint` for ``executive``'s model.

    Raises :class:`CheckpointError` if the file is not a checkpoint, is truncated
    or corrupt, or was saved from a model of another structure.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file; give the file's path")
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"no checkpoint at {path}") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read ({type(e).__name__}: {e.strerror or e})") from e
    if not raw.startswith(MAGIC):
        raise CheckpointError(f"{path} is not a procela_jax checkpoint (bad magic line)")
    rest = raw[len(MAGIC):]
    line, sep, payload = rest.partition(b"\n")
    try:
        header = json.loads(line)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{path}: the header is corrupt") from None
    if not sep or not isinstance(header, dict):
        raise CheckpointError(f"{path}: the header is corrupt")
    _check_header(path, header, ["format_version"])
    version = header["format_version"]
    if not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is not supported (this engine reads "
            f"versions 1 to {FORMAT_VERSION}; a newer procela_jax wrote it)"
        )
    _check_header(path, header, [f for f in _HEADER if f != "format_version"])
    if len(payload) != header.get("payload_bytes"):
        raise CheckpointError(
            f"{path} is truncated or padded: {len(payload)} payload bytes, expected {header.get('payload_bytes')}"
        )
    if hashlib.sha256(payload).hexdigest() != header.get("payload_sha256"):
        raise CheckpointError(f"{path} is corrupt: its payload checksum does not match")
    template = _with_key_data(executive.init(jax.random.key(0)))
    if header.get("fingerprint") != _fingerprint(template, version):
        raise CheckpointError(
            f"{path} was saved from a different model (variables {header.get('variables')}); "
            f"this executive has variables {list(executive.layout.variables)} and another "
            "structure. Load it with the executive that saved it."
        )
    older = _older(template, version)
    leaves, treedef = jax.tree.flatten(older)
    shapes = header["shapes"]
    if len(shapes) != len(leaves):
        raise CheckpointError(f"{path}: leaf count does not match the model")
    batch = None
    like_leaves = []
    for shape, leaf in zip(shapes, leaves):
        base = list(np.shape(leaf))
        prefix = shape[: len(shape) - len(base)] if len(shape) >= len(base) else None
        if prefix is None or shape[len(prefix):] != base or (batch is not None and prefix != batch):
            raise CheckpointError(f"{path}: leaf shapes do not match the model")
        batch = prefix
        like_leaves.append(jnp.zeros(shape, jnp.result_type(leaf)))
    like = jax.tree.unflatten(treedef, like_leaves)
    try:
        loaded = eqx.tree_deserialise_leaves(io.BytesIO(payload), like)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path}: cannot read the leaves ({type(e).__name__}: {e})") from None
    impl = header.get("key_impl")
    try:
        key = jax.random.wrap_key_data(loaded.key, impl=impl) if impl else jax.random.wrap_key_data(loaded.key)
    except Exception:  # noqa: BLE001
        key = jax.random.wrap_key_data(loaded.key)
    return _upgrade(executive, eqx.tree_at(lambda s: s.key, loaded, key), version)


class _Dropped:
    """Stands for a state field a file's format does not have (a pytree with no leaves)."""


jax.tree_util.register_pytree_node(_Dropped, lambda d: ((), None), lambda _, __: _Dropped())


def _older(state, version: int):
    """``state`` with the fields added after ``version`` emptied (no leaves)."""
    added = [f for v, fields in _ADDED.items() if v > version for f in fields]
    if not added:
        return state
    return eqx.tree_at(lambda s: [getattr(s, f) for f in added], state, [_Dropped()] * len(added))


def _upgrade(executive, state, version: int):
    """Fill the fields a format-``version`` file lacks: format 1 committed every
    written variable from the start, so its written variables are joined; the
    non-finite resolution counters start at zero."""
    if version >= 2:
        return state
    batch = state.values.shape[:-1]
    writable = jnp.broadcast_to(jnp.asarray(np.asarray(executive.layout.writable, bool)), state.values.shape)
    n = state.values.shape[-1]
    return eqx.tree_at(
        lambda s: (s.joined, s.nonfinite_resolved, s.nonfinite_first_step),
        state,
        (writable, jnp.zeros(batch + (n,), jnp.int32), jnp.full(batch + (n,), -1, jnp.int32)),
    )
