"""YAML for configs, bounded: safe tags only, no alias explosion, no unbounded echo of values.

``yaml.safe_load`` never runs code, but a few hundred bytes of anchors and aliases can stand for
billions of values ("billion laughs"), and a few thousand brackets exceed Python's recursion
limit. `load_yaml` counts the values on the parsed node graph before building anything and
refuses documents beyond MAX_YAML_NODES, and flow brackets nested beyond MAX_FLOW_DEPTH before
PyYAML's scanner (slow on them) sees them; `shown` cuts any value echoed in an error short::

    raw = load_yaml("model: {hidden_sizes: &h [64, 64]}", where="--set")  # YamlRefused names `where`
"""

from __future__ import annotations

import re
import reprlib
from itertools import accumulate
from typing import Any

import yaml


class YamlRefused(ValueError):
    """Not YAML, not plain YAML, too big once expanded, or too deeply nested; the message says which."""


MAX_YAML_NODES = 10_000  # values in one YAML document once aliases are expanded; a config has ~50
MAX_FLOW_DEPTH = 50  # [ and { nested; PyYAML's scanner slows down with the square of this depth
_ECHO = reprlib.Repr()  # a value echoed in an error: at most ~100 characters, however big it is
_ECHO.maxlevel, _ECHO.maxlist, _ECHO.maxdict, _ECHO.maxtuple = 3, 8, 6, 8
_ECHO.maxstring, _ECHO.maxlong, _ECHO.maxother = 80, 40, 80


def shown(value: Any) -> str:
    """repr(value), cut short: an error never echoes a huge (or alias-expanded) value in full."""
    return _ECHO.repr(value)


def clipped(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text):,} characters)"


def _expanded_size(root: yaml.Node, where: str) -> int:
    """How many values (keys included) the document holds once aliases are expanded, counted on the
    node graph without expanding it; a document that contains itself is refused."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:  # iterative depth-first walk: no recursion, however deep the document
        node, finished = stack.pop()
        children = ([n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode)
                    else node.value if isinstance(node, yaml.SequenceNode) else [])
        if finished:
            open_nodes.discard(id(node))
            sizes[id(node)] = min(1 + sum(sizes[id(c)] for c in children), MAX_YAML_NODES + 1)
        elif id(node) in open_nodes:
            raise YamlRefused(f"{where}: a YAML alias refers to a value that contains it")
        elif id(node) not in sizes:
            open_nodes.add(id(node))
            stack.append((node, True))
            stack.extend((c, False) for c in children)
    return sizes[id(root)]


def load_yaml(text: str, where: str) -> Any:
    """yaml.safe_load, bounded: refuses a document of more than MAX_YAML_NODES values once aliases
    (``*name``) are expanded ("billion laughs"), and one nested deeper than the parser can follow."""
    brackets = re.sub(r"[^\[\]{}]", "", text)  # counted even inside quotes: a config has no such text
    if max(accumulate(1 if b in "[{" else -1 for b in brackets), default=0) > MAX_FLOW_DEPTH:
        raise YamlRefused(f"{where}: nested too deeply to be a config (more than {MAX_FLOW_DEPTH} levels of "
                          "[ or {)")
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, where) > MAX_YAML_NODES:
            raise YamlRefused(f"{where}: more than {MAX_YAML_NODES:,} values once YAML aliases (*name) are "
                              "expanded; a config holds a few dozen")
        return loader.construct_document(node)
    except yaml.constructor.ConstructorError as err:
        raise YamlRefused(f"{where}: unsupported YAML tag (plain YAML only): {err.problem}") from None
    except yaml.YAMLError as err:
        raise YamlRefused(f"{where}: not valid YAML: {clipped(str(err), 500)}") from None
    except RecursionError:
        raise YamlRefused(f"{where}: nested too deeply to be a config") from None
    except YamlRefused:
        raise
    except ValueError as err:  # e.g. an integer of more than 4300 digits
        raise YamlRefused(f"{where}: not a usable YAML value: {clipped(str(err), 200)}") from None
    finally:
        loader.dispose()
