"""Training throughput: our loop vs a plain loop written the way diffusers'
``examples/text_to_image/train_text_to_image.py`` does it; same tiny latent model,
same batch, same machine, interleaved in one run, median of several repeats.

    python benchmarks/train_throughput.py            # writes benchmarks/results/train_throughput.md

Variants (all: UNet on 16x16x4 latents of 64x64 images, CLIP-style text encoder, AdamW, EMA):
  plain      the diffusers-example loop: a DataLoader of float images, the VAE encodes and the
             text encoder runs on every step, EMAModel from diffusers.training_utils
  ours       synth's trainer with caching off (encodes every step, like plain)
  ours+cache synth's trainer with latent and text-embedding caching on
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synth.config import load_config  # noqa: E402
from synth.data import load_split  # noqa: E402
from synth.io import to_float  # noqa: E402
from synth.models import (build_noise_scheduler, build_text_encoder, build_tokenizer, count_parameters,  # noqa: E402
                          unet_from_config, vae_from_config)
from synth.trainers.ldm import train_ldm  # noqa: E402

COMMON = ["data.name=phantom", "data.resolution=64", "data.phantom_items=256", "model.codec=vae",
          "train.force=true", "train.progress=false", "train.warmup_steps=0", "train.checkpoint_every=100000",
          "train.ema_decay=0.999", "sample.per_class=1", "sample.steps=2", "train.min_snr_gamma=null"]


def make_autoencoder(tmp: Path, cfg) -> Path:
    """An (untrained) exported autoencoder: throughput does not depend on its quality."""
    torch.manual_seed(0)
    vae = vae_from_config(cfg.model, cfg.data.resolution)
    (tmp / "ae" / "export").mkdir(parents=True, exist_ok=True)
    vae.save_pretrained(tmp / "ae" / "export" / "vae", safe_serialization=True)
    return tmp / "ae"


def plain_loop(cfg, steps: int) -> float:
    """Samples/s of a diffusers-example-style loop (timed after one warm-up step)."""
    from accelerate import Accelerator
    from diffusers import AutoencoderKL
    from diffusers.training_utils import EMAModel

    acc = Accelerator(cpu=True)
    data = load_split(cfg.data, "train")
    prompts = [f"chest x-ray, {data.classes[int(l)]}" for l in data.labels]
    tok = build_tokenizer(sorted(set(prompts)), cfg.model.text.vocab_size, cfg.model.text.max_length)
    t = cfg.model.text
    text_encoder = build_text_encoder(len(tok), t.hidden_size, t.num_layers, t.num_heads, t.max_length).requires_grad_(False)
    vae = AutoencoderKL.from_pretrained(Path(cfg.model.autoencoder) / "export" / "vae", use_safetensors=True).requires_grad_(False)
    unet = unet_from_config(cfg.model, cfg.data.resolution // 4, 4, cross_attention_dim=t.hidden_size)
    sched = build_noise_scheduler(1000, "scaled_linear", "epsilon")
    ema = EMAModel(unet.parameters(), decay=cfg.train.ema_decay)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.train.lr)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(data)

        def __getitem__(self, i):
            ids = tok(prompts[i], padding="max_length", max_length=t.max_length, truncation=True, return_tensors="pt").input_ids[0]
            return {"pixel_values": to_float(data.images[i:i + 1])[0], "input_ids": ids}

    dl = torch.utils.data.DataLoader(DS(), batch_size=cfg.train.batch_size, shuffle=True, drop_last=True)
    unet, opt, dl = acc.prepare(unet, opt, dl)
    unet.train()
    done, t0, it = 0, None, iter(dl)
    for step in range(steps + 1):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(dl)
            batch = next(it)
        if step == 1:
            t0 = time.perf_counter()
        latents = vae.encode(batch["pixel_values"]).latent_dist.sample() * vae.config.scaling_factor
        noise = torch.randn_like(latents)
        ts = torch.randint(0, 1000, (latents.shape[0],))
        noisy = sched.add_noise(latents, noise, ts)
        enc = text_encoder(batch["input_ids"], return_dict=False)[0]
        pred = unet(noisy, ts, enc, return_dict=False)[0]
        loss = F.mse_loss(pred.float(), noise.float(), reduction="mean")
        acc.backward(loss)
        acc.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        ema.step(unet.parameters())
        if step >= 1:
            done += latents.shape[0]
    return done / (time.perf_counter() - t0)


def ours(cfg, steps: int, tmp: Path) -> float:
    """Samples/s of synth's trainer (its own log: steps 2..N)."""
    run = Path(tempfile.mkdtemp(dir=tmp))
    train_ldm(cfg, run, log=lambda *a: None)
    rows = [json.loads(l) for l in (run / "logs" / "scalars.jsonl").read_text().splitlines()]
    return rows[-1]["samples_per_s"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="synth-bench-"))
    base = load_config(None, COMMON + [f"train.batch_size={args.batch}"])
    ae = make_autoencoder(tmp, base)
    over = COMMON + [f"model.autoencoder={ae}", f"train.batch_size={args.batch}", f"train.steps={args.steps}",
                     f"train.log_every={args.steps}"]
    cfg_nocache = load_config(None, over + ["train.cache_latents=false", "train.cache_text=false"])
    cfg_cache = load_config(None, over + ["train.cache_latents=true", "train.cache_text=true"])
    results = {"plain": [], "ours": [], "ours+cache": []}
    for r in range(args.repeats):  # interleaved: drift in machine load hits all variants alike
        results["plain"].append(plain_loop(cfg_nocache, args.steps))
        results["ours"].append(ours(cfg_nocache, args.steps, tmp))
        results["ours+cache"].append(ours(cfg_cache, args.steps, tmp))
        print(f"repeat {r + 1}: " + ", ".join(f"{k} {v[-1]:.1f}" for k, v in results.items()), flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    unet = unet_from_config(base.model, 16, 4, cross_attention_dim=base.model.text.hidden_size)
    lines = [
        "# Training throughput", "",
        f"Command: `python benchmarks/train_throughput.py --steps {args.steps} --repeats {args.repeats} --batch {args.batch}`", "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, CPU only.",
        f"Model: UNet {count_parameters(unet) / 1e6:.2f}M params on 16x16x4 latents of 64x64 phantom images "
        f"(VAE {count_parameters(vae_from_config(base.model, 64)) / 1e6:.2f}M), text encoder hidden 64 x 2 layers; "
        f"batch {args.batch}, AdamW, EMA, grad clip 1.0, fp32.", "",
        f"Samples/s, median of {args.repeats} interleaved repeats of {args.steps} steps each:", "",
        "| loop | samples/s (median) | all repeats | vs plain |", "|---|---|---|---|",
    ]
    for k, v in results.items():
        lines.append(f"| {k} | {med[k]:.1f} | {', '.join(f'{x:.1f}' for x in v)} | {med[k] / med['plain']:.2f}x |")
    lines += ["", "Both are timed from their second step (steady state); setup, data loading and export are excluded.", ""]
    out = ROOT / "benchmarks" / "results" / "train_throughput.md"
    out.write_text("\n".join(lines))
    (out.with_suffix(".json")).write_text(json.dumps({"samples_per_s": results, "median": med}, indent=2) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
