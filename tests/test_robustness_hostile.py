"""Hostile checkpoints and configs: bounded memory, no recursion crash, one clear message.

Every hostile file is built here, small on disk, from a real checkpoint of a tiny model. The
memory cases run the CLI under an address-space limit (RLIMIT_AS, 1 GiB; the tiny model needs
~300 MB) instead of timing it: a file that made us allocate what it declares would end in
"out of memory" there, not in the message the file deserves.
"""

from __future__ import annotations

import io
import json
import os
import resource
import shutil
import struct
import subprocess
import zlib

import numpy as np
import pytest
from cli_procs import CLI, TINY, assert_fails, assert_ok, cli, invoke, run_many, trained_run

LIMIT = 1 << 30


def _limited():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


def cli_limited(*args, cwd):
    """`rnnchar ARGS` with at most LIMIT bytes of address space."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1"}
    return subprocess.run([*CLI, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60,
                          preexec_fn=_limited, env=env)


def npy_bytes(arr: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.lib.format.write_array(out, arr, allow_pickle=False)
    return out.getvalue()


def write_zip(path, members: list[tuple]) -> None:
    """A zip written field by field, so entries can lie: (name, raw data, method, flags, declared
    size, crc); method 0 stores `raw` as is, any other method takes `raw` as already compressed."""
    body, central = bytearray(), bytearray()
    for name, raw, method, flags, size, crc in members:
        fname = name.encode()
        offset = len(body)
        body += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, flags, method, 0, 33, crc, len(raw), size,
                            len(fname), 0) + fname + raw
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, flags, method, 0, 33, crc, len(raw),
                               size, len(fname), 0, 0, 0, 0, 0, offset) + fname
    end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(members), len(members), len(central), len(body), 0)
    path.write_bytes(bytes(body + central + end))


def stored(name: str, data: bytes) -> tuple:
    return (name, data, 0, 0, len(data), zlib.crc32(data))


def deflated(name: str, data: bytes) -> tuple:
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    return (name, c.compress(data) + c.flush(), 8, 0, len(data), zlib.crc32(data))


BOMB_CHUNKS = 178


def bomb(name: str, chunks: int = BOMB_CHUNKS) -> tuple:
    """A deflated float32 .npy of `chunks` x 16 MiB of zeros (2.99 GB) in ~3 MB: after a full flush,
    every identical chunk compresses to the same bytes, so the stream is built by repetition."""
    n = chunks << 24
    header = npy_bytes(np.zeros(0, np.float32)).replace(b"(0,)", f"({n // 4},)".encode())
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = c.compress(header) + c.flush(zlib.Z_FULL_FLUSH)
    zeros = c.compress(bytes(1 << 24)) + c.flush(zlib.Z_FULL_FLUSH)
    return (f"{name}.npy", head + zeros * chunks + c.flush(), 8, 0, len(header) + n, 0)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """The tiny corpus, one trained run in good/ and its arrays as .npy bytes."""
    return trained_run(tmp_path_factory.mktemp("hostile"))


def arrays_of(path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def hostile(work, name, replace: dict, extra=()) -> str:
    """good/last.npz rewritten by hand: members in `replace` become the given raw entries."""
    members = [replace.get(k) or stored(f"{k}.npy", npy_bytes(v))
               for k, v in arrays_of(work / "good/last.npz").items()]
    write_zip(work / f"{name}.npz", [*members, *extra])
    return f"{name}.npz"


def test_a_declared_gigabyte_member_is_never_decompressed(work):
    """A 3 MB file holding a deflated 3 GB member: unknown members are not read, named ones are
    refused from their .npy header, both without the memory the member declares."""
    junk = hostile(work, "junk", {}, extra=[bomb("junk")])
    as_param = hostile(work, "as-param", {"param/embed.W": bomb("param/embed.W")})
    assert (work / junk).stat().st_size < 4_000_000
    with np.load(work / junk) as z, z.zip.open("junk.npy") as f:  # control: the bomb is live
        assert f.read(1 << 20)[-100:] == bytes(100)
    ok = cli_limited("sample", "--checkpoint", junk, "-n", "1", "--seed", "1", cwd=work)
    assert_ok(ok)
    assert ok.stdout.strip()
    r = cli_limited("sample", "--checkpoint", as_param, "-n", "1", cwd=work)
    declared = f"'param/embed.W' has shape ({(BOMB_CHUNKS << 24) // 4},)"
    assert_fails(r, 1, "as-param.npz", declared, "implies (", ", 4)")


def test_a_config_implying_a_huge_model_fails_before_building_it(work):
    """73 KB whose stored config says hidden_sizes [12000]: refused from the shapes, small and fast."""
    arrays = arrays_of(work / "good/last.npz")
    config = json.loads(str(arrays["config_json"]))
    config["model"]["hidden_sizes"] = [12000]
    arrays["config_json"] = np.array(json.dumps(config))
    np.savez(work / "wide.npz", **arrays)
    r = cli_limited("sample", "--checkpoint", "wide.npz", "-n", "1", cwd=work)
    assert_fails(r, 1, "wide.npz", "'param/layer0.Wx' has shape (4, 32)", "implies (4, 48000)")


def long_header(npy: bytes, length: int = 20_000) -> bytes:
    """The same .npy with its header padded to `length` bytes (numpy reads at most 10,000)."""
    (n,) = struct.unpack("<H", npy[8:10])
    header, data = npy[10:10 + n], npy[10 + n:]
    return npy[:8] + struct.pack("<H", length) + header.rstrip(b"\n").ljust(length - 1) + b"\n" + data


HOSTILE_MEMBERS = {  # name: (entry for param/layer0.Wx, message fragment)
    "corrupt-deflate": (lambda data: ("param/layer0.Wx.npy", b"\xff" * 64, 8, 0, len(data), zlib.crc32(data)),
                        "corrupt or truncated"),
    "method-99": (lambda data: ("param/layer0.Wx.npy", data, 99, 0, len(data), zlib.crc32(data)),
                  "compression method 99"),
    "encrypted": (lambda data: ("param/layer0.Wx.npy", data, 0, 1, len(data), zlib.crc32(data)), "encrypted"),
    "long-header": (lambda data: stored("param/layer0.Wx.npy", long_header(data)), "invalid .npy header"),
    "bad-crc": (lambda data: deflated("param/layer0.Wx.npy", data)[:5] + (zlib.crc32(data) ^ 1,),
                "Bad CRC-32"),
}


@pytest.fixture(scope="module")
def member_results(work):
    """`sample` on one checkpoint per HOSTILE_MEMBERS entry, param/layer0.Wx replaced by it."""
    data = npy_bytes(arrays_of(work / "good/last.npz")["param/layer0.Wx"])
    files = {name: hostile(work, name, {"param/layer0.Wx": make(data)})
             for name, (make, _) in HOSTILE_MEMBERS.items()}
    return run_many({name: ["sample", "--checkpoint", f, "-n", "1"] for name, f in files.items()}, work)


@pytest.mark.parametrize("name", HOSTILE_MEMBERS)
def test_hostile_zip_members_are_clear_errors(member_results, name):
    r = member_results[name]
    assert_fails(r, 1, f"{name}.npz", "param/layer0.Wx", HOSTILE_MEMBERS[name][1])
    assert "Python objects" not in r.stderr and "pickle" not in r.stderr


def test_deeply_nested_config_json_in_a_checkpoint(work):
    arrays = arrays_of(work / "good/last.npz")
    arrays["config_json"] = np.array("[" * 100_000 + "]" * 100_000)
    np.savez(work / "deep.npz", **arrays)
    assert_fails(cli("sample", "--checkpoint", "deep.npz", cwd=work), 1, "deep.npz", "config_json",
                 "nested too deeply")


def _resume_copy(work, name, **changes):
    """good/ copied to `name`/ with last.npz's arrays changed; returns the files before resuming."""
    shutil.copytree(work / "good", work / name)
    arrays = arrays_of(work / name / "last.npz")
    arrays.update(changes)
    np.savez(work / name / "last.npz", **arrays)
    return {p.name: p.read_bytes() for p in (work / name).iterdir() if p.is_file()}


