"""Solvers: one file each, found by name.  Adding a solver is adding one file here.

A solver file ``synth/solvers/<name>.py`` defines ``SOLVER = Solver(...)`` (see :mod:`synth.solvers.base`
for the one signature every solver shares and the denoiser convention).  :func:`names` lists the files
without importing them (the config checks and the CLI help read it: no torch import for ``--help``);
:func:`get` imports one and returns its :class:`~synth.solvers.base.Solver`.
"""
from __future__ import annotations

import importlib
import pkgutil
from functools import lru_cache

from synth.errors import SynthError

_NOT_SOLVERS = {"base"}
DEFAULT = "dpmpp_2m"


@lru_cache(maxsize=1)
def names() -> tuple[str, ...]:
    """Every solver name, the default first, then alphabetical."""
    found = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_SOLVERS)
    return tuple(sorted(found, key=lambda n: (n != DEFAULT, n)))


class UnknownSolverError(SynthError, ValueError):
    """Raised by :func:`get` for a name no file defines (callers turn it into their own one-line error)."""


def get(name: str):
    """The :class:`~synth.solvers.base.Solver` called ``name``."""
    if name not in names():
        raise UnknownSolverError(f"unknown sampler '{name}'; choose one of {', '.join(names())}")
    return importlib.import_module(f"{__name__}.{name}").SOLVER


def model_evals(name: str, steps: int) -> int:
    """Network evaluations per image for ``steps`` steps (without the doubling of guidance)."""
    return get(name).evals(steps)


def for_flow(name: str) -> str:
    """The solver a flow-matching model runs for ``name``: DDIM is a diffusion solver whose equal on the flow
    ODE is Euler (decided here, once, for training previews, exports and evaluation)."""
    return "euler" if name == "ddim" else name


def help_text() -> str:
    """For CLI help: the names, the default first."""
    return " | ".join(names())


__all__ = ["DEFAULT", "UnknownSolverError", "for_flow", "get", "help_text", "model_evals", "names"]
