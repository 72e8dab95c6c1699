"""Flow-matching bridge training (MedShift recipe): one model, the class is the domain.

``train_bridge(cfg, run_dir)``: the training set's classes (or ``labels.domains``)
are the acquisition domains; images need not be paired or balanced.  The model is
a ``UNet2DModel`` with a learned embedding per domain plus a null domain (dropped
with ``train.cond_drop_prob`` for classifier-free guidance), trained on the linear
(rectified) path ``x_t = (1 - t) x0 + t x1`` to predict ``v = x1 - x0`` (the
convention of :mod:`synth.paths.flow`), in the latent space of the project's
autoencoder (``model.codec: vae`` + ``model.autoencoder``) or in pixel space.

Couplings (``train.coupling``): ``independent`` pairs each image with fresh noise;
``ot`` re-pairs noise and images inside each domain of a micro-batch by exact
optimal transport (Hungarian assignment on squared distances, scipy), which
straightens the paths.  Label-aware: noise is never moved across domains.  With
``ot`` the pairing depends on the micro-batch, so 1 process x accumulation and
several processes agree in distribution, not to float tolerance.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from synth.samplers.bridge import BridgeGenerator
from synth import solvers
from synth.config import Config, ConfigError
from synth.data import check_splits_agree, load_split, subset_record
from synth.io import channel_word, labelled_grid, save_png, to_float
from synth.labels import Condition
from synth.models import build_flow_unet, count_parameters
from synth.paths.flow import FLOW
from synth.seeds import image_seed
from synth.trainers.checkpoints import latest_checkpoint
from synth.trainers.common import data_rows, place_data, training_rows
from synth.trainers.foundation import foundation_meta, foundation_record, load_bridge_foundation, new_parts_lrs
from synth.trainers.ldm import cache_latents, check_autoencoder_gate, latent_cache_file, load_codec
from synth.trainers.loop import Fitted, Task, fit, holding_run_lock, open_run, training_record


class FlowObjective(torch.nn.Module):
    """Per-sample flow-matching loss (B,): || v_theta(x_t, t | domain) - (x1 - x0) ||^2."""

    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor, domain: torch.Tensor) -> torch.Tensor:
        """x1 data, x0 noise: (B, c, h, w); t (B,) in [0, 1]; domain (B,) int (null = N) -> (B,)."""
        x_t = FLOW.interpolate(x0, x1, t)
        pred = self.unet(x_t, FLOW.network_time(t), class_labels=domain).sample
        return F.mse_loss(pred.float(), FLOW.target(x0, x1).float(), reduction="none").mean(dim=(1, 2, 3))


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Permute noise ``x0`` (B, ...) within each group so that sum ||x0 - x1||^2 is minimal.

    Exact mini-batch OT with uniform weights is an assignment problem; solved per
    group (domain) with scipy's Hungarian algorithm on the CPU.  Returns the permuted noise.
    """
    try:
        from scipy.optimize import linear_sum_assignment
    except ImportError:
        raise ConfigError("train.coupling=ot needs scipy: pip install 'synth[ot]' (or scipy)") from None
    out = x0.clone()
    g = groups.cpu()
    for k in torch.unique(g).tolist():
        idx = torch.nonzero(g == k)[:, 0]
        if len(idx) < 2:
            continue
        a, b = x0[idx.to(x0.device)].flatten(1).float(), x1[idx.to(x1.device)].flatten(1).float()
        cost = torch.cdist(b, a).pow(2).cpu().numpy()  # rows: images, cols: noise
        rows, cols = linear_sum_assignment(cost)
        out[idx.to(x0.device)[torch.as_tensor(rows)]] = x0[idx.to(x0.device)[torch.as_tensor(cols)]]
    return out


def domains_of(cfg: Config, classes: list[str]) -> list[str]:
    """The model's domains: ``labels.domains`` (which must match the data) or the data's classes."""
    if cfg.labels.domains and cfg.labels.classes and list(cfg.labels.domains) != list(cfg.labels.classes):
        raise ConfigError(f"labels.domains {list(cfg.labels.domains)} and labels.classes {list(cfg.labels.classes)} "
                          f"both name a bridge's classes and differ; set one of them")
    domains = list(cfg.labels.domains) or list(cfg.labels.classes) or list(classes)
    if len(domains) < 2:
        raise ConfigError(f"a bridge needs at least 2 domains, the data has {domains}; give images of each "
                          f"domain (a folder per domain, or a manifest whose label is the domain)")
    named = list(cfg.labels.domains) or list(cfg.labels.classes)
    key = "labels.domains" if cfg.labels.domains else "labels.classes"
    if named and named != list(classes):
        raise ConfigError(f"{key} {named} do not match the data's domains {list(classes)}; fix {key} or leave it empty")
    return domains


def preview_domains(gen: BridgeGenerator, cfg: Config, path: Path) -> torch.Tensor:
    """One row of ``sample.per_class`` samples from noise per domain, written as PNG."""
    conds, seeds = [], []
    for k in range(len(gen.domains)):
        for j in range(cfg.sample.per_class):
            conds.append(Condition(domain=k))
            seeds.append(image_seed(cfg.sample.seed, k * 100_000 + j))
    batch = gen.sample(conds, seeds, steps=cfg.sample.steps, guidance=cfg.sample.guidance,
                       sampler=solvers.for_flow(cfg.sample.sampler))
    title = (f"{cfg.data.name}: {path.stem} - one row per domain, {cfg.sample.sampler} {cfg.sample.steps} steps, "
             f"guidance {cfg.sample.guidance:g}")
    save_png(path, labelled_grid(batch.images, cfg.sample.per_class, list(gen.domains), title))
    return batch.images


