"""Generators: load an exported artifact and turn conditions + seeds into uint8 images.

``LDMGenerator.sample(conditions, seeds)`` -> :class:`SampleBatch`.  Image i depends
only on ``seeds[i]`` and ``conditions[i]``: its starting noise comes from its own
generator and every solver is per-image, so batch size, process count and what
was sampled before never change it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from samplers.integrators import get_sampler, model_evals
from samplers.schedules import diffusion_denoiser, init_noise_scale, sampling_sigmas
from synth.codecs import PixelCodec, VAECodec
from synth.io import to_uint8
from synth.labels import Condition, LabelSchema
from synth.models import (WeightsDigest, changed_since, first_line, load_part, read_error_message, verify_weights)
from synth.seeds import derive_seed, generator_for

ARTIFACT_FILE = "synth.json"
FORMAT_VERSION = 1  # the newest synth.json format this version reads
MAX_ARTIFACT_BYTES = 64 << 20  # a synth.json is a few KB; a huge one is not ours
KINDS = ("ldm", "bridge")
PICKLE_HINT = "pass --allow-pickle (allow_pickle=True in Python)"


class ArtifactError(ValueError):
    """A model folder that is missing, damaged or not a synth export; the message is one line naming the fix."""

    def __init__(self, message: object = ""):
        # messages quote paths and file contents, which may hold line breaks
        super().__init__("\\n".join(str(message).splitlines()))


def show(value) -> str:
    """A short one-line repr of a value read from a file, for messages."""
    import reprlib

    r = reprlib.Repr()
    r.maxstring = r.maxother = 60
    r.maxlist = r.maxdict = 6
    try:
        return "\\n".join(r.repr(value).splitlines())
    except ValueError:  # an int past Python's str() digit limit
        return f"<{type(value).__name__} too large to print>"


@dataclass
class SampleBatch:
    """``images``: uint8 (B, 1, H, W); one condition and seed per image; the settings used."""

    images: torch.Tensor
    conditions: list[Condition]
    seeds: list[int]
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], max_length: int) -> torch.Tensor:
    """Prompts -> text embeddings (B, L, D) from the encoder's last hidden state."""
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="pt").input_ids
    p = next(text_encoder.parameters())
    return text_encoder(ids.to(p.device))[0]


# ---------------------------------------------------------------------------
# Reading and checking an export


_os_message = read_error_message


def _fix(kind: str = "ldm") -> str:
    return f"re-export the model (run the same 'synth train {kind}' command again) or restore the file"


