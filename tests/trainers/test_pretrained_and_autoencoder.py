import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_cfg
from trainers.autoencoder import train_autoencoder
from trainers.common import TrainingError
from trainers.ldm import train_ldm

quiet = dict(log=lambda *a: None)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A tiny RGB Stable Diffusion folder, built and saved offline (the `pretrained` way in)."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from synth.models import build_text_encoder, build_tokenizer, build_unet, build_vae

    torch.manual_seed(0)
    tok = build_tokenizer(["a photo", "chest x-ray"], vocab_size=600, model_max_length=12)
    pipe = StableDiffusionPipeline(
        vae=build_vae(3, [16, 16], 1, 4, 8, 16), text_encoder=build_text_encoder(len(tok), 32, 1, 2, 12), tokenizer=tok,
        unet=build_unet(8, 4, [16, 32], 1, 8, 32, 8, [False, True]),
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    path = tmp_path_factory.mktemp("tiny-sd")
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def test_finetune_pretrained_unet_and_text_encoder(tiny_sd, tmp_path):
    from diffusers import StableDiffusionPipeline

    base = [f"model.pretrained={tiny_sd}", "model.codec=vae", "train.text_lr=1e-4", "train.steps=2"]
    with pytest.raises(TrainingError, match=r"autoencoder validation SSIM .* below train.ssim_gate 0.85.*train.force=true"):
        train_ldm(tiny_cfg(*base), tmp_path / "refused", **quiet)
    export = train_ldm(tiny_cfg(*base, "train.force=true"), tmp_path / "run", **quiet)
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    assert (ckpt / "text_encoder.safetensors").is_file()  # the text encoder is trained too
    orig = load_file(str(tiny_sd / "text_encoder" / "model.safetensors"))
    tuned = load_file(str(ckpt / "text_encoder.safetensors"))
    assert any(not torch.equal(orig[k], tuned[k]) for k in orig if k in tuned)
    meta = json.loads((export / "synth.json").read_text())
    assert meta["codec"] == "vae"
    pipe = StableDiffusionPipeline.from_pretrained(export, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    img = pipe("chest x-ray, pneumonia", height=16, width=16, num_inference_steps=2).images[0]
    assert np.asarray(img).shape == (16, 16, 3)


def test_autoencoder_stage_gate_and_latent_cache(tmp_path):
    ae = train_autoencoder(tiny_cfg("train.steps=3", "train.lr=2e-3"), tmp_path / "ae", **quiet)
    metrics = json.loads((ae / "metrics.json").read_text())
    assert {"psnr", "ssim", "scaling_factor"} <= set(metrics) and metrics["scaling_factor"] > 0
    cfg = ["model.codec=vae", f"model.autoencoder={tmp_path / 'ae'}", "train.steps=2"]
    with pytest.raises(TrainingError, match="below train.ssim_gate 0.99"):
        train_ldm(tiny_cfg(*cfg, "train.ssim_gate=0.99"), tmp_path / "ldm-refused", **quiet)
    export = train_ldm(tiny_cfg(*cfg, "train.ssim_gate=0.0"), tmp_path / "ldm", **quiet)
    assert list((tmp_path / "ldm" / "cache").glob("latents-*.safetensors"))  # encoded once, on disk
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(export / "vae")
    assert vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])  # the scale travels with the artifact
    from samplers.generator import load_generator

    g = load_generator(export)
    out = g.sample([g.schema.condition(1)], [0], steps=3)
    assert out.images.shape == (1, 1, 16, 16)


def test_autoencoder_resume_bit_exact(tmp_path):
    train_autoencoder(tiny_cfg("train.steps=4"), tmp_path / "a", **quiet)
    train_autoencoder(tiny_cfg("train.steps=2"), tmp_path / "b", **quiet)
    train_autoencoder(tiny_cfg("train.steps=4"), tmp_path / "b", **quiet)  # resumed and extended
    a = load_file(str(tmp_path / "a" / "checkpoints" / "step-00000004" / "vae.safetensors"))
    b = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000004" / "vae.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
