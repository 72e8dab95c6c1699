"""Codecs: the map between pixels (float [-1, 1]) and the space diffusion runs in.

Everything after the codec is the same code for pixel and latent models.
The latent scale lives in the autoencoder's config (``scaling_factor``), which is
saved with the artifact; it is never a literal here.
"""
from __future__ import annotations

import torch


class PixelCodec:
    """Identity codec for small images (28-64 px): x = images, (B, 1, H, W)."""

    kind = "pixel"
    factor = 1

    def __init__(self, channels: int = 1):
        self.channels = channels

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return (self.channels, resolution, resolution)

    def encode(self, images: torch.Tensor, generator=None, noise=None) -> torch.Tensor:
        """(B, 1, H, W) float in [-1, 1] -> same."""
        return images

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean, std) of the encoding; std is zero for the identity."""
        return images, torch.zeros_like(images)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def to(self, *args, **kwargs):
        return self


class VAECodec:
    """AutoencoderKL latents, scaled: x = (mean + std * eps - shift) * scaling_factor.

    Grey images go into an RGB autoencoder as three equal channels and come out
    as the channel mean, so grey stays grey.
    """

    kind = "vae"

    def __init__(self, vae, image_channels: int = 1, decode_chunk: int | None = None):
        self.vae = vae
        self.image_channels = image_channels
        self.decode_chunk = decode_chunk  # images per VAE decode call (its activations dominate memory at 512 px)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def shift_factor(self) -> float:
        return float(getattr(self.vae.config, "shift_factor", None) or 0.0)

    def latent_shape(self, resolution: int) -> tuple[int, int, int]:
        return (self.vae.config.latent_channels, resolution // self.factor, resolution // self.factor)

    def _in(self, images: torch.Tensor) -> torch.Tensor:
        c = self.vae.config.in_channels
        if images.shape[1] == c:
            return images
        if images.shape[1] == 1:
            return images.expand(-1, c, -1, -1)
        raise ValueError(f"codec got {images.shape[1]}-channel images for a {c}-channel autoencoder")

    def encode_moments(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, H, W) -> scaled (mean, std), each (B, c, H/f, W/f)."""
        p = next(self.vae.parameters())
        dist = self.vae.encode(self._in(images).to(p.device, p.dtype)).latent_dist
        s = self.scaling_factor
        return (dist.mean - self.shift_factor) * s, dist.std * s

    def encode(self, images: torch.Tensor, generator: torch.Generator | None = None,
               noise: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C, H, W) -> scaled latents (B, c, h, w): the mean, or a sample with ``noise``
        (a standard-normal tensor of the latent shape) or one drawn from ``generator``
        (on the generator's own device, so a GPU generator needs no host copy)."""
        mean, std = self.encode_moments(images)
        if noise is None and generator is None:
            return mean
        if noise is None:
            noise = torch.randn(mean.shape, generator=generator, dtype=torch.float32, device=generator.device)
        return mean + std * noise.to(mean.device, mean.dtype)

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, c, h, w) -> images (B, 1, H, W) float (unclamped)."""
        p = next(self.vae.parameters())
        z = (x / self.scaling_factor + self.shift_factor).to(p.device, p.dtype)
        c = self.decode_chunk or len(z)
        out = torch.cat([self.vae.decode(z[i:i + c]).sample for i in range(0, len(z), c)]) if len(z) else z
        if self.image_channels == 1 and out.shape[1] != 1:
            out = out.mean(dim=1, keepdim=True)
        return out

    def to(self, *args, **kwargs):
        self.vae.to(*args, **kwargs)
        return self
