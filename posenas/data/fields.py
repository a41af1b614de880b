"""Typed access to fields of JSON records, with errors that name the file, record and field.

Every reader goes through these, so every malformed file gets the same kind of message:
``FILE: annotations[3] (id 17): field 'bbox': expected 4 numbers, got 3``.
"""

from __future__ import annotations

import math
from numbers import Real
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from posenas.errors import PosenasError


@dataclass(frozen=True)
class Where:
    """A record's location, for messages: the file, the list it sits in, its index and id."""

    path: Path
    section: str
    index: int | None = None
    record_id: Any = None

    def __str__(self) -> str:
        s = f"{self.path}: {self.section}"
        if self.index is not None:
            s += f"[{self.index}]"
        if self.record_id is not None:
            s += f" (id {self.record_id})"
        return s

    def error(self, field: str, message: str) -> PosenasError:
        return PosenasError(f"{self}: field {field!r}: {message}")

    def with_id(self, record_id: Any) -> "Where":
        return Where(self.path, self.section, self.index, record_id)


def require(rec: Any, field: str, where: Where) -> Any:
    if not isinstance(rec, dict):
        raise PosenasError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    if field not in rec:
        raise where.error(field, "missing")
    return rec[field]


def as_int(value: Any, field: str, where: Where) -> int:
    # JSON has no int/float distinction for 3.0, but bool is not an id.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise where.error(field, f"expected an integer, got {value!r}")
    return int(value)


def as_str(value: Any, field: str, where: Where) -> str:
    if not isinstance(value, str) or not value:
        raise where.error(field, f"expected a non-empty string, got {value!r}")
    return value


def is_number(value: Any) -> bool:
    """A JSON number (bool is not one)."""
    return isinstance(value, Real) and not isinstance(value, bool)


def as_number(value: Any, field: str, where: Where) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise where.error(field, f"expected a finite number, got {value!r}")
    return float(value)


def as_flag(value: Any, field: str, where: Where) -> bool:
    """A yes/no field as a JSON boolean or 0/1: COCO writes ``"iscrowd": 0``, PoseTrack18 ``"iscrowd": false``."""
    if isinstance(value, bool):
        return value
    if is_number(value) and value in (0, 1):
        return bool(value)
    raise where.error(field, f"expected true/false or 0/1, got {value!r}")


def as_numbers(value: Any, field: str, where: Where, count: int, what: str | None = None, dtype=np.float32) -> np.ndarray:
    """A flat list of exactly ``count`` finite numbers (float32 unless ``dtype`` says otherwise)."""
    expected = what or f"{count} numbers"
    if not isinstance(value, list):
        raise where.error(field, f"expected a list of {expected}, got {type(value).__name__}")
    if len(value) != count:
        raise where.error(field, f"expected {expected}, got {len(value)}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise where.error(field, f"expected {expected}, found {v!r}")
    return np.asarray(value, dtype=dtype)


def as_box(value: Any, field: str, where: Where) -> np.ndarray:
    """COCO ``x, y, w, h`` with positive width and height."""
    box = as_numbers(value, field, where, 4)
    if box[2] <= 0 or box[3] <= 0:
        raise where.error(field, f"negative or zero-size box {value} (w and h must be > 0)")
    return box


def as_visibility(values: np.ndarray, field: str, where: Where) -> np.ndarray:
    bad = ~np.isin(values, (0, 1, 2))
    if bad.any():
        j = int(np.argmax(bad))
        raise where.error(field, f"joint {j}: visibility must be 0, 1 or 2, got {values[j]:g}")
    return values


def as_list(value: Any, field: str, where: Where) -> list:
    if not isinstance(value, list):
        raise where.error(field, f"expected a list, got {type(value).__name__}")
    return value


def check_unique(ids: list[int], path: Path, section: str) -> None:
    """Duplicate ids are an error: name the first duplicate and both positions."""
    seen: dict[int, int] = {}
    for i, rid in enumerate(ids):
        if rid in seen:
            raise PosenasError(f"{path}: {section}[{i}]: duplicate id {rid} (first at {section}[{seen[rid]}])")
        seen[rid] = i
