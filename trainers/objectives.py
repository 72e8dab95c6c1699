"""The diffusion objective of the text/label model: DiffusionPath targets, Min-SNR weighting, and the step's draws."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from synth.paths.diffusion import DiffusionPath
from synth.textwindows import encode_windows


class DiffusionObjective(torch.nn.Module):
    """Per-sample diffusion loss; holds the UNet and (when it runs per step) the text encoder.

    One module so that accelerate wraps UNet and a trained text encoder in ONE
    DistributedDataParallel: one bucketed all-reduce per step, and ``no_sync``
    covers both during gradient accumulation.
    """

    def __init__(self, unet, text_encoder, alphas_cumprod: torch.Tensor, prediction_type: str,
                 min_snr_gamma: float | None):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder
        self.path = DiffusionPath(alphas_cumprod.float().clone(), prediction_type, min_snr_gamma)

    def forward(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                ids: torch.Tensor | None = None) -> torch.Tensor:
        """x, noise: (B, c, h, w) clean latents and their noise; t: (B,) int timesteps;
        text (B, L, D) cached embeddings, or ids (B, L) or (B, W, L) token ids for the text encoder -> (B,) loss."""
        if text is None:
            text = encode_windows(self.text_encoder, ids)
        pred = self.unet(self.path.add_noise(x, noise, t), t, encoder_hidden_states=text).sample
        target = self.path.target(x, noise, t)
        per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
        return per * self.path.loss_weight(t)


def draw_diffusion(step: int, gen: torch.Generator, n: int, *, shape: tuple, num_timesteps: int,
                   noise_offset: float, cond_drop_prob: float, latent_eps: bool, hflip: bool) -> dict:
    """The randomness of one step for the global batch of ``n``, on ``gen``'s device.

    noise (n, c, h, w), t (n,), drop (n,) bool; eps (n, c, h, w) for sampling cached
    latents; flip (n,) bool when ``hflip``.
    """
    dev = gen.device
    out = {"noise": torch.randn((n, *shape), generator=gen, device=dev)}
    if noise_offset:
        out["noise"] = out["noise"] + noise_offset * torch.randn((n, shape[0], 1, 1), generator=gen, device=dev)
    out["t"] = torch.randint(0, num_timesteps, (n,), generator=gen, device=dev)
    out["drop"] = torch.rand(n, generator=gen, device=dev) < cond_drop_prob
    if latent_eps:
        out["eps"] = torch.randn((n, *shape), generator=gen, device=dev)
    if hflip:
        out["flip"] = torch.rand(n, generator=gen, device=dev) < 0.5
    return out
