"""Every path a user runs on a GPU, in one command, with numbers.

    python benchmarks/gpu_check.py                  # on a GPU machine: < 8 min on one H100/H200
    python benchmarks/gpu_check.py --tiny --out DIR # the same code on CPU with tiny models (CI runs it)

Writes ``<out>/gpu_check.md`` (a markdown table per section) and ``gpu_check.json``
(default out: benchmarks/results/). Sections:

1. pixel training: the 1.7M PneumoniaMNIST-32 model, batch 32 (target on a GPU: >= 50 steps/s)
2. latent training: the Kermany-64 UNet on a 64 px autoencoder
3. Stable-Diffusion-1.5-size fine-tune at 512 px (860M UNet, 12x768 text encoder trained with
   its own LR), bf16, batch 8, with and without gradient checkpointing
4. the same step in a loop written the way diffusers' train_text_to_image.py does it (ratio)
5. bulk sampling end to end (`run_bulk`: PNGs, metadata, manifest) vs the generator in memory
6. determinism: the same images at batch 1 vs batch 16; a resumed bulk set vs an uninterrupted one
7. the sampler vs StableDiffusionPipeline at SD-1.5 size, fp16, 25 steps, guidance 2.5, batch 16,
   same noise; compiled, with the warm-up charged to a 10,000-image set
8. the bridge: pixel training rate, and `synth translate`'s engine end to end vs in memory
9. the autoencoder with its perceptual term and patch critic (the Kermany-64 recipe), then a latent
   run's codec gate: its feature net and three ceiling judges trained on the device

Models have random weights: speed and memory do not depend on what they learned. Each
section runs on its own; a failure is recorded with its one-line reason and the others go on
(``--tiny`` exits non-zero when any section failed, so CI catches rot).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from synth.config import load_config  # noqa: E402
from synth.models import build_text_encoder, build_tokenizer, build_unet, build_vae  # noqa: E402


# ---------------------------------------------------------------------------
# Sizes: the real run and the CPU stand-in share every line of code below


def sizes(tiny: bool) -> dict:
    if tiny:
        return {"pixel_steps": 6, "latent_steps": 4, "sd_steps": 3, "sd_res": 64, "sd_batch": 2, "plain_steps": 3,
                "bulk_n": 48, "bulk_batch": 16, "bulk_steps": 3, "det_n": 4, "sampler_batch": 2, "sampler_steps": 3,
                "sampler_repeats": 2, "compile": False, "set_size": 10_000, "res": 16, "latent_res": 32, "ae_steps": 4,
                "judge_steps": 20}
    return {"pixel_steps": 400, "latent_steps": 200, "sd_steps": 12, "sd_res": 512, "sd_batch": 8, "plain_steps": 12,
            "bulk_n": 8192, "bulk_batch": 1024, "bulk_steps": 20, "det_n": 16, "sampler_batch": 16, "sampler_steps": 25,
            "sampler_repeats": 3, "compile": True, "set_size": 10_000, "res": 32, "latent_res": 64, "ae_steps": 200,
            "judge_steps": 400}


def sd_shapes(tiny: bool) -> dict:
    """Stable Diffusion 1.5's shapes (or a tiny copy): UNet 860M, VAE 84M (1 channel), CLIP 12 x 768."""
    if tiny:
        return {"unet": dict(blocks=[32, 64], layers=1, head_dim=8, cross=64, groups=32, attn=[False, True]),
                "vae": dict(blocks=[32, 32], layers=1, groups=32), "text": dict(hidden=64, layers=2, heads=2)}
    return {"unet": dict(blocks=[320, 640, 1280, 1280], layers=2, head_dim=8, cross=768, groups=32,
                         attn=[True, True, True, False]),
            "vae": dict(blocks=[128, 256, 512, 512], layers=2, groups=32), "text": dict(hidden=768, layers=12, heads=12)}


