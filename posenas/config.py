"""Typed configuration trees: dataclasses in code, YAML on disk.

:func:`from_dict` builds a dataclass tree from plain data and rejects unknown keys and
values of the wrong type with a message naming the dotted path
(``config.optim.lr: expected a number, got 'fast'``). :func:`apply_overrides` takes
``key.sub=value`` strings from the command line (values parsed as YAML). :func:`to_dict`
gives back the plain form that is written, resolved, into every run directory.
"""

from __future__ import annotations

import dataclasses
import re
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from posenas.errors import PosenasError
from posenas.jsonio import is_stale_temp, read_text, remove_stale_temps, write_bytes

T = TypeVar("T")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin in (tuple, list):
        return f"a list of {_type_name(get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string", dict: "a mapping"}.get(
        tp, getattr(tp, "__name__", str(tp))
    )


def _convert(value: Any, tp: Any, path: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, path)
            except PosenasError:
                if len([a for a in args if a is not type(None)]) == 1:
                    raise
        raise PosenasError(f"{path}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise PosenasError(f"{path}: {value!r} not allowed; allowed: {', '.join(repr(a) for a in get_args(tp))}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, path)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise PosenasError(f"{path}: expected {_type_name(tp)}, got {value!r}")
        inner = get_args(tp)[0]
        items = [_convert(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise PosenasError(f"{path}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _SCIENTIFIC.fullmatch(value.strip()):
            return float(value)  # YAML 1.1 reads 1e-6 (no dot) as a string
    elif tp is str:
        if isinstance(value, str):
            return value
    raise PosenasError(f"{path}: expected {_type_name(tp)}, got {value!r}")


_SCIENTIFIC = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def from_dict(cls: type[T], data: Any, path: str = "config") -> T:
    """Build dataclass ``cls`` from plain data; unknown keys and wrong types are errors."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise PosenasError(f"{path}: expected a mapping, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise PosenasError(f"{path}.{unknown[0]}: unknown key; allowed: {', '.join(fields)}")
    hints = get_type_hints(cls)
    kwargs = {name: _convert(value, hints[name], f"{path}.{name}") for name, value in data.items()}
    try:
        return cls(**kwargs)
    except PosenasError:
        raise
    except (TypeError, ValueError) as e:
        raise PosenasError(f"{path}: {e}") from None


def to_dict(obj: Any) -> Any:
    """Plain data (dicts, lists, scalars) of a dataclass tree, for YAML / JSON / checkpoints."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def read_yaml(path: str | Path) -> Any:
    text = read_text(path, "YAML")
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PosenasError(f"{path}: invalid YAML{where}: {getattr(e, 'problem', None) or e}") from None


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``["optim.lr=0.01", "train.epochs=2"]`` applied to nested plain data (values parsed as YAML)."""
    data = dict(data or {})
    for item in overrides:
        if "=" not in item:
            raise PosenasError(f"override {item!r}: expected KEY=VALUE such as optim.lr=0.001")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            child = node.get(part)
            node[part] = dict(child) if isinstance(child, dict) else {}
            node = node[part]
        node[parts[-1]] = value
    return data


def load_config(cls: type[T], path: str | Path | None, overrides: list[str] = ()) -> T:
    """Read a YAML config (or start from defaults), apply overrides, validate into ``cls``."""
    data = read_yaml(path) if path is not None else {}
    if data is not None and not isinstance(data, dict):
        raise PosenasError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    data = apply_overrides(data or {}, list(overrides))
    try:
        return from_dict(cls, data, "config")
    except PosenasError as e:
        raise PosenasError(f"{path}: {e}" if path is not None else str(e)) from None


def write_yaml(path: str | Path, data: Any) -> None:
    write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode("utf-8"))


def _same_run(saved: Any, config: dict) -> bool:
    """Whether a saved ``config.yaml`` is this run's config (``train.device`` may differ: a resumed
    command may move the run to another device)."""

    def strip(c: Any) -> Any:
        if not isinstance(c, dict):
            return c
        train = c.get("train")
        return {**c, "train": {k: v for k, v in train.items() if k != "device"}} if isinstance(train, dict) else c

    return strip(saved) == strip(yaml.safe_load(yaml.safe_dump(config, sort_keys=False)))


def check_resume_command(out: str | Path, command: str) -> None:
    """``--resume`` of ``out`` by ``command`` (``train`` or ``search``): the folder must hold a run
    that command continues (a search's config has a ``search`` section), else say which does."""
    out = Path(out)
    saved_path = out / "config.yaml"
    if not saved_path.is_file():
        raise PosenasError(f"{out}: nothing to resume (no config.yaml); start it without --resume")
    saved = read_yaml(saved_path)
    if not isinstance(saved, dict):
        raise PosenasError(f"{saved_path}: not a posenas run config (expected a mapping)")
    holds = "search" if "search" in saved else "train"
    if holds != command:
        raise PosenasError(f"{out}: holds a {'search' if holds == 'search' else 'training run'}, which "
                           f"`posenas {command}` does not continue; resume it with posenas {holds} --resume --out {out}")


def open_run_dir(out: str | Path, config: dict, resume: bool, leftovers: tuple[str, ...] = (),
                 write: bool = True) -> None:
    """The one check of every run directory (``train`` and each search) before it is used, so
    that no command overwrites another run's, a search's or a user's files.

    A new run needs ``out`` absent or empty, or holding only the start of the very same run
    (its ``config.yaml`` equal to ``config``, and besides only the files named in
    ``leftovers`` or empty folders: a start killed before anything worth keeping was written).
    ``resume`` needs a ``config.yaml``. Anything else is an error that says what to do. Temp
    files of writes killed midway are deleted from ``out`` and ``out/checkpoints``. With
    ``write``, a new run's ``config.yaml`` is written. Call it on rank 0 only: other ranks may
    look after rank 0 wrote."""
    out = Path(out)
    saved_path = out / "config.yaml"
    if resume:
        check_resume_command(out, "search" if "search" in config else "train")
    elif out.exists():
        if not out.is_dir():
            raise PosenasError(f"{out}: is a file, not a run folder; choose another --out")
        entries = sorted(p for p in out.iterdir() if not is_stale_temp(p))
        if entries:
            saved = read_yaml(saved_path) if saved_path.is_file() else None
            rest = [p for p in entries if p != saved_path and not (p.name in leftovers and p.is_file())
                    and not (p.is_dir() and not any(q for q in p.iterdir() if not is_stale_temp(q)))]
            if saved is None or not _same_run(saved, config) or rest:
                raise PosenasError(_occupied(out, saved, entries))
    for folder in (out, out / "checkpoints"):
        remove_stale_temps(folder)
    if write and not resume:
        write_yaml(saved_path, config)


def remove_run_start(out: str | Path, files: tuple[str, ...]) -> None:
    """Undo a new run's start that failed before anything worth resuming: delete ``files``
    (relative to ``out``), then every folder under ``out`` and ``out`` itself that is left
    empty. A folder left holding the start's config.yaml would refuse the corrected retry."""
    out = Path(out)
    for name in files:
        (out / name).unlink(missing_ok=True)
    folders = sorted((p for p in out.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)) if out.is_dir() else []
    for folder in [*folders, out]:
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass


def _occupied(out: Path, saved: Any, entries: list[Path]) -> str:
    """Why ``out`` cannot take a new run, and the commands that can go on from there."""
    if isinstance(saved, dict):
        what, command = ("search", "search") if "search" in saved else ("run", "train")
        return (f"{out}: holds a {what} already; pass --resume to continue it (posenas {command} --resume "
                f"--out {out}), or choose another --out, or remove the folder")
    names = ", ".join(p.name for p in entries[:3]) + (", ..." if len(entries) > 3 else "")
    return (f"{out}: holds files of no posenas run ({names}); choose another --out (a new or empty folder) "
            "or remove them")


__all__ = ["from_dict", "to_dict", "read_yaml", "apply_overrides", "load_config", "write_yaml", "open_run_dir",
           "check_resume_command", "remove_run_start"]
