"""The module docstrings are the project's map: every usage example in them runs.

An example is an indented block of a module docstring. Shell lines (`rnnchar ...`, `make ...`,
`python -m rnnchar...`) are parsed by the real command line; the checkpoint layout is compared
with the keys of a saved file; every other block is Python and is executed, in a folder with a
small trained run, a corpus.txt and a big.txt, with the names of its module and the few
objects the example takes as given (CONTEXT). `load_config` there appends SMALL, so an example
that trains finishes at once while still calling the real functions with its own arguments.
"""

from __future__ import annotations

import ast
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import shutil
from pathlib import Path

import click
import numpy as np
import pytest
from click.testing import CliRunner

import rnnchar
from rnnchar.checkpoint import Checkpoint, save_checkpoint
from rnnchar.cli import main
from rnnchar.config import load_config
from rnnchar.graph import Mat
from rnnchar.runs import load_model

PACKAGE = Path(rnnchar.__file__).parent
ROOT = PACKAGE.parent
SMALL = ["model.hidden_sizes=[8]", "model.embed_size=4", "data.batch_size=4", "train.steps=3",
         "train.eval_every=0", "train.sample_every=0", "train.eval_max_chars=300"]
SENTENCES = [f"The {a} {v} the {b}." for a in ("cat", "dog", "bird", "fox", "hen")
             for v in ("saw", "met", "fed") for b in ("mat", "sea", "hill")]  # 45 lines


def small_config(path=None, overrides=()):
    return load_config(path, [*overrides, *SMALL])


def example_blocks(module: str) -> list[str]:
    """The indented blocks of a module's docstring, dedented, in order."""
    doc = ast.get_docstring(ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8")), clean=True)
    blocks, current = [], []
    for line in (doc or "").split("\n") + [""]:
        if line.startswith("    "):
            current.append(line[4:])
        elif current:
            blocks.append("\n".join(current))
            current = []
    return blocks


def is_shell(block: str) -> bool:
    return block.split()[0] in ("rnnchar", "make", "python", "cat")


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem != "__init__")
PYTHON = [(m, i) for m in MODULES for i, b in enumerate(example_blocks(m))
          if not is_shell(b) and (m, i) != ("checkpoint", 0)]
SHELL = [(m, line) for m in MODULES for b in example_blocks(m) if is_shell(b) for line in b.splitlines()]


def context(module: str, run: tuple) -> dict:
    """What an example of `module` takes as given; everything else it must build itself."""
    rng = np.random.default_rng(0)
    model, vocab, cfg = run
    T, B = 3, 2
    rows = rng.integers(0, 80, size=(T, B))
    core = {"rng": rng, "T": T, "B": B, "state": None}
    given = {
        "graph": {"x": Mat.randn(B, 10, 1.0, rng), "W": Mat.randn(10, 4, 0.1, rng), "b": Mat.zeros(1, 4),
                  "Wy": Mat.randn(4, 5, 0.1, rng), "targets": np.array([1, 3])},
        "cells": {"graph": rnnchar.Graph(), "x": Mat.randn(T * B, 32, 1.0, rng)},
        "model": {"inputs": rows, "targets": np.roll(rows, -1, axis=0), "mask": np.ones((T, B)),
                  "ids": rows[0]},
        "optim": {"params": {"W": Mat.randn(3, 2, 1.0, rng)}},
        "corpus": {"cfg": cfg, "step": 0},
        "checkpoint": {"config": {"model": {}}, "vocab": vocab.to_array(),
                       "params": {"embed.W": np.ones((3, 2))}, "opt_state": {}, "step": 0,
                       "rng_state": rng.bit_generator.state, "history": []},
        "evaluate": {"model": model, "vocab": vocab, "cfg": cfg, "text": "The cat saw the sea.\n"},
        "sample": {"model": model, "vocab": vocab},
    }
    return {**core, **given.get(module, {}), "load_config": small_config}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A folder with corpus.txt, big.txt and a small trained sentence model in runs/tiny."""
    d = tmp_path_factory.mktemp("examples")
    text = "\n".join(SENTENCES) + "\n"
    (d / "corpus.txt").write_text(text, encoding="utf-8")
    (d / "big.txt").write_text(text * 20, encoding="utf-8")
    sets = [a for s in SMALL for a in ("--set", s)]
    before = os.getcwd()
    os.chdir(d)
    try:
        r = CliRunner().invoke(main, ["train", "--corpus", "corpus.txt", "--quiet", "--run-dir", "runs/tiny",
                                      *sets])
    finally:
        os.chdir(before)
    assert r.exit_code == 0, r.output
    return d, load_model(d / "runs/tiny/last.npz")


def test_the_map_has_examples():
    assert len(PYTHON) >= 12 and len(SHELL) >= 5


@pytest.mark.parametrize("module, index", PYTHON, ids=[f"{m}{i or ''}" for m, i in PYTHON])
def test_python_example_runs(trained, tmp_path, monkeypatch, module, index):
    folder, run = trained
    shutil.copytree(folder, tmp_path, dirs_exist_ok=True)
    (tmp_path / "runs/x").mkdir()
    monkeypatch.chdir(tmp_path)
    code = example_blocks(module)[index]
    mod = importlib.import_module(f"rnnchar.{module}")
    names = {**vars(mod), "np": np, "Path": Path, **context(module, run)}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(code, f"rnnchar/{module}.py docstring", "exec"), names)  # noqa: S102


@pytest.mark.parametrize("module, line", SHELL, ids=[f"{m}: {line}" for m, line in SHELL])
def test_shell_example_parses(module, line):
    words = shlex.split(line, comments=True)
    if words[0] == "make":
        target = next(w for w in words[1:] if "=" not in w)
        assert re.search(rf"^{target}:", (ROOT / "Makefile").read_text(), re.M), target
        return
    if words[0] == "python":
        assert words[1] == "-m" and importlib.util.find_spec(words[2]) is not None, line
        return
    words = words[words.index("rnnchar"):]
    words = words[: words.index("|")] if "|" in words else words
    ctx = click.Context(main, info_name="rnnchar")
    command = main.get_command(ctx, words[1])
    assert command is not None, f"no command {words[1]!r}"
    command.make_context(words[1], words[2:], parent=ctx)  # raises UsageError on an unknown option


def test_checkpoint_layout_names_every_key_of_a_saved_file(tmp_path):
    layout = example_blocks("checkpoint")[0]
    documented = {line.split()[0].partition("/")[0] for line in layout.splitlines()}
    rng = np.random.default_rng(0)
    ckpt = Checkpoint({"model": {}}, np.arange(3), {"embed.W": np.ones((3, 2))}, {"t": np.array(1)}, 5,
                      rng.bit_generator.state, [], carry={"0/0": np.zeros((2, 4))})
    save_checkpoint(tmp_path / "c.npz", ckpt)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as z:
        assert documented == {key.partition("/")[0] for key in z.files}