def _run_stage(run_json: Path) -> str:
    """The stage a run folder's ``run.json`` records ('ldm', 'bridge', ...), or 'ldm' when unreadable."""
    try:
        stage = json.loads(run_json.read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return "ldm"
    return stage if isinstance(stage, str) else "ldm"


def _not_an_export(p: Path) -> ArtifactError:
    """Why folder ``p`` (holding no synth.json, nor export/synth.json) is not a generator export."""
    if any((d / "metrics.json").is_file() and (d / "vae").is_dir() for d in (p, p / "export")):
        return ArtifactError(f"'{p}' holds an autoencoder export, not a generator; use it as model.autoencoder of "
                             f"'synth train ldm' or 'synth train bridge'")
    if (p / "run.json").is_file():
        stage = _run_stage(p / "run.json")
        if (p / "export").is_dir():
            return ArtifactError(f"'{p / 'export'}' has no {ARTIFACT_FILE}: its export was interrupted or damaged; "
                                 f"run 'synth train {stage} --run {p}' again to re-export it")
        return ArtifactError(f"'{p}' is a run folder of 'synth train {stage}' without an export (its training has not "
                             f"finished); run 'synth train {stage} --run {p}' again to finish it, then pass {p / 'export'}")
    missing = [n for n in (ARTIFACT_FILE, "model_index.json", "unet") if not (p / n).exists()]
    return ArtifactError(f"'{p}' is not a synth export (missing {', '.join(missing)}); "
                         f"pass <run>/export written by 'synth train ldm'")


def export_folder(path: str | Path) -> Path:
    """The export folder ``path`` names: itself, or ``<run>/export`` for a run folder; clear errors otherwise."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"model folder '{p}' does not exist; pass the export folder of a run (<run>/export)")
    if not p.is_dir():
        hint = (f"pass its folder '{p.parent}'" if p.name == ARTIFACT_FILE
                else "pass the export folder of a run (<run>/export)")
        raise ArtifactError(f"'{p}' is a file, not a model folder; {hint}")
    if (p / ARTIFACT_FILE).is_file():
        return p
    if (p / "export" / ARTIFACT_FILE).is_file():
        return p / "export"
    raise _not_an_export(p)


def _load_meta(f: Path) -> dict:
    """``synth.json`` parsed: a JSON object of sane size, or a one-line ArtifactError."""
    size = f.stat().st_size
    if size > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"'{f}' is {size} bytes, far too large for a {ARTIFACT_FILE}; {_fix()}")
    try:
        meta = json.loads(f.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ArtifactError(f"'{f}' is not valid JSON (not UTF-8 text); {_fix()}") from None
    except ValueError as e:
        raise ArtifactError(f"'{f}' is not valid JSON ({first_line(e)}); {_fix()}") from None
    except RecursionError:
        raise ArtifactError(f"'{f}' is not a {ARTIFACT_FILE} (JSON nested too deeply); {_fix()}") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"'{f}' holds a JSON {type(meta).__name__}, not an object; {_fix()}")
    return meta


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_sha256(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def check_meta(meta: dict, f: Path) -> None:
    """Every field the loaders and samplers read has the type they need; the format is not newer than ours."""
    version = meta.get("format_version", 1)
    kind = meta.get("kind", "ldm")

    def bad(key: str, expected: str):
        got = "missing" if key not in meta else show(meta[key])
        raise ArtifactError(f"'{f}': '{key}' is {got}, expected {expected}; {_fix(kind if kind in KINDS else 'ldm')}")

    if not _is_int(version) or version < 1:
        bad("format_version", "a positive integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"'{f}' has format_version {version}, newer than this synth reads ({FORMAT_VERSION}); "
                            f"upgrade synth to load it")
    if not isinstance(kind, str):
        bad("kind", "'ldm' or 'bridge'")
    if kind not in KINDS:
        raise ArtifactError(f"'{f.parent}' holds a '{kind}' model, which this version cannot load; upgrade synth")
    if meta.get("codec") not in ("pixel", "vae"):
        bad("codec", "'pixel' or 'vae'")
    if not _is_int(meta.get("resolution")) or not 1 <= meta["resolution"] <= 65536:
        bad("resolution", "a positive integer")
    if "channels" in meta and meta["channels"] not in (1, 3):
        bad("channels", "1 (grey) or 3 (RGB)")
    if not isinstance(meta.get("labels"), dict):
        bad("labels", "a label schema (JSON object)")
    try:
        LabelSchema.from_json(meta["labels"])
    except (TypeError, ValueError) as e:
        bad("labels", f"a valid label schema ({first_line(e)})")
    if not _is_sha256(meta.get("weights_sha256")):
        bad("weights_sha256", "the 64-hex-digit SHA-256 of the weights")
    files = meta.get("weights_files")
    if files is not None and not (isinstance(files, dict)
                                  and all(isinstance(k, str) and _is_sha256(v) for k, v in files.items())):
        bad("weights_files", "an object of file -> SHA-256")
    if "default_sampling" in meta and not isinstance(meta["default_sampling"], dict):
        bad("default_sampling", "a JSON object")
    if "model_id" in meta and not isinstance(meta["model_id"], str):
        bad("model_id", "a string")
    if kind == "ldm":
        if meta.get("prediction_type") not in ("epsilon", "v_prediction", "sample"):
            bad("prediction_type", "'epsilon', 'v_prediction' or 'sample'")
        if not _is_int(meta.get("max_length")) or meta["max_length"] < 1:
            bad("max_length", "a positive integer")
    else:
        doms = meta.get("domains")
        if not isinstance(doms, list) or not doms or not all(isinstance(d, str) for d in doms):
            bad("domains", "a non-empty list of domain names")


def _has_weights(folder: Path, name: str) -> bool:
    """``name`` (a safetensors file) or its sharded form (``name.index.json``) is in ``folder``."""
    return (folder / name).is_file() or (folder / f"{name}.index.json").is_file()


def check_files(p: Path, meta: dict) -> None:
    """Every file or folder the loaders read is there: labels, config, each component's config and weights."""
    kind = meta.get("kind", "ldm")
    parts = {"unet": ("config.json", "diffusion_pytorch_model.safetensors")}
    if kind == "ldm":
        parts.update({"text_encoder": ("config.json", "model.safetensors"), "tokenizer": (),
                      "scheduler": ("scheduler_config.json",)})
    if meta["codec"] == "vae":
        parts["vae"] = ("config.json", "diffusion_pytorch_model.safetensors")
    for name in ("labels.json", "config.yaml"):
        if not (p / name).is_file():
            raise ArtifactError(f"export '{p}' is incomplete: '{name}' is missing; {_fix(kind)}")
    for sub, files in parts.items():
        if not (p / sub).is_dir():
            raise ArtifactError(f"export '{p}' is incomplete: the '{sub}' folder is missing; {_fix(kind)}")
        for name in files:
            there = _has_weights(p / sub, name) if name.endswith(".safetensors") else (p / sub / name).is_file()
            if not there:
                raise ArtifactError(f"export '{p}' is incomplete: '{sub}/{name}' is missing; {_fix(kind)}")


def read_artifact(path: str | Path) -> dict:
    """The artifact's ``synth.json`` (codec, resolution, schema, ...), checked; ``path`` may be the run folder.

    Cheap (no weights are read).  Missing, unreadable, malformed, newer-format or incomplete
    exports raise a one-line :class:`ArtifactError`.
    """
    p = Path(path)
    try:
        p = export_folder(p)
        meta = _load_meta(p / ARTIFACT_FILE)
        check_meta(meta, p / ARTIFACT_FILE)
        check_files(p, meta)
    except OSError as e:
        raise ArtifactError(_os_message(e, p)) from None
    meta["path"] = str(p)
    return meta


def verify_export(meta: dict, allow_pickle: bool = False) -> WeightsDigest:
    """Before loading the weights of the export ``meta`` describes: no pickle weights (unless allowed),
    every safetensors file complete, and their SHA-256 equal to what ``synth.json`` records.

    Returns the digest (hashed once here); :func:`finish_loading` checks nothing changed meanwhile.
    """
    return verify_weights(meta["path"], meta["weights_sha256"], meta.get("weights_files"), allow_pickle=allow_pickle,
                          how_to_allow=PICKLE_HINT, fix=_fix(meta.get("kind", "ldm")), error=ArtifactError,
                          record_name=f"{ARTIFACT_FILE}'s weights_sha256")


def load_component(meta: dict, load, sub: str, **kwargs):
    """``load(<export>/<sub>, **kwargs)`` (a ``from_pretrained``, offline); failures become one-line ArtifactErrors."""
    p = Path(meta["path"])
    return load_part(load, f"'{p / sub}'", _fix(meta.get("kind", "ldm")), ArtifactError,
                     pretrained_model_name_or_path=p / sub, local_files_only=True, **kwargs)


def finish_loading(generator, meta: dict, digest: WeightsDigest):
    """Refuse weights that changed while they loaded; record the verified hash on the generator
    (``weights_sha256``: what the sampled set's manifest should name)."""
    p = Path(meta["path"])
    changed = changed_since(digest, p)
    if changed:
        raise ArtifactError(f"'{p / changed[0]}' changed while it was loaded; run again once nothing writes to the export")
    generator.weights_sha256 = digest.sha256
    return generator


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
    """Text/label-conditioned diffusion generator (latent or pixel space)."""

    def __init__(self, unet, text_encoder, tokenizer, codec, schema: LabelSchema, alphas_cumprod: torch.Tensor,
                 prediction_type: str, resolution: int, max_length: int, model_id: str = "in-memory",
                 spacing: str = "linspace"):
        self.unet, self.text_encoder, self.tokenizer, self.codec = unet, text_encoder, tokenizer, codec
        self.schema, self.alphas_cumprod = schema, alphas_cumprod
        self.prediction_type, self.resolution, self.max_length = prediction_type, resolution, max_length
        self.model_id, self.spacing = model_id, spacing
        self.chunk_size: int | None = None  # images per network call; None: the whole batch
        self._text_cache: dict[str, torch.Tensor] = {}
        self.weights_sha256: str | None = None  # set by from_export: the verified hash of the loaded weights

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
                                f"load it with samplers.generator.load_generator")
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
        alphas = _read_scheduler(meta)
        gen = cls(unet, text_encoder, tokenizer, codec, LabelSchema.from_json(meta["labels"]), alphas,
                  meta["prediction_type"], meta["resolution"], meta["max_length"],
                  model_id=meta.get("model_id", meta["path"]))
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
            emb = encode_prompts(self.tokenizer, self.text_encoder, missing, self.max_length)
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
               guidance: float = 1.5, sampler: str = "dpmpp_2m", noise: torch.Tensor | None = None) -> SampleBatch:
        """Generate one image per (condition, seed). Returns uint8 (B, 1, R, R) images."""
        if len(conditions) != len(seeds):
            raise ValueError(f"got {len(conditions)} conditions but {len(seeds)} seeds; pass one seed per image")
        c = self.chunk_size
        if c and len(seeds) > c:
            parts = [self.sample(conditions[i:i + c], seeds[i:i + c], steps=steps, guidance=guidance, sampler=sampler,
                                 noise=None if noise is None else noise[i:i + c]) for i in range(0, len(seeds), c)]
            return SampleBatch(torch.cat([p.images for p in parts]), [x for p in parts for x in p.conditions],
                               list(seeds), parts[0].settings)
        solve = get_sampler(sampler)
        p = next(self.unet.parameters())
        device, dtype = p.device, p.dtype
        prompts = [c.prompt or (self.schema.prompt_for(c.label) if c.label is not None else "") for c in conditions]
        cond = self.text_embeddings(prompts).to(device, dtype)
        uncond = self.text_embeddings([""] * len(prompts)).to(device, dtype) if guidance != 1.0 else None
        sigmas = sampling_sigmas(self.alphas_cumprod, steps, self.spacing)  # stays on the CPU: host-side grid
        x0 = self.initial_noise(seeds) if noise is None else noise
        # The ODE state stays float32 whatever the model's precision; only the network runs in ``dtype``.
        x = x0.to(device, torch.float32) * init_noise_scale(sigmas)

        def unet_fn(x_vp, t, c):
            return self.unet(x_vp.to(dtype), t, encoder_hidden_states=c).sample.float()

        predict = diffusion_denoiser(unet_fn, self.alphas_cumprod, self.prediction_type)
        # its own named stream: seeds + 1 would be the next image's starting noise
        gens = [generator_for(derive_seed(s, "ancestral")) for s in seeds] if sampler == "euler_ancestral" else None
        z = solve(predict, x, sigmas, cond=cond, uncond=uncond, guidance=guidance, rng=gens)
        images = to_uint8(self.codec.decode(z).float()).cpu()
        settings = {"sampler": sampler, "steps": steps, "guidance": guidance, "dtype": str(dtype).replace("torch.", ""),
                    "model_evals": model_evals(sampler, steps), "model_id": self.model_id}
        conds = [Condition(label=c.label, domain=c.domain, prompt=pr) for c, pr in zip(conditions, prompts)]
        return SampleBatch(images, conds, list(seeds), settings)


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
    evals = model_evals(sampler, steps) * (1 if guidance == 1.0 else 2)
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
        from samplers.bridge import BridgeGenerator

        return BridgeGenerator.from_export(meta["path"], device, dtype, allow_pickle=allow_pickle)
    raise ArtifactError(f"'{path}' holds a '{kind}' model, which this version cannot load; upgrade synth")
