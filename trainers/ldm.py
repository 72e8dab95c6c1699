"""Latent (or pixel) diffusion training, text- and label-conditioned (RoentGen recipe).

``train_ldm(cfg, run_dir)``: running it again resumes from the last checkpoint;
a finished run only (re-)exports.  Two ways in, one loop afterwards:
``model.pretrained`` (fine-tune a diffusers Stable Diffusion folder) or models
built from the config (with an offline-trained tokenizer).
"""
from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from samplers.generator import LDMGenerator, encode_prompts
from synth.codecs import PixelCodec, VAECodec
from synth.config import Config, ConfigError
from synth.data import ImageSet, fingerprint, load_split
from synth.io import make_grid, save_png, to_float
from synth.labels import LabelSchema
from synth.metrics import reconstruction_metrics
from synth.models import (build_noise_scheduler, build_text_encoder, build_tokenizer, count_parameters,
                          load_pretrained, unet_from_config)
from synth.seeds import image_seed, step_generator
from trainers.common import (EMA, Logger, StepStats, TrainingError, batch_indices, enable_attention,
                             latest_checkpoint, load_checkpoint, lr_lambda, make_accelerator, prepare_run_dir,
                             save_checkpoint, set_base_lrs)


@dataclass
class LDMParts:
    """Everything the loop trains or conditions on."""

    unet: torch.nn.Module
    text_encoder: torch.nn.Module
    tokenizer: object
    codec: object
    schema: LabelSchema
    max_length: int
    source: str  # "pretrained:<id>" or "scratch"


# ---------------------------------------------------------------------------
# Set-up


def schema_from(cfg: Config, data: ImageSet) -> LabelSchema:
    classes = cfg.labels.classes or data.classes
    return LabelSchema(classes=classes, domains=cfg.labels.domains, prompt_template=cfg.labels.prompt_template,
                       prompts=cfg.labels.prompts)


def check_labels(data: ImageSet, schema: LabelSchema, split: str) -> None:
    if len(data) and (int(data.labels.min()) < 0 or int(data.labels.max()) >= schema.num_classes):
        raise ConfigError(f"{split} labels range {int(data.labels.min())}..{int(data.labels.max())} does not match the "
                          f"{schema.num_classes} classes {list(schema.classes)}; fix labels.classes")


def prompts_of(data: ImageSet, schema: LabelSchema) -> list[str]:
    """One prompt per image: its free text if given, else the class template."""
    by_class = [schema.prompt_for(k) for k in range(schema.num_classes)]
    if data.prompts:
        return [p or by_class[int(l)] for p, l in zip(data.prompts, data.labels)]
    return [by_class[int(l)] for l in data.labels]


def load_codec(cfg: Config, pretrained_vae=None):
    """The pixel codec, the pretrained model's VAE, or an autoencoder stage's export."""
    from diffusers import AutoencoderKL

    if cfg.model.codec == "pixel":
        return PixelCodec()
    if pretrained_vae is not None:
        return VAECodec(pretrained_vae.eval().requires_grad_(False))
    if not cfg.model.autoencoder:
        raise ConfigError("model.codec=vae needs model.autoencoder (a 'synth train autoencoder' run folder) or model.pretrained")
    p = Path(cfg.model.autoencoder)
    for cand in (p / "export" / "vae", p / "vae", p):
        if (cand / "config.json").is_file():
            return VAECodec(AutoencoderKL.from_pretrained(cand).eval().requires_grad_(False))
    raise ConfigError(f"model.autoencoder '{p}' holds no exported autoencoder (expected {p}/export/vae); train it first")


