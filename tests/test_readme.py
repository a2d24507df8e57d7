"""The README's promises: its Python examples run, its config table matches the code."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rnnchar.config import describe_keys
from rnnchar.graph import OPS

README = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
EXAMPLES = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_the_library_examples():
    assert len(EXAMPLES) >= 3  # walk-through, XOR, character model


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code):
    exec(compile(code, "README.md", "exec"), {})  # each example asserts its own outcome


def test_readme_documents_every_config_key():
    for key, default, _ in describe_keys():
        assert f"| `{key}` | `{default}` |" in README, key


def test_readme_names_the_two_fresh_machine_commands():
    assert "make train" in README and "make test" in README


def test_readme_lists_every_graph_op():
    ops = README[README.index("Ops: "):README.index("The character model and its cells")]
    assert [op for op in OPS if f"`{op}`" not in ops] == []
