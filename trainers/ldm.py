"""Latent (or pixel) diffusion training, text- and label-conditioned (RoentGen recipe).

``train_ldm(cfg, run_dir)``: running it again resumes from the last checkpoint;
a finished run only (re-)exports.  Two ways in, one loop afterwards:
``model.pretrained`` (fine-tune a diffusers Stable Diffusion folder) or models
built from the config (with an offline-trained tokenizer).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from synth.samplers.generator import LDMGenerator
from synth.codecs import PixelCodec, VAECodec
from synth.config import Config, ConfigError
from synth.data import ImageSet, check_splits_agree, fingerprint, load_split, subset_record
from synth.distributed import main_first
from synth.io import (atomic_replace_dir, channel_word, fresh_tmp_dir, labelled_grid, remove_stale_tmp_dirs, save_png,
                      to_float)
from synth.labels import LabelSchema
from synth.trainers.textflow import TextFlowObjective, flow_times_for
from synth.paths.diffusion import min_snr_weight  # noqa: F401  (min_snr_weight: its old home)
from synth.trainers.objectives import DiffusionObjective, draw_diffusion
from synth.metrics import reconstruction_metrics
from synth.models import (allows_pickle, build_noise_scheduler, build_text_encoder, build_tokenizer, count_parameters,
                          load_pretrained, unet_from_config)
from synth.seeds import image_seed
from synth.trainers.checkpoints import latest_checkpoint
from synth.captions import count_cut, prompts_of
from synth.textwindows import encode_windows, window_ids
from synth.trainers.common import data_rows, enable_attention, place_data, training_rows, TrainingError
from synth.trainers.foundation import check_foundation_channels, foundation_meta, foundation_record
from synth.trainers.lora import add_adapters, merged, save_adapters
from synth.trainers.loop import Fitted, Task, fit, holding_run_lock, open_run, training_record


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
                       prompts=cfg.labels.prompts, caption_template=cfg.labels.caption_template)


def check_labels(data: ImageSet, schema: LabelSchema, split: str, named: bool = True) -> None:
    """Labels in range; on the training split every class of the schema must have images (a class the model
    never saw would still be sampled and labelled as if it had)."""
    if len(data) and (int(data.labels.min()) < 0 or int(data.labels.max()) >= schema.num_classes):
        raise ConfigError(f"{split} labels range {int(data.labels.min())}..{int(data.labels.max())} does not match the "
                          f"{schema.num_classes} classes {list(schema.classes)}; fix labels.classes")
    if split == "train" and len(data):
        counts = torch.bincount(data.labels, minlength=schema.num_classes).tolist()
        unseen = [c for c, n in zip(schema.classes, counts) if n == 0]
        if unseen and named:
            raise ConfigError(f"class '{unseen[0]}' of labels.classes has no training image ({len(unseen)} such); "
                              f"remove it from labels.classes or add its images")
        if unseen:  # the classes came from the data itself: labels.classes is not the user's to fix
            raise ConfigError(f"class '{unseen[0]}' of '{data.source}' has no training image ({len(unseen)} such); "
                              f"add images of it to the training data")


def load_codec(cfg: Config, pretrained_vae=None, channels: int = 1):
    """The pixel codec, the pretrained model's VAE, or an autoencoder stage's export, for images of
    ``channels`` channels (1 grey, 3 RGB)."""
    if cfg.model.codec == "pixel":
        return PixelCodec(channels)
    if pretrained_vae is not None:
        codec = VAECodec(pretrained_vae.eval().requires_grad_(False), image_channels=channels)
    elif not cfg.model.autoencoder:
        raise ConfigError("model.codec=vae needs model.autoencoder (a 'synth train autoencoder' run folder) or model.pretrained")
    else:
        from synth.codecs import load_autoencoder

        codec = load_autoencoder(cfg.model.autoencoder, allow_pickle=allows_pickle(cfg.model))
        codec.image_channels = channels
    takes = codec.vae.config.in_channels
    if channels > takes:
        raise ConfigError(f"the autoencoder ({cfg.model.autoencoder or cfg.model.pretrained}) takes {takes}-channel images "
                          f"but the data is colour ({channels} channels); train an autoencoder on this data "
                          f"('synth train autoencoder') or set data.channels=1")
    return codec


def build_parts(cfg: Config, run: Path, schema: LabelSchema, corpus: list[str], save: bool = True,
                channels: int = 1, foundation: dict | None = None) -> LDMParts:
    """Load (pretrained) or build (scratch) the models; scratch tokenizers persist in the run.

    Tokenizer training is deterministic, so every rank builds it and only the main one saves.
    """
    from transformers import AutoTokenizer

    res = cfg.data.resolution
    if cfg.model.pretrained:
        source = cfg.model.pretrained
        if foundation is not None:  # a synth export (or its run folder): its weights checked against synth.json first
            from synth.samplers.artifact import verify_export

            verify_export(foundation, allows_pickle(cfg.model))
            source = foundation["path"]
        try:
            comps = load_pretrained(source, allow_pickle=allows_pickle(cfg.model))
        except (OSError, FileNotFoundError) as e:
            raise ConfigError(f"cannot load model.pretrained '{cfg.model.pretrained}': {str(e).splitlines()[0]}") from None
        codec = load_codec(cfg, comps["vae"], channels) if cfg.model.codec == "vae" else PixelCodec(channels)
        tok = comps["tokenizer"]
        max_length = min(int(getattr(tok, "model_max_length", 77) or 77), comps["text_encoder"].config.max_position_embeddings)
        unet = comps["unet"]
        expected = codec.latent_shape(res)[0]
        if unet.config.in_channels != expected:
            raise ConfigError(f"pretrained UNet takes {unet.config.in_channels} channels but the {codec.kind} codec gives "
                              f"{expected}; set model.codec to match the checkpoint")
        return LDMParts(unet, comps["text_encoder"], tok, codec, schema, max_length, f"pretrained:{source}")
    torch.manual_seed(cfg.train.seed)  # initial weights are a function of the seed
    codec = load_codec(cfg, channels=channels)
    tok_dir = run / "tokenizer"
    if (tok_dir / "tokenizer_config.json").is_file():
        tok = AutoTokenizer.from_pretrained(tok_dir)
    else:
        tok = build_tokenizer(corpus, cfg.model.text.vocab_size, cfg.model.text.max_length)
        if save:  # into a temp folder, then renamed: another rank may be reading run/tokenizer
            remove_stale_tmp_dirs(tok_dir)
            tmp = fresh_tmp_dir(tok_dir)
            tok.save_pretrained(tmp)
            atomic_replace_dir(tmp, tok_dir, marker="tokenizer_config.json")
    t = cfg.model.text
    text_encoder = build_text_encoder(len(tok), t.hidden_size, t.num_layers, t.num_heads, t.max_length)
    c, h, _ = codec.latent_shape(res)
    unet = unet_from_config(cfg.model, h, c, cross_attention_dim=t.hidden_size)
    return LDMParts(unet, text_encoder, tok, codec, schema, t.max_length, "scratch")


def check_autoencoder_gate(cfg: Config, codec, val: ImageSet, log, train: ImageSet | None = None,
                           run: Path | None = None) -> dict:
    """Validation PSNR/SSIM of the codec; refuse (unless ``train.force``) below ``train.ssim_gate``, and, with
    ``train.ceiling_gate`` > 0, when ``train.ceiling_judges`` real-data judges recognise, on average, fewer than
    that share of some class's reconstructed validation images (the codec caps that class's label fidelity:
    :func:`codec_ceiling`).  Several judges because one is not enough: on the same reconstructions of Kermany
    NORMAL chests, three judges that agree on real images (0.97-0.99) read 0.96, 0.46 and 0.57."""
    if codec.kind == "pixel":
        return {}
    with torch.no_grad():  # on the codec's device (the caller moves it first)
        m = reconstruction_metrics(codec, val.images, batch_size=32)
    log(f"autoencoder validation: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} on {len(val)} images")
    if m["ssim"] < cfg.train.ssim_gate and not cfg.train.force:
        raise TrainingError(f"autoencoder validation SSIM {m['ssim']:.3f} is below train.ssim_gate {cfg.train.ssim_gate}; "
                            f"train the autoencoder longer, or pass --set train.force=true")
    if cfg.train.ceiling_gate > 0 and train is not None:
        device = next(codec.vae.parameters()).device
        judges = [codec_judge(train, cfg.train.seed, run, log, device=device, index=j, steps=cfg.train.judge_steps)
                  for j in range(cfg.train.ceiling_judges)]
        rec = reconstruct(codec, val)
        c = judged_ceiling([codec_ceiling(codec, judge, val, rec=rec) for judge in judges])
        m["ceiling"] = c
        per, low_j, real = c["reconstructed"], c["reconstructed_min"], c["real"]
        who = "1 judge" if len(judges) == 1 else f"{len(judges)} judges"
        log(f"codec ceiling ({who}: mean accuracy on reconstructed [lowest judge] / real validation images): "
            + ", ".join(f"{val.classes[k]} {per[k]:.3f} [{low_j[k]:.3f}] / {real[k]:.3f}" for k in per))
        low = [k for k in per if per[k] == per[k] and per[k] < cfg.train.ceiling_gate]
        if low and not cfg.train.force:
            k = low[0]
            raise TrainingError(f"the autoencoder caps class '{val.classes[k]}': {who} trained on the real data "
                                f"recognise on average {per[k]:.3f} of its reconstructed validation images (below "
                                f"train.ceiling_gate {cfg.train.ceiling_gate}); train the autoencoder longer or with "
                                f"train.perceptual_weight / train.adversarial_weight, or pass --set train.force=true")
    return m


def codec_judge(train: ImageSet, seed: int, run: Path | None, log, device="cpu", index: int = 0, steps: int = 400):
    """Judge ``index``: a classifier of the real training split (its own seed), saved as
    ``<run>/codec-judge[-index].safetensors`` and reused while the data matches."""
    from synth.trainers.classifier import cached_classifier

    name = "codec-judge.safetensors" if index == 0 else f"codec-judge-{index}.safetensors"
    role = "codec judge" if index == 0 else f"codec judge {index + 1}"  # the first keeps its name: cached judges stay valid
    return cached_classifier(run / name if run is not None else None, train, steps=steps,
                             seed=seed + 977 + 1000 * index, role=role, device=device, log=log)


def judged_ceiling(ceilings: list[dict]) -> dict:
    """Per-class summary of several judges' :func:`codec_ceiling` results: mean accuracy on the real images
    (``real``) and on the reconstructions (``reconstructed``), the lowest judge's (``reconstructed_min``) and
    every judge's (``per_judge``); keys are class indices, NaN where a class has no validation image."""
    rec = [c["reconstructed"]["per_class"] for c in ceilings]
    keys = list(rec[0])
    return {"real": {k: sum(c["real"]["per_class"][k] for c in ceilings) / len(ceilings) for k in keys},
            "reconstructed": {k: sum(r[k] for r in rec) / len(rec) for k in keys},
            "reconstructed_min": {k: min(r[k] for r in rec) for k in keys}, "per_judge": rec}


