"""JSON reading with located errors, atomic writes (temp file + rename), and append-only
JSON-lines logs that survive a crash mid-append."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable

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


def _parse_jsonl(path: str | os.PathLike) -> tuple[list[Any], bool]:
    """(records, intact): ``intact`` is False when the last line is torn (unparseable or
    missing its newline), as a kill mid-append leaves it; other bad lines are errors."""
    text = read_text(path, "JSON-lines")
    lines = [ln for ln in text.splitlines() if ln.strip()]
    out = []
    for i, line in enumerate(lines):
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            if i == len(lines) - 1:
                return out, False
            raise PosenasError(f"{path}: invalid JSON at line {i + 1}, column {e.colno}: {e.msg}") from None
    return out, text == "" or text.endswith("\n")


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """A JSON-lines file; a torn last line (a kill mid-append) is dropped, other bad lines are errors."""
    return _parse_jsonl(path)[0]


class JsonlLog:
    """An append-only JSON-lines file (``metrics.jsonl``, ``candidates.jsonl``): the one way
    the project appends records.

    Why: a crash mid-append tears the last line; appending after it would bury the torn line
    mid-file, where the next reader fails. Opening reads the file back (:func:`read_jsonl`)
    and, if its last line was torn or ``keep`` drops records (a resumed run redoes the steps
    after its checkpoint), rewrites the kept records atomically first. ``fresh`` starts an
    empty file. :attr:`records` holds what was kept; :meth:`append` writes one flushed line.
    """

    def __init__(self, path: str | os.PathLike, keep: Callable[[Any], bool] | None = None, fresh: bool = False):
        self.path = Path(path)
        self.records: list[Any] = []
        if fresh:
            write_text(self.path, "")
            return
        if not self.path.exists():
            return
        records, intact = _parse_jsonl(self.path)
        self.records = [r for r in records if keep(r)] if keep is not None else records
        if not intact or len(self.records) != len(records):
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, record: Any) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


#: The temp files :func:`_atomic_write` makes (``.NAME.XXXXXXXX.tmp``), left behind by a kill mid-write.
_TEMP_NAME = re.compile(r"\..+\.[A-Za-z0-9_]{6,}\.tmp")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files that writes killed midway (``kill -9``) left in ``folder``; call it
    only on a folder no other process writes to (a run being resumed or started). Returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if _TEMP_NAME.fullmatch(p.name) and p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def is_stale_temp(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named as the temp file of an atomic write."""
    return bool(_TEMP_NAME.fullmatch(Path(path).name))
