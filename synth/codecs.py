"""Codecs: the map between pixels (float [-1, 1]) and the space diffusion runs in.

Everything after the codec is the same code for pixel and latent models.
The latent scale lives in the autoencoder's config (``scaling_factor``), which is
saved with the artifact; it is never a literal here.
"""
from __future__ import annotations

from pathlib import Path

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
    as the channel mean, so grey stays grey; colour images (``image_channels=3``) stay colour.
    """

    kind = "vae"

    def __init__(self, vae, image_channels: int = 1, decode_chunk: int | None = None):
        self.vae = vae
        self.image_channels = image_channels
        self.decode_chunk = decode_chunk  # images per VAE decode call (its activations dominate memory at 512 px)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.weights_sha256: str | None = None  # set by load_autoencoder when the export records a hash

    @property
    def channels(self) -> int:
        """Channels of the images this codec takes and gives (1 grey, 3 RGB)."""
        return self.image_channels

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
        """Scaled latents (B, c, h, w) -> images (B, image_channels, H, W) float (unclamped)."""
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


def _autoencoder_folder(p: Path) -> tuple[Path, Path]:
    """(folder holding the AutoencoderKL config, the export folder around it) for ``model.autoencoder``:
    a run folder (``<run>/export/vae``), an export folder (``vae/``) or the autoencoder folder itself."""
    from synth.config import ConfigError

    if not p.exists():
        raise ConfigError(f"model.autoencoder '{p}' does not exist; pass the run folder of 'synth train autoencoder'")
    if not p.is_dir():
        raise ConfigError(f"model.autoencoder '{p}' is a file, not a folder; pass the run folder of "
                          f"'synth train autoencoder'")
    for cand, root in ((p / "export" / "vae", p / "export"), (p / "vae", p), (p, p)):
        if (cand / "config.json").is_file():
            return cand, root
    raise ConfigError(f"model.autoencoder '{p}' holds no exported autoencoder (expected {p}/export/vae); train it first")


def _autoencoder_record(root: Path) -> dict:
    """The weights record of an autoencoder export (``metrics.json``: ``weights_sha256``, ``weights_files``), or {}."""
    import json

    from synth.config import ConfigError

    f = root / "metrics.json"
    if not f.is_file():
        return {}
    try:
        meta = json.loads(f.read_text())
    except OSError as e:
        from synth.models import read_error_message

        raise ConfigError(read_error_message(e, f)) from None
    except (UnicodeDecodeError, ValueError) as e:
        raise ConfigError(f"'{f}' is not valid JSON ({e}); re-export the autoencoder or restore the file") from None
    return meta if isinstance(meta, dict) and isinstance(meta.get("weights_sha256"), str) else {}


def load_autoencoder(path: str | Path, allow_pickle: bool = False) -> VAECodec:
    """A frozen :class:`VAECodec` from ``model.autoencoder`` (an autoencoder run, export or folder).

    Safetensors only: a folder holding pickle weights is refused unless ``allow_pickle``
    (``model.allow_pickle``); a truncated or damaged file, or weights that differ from the hashes an
    export records, is a one-line :class:`synth.config.ConfigError` naming the file.
    """
    from diffusers import AutoencoderKL

    from synth.config import ConfigError
    from synth.models import PRETRAINED_PICKLE_HINT, changed_since, load_part, verify_weights

    p = Path(path)
    fix = "re-export the autoencoder (run its 'synth train autoencoder' again) or restore the file"
    vae_dir, root = _autoencoder_folder(p)
    record = _autoencoder_record(root)
    digest = verify_weights(root, record.get("weights_sha256"), record.get("weights_files"), allow_pickle=allow_pickle,
                            how_to_allow=PRETRAINED_PICKLE_HINT, fix=fix, error=ConfigError,
                            record_name=f"the record in '{root / 'metrics.json'}'")
    vae = load_part(AutoencoderKL.from_pretrained, f"model.autoencoder '{vae_dir}'", fix,
                    pretrained_model_name_or_path=vae_dir, use_safetensors=True, local_files_only=True)
    if digest is not None and changed_since(digest, root):
        raise ConfigError(f"model.autoencoder '{root}' changed while it was loaded; run again once nothing writes to it")
    codec = VAECodec(vae.eval().requires_grad_(False))
    codec.weights_sha256 = digest.sha256 if digest is not None else None
    return codec
