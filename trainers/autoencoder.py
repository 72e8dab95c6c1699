"""Autoencoder stage: train or fine-tune a 1-channel diffusers ``AutoencoderKL``.

Loss: L1 reconstruction + ``train.kl_weight`` * KL.  The export
(``<run>/export/vae``) carries the latent ``scaling_factor`` (1 / std of the
training latents) and ``metrics.json`` with validation PSNR/SSIM, which the
diffusion stage re-checks against ``train.ssim_gate``.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch

from synth.codecs import VAECodec
from synth.config import Config
from synth.data import load_split
from synth.io import atomic_replace_dir, atomic_write_json, to_float
from synth.metrics import reconstruction_metrics
from synth.models import count_parameters, vae_from_config
from synth.seeds import step_generator
from trainers.common import (Logger, StepStats, TrainingError, batch_indices, latest_checkpoint, load_checkpoint,
                             lr_lambda, make_accelerator, prepare_run_dir, save_checkpoint,
                             set_base_lrs)


def _load_vae(cfg: Config):
    from diffusers import AutoencoderKL

    if cfg.model.pretrained:
        p = Path(cfg.model.pretrained)
        sub = "vae" if (p / "vae").is_dir() or not p.exists() else None
        return AutoencoderKL.from_pretrained(cfg.model.pretrained, subfolder=sub)
    torch.manual_seed(cfg.train.seed)
    return vae_from_config(cfg.model, cfg.data.resolution)


def vae_loss(vae, x: torch.Tensor, kl_weight: float, gen: torch.Generator) -> torch.Tensor:
    """Per-sample loss (B,): mean |x - rec| + kl_weight * KL(q(z|x) || N(0, I)) / pixels."""
    inp = x if x.shape[1] == vae.config.in_channels else x.expand(-1, vae.config.in_channels, -1, -1)
    dist = vae.encode(inp).latent_dist
    eps = torch.randn(dist.mean.shape, generator=gen).to(x.device, dist.mean.dtype)
    rec = vae.decode(dist.mean + dist.std * eps).sample
    if rec.shape[1] != x.shape[1]:
        rec = rec.mean(1, keepdim=True)
    l1 = (rec.float() - x.float()).abs().mean(dim=(1, 2, 3))
    kl = dist.kl().float() / x[0].numel()
    return l1 + kl_weight * kl


@torch.no_grad()
def latent_std(vae, images: torch.Tensor, n: int = 512) -> float:
    """Std of the unscaled latent means over (up to) ``n`` training images."""
    codec = VAECodec(vae)
    vals = []
    for i in range(0, min(n, len(images)), 64):
        m, _ = codec.encode_moments(to_float(images[i:i + 64]))
        vals.append(m.float().cpu())
    return float(torch.cat(vals).std() / vae.config.scaling_factor)


def export_vae(run: Path, vae, metrics: dict, scaling: float) -> Path:
    out = run / "export"
    tmp = run / "export.tmp"
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    atomic_write_json(tmp / "metrics.json", metrics)
    atomic_replace_dir(tmp, out)
    return out


def train_autoencoder(cfg: Config, run_dir: str | Path, log=print) -> Path:
    """Train (or resume) the autoencoder; returns ``<run>/export``."""
    accelerator = make_accelerator(cfg.train.mixed_precision, cfg.train.seed)
    main = accelerator.is_main_process
    run = prepare_run_dir(cfg, run_dir, "autoencoder") if main else Path(run_dir)
    accelerator.wait_for_everyone()
    say = log if main else (lambda *a, **k: None)

    train = load_split(cfg.data, "train", cfg.labels.classes or None)
    val = load_split(cfg.data, "val", cfg.labels.classes or None)
    say(f"data: {len(train)} train / {len(val)} val images from {train.source}")
    vae = _load_vae(cfg)
    say(f"autoencoder: {count_parameters(vae) / 1e6:.2f}M params, latent {VAECodec(vae).latent_shape(cfg.data.resolution)}")
    if cfg.train.gradient_checkpointing:
        vae.enable_gradient_checkpointing()

    optimizer = torch.optim.AdamW(vae.parameters(), lr=cfg.train.lr, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
                                  weight_decay=cfg.train.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.lr_schedule, cfg.train.warmup_steps, cfg.train.steps))
    start = 0
    resume = latest_checkpoint(run)
    if resume is not None:
        start = load_checkpoint(resume[1], {"vae": vae}, optimizer, lr_scheduler, None)["step"]
        set_base_lrs(lr_scheduler, [cfg.train.lr])
        say(f"resumed from {resume[1]} (step {start})")
    # The VAE is trained through encode/decode, not forward, so it is not wrapped in
    # DDP; gradients are averaged across processes by hand instead.
    vae.to(accelerator.device)
    optimizer = accelerator.prepare(optimizer)
    device, world, rank = accelerator.device, accelerator.num_processes, accelerator.process_index
    per_rank = cfg.train.batch_size
    global_batch = per_rank * world * cfg.train.grad_accum
    logger = Logger(run, main)

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.train.steps, initial=start, disable=not (main and cfg.train.progress), unit="step", desc="autoencoder")
    stats = StepStats(time.perf_counter())
    last_good = resume
    step = start
    vae.train()
    while step < cfg.train.steps:
        total = torch.zeros((), device=device)
        for micro in range(cfg.train.grad_accum):
            idx = batch_indices(step, len(train), global_batch, cfg.train.seed)
            lo = (micro * world + rank) * per_rank
            idx = idx[lo:lo + per_rank]
            gen = step_generator(cfg.train.seed, step, rank, stream=micro)
            imgs = train.images[idx]
            if cfg.data.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                imgs = torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)
            with accelerator.autocast():
                loss = vae_loss(vae, to_float(imgs).to(device), cfg.train.kl_weight, gen).mean() / cfg.train.grad_accum
            accelerator.backward(loss)
            total += loss.detach()
        total = accelerator.reduce(total, reduction="mean")
        if world > 1:
            for p in vae.parameters():
                if p.grad is not None:
                    p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))
        if not torch.isfinite(total):
            raise TrainingError(f"loss became {total.item()} at step {step + 1}; stopped. Last good checkpoint: "
                                f"{last_good[1] if last_good else 'none'}. Lower train.lr or set train.grad_clip")
        if cfg.train.grad_clip > 0:
            accelerator.clip_grad_norm_(vae.parameters(), cfg.train.grad_clip)
        optimizer.step()
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step == start + 1:  # steady-state rate: the first step pays for warm-up
            stats = StepStats(time.perf_counter())
        else:
            stats.samples += global_batch
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            bar.set_postfix(loss=f"{total.item():.4f}", img_s=f"{stats.rate():.1f}")
            logger.log(step, loss=total.item(), lr=lr_scheduler.get_last_lr()[0], samples_per_s=stats.rate())
        if main and cfg.train.eval_every and step % cfg.train.eval_every == 0 and step < cfg.train.steps:
            vae.eval()
            m = reconstruction_metrics(VAECodec(vae), val.images)
            vae.train()
            logger.log(step, val_psnr=m["psnr"], val_ssim=m["ssim"])
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            accelerator.wait_for_everyone()
            if main:
                path = save_checkpoint(run, step, {"vae": vae}, optimizer, lr_scheduler, None,
                                       {"samples_seen": step * global_batch}, cfg.train.keep_checkpoints)
                last_good = (step, path)
            accelerator.wait_for_everyone()
    bar.close()

    export = run / "export"
    if main:
        model = vae.eval()
        scaling = 1.0 / max(1e-6, latent_std(model, train.images))
        model.register_to_config(scaling_factor=scaling)
        m = reconstruction_metrics(VAECodec(model), val.images)
        m.update({"step": step, "scaling_factor": scaling})
        logger.log(step, val_psnr=m["psnr"], val_ssim=m["ssim"])
        export_vae(run, model, m, scaling)
        say(f"autoencoder validation: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} (gate {cfg.train.ssim_gate}); "
            f"exported to {export}")
    logger.close()
    accelerator.wait_for_everyone()
    return export
