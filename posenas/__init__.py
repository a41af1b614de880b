"""posenas: search, train, evaluate, export and run efficient 2D human-pose networks."""

__version__ = "0.1.0"

#: The Python API (:mod:`posenas.api`), imported on first use so that ``import posenas``
#: (and the CLI's start-up) stays fast: torch loads only when a verb is called.
_API = ("load", "Predictor", "Pose", "evaluate", "profile", "build_model", "load_arch", "compare",
        "resolve_config")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from posenas import api

        return getattr(api, name)
    raise AttributeError(f"module 'posenas' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
