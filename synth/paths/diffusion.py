"""The discrete diffusion path (DDPM schedule), for training and for sampling.

Training (VP form, diffusers' convention): ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps`` at an integer
timestep t; the network predicts ``eps`` or ``v = sqrt(abar) eps - sqrt(1 - abar) x0``; Min-SNR-gamma
weights the loss.  Sampling (VE form, :mod:`synth.solvers.base`): ``x = x_t / sqrt(abar)`` and
``sigma = sqrt((1 - abar) / abar)``; timesteps between grid points (Heun's second evaluation) are
interpolated linearly in log-sigma.  :class:`DiffusionPath` holds the schedule and does both.
"""
from __future__ import annotations

import numpy as np
import torch

from synth import solvers


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


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float | None, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weight (B,) of Min-SNR-gamma (Hang et al. 2023); ones when gamma is None."""
    if gamma is None:
        return torch.ones(t.shape, dtype=torch.float32, device=t.device)
    a = alphas_cumprod[t].float()
    snr = a / (1 - a)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


class DiffusionPath(torch.nn.Module):
    """A DDPM schedule (``alphas_cumprod``, kept in the dtype given) with its prediction type.

    A module only so that its schedule follows the objective to the GPU (a non-persistent buffer: never in
    a checkpoint).  Training: :meth:`add_noise`, :meth:`target`, :meth:`loss_weight`.  Sampling:
    :meth:`sampling_sigmas`, :meth:`denoiser`, :meth:`init_noise_scale`.
    """

    def __init__(self, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                 min_snr_gamma: float | None = None, spacing: str = "linspace"):
        super().__init__()
        self.register_buffer("alphas_cumprod", alphas_cumprod, persistent=False)
        self.prediction_type, self.min_snr_gamma, self.spacing = prediction_type, min_snr_gamma, spacing

    @property
    def num_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    # -- training -----------------------------------------------------------------
    def _abar(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod[t].view(-1, *([1] * (like.ndim - 1))).to(like.dtype)

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0, noise: (B, c, h, w); t: (B,) int timesteps -> x_t (B, c, h, w) = sqrt(abar) x0 + sqrt(1 - abar) eps."""
        a = self._abar(t, x0)
        return a.sqrt() * x0 + (1 - a).sqrt() * noise

    def target(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network learns to output at (x_t, t): eps, or v = sqrt(abar) eps - sqrt(1 - abar) x0."""
        if self.prediction_type == "epsilon":
            return noise
        a = self._abar(t, x0)
        return a.sqrt() * noise - (1 - a).sqrt() * x0

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """(B,) per-sample weight: Min-SNR-gamma, or ones."""
        return min_snr_weight(self.alphas_cumprod, t, self.min_snr_gamma, self.prediction_type)

    # -- sampling ------------------------------------------------------------------
    def sampling_sigmas(self, steps: int) -> torch.Tensor:
        """(steps + 1,) the VE sigma grid of a generation, ending at 0 (on the CPU: host-side steps)."""
        return sampling_sigmas(self.alphas_cumprod, steps, self.spacing)

    def denoiser(self, model_fn):
        """``model_fn(x_vp, t, cond) -> eps | v`` as the solvers' ``predict(x, sigma, cond) -> x0_hat``."""
        return diffusion_denoiser(model_fn, self.alphas_cumprod, self.prediction_type)

    @staticmethod
    def init_noise_scale(sigmas: torch.Tensor) -> float:
        return init_noise_scale(sigmas)

    @staticmethod
    def solver_name(name: str) -> str:
        """The solver this path runs for ``name`` (every solver is a diffusion solver)."""
        return name

    def generate(self, network, x0: torch.Tensor, steps: int, *, sampler: str, cond, uncond=None,
                 guidance: float = 1.0, rng=None) -> torch.Tensor:
        """Standard normal noise x0 (B, c, h, w) -> samples (B, c, h, w) in ``steps`` solver steps.

        ``network(x_vp, t, cond) -> eps | v``: the UNet at integer timestep t (what it was trained on)."""
        sigmas = self.sampling_sigmas(steps)  # stays on the CPU: host-side grid
        x = x0 * self.init_noise_scale(sigmas)
        return solvers.get(sampler).fn(self.denoiser(network), x, sigmas, cond=cond, uncond=uncond,
                                       guidance=guidance, rng=rng)


__all__ = ["DiffusionPath", "diffusion_denoiser", "init_noise_scale", "min_snr_weight", "sampling_sigmas",
           "sigma_to_t", "sigmas_from_alphas", "timestep_grid"]
