"""Generators: load an exported artifact and turn conditions + seeds into uint8 images.

``LDMGenerator.sample(conditions, seeds)`` -> :class:`SampleBatch`.  Image i depends
only on ``seeds[i]`` and ``conditions[i]``: its starting noise comes from its own
generator and every solver is per-image, so batch size, process count and what
was sampled before never change it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch

from synth.samplers.artifact import (ARTIFACT_FILE, FORMAT_VERSION, KINDS, MAX_ARTIFACT_BYTES, PICKLE_HINT,  # noqa: F401
                               ArtifactError, SampleBatch, _fix, _os_message, check_files, check_meta, export_folder,
                               finish_loading, load_component, read_artifact, show, verify_export)
from synth.samplers.bridge import BridgeGenerator
from synth import solvers
from synth.codecs import PixelCodec, VAECodec
from synth.io import to_float, to_uint8
from synth.labels import Condition, LabelSchema
from synth.models import first_line
from synth.config import ConfigError
from synth.paths.diffusion import DiffusionPath
from synth.paths.flow import FLOW
from synth.seeds import derive_seed, generator_for
from synth.textwindows import encode_windows, window_ids

def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], max_length: int, windows: int = 1) -> torch.Tensor:
    """Prompts -> text embeddings (B, W x L, D) from the encoder's last hidden state (``windows`` W:
    :mod:`synth.textwindows`; 1 truncates to one window of L tokens)."""
    p = next(text_encoder.parameters())
    if windows > 1:
        ids, _ = window_ids(tokenizer, prompts, max_length, windows)
        return encode_windows(text_encoder, ids.to(p.device))
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(p.device))[0]


def _read_scheduler(meta: dict) -> torch.Tensor:
    """``alphas_cumprod`` from the export's scheduler config; one-line errors for a damaged file."""
    f = Path(meta["path"]) / "scheduler" / "scheduler_config.json"
    try:
        cfg = json.loads(f.read_bytes().decode("utf-8"))
        if not isinstance(cfg, dict):
            raise ValueError(f"a JSON {type(cfg).__name__}, not an object")
        return _alphas_from_scheduler_config(cfg)
    except OSError as e:
        raise ArtifactError(_os_message(e, f)) from None
    except (ValueError, TypeError, KeyError, NotImplementedError, RecursionError) as e:
        raise ArtifactError(f"'{f}' is not a valid scheduler config ({first_line(e)}); {_fix()}") from None


