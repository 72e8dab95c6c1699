"""Adapters from discrete diffusion models to the VE denoiser of :mod:`synth.samplers.integrators`.

A diffusers-style model sees ``x_vp = sqrt(abar) x0 + sqrt(1 - abar) eps`` at an
integer timestep.  In VE form ``x = x_vp / sqrt(abar)`` and
``sigma = sqrt((1 - abar) / abar)``.  Timesteps between grid points (Heun's
second evaluation) are interpolated linearly in log-sigma.
"""
from __future__ import annotations

import numpy as np
import torch


def sigmas_from_alphas(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """(T,) cumulative alphas -> (T,) sigmas, increasing with the timestep."""
    a = alphas_cumprod.double()
    return ((1 - a) / a).sqrt()


def sigma_to_t(sigma: torch.Tensor, model_sigmas: torch.Tensor, log_sigmas: torch.Tensor | None = None) -> torch.Tensor:
    """Continuous timestep for each sigma (B,) by log-sigma interpolation on the grid (T,).

    ``log_sigmas``: ``model_sigmas.log()`` already on ``sigma``'s device (callers cache it:
    a copy per network call would cost a host-to-device transfer every step).
    """
    if log_sigmas is None:
        log_sigmas = model_sigmas.log().to(sigma.device)
    ls = sigma.double().clamp(min=float(model_sigmas[0])).log()
    idx = torch.searchsorted(log_sigmas, ls).clamp(1, len(log_sigmas) - 1)
    lo, hi = log_sigmas[idx - 1], log_sigmas[idx]
    w = ((ls - lo) / (hi - lo)).clamp(0, 1)
    return (idx - 1).double() + w


def timestep_grid(num_train_timesteps: int, steps: int, spacing: str = "linspace") -> np.ndarray:
    """Integer timesteps, decreasing, as diffusers' schedulers space them."""
    T = num_train_timesteps
    if spacing == "linspace":
        return np.linspace(0, T - 1, steps + 1).round()[::-1][:-1].astype(np.int64)
    if spacing == "leading":
        ratio = T // steps
        return (np.arange(0, steps) * ratio).round()[::-1].astype(np.int64)
    if spacing == "trailing":
        return np.round(np.arange(T, 0, -T / steps)).astype(np.int64) - 1
    raise ValueError(f"unknown timestep spacing '{spacing}'; use linspace, leading or trailing")


def sampling_sigmas(alphas_cumprod: torch.Tensor, steps: int, spacing: str = "linspace") -> torch.Tensor:
    """(steps + 1,) sigmas for generation: the grid timesteps' sigmas, then 0."""
    model_sigmas = sigmas_from_alphas(alphas_cumprod)
    ts = timestep_grid(len(alphas_cumprod), steps, spacing)
    return torch.cat([model_sigmas[torch.from_numpy(ts.copy())], torch.zeros(1, dtype=torch.float64)]).float()


def diffusion_denoiser(model_fn, alphas_cumprod: torch.Tensor, prediction_type: str):
    """Wrap ``model_fn(x_vp, t, cond) -> eps | v`` as ``predict(x, sigma, cond) -> x0_hat``.

    x: (B, C, H, W) in VE form; sigma: (B,); t passed to the model: (B,) float timesteps.
    """
    model_sigmas = sigmas_from_alphas(alphas_cumprod)
    if prediction_type not in ("epsilon", "v_prediction", "sample"):
        raise ValueError(f"unsupported prediction_type '{prediction_type}'")

    log_by_device: dict[torch.device, torch.Tensor] = {}

    def predict(x, sigma, cond):
        sig = sigma.to(torch.float32).view(-1, *([1] * (x.ndim - 1)))
        scale = 1 / (1 + sig**2).sqrt()  # sqrt(abar)
        x_vp = x * scale
        if sigma.device not in log_by_device:
            log_by_device[sigma.device] = model_sigmas.log().to(sigma.device)
        t = sigma_to_t(sigma, model_sigmas, log_by_device[sigma.device]).to(x.device, torch.float32)
        out = model_fn(x_vp, t, cond).to(x.dtype)
        if prediction_type == "epsilon":
            return x - sig * out
        if prediction_type == "v_prediction":
            # x0 = sqrt(abar) x_vp - sqrt(1 - abar) v, with sqrt(1-abar) = sig * scale
            return scale * x_vp - sig * scale * out
        return out

    return predict


def init_noise_scale(sigmas: torch.Tensor) -> float:
    """Scale of the starting noise in VE form: sqrt(1 + sigma_max^2) (a unit-variance VP start)."""
    return float((1 + sigmas[0].double() ** 2).sqrt())