def build_parts(cfg: Config, run: Path, schema: LabelSchema, corpus: list[str], save: bool = True) -> LDMParts:
    """Load (pretrained) or build (scratch) the models; scratch tokenizers persist in the run.

    Tokenizer training is deterministic, so every rank builds it and only the main one saves.
    """
    from transformers import AutoTokenizer

    res = cfg.data.resolution
    if cfg.model.pretrained:
        try:
            comps = load_pretrained(cfg.model.pretrained)
        except (OSError, FileNotFoundError) as e:
            raise ConfigError(f"cannot load model.pretrained '{cfg.model.pretrained}': {str(e).splitlines()[0]}") from None
        codec = load_codec(cfg, comps["vae"]) if cfg.model.codec == "vae" else PixelCodec()
        tok = comps["tokenizer"]
        max_length = min(int(getattr(tok, "model_max_length", 77) or 77), comps["text_encoder"].config.max_position_embeddings)
        unet = comps["unet"]
        expected = codec.latent_shape(res)[0]
        if unet.config.in_channels != expected:
            raise ConfigError(f"pretrained UNet takes {unet.config.in_channels} channels but the {codec.kind} codec gives "
                              f"{expected}; set model.codec to match the checkpoint")
        return LDMParts(unet, comps["text_encoder"], tok, codec, schema, max_length, f"pretrained:{cfg.model.pretrained}")
    torch.manual_seed(cfg.train.seed)  # initial weights are a function of the seed
    codec = load_codec(cfg)
    tok_dir = run / "tokenizer"
    if (tok_dir / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tok = build_tokenizer(corpus, cfg.model.text.vocab_size, cfg.model.text.max_length)
        if save:
            tok.save_pretrained(tok_dir)
    t = cfg.model.text
    text_encoder = build_text_encoder(len(tok), t.hidden_size, t.num_layers, t.num_heads, t.max_length)
    c, h, _ = codec.latent_shape(res)
    unet = unet_from_config(cfg.model, h, c, cross_attention_dim=t.hidden_size)
    return LDMParts(unet, text_encoder, tok, codec, schema, t.max_length, "scratch")


def check_autoencoder_gate(cfg: Config, codec, val: ImageSet, log) -> dict:
    """Validation PSNR/SSIM of the codec; refuse (unless forced) below ``train.ssim_gate``."""
    if codec.kind == "pixel":
        return {}
    with torch.no_grad():
        m = reconstruction_metrics(codec, val.images, batch_size=32)
    log(f"autoencoder validation: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} on {len(val)} images")
    if m["ssim"] < cfg.train.ssim_gate and not cfg.train.force:
        raise TrainingError(f"autoencoder validation SSIM {m['ssim']:.3f} is below train.ssim_gate {cfg.train.ssim_gate}; "
                            f"train the autoencoder longer, or pass --set train.force=true")
    return m


def cache_latents(codec, images: torch.Tensor, cache_file: Path | None, batch_size: int = 64):
    """Encode the training set once -> (mean, std), each (N, c, h, w), fp32 on CPU."""
    from safetensors.torch import load_file

    from trainers.common import save_safetensors_atomic

    if cache_file is not None and cache_file.is_file():
        d = load_file(str(cache_file))
        return d["mean"], d["std"]
    means, stds = [], []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            m, s = codec.encode_moments(to_float(images[i:i + batch_size]))
            means.append(m.float().cpu())
            stds.append(s.float().cpu())
    mean, std = torch.cat(means).contiguous(), torch.cat(stds).contiguous()
    if cache_file is not None:
        save_safetensors_atomic({"mean": mean, "std": std}, cache_file)
    return mean, std


# ---------------------------------------------------------------------------
# Objective


def min_snr_weight(alphas_cumprod: torch.Tensor, t: torch.Tensor, gamma: float | None, prediction_type: str) -> torch.Tensor:
    """Per-sample loss weight (B,) of Min-SNR-gamma (Hang et al. 2023); ones when gamma is None."""
    if gamma is None:
        return torch.ones(t.shape, dtype=torch.float32)
    a = alphas_cumprod[t].float()
    snr = a / (1 - a)
    clipped = snr.clamp(max=gamma)
    return clipped / (snr + 1) if prediction_type == "v_prediction" else clipped / snr


def diffusion_loss(unet, x: torch.Tensor, text: torch.Tensor, noise_sched, *, prediction_type: str,
                   min_snr_gamma: float | None, noise_offset: float, gen: torch.Generator) -> torch.Tensor:
    """Per-sample diffusion loss (B,). x: clean latents (B, c, h, w); text: (B, L, D).

    All randomness comes from ``gen`` (the step's generator), drawn on the CPU.
    """
    b = x.shape[0]
    noise = torch.randn(x.shape, generator=gen)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((b, x.shape[1], 1, 1), generator=gen)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (b,), generator=gen)
    weight = min_snr_weight(noise_sched.alphas_cumprod, t, min_snr_gamma, prediction_type)
    noise, t, weight = noise.to(x.device, x.dtype), t.to(x.device), weight.to(x.device)
    noisy = noise_sched.add_noise(x, noise, t)
    target = noise if prediction_type == "epsilon" else noise_sched.get_velocity(x, noise, t)
    pred = unet(noisy, t, encoder_hidden_states=text).sample
    per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return per * weight


