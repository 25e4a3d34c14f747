"""Checkpoints on disk: round trips, guards against the wrong model and corrupt
files, no silent overwrite, atomic writes."""

import os

import jax
import numpy as np
import pytest

import procela_jax as pj


def assert_same_state(a, b):
    la, ta = jax.tree.flatten(pj._checkpoint._with_key_data(a))
    lb, tb = jax.tree.flatten(pj._checkpoint._with_key_data(b))
    assert ta == tb
    for x, y in zip(la, lb):
        assert x.dtype == y.dtype
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_continues_bit_identically(sir, tmp_path):
    state, _ = sir.run(sir.init(jax.random.key(3)), 8)
    path = pj.save_checkpoint(tmp_path / "sir.ckpt", state)
    loaded = pj.load_checkpoint(path, sir)
    assert_same_state(state, loaded)
    assert jax.random.key_impl(loaded.key) == jax.random.key_impl(state.key)
    a, ta = sir.run(state, 4)
    b, tb = sir.run(loaded, 4)
    assert_same_state(a, b)
    np.testing.assert_array_equal(np.asarray(ta.data["value"]), np.asarray(tb.data["value"]))


def test_round_trip_of_a_vmapped_batch(sir, tmp_path):
    keys = jax.random.split(jax.random.key(0), 4)
    batch = jax.vmap(lambda k: sir.run(sir.init(k), 4, save=None)[0])(keys)
    path = pj.save_checkpoint(tmp_path / "batch.ckpt", batch)
    loaded = pj.load_checkpoint(path, sir)
    assert loaded.values.shape == (4, 3)
    assert_same_state(batch, loaded)


DATA = os.path.join(os.path.dirname(__file__), "data")


def test_files_written_by_an_earlier_version_still_load():
    # written on 2026-12-07 by the engine of that day (format 1): the SIR demo after
    # 7 steps from key 3, and two rows from the keys of split(key(4), 2)
    ex = pj.demos.sir.make_executive()
    loaded = pj.load_checkpoint(os.path.join(DATA, "sir_seed3_step7_format1.ckpt"), ex)
    assert_same_state(loaded, ex.run(ex.init(jax.random.key(3)), 7)[0])
    rows = pj.load_checkpoint(os.path.join(DATA, "sir_2rows_step7_format1.ckpt"), ex)
    keys = jax.random.split(jax.random.key(4), 2)
    assert_same_state(rows, jax.vmap(lambda k: ex.run(ex.init(k), 7)[0])(keys))
    # format 1 had no joined flags and no non-finite counters: written variables are
    # joined (format 1 committed them from the start), the counters zero
    assert np.asarray(rows.joined).tolist() == [[True] * 3] * 2
    assert int(np.asarray(rows.nonfinite_resolved).sum()) == 0
    assert np.asarray(rows.nonfinite_first_step).tolist() == [[-1] * 3] * 2
    other = pj.Executive(variables=[pj.Variable("S"), pj.Variable("I"), pj.Variable("R")], mechanisms=[])
    with pytest.raises(pj.CheckpointError, match="different model"):
        pj.load_checkpoint(os.path.join(DATA, "sir_seed3_step7_format1.ckpt"), other)


def test_a_file_of_a_newer_format_is_refused(sir, saved):
    path, raw = saved
    _rewrite_header(path, raw, format_version=pj._checkpoint.FORMAT_VERSION + 1)
    with pytest.raises(pj.CheckpointError, match="format version 3 is not supported.*newer procela_jax"):
        pj.load_checkpoint(path, sir)


def test_a_world_whose_variables_have_not_all_joined_round_trips(tmp_path):
    X, Y = pj.Variable("X", init=1.0), pj.Variable("Y", init=2.0)

    class Copy(pj.Mechanism):
        def transform(self, values, key):
            return {self.writes[0]: pj.VariableRecord(values[self.reads[0]] + 1.0, confidence=1.0)}

    ex = pj.Executive(variables=[X, Y], mechanisms=[Copy(reads=[X], writes=[X], name="a"),
                                                    Copy(reads=[X], writes=[Y], name="b", enabled=False)])
    state, _ = ex.run(ex.init(jax.random.key(0)), 3)
    assert np.asarray(state.joined).tolist() == [True, False]
    loaded = pj.load_checkpoint(pj.save_checkpoint(tmp_path / "w.ckpt", state), ex)
    assert_same_state(state, loaded)


