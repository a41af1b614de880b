"""Validation of architecture JSON: every space parses its arch with these, so every bad
value fails the same way, with the field's path and the allowed values
(``arch.stages[2].groups: 7 does not divide the 80 channels of the grouped conv; allowed: 1, 2, 4, ...``).
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence

from posenas.errors import PosenasError


def is_int(value: Any) -> bool:
    """An integer, or a float with an integer value (JSON writers may emit 256.0); never a bool."""
    return (not isinstance(value, bool) and isinstance(value, (int, float))
            and math.isfinite(value) and float(value).is_integer())


def check_object(data: Any, where: str, allowed: Sequence[str], required: Sequence[str] = ()) -> dict:
    """A JSON object with only ``allowed`` keys and all ``required`` ones."""
    if not isinstance(data, dict):
        raise PosenasError(f"{where}: expected a JSON object, got {type(data).__name__}")
    for key in data:
        if key not in allowed:
            raise PosenasError(f"{where}: unknown key {key!r}; allowed: {', '.join(allowed)}")
    for key in required:
        if key not in data:
            raise PosenasError(f"{where}.{key}: missing")
    return data


def check_list(value: Any, field: str, what: str, length: int | None = None) -> list:
    """A JSON list (of ``length`` entries if given)."""
    if not isinstance(value, (list, tuple)):
        raise PosenasError(f"{field}: expected a list of {what}, got {type(value).__name__}")
    if length is not None and len(value) != length:
        raise PosenasError(f"{field}: expected {length} entries, got {len(value)}")
    return list(value)


def _allowed(values: Iterable[Any]) -> str:
    values = list(values)
    if len(values) > 12 and all(is_int(v) for v in values):
        step = values[1] - values[0]
        if all(b - a == step for a, b in zip(values, values[1:])):
            return f"{values[0]}, {values[1]}, ..., {values[-1]} (every {step})"
    return ", ".join(str(v) for v in values)


def check_int_choice(value: Any, field: str, allowed: Sequence[int]) -> int:
    """An integer from ``allowed``."""
    if not is_int(value) or int(value) not in allowed:
        raise PosenasError(f"{field}: {value!r} not allowed; allowed: {_allowed(allowed)}")
    return int(value)


def check_str_choice(value: Any, field: str, allowed: Sequence[str]) -> str:
    """A string from ``allowed``."""
    if not isinstance(value, str) or value not in allowed:
        raise PosenasError(f"{field}: {value!r} not allowed; allowed: {', '.join(map(repr, allowed))}")
    return value


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_groups(value: Any, field: str, channels: Sequence[int], what: str = "grouped conv") -> int:
    """A group number that divides every one of ``channels`` (the conv's input and output widths)."""
    common = math.gcd(*channels)
    if not is_int(value) or value < 1 or common % int(value):
        chans = " and ".join(str(c) for c in dict.fromkeys(channels))
        raise PosenasError(f"{field}: {value!r} does not divide the {chans} channels of the {what}; "
                           f"allowed: {_allowed(divisors(common))}")
    return int(value)
