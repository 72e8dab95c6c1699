"""The generator: load any export (path x conditioner x codec) and turn conditions + seeds into uint8 images.

``Generator.sample(conditions, seeds)`` -> :class:`SampleBatch`; ``Generator.translate(images, source,
target)`` for flow models.  The path (:mod:`synth.paths`) integrates, the conditioner
(:mod:`synth.conditioners`) reads the conditions, the codec (:mod:`synth.codecs`) maps pixels to the
network's space and back: one class for every model synth trains.  Image i depends
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
from synth import solvers
from synth.codecs import PixelCodec, VAECodec
from synth.conditioners import (CONDITIONERS, ClassConditioner, NoConditioner, TextConditioner,  # noqa: F401
                                encode_prompts)
from synth.io import to_float, to_uint8
from synth.labels import Condition, LabelSchema
from synth.models import first_line
from synth.config import ConfigError
from synth.paths.diffusion import DiffusionPath
from synth.paths.flow import FLOW, FlowPath
from synth.seeds import derive_seed, generator_for


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


def model_parts(meta: dict) -> tuple[str, str, str]:
    """(path family, conditioner, codec) of an export: what its ``synth.json`` records; exports written before
    the three were recorded hold a ``kind`` instead ("ldm": diffusion x text, "bridge": flow x class)."""
    kind = meta.get("kind", "ldm")
    family = meta.get("family", "flow" if kind == "bridge" else "diffusion")
    conditioner = meta.get("conditioner", "class" if kind == "bridge" else "text")
    if family not in ("diffusion", "flow"):
        raise ArtifactError(f"'{meta['path']}' holds a '{family}' model family, which this version cannot sample; "
                            f"upgrade synth")
    if conditioner not in CONDITIONERS:
        raise ArtifactError(f"'{meta['path']}' holds a model conditioned on '{conditioner}', which this version "
                            f"cannot sample; upgrade synth")
    if family == "diffusion" and conditioner != "text":
        raise ArtifactError(f"'{meta['path']}' holds a diffusion model conditioned on '{conditioner}', which this "
                            f"version cannot sample; upgrade synth")
    return family, conditioner, meta["codec"]


def load_conditioner(meta: dict, name: str, device, dtype):
    """The export's conditioner, loaded (offline, safetensors only)."""
    schema = LabelSchema.from_json(meta["labels"])
    if name == "class":
        return ClassConditioner(schema)
    if name == "none":
        return NoConditioner(schema)
    from transformers import AutoTokenizer, CLIPTextModel

    encoder = load_component(meta, CLIPTextModel.from_pretrained, "text_encoder",
                             use_safetensors=True).to(device, dtype).eval()
    tokenizer = load_component(meta, AutoTokenizer.from_pretrained, "tokenizer")
    return TextConditioner(tokenizer, encoder, schema, meta["max_length"], int(meta.get("text_windows", 1)))


def load_codec(meta: dict, device, dtype):
    """The export's codec: its autoencoder (``vae``) or pixels."""
    channels = meta.get("channels", 1)
    if meta["codec"] != "vae":
        return PixelCodec(channels)
    from diffusers import AutoencoderKL

    vae = load_component(meta, AutoencoderKL.from_pretrained, "vae", use_safetensors=True, torch_dtype=dtype)
    return VAECodec(vae.to(device).eval(), image_channels=channels)