class LDMGenerator:
    """Text/label-conditioned generator (latent or pixel space) on a diffusion path or, with ``path="flow"``,
    the flow-matching path (a text-conditioned flow model: samples from noise and translates between prompts)."""

    def __init__(self, unet, text_encoder, tokenizer, codec, schema: LabelSchema, alphas_cumprod: torch.Tensor,
                 prediction_type: str, resolution: int, max_length: int, model_id: str = "in-memory",
                 spacing: str = "linspace", path: str = "diffusion", windows: int = 1):
        self.unet, self.text_encoder, self.tokenizer, self.codec = unet, text_encoder, tokenizer, codec
        self.windows = windows  # text windows of max_length tokens per prompt (synth.textwindows)
        self.schema, self.alphas_cumprod = schema, alphas_cumprod
        self.prediction_type, self.resolution, self.max_length = prediction_type, resolution, max_length
        self.model_id = model_id
        # the path the model was trained on: it makes the sampling grid and the denoiser
        self.path = FLOW if path == "flow" else DiffusionPath(alphas_cumprod, prediction_type, spacing=spacing)
        self.chunk_size: int | None = None  # images per network call; None: the whole batch
        self._text_cache: dict[str, torch.Tensor] = {}
        self.weights_sha256: str | None = None  # set by from_export: the verified hash of the loaded weights

    @property
    def is_flow(self) -> bool:
        return self.path is FLOW

    @property
    def spacing(self) -> str | None:
        """The timestep spacing of a diffusion grid (diffusers' ``timestep_spacing``), kept by the path."""
        return getattr(self.path, "spacing", None)

    @spacing.setter
    def spacing(self, value: str) -> None:
        self.path.spacing = value

    # -- loading -----------------------------------------------------------
    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    *, allow_pickle: bool = False):
        """Load ``<run>/export`` after :func:`verify_export` (no pickle unless ``allow_pickle``, complete safetensors,
        weights equal to synth.json's hashes); weights load from safetensors only."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import AutoTokenizer, CLIPTextModel

        meta = read_artifact(path)
        if meta.get("kind", "ldm") != "ldm":
            raise ArtifactError(f"'{meta['path']}' holds a '{meta['kind']}' model, not a text/label diffusion model; "
                                f"load it with synth.samplers.generator.load_generator")
        digest = verify_export(meta, allow_pickle)
        unet = load_component(meta, UNet2DConditionModel.from_pretrained, "unet", use_safetensors=True,
                              torch_dtype=dtype).to(device).eval()
        text_encoder = load_component(meta, CLIPTextModel.from_pretrained, "text_encoder",
                                      use_safetensors=True).to(device, dtype).eval()
        tokenizer = load_component(meta, AutoTokenizer.from_pretrained, "tokenizer")
        channels = meta.get("channels", 1)
        if meta["codec"] == "vae":
            codec = VAECodec(load_component(meta, AutoencoderKL.from_pretrained, "vae", use_safetensors=True,
                                            torch_dtype=dtype).to(device).eval(), image_channels=channels)
        else:
            codec = PixelCodec(channels)
        family = meta.get("family", "diffusion")  # older exports record none: diffusion
        if family not in ("diffusion", "flow"):
            raise ArtifactError(f"'{meta['path']}' holds a '{family}' model family, which this version cannot sample; "
                                f"upgrade synth")
        alphas = _read_scheduler(meta)
        gen = cls(unet, text_encoder, tokenizer, codec, LabelSchema.from_json(meta["labels"]), alphas,
                  meta["prediction_type"], meta["resolution"], meta["max_length"],
                  model_id=meta.get("model_id", meta["path"]),
                  path=family, windows=int(meta.get("text_windows", 1)))
        return finish_loading(gen, meta, digest)

    def optimize(self, *, compile: bool = False, channels_last: bool = False, attention: str = "sdpa",
                 chunk_size: int | None = None) -> "LDMGenerator":
        """Speed levers: channels_last memory format, torch.compile, attention kernel, and
        ``chunk_size``: integrate and decode a large batch in cache-sized chunks (per-image
        results are unchanged, since every image is independent)."""
        if chunk_size is not None and chunk_size <= 0:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self.chunk_size = chunk_size
        if attention not in ("sdpa", "xformers"):
            raise ValueError(f"attention must be sdpa or xformers, got '{attention}'")
        if attention == "xformers":
            p = next(self.unet.parameters())
            if p.device.type != "cuda":
                raise ValueError("attention 'xformers' needs a CUDA device; use --attention sdpa here")
            try:
                import xformers  # noqa: F401
            except ImportError:
                raise ValueError("attention 'xformers' needs the xformers package: pip install 'synth[cuda]'") from None
            self.unet.enable_xformers_memory_efficient_attention()
        if channels_last:
            self.unet.to(memory_format=torch.channels_last)
        if compile:
            p = next(self.unet.parameters())
            # CUDA graphs ("reduce-overhead") remove the per-layer launch cost that dominates small
            # models on a GPU; bulk batches have one fixed shape (the last batch is padded), so
            # the graphs are captured once.
            mode = "reduce-overhead" if p.device.type == "cuda" else None
            self.unet = torch.compile(self.unet, mode=mode)
        if self.codec.kind == "vae" and chunk_size:
            self.codec.decode_chunk = chunk_size
        return self

    # -- conditioning ------------------------------------------------------
    @torch.no_grad()
    def text_embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, L, D) embeddings, cached per distinct prompt (labels repeat a few prompts)."""
        missing = sorted({pr for pr in prompts if pr not in self._text_cache})
        if missing:
            emb = encode_prompts(self.tokenizer, self.text_encoder, missing, self.max_length, self.windows)
            for pr, e in zip(missing, emb):
                self._text_cache[pr] = e
        return torch.stack([self._text_cache[pr] for pr in prompts])

    def clear_cache(self) -> None:
        self._text_cache.clear()

    # -- sampling ----------------------------------------------------------
    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """(B, C, h, w) standard normal noise, image i from ``seeds[i]`` alone."""
        shape = self.codec.latent_shape(self.resolution)
        return torch.stack([torch.randn(shape, generator=generator_for(s), dtype=torch.float32) for s in seeds])

    @torch.no_grad()
    def sample(self, conditions: Sequence[Condition], seeds: Sequence[int], *, steps: int = 25,
               guidance: float = 1.5, sampler: str = "dpmpp_2m", noise: torch.Tensor | None = None,
               negative_prompt: str = "") -> SampleBatch:
        """Generate one image per (condition, seed). Returns uint8 (B, 1, R, R) images.

        ``negative_prompt``: guidance pushes away from this text instead of from the null prompt (as diffusers'
        ``negative_prompt`` does); it has no effect at guidance 1."""
        if len(conditions) != len(seeds):
            raise ValueError(f"got {len(conditions)} conditions but {len(seeds)} seeds; pass one seed per image")
        c = self.chunk_size
        if c and len(seeds) > c:
            parts = [self.sample(conditions[i:i + c], seeds[i:i + c], steps=steps, guidance=guidance, sampler=sampler,
                                 noise=None if noise is None else noise[i:i + c], negative_prompt=negative_prompt)
                     for i in range(0, len(seeds), c)]
            return SampleBatch(torch.cat([p.images for p in parts]), [x for p in parts for x in p.conditions],
                               list(seeds), parts[0].settings)
        solve = solvers.get(sampler).fn
        p = next(self.unet.parameters())
        device, dtype = p.device, p.dtype
        prompts = [c.prompt or (self.schema.prompt_for(c.label) if c.label is not None else "") for c in conditions]
        cond = self.text_embeddings(prompts).to(device, dtype)
        uncond = self.text_embeddings([negative_prompt] * len(prompts)).to(device, dtype) if guidance != 1.0 else None
        gens = [generator_for(derive_seed(s, "ancestral")) for s in seeds] if solvers.get(sampler).stochastic else None
        if self.is_flow:
            x0 = (self.initial_noise(seeds) if noise is None else noise).to(device, torch.float32)
            z = FLOW.integrate(self._velocity, x0, 0.0, 1.0, steps, sampler=solvers.for_flow(sampler), cond=cond,
                               uncond=uncond, guidance=guidance, rng=gens)
            return self._batch(z, conditions, prompts, seeds, solvers.for_flow(sampler), steps, guidance, dtype)
        sigmas = self.path.sampling_sigmas(steps)  # stays on the CPU: host-side grid
        x0 = self.initial_noise(seeds) if noise is None else noise
        # The ODE state stays float32 whatever the model's precision; only the network runs in ``dtype``.
        x = x0.to(device, torch.float32) * self.path.init_noise_scale(sigmas)

        def unet_fn(x_vp, t, c):
            return self.unet(x_vp.to(dtype), t, encoder_hidden_states=c).sample.float()

        predict = self.path.denoiser(unet_fn)
        z = solve(predict, x, sigmas, cond=cond, uncond=uncond, guidance=guidance, rng=gens)
        return self._batch(z, conditions, prompts, seeds, sampler, steps, guidance, dtype)

    def _velocity(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """A flow model's v(x_t, t | text): x_t (B, c, h, w), t (B,) in [0, 1], text (B, L, D) -> float32."""
        p = next(self.unet.parameters())
        return self.unet(x_t.to(p.dtype), FLOW.network_time(t).to(x_t.device, torch.float32),
                         encoder_hidden_states=text).sample.float()

    def _batch(self, z, conditions, prompts, seeds, sampler, steps, guidance, dtype) -> SampleBatch:
        """Decode latents z (B, c, h, w) into a SampleBatch of uint8 images with the settings that made them."""
        images = to_uint8(self.codec.decode(z).float()).cpu()
        settings = {"sampler": sampler, "steps": steps, "guidance": guidance, "dtype": str(dtype).replace("torch.", ""),
                    "model_evals": solvers.model_evals(sampler, steps), "model_id": self.model_id}
        conds = [Condition(label=c.label, domain=c.domain, prompt=pr) for c, pr in zip(conditions, prompts)]
        return SampleBatch(images, conds, list(seeds), settings)

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str, target: str, *, tau: float = 0.5, steps: int = 20,
                  guidance: float = 1.5, sampler: str = "euler", seeds: Sequence[int] | None = None) -> torch.Tensor:
        """A text-conditioned flow model: uint8 images (B, C, H, W) described by prompt ``source`` -> the same
        images carried to prompt ``target`` (back along the flow to ``tau``, forward under the new text)."""
        if not self.is_flow:
            raise ConfigError("translation needs a flow model (train with --set train.path=flow); this one is a "
                              "diffusion model: sample it instead")
        p = next(self.unet.parameters())
        n = images.shape[0]
        text = self.text_embeddings([source, target, ""]).to(p.device, p.dtype)
        src, tgt, null = (text[i:i + 1].expand(n, -1, -1) for i in range(3))
        x1 = self.codec.encode(to_float(images).to(p.device, p.dtype)).float()
        gens = ([generator_for(derive_seed(s, "ancestral")) for s in (seeds or range(n))]
                if solvers.get(sampler).stochastic else None)
        z = FLOW.translate(self._velocity, x1, src, tgt, null, tau, steps, sampler=solvers.for_flow(sampler),
                           guidance=guidance, rng=gens)
        return to_uint8(self.codec.decode(z).float()).cpu()


