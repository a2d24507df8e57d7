"""Tests for rnnchar.checkpoint: round trip, atomic saves, and refusing bad or hostile files."""

import json
import os
import pathlib
import zipfile

import numpy as np
import pytest

from rnnchar import checkpoint as ck
from rnnchar.checkpoint import FORMAT_VERSION, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint


def make_ckpt(dtype=np.float32, seed=0) -> Checkpoint:
    rng = np.random.default_rng(seed)
    gen = np.random.Generator(np.random.PCG64(12345))
    gen.random(7)  # advance so the state is not the seed's
    params = {"embed.W": rng.standard_normal((5, 3)).astype(dtype),
              "layer0.W": rng.standard_normal((6, 8)).astype(dtype),
              "layer0.b": np.zeros(8, dtype=dtype)}
    return Checkpoint(
        config={"model": {"cell": "lstm", "hidden_sizes": [8]}, "data": {"corpus": None}},
        vocab=np.array([0, 1, 32, 97, 0x1F600], dtype=np.int64),
        params=params,
        opt_state={**{f"cache/{k}": np.abs(v) for k, v in params.items()}, "t": np.array(17, dtype=np.int64)},
        step=1234,
        rng_state=gen.bit_generator.state,
        history=[{"step": 250, "train_loss": 1.5, "val_bpc": 2.25}, {"step": 500, "train_loss": 1.25}],
        meta={"best_val_loss": 1.125},
    )


def leftovers(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# -- round trip --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip(tmp_path, dtype):
    original = make_ckpt(dtype)
    path = tmp_path / "model.npz"
    save_checkpoint(path, original)
    loaded = load_checkpoint(path)
    assert loaded.config == original.config
    assert loaded.vocab.dtype == np.int64 and loaded.vocab.tolist() == original.vocab.tolist()
    assert loaded.params.keys() == original.params.keys()
    for name, w in original.params.items():
        assert loaded.params[name].dtype == dtype
        np.testing.assert_array_equal(loaded.params[name], w)
    assert loaded.opt_state.keys() == original.opt_state.keys()
    for slot, v in original.opt_state.items():
        np.testing.assert_array_equal(loaded.opt_state[slot], v)
    assert loaded.opt_state["t"].shape == () and int(loaded.opt_state["t"]) == 17
    assert loaded.step == 1234 and isinstance(loaded.step, int)
    assert loaded.history == original.history and loaded.meta == original.meta


def test_rng_state_restores_the_same_stream(tmp_path):
    original = make_ckpt()
    assert original.rng_state["state"]["state"] > 2**64  # 128-bit ints must survive JSON
    save_checkpoint(tmp_path / "m.npz", original)
    restored = np.random.Generator(np.random.PCG64())
    restored.bit_generator.state = load_checkpoint(tmp_path / "m.npz").rng_state
    reference = np.random.Generator(np.random.PCG64())
    reference.bit_generator.state = original.rng_state
    np.testing.assert_array_equal(restored.random(10), reference.random(10))


def test_numpy_scalars_in_history_are_saved(tmp_path):
    ckpt = make_ckpt()
    ckpt.history = [{"step": np.int64(3), "loss": np.float32(0.5)}]
    save_checkpoint(tmp_path / "m.npz", ckpt)
    assert load_checkpoint(tmp_path / "m.npz").history == [{"step": 3, "loss": 0.5}]


def test_file_is_plain_npz_without_pickles(tmp_path):
    save_checkpoint(tmp_path / "m.npz", make_ckpt())
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert int(z["format_version"]) == FORMAT_VERSION
        assert json.loads(z["config_json"].item())["model"]["cell"] == "lstm"
        assert "param/layer0.W" in z.files and "opt/cache/embed.W" in z.files and "opt/t" in z.files


# -- atomic saves ------------------------------------------------------------------------------

def test_no_temp_file_after_success(tmp_path):
    save_checkpoint(tmp_path / "m.npz", make_ckpt(seed=1))
    save_checkpoint(tmp_path / "m.npz", make_ckpt(seed=2))  # overwrite
    assert [p.name for p in tmp_path.iterdir()] == ["m.npz"]
    expected = make_ckpt(seed=2).params["embed.W"]
    np.testing.assert_array_equal(load_checkpoint(tmp_path / "m.npz").params["embed.W"], expected)


def _fail(*args, **kwargs):
    raise OSError(28, "No space left on device")


@pytest.mark.parametrize("target", ["savez", "replace", "fsync"])
def test_failed_save_keeps_previous_checkpoint(tmp_path, monkeypatch, target):
    path = tmp_path / "m.npz"
    save_checkpoint(path, make_ckpt(seed=1))
    before = path.read_bytes()
    monkeypatch.setattr({"savez": ck.np, "replace": ck.os, "fsync": ck.os}[target], target, _fail)
    wanted = r"could not write checkpoint .*m\.npz.*No space left.*untouched"
    with pytest.raises(CheckpointError, match=wanted):
        save_checkpoint(path, make_ckpt(seed=2))
    monkeypatch.undo()
    assert path.read_bytes() == before
    expected = make_ckpt(seed=1).params["embed.W"]
    np.testing.assert_array_equal(load_checkpoint(path).params["embed.W"], expected)
    assert leftovers(tmp_path) == []


def test_interrupted_save_leaves_no_temp_file(tmp_path, monkeypatch):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ck.np, "savez", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "m.npz", make_ckpt())
    assert list(tmp_path.iterdir()) == []