class Generator:
    """Any synth model: a UNet on a path (:class:`DiffusionPath` or the flow path), read through a conditioner
    (:mod:`synth.conditioners`: text, class, none) in a codec's space (pixels or an autoencoder's latents).

    ``sample(conditions, seeds)`` draws images from noise; ``translate(images, source, target)`` carries images
    between two conditions (flow models only).  Image i depends only on ``seeds[i]`` and ``conditions[i]``."""

    def __init__(self, unet, conditioner, codec, path, resolution: int, model_id: str = "in-memory"):
        self.unet, self.conditioner, self.codec, self.path = unet, conditioner, codec, path
        self.resolution, self.model_id = resolution, model_id
        self.chunk_size: int | None = None  # images per network call; None: the whole batch
        self.weights_sha256: str | None = None  # set by from_export: the verified hash of the loaded weights

    # -- what the model is -------------------------------------------------
    @property
    def is_flow(self) -> bool:
        return isinstance(self.path, FlowPath)

    @property
    def kind(self) -> str:
        """The export kind of older synth versions: 'bridge' for a class-conditioned flow model, else 'ldm'."""
        return "bridge" if self.is_flow and self.conditioner.name == "class" else "ldm"

    @property
    def schema(self) -> LabelSchema:
        return self.conditioner.schema

    @property
    def domains(self) -> tuple[str, ...]:
        """The schema's domains (a bridge's classes are its domains)."""
        return tuple(self.schema.domains)

    @property
    def channels(self) -> int:
        return self.codec.channels

    @property
    def spacing(self) -> str | None:
        """The timestep spacing of a diffusion grid (diffusers' ``timestep_spacing``), kept by the path."""
        return getattr(self.path, "spacing", None)

    @spacing.setter
    def spacing(self, value: str) -> None:
        self.path.spacing = value

    @property
    def alphas_cumprod(self) -> torch.Tensor:
        """A diffusion model's schedule (its path's)."""
        return self.path.alphas_cumprod

    @property
    def prediction_type(self) -> str | None:
        """What a diffusion model's network predicts (eps, v, sample); None on the flow path."""
        return getattr(self.path, "prediction_type", None)

    # the conditioner's members that read as the generator's, as they did when each conditioner had its own
    # generator class (generator name -> conditioner name)
    FORWARDED = {"text_embeddings": "embeddings", "tokenizer": "tokenizer", "text_encoder": "text_encoder",
                 "max_length": "max_length", "windows": "windows", "clear_cache": "clear_cache",
                 "domain_index": "index", "condition_domain": "resolve", "null_domain": "null_index"}

    def __getattr__(self, name: str):
        if name not in Generator.FORWARDED or "conditioner" not in self.__dict__:
            raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")
        try:
            return getattr(self.__dict__["conditioner"], Generator.FORWARDED[name])
        except AttributeError:
            raise AttributeError(f"a {self.conditioner.name}-conditioned generator has no '{name}'") from None

    # -- loading -----------------------------------------------------------
    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    *, allow_pickle: bool = False) -> "Generator":
        """Load ``<run>/export`` after :func:`verify_export` (no pickle unless ``allow_pickle``, complete safetensors,
        weights equal to synth.json's hashes); weights load from safetensors only."""
        from diffusers import UNet2DConditionModel, UNet2DModel

        meta = read_artifact(path)
        family, conditioner, _ = model_parts(meta)
        digest = verify_export(meta, allow_pickle)
        net = UNet2DConditionModel if conditioner == "text" else UNet2DModel
        unet = load_component(meta, net.from_pretrained, "unet", use_safetensors=True,
                              torch_dtype=dtype).to(device).eval()
        cond = load_conditioner(meta, conditioner, device, dtype)
        codec = load_codec(meta, device, dtype)
        path_ = FLOW if family == "flow" else DiffusionPath(_read_scheduler(meta), meta["prediction_type"])
        gen = cls.__new__(cls)
        Generator.__init__(gen, unet, cond, codec, path_, meta["resolution"], model_id=meta.get("model_id", meta["path"]))
        return finish_loading(gen, meta, digest)

    def optimize(self, *, compile: bool = False, channels_last: bool = False, attention: str = "sdpa",
                 chunk_size: int | None = None) -> "Generator":
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

    # -- sampling ----------------------------------------------------------
    def _network(self, x: torch.Tensor, t: torch.Tensor, cond) -> torch.Tensor:
        """The UNet at its own timestep t (B,): x (B, c, h, w) in any precision -> float32 (B, c, h, w)."""
        p = next(self.unet.parameters())
        return self.unet(x.to(p.dtype), t, **self.conditioner.network_kwargs(cond)).sample.float()

    def initial_noise(self, seeds: Sequence[int]) -> torch.Tensor:
        """(B, C, h, w) standard normal noise, image i from ``seeds[i]`` alone."""
        shape = self.codec.latent_shape(self.resolution)
        return torch.stack([torch.randn(shape, generator=generator_for(s), dtype=torch.float32) for s in seeds])

    def _rng(self, seeds: Sequence[int], sampler: str):
        """One generator per image for a stochastic solver (its own seed's 'ancestral' stream), else None."""
        return [generator_for(derive_seed(s, "ancestral")) for s in seeds] if solvers.get(sampler).stochastic else None

    def _check_guidance(self, guidance: float) -> None:
        if self.conditioner.name == "none" and guidance != 1.0:
            raise ConfigError(f"guidance {guidance} needs a conditional model; this one is unconditional: use "
                              f"guidance 1")

    @torch.no_grad()
    def sample(self, conditions: Sequence[Condition], seeds: Sequence[int], *, steps: int | None = None,
               guidance: float = 1.5, sampler: str | None = None, noise: torch.Tensor | None = None,
               negative_prompt: str = "") -> SampleBatch:
        """Generate one image per (condition, seed). Returns uint8 (B, C, R, R) images.

        ``steps``/``sampler`` default to 25 dpmpp_2m for text models, 20 euler for class (bridge) models.
        ``negative_prompt`` (text models): guidance pushes away from this text instead of from the null prompt
        (as diffusers' ``negative_prompt`` does); it has no effect at guidance 1."""
        text = self.conditioner.name == "text"
        steps = (25 if text else 20) if steps is None else steps
        sampler = ("dpmpp_2m" if text else "euler") if sampler is None else sampler
        if len(conditions) != len(seeds):
            raise ConfigError(f"got {len(conditions)} conditions but {len(seeds)} seeds; pass one seed per image")
        self._check_guidance(guidance)
        c = self.chunk_size
        if c and len(seeds) > c:
            parts = [self.sample(conditions[i:i + c], seeds[i:i + c], steps=steps, guidance=guidance, sampler=sampler,
                                 noise=None if noise is None else noise[i:i + c], negative_prompt=negative_prompt)
                     for i in range(0, len(seeds), c)]
            return SampleBatch(torch.cat([p.images for p in parts]), [x for p in parts for x in p.conditions],
                               list(seeds), parts[0].settings)
        solver = self.path.solver_name(sampler)
        p = next(self.unet.parameters())
        cond, resolved = self.conditioner.encode(conditions, p.device, p.dtype)
        uncond = self.conditioner.null(len(seeds), p.device, p.dtype, negative_prompt) if guidance != 1.0 else None
        x0 = (self.initial_noise(seeds) if noise is None else noise).to(p.device, torch.float32)
        # The ODE state stays float32 whatever the model's precision; only the network runs in the model's dtype.
        z = self.path.generate(self._network, x0, steps, sampler=solver, cond=cond, uncond=uncond, guidance=guidance,
                               rng=self._rng(seeds, solver))
        images = to_uint8(self.codec.decode(z).float()).cpu()
        settings = {"sampler": solver, "steps": steps, "guidance": guidance, "dtype": str(p.dtype).replace("torch.", ""),
                    "model_evals": solvers.model_evals(solver, steps), "model_id": self.model_id}
        return SampleBatch(images, resolved, list(seeds), settings)

    # -- translation -------------------------------------------------------
    def check_images(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, R, R) of this model's size and channels; a clear error otherwise."""
        if images.ndim != 4 or images.dtype != torch.uint8:
            raise ConfigError(f"translate takes uint8 images (B, C, H, W), got {images.dtype} {tuple(images.shape)}")
        b, c, h, w = images.shape
        if b == 0:
            raise ConfigError("translate got an empty batch (0 images); pass at least one image")
        if c != self.channels:
            raise ConfigError(f"the model translates {self.channels}-channel images, got {c}-channel images")
        if (h, w) != (self.resolution, self.resolution):
            raise ConfigError(f"the model translates {self.resolution}x{self.resolution} images, got {h}x{w}; "
                              f"prepare them with synth.data (pad to square, then resize)")
        return images

    @torch.no_grad()
    def translate(self, images: torch.Tensor, source: str | int, target: str | int, *, tau: float = 0.5,
                  steps: int = 20, guidance: float | None = None, sampler: str = "euler",
                  seeds: Sequence[int] | None = None) -> torch.Tensor:
        """uint8 (B, C, R, R) images under condition ``source`` (a domain, or a text for a text model) ->
        uint8 (B, C, R, R) under ``target``: back along the flow to ``tau``, forward under the new condition.

        ``tau``: 1 returns the (encoded-decoded) input; lower keeps less structure and more of the target's
        look; 0 is full inversion to noise (the DDIB limit).  ``guidance`` defaults to 1 for class (bridge)
        models, 1.5 for text models.  ``seeds`` (stochastic solvers): one per image (default: its place in
        ``images``, whatever the chunk size)."""
        if not self.is_flow:
            raise ConfigError("translation needs a flow model (train with --set train.path=flow); this one is a "
                              "diffusion model: sample it instead")
        if self.conditioner.name == "none":
            raise ConfigError("translation needs a conditional model (a source and a target); this one is "
                              "unconditional")
        self.check_images(images)
        if guidance is None:
            guidance = 1.5 if self.conditioner.name == "text" else 1.0
        p = next(self.unet.parameters())
        src, tgt, null = self.conditioner.lookup([source, target, None], p.device, p.dtype)
        solver = self.path.solver_name(sampler)
        seeds = list(range(len(images))) if seeds is None else list(seeds)
        outs = []
        for lo in range(0, len(images), self.chunk_size or max(1, len(images))):
            hi = min(len(images), lo + (self.chunk_size or len(images)))
            n = hi - lo
            # float32 in: the ODE state stays float32 whatever the network's precision (an autoencoder casts for
            # itself); encoding is deterministic (the autoencoder's mean)
            x1 = self.codec.encode(to_float(images[lo:hi]).to(p.device)).float()
            z = self.path.carry(self._network, x1, *(e.unsqueeze(0).expand(n, *e.shape) for e in (src, tgt, null)),
                                tau, steps, sampler=solver, guidance=guidance, rng=self._rng(seeds[lo:hi], solver))
            outs.append(to_uint8(self.codec.decode(z).float()).cpu())
        return torch.cat(outs)


