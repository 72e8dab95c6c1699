import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import tiny_cfg
from synth.trainers.autoencoder import train_autoencoder
from synth.trainers.common import TrainingError
from synth.trainers.ldm import train_ldm

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
    pipe = StableDiffusionPipeline.from_pretrained(export, safety_checker=None, use_safetensors=True)
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

    vae = AutoencoderKL.from_pretrained(export / "vae", use_safetensors=True)
    assert vae.config.scaling_factor == pytest.approx(metrics["scaling_factor"])  # the scale travels with the artifact
    from synth.samplers.generator import load_generator

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


# ---------------------------------------------------------------------------
# Pretrained and autoencoder folders we did not write: pickle refused, damage is one line


def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_pretrained_folder_with_pickle_is_refused_unless_allowed(tiny_sd, tmp_path):
    from synth.config import ConfigError
    from synth.models import load_pretrained

    sd = _copy(tiny_sd, tmp_path / "sd")
    torch.save({"w": torch.zeros(1)}, sd / "unet" / "diffusion_pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"diffusion_pytorch_model.bin' holds pickle weights, which can run code when "
                                          r"loaded; convert it to safetensors or delete it, or set model.allow_pickle=true"):
        load_pretrained(str(sd))
    with pytest.raises(ConfigError, match="holds pickle weights"):  # the trainer's way in says the same, before any work
        train_ldm(tiny_cfg(f"model.pretrained={sd}", "model.codec=vae", "train.force=true"), tmp_path / "run", **quiet)
    comps = load_pretrained(str(sd), allow_pickle=True)  # safetensors still preferred where both exist
    orig = load_file(str(tiny_sd / "unet" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(orig[k], v) for k, v in comps["unet"].state_dict().items() if k in orig)


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], "is truncated"),
    (lambda b: b"", r"is empty \(0 bytes\)"),
    (lambda b: b"\x07" * 8 + b[8:], "has a damaged header"),
], ids=["half", "zero-bytes", "garbage"])
def test_damaged_pretrained_weights_are_one_line(tiny_sd, tmp_path, damage, message):
    from synth.config import ConfigError
    from synth.models import load_pretrained

    sd = _copy(tiny_sd, tmp_path / "sd")
    f = sd / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(ConfigError, match=rf"vae/diffusion_pytorch_model.safetensors' {message}.*; restore or re-download"):
        load_pretrained(str(sd))


def test_pretrained_wrong_paths(tiny_sd, tmp_path):
    from synth.config import ConfigError
    from synth.models import load_pretrained, load_pretrained_vae

    with pytest.raises(ConfigError, match=r"model.pretrained '.*model_index.json' is a file, not a diffusers folder"):
        load_pretrained(str(tiny_sd / "model_index.json"))
    with pytest.raises(ConfigError, match=r"is not a diffusers pipeline folder \(no model_index.json\)"):
        load_pretrained(str(tiny_sd / "unet"))
    sd = _copy(tiny_sd, tmp_path / "sd")
    (sd / "unet" / "config.json").write_text("{oops")
    with pytest.raises(ConfigError, match=r"cannot load unet of model.pretrained '.*': .*not a valid JSON file"):
        load_pretrained(str(sd))
    torch.save({}, sd / "vae" / "diffusion_pytorch_model.ckpt")
    with pytest.raises(ConfigError, match=r"diffusion_pytorch_model.ckpt' holds pickle weights"):
        load_pretrained_vae(str(sd))
    assert load_pretrained_vae(str(tiny_sd)).config.latent_channels == 4


def _autoencoder_export(tmp_path, record: bool):
    """An (untrained) autoencoder export folder as the autoencoder stage writes it, optionally with a weights record."""
    from synth.models import build_vae
    from synth.samplers.artifact import weights_record

    run = tmp_path / "ae"
    build_vae(1, [16, 16], 1, 4, 8, 16).save_pretrained(run / "export" / "vae", safe_serialization=True)
    metrics = {"psnr": 1.0, "ssim": 0.5, "scaling_factor": 1.0, **(weights_record(run / "export") if record else {})}
    (run / "export" / "metrics.json").write_text(json.dumps(metrics))
    return run


def test_autoencoder_folder_checked(tmp_path):
    from synth.codecs import load_autoencoder
    from synth.config import ConfigError

    run = _autoencoder_export(tmp_path, record=True)
    codec = load_autoencoder(run)
    assert codec.kind == "vae" and codec.weights_sha256 and not any(p.requires_grad for p in codec.vae.parameters())
    assert load_autoencoder(run / "export").weights_sha256 == codec.weights_sha256
    weights = run / "export" / "vae" / "diffusion_pytorch_model.safetensors"
    b = bytearray(weights.read_bytes())
    b[-1] ^= 1
    weights.write_bytes(bytes(b))
    with pytest.raises(ConfigError, match=r"diffusion_pytorch_model.safetensors' was modified or damaged after export "
                                          r".*metrics.json'\); re-export the autoencoder"):
        load_autoencoder(run)
    weights.write_bytes(bytes(b[:100]))
    with pytest.raises(ConfigError, match=r"diffusion_pytorch_model.safetensors' is truncated"):
        load_autoencoder(run)
    with pytest.raises(ConfigError, match=r"model.autoencoder '.*nope' does not exist"):
        load_autoencoder(tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"is a file, not a folder"):
        load_autoencoder(run / "export" / "metrics.json")


def test_autoencoder_folder_with_pickle(tmp_path):
    from synth.codecs import load_autoencoder
    from synth.config import ConfigError

    run = _autoencoder_export(tmp_path, record=False)  # exports of today record no hashes: still loads
    torch.save({}, run / "export" / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"diffusion_pytorch_model.bin' holds pickle weights.*model.allow_pickle=true"):
        load_autoencoder(run)
    assert load_autoencoder(run, allow_pickle=True).weights_sha256 is None