# ---------------------------------------------------------------------------
# Previews and export


def preview_grid(gen: LDMGenerator, cfg: Config, path: Path) -> torch.Tensor:
    """A grid with one row of ``sample.per_class`` images per class, written as PNG."""
    conds, seeds = [], []
    for k in range(gen.schema.num_classes):
        for j in range(cfg.sample.per_class):
            conds.append(gen.schema.condition(k))
            seeds.append(image_seed(cfg.sample.seed, k * 100_000 + j))
    batch = gen.sample(conds, seeds, steps=cfg.sample.steps, guidance=cfg.sample.guidance, sampler=cfg.sample.sampler)
    save_png(path, make_grid(batch.images, nrow=cfg.sample.per_class))
    return batch.images


def _ema_copy(unet, ema: EMA | None):
    m = copy.deepcopy(unet)
    if ema is not None:
        ema.copy_to(m)
    return m.eval()


def train_ldm(cfg: Config, run_dir: str | Path, log=print) -> Path:
    """Train (or resume, or just export) a diffusion model; returns the export folder."""
    from trainers.export import export_ldm

    # --- run folder, accelerator ------------------------------------------------
    accelerator = make_accelerator(cfg.train.mixed_precision, cfg.train.seed)
    main = accelerator.is_main_process
    run = prepare_run_dir(cfg, run_dir, "ldm") if main else Path(run_dir)
    accelerator.wait_for_everyone()
    say = log if main else (lambda *a, **k: None)

    # --- data -------------------------------------------------------------------
    t_load = time.perf_counter()
    train = load_split(cfg.data, "train", cfg.labels.classes or None)
    val = load_split(cfg.data, "val", cfg.labels.classes or None)
    schema = schema_from(cfg, train)
    check_labels(train, schema, "train")
    check_labels(val, schema, "validation")
    prompts = prompts_of(train, schema)
    say(f"data: {len(train)} train / {len(val)} val images from {train.source} "
        f"({train.skipped} unreadable skipped), classes {list(schema.classes)} [{time.perf_counter() - t_load:.1f}s]")

    # --- models -----------------------------------------------------------------
    corpus = sorted(set(prompts) | {schema.prompt_for(k) for k in range(schema.num_classes)})
    parts = build_parts(cfg, run, schema, corpus, save=main)
    unet, text_encoder, codec = parts.unet, parts.text_encoder, parts.codec
    train_text = cfg.train.text_lr is not None
    text_encoder.requires_grad_(train_text)
    if not train_text:
        text_encoder.eval()
    if cfg.train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train_text:
            text_encoder.gradient_checkpointing_enable()
    enable_attention(unet, cfg.train.attention)
    noise_sched = build_noise_scheduler(cfg.train.num_train_timesteps, cfg.train.beta_schedule, cfg.train.prediction_type)
    say(f"models ({parts.source}, {codec.kind} codec): UNet {count_parameters(unet) / 1e6:.2f}M, "
        f"text encoder {count_parameters(text_encoder) / 1e6:.2f}M params")

    resume = latest_checkpoint(run)
    if resume is None:
        check_autoencoder_gate(cfg, codec, val, say)

    # --- caches: encode the data set once ------------------------------------------
    device = accelerator.device
    codec.to(device)
    use_latent_cache = cfg.train.cache_latents and codec.kind == "vae" and not cfg.data.hflip
    if use_latent_cache:
        t0 = time.perf_counter()
        cache_file = run / "cache" / f"latents-{fingerprint(train)}.safetensors" if main else None
        lat_mean, lat_std = cache_latents(codec, train.images, cache_file)
        say(f"cached {len(train)} latents {tuple(lat_mean.shape[1:])} in {time.perf_counter() - t0:.1f}s")
    text_cache = None
    if not train_text and cfg.train.cache_text:
        with torch.no_grad():
            uniq = sorted(set(prompts) | {""})
            emb = encode_prompts(parts.tokenizer, text_encoder.to(device), uniq, parts.max_length)
        text_cache = {p: e for p, e in zip(uniq, emb)}
        prompt_ids = {p: i for i, p in enumerate(uniq)}
        text_table = emb  # (P, L, D)
        say(f"cached {len(uniq)} distinct prompt embeddings")

    # --- optimizer, schedule, EMA -----------------------------------------------------
    groups = [{"params": [p for p in unet.parameters() if p.requires_grad], "lr": cfg.train.lr}]
    if train_text:
        groups.append({"params": list(text_encoder.parameters()), "lr": cfg.train.text_lr})
    optimizer = torch.optim.AdamW(groups, betas=(cfg.train.adam_beta1, cfg.train.adam_beta2),
                                  weight_decay=cfg.train.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg.train.lr_schedule, cfg.train.warmup_steps, cfg.train.steps))
    ema = EMA(unet, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None
    modules = {"unet": unet, **({"text_encoder": text_encoder} if train_text else {})}

    start = 0
    if resume is not None:
        state = load_checkpoint(resume[1], modules, optimizer, lr_scheduler, ema)
        start = state["step"]
        set_base_lrs(lr_scheduler, [cfg.train.lr] + ([cfg.train.text_lr] if train_text else []))
        say(f"resumed from {resume[1]} (step {start})")

    if train_text:
        unet, text_encoder, optimizer = accelerator.prepare(unet, text_encoder, optimizer)
    else:
        text_encoder.to(device)
        unet, optimizer = accelerator.prepare(unet, optimizer)
    noise_sched.alphas_cumprod = noise_sched.alphas_cumprod.to(device)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank = cfg.train.batch_size
    global_batch = per_rank * world * cfg.train.grad_accum
    logger = Logger(run, main)

    def make_gen(model) -> LDMGenerator:
        te = accelerator.unwrap_model(text_encoder)
        return LDMGenerator(model, te, parts.tokenizer, codec, schema, noise_sched.alphas_cumprod.cpu(),
                            cfg.train.prediction_type, cfg.data.resolution, parts.max_length, model_id=str(run))

    def micro_batch(step: int, micro: int):
        """Clean x (B, c, h, w) and text (B, L, D) for this rank's slice of the step."""
        idx_all = batch_indices(step, len(train), global_batch, cfg.train.seed)
        lo = (micro * world + rank) * per_rank
        idx = idx_all[lo:lo + per_rank]
        gen = step_generator(cfg.train.seed, step, rank, stream=micro)
        drop = torch.rand(len(idx), generator=gen) < cfg.train.cond_drop_prob
        if use_latent_cache:
            eps = torch.randn(lat_mean[idx].shape, generator=gen)
            x = (lat_mean[idx] + lat_std[idx] * eps).to(device)
        else:
            imgs = train.images[idx]
            if cfg.data.hflip:
                flip = torch.rand(len(idx), generator=gen) < 0.5
                imgs = torch.where(flip[:, None, None, None], imgs.flip(-1), imgs)
            with torch.no_grad():
                x = codec.encode(to_float(imgs).to(device), generator=gen if codec.kind == "vae" else None)
        texts = ["" if d else prompts[i] for i, d in zip(idx.tolist(), drop.tolist())]
        if text_cache is not None:
            text = text_table[torch.tensor([prompt_ids[t] for t in texts])].to(device)
        else:
            text = encode_prompts(parts.tokenizer, text_encoder, texts, parts.max_length)
        return x, text, gen

    # --- loop ----------------------------------------------------------------------
    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.train.steps, initial=start, disable=not (main and cfg.train.progress), unit="step",
               dynamic_ncols=True, desc="ldm")
    stats = StepStats(time.perf_counter())
    unet.train()
    if train_text:
        text_encoder.train()
    last_good = latest_checkpoint(run)
    step = start
    while step < cfg.train.steps:
        loss_sum = torch.zeros((), device=device)
        for micro in range(cfg.train.grad_accum):
            x, text, gen = micro_batch(step, micro)
            sync = micro == cfg.train.grad_accum - 1
            ctx = accelerator.no_sync(unet) if not sync and world > 1 else contextlib.nullcontext()
            with ctx, accelerator.autocast():
                per = diffusion_loss(unet, x, text, noise_sched, prediction_type=cfg.train.prediction_type,
                                     min_snr_gamma=cfg.train.min_snr_gamma, noise_offset=cfg.train.noise_offset, gen=gen)
                loss = per.mean() / cfg.train.grad_accum
            accelerator.backward(loss)
            loss_sum += loss.detach()
        loss_all = accelerator.reduce(loss_sum, reduction="mean")
        if not torch.isfinite(loss_all):
            optimizer.zero_grad(set_to_none=True)
            bar.close()
            where = last_good[1] if last_good else "none (no checkpoint was written yet)"
            raise TrainingError(f"loss became {loss_all.item()} at step {step + 1}; stopped. Last good checkpoint: {where}. "
                                f"Lower train.lr or set train.grad_clip")
        if cfg.train.grad_clip > 0:
            params = [p for g in optimizer.param_groups for p in g["params"]]
            grad_norm = float(accelerator.clip_grad_norm_(params, cfg.train.grad_clip))
        else:
            grad_norm = None
        try:
            optimizer.step()
        except RuntimeError as e:  # an absurd LR can overflow inside the optimizer itself
            if "overflow" not in str(e):
                raise
            bar.close()
            raise TrainingError(f"optimizer step overflowed at step {step + 1}; stopped. Last good checkpoint: "
                                f"{last_good[1] if last_good else 'none'}. Lower train.lr") from None
        lr_scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if ema is not None:
            ema.update(accelerator.unwrap_model(unet))
        step += 1
        if step == start + 1:  # steady-state rate: the first step pays for warm-up
            stats = StepStats(time.perf_counter())
        else:
            stats.samples += global_batch
        bar.update(1)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            lv = loss_all.item()
            bar.set_postfix(loss=f"{lv:.4f}", img_s=f"{stats.rate():.1f}")
            extra = {} if grad_norm is None else {"grad_norm": grad_norm}
            logger.log(step, loss=lv, lr=lr_scheduler.get_last_lr()[0], samples_per_s=stats.rate(), **extra)
        if step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps:
            accelerator.wait_for_everyone()
            if main:
                saved = {k: accelerator.unwrap_model(m) for k, m in (("unet", unet), ("text_encoder", text_encoder))
                         if k in modules}
                path = save_checkpoint(run, step, saved, optimizer, lr_scheduler, ema,
                                       {"samples_seen": step * global_batch, "data_position": (step * global_batch) % len(train),
                                        "epoch": (step * global_batch) // len(train)}, cfg.train.keep_checkpoints)
                last_good = (step, path)
            accelerator.wait_for_everyone()
        if main and cfg.train.sample_every and step % cfg.train.sample_every == 0 and step < cfg.train.steps:
            preview_grid(make_gen(_ema_copy(accelerator.unwrap_model(unet), ema)), cfg, run / "samples" / f"step-{step:08d}.png")
    bar.close()
    logger.close()

    # --- export --------------------------------------------------------------------
    accelerator.wait_for_everyone()
    export = run / "export"
    if main:
        final_unet = _ema_copy(accelerator.unwrap_model(unet), ema)
        export_ldm(export, final_unet, accelerator.unwrap_model(text_encoder), parts.tokenizer, codec, schema, cfg,
                   noise_sched, parts.max_length)
        preview_grid(make_gen(final_unet), cfg, run / "samples" / "final.png")
        say(f"exported to {export}; samples in {run / 'samples' / 'final.png'}")
    accelerator.wait_for_everyone()
    return export


__all__ = ["train_ldm", "diffusion_loss", "min_snr_weight", "preview_grid", "build_parts"]
