"""The files shipped with rnnchar, found from any directory: the bundled configs and sentence corpus.

    path = find_config("lstm.yaml")   # a file of that name in the cwd first, else configs/lstm.yaml
    text_path = bundled_corpus_path()  # corpora/sentences.txt: the corpus when data.corpus is null

Installed, they are the data packages rnnchar.configs and rnnchar.corpora; in a source checkout or
an editable install, the top-level configs/ and corpora/ folders (pyproject.toml maps one onto the
other). config.resolve_config_path turns NoSuchConfig into a ConfigError. Only the standard library
is imported here.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from pathlib import Path


class NoSuchConfig(ValueError):
    """`--config NAME` names neither a YAML file nor a bundled config; the message says what there is."""


def _dir_of(package: str, top_level: str) -> Path:
    """The folder of a bundled data package: installed (also as a namespace package) or source tree."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    found = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    fallback = Path(__file__).resolve().parent.parent / top_level  # editable install, source checkout
    return next((p for p in found if p.is_dir()), fallback)


def bundled_config_dir() -> Path:
    """Folder of the bundled ``*.yaml`` configs (``--config lstm.yaml`` works from anywhere)."""
    return _dir_of("rnnchar.configs", "configs")


def bundled_corpus_path() -> Path:
    """The bundled training text, used when ``data.corpus`` is null."""
    return _dir_of("rnnchar.corpora", "corpora") / "sentences.txt"


def find_config(name: str) -> Path:
    """An existing file (relative to the cwd) first, then a bundled config, with or without .yaml."""
    given = Path(os.path.expanduser(name))
    if given.is_file():
        return given.resolve()
    if given.is_dir():
        raise NoSuchConfig("is a directory, not a YAML file")
    bundled = bundled_config_dir()
    for candidate in (bundled / name, bundled / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    names = sorted(p.name for p in bundled.glob("*.yaml")) if bundled.is_dir() else []
    close = difflib.get_close_matches(Path(name).stem, [Path(n).stem for n in names], n=1)  # lstn: lstm
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise NoSuchConfig(f"no such file and no bundled config of that name (bundled configs: "
                       f"{', '.join(names) or 'none'}){hint}")