@torch.no_grad()
def reconstruct(codec, data: ImageSet, batch: int = 64) -> torch.Tensor:
    """``data``'s images encoded and decoded at the latent mean: uint8 (N, C, H, W) on the CPU."""
    from synth.io import to_uint8

    p = next(codec.vae.parameters())
    return torch.cat([to_uint8(codec.decode(codec.encode(to_float(data.images[i:i + batch]).to(p.device, p.dtype))).float()).cpu()
                      for i in range(0, len(data), batch)])


@torch.no_grad()
def codec_ceiling(codec, judge, data: ImageSet, batch: int = 64, rec: torch.Tensor | None = None) -> dict:
    """The judge's per-class accuracy on ``data``'s real images and on their reconstructions (encode -> decode
    at the latent mean; ``rec`` from :func:`reconstruct` when several judges score the same codec): the most
    label fidelity a diffusion model on this codec can reach."""
    from synth.metrics import label_fidelity

    rec = reconstruct(codec, data, batch) if rec is None else rec
    n = len(data.classes)
    return {"real": label_fidelity(judge, data.images, data.labels, n),
            "reconstructed": label_fidelity(judge, rec, data.labels, n)}


def codec_hash(codec) -> str:
    """Short SHA-256 of the codec's weights: a retrained autoencoder invalidates cached latents."""
    import hashlib

    if codec.kind != "vae":
        return "pixel"
    h = hashlib.sha256()
    for k, v in sorted(codec.vae.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def latent_cache_file(run: Path, data: ImageSet, codec) -> Path:
    """Where the encoded training set lives: keyed by the data AND the codec's weights."""
    return run / "cache" / f"latents-{fingerprint(data)}-{codec_hash(codec)}.safetensors"


def cache_latents(codec, images: torch.Tensor, cache_file: Path | None, batch_size: int = 64):
    """Encode the training set once -> (mean, std), each (N, c, h, w), fp32 on CPU.

    Read from ``cache_file`` when it exists; written there (atomically) otherwise.
    """
    from safetensors.torch import load_file

    from synth.trainers.common import save_safetensors_atomic

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
    title = (f"{cfg.data.name}: {path.stem} - one row per class, {cfg.sample.sampler} {cfg.sample.steps} steps, "
             f"guidance {cfg.sample.guidance:g}")
    save_png(path, labelled_grid(batch.images, cfg.sample.per_class, list(gen.schema.classes), title))
    return batch.images


@dataclass
class TrainingData:
    """The training set as the loop reads it, on the device.

    ``x``: uint8 images (N, 1, H, W) or cached latent moments ``mean``/``std``
    (N, c, h, w); ``prompt_id`` (N,) indexes ``text`` (P, L, D) cached embeddings
    or ``ids`` (P, L) token ids; ``empty_id`` is the "" prompt (condition dropout).
    """

    images: torch.Tensor | None
    mean: torch.Tensor | None
    std: torch.Tensor | None
    prompt_id: torch.Tensor
    text: torch.Tensor | None
    ids: torch.Tensor | None
    empty_id: int


def prompt_tables(parts: LDMParts, prompts: list[str], text_encoder, cache_text: bool, device,
                  windows: int = 1) -> tuple:
    """(prompt_id (N,), text (P, W x L, D) or None, ids (P, L) or (P, W, L) or None, empty id) on ``device``."""
    uniq = sorted(set(prompts) | {""})
    pos = {p: i for i, p in enumerate(uniq)}
    prompt_id = torch.tensor([pos[p] for p in prompts], dtype=torch.long, device=device)
    if windows > 1:
        ids = window_ids(parts.tokenizer, uniq, parts.max_length, windows)[0].to(device)
    else:
        ids = parts.tokenizer(uniq, padding="max_length", max_length=parts.max_length, truncation=True,
                              return_tensors="pt").input_ids.to(device)
    if cache_text:
        with torch.no_grad():
            return prompt_id, encode_windows(text_encoder.to(device), ids).float(), None, pos[""]
    return prompt_id, None, ids, pos[""]


def training_data(cfg: Config, run: Path, train: ImageSet, prompts: list[str], parts: LDMParts, text_encoder, codec,
                  train_text: bool, device, world: int, rank: int, say) -> TrainingData:
    """Encode once (rank 0 writes the latent cache, the others read it) and place the set on the device."""
    mean = std = images = None
    if cfg.train.cache_latents and codec.kind == "vae" and not cfg.data.hflip:
        t0 = time.perf_counter()
        cache_file = latent_cache_file(run, train, codec)
        if not cache_file.is_file():
            say(f"encoding {len(train)} training images into the latent cache (once) ...")
        main_first(lambda: cache_latents(codec, train.images, cache_file), world, rank)
        mean, std = cache_latents(codec, train.images, cache_file)  # a read: the file exists now
        mean, std = place_data(mean, device), place_data(std, device)
        say(f"cached {len(train)} latents {tuple(mean.shape[1:])} in {time.perf_counter() - t0:.1f}s ({cache_file.name})")
    else:
        images = place_data(train.images, device)
    cache_text = not train_text and cfg.train.cache_text
    prompt_id, text, ids, empty = prompt_tables(parts, prompts, text_encoder, cache_text, device, cfg.model.text.windows)
    if text is not None:
        say(f"cached {len(text)} distinct prompt embeddings")
    return TrainingData(images, mean, std, prompt_id, text, ids, empty)


@holding_run_lock
def train_ldm(cfg: Config, run_dir: str | Path, log=print) -> Path:
    """Train (or resume, or just export) a diffusion model; returns the export folder."""
    from synth.trainers.export import export_ldm

    r = open_run(cfg, run_dir, "ldm", log)
    accelerator, run, say, main, device, world = r.accelerator, r.folder, r.say, r.main, r.device, r.world

    # --- data -------------------------------------------------------------------
    t_load = time.perf_counter()
    train = load_split(cfg.data, "train", cfg.labels.classes or None)
    val = load_split(cfg.data, "val", cfg.labels.classes or None)
    schema = schema_from(cfg, train)
    check_labels(train, schema, "train", named=bool(cfg.labels.classes))
    check_labels(val, schema, "validation")
    prompts = prompts_of(train, schema, cfg.labels, say)
    for note in check_splits_agree(train, val):
        say(note)
    say(f"data: {len(train)} train / {len(val)} val {channel_word(train.channels)} images from {train.source} "
        f"({train.skipped} unreadable skipped), classes {list(schema.classes)} [{time.perf_counter() - t_load:.1f}s]")

    # --- models -----------------------------------------------------------------
    foundation = foundation_meta(cfg, "ldm")  # a synth export to fine-tune: same family, size, codec, channels
    if foundation is not None:
        check_foundation_channels(foundation, train.channels)
    corpus = sorted(set(prompts) | {schema.prompt_for(k) for k in range(schema.num_classes)})
    # rank 0 builds (and saves the tokenizer) first; the others then load what it saved
    parts = r.once(lambda: build_parts(cfg, run, schema, corpus, save=True, channels=train.channels,
                                       foundation=foundation))
    if parts is None:
        parts = build_parts(cfg, run, schema, corpus, save=False, channels=train.channels, foundation=foundation)
    unet, text_encoder, codec = parts.unet, parts.text_encoder, parts.codec
    windows = cfg.model.text.windows
    cut = count_cut(parts.tokenizer, prompts, parts.max_length, windows)
    span = f"window of {parts.max_length} tokens" if windows == 1 else f"{windows} windows of {parts.max_length} tokens"
    if cut:
        say(f"{cut} of {len(set(prompts))} distinct prompts are longer than the text encoder's {span} and are cut to it"
            + (" (model.text.windows > 1 encodes longer prompts in pieces)" if windows == 1 else ""))
    train_text = cfg.train.text_lr is not None
    if cfg.train.lora_text_encoder and not train_text:
        raise ConfigError("train.lora_text_encoder=true trains text-encoder adapters, which need a learning rate: "
                          "set train.text_lr (e.g. 1e-4)")
    text_encoder.requires_grad_(train_text)
    if not train_text:
        text_encoder.eval()
    if cfg.train.lora_rank:
        add_adapters(cfg, unet, text_encoder, say)
    if cfg.train.new_parts_lr is not None:
        say("note: train.new_parts_lr applies to a bridge's new class embeddings; a text model adds none (ignored)")
    if cfg.train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
        if train_text:
            text_encoder.gradient_checkpointing_enable()
    enable_attention(unet, cfg.train.attention)
    noise_sched = build_noise_scheduler(cfg.train.num_train_timesteps, cfg.train.beta_schedule, cfg.train.prediction_type)
    say(f"models ({parts.source}, {codec.kind} codec): UNet {count_parameters(unet) / 1e6:.2f}M, "
        f"text encoder {count_parameters(text_encoder) / 1e6:.2f}M params")

    codec.to(device)
    if latest_checkpoint(run) is None:
        if codec.kind == "vae":
            say(f"checking the autoencoder on {len(val)} validation images (train.ssim_gate {cfg.train.ssim_gate}) ...")
        r.once(lambda: check_autoencoder_gate(cfg, codec, val, say, train, run))

    # --- the training set on the device: cached latents or images, prompt tables ----------
    rows = training_rows(cfg, train, say)  # pool rows (if any) train under the null prompt ""
    data = training_data(cfg, run, rows.data, prompts + [""] * (len(rows.data) - len(train)), parts, text_encoder,
                         codec, train_text, device, world, accelerator.process_index, say)

    flow = cfg.train.path == "flow"
    objective = (TextFlowObjective(unet, text_encoder if data.text is None else None) if flow else
                 DiffusionObjective(unet, text_encoder if data.text is None else None, noise_sched.alphas_cumprod,
                                    cfg.train.prediction_type, cfg.train.min_snr_gamma))
    trained = {"unet": unet, **({"text_encoder": text_encoder} if train_text else {})}
    if not train_text:
        text_encoder.to(device)
    shape = codec.latent_shape(cfg.data.resolution)

    def draw(step, gen, n):
        d = draw_diffusion(step, gen, n, shape=shape, num_timesteps=cfg.train.num_train_timesteps,
                           noise_offset=cfg.train.noise_offset, cond_drop_prob=cfg.train.cond_drop_prob,
                           latent_eps=codec.kind == "vae", hflip=cfg.data.hflip)
        return flow_times_for(d, gen) if flow else d

    def batch(idx, d):
        """This rank's micro-batch: clean x (B, c, h, w), noise, t and the text condition."""
        if data.mean is not None:
            x = data_rows(data.mean, idx, device) + data_rows(data.std, idx, device) * d["eps"]
        else:
            imgs = data_rows(data.images, idx, device)
            if "flip" in d:
                imgs = torch.where(d["flip"][:, None, None, None], imgs.flip(-1), imgs)
            with torch.no_grad():
                x = codec.encode(to_float(imgs), noise=d.get("eps"))
        pid = torch.where(d["drop"], data.empty_id, data.prompt_id[idx])
        cond = {"text": data.text[pid]} if data.text is not None else {"ids": data.ids[pid]}
        return {"x": x, "noise": d["noise"], "t": d["t"], **cond}

    def make_gen(model, te) -> LDMGenerator:
        return LDMGenerator(model, te, parts.tokenizer, codec, schema, noise_sched.alphas_cumprod.cpu(),
                            cfg.train.prediction_type, cfg.data.resolution, parts.max_length, model_id=str(run),
                            path=cfg.train.path, windows=cfg.model.text.windows)

    def after_step(step: int, f: Fitted):
        if cfg.train.sample_every and step % cfg.train.sample_every == 0:
            te = f.averaged("text_encoder") if train_text else text_encoder
            preview_grid(make_gen(f.averaged("unet"), te), cfg, run / "samples" / f"step-{step:08d}.png")

    lrs = [("unet", cfg.train.lr)] + ([("text_encoder", cfg.train.text_lr)] if train_text else [])
    task = Task("ldm", objective, trained, lrs, len(rows.data), draw, batch, after_step=after_step,
                indices=rows.indices(cfg.train))
    fitted = fit(task, cfg.train, accelerator, run, say)

    # --- export --------------------------------------------------------------------
    accelerator.wait_for_everyone()
    export = run / "export"
    if main:
        final_unet = fitted.averaged("unet")
        final_te = fitted.averaged("text_encoder") if train_text else text_encoder
        extra = None
        if cfg.train.lora_rank:  # the export holds the merged model; lora/ the adapters alone, in diffusers' format
            lora_unet, lora_te = final_unet, final_te
            extra = lambda tmp: save_adapters(tmp / "lora", lora_unet, lora_te, cfg.train.lora_text_encoder)  # noqa: E731
            final_unet, final_te = merged(final_unet), (merged(final_te) if cfg.train.lora_text_encoder else final_te)
        export_ldm(export, final_unet, final_te, parts.tokenizer, codec, schema, cfg, noise_sched, parts.max_length,
                   rows.record(subset_record(train, cfg.data), cfg.train, foundation_record(foundation)), extra,
                   training_record(fitted, accelerator))
        preview_grid(make_gen(final_unet, final_te), cfg, run / "samples" / "final.png")
        say(f"exported to {export}; samples in {run / 'samples' / 'final.png'}")
    accelerator.wait_for_everyone()
    return export


__all__ = ["train_ldm", "DiffusionObjective", "draw_diffusion", "min_snr_weight", "preview_grid", "build_parts"]
