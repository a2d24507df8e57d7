"""Broken, foreign and hostile checkpoints are refused with exit 1 by sample, eval and train --resume.

Every bad file is made from a real checkpoint of a tiny model, and each is fed to
`sample --checkpoint` and `train --resume` in real processes and to `eval --checkpoint`
in process. A pickled payload would create a marker file if anything ever unpickled it.
"""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
from cli_procs import STREAM, TINY, assert_fails, assert_ok, cli, invoke, run_many, trained_run

from rnnchar.checkpoint import load_checkpoint


class Payload:
    """Unpickling this opens (creates) `marker`: proof that a loader ran code from the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def _rewrite(src, dst, **changes):
    arrays = dict(np.load(src))
    arrays.update(changes)
    np.savez(dst, **{k: v for k, v in arrays.items() if v is not None})


def _meta(arrays, **changes) -> np.ndarray:
    meta = json.loads(str(arrays["meta_json"]))
    meta.update(changes)
    return np.array(json.dumps(meta))


# name: message fragments for sample/eval, and for train --resume when they differ
BAD = {
    "missing": ("does not exist",), "truncated": ("truncated or corrupt",),
    "not-a-zip": ("not a zip archive",), "empty": ("an empty file",),
    "raw-pickle": ("not a zip archive",), "foreign-zip": ("not an rnnchar checkpoint", "config_json"),
    "version": ("format version 3", "reads version 2"), "shape": ("layer0.Wx", "(128,)", "(4, 32)"),
    "dtype": ("param/layer0.Wx", "int32"), "nan": ("param/decoder.b", "NaN"),
    "pickled": ("layer0.Wx", "refusing", "pickled"),
}


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
    """Folder with the corpus, a trained run `good/` and one bad checkpoint per BAD name."""
    d = trained_run(tmp_path_factory.mktemp("ckpts"))
    good = d / "good/last.npz"
    z = dict(np.load(good))
    raw = good.read_bytes()
    (d / "truncated.npz").write_bytes(raw[: len(raw) // 2])
    (d / "not-a-zip.npz").write_text("just text\n")
    (d / "empty.npz").write_bytes(b"")
    (d / "raw-pickle.npz").write_bytes(pickle.dumps(Payload(d / "MARKER-raw")))
    np.savez(d / "foreign-zip.npz", weights=np.ones(3))
    _rewrite(good, d / "version.npz", format_version=np.array(3))
    _rewrite(good, d / "shape.npz", **{"param/layer0.Wx": z["param/layer0.Wx"].reshape(-1)})
    _rewrite(good, d / "dtype.npz", **{"param/layer0.Wx": z["param/layer0.Wx"].astype(np.int32)})
    _rewrite(good, d / "nan.npz", **{"param/decoder.b": z["param/decoder.b"] * np.nan})
    evil = {"param/layer0.Wx": np.array([Payload(d / "MARKER")], dtype=object)}
    _rewrite(good, d / "pickled.npz", **evil)
    _rewrite(good, d / "control.npz", **{"param/layer0.Wx": np.array([Payload(d / "CONTROL")], dtype=object)})
    return d


def test_the_pickled_payload_is_live(bad):
    np.load(bad / "control.npz", allow_pickle=True)["param/layer0.Wx"]
    assert (bad / "CONTROL").exists()  # a loader that unpickles would run it


@pytest.fixture(scope="module")
def results(bad):
    cases = {("sample", name): ["sample", "--checkpoint", f"{name}.npz", "-n", "1"] for name in BAD}
    for name in BAD:
        run_dir = bad / f"resume-{name}"
        run_dir.mkdir()
        if name != "missing":
            shutil.copy(bad / f"{name}.npz", run_dir / "last.npz")
        cases["resume", name] = ["train", "--corpus", "c.txt", *TINY, "--run-dir", run_dir, "--resume"]
    out = run_many(cases, bad)
    for name in BAD:
        out["eval", name] = invoke("eval", "--checkpoint", bad / f"{name}.npz", bad / "c.txt")
    return out


@pytest.mark.parametrize("command", ["sample", "eval", "resume"])
@pytest.mark.parametrize("name", BAD)
def test_bad_checkpoint_exit_1(bad, results, command, name):
    fragments = ("nothing to resume", "last.npz") if (command, name) == ("resume", "missing") else BAD[name]
    assert_fails(results[command, name], 1, *fragments)
    assert not (bad / "MARKER").exists() and not (bad / "MARKER-raw").exists()
    if command == "resume" and name != "missing":  # the file is left as it was, nothing else written
        assert (bad / f"resume-{name}/last.npz").read_bytes() == (bad / f"{name}.npz").read_bytes()
        assert not (bad / f"resume-{name}/config.yaml").exists()


def test_resume_refuses_what_does_not_fit(bad):
    good = bad / "good/last.npz"
    z = dict(np.load(good))
    assert_ok(cli("train", "--corpus", "c.txt", *TINY, *STREAM, "--run-dir", "stream", cwd=bad))
    zs = dict(np.load(bad / "stream/last.npz"))
    bad_config = json.loads(str(z["config_json"]))
    bad_config["model"]["cell"] = "transformer"
    variants = {  # run dir: (source checkpoint, changes, extra args, message fragments)
        "slot": (good, {"opt/cache/embed.W": z["opt/cache/embed.W"][:2]}, [],
                 ["'opt/cache/embed.W' has shape (2, 4)"]),
        "rng": (good, {"meta_json": _meta(z, rng_state={"bit_generator": "MT19937"})}, [], ["RNG state"]),
        "step": (good, {"meta_json": _meta(z, step=-4)}, [], ["step counter is negative"]),
        "config": (good, {"config_json": np.array(json.dumps(bad_config))}, [],
                   ["stored config", "'transformer'"]),
        "carry": (bad / "stream/last.npz", {"carry/0/0": zs["carry/0/0"][:, :3]}, STREAM,
                  ["'carry/0/0' has shape (2, 3)", "(2, 8)"]),
        "hidden": (good, {}, ["--set", "model.hidden_sizes=[6]"],
                   ["different model", "model.hidden_sizes: [8] in the checkpoint, [6] now"]),
        "cell": (good, {}, ["--set", "model.cell=gru"], ["model.cell: 'lstm' in the checkpoint, 'gru' now"]),
        "streams": (bad / "stream/last.npz", {}, [*STREAM, "--set", "data.batch_size=3"],
                    ["data.batch_size: 2 in the checkpoint, 3 now"]),
    }
    cases = {}
    for name, (src, changes, extra, _) in variants.items():
        (bad / name).mkdir()
        _rewrite(src, bad / name / "last.npz", **changes)
        cases[name] = ["train", "--corpus", "c.txt", *TINY, *extra, "--run-dir", name, "--resume"]
    before = {name: (bad / name / "last.npz").read_bytes() for name in variants}
    for name, r in run_many(cases, bad).items():
        named_file = ["last.npz"] if name not in ("hidden", "cell", "streams") else []
        assert_fails(r, 1, *named_file, *variants[name][3])
        assert (bad / name / "last.npz").read_bytes() == before[name], name
    assert load_checkpoint(bad / "hidden/last.npz").step == 3  # still good for a run with the old shape
