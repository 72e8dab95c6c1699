"""ODE/SDE integrators: plain functions sharing one signature.

Convention (written once, here).  All integrators work on a *denoiser* in the
variance-exploding form ``x = x0 + sigma * eps``:

    predict(x, sigma, cond) -> x0_hat          x: (B, ...), sigma: (B,), x0_hat: (B, ...)

and walk a grid ``sigmas`` (1-D, any direction; decreasing = generate,
increasing = invert towards noise).  The probability-flow ODE is
``dx/dsigma = (x - x0_hat) / sigma``.

* A diffusion model with cumulative alphas ``abar`` maps to it by
  ``sigma = sqrt((1 - abar) / abar)`` and ``x_vp = x / sqrt(1 + sigma^2)``
  (see :mod:`samplers.schedules`); deterministic DDIM is exactly Euler here.
* A flow-matching model (t=0 noise, t=1 data, ``x_t = (1-t) x0 + t x1``,
  velocity ``v = x1 - x0``) maps to it by ``sigma = (1 - t) / t`` and
  ``x = x_t / t``, ``x0_hat = x_t + (1 - t) v``.

Classifier-free guidance: ``d = d_uncond + w (d_cond - d_uncond)``; ``w = 1`` is
no guidance (other codebases write ``(1 + w) c - w u``; their w is ours minus 1).
Conditional and unconditional predictions run in one batched call.

Every integrator: ``f(predict, x, sigmas, *, cond, uncond=None, guidance=1.0,
rng=None) -> x``.  ``rng`` is one ``torch.Generator`` per image (per-image
randomness: results never depend on batch composition); deterministic solvers
ignore it.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch

Predict = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def _cat_cond(cond: Any, uncond: Any) -> Any:
    if isinstance(cond, torch.Tensor):
        return torch.cat([cond, uncond])
    if isinstance(cond, dict):
        return {k: _cat_cond(cond[k], uncond[k]) for k in cond}
    raise TypeError(f"cannot batch conditions of type {type(cond).__name__}")


def _grid(sigmas: torch.Tensor | Sequence[float]) -> list[float]:
    """The sigma grid as Python floats (float64).

    Branches (``s == 0``) and step sizes are host arithmetic: a grid living on the
    GPU would cost one device sync per comparison per step.
    """
    return [float(v) for v in (sigmas.tolist() if isinstance(sigmas, torch.Tensor) else sigmas)]


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
    both = predict(torch.cat([x, x]), torch.cat([s, s]), _cat_cond(cond, uncond))
    c, u = both[:b], both[b:]
    return u + guidance * (c - u)


def _d(x, denoised, sigma):
    return (x - denoised) / sigma


def euler(predict: Predict, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any, uncond: Any = None,
          guidance: float = 1.0, rng: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """First-order Euler on the probability-flow ODE (== deterministic DDIM for eps models)."""
    sig = _grid(sigmas)
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        if s == 0:  # starting at the data end (inversion): nudge off sigma 0
            s = s_next * 1e-3
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        x = x + (s_next - s) * _d(x, den, s) if s_next != 0 else den
    return x


ddim = euler


def heun(predict: Predict, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any, uncond: Any = None,
         guidance: float = 1.0, rng: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Second-order Heun (EDM); Euler on the final step into sigma = 0."""
    sig = _grid(sigmas)
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        d = _d(x, den, s)
        if s_next == 0:
            x = den
            continue
        x_e = x + (s_next - s) * d
        d2 = _d(x_e, guided_denoise(predict, x_e, s_next, cond, uncond, guidance), s_next)
        x = x + (s_next - s) * (d + d2) / 2
    return x


def midpoint(predict: Predict, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any, uncond: Any = None,
             guidance: float = 1.0, rng: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Second-order explicit midpoint (geometric midpoint in sigma)."""
    sig = _grid(sigmas)
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        if s_next == 0:
            x = den
            continue
        s_mid = math.sqrt(s * s_next)
        x_m = x + (s_mid - s) * _d(x, den, s)
        x = x + (s_next - s) * _d(x_m, guided_denoise(predict, x_m, s_mid, cond, uncond, guidance), s_mid)
    return x


def dpmpp_2m(predict: Predict, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any, uncond: Any = None,
             guidance: float = 1.0, rng: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """DPM-Solver++(2M), multistep second order in log-SNR (lambda = -log sigma)."""
    sig = _grid(sigmas)
    old = None
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        if s_next == 0:
            x = den
            break
        h = math.log(s) - math.log(s_next)
        if old is None:
            d = den
        else:
            r = (math.log(sig[i - 1]) - math.log(s)) / h
            d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
        x = (s_next / s) * x - math.expm1(-h) * d
        old = den
    return x


def ancestral_noise(rng: Sequence[torch.Generator], shape: tuple, steps: int, device) -> torch.Tensor:
    """(B, steps, *shape) standard normal noise, image i's from ``rng[i]`` alone.

    Drawn once per call on the CPU (per-image generators keep batch composition out of
    the result) and copied to ``device`` in ONE transfer, not one per image per step.
    """
    return torch.stack([torch.randn((steps, *shape), generator=g, dtype=torch.float32) for g in rng]).to(device)


def euler_ancestral(predict: Predict, x: torch.Tensor, sigmas: torch.Tensor, *, cond: Any, uncond: Any = None,
                    guidance: float = 1.0, rng: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Ancestral Euler (eta = 1): stochastic, per-image noise from ``rng``."""
    if rng is None or len(rng) != x.shape[0]:
        raise ValueError("stochastic samplers need one torch.Generator per image (rng=[...], len == batch)")
    sig = _grid(sigmas)
    noise = ancestral_noise(rng, tuple(x.shape[1:]), len(sig) - 1, x.device).to(x.dtype)
    for i in range(len(sig) - 1):
        s, s_next = sig[i], sig[i + 1]
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        if s_next == 0:
            x = den
            continue
        sigma_up = math.sqrt(max(0.0, s_next**2 * (s**2 - s_next**2) / s**2))
        sigma_down = math.sqrt(s_next**2 - sigma_up**2)
        x = x + (sigma_down - s) * _d(x, den, s)
        x = x + noise[:, i] * sigma_up
    return x


SAMPLERS = {"euler": euler, "ddim": ddim, "heun": heun, "midpoint": midpoint, "dpmpp_2m": dpmpp_2m,
            "euler_ancestral": euler_ancestral}


def get_sampler(name: str):
    try:
        return SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown sampler '{name}'; choose one of {', '.join(SAMPLERS)}") from None


def model_evals(name: str, steps: int) -> int:
    """Network evaluations per image (without guidance doubling) for ``steps`` steps."""
    return {"heun": 2 * steps - 1, "midpoint": 2 * steps - 1}.get(name, steps)


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
           "flow_denoiser", "flow_sigma", "flow_time", "model_evals", "SAMPLERS"]
