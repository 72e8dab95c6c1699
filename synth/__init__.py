"""synth: labelled synthetic medical images.

One installed namespace: the core lives in this folder, and the repository's top-level ``trainers/`` and
``samplers/`` folders are its subpackages ``synth.trainers`` and ``synth.samplers`` (pyproject maps them
with setuptools ``package-dir``; an installed wheel holds them under ``synth/``).  Run from a checkout
(``PYTHONPATH=<repo>``, a GPU machine without an install), the lines below make the same names resolve
to those folders, so a module is only ever imported under one name.
"""
from pathlib import Path as _Path

__version__ = "0.1.0"

_checkout = _Path(__file__).resolve().parent.parent
if (_checkout / "pyproject.toml").is_file() and (_checkout / "trainers" / "__init__.py").is_file():
    # synth.trainers -> <repo>/trainers, synth.samplers -> <repo>/samplers
    __path__.append(str(_checkout))  # noqa: F821  (a package's __path__)
del _Path, _checkout