# torch.compile pays off when the network work of a set dwarfs its warm-up: measured on an H200
# at SD-1.5 size (issue 6), 65 s of warm-up bought 1.35x; 2e14 parameter-evaluations is about
# 4,700 SD-1.5 images with guidance (~13 GPU-minutes), where the saving exceeds the warm-up
# ~3x. A 1.7M-parameter model would need millions of images: it is never compiled by default.
COMPILE_WORK = 2e14


def should_compile(device, n_images: int, steps: int, sampler: str, guidance: float, generator) -> bool:
    """The automatic ``--compile`` rule: on CUDA only, when images x evaluations x parameters >= COMPILE_WORK.

    A function of the request (not of timings), so a resumed run makes the same choice.
    """
    if torch.device(device).type != "cuda":
        return False
    params = sum(p.numel() for p in generator.unet.parameters())
    evals = solvers.model_evals(sampler, steps) * (1 if guidance == 1.0 else 2)
    return n_images * evals * params >= COMPILE_WORK


def auto_batch_size(generator, guidance: float, device, fraction: float = 0.7, limit: int = 1024,
                    cpu_default: int = 64) -> int:
    """The batch size for bulk sampling: ``cpu_default`` on CPU; on CUDA the largest power of
    two whose activations fit in ``fraction`` of the free GPU memory, from one measured probe.

    The probe samples 4 images for one step and reads the peak-memory increase per image
    (cond and uncond halves included when ``guidance != 1``).
    """
    dev = torch.device(device)
    if dev.type != "cuda":
        return cpu_default
    probe = 4
    cond = generator.schema.condition(0)
    torch.cuda.synchronize(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    base = torch.cuda.memory_allocated(dev)
    generator.sample([cond] * probe, list(range(probe)), steps=1, guidance=guidance)
    torch.cuda.synchronize(dev)
    per_image = max(1, (torch.cuda.max_memory_allocated(dev) - base) / probe)
    free, _ = torch.cuda.mem_get_info(dev)
    fit = int(fraction * free / per_image)
    return max(1, min(limit, 1 << max(0, fit.bit_length() - 1)))


def _alphas_from_scheduler_config(cfg: dict) -> torch.Tensor:
    from diffusers import DDPMScheduler

    keys = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas")
    s = DDPMScheduler(**{k: cfg[k] for k in keys if k in cfg and cfg[k] is not None})
    return s.alphas_cumprod.clone()


def load_generator(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                   *, allow_pickle: bool = False):
    """Load whichever generator an export folder holds, checked (see :func:`verify_export`).

    ``allow_pickle``: accept a folder that also holds pickle weights (``*.bin``, ``*.ckpt`` ...);
    they are never loaded (exports load from safetensors only), but their presence is refused by default.
    """
    meta = read_artifact(path)
    kind = meta.get("kind", "ldm")
    if kind == "ldm":
        return LDMGenerator.from_export(meta["path"], device, dtype, allow_pickle=allow_pickle)
    if kind == "bridge":
        return BridgeGenerator.from_export(meta["path"], device, dtype, allow_pickle=allow_pickle)
    raise ArtifactError(f"'{path}' holds a '{kind}' model, which this version cannot load; upgrade synth")
