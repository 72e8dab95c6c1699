"""The GPU check's training sections (1-4, 9): pixel and latent training rates, the autoencoder with its critic
and codec gate, the SD-1.5-size fine-tune against a diffusers-style loop."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from synth.config import load_config  # noqa: E402
from synth.models import build_text_encoder, build_tokenizer, build_unet, build_vae  # noqa: E402
sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_common import peak_gib, precision, reset_peak, sd_shapes, sync, train_rate  # noqa: E402


def section_pixel(tmp: Path, sz: dict) -> dict:
    cfg = load_config(ROOT / "configs" / "pneumoniamnist-32.yaml", [
        "data.name=phantom", "data.cache_dir=null", f"data.resolution={sz['res']}", "data.phantom_items=2048",
        f"train.steps={sz['pixel_steps']}", "train.progress=false", "train.checkpoint_every=100000",
        f"train.log_every={sz['pixel_steps']}", f"train.mixed_precision={precision()}", "sample.per_class=2",
        "sample.steps=2"])
    row = train_rate(cfg, tmp / "pixel")
    row["target"] = ">= 50 steps/s on a GPU"
    return row


def make_autoencoder(tmp: Path, resolution: int) -> Path:
    """An untrained exported 64 px autoencoder (the Kermany preset's shape)."""
    cfg = load_config(ROOT / "configs" / "kermany-64-autoencoder.yaml", ["data.name=phantom", f"data.resolution={resolution}"])
    from synth.models import vae_from_config

    torch.manual_seed(0)
    vae = vae_from_config(cfg.model, resolution)
    vae.save_pretrained(tmp / "ae" / "export" / "vae", safe_serialization=True)
    return tmp / "ae"


def section_latent(tmp: Path, sz: dict) -> dict:
    res = sz["latent_res"]
    ae = make_autoencoder(tmp, res)
    cfg = load_config(ROOT / "configs" / "kermany-64.yaml", [
        "data.name=phantom", f"data.resolution={res}", "data.phantom_items=2048", "labels.classes=[normal,pneumonia]",
        "labels.prompts={}", f"model.autoencoder={ae}", "train.force=true", f"train.steps={sz['latent_steps']}",
        "train.progress=false", "train.checkpoint_every=100000", f"train.log_every={sz['latent_steps']}",
        f"train.mixed_precision={precision()}", "sample.per_class=2", "sample.steps=2"])
    return train_rate(cfg, tmp / "latent")


def section_autoencoder(tmp: Path, sz: dict) -> dict:
    """Autoencoder steps/s with both extra terms on (critic switched on halfway), then the codec gate of a
    latent run on it: PSNR/SSIM and ``train.ceiling_judges`` judges, all on the device."""
    from synth.trainers.autoencoder import train_autoencoder

    res, steps = sz["latent_res"], sz["ae_steps"]
    common = ["data.name=phantom", f"data.resolution={res}", "data.phantom_items=2048", "labels.classes=[normal,pneumonia]",
              "train.progress=false", f"train.mixed_precision={precision()}"]
    cfg = load_config(ROOT / "configs" / "kermany-64-autoencoder.yaml", common + [
        f"train.steps={steps}", "train.checkpoint_every=100000", f"train.log_every={steps}",
        "train.adversarial_weight=0.05", f"train.adversarial_start={steps // 2}", f"train.perceptual_steps={sz['judge_steps']}"])
    reset_peak()
    t0 = time.perf_counter()
    train_autoencoder(cfg, tmp / "ae9", log=lambda *a: None)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (tmp / "ae9" / "logs" / "scalars.jsonl").read_text().splitlines()]
    sps = [r for r in rows if "samples_per_s" in r][-1]["samples_per_s"]
    out = {"ae_steps": steps, "ae_samples_per_s": round(sps, 1), "ae_steps_per_s": round(sps / cfg.train.batch_size, 2),
           "ae_wall_s_incl_feature_net_export": round(wall, 1), "ae_peak_GiB": peak_gib()}
    if torch.cuda.is_available():  # fp16 with the critic: GradScaler unscales once while groups are clipped apart
        f16 = load_config(ROOT / "configs" / "kermany-64-autoencoder.yaml", common + [
            "train.mixed_precision=fp16", "train.steps=6", "train.checkpoint_every=100000", "train.log_every=6",
            "train.adversarial_weight=0.05", "train.adversarial_start=2", f"train.perceptual_steps={sz['judge_steps']}"])
        train_autoencoder(f16, tmp / "ae9-fp16", log=lambda *a: None)
        out["ae_fp16_with_critic"] = "ran 6 steps"
    from synth.trainers.ldm import train_ldm

    lcfg = load_config(ROOT / "configs" / "kermany-64.yaml", common + [
        "labels.prompts={}", f"model.autoencoder={tmp / 'ae9'}", "train.force=true", "train.steps=2",
        f"train.judge_steps={sz['judge_steps']}", "train.checkpoint_every=100000", "train.log_every=2",
        "sample.per_class=1", "sample.steps=2"])
    said: list[str] = []
    t0 = time.perf_counter()
    train_ldm(lcfg, tmp / "latent9", log=said.append)
    out["gate_and_2_steps_s"] = round(time.perf_counter() - t0, 1)
    out["ceiling"] = next((m for m in said if m.startswith("codec ceiling")), "not printed")[:200]
    return out