def test_loading_into_another_model_fails(sir, tmp_path):
    path = pj.save_checkpoint(tmp_path / "sir.ckpt", sir.init(jax.random.key(0)))
    other = pj.Executive(variables=[pj.Variable("S"), pj.Variable("I"), pj.Variable("Q")], mechanisms=[])
    with pytest.raises(pj.CheckpointError, match="different model.*'S', 'I', 'R'.*'S', 'I', 'Q'"):
        pj.load_checkpoint(path, other)
    # same variables, one mechanism fewer: still another structure
    fewer = sir.remove_mechanism("seasonal")
    with pytest.raises(pj.CheckpointError, match="different model"):
        pj.load_checkpoint(path, fewer)
    assert issubclass(pj.CheckpointError, ValueError)


@pytest.fixture
def saved(sir, tmp_path):
    path = tmp_path / "sir.ckpt"
    pj.save_checkpoint(path, sir.run(sir.init(jax.random.key(1)), 4)[0])
    return path, path.read_bytes()


def test_truncated_file(sir, saved):
    path, raw = saved
    path.write_bytes(raw[:-7])
    with pytest.raises(pj.CheckpointError, match="truncated"):
        pj.load_checkpoint(path, sir)
    path.write_bytes(raw[:30])  # cut inside the header
    with pytest.raises(pj.CheckpointError, match="header is corrupt"):
        pj.load_checkpoint(path, sir)


@pytest.mark.parametrize("where", [0.0, 0.5, 1.0])
def test_flipped_byte_in_the_payload(sir, saved, where):
    path, raw = saved
    start = raw.index(b"\n", len(pj._checkpoint.MAGIC)) + 1  # the payload follows the header line
    i = start + int(where * (len(raw) - 1 - start))
    data = bytearray(raw)
    data[i] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(pj.CheckpointError, match="corrupt"):
        pj.load_checkpoint(path, sir)


def test_flipped_byte_in_the_header(sir, saved):
    path, raw = saved
    header_end = raw.index(b"\n", len(pj._checkpoint.MAGIC))
    text = raw[:header_end].decode()
    i = text.index('"fingerprint": "') + len('"fingerprint": "')
    flipped = text[:i] + ("0" if text[i] != "0" else "1") + text[i + 1:]
    path.write_bytes(flipped.encode() + raw[header_end:])
    with pytest.raises(pj.CheckpointError, match="different model"):
        pj.load_checkpoint(path, sir)


@pytest.mark.parametrize("content", [b"", b"hello world\n", b"PROCELA_JAX_CHECKPOINT\n{not json\n..."])
def test_not_a_checkpoint(sir, tmp_path, content):
    path = tmp_path / "junk.ckpt"
    path.write_bytes(content)
    with pytest.raises(pj.CheckpointError):
        pj.load_checkpoint(path, sir)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        pj.load_checkpoint(tmp_path / "missing.ckpt", sir)


def test_no_silent_overwrite(sir, tmp_path):
    path = tmp_path / "sir.ckpt"
    first = sir.init(jax.random.key(0))
    second = sir.run(first, 4)[0]
    pj.save_checkpoint(path, first)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pj.save_checkpoint(path, second)
    assert path.read_bytes() == before
    pj.save_checkpoint(path, second, overwrite=True)
    assert int(pj.load_checkpoint(path, sir).step) == 4
    assert os.listdir(tmp_path) == ["sir.ckpt"]  # no temporary file left behind


def test_a_failed_write_leaves_the_old_file_and_no_temporary(sir, tmp_path, monkeypatch):
    path = tmp_path / "sir.ckpt"
    pj.save_checkpoint(path, sir.init(jax.random.key(0)))
    before = path.read_bytes()

    def fail(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="disk full"):
        pj.save_checkpoint(path, sir.run(sir.init(jax.random.key(0)), 4)[0], overwrite=True)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["sir.ckpt"]