@holding_run_lock
def train_bridge(cfg: Config, run_dir: str | Path, log=print) -> Path:
    """Train (or resume, or just export) a bridge; returns the export folder."""
    from synth.trainers.export import export_bridge

    r = open_run(cfg, run_dir, "bridge", log)
    accelerator, run, say, main, device = r.accelerator, r.folder, r.say, r.main, r.device

    # --- data: the classes are the domains --------------------------------------------
    t0 = time.perf_counter()
    # labels.classes names a bridge's classes as it does an LDM's (labels.domains is its older spelling)
    names = list(cfg.labels.domains) or list(cfg.labels.classes) or None
    train = load_split(cfg.data, "train", names)
    val = load_split(cfg.data, "val", names)
    domains = domains_of(cfg, train.classes)
    counts = torch.bincount(train.labels, minlength=len(domains)).tolist()
    for note in check_splits_agree(train, val):
        say(note)
    say(f"data: {len(train)} train / {len(val)} val {channel_word(train.channels)} images from {train.source}; domains "
        + ", ".join(f"{d} ({c})" for d, c in zip(domains, counts)) + f" [{time.perf_counter() - t0:.1f}s]")
    if min(counts) == 0:
        raise ConfigError(f"domain '{domains[counts.index(0)]}' has no training images; every domain needs some")
    rows = training_rows(cfg, train, say)

    # --- codec and model -------------------------------------------------------------------
    foundation = foundation_meta(cfg, "bridge")
    if foundation is not None:
        codec, unet = load_bridge_foundation(foundation, domains, cfg, train.channels, say)
        codec = codec.to(device)
    else:
        codec = load_codec(cfg, channels=train.channels).to(device)
    if latest_checkpoint(run) is None:
        r.once(lambda: check_autoencoder_gate(cfg, codec, val, say, train, run))
    c, h, _ = codec.latent_shape(cfg.data.resolution)
    torch.manual_seed(cfg.train.seed)  # initial weights are a function of the seed
    u = cfg.model.unet
    if foundation is None:
        unet = build_flow_unet(h, c, u.block_out_channels, u.layers_per_block, u.attention_head_dim, u.norm_num_groups,
                               u.attention_levels, len(domains))
    if cfg.train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    say(f"bridge ({codec.kind} space {c}x{h}x{h}): UNet {count_parameters(unet) / 1e6:.2f}M params, "
        f"{len(domains)} domains + null, coupling {cfg.train.coupling}")

    # --- the training set on the device ----------------------------------------------------------
    mean = std = images = None
    if codec.kind == "vae":
        cache_file = latent_cache_file(run, rows.data, codec)
        r.once(lambda: cache_latents(codec, rows.data.images, cache_file))
        mean, std = cache_latents(codec, rows.data.images, cache_file)
        mean, std = place_data(mean, device), place_data(std, device)
    else:
        images = place_data(rows.data.images, device)
    null = len(domains)
    labels = torch.where(rows.data.labels < 0, null, rows.data.labels).to(device)  # pool rows: the null domain

    def draw(step, gen, n):
        d = {"x0": torch.randn((n, c, h, h), generator=gen, device=gen.device),
             "t": torch.rand(n, generator=gen, device=gen.device),
             "drop": torch.rand(n, generator=gen, device=gen.device) < cfg.train.cond_drop_prob}
        if codec.kind == "vae":
            d["eps"] = torch.randn((n, c, h, h), generator=gen, device=gen.device)
        if cfg.data.hflip:
            d["flip"] = torch.rand(n, generator=gen, device=gen.device) < 0.5
        return d

    def batch(idx, d):
        if mean is not None:
            x1 = data_rows(mean, idx, device) + data_rows(std, idx, device) * d["eps"]
        else:
            imgs = data_rows(images, idx, device)
            if "flip" in d:
                imgs = torch.where(d["flip"][:, None, None, None], imgs.flip(-1), imgs)
            x1 = to_float(imgs)
        dom = labels[idx]
        x0 = ot_pairing(d["x0"], x1, dom) if cfg.train.coupling == "ot" else d["x0"]
        return {"x1": x1, "x0": x0, "t": d["t"], "domain": torch.where(d["drop"], null, dom)}

    def make_gen(model) -> BridgeGenerator:
        return BridgeGenerator(model, codec, domains, cfg.data.resolution, 1, model_id=str(run))

    def after_step(step: int, f: Fitted):
        if cfg.train.sample_every and step % cfg.train.sample_every == 0:
            preview_domains(make_gen(f.averaged("unet")), cfg, run / "samples" / f"step-{step:08d}.png")

    task = Task("bridge", FlowObjective(unet), {"unet": unet}, [("unet", cfg.train.lr)], len(rows.data), draw, batch,
                after_step=after_step, indices=rows.indices(cfg.train), lr_overrides=new_parts_lrs(cfg, foundation, say))
    fitted = fit(task, cfg.train, accelerator, run, say)

    # --- export ---------------------------------------------------------------------------
    accelerator.wait_for_everyone()
    export = run / "export"
    if main:
        final = fitted.averaged("unet")
        export_bridge(export, final, codec, domains, cfg,
                      rows.record(subset_record(train, cfg.data), cfg.train, foundation_record(foundation)),
                      training_record(fitted, accelerator))
        preview_domains(make_gen(final), cfg, run / "samples" / "final.png")
        say(f"exported to {export}; samples per domain in {run / 'samples' / 'final.png'}")
    accelerator.wait_for_everyone()
    return export


__all__ = ["train_bridge", "FlowObjective", "ot_pairing", "domains_of"]
