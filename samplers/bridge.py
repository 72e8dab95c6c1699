"""The bridge generator: one class-conditional flow-matching model whose classes are domains.

``BridgeGenerator.translate(images, source, target, tau)`` moves images between
acquisition domains (MedShift's path): encode deterministically (autoencoder mean),
integrate back under the source domain from t = 1 to ``tau``, forward under the
target domain from ``tau`` to 1, decode.  ``sample(conditions, seeds)`` draws a
domain from noise (t = 0 -> 1).  Conditions are domain indices; index
``len(domains)`` is the null (unconditional) domain used for guidance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from synth.samplers.artifact import (ArtifactError, SampleBatch, finish_loading, load_component, read_artifact,
                               verify_export)
from synth import solvers
from synth.codecs import PixelCodec, VAECodec
from synth.config import ConfigError
from synth.io import to_float, to_uint8
from synth.labels import Condition, LabelError
from synth.paths.flow import FLOW, integrate_flow, translate_latents
from synth.seeds import derive_seed, generator_for


class BridgeGenerator:
    """Domain-conditional flow model (latent or pixel space) with its codec."""

    kind = "bridge"

    def __init__(self, unet, codec, domains: Sequence[str], resolution: int, channels: int = 1,
                 model_id: str = "in-memory"):
        self.unet, self.codec = unet, codec
        self.domains = tuple(domains)
        self.resolution, self.channels, self.model_id = resolution, channels, model_id
        self.chunk_size: int | None = None
        self.weights_sha256: str | None = None  # set by from_export: the verified hash of the loaded weights

    # -- loading -----------------------------------------------------------
    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    *, allow_pickle: bool = False):
        """Load a bridge export, checked like :meth:`LDMGenerator.from_export` (safetensors only, hashes verified)."""
        from diffusers import AutoencoderKL, UNet2DModel

        meta = read_artifact(path)
        if meta.get("kind") != "bridge":
            raise ArtifactError(f"'{meta['path']}' holds a '{meta.get('kind', 'ldm')}' model, not a bridge; "
                                f"translation needs an export of 'synth train bridge'")
        digest = verify_export(meta, allow_pickle)
        unet = load_component(meta, UNet2DModel.from_pretrained, "unet", use_safetensors=True,
                              torch_dtype=dtype).to(device).eval()
        channels = meta.get("channels", 1)
        codec = (VAECodec(load_component(meta, AutoencoderKL.from_pretrained, "vae", use_safetensors=True,
                                         torch_dtype=dtype).to(device).eval(), image_channels=channels)
                 if meta["codec"] == "vae" else PixelCodec(channels))
        gen = cls(unet, codec, meta["domains"], meta["resolution"], meta.get("channels", 1),
                  model_id=meta.get("model_id", meta["path"]))
        return finish_loading(gen, meta, digest)

    def optimize(self, *, compile: bool = False, channels_last: bool = False, attention: str = "sdpa",
                 chunk_size: int | None = None) -> "BridgeGenerator":
        """Same levers as :meth:`LDMGenerator.optimize` (chunks, channels_last, compile)."""
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size
        if attention != "sdpa":
            raise ValueError("the bridge UNet uses PyTorch SDPA attention; use --attention sdpa")
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile:
            self.unet = torch.compile(self.unet)
        return self

    # -- conditioning ------------------------------------------------------
    def domain_index(self, name: str | int) -> int:
        """Domain name (or index) -> index; unknown names list the model's domains."""
        if isinstance(name, int):
            if 0 <= name < len(self.domains):
                return name
        elif name in self.domains:
            return self.domains.index(name)
        raise LabelError(f"unknown domain '{name}'; this model's domains: {', '.join(self.domains)}")

    @property
    def null_domain(self) -> int:
        return len(self.domains)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """v(x_t, t | domain) = x1 - x0 predicted; x_t (B, c, h, w), t (B,) in [0, 1], domain (B,) int."""
        p = next(self.unet.parameters())
        out = self.unet(x_t.to(p.dtype), FLOW.network_time(t).to(x_t.device, torch.float32), class_labels=domain).sample
        return out.float()

    def condition_domain(self, c: Condition) -> int:
        """The domain a condition asks for: ``domain``, else ``label`` (a bridge's classes are its domains, so
        ``synth sample --labels`` works), else the null domain (an unconditional sample)."""
        if c.domain is not None:
            return self.domain_index(c.domain)
        if c.label is not None:
            return self.domain_index(c.label)
        return self.null_domain

    def _domains(self, idx: int, n: int, device) -> torch.Tensor:
        return torch.full((n,), idx, dtype=torch.long, device=device)

    def _rng(self, seeds: Sequence[int] | None, sampler: str, n: int):
        if not solvers.get(sampler).stochastic:
            return None
        seeds = list(range(n)) if seeds is None else seeds
        return [generator_for(derive_seed(s, "ancestral")) for s in seeds]

    def _chunks(self, n: int):
        c = self.chunk_size or n
        return [(i, min(n, i + c)) for i in range(0, n, c)]

    # -- sampling a domain from noise ----------------------------------------
    @torch.no_grad()
    def sample(self, conditions: Sequence[Condition], seeds: Sequence[int], *, steps: int = 20,
               guidance: float = 1.5, sampler: str = "euler", noise: torch.Tensor | None = None) -> SampleBatch:
        """One image per (condition.domain, seed), from noise at t = 0 to data at t = 1 -> uint8 (B, C, R, R)."""
        if len(conditions) != len(seeds):
            raise ConfigError(f"got {len(conditions)} conditions but {len(seeds)} seeds; pass one seed per image")
        p = next(self.unet.parameters())
        shape = self.codec.latent_shape(self.resolution)
        x0 = torch.stack([torch.randn(shape, generator=generator_for(s)) for s in seeds]) if noise is None else noise
        outs = []
        for lo, hi in self._chunks(len(seeds)):
            dom = torch.tensor([self.condition_domain(c) for c in conditions[lo:hi]], device=p.device)
            z = integrate_flow(self.velocity, x0[lo:hi].to(p.device), 0.0, 1.0, steps, sampler=sampler, cond=dom,
                               uncond=self._domains(self.null_domain, hi - lo, p.device), guidance=guidance,
                               rng=self._rng(seeds[lo:hi], sampler, hi - lo))
            outs.append(to_uint8(self.codec.decode(z).float()).cpu())
        settings = {"sampler": sampler, "steps": steps, "guidance": guidance, "model_evals": solvers.model_evals(sampler, steps),
                    "model_id": self.model_id, "dtype": str(p.dtype).replace("torch.", "")}
        return SampleBatch(torch.cat(outs), list(conditions), list(seeds), settings)

    # -- translation --------------------------------------------------------------
    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, R, R) of this model's size and channels; a clear error otherwise."""
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ConfigError(f"translate takes uint8 images (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        b, c, h, w = images.shape
        if c != self.channels:
            raise ConfigError(f"the model translates {self.channels}-channel images, got {c}-channel images")
        if (h, w) != (self.resolution, self.resolution):
            raise ConfigError(f"the model translates {self.resolution}x{self.resolution} images, got {h}x{w}; "
                             f"prepare them with synth.data (pad to square, then resize)")
        return images

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str | int, target: str | int, *, tau: float = 0.5,
                  steps: int = 20, guidance: float = 1.0, sampler: str = "euler",
                  seeds: Sequence[int] | None = None) -> torch.Tensor:
        """uint8 (B, C, R, R) images of ``source`` -> uint8 (B, C, R, R) looking like ``target``.

        ``tau``: 1 returns the (encoded-decoded) input; lower keeps less structure and
        more of the target domain's look; 0 is full inversion to noise.
        """
        self.check_images(images)
        s, t = self.domain_index(source), self.domain_index(target)
        p = next(self.unet.parameters())
        outs = []
        for lo, hi in self._chunks(len(images)):
            x1 = self.codec.encode(to_float(images[lo:hi]).to(p.device)).float()  # deterministic: the mean
            z = translate_latents(self.velocity, x1, self._domains(s, hi - lo, p.device), self._domains(t, hi - lo, p.device),
                                  self._domains(self.null_domain, hi - lo, p.device), tau, steps, sampler=sampler,
                                  guidance=guidance, rng=self._rng(None if seeds is None else seeds[lo:hi], sampler, hi - lo))
            outs.append(to_uint8(self.codec.decode(z).float()).cpu())
        return torch.cat(outs)


def load_bridge(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                *, allow_pickle: bool = False) -> BridgeGenerator:
    """:meth:`BridgeGenerator.from_export`."""
    return BridgeGenerator.from_export(path, device, dtype, allow_pickle=allow_pickle)


__all__ = ["BridgeGenerator", "load_bridge"]
