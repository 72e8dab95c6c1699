"""Export: a diffusers-format Stable Diffusion folder plus our schema and resolved config.

``<run>/export/`` loads with ``diffusers.StableDiffusionPipeline.from_pretrained``
offline (weights in safetensors only) and with :func:`synth.samplers.load_generator`.
A pixel-space model has no ``vae/``: load it in diffusers with ``vae=None`` and
``output_type="latent"`` (the "latents" are the pixels).
"""
from __future__ import annotations

from pathlib import Path

from synth.samplers.generator import ARTIFACT_FILE
from synth import solvers
from synth.cards import model_card, write_card
from synth.config import config_to_dict, save_config
from synth.io import atomic_replace_dir, atomic_write_json, check_ours, fresh_tmp_dir, remove_stale_tmp_dirs
from synth.models import digest_weights


def weights_hash(folder: Path) -> str:
    """SHA-256 over every ``*.safetensors`` file in ``folder`` (sorted by path): synth.json's ``weights_sha256``."""
    return digest_weights(folder).sha256


def weights_record(folder: Path) -> dict:
    """What an export records about its weights, for :func:`synth.samplers.generator.verify_export` to check at load:
    ``weights_sha256`` (all files together) and ``weights_files`` (relative path -> SHA-256, so a changed
    file can be named).  Read once."""
    d = digest_weights(folder)
    return {"weights_sha256": d.sha256, "weights_files": d.files}


def _fresh_export_dir(out: Path) -> Path:
    """A new temp folder beside ``out``, after checking that an existing ``out`` is an export synth wrote
    (a run folder may be a user's own folder: ``--run .``); checked before writing, not after."""
    check_ours(out, ARTIFACT_FILE, "export")
    remove_stale_tmp_dirs(out)
    return fresh_tmp_dir(out)


def export_ldm(out: Path, unet, text_encoder, tokenizer, codec, schema, cfg, noise_sched, max_length: int,
               train_subset: dict | None = None) -> Path:
    """Write the pipeline folder atomically (temp folder + rename)."""
    from diffusers import DPMSolverMultistepScheduler, StableDiffusionPipeline

    out = Path(out)
    tmp = _fresh_export_dir(out)
    scheduler = DPMSolverMultistepScheduler.from_config(noise_sched.config, prediction_type=cfg.train.prediction_type,
                                                        algorithm_type="dpmsolver++", solver_order=2,
                                                        timestep_spacing="linspace", steps_offset=1)
    vae = codec.vae if codec.kind == "vae" else None
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.save_pretrained(tmp, safe_serialization=True)
    return _finish_export(tmp, out, "ldm", codec, cfg, schema, train_subset,
                          {"family": cfg.train.path, "conditioner": "text", "prediction_type": cfg.train.prediction_type,
                           "max_length": max_length},
                          {"sampler": solvers.for_flow(cfg.sample.sampler) if cfg.train.path == "flow"
                           else cfg.sample.sampler, "steps": cfg.sample.steps, "guidance": cfg.sample.guidance})


def export_bridge(out: Path, unet, codec, domains: list[str], cfg, train_subset: dict | None = None) -> Path:
    """Write a bridge artifact atomically: ``unet/`` (diffusers UNet2DModel, safetensors),
    ``vae/`` for latent models, ``labels.json``, ``config.yaml`` and ``synth.json``."""
    from synth.labels import LabelSchema

    out = Path(out)
    tmp = _fresh_export_dir(out)
    unet.save_pretrained(tmp / "unet", safe_serialization=True)
    if codec.kind == "vae":
        codec.vae.save_pretrained(tmp / "vae", safe_serialization=True)
    schema = LabelSchema(classes=list(domains), domains=list(domains))
    return _finish_export(tmp, out, "bridge", codec, cfg, schema, train_subset,
                          {"family": "flow", "conditioner": "class", "domains": list(domains), "null_domain": len(domains),
                           "time_convention": "t=0 noise, t=1 data, x_t=(1-t)x0+t*x1, v=x1-x0, UNet timestep = 1000 t"},
                          {"sampler": solvers.for_flow(cfg.sample.sampler), "steps": cfg.sample.steps,
                           "guidance": cfg.sample.guidance, "tau": cfg.sample.tau})


def _finish_export(tmp: Path, out: Path, kind: str, codec, cfg, schema, train_subset: dict | None, family: dict,
                   sampling: dict) -> Path:
    """What every export writes after its weights: labels.json, config.yaml, synth.json (the common fields, the
    family's own, the default sampling and the weight hashes), the model card; then ``tmp`` replaces ``out``."""
    schema.save(tmp / "labels.json")
    save_config(cfg, tmp / "config.yaml")
    meta = {"kind": kind, "format_version": 1, "codec": codec.kind, "resolution": cfg.data.resolution,
            "channels": codec.channels, **family, "labels": schema.to_json(), "default_sampling": sampling,
            "latent_scaling_factor": codec.scaling_factor if codec.kind == "vae" else 1.0, **weights_record(tmp),
            "config": config_to_dict(cfg), "train_subset": train_subset}
    meta["model_id"] = f"synth-{kind}-{meta['weights_sha256'][:12]}"
    atomic_write_json(tmp / ARTIFACT_FILE, meta)
    write_card(tmp, model_card(meta))
    atomic_replace_dir(tmp, out, marker=ARTIFACT_FILE)
    return out
