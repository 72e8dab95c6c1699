"""The solvers as the samplers use them, and the flow-matching time change.

The solvers themselves live one per file in :mod:`synth.solvers` (the convention, the shared signature
and guidance are written once in :mod:`synth.solvers.base`); this module keeps their old import names.
A flow-matching model (t=0 noise, t=1 data, ``x_t = (1-t) x0 + t x1``, velocity ``v = x1 - x0``) maps
to the solvers' variance-exploding denoiser by ``sigma = (1 - t) / t`` and ``x = x_t / t``,
``x0_hat = x_t + (1 - t) v`` (:func:`flow_denoiser`).
"""
from __future__ import annotations

from typing import Any, Callable

import torch

from synth import solvers
from synth.solvers.base import Predict, ancestral_noise, guided_denoise  # noqa: F401  (old import names)
from synth.solvers.ddim import ddim  # noqa: F401
from synth.solvers.dpmpp_2m import dpmpp_2m  # noqa: F401
from synth.solvers.euler import euler  # noqa: F401
from synth.solvers.euler_ancestral import euler_ancestral  # noqa: F401
from synth.solvers.heun import heun  # noqa: F401
from synth.solvers.midpoint import midpoint  # noqa: F401


SAMPLERS = {name: solvers.get(name).fn for name in solvers.names()}  # every file in synth.solvers


def get_sampler(name: str):
    """The solver function called ``name`` (ValueError naming the choices otherwise)."""
    return solvers.get(name).fn


def model_evals(name: str, steps: int) -> int:
    """Network evaluations per image (without guidance doubling) for ``steps`` steps."""
    return solvers.model_evals(name, steps)


def flow_sigma(t: torch.Tensor) -> torch.Tensor:
    """Flow-matching time t (0 noise, 1 data) -> sigma = (1 - t) / t."""
    return (1 - t) / t


def flow_time(sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`flow_sigma`: t = 1 / (1 + sigma)."""
    return 1 / (1 + sigma)


def flow_denoiser(velocity: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]) -> Predict:
    """Wrap ``velocity(x_t, t, cond)`` (v = x1 - x0) as a VE denoiser ``predict(x, sigma, cond)``."""

    def predict(x, sigma, cond):
        t = flow_time(sigma).to(x.dtype)
        tb = t.view(-1, *([1] * (x.ndim - 1)))
        x_t = x * tb
        return x_t + (1 - tb) * velocity(x_t, t, cond)

    return predict


__all__ = ["euler", "ddim", "heun", "midpoint", "dpmpp_2m", "euler_ancestral", "get_sampler", "guided_denoise",
           "flow_denoiser", "flow_sigma", "flow_time", "model_evals", "SAMPLERS", "Predict", "ancestral_noise"]
