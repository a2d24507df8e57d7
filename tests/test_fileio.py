"""Tests for rnnchar.fileio.write_atomically: the one atomic write behind checkpoints, the id cache,
config.yaml and metrics.jsonl (their own tests drive it through those callers)."""

import os

import pytest

from rnnchar.fileio import write_atomically


def _old_file(tmp_path):
    path = tmp_path / "m.txt"
    path.write_bytes(b"old contents\n")
    return path


def test_replaces_the_file_from_a_temporary_file_beside_it(tmp_path):
    path = _old_file(tmp_path)
    seen = []

    def write(f):
        seen.extend(os.listdir(tmp_path))  # during the write: the old file and our temporary file
        f.write(b"new contents\n")

    write_atomically(path, write)
    assert path.read_bytes() == b"new contents\n"
    temporary = sorted(set(seen) - {"m.txt"})
    assert len(temporary) == 1 and temporary[0].startswith(".m.txt.") and temporary[0].endswith(".tmp")
    assert os.listdir(tmp_path) == ["m.txt"]


def test_the_new_file_has_the_usual_permissions(tmp_path):
    umask = os.umask(0o027)
    try:
        write_atomically(tmp_path / "m.txt", lambda f: f.write(b"x"))
    finally:
        os.umask(umask)
    assert (tmp_path / "m.txt").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600


def test_the_suffix_names_the_temporary_file(tmp_path):
    seen = []
    write_atomically(tmp_path / "ids.npy", lambda f: seen.extend(os.listdir(tmp_path)), suffix=".tmp.npy")
    assert len(seen) == 1 and seen[0].startswith(".ids.npy.") and seen[0].endswith(".tmp.npy")


class DiskFull(OSError):
    pass


@pytest.mark.parametrize("error", [DiskFull(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_write_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, error):
    path = _old_file(tmp_path)

    def write(f):
        f.write(b"half of the new")
        f.flush()
        raise error

    with pytest.raises(type(error)):
        write_atomically(path, write)
    assert path.read_bytes() == b"old contents\n"
    assert os.listdir(tmp_path) == ["m.txt"]


def test_a_failed_rename_keeps_the_old_file_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    path = _old_file(tmp_path)

    def refuse(*args):
        raise DiskFull(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(DiskFull):
        write_atomically(path, lambda f: f.write(b"new contents\n"))
    assert path.read_bytes() == b"old contents\n"
    assert os.listdir(tmp_path) == ["m.txt"]


def test_ctrl_c_inside_mkstemp_after_the_file_is_created_leaves_none(tmp_path, ctrl_c_right_after_create):
    """The temporary file exists but mkstemp never returned its name: it is still found and removed."""
    with pytest.raises(KeyboardInterrupt):
        write_atomically(tmp_path / "m.txt", lambda f: f.write(b"x"))
    assert os.listdir(tmp_path) == []


def test_cleaning_up_leaves_other_writers_temporary_files_alone(tmp_path):
    path = _old_file(tmp_path)
    other = tmp_path / ".m.txt.0123abcd_another.tmp"  # another process writing the same file
    other.write_bytes(b"theirs")

    def fail(f):
        raise DiskFull(28, "No space left on device")

    with pytest.raises(DiskFull):
        write_atomically(path, fail)
    assert sorted(os.listdir(tmp_path)) == [other.name, "m.txt"]
