"""The layering of DESIGN.md, enforced: each module imports only what its row below allows.

    cli bench benchjob benchpar commands traincmd  ->  workers train progress sample evaluate finetune plot
               ->  comm datapar corpus runs data batches idcache config checkpoint npz safeyaml report text
                   fileio bundled heap
               ->  model  ->  cells optim  ->  graph fused sequence gfsequence mat (and ceiling, for bench)

Imports are read from the source (the AST, so imports inside functions count too). A new
module needs a row here; an import a row does not allow fails, and so does a row that points
up the picture.
"""

from __future__ import annotations

import ast
import sys
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "rnnchar"  # read, never imported: a cycle cannot hide it
LAYER = {  # the picture, top (0) to bottom: an allowed import stays in its layer or goes down
    "__init__": 0, "cli": 0, "bench": 0, "benchjob": 0, "benchpar": 0, "commands": 0, "traincmd": 0,
    "workers": 1, "train": 1, "progress": 1, "sample": 1, "evaluate": 1, "finetune": 1, "plot": 1,
    "corpus": 2, "runs": 2, "data": 2, "idcache": 2, "config": 2, "checkpoint": 2, "report": 2, "text": 2,
    "batches": 2, "valuerules": 2, "npz": 2, "safeyaml": 2, "comm": 2, "datapar": 2, "fileio": 2,
    "bundled": 2, "heap": 2,
    "model": 3,
    "cells": 4, "optim": 4,
    "graph": 5, "fused": 5, "sequence": 5, "gfsequence": 5, "mat": 5, "ceiling": 5,
}
STORE = "corpus runs data batches idcache config checkpoint npz safeyaml fileio bundled heap"
CORE = "model cells optim graph fused sequence gfsequence mat"
ALLOWED = {  # module: (rnnchar modules it may import, packages beyond the standard library)
    "__init__": ("graph optim", ""),  # the library's face: the autodiff core and the optimizers
    "cli": (f"__init__ commands traincmd workers train sample evaluate finetune comm {STORE} {CORE}",
            "click numpy tqdm"),
    "traincmd": ("comm config runs train workers", "click numpy tqdm"),  # `rnnchar train` around the Trainer
    "commands": (f"sample evaluate plot report text {STORE}", "click"),  # prep, runs, plot
    "bench": (f"__init__ benchjob benchpar train sample evaluate {STORE} {CORE} ceiling", "numpy"),
    "benchjob": ("benchpar ceiling config heap train", ""),  # one measurement, inside its subprocess
    "benchpar": ("checkpoint", ""),  # runs `rnnchar train --workers N` as a subprocess
    "workers": ("train comm config", "numpy tqdm"),  # local worker processes, joining an MPI job
    "train": (f"progress sample evaluate finetune comm datapar {STORE} {CORE}", "numpy tqdm"),
    "progress": ("evaluate config runs", ""),  # evaluation records, metrics.jsonl, progress lines
    "comm": ("", "numpy mpi4py"),  # mpi4py imported inside MPIComm only, under mpiexec
    "datapar": ("batches data", "numpy"),
    "finetune": (f"{STORE} {CORE}", "numpy"),
    "plot": ("report", "matplotlib"),  # matplotlib imported only when a file is asked for
    "sample": (f"{STORE} {CORE}", "numpy"),
    "evaluate": (f"{STORE} {CORE}", "numpy tqdm"),
    "corpus": (f"data batches idcache config fileio bundled {CORE}", "numpy"),
    "runs": (f"checkpoint config data fileio {CORE}", "numpy"),
    "report": ("config npz", ""),
    "text": ("", ""),
    "config": (f"safeyaml valuerules bundled {CORE}", "numpy yaml"),
    "valuerules": ("", ""),
    "safeyaml": ("", "yaml"),
    "checkpoint": ("npz fileio", "numpy"),
    "npz": ("", "numpy"),
    "idcache": ("data fileio", "numpy"),
    "data": ("fileio", "numpy"),
    "batches": ("data", "numpy"),  # Batch, the sentence and stream batchers, evaluation batching
    "bundled": ("", ""),  # the configs and corpus shipped with rnnchar, found from any directory
    "heap": ("", ""),  # glibc's malloc thresholds: freed arrays stay mapped for the next step
    "fileio": ("", ""),  # regular-file checks, the capped reader, the one atomic write
    "model": ("cells optim graph fused sequence gfsequence mat", "numpy"),
    "cells": ("graph fused sequence gfsequence mat", "numpy"),
    "optim": ("graph mat", "numpy"),
    "graph": ("fused sequence gfsequence mat", "numpy"),
    "sequence": ("mat", "numpy"),
    "gfsequence": ("sequence mat", "numpy"),
    "ceiling": ("", "numpy"),  # the matmul-only ceiling that bench runs beside training
    "fused": ("mat", "numpy"),
    "mat": ("", "numpy"),
}
MAY_PRINT = {"cli", "bench"}  # the rest report through return values, exceptions and the logger


def modules() -> list[str]:
    return sorted(p.stem for p in PACKAGE.glob("*.py"))


def imports_of(module: str) -> tuple[set[str], set[str], ast.Module]:
    """(rnnchar modules, top-level outside packages) that `module` imports anywhere in its source."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text(encoding="utf-8"))
    ours, outside = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                top, _, sub = alias.name.partition(".")
                (ours.add(sub.partition(".")[0] or "__init__") if top == "rnnchar" else outside.add(top))
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level == 0 and name.partition(".")[0] != "rnnchar":
                outside.add(name.partition(".")[0])
                continue
            inner = name.partition(".")[2] if node.level == 0 else name
            if inner:
                ours.add(inner.partition(".")[0])
            else:  # `from . import x`: a module of the package, or a name defined in __init__
                ours.update(a.name if (PACKAGE / f"{a.name}.py").exists() else "__init__" for a in node.names)
    return ours, outside, tree


def test_every_module_has_a_row():
    assert set(modules()) == set(ALLOWED), "add the new module to ALLOWED and LAYER in tests/test_layers.py"
    assert set(LAYER) == set(ALLOWED)


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_the_table_points_only_down_the_picture(module):
    up = [m for m in ALLOWED[module][0].split() if LAYER[m] < LAYER[module]]
    assert not up, f"{module} (layer {LAYER[module]}) may not import {up}, which sit above it"


@pytest.mark.parametrize("module", modules())
def test_imports_follow_the_table(module):
    ours, outside, _ = imports_of(module)
    allowed_ours, allowed_outside = (set(s.split()) for s in ALLOWED[module])
    assert ours - {module} <= allowed_ours, f"{module} imports {sorted(ours - allowed_ours)}: not in its row"
    foreign = outside - allowed_outside - set(sys.stdlib_module_names)
    assert not foreign, f"{module} imports {sorted(foreign)}: not in its row"


def test_the_imports_have_no_cycle():
    graph = {m: imports_of(m)[0] - {m} for m in modules()}
    try:
        tuple(TopologicalSorter(graph).static_order())
    except CycleError as err:
        pytest.fail(f"import cycle: {' -> '.join(err.args[1])}")


@pytest.mark.parametrize("module", sorted(set(modules()) - MAY_PRINT))
def test_only_the_commands_print(module):
    tree = imports_of(module)[2]
    calls = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert "print" not in calls, f"{module} prints; return the result or use the 'rnnchar' logger"
