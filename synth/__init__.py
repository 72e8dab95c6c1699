"""synth: labelled synthetic medical images.

One installed namespace: the core lives in this folder, and the repository's top-level ``trainers/`` and
``samplers/`` folders are its subpackages ``synth.trainers`` and ``synth.samplers`` (pyproject maps them
with setuptools ``package-dir``; an installed wheel holds them under ``synth/``).  Run from a checkout
without an install (``PYTHONPATH=<repo>``, a GPU machine), the finder below maps exactly those two names to
those folders, so a module is only ever imported under one name.
"""
import importlib.util as _util
import sys as _sys
from pathlib import Path as _Path

__version__ = "0.1.0"

_CHECKOUT = _Path(__file__).resolve().parent.parent
_FOLDERS = {f"{__name__}.{name}": _CHECKOUT / name for name in ("trainers", "samplers")}


class _CheckoutFolders:
    """Finds ``synth.trainers`` / ``synth.samplers`` in the top-level folders of the checkout this ``synth`` was
    imported from; their submodules then resolve inside those folders.  Asked before any other finder: with an
    editable install of ANOTHER clone active, ``synth`` from this clone must not run that clone's trainers."""

    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        folder = _FOLDERS.get(fullname)
        if folder is None or not (folder / "__init__.py").is_file():
            return None
        return _util.spec_from_file_location(fullname, folder / "__init__.py",
                                             submodule_search_locations=[str(folder)])


if (_CHECKOUT / "pyproject.toml").is_file() and not any(isinstance(f, type) and f.__name__ == "_CheckoutFolders"
                                                        for f in _sys.meta_path):
    _sys.meta_path.insert(0, _CheckoutFolders)
