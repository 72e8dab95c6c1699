"""What every solver shares: the denoiser convention, guidance, the grid, and the :class:`Solver` record.

Convention (written once, here).  Every solver works on a *denoiser* in the variance-exploding form
``x = x0 + sigma * eps``:

    predict(x, sigma, cond) -> x0_hat          x: (B, ...), sigma: (B,), x0_hat: (B, ...)

and walks a grid ``sigmas`` (1-D, any direction; decreasing = generate, increasing = invert towards
noise).  The probability-flow ODE is ``dx/dsigma = (x - x0_hat) / sigma``.  A diffusion model maps to it
through its noise schedule (:class:`synth.paths.DiffusionPath`), a flow-matching model through
``sigma = (1 - t) / t`` (:class:`synth.paths.FlowPath`); deterministic DDIM is exactly Euler.

Classifier-free guidance: ``d = d_uncond + w (d_cond - d_uncond)``; ``w = 1`` is no guidance (other
codebases write ``(1 + w) c - w u``; their w is ours minus 1).  Conditional and unconditional predictions
run in one batched call.

Every solver: ``f(predict, x, sigmas, *, cond, uncond=None, guidance=1.0, rng=None) -> x``.  ``rng`` is one
``torch.Generator`` per image (per-image randomness: results never depend on batch composition);
deterministic solvers ignore it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

Predict = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


@dataclass(frozen=True)
class Solver:
    """A solver and what the engine must know of it without running it."""

    name: str
    fn: Callable  # f(predict, x, sigmas, *, cond, uncond=None, guidance=1.0, rng=None) -> x
    evals_per_step: int = 1  # network evaluations per step (the last step into sigma 0 costs one)
    stochastic: bool = False  # draws noise from ``rng`` (one generator per image)
    summary: str = ""

    def evals(self, steps: int) -> int:
        """Network evaluations per image for ``steps`` steps, without guidance doubling."""
        return self.evals_per_step * steps - (self.evals_per_step - 1)


def cat_cond(cond: Any, uncond: Any) -> Any:
    """Conditional and unconditional conditions stacked along the batch (tensors, or dicts of them)."""
    if isinstance(cond, torch.Tensor):
        return torch.cat([cond, uncond])
    if isinstance(cond, dict):
        return {k: cat_cond(cond[k], uncond[k]) for k in cond}
    raise TypeError(f"cannot batch conditions of type {type(cond).__name__}")


def grid(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """The sigma grid as Python floats (float64).

    Branches (``s == 0``) and step sizes are host arithmetic: a grid living on the GPU would cost one
    device sync per comparison per step.
    """
    return [float(v) for v in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]


def intervals(sigmas: torch.Tensor | Sequence[float]) -> list[tuple[int, float, float]]:
    """(i, sigma_i, sigma_i+1) of each step of the grid, host floats (see :func:`grid`)."""
    sig = grid(sigmas)
    return [(i, sig[i], sig[i + 1]) for i in range(len(sig) - 1)]


def guided_denoise(predict: Predict, x: torch.Tensor, sigma: float | torch.Tensor, cond: Any, uncond: Any,
                   guidance: float) -> torch.Tensor:
    """Denoised estimate with classifier-free guidance, (B, ...) -> (B, ...).

    ``sigma`` is a float (or scalar tensor); conditional and unconditional halves share one call.
    """
    b = x.shape[0]
    if isinstance(sigma, torch.Tensor) and sigma.ndim == 1:
        s = sigma.to(x.device, x.dtype)
    else:
        s = torch.full((b,), float(sigma), device=x.device, dtype=x.dtype)  # a fill kernel, no host copy
    if uncond is None or guidance == 1.0:
        return predict(x, s, cond)
    both = predict(torch.cat([x, x]), torch.cat([s, s]), cat_cond(cond, uncond))
    c, u = both[:b], both[b:]
    return u + guidance * (c - u)


def slope(x: torch.Tensor, denoised: torch.Tensor, sigma: float) -> torch.Tensor:
    """dx/dsigma of the probability-flow ODE, (B, ...)."""
    return (x - denoised) / sigma


def ancestral_noise(rng: Sequence[torch.Generator], shape: tuple, steps: int, device) -> torch.Tensor:
    """(B, steps, *shape) standard normal noise, image i's from ``rng[i]`` alone.

    Drawn once per call on the CPU (per-image generators keep batch composition out of the result) and
    copied to ``device`` in ONE transfer, not one per image per step.
    """
    return torch.stack([torch.randn((steps, *shape), generator=g, dtype=torch.float32) for g in rng]).to(device)


__all__ = ["Predict", "Solver", "ancestral_noise", "cat_cond", "grid", "guided_denoise", "intervals", "slope"]