def test_ctrl_c_right_after_the_temp_file_is_created_leaves_none(tmp_path, ctrl_c_right_after_create):
    """A handler queued just before the signals were held runs at the next bytecode, which can be
    inside the call that creates the temporary file: the file exists, its name not yet returned."""
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "m.npz", make_ckpt())
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root ignores directory permissions")
def test_read_only_directory(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    save_checkpoint(folder / "m.npz", make_ckpt(seed=1))
    before = (folder / "m.npz").read_bytes()
    os.chmod(folder, 0o500)
    try:
        with pytest.raises(CheckpointError, match="could not write checkpoint"):
            save_checkpoint(folder / "m.npz", make_ckpt(seed=2))
    finally:
        os.chmod(folder, 0o700)
    assert (folder / "m.npz").read_bytes() == before and leftovers(folder) == []


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="could not write checkpoint .*folder .*nope does not exist"):
        save_checkpoint(tmp_path / "nope" / "m.npz", make_ckpt())


def test_corrupt_array_data(tmp_path):
    path = tmp_path / "m.npz"
    ckpt = make_ckpt()
    save_checkpoint(path, ckpt)
    data = bytearray(path.read_bytes())
    offset = bytes(data).index(ckpt.params["layer0.W"].tobytes())  # stored uncompressed
    data[offset + 5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"param/layer0\.W.*corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_parameter_is_refused(tmp_path, bad):
    path = tmp_path / "m.npz"
    save_checkpoint(path, make_ckpt(seed=1))
    before = path.read_bytes()
    ckpt = make_ckpt(seed=2)
    ckpt.params["layer0.W"][2, 3] = bad
    with pytest.raises(CheckpointError, match=r"layer0\.W"):
        save_checkpoint(path, ckpt)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_object_parameter_is_refused_on_save(tmp_path):
    ckpt = make_ckpt()
    ckpt.params["x"] = np.array([object()], dtype=object)
    with pytest.raises(CheckpointError, match="param/x"):
        save_checkpoint(tmp_path / "m.npz", ckpt)
    assert not (tmp_path / "m.npz").exists()


# -- refusing bad files ------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "absent.npz")


def test_directory(tmp_path):
    with pytest.raises(CheckpointError, match="directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("fraction", [0.5, 0.9, 0.999])
def test_truncated(tmp_path, fraction):
    path = tmp_path / "m.npz"
    save_checkpoint(path, make_ckpt())
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError, match="m.npz"):
        load_checkpoint(path)


@pytest.mark.parametrize("content", [b"", np.random.default_rng(0).bytes(4096), b"PK\x03\x04" + bytes(100)])
def test_garbage(tmp_path, content):
    path = tmp_path / "junk.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.npz"):
        load_checkpoint(path)


def test_plain_npy_file(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros(3))
    with pytest.raises(CheckpointError, match="not an .npz"):
        load_checkpoint(tmp_path / "a.npy")


