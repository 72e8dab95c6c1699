"""Export: a diffusers-format Stable Diffusion folder plus our schema and resolved config.

``<run>/export/`` loads with ``diffusers.StableDiffusionPipeline.from_pretrained``
offline (weights in safetensors only) and with :func:`synth.samplers.load_generator`.
A pixel-space model has no ``vae/``: load it in diffusers with ``vae=None`` and
``output_type="latent"`` (the "latents" are the pixels).
"""
from __future__ import annotations

from pathlib import Path

from synth.samplers.artifact import finish_export, fresh_export_dir, weights_hash, weights_record  # noqa: F401
from synth import solvers


def export_ldm(out: Path, unet, text_encoder, tokenizer, codec, schema, cfg, noise_sched, max_length: int,
               train_subset: dict | None = None, extra=None, training: dict | None = None) -> Path:
    """Write the pipeline folder atomically (temp folder + rename); ``extra(tmp)`` adds files before the weights
    are hashed (a LoRA run's ``lora/`` adapters)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    out = Path(out)
    tmp = fresh_export_dir(out)
    scheduler = DPMSolverMultistepScheduler.from_config(noise_sched.config, prediction_type=cfg.train.prediction_type,
                                                        algorithm_type="dpmsolver++", solver_order=2,
                                                        timestep_spacing="linspace", steps_offset=1)
    vae = codec.vae if codec.kind == "vae" else None
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp, safe_serialization=True)
    if extra is not None:
        extra(tmp)
    return finish_export(tmp, out, "ldm", codec, cfg, schema, train_subset,
                          {"family": cfg.train.path, "conditioner": "text", "prediction_type": cfg.train.prediction_type,
                           "max_length": max_length,
                           # W > 1: prompts are W windows of max_length tokens, concatenated (synth.textwindows)
                           **({"text_windows": cfg.model.text.windows} if cfg.model.text.windows > 1 else {})},
                          {"sampler": solvers.for_flow(cfg.sample.sampler) if cfg.train.path == "flow"
                           else cfg.sample.sampler, "steps": cfg.sample.steps, "guidance": cfg.sample.guidance},
                          training)


def export_bridge(out: Path, unet, codec, domains: list[str], cfg, train_subset: dict | None = None,
                  training: dict | None = None) -> Path:
    """Write a bridge artifact atomically: ``unet/`` (diffusers UNet2DModel, safetensors),
    ``vae/`` for latent models, ``labels.json``, ``config.yaml`` and ``synth.json``."""
    from synth.labels import LabelSchema

    out = Path(out)
    tmp = fresh_export_dir(out)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    if codec.kind == "vae":
        codec.vae.save_pretrained(tmp / "vae", safe_serialization=True)
    schema = LabelSchema(classes=list(domains), domains=list(domains))
    return finish_export(tmp, out, "bridge", codec, cfg, schema, train_subset,
                          {"family": "flow", "conditioner": "class", "domains": list(domains), "null_domain": len(domains),
                           "time_convention": "t=0 noise, t=1 data, x_t=(1-t)x0+t*x1, v=x1-x0, UNet timestep = 1000 t"},
                          {"sampler": solvers.for_flow(cfg.sample.sampler), "steps": cfg.sample.steps,
                           "guidance": cfg.sample.guidance, "tau": cfg.sample.tau}, training)