class LDMGenerator(Generator):
    """A text-conditioned model (diffusion, or flow with ``path="flow"``), built from its parts in memory (the
    trainers' previews).  Exports load through :meth:`Generator.from_export` whatever they hold."""

    def __init__(self, unet, text_encoder, tokenizer, codec, schema: LabelSchema, alphas_cumprod: torch.Tensor,
                 prediction_type: str, resolution: int, max_length: int, model_id: str = "in-memory",
                 spacing: str = "linspace", path: str = "diffusion", windows: int = 1):
        path_ = FLOW if path == "flow" else DiffusionPath(alphas_cumprod, prediction_type, spacing=spacing)
        super().__init__(unet, TextConditioner(tokenizer, text_encoder, schema, max_length, windows), codec, path_,
                         resolution, model_id)

    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    *, allow_pickle: bool = False) -> "LDMGenerator":
        """Load a text-conditioned export (:meth:`Generator.from_export`); any other is refused."""
        meta = read_artifact(path)
        if model_parts(meta)[1] != "text":
            raise ArtifactError(f"'{meta['path']}' holds a '{meta.get('kind', 'ldm')}' model, not a text/label "
                                f"diffusion model; load it with synth.samplers.generator.load_generator")
        return super().from_export(meta["path"], device, dtype, allow_pickle=allow_pickle)


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
                   *, allow_pickle: bool = False) -> Generator:
    """Load whatever model an export folder holds, checked (see :func:`verify_export`).

    ``allow_pickle``: accept a folder that also holds pickle weights (``*.bin``, ``*.ckpt`` ...);
    they are never loaded (exports load from safetensors only), but their presence is refused by default.
    """
    return Generator.from_export(path, device, dtype, allow_pickle=allow_pickle)