def test_zip_without_our_keys(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.zeros(3))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    for key in ("format_version", "config_json", "meta_json", "vocab"):
        assert key in str(err.value)


def test_plain_zip(tmp_path):
    with zipfile.ZipFile(tmp_path / "z.npz", "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "z.npz")


def rewrite(path: pathlib.Path, **changes) -> None:
    """Re-save a checkpoint's arrays with some replaced (None = removed)."""
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


@pytest.mark.parametrize("version", [0, 3, 99])
def test_wrong_format_version(tmp_path, version):
    path = tmp_path / "m.npz"
    save_checkpoint(path, make_ckpt())
    rewrite(path, format_version=np.array(version, dtype=np.int64))
    with pytest.raises(CheckpointError, match=rf"version {version}\b.*version {FORMAT_VERSION}"):
        load_checkpoint(path)


@pytest.mark.parametrize("key,value,message", [
    ("param/layer0.W", np.ones((6, 8), dtype=np.int32), "int32"),
    ("param/layer0.W", np.ones((6, 8), dtype=np.float16), "float16"),
    ("param/layer0.W", np.array(["a", "b"]), "dtype"),
    ("param/layer0.W", np.array([1.0, np.nan]), "NaN"),
    ("vocab", np.array([0.5, 1.5]), "vocab"),
    ("vocab", np.zeros((2, 2), dtype=np.int64), "vocab"),
    ("opt/t", np.array("x"), "opt/t"),
    ("config_json", np.array("{not json"), "config_json"),
    ("config_json", np.array(3), "config_json"),
    ("meta_json", np.array('{"step": "many"}'), "step"),
    ("meta_json", None, "meta_json"),
])
def test_wrong_contents(tmp_path, key, value, message):
    path = tmp_path / "m.npz"
    save_checkpoint(path, make_ckpt())
    rewrite(path, **{key: value})
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


class Payload:
    """Unpickling this object touches the marker file: what a hostile checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return pathlib.Path.touch, (pathlib.Path(self.marker),)


def test_hostile_pickle_is_never_executed(tmp_path):
    path, marker = tmp_path / "evil.npz", tmp_path / "PWNED"
    save_checkpoint(path, make_ckpt())
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    evil = np.empty(1, dtype=object)
    evil[0] = Payload(marker)
    arrays["param/x"] = evil
    np.savez(path, allow_pickle=True, **arrays)
    with pytest.raises(CheckpointError, match="refusing to load pickled data"):
        load_checkpoint(path)
    assert not marker.exists()
    with np.load(path, allow_pickle=True) as z:  # control: the payload is live, so the check can fail
        z["param/x"]
    assert marker.exists()


# -- format versions ---------------------------------------------------------------------------

def test_carried_state_round_trips_in_its_own_field(tmp_path):
    ckpt = make_ckpt()
    ckpt.carry = {"0/0": np.full((2, 8), 0.5, np.float32), "0/1": np.zeros((2, 8), np.float32)}
    save_checkpoint(tmp_path / "m.npz", ckpt)
    with np.load(tmp_path / "m.npz", allow_pickle=False) as z:
        assert {"carry/0/0", "carry/0/1"} <= set(z.files) and int(z["format_version"]) == 2
    back = load_checkpoint(tmp_path / "m.npz")
    assert back.carry.keys() == ckpt.carry.keys() and np.all(back.carry["0/0"] == 0.5)
    assert set(back.opt_state) == set(ckpt.opt_state)


def test_version_1_file_with_carry_among_the_optimizer_slots_is_read(tmp_path):
    ckpt = make_ckpt()
    path = tmp_path / "v1.npz"
    save_checkpoint(path, ckpt)  # then rewritten as version 1 laid it out, by hand
    h = np.arange(16, dtype=np.float32).reshape(2, 8)
    rewrite(path, format_version=np.array(1, dtype=np.int64), **{"opt/carry/0/0": h})
    back = load_checkpoint(path)
    assert set(back.opt_state) == set(ckpt.opt_state)  # "carry/0/0" is not an optimizer slot
    assert list(back.carry) == ["0/0"] and np.array_equal(back.carry["0/0"], h)