def device_info() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_GiB"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------
# 1-2. Training throughput through the real trainer


def train_rate(cfg, run: Path) -> dict:
    """Train with ``train_ldm``; steady-state rate from its own log (first step excluded)."""
    from synth.trainers.ldm import train_ldm

    reset_peak()
    t0 = time.perf_counter()
    train_ldm(cfg, run, log=lambda *a: None)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run / "logs" / "scalars.jsonl").read_text().splitlines()]
    sps = rows[-1]["samples_per_s"]
    gb = cfg.train.batch_size * cfg.train.grad_accum
    return {"steps": cfg.train.steps, "batch": gb, "samples_per_s": round(sps, 1), "steps_per_s": round(sps / gb, 2),
            "wall_s_incl_setup_export": round(wall, 1), "peak_GiB": peak_gib()}


def precision() -> str:
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


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


# ---------------------------------------------------------------------------
# 3-4. Stable-Diffusion-1.5-size fine-tune, ours vs the diffusers-example loop


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


# ---------------------------------------------------------------------------
# 5-6. Bulk sampling end to end vs in memory; determinism


def section_bulk(tmp: Path, sz: dict) -> dict:
    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.samplers.generator import load_generator
    from synth.devices import resolve_device
    from synth.seeds import image_seed

    export = tmp / "pixel" / "export"
    dev = str(resolve_device(None))
    dtype = torch.bfloat16 if precision() == "bf16" else torch.float32
    gen = load_generator(export, device=dev, dtype=dtype)
    spec = parse_label_spec(",".join(gen.schema.classes), gen.schema, log=lambda m: None)
    n, b, steps = sz["bulk_n"], sz["bulk_batch"], sz["bulk_steps"]
    from synth.samplers.bulk import condition_for

    conds = [condition_for(i, spec, gen.schema) for i in range(n)]
    seeds = [image_seed(0, i) for i in range(n)]
    gen.sample(conds[:b], seeds[:b], steps=steps, guidance=2.5)  # warm-up
    sync()
    t0 = time.perf_counter()
    for lo in range(0, n, b):
        gen.sample(conds[lo:lo + b], seeds[lo:lo + b], steps=steps, guidance=2.5)
    sync()
    mem_rate = n / (time.perf_counter() - t0)
    req = BulkRequest(model=str(export), out=str(tmp / "bulk"), n=n, spec=spec, steps=steps, guidance=2.5, batch_size=b,
                      shard_size=max(b, 1000 // b * b), dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    t0 = time.perf_counter()
    run_bulk(req, gen, device=dev, progress=False, log=lambda m: None)
    e2e = n / (time.perf_counter() - t0)
    return {"images": n, "batch": b, "steps": steps, "dtype": str(dtype).replace("torch.", ""),
            "in_memory_img_s": round(mem_rate, 1), "end_to_end_img_s": round(e2e, 1),
            "ratio": round(e2e / mem_rate, 2), "target": ">= 0.9"}


def section_determinism(tmp: Path, sz: dict) -> dict:
    """Same images at batch 1 vs batch n; a bulk set resumed after losing a shard vs the whole set."""
    import hashlib

    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.samplers.generator import load_generator
    from synth.devices import resolve_device

    dev = str(resolve_device(None))
    gen = load_generator(tmp / "pixel" / "export", device=dev)
    n = sz["det_n"]
    conds = [gen.schema.condition(i % 2) for i in range(n)]
    seeds = list(range(n))
    together = gen.sample(conds, seeds, steps=sz["bulk_steps"], guidance=2.5).images
    alone = torch.cat([gen.sample(conds[i:i + 1], seeds[i:i + 1], steps=sz["bulk_steps"], guidance=2.5).images
                       for i in range(n)])
    diff = (together.int() - alone.int()).abs()
    spec = parse_label_spec(",".join(gen.schema.classes), gen.schema, log=lambda m: None)
    b = max(2, n // 4)

    def bulk(out: Path) -> dict:
        req = BulkRequest(model=str(tmp / "pixel" / "export"), out=str(out), n=2 * n, spec=spec, steps=sz["bulk_steps"],
                          guidance=2.5, batch_size=b, shard_size=2 * b)
        run_bulk(req, gen, device=dev, progress=False, log=lambda m: None)
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*.png"))}

    whole = bulk(tmp / "det-a")
    bulk(tmp / "det-b")
    shutil.rmtree(tmp / "det-b" / "shard-00001", ignore_errors=True)  # a lost shard: done-record now lies
    for rec in (tmp / "det-b" / ".synth" / "done").glob("shard-00001*"):
        rec.unlink()
    resumed = bulk(tmp / "det-b")
    return {"images": n, "batch_1_vs_batch_n_max_grey_levels": int(diff.max()),
            "batch_1_vs_batch_n_pixels_differing": f"{float((diff > 0).float().mean()) * 100:.2f}%",
            "bulk_resumed_equals_uninterrupted": whole == resumed}


# ---------------------------------------------------------------------------
# 7. Sampler vs StableDiffusionPipeline at SD-1.5 size


def section_sampler(tmp: Path, sz: dict, tiny: bool) -> dict:
    from diffusers import StableDiffusionPipeline

    from synth.samplers.generator import LDMGenerator
    from synth.devices import resolve_device
    from synth.labels import LabelSchema
    from synth.trainers.export import export_ldm
    from synth.codecs import VAECodec
    from synth.models import build_noise_scheduler

    dev = resolve_device(None)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    res = sz["sd_res"]
    sd = tmp / "sd15" if (tmp / "sd15").is_dir() else build_sd_folder(tmp / "sd15", tiny, res)
    pipe0 = StableDiffusionPipeline.from_pretrained(sd, safety_checker=None, use_safetensors=True)
    cfg = load_config(None, [f"data.resolution={res}", "model.codec=vae", "sample.steps=25", "sample.guidance=2.5"])
    export = export_ldm(tmp / "sd15-export", pipe0.unet, pipe0.text_encoder, pipe0.tokenizer, VAECodec(pipe0.vae),
                        LabelSchema(["normal", "pneumonia"]), cfg, build_noise_scheduler(1000, "scaled_linear", "epsilon"), 77)
    del pipe0
    pipe = StableDiffusionPipeline.from_pretrained(export, safety_checker=None, torch_dtype=dtype, use_safetensors=True).to(dev)
    pipe.set_progress_bar_config(disable=True)
    gen = LDMGenerator.from_export(export, device=dev, dtype=dtype)
    b, steps, w = sz["sampler_batch"], sz["sampler_steps"], 2.5
    conds = [gen.schema.condition(i % 2) for i in range(b)]
    seeds = list(range(b))
    noise = gen.initial_noise(seeds)

    def run_pipe():
        out = pipe([c.prompt or gen.schema.prompt_for(c.label) for c in conds], height=res, width=res,
                   num_inference_steps=steps, guidance_scale=w, latents=noise.clone().to(dev, dtype), output_type="pt").images
        return (out.float().mean(1, keepdim=True) * 255).round().to(torch.uint8).cpu()

    def run_ours(g):
        return g.sample(conds, seeds, steps=steps, guidance=w, sampler="dpmpp_2m").images

    agree = int((run_pipe().int() - run_ours(gen).int()).abs().max())
    variants = {"StableDiffusionPipeline": run_pipe, "ours": lambda: run_ours(gen)}
    warmup = None
    if sz["compile"]:
        gen_c = LDMGenerator.from_export(export, device=dev, dtype=dtype).optimize(compile=True, chunk_size=None)
        sync()
        t0 = time.perf_counter()
        run_ours(gen_c)
        sync()
        warmup = time.perf_counter() - t0
        variants["ours compiled"] = lambda: run_ours(gen_c)
    times = {k: [] for k in variants}
    for _ in range(sz["sampler_repeats"]):
        for k, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    ips = {k: b / statistics.median(v) for k, v in times.items()}
    row = {"resolution": res, "batch": b, "steps": steps, "guidance": w, "dtype": str(dtype).replace("torch.", ""),
           "max_grey_levels_vs_pipeline": agree, **{f"{k} img/s": round(v, 2) for k, v in ips.items()},
           "ours / pipeline": round(ips["ours"] / ips["StableDiffusionPipeline"], 2)}
    if warmup is not None:
        n = sz["set_size"]
        effective = n / (warmup + n / ips["ours compiled"])
        row.update({"compile warm-up s": round(warmup, 1), f"compiled incl. warm-up over {n} images img/s": round(effective, 2),
                    "compiled (incl. warm-up) / pipeline": round(effective / ips["StableDiffusionPipeline"], 2),
                    "target": ">= 1.5x pipeline"})
    return row


# ---------------------------------------------------------------------------
# 8. The bridge: training and bulk translation


def three_domain_npz(path: Path, res: int, n: int = 1536, n_test: int = 256) -> Path:
    """Phantoms rendered in three 'acquisition domains' (plain, dim, inverted), unpaired."""
    import numpy as np

    from synth.data import phantom_domains

    # The test split may be larger than the train split (the GPU run translates 2048 images from 1536).
    imgs, dom = phantom_domains(max(n, n_test), res)
    np.savez(path, train_images=imgs[:n], train_labels=dom[:n, None], val_images=imgs[:64], val_labels=dom[:64, None],
             test_images=imgs[:n_test], test_labels=(np.arange(n_test) % 2)[:, None])
    return path


def section_bridge(tmp: Path, sz: dict) -> dict:
    from synth.samplers.bridge import BridgeGenerator
    from synth.samplers.bulk import run_bulk
    from synth.samplers.translate import TranslateJob, TranslateRequest, input_fingerprint, load_input
    from synth.devices import resolve_device
    from synth.trainers.bridge import train_bridge

    data = three_domain_npz(tmp / "dom3.npz", sz["res"], *((96, 32) if sz["bulk_n"] < 1000 else (1536, 2048)))
    cfg = load_config(ROOT / "configs" / "dose-shift-64-bridge-pixel.yaml", [
        f"data.name={data}", f"data.resolution={sz['res']}", "labels.domains=[plain,dim,inverted]",
        f"train.steps={sz['pixel_steps']}", "train.progress=false", "train.checkpoint_every=100000",
        f"train.log_every={sz['pixel_steps']}", f"train.mixed_precision={precision()}", "sample.per_class=2",
        "sample.steps=2"])
    reset_peak()
    t0 = time.perf_counter()
    export = train_bridge(cfg, tmp / "bridge", log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp / "bridge" / "logs" / "scalars.jsonl").read_text().splitlines()]
    train = {"steps": cfg.train.steps, "samples_per_s": round(rows[-1]["samples_per_s"], 1),
             "steps_per_s": round(rows[-1]["samples_per_s"] / cfg.train.batch_size, 2),
             "wall_s": round(time.perf_counter() - t0, 1), "peak_GiB": peak_gib()}
    dev = str(resolve_device(None))
    gen = BridgeGenerator.from_export(export, device=dev)
    inp = load_input(str(data), sz["res"], "test")
    n, b = len(inp), sz["bulk_batch"]
    gen.translate(inp.images[:b], "dim", "plain", tau=0.5, steps=sz["bulk_steps"])  # warm-up
    sync()
    t0 = time.perf_counter()
    for lo in range(0, n, b):
        gen.translate(inp.images[lo:lo + b], "dim", "plain", tau=0.5, steps=sz["bulk_steps"])
    sync()
    mem = n / (time.perf_counter() - t0)
    req = TranslateRequest(model=str(export), out=str(tmp / "translated"), n=n, spec=None, sampler="euler",
                           steps=sz["bulk_steps"], guidance=1.5, batch_size=b, shard_size=max(b, 256 // b * b),
                           input=str(data), source="dim", target="plain", tau=0.5, split="test",
                           input_hash=input_fingerprint(inp))
    t0 = time.perf_counter()
    run_bulk(req, gen, device=dev, progress=False, log=lambda m: None, job=TranslateJob(req, inp, gen))
    e2e = n / (time.perf_counter() - t0)
    return {"bridge training (pixel)": train,
            "translation": {"images": n, "batch": b, "tau": 0.5, "in_memory_img_s": round(mem, 1),
                            "end_to_end_img_s": round(e2e, 1), "ratio": round(e2e / mem, 2)}}


# ---------------------------------------------------------------------------
# Report


def to_markdown(results: dict, args, info: dict) -> str:
    lines = ["# GPU check", "", f"Command: `python benchmarks/gpu_check.py{' --tiny' if args.tiny else ''}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), ""]
    for name, res in results.items():
        lines += [f"## {name}", ""]
        if "error" in res:
            lines += [f"FAILED: {res['error']}", ""]
            continue
        nested = {k: v for k, v in res.items() if isinstance(v, dict)}
        flat = {k: v for k, v in res.items() if not isinstance(v, dict)}
        if nested:
            keys = sorted({kk for v in nested.values() for kk in v})
            lines += ["| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            lines += [f"| {k} | " + " | ".join(str(v.get(kk, "")) for kk in keys) + " |" for k, v in nested.items()]
            lines.append("")
        if flat:
            lines += ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in flat.items()] + [""]
    return "\n".join(lines) + "\n"


def write_report(args, results: dict, t_all: float) -> None:
    """Write ``gpu_check.json`` and ``gpu_check.md`` for the sections finished so far."""
    info = {**device_info(), "total_s": round(time.perf_counter() - t_all, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(to_markdown(results, args, info))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks the code paths, not the speed")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections (by number, e.g. 1 5)")
    args = ap.parse_args(argv)
    sz = sizes(args.tiny)
    tmp = Path(tempfile.mkdtemp(prefix="synth-gpu-check-"))
    sections = [
        ("1. pixel training (1.7M UNet, batch 32)", lambda: section_pixel(tmp, sz)),
        ("2. latent training (Kermany-64 UNet on a 64 px autoencoder)", lambda: section_latent(tmp, sz)),
        ("3-4. SD-1.5-size fine-tune with text encoder, vs diffusers-style loop",
         lambda: section_sd_finetune(tmp, sz, args.tiny)),
        ("5. bulk sampling end to end vs in memory (1.7M model)", lambda: section_bulk(tmp, sz)),
        ("6. determinism", lambda: section_determinism(tmp, sz)),
        ("7. sampler vs StableDiffusionPipeline at SD-1.5 size", lambda: section_sampler(tmp, sz, args.tiny)),
        ("8. bridge training and bulk translation", lambda: section_bridge(tmp, sz)),
        ("9. autoencoder (perceptual + patch critic) and the codec gate", lambda: section_autoencoder(tmp, sz)),
    ]
    results, failed = {}, 0
    t_all = time.perf_counter()
    for name, fn in sections:
        if args.only and name.split(".")[0].split("-")[0] not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # recorded; the other sections still run
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            failed += 1
        res = {**res, "section_s": round(time.perf_counter() - t0, 1)} if "error" not in res else res
        results[name] = res
        print(f"[{time.perf_counter() - t_all:.0f}s] {name}: {json.dumps(res)}", flush=True)
        # Written after every section: a run stopped at a time limit still leaves what it measured.
        write_report(args, results, t_all)
    write_report(args, results, t_all)
    print(f"wrote {args.out / 'gpu_check.md'}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