RESUME_VARIANTS = {  # run dir: (changed array, message fragments)
    "int-slot": ("opt/cache/layer0.Wx", ["'opt/cache/layer0.Wx' has dtype int64"]),
    "bool-slot": ("opt/cache/layer0.Wx", ["'opt/cache/layer0.Wx' has dtype bool"]),
    "rng-2-200": ("meta_json", ["RNG state", "invalid"]),
}


@pytest.fixture(scope="module")
def resume_results(work):
    """`train --resume` in a copy of good/ per RESUME_VARIANTS; (results, files before)."""
    arrays = arrays_of(work / "good/last.npz")
    meta = json.loads(str(arrays["meta_json"]))
    meta["rng_state"]["state"]["state"] = 2 ** 200
    slot = arrays["opt/cache/layer0.Wx"]
    changed = {"int-slot": slot.astype(np.int64), "bool-slot": slot > 0,
               "rng-2-200": np.array(json.dumps(meta))}
    before = {name: _resume_copy(work, name, **{key: changed[name]})
              for name, (key, _) in RESUME_VARIANTS.items()}
    more = ["--set", "train.steps=6", "--resume"]
    cases = {name: ["train", "--corpus", "c.txt", *TINY, *more, "--run-dir", name]
             for name in RESUME_VARIANTS}
    return run_many(cases, work), before