def _rewrite_header(path, raw, **fields):
    import json

    magic = pj._checkpoint.MAGIC
    end = raw.index(b"\n", len(magic))
    header = json.loads(raw[len(magic):end])
    header.update(fields)
    path.write_bytes(magic + json.dumps(header).encode() + raw[end:])


@pytest.mark.parametrize(
    "field, value",
    [("shapes", None), ("shapes", [["3"]] * 40), ("shapes", "[]"), ("shapes", [[-1]] * 40),
     ("payload_bytes", "12"), ("payload_bytes", None), ("payload_sha256", 5), ("fingerprint", None),
     ("format_version", "1"), ("key_impl", 3), ("variables", "S")],
)
def test_a_wrongly_typed_header_field_is_named(sir, saved, field, value):
    path, raw = saved
    _rewrite_header(path, raw, **{field: value})
    with pytest.raises(pj.CheckpointError, match=f"header field '{field}'"):
        pj.load_checkpoint(path, sir)


def test_a_missing_header_field_is_named(sir, saved):
    import json

    path, raw = saved
    magic = pj._checkpoint.MAGIC
    end = raw.index(b"\n", len(magic))
    header = json.loads(raw[len(magic):end])
    del header["shapes"]
    path.write_bytes(magic + json.dumps(header).encode() + raw[end:])
    with pytest.raises(pj.CheckpointError, match="header field 'shapes' is missing"):
        pj.load_checkpoint(path, sir)


def test_a_directory_or_an_unreadable_file_is_a_checkpoint_error(sir, tmp_path):
    with pytest.raises(pj.CheckpointError, match="is a directory"):
        pj.load_checkpoint(tmp_path, sir)
    for overwrite in (False, True):  # refused before anything is written, not "exists"
        with pytest.raises(IsADirectoryError, match="is a directory"):
            pj.save_checkpoint(tmp_path, sir.init(jax.random.key(0)), overwrite=overwrite)
    path = tmp_path / "locked.ckpt"
    path.write_bytes(b"x")
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):  # running as root: permissions do not apply
            pytest.skip("this user can read a file of mode 0")
        with pytest.raises(pj.CheckpointError, match="cannot be read.*Permission"):
            pj.load_checkpoint(path, sir)
    finally:
        path.chmod(0o644)


def test_stale_temporaries_of_the_target_are_cleaned_by_the_next_save(sir, tmp_path):
    """A save killed half-way leaves a temporary named after its target (and its
    process); the next successful save of that target removes it, and leaves the
    temporaries of other targets and of running processes alone."""
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)  # a process that has exited
    host = pj._checkpoint._HOST
    stale = tmp_path / f".sir.ckpt.tmp-{host}-{dead_pid}-abc123"
    alive = tmp_path / f".sir.ckpt.tmp-{host}-{os.getppid()}-def456"  # a running process
    other = tmp_path / f".other.ckpt.tmp-{host}-{dead_pid}-abc123"
    for p in (stale, alive, other):
        p.write_bytes(b"half-written")
    pj.save_checkpoint(tmp_path / "sir.ckpt", sir.init(jax.random.key(0)))
    assert sorted(os.listdir(tmp_path)) == sorted([alive.name, other.name, "sir.ckpt"])


def test_a_save_killed_half_way_leaves_a_temporary_named_after_its_target(sir, tmp_path, monkeypatch):
    path = tmp_path / "sir.ckpt"

    def killed(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", killed)
    monkeypatch.setattr(os, "unlink", lambda p: None)  # a killed process cleans nothing up
    with pytest.raises(KeyboardInterrupt):
        pj.save_checkpoint(path, sir.init(jax.random.key(0)))
    monkeypatch.undo()
    (left,) = os.listdir(tmp_path)
    assert left.startswith(f".sir.ckpt.tmp-{pj._checkpoint._HOST}-{os.getpid()}-")


def test_files_get_the_default_permissions(sir, tmp_path):
    """0644 under umask 022, like any file the user writes (mkstemp gives 0600)."""
    old = os.umask(0o022)
    try:
        path = pj.save_checkpoint(tmp_path / "sir.ckpt", sir.init(jax.random.key(0)))
    finally:
        os.umask(old)
    assert os.stat(path).st_mode & 0o777 == 0o644
