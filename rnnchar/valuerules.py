"""Value checks for config keys: each returns the (coerced) value or raises Bad(what was expected).

    POS_INT(3)            # 3
    POS_FLOAT("1e-3")     # 0.001: YAML 1.1 reads 1e-3 as text

config.py declares every key with one of these beside its default and help.
"""

from __future__ import annotations

import math
import re
from typing import Any


class Bad(Exception):
    """Raised by a value check; carries what was expected."""


# -- value checks: each returns the (coerced) value or raises Bad(expected) --

NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def rule(ok, what: str, convert=lambda v: v):
    """A check: ``convert`` the value, then require ``ok``; any failure raises Bad(what)."""
    def check(v: Any) -> Any:
        try:
            v = convert(v)
            good = ok(v)
        except (TypeError, ValueError, OverflowError):
            good = False
        if not good:
            raise Bad(what)
        return v
    return check


def is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)  # YAML `yes` is a bool, not 1


def to_float(v: Any) -> float:
    """int -> float; also a numeric string, since YAML 1.1 reads `1e-3` as text. Bools refused."""
    if isinstance(v, bool) or not isinstance(v, (int, float, str)) or (
            isinstance(v, str) and not NUMBER.fullmatch(v.strip())):
        raise TypeError(v)
    return float(v)


def int_rule(minimum: int, what: str):
    return rule(lambda v: is_int(v) and v >= minimum, what)


def float_rule(ok, what: str):
    return rule(lambda v: math.isfinite(v) and ok(v), what, to_float)


def choice(*options: str):
    return rule(lambda v: v in options, "one of " + ", ".join(options))


POS_INT, NONNEG_INT = int_rule(1, "a positive integer"), int_rule(0, "a non-negative integer")
OFF_INT = int_rule(0, "a non-negative integer (0 = off)")
POS_FLOAT = float_rule(lambda x: x > 0, "a positive number")
NONNEG_FLOAT = float_rule(lambda x: x >= 0, "a non-negative number")
ANY_FLOAT = float_rule(lambda x: True, "a number")
PROBABILITY = float_rule(lambda x: 0 <= x < 1, "a number in [0, 1)")
SIZES = rule(lambda v: len(v) > 0 and all(is_int(x) and x >= 1 for x in v), "a non-empty list of positive "
              "integers", lambda v: list(v) if isinstance(v, (list, tuple)) else None)


def auto_or(check, what: str):
    """A check that also takes the text ``auto`` (resolved later, by whoever knows the run)."""
    def checked(v: Any) -> Any:
        if v == "auto":
            return v
        try:
            return check(v)
        except Bad:
            raise Bad(what) from None
    return checked


BATCH_TOKENS = auto_or(NONNEG_INT, "auto or a non-negative integer (0 = off)")
WORKERS = auto_or(POS_INT, "auto or a positive integer")
DROPOUT = auto_or(PROBABILITY, "auto or a number in [0, 1)")
PATH = rule(lambda v: v is None or (isinstance(v, str) and v != ""), "null or a path string")