@pytest.mark.parametrize("name", RESUME_VARIANTS)
def test_resume_refuses_wrongly_typed_slots_and_rng_states_changing_nothing(work, resume_results, name):
    results, before = resume_results
    assert_fails(results[name], 1, f"{name}/last.npz", *RESUME_VARIANTS[name][1])
    assert {p.name: p.read_bytes() for p in (work / name).iterdir() if p.is_file()} == before[name]


def laughs(levels: int) -> str:
    """The YAML "billion laughs": `levels` levels of 10 aliases stand for 10**levels values."""
    lines = ["a0: &a0 [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, levels + 1)]
    return "\n".join(lines)


INLINE_LAUGHS = "{" + ", ".join(laughs(7).splitlines()) + ", b: *a7}"  # 10**7 values in 500 bytes
YAML_CASES = {  # name: (config file text or None, --set value for model.hidden_sizes or None, fragments)
    "config-laughs": (f"model:\n  hidden_sizes: {INLINE_LAUGHS}\n", None, ["more than 10,000 values"]),
    "config-deep": ("model:\n  hidden_sizes: " + "[" * 5000 + "]" * 5000 + "\n", None, ["nested too deeply"]),
    "set-laughs": (None, INLINE_LAUGHS, ["model.hidden_sizes", "more than 10,000 values"]),
    "set-deep": (None, "[" * 3000 + "]" * 3000, ["model.hidden_sizes", "nested too deeply"]),
    "set-deep-block": (None, "- " * 5000 + "1", ["model.hidden_sizes", "nested too deeply"]),
    "set-echo": (None, "[" + ", ".join(["x"] * 5000) + "]",
                 ["model.hidden_sizes: expected a non-empty list of positive integers", "..."]),
}


@pytest.mark.parametrize("name", YAML_CASES)
def test_yaml_alias_explosion_and_deep_nesting_are_refused(tmp_path, name):
    text, value, fragments = YAML_CASES[name]
    if text is not None:
        (tmp_path / f"{name}.yaml").write_text(text)
    args = ["-c", tmp_path / f"{name}.yaml"] if text is not None else ["--set", f"model.hidden_sizes={value}"]
    r = invoke("train", *args, "-q")
    assert_fails(r, 2, *fragments, *([f"{name}.yaml"] if text is not None else []))
    assert len(r.stderr) < 1000, len(r.stderr)  # no value is echoed in full


def test_a_few_yaml_aliases_are_still_fine(work):
    (work / "anchors.yaml").write_text("model:\n  hidden_sizes: &h [8, 8]\n  embed_size: 4\n"
                                       "data:\n  batch_size: &n 2\nsample:\n  top_k: *n\n")
    r = invoke("train", "-c", work / "anchors.yaml", "--corpus", work / "c.txt", "--set", "train.steps=1",
               "--run-dir", work / "anchors", "-q")
    assert r.returncode == 0, r.stderr


def test_a_fifo_is_not_read_as_a_checkpoint(work):
    """Opening a FIFO blocks until a writer comes: refused as not a regular file, never opened."""
    os.mkfifo(work / "fifo.npz")
    (work / "fifo-run").mkdir()
    os.mkfifo(work / "fifo-run/last.npz")
    r = run_many({"sample": ["sample", "--checkpoint", "fifo.npz"],
                  "resume": ["train", "--corpus", "c.txt", *TINY, "--run-dir", "fifo-run", "--resume"]}, work)
    assert_fails(r["sample"], 1, "fifo.npz is not a regular file")
    assert_fails(r["resume"], 1, "fifo-run/last.npz is not a regular file", "nothing in the run directory")
    assert sorted(p.name for p in (work / "fifo-run").iterdir()) == ["last.npz"]