def build_sd_folder(path: Path, tiny: bool, resolution: int) -> Path:
    """A random-weights Stable Diffusion folder of SD-1.5's shapes with a 1-channel VAE."""
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    s = sd_shapes(tiny)
    torch.manual_seed(0)
    tok = build_tokenizer(["chest x-ray, normal", "chest x-ray, pneumonia", "a photo"], vocab_size=1000, model_max_length=77)
    t = s["text"]
    te = build_text_encoder(len(tok), t["hidden"], t["layers"], t["heads"], 77)
    v = s["vae"]
    vae = build_vae(1, v["blocks"], v["layers"], 4, v["groups"], resolution)
    vae.register_to_config(scaling_factor=0.18215)
    u = s["unet"]
    unet = build_unet(resolution // 2 ** (len(v["blocks"]) - 1), 4, u["blocks"], u["layers"], u["head_dim"], u["cross"],
                      u["groups"], u["attn"])
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=te, tokenizer=tok, unet=unet,
                                   scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)
    return path


def sd_config(sd: Path, sz: dict, *extra: str):
    return load_config(None, [
        "data.name=phantom", f"data.resolution={sz['sd_res']}", f"data.phantom_items={8 * sz['sd_batch']}",
        f"model.pretrained={sd}", "model.codec=vae", "train.text_lr=1e-5", "train.lr=1e-5", "train.force=true",
        f"train.batch_size={sz['sd_batch']}", f"train.steps={sz['sd_steps']}", "train.progress=false",
        "train.checkpoint_every=100000", f"train.log_every={sz['sd_steps']}", f"train.mixed_precision={precision()}",
        "train.ema_decay=0.999", "sample.per_class=1", "sample.steps=2", *extra])


def plain_sd_loop(sd: Path, cfg, steps: int) -> dict:
    """The same fine-tune step written the way diffusers' train_text_to_image.py does it:
    a DataLoader of images, VAE encode and text encoder on every step, EMAModel, accelerate."""
    from accelerate import Accelerator
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from diffusers.training_utils import EMAModel
    from transformers import AutoTokenizer, CLIPTextModel

    from synth.data import load_split
    from synth.io import to_float
    from synth.trainers.common import make_accelerator

    make_accelerator(cfg.train.mixed_precision, 0)  # resets accelerate's state between runs in this process
    acc = Accelerator(mixed_precision=cfg.train.mixed_precision)
    data = load_split(cfg.data, "train")
    tok = AutoTokenizer.from_pretrained(sd, subfolder="tokenizer")
    te = CLIPTextModel.from_pretrained(sd, subfolder="text_encoder", use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(sd, subfolder="vae", use_safetensors=True).requires_grad_(False)
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet", use_safetensors=True)
    sched = DDPMScheduler.from_pretrained(sd, subfolder="scheduler")
    ema = EMAModel(unet.parameters(), decay=0.999)
    opt = torch.optim.AdamW([{"params": unet.parameters(), "lr": 1e-5}, {"params": te.parameters(), "lr": 1e-5}])
    prompts = [f"chest x-ray, {data.classes[int(label)]}" for label in data.labels]

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            ids = tok(prompts[i], padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids[0]
            return {"pixel_values": to_float(data.images[i:i + 1])[0], "input_ids": ids}

    dl = torch.utils.data.DataLoader(DS(), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    unet, te, opt, dl = acc.prepare(unet, te, opt, dl)
    vae.to(acc.device)
    ema.to(acc.device)
    unet.train()
    te.train()
    reset_peak()
    done, t0, it = 0, None, iter(dl)
    for step in range(steps + 1):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(dl)
            batch = next(it)
        if step == 1:
            sync()
            t0 = time.perf_counter()
        with acc.autocast():
            px = batch["pixel_values"].to(vae.dtype)
            latents = vae.encode(px).latent_dist.sample() * vae.config.scaling_factor
            noise = torch.randn_like(latents)
            ts = torch.randint(0, sched.config.num_train_timesteps, (latents.shape[0],), device=latents.device)
            noisy = sched.add_noise(latents, noise, ts)
            enc = te(batch["input_ids"], return_dict=False)[0]
            pred = unet(noisy, ts, enc, return_dict=False)[0]
            loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        acc.backward(loss)
        acc.clip_grad_norm_(list(unet.parameters()) + list(te.parameters()), 1.0)
        opt.step()
        opt.zero_grad()
        ema.step(unet.parameters())
        if step >= 1:
            done += latents.shape[0]
    sync()
    return {"samples_per_s": round(done / (time.perf_counter() - t0), 2), "peak_GiB": peak_gib()}


def section_sd_finetune(tmp: Path, sz: dict, tiny: bool) -> dict:
    sd = build_sd_folder(tmp / "sd15", tiny, sz["sd_res"])
    out = {}
    for ckpt in (False, True):
        name = "with gradient checkpointing" if ckpt else "without gradient checkpointing"
        cfg = sd_config(sd, sz, f"train.gradient_checkpointing={str(ckpt).lower()}")
        out[f"ours, {name}"] = train_rate(cfg, tmp / f"sd-ft-{int(ckpt)}")
    cfg = sd_config(sd, sz)
    out["diffusers train_text_to_image.py-style loop"] = plain_sd_loop(sd, cfg, sz["plain_steps"])
    ours = out["ours, without gradient checkpointing"]["samples_per_s"]
    out["ratio ours / diffusers-style"] = round(ours / out["diffusers train_text_to_image.py-style loop"]["samples_per_s"], 2)
    return out
