"""JSON reading with located errors, and atomic writes (temp file + rename)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from posenas.errors import PosenasError


def read_text(path: str | os.PathLike, kind: str = "text") -> str:
    """A UTF-8 file's text; a missing, unreadable or undecodable file is a one-line error."""
    path = Path(path)
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PosenasError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise PosenasError(f"{path}: is a directory, expected a {kind} file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PosenasError(f"{path}: cannot read: {e}") from None


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; any failure names the file (and line/column for syntax errors)."""
    text = read_text(path, "JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise PosenasError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())  # the rename must not land before the bytes do
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = None) -> None:
    """Write JSON atomically: readers never see a half-written file."""
    text = json.dumps(obj, indent=indent, separators=None if indent else (",", ":"))
    _atomic_write(Path(path), (text + "\n").encode("utf-8"))


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write bytes atomically (temp file in the same folder, fsync, rename)."""
    _atomic_write(Path(path), data)


def write_text(path: str | os.PathLike, text: str) -> None:
    _atomic_write(Path(path), text.encode("utf-8"))


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """A JSON-lines file; a torn last line (a kill mid-append) is dropped, other bad lines are errors."""
    lines = [ln for ln in read_text(path, "JSON-lines").splitlines() if ln.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                break
            raise PosenasError(f"{path}: invalid JSON at line {i + 1}, column {e.colno}: {e.msg}") from None
    return out
