"""posenas: search, train, evaluate, export and run efficient 2D human-pose networks."""

__version__ = "0.1.0"
