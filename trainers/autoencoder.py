"""Autoencoder stage: train or fine-tune a grey or RGB diffusers ``AutoencoderKL``.

Loss: L1 reconstruction + ``train.kl_weight`` * KL [+ ``train.perceptual_weight`` * a
feature distance under a classifier trained on the real data] [+ ``train.adversarial_weight`` * a
PatchGAN hinge term from ``train.adversarial_start`` on, the critic trained alongside].  The export
(``<run>/export/vae``) carries the latent ``scaling_factor`` (1 / std of the
training latents) and ``metrics.json`` with validation PSNR/SSIM, which the
diffusion stage re-checks against ``train.ssim_gate`` (and ``train.ceiling_gate``).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from synth.codecs import VAECodec
from synth.config import Config, ConfigError, check_resolution
from synth.data import check_splits_agree, load_split, subset_record
from synth.io import (atomic_replace_dir, atomic_write_json, channel_word, check_ours, fresh_tmp_dir,
                      remove_stale_tmp_dirs, to_float)
from synth.metrics import reconstruction_metrics
from synth.models import count_parameters, vae_from_config
from synth.trainers.common import Logger
from synth.trainers.loop import Task, fit, holding_run_lock, open_run, training_record


def _load_vae(cfg: Config, channels: int = 1):
    """``model.pretrained``'s autoencoder to fine-tune, or a scratch one for ``channels``-channel images."""
    if cfg.model.pretrained:
        from synth.models import allows_pickle, load_pretrained_vae

        vae = load_pretrained_vae(cfg.model.pretrained, allow_pickle=allows_pickle(cfg.model))
        if channels > vae.config.in_channels:
            raise ConfigError(f"model.pretrained's autoencoder takes {vae.config.in_channels}-channel images but the data "
                              f"is colour ({channels} channels); drop model.pretrained or set data.channels=1")
        return vae
    torch.manual_seed(cfg.train.seed)
    return vae_from_config(cfg.model, cfg.data.resolution, channels)


def layer_features(net, x: torch.Tensor) -> list[torch.Tensor]:
    """The activations after each block (after its pooling) of a :class:`SmallCNN`: (B, C_l, H_l, W_l)."""
    out, h = [], x
    for layer in net.body:
        h = layer(h)
        if isinstance(layer, torch.nn.MaxPool2d):
            out.append(h)
    return out


def perceptual_distance(net, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) LPIPS-style distance between images ``a`` and ``b`` (B, C, H, W) in [-1, 1]: mean squared
    difference of channel-normalised features at every block of ``net`` (frozen, eval mode)."""
    total = a.new_zeros(a.shape[0], dtype=torch.float32)
    for fa, fb in zip(layer_features(net, a), layer_features(net, b)):
        fa = fa.float() / (fa.float().norm(dim=1, keepdim=True) + 1e-6)
        fb = fb.float() / (fb.float().norm(dim=1, keepdim=True) + 1e-6)
        total = total + (fa - fb).pow(2).sum(1).mean(dim=(1, 2))
    return total


class VAEObjective(torch.nn.Module):
    """Per-sample loss (B,): mean |x - rec| + kl_weight * KL(q(z|x) || N(0, I)) / pixels
    [+ perceptual_weight * :func:`perceptual_distance` under ``feature_net``]
    [+ adversarial_weight * :func:`generator_hinge` + :func:`critic_hinge` under ``disc``].

    The perceptual term keeps what a classifier of the real data looks at (lung texture, opacities):
    an L1 autoencoder blurs exactly that away and caps label fidelity (benchmarks/codec_ceiling.py).
    The adversarial term (a patch critic, as in the latent-diffusion autoencoders) puts back the texture
    both of them average out.  Autoencoder and critic share one optimizer step: the critic's gradient
    comes only from :func:`critic_hinge` (on detached reconstructions) and the autoencoder's only from
    :func:`generator_hinge` (through a copy of the critic's weights that autograd does not follow), so one
    backward trains both and a checkpoint restores both exactly.
    A module (not a function of the VAE) so that accelerate wraps it in DistributedDataParallel:
    one bucketed gradient all-reduce per step.
    """

    def __init__(self, vae, kl_weight: float, feature_net=None, perceptual_weight: float = 0.0, disc=None,
                 adversarial_weight: float = 0.0):
        super().__init__()
        self.vae, self.kl_weight, self.perceptual_weight = vae, kl_weight, perceptual_weight
        self.feature_net = [feature_net]  # a list: not a submodule, so never trained, saved or all-reduced
        self.disc, self.adversarial_weight = disc, adversarial_weight

    def forward(self, x: torch.Tensor, eps: torch.Tensor, adversarial: bool = False) -> torch.Tensor:
        """x: (B, C, H, W) in [-1, 1]; eps: (B, c, h, w) standard normal; adversarial: the generator term is on
        (the critic trains whenever there is one) -> (B,)."""
        vae = self.vae
        inp = x if x.shape[1] == vae.config.in_channels else x.expand(-1, vae.config.in_channels, -1, -1)
        dist = vae.encode(inp).latent_dist
        rec = vae.decode(dist.mean + dist.std * eps.to(dist.mean.dtype)).sample
        if rec.shape[1] != x.shape[1]:
            rec = rec.mean(1, keepdim=True)
        l1 = (rec.float() - x.float()).abs().mean(dim=(1, 2, 3))
        kl = dist.kl().float() / x[0].numel()
        loss = l1 + self.kl_weight * kl
        net = self.feature_net[0]
        if net is not None and self.perceptual_weight > 0:
            net.to(rec.device)
            loss = loss + self.perceptual_weight * perceptual_distance(net, rec.float(), x.float())
        if self.disc is not None:
            loss = loss + critic_hinge(self.disc, x, rec.detach())
            if adversarial and self.adversarial_weight > 0:
                loss = loss + self.adversarial_weight * generator_hinge(self.disc, rec)
        return loss


def critic_hinge(disc, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) hinge loss of the patch critic: 0.5 * (mean relu(1 - D(real)) + mean relu(1 + D(fake)));
    real, fake: (B, C, H, W)."""
    r, f = disc(real).float(), disc(fake).float()
    return 0.5 * (torch.relu(1 - r).mean(dim=(1, 2, 3)) + torch.relu(1 + f).mean(dim=(1, 2, 3)))


def generator_hinge(disc, fake: torch.Tensor) -> torch.Tensor:
    """Per-sample (B,) generator loss -mean D(fake) through the critic's weights held fixed: gradients reach
    ``fake`` (the autoencoder) but not the critic, which must not learn to be fooled."""
    fixed = {k: v.detach() for k, v in disc.named_parameters()}
    return -torch.func.functional_call(disc, fixed, (fake,)).float().mean(dim=(1, 2, 3))


def feature_net_for(cfg: Config, run: Path, train, say, device="cpu"):
    """The frozen classifier of the perceptual term: trained on the real training split (its labels) with its
    own seed on ``device``, saved as ``<run>/perceptual.safetensors`` and reused while the data matches."""
    from synth.trainers.classifier import cached_classifier

    return cached_classifier(run / "perceptual.safetensors", train, steps=cfg.train.perceptual_steps,
                             seed=cfg.train.seed + 4243, role="perceptual feature net", device=device, log=say)


def vae_loss(vae, x: torch.Tensor, kl_weight: float, gen: torch.Generator) -> torch.Tensor:
    """Per-sample loss (B,) of :class:`VAEObjective` with ``eps`` drawn from ``gen`` (for scripts)."""
    shape = VAECodec(vae).latent_shape(x.shape[-1])
    eps = torch.randn((x.shape[0], *shape), generator=gen, device=gen.device).to(x.device)
    return VAEObjective(vae, kl_weight)(x, eps)


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
    check_ours(out, "metrics.json", "autoencoder export")  # before the work, not after it
    remove_stale_tmp_dirs(out)
    tmp = fresh_tmp_dir(out)
    vae.register_to_config(scaling_factor=scaling)
    vae.save_pretrained(tmp / "vae", safe_serialization=True)
    from synth.samplers.artifact import weights_record

    atomic_write_json(tmp / "metrics.json", {**metrics, **weights_record(tmp)})  # hashes: checked when loaded
    from synth.cards import codec_card, write_card

    write_card(tmp, codec_card({**metrics, **weights_record(tmp)}))
    atomic_replace_dir(tmp, out, marker="metrics.json")
    return out


MIN_CRITIC_RESOLUTION = 8


def check_critic(cfg: Config, run: Path) -> None:
    """Before anything is written to ``run``: a critic needs images of at least 8 px, and a run's checkpoints
    hold a critic exactly when ``train.adversarial_weight`` > 0 (switching it on or off mid-run would leave the
    optimizer state and the checkpoints disagreeing with the model list)."""
    from synth.trainers.checkpoints import latest_checkpoint

    if cfg.train.adversarial_weight > 0 and cfg.data.resolution < MIN_CRITIC_RESOLUTION:
        raise ConfigError(f"train.adversarial_weight needs images of at least {MIN_CRITIC_RESOLUTION} px for its patch "
                          f"critic (data.resolution is {cfg.data.resolution}); set train.adversarial_weight=0")

    last = latest_checkpoint(run)
    if last is None or _recorded_stage(run) != "autoencoder":  # another stage's run: open_run says so
        return
    had = _has_critic(last[1])
    if had != (cfg.train.adversarial_weight > 0):
        was = "with" if had else "without"
        raise ConfigError(f"cannot resume '{run}': its checkpoints were written {was} a patch critic but "
                          f"train.adversarial_weight is now {cfg.train.adversarial_weight}; keep it "
                          f"{'> 0' if had else '0'} (its value may change) or train into a new --run")


def _has_critic(checkpoint: Path) -> bool:
    """Whether ``checkpoint`` was written with a critic: its state.json's file hashes say so even when the file
    itself is damaged or gone (then the resume quarantines it, not this check); the file's presence otherwise."""
    import json

    try:
        sums = json.loads((checkpoint / "state.json").read_text()).get("checksums")
    except (OSError, ValueError, AttributeError):
        sums = None
    return "disc.safetensors" in sums if isinstance(sums, dict) else (checkpoint / "disc.safetensors").is_file()


def _recorded_stage(run: Path) -> str | None:
    import json

    try:
        return json.loads((run / "run.json").read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return None


def adversarial_critic(cfg: Config, channels: int, say):
    """The :class:`PatchDiscriminator` of ``train.adversarial_weight`` (its own seed; sized for the resolution)."""
    from synth.models import PatchDiscriminator, discriminator_layers

    if cfg.train.adversarial_start >= cfg.train.steps:
        say(f"note: train.adversarial_start {cfg.train.adversarial_start} >= train.steps {cfg.train.steps}: the critic "
            "trains but the adversarial term never switches on")
    torch.manual_seed(cfg.train.seed + 7919)
    layers = discriminator_layers(cfg.data.resolution)
    disc = PatchDiscriminator(channels, 64, layers)
    say(f"patch critic: {count_parameters(disc) / 1e6:.2f}M params, {layers} strided layers; adversarial term from "
        f"step {cfg.train.adversarial_start} at weight {cfg.train.adversarial_weight}")
    return disc


@holding_run_lock
def train_autoencoder(cfg: Config, run_dir: str | Path, log=print) -> Path:
    """Train (or resume) the autoencoder; returns ``<run>/export``."""
    check_resolution(cfg, "autoencoder")  # first: at a size the autoencoder cannot take, no critic advice helps
    check_critic(cfg, Path(run_dir))  # before open_run records this config in the run
    r = open_run(cfg, run_dir, "autoencoder", log)
    accelerator, run, say, main, device = r.accelerator, r.folder, r.say, r.main, r.device

    train = load_split(cfg.data, "train", cfg.labels.classes or None)
    val = load_split(cfg.data, "val", cfg.labels.classes or None)
    for note in check_splits_agree(train, val):
        say(note)
    say(f"data: {len(train)} train / {len(val)} val {channel_word(train.channels)} images from {train.source}")
    vae = _load_vae(cfg, train.channels)
    shape = VAECodec(vae, image_channels=train.channels).latent_shape(cfg.data.resolution)
    say(f"autoencoder: {count_parameters(vae) / 1e6:.2f}M params, latent {shape}")
    if cfg.train.gradient_checkpointing:
        vae.enable_gradient_checkpointing()
    images = train.images.to(device)

    phase = {"adversarial": False}  # set by draw() for the step whose micro-batches batch() then builds

    def draw(step, gen, n):
        phase["adversarial"] = step >= cfg.train.adversarial_start
        d = {"eps": torch.randn((n, *shape), generator=gen, device=gen.device)}
        if cfg.data.hflip:
            d["flip"] = torch.rand(n, generator=gen, device=gen.device) < 0.5
        return d

    def batch(idx, d):
        imgs = images[idx]
        if "flip" in d:
            imgs = torch.where(d["flip"][:, None, None, None], imgs.flip(-1), imgs)
        return {"x": to_float(imgs), "eps": d["eps"], "adversarial": phase["adversarial"]}

    def after_step(step: int, f):
        if cfg.train.eval_every and step % cfg.train.eval_every == 0:
            vae.eval()
            m = reconstruction_metrics(VAECodec(vae, image_channels=val.channels), val.images)
            vae.train()
            Logger(run, True).log(step, val_psnr=m["psnr"], val_ssim=m["ssim"])

    net = r.once(lambda: feature_net_for(cfg, run, train, say, device)) if cfg.train.perceptual_weight > 0 else None
    if cfg.train.perceptual_weight > 0 and net is None:  # other ranks: rank 0 has written it
        net = feature_net_for(cfg, run, train, say, device)
    trained, groups, disc = {"vae": vae}, [("vae", cfg.train.lr)], None
    if cfg.train.adversarial_start and cfg.train.adversarial_weight == 0:
        say(f"note: train.adversarial_start {cfg.train.adversarial_start} has no effect: train.adversarial_weight is 0")
    if cfg.train.adversarial_weight > 0:
        disc = adversarial_critic(cfg, train.channels, say)
        trained["disc"], groups = disc, groups + [("disc", cfg.train.lr)]
    objective = VAEObjective(vae, cfg.train.kl_weight, net, cfg.train.perceptual_weight, disc,
                             cfg.train.adversarial_weight)
    task = Task("autoencoder", objective, trained, groups, len(train), draw, batch, after_step=after_step,
                clip_groups_apart=True)
    # the autoencoder keeps its raw weights (no EMA): the export is what the gate measured
    fitted = fit(task, replace(cfg.train, ema_decay=0.0), accelerator, run, say)

    export = run / "export"
    if main:
        model = vae.eval()
        scaling = 1.0 / max(1e-6, latent_std(model, train.images))
        model.register_to_config(scaling_factor=scaling)
        m = reconstruction_metrics(VAECodec(model, image_channels=val.channels), val.images)
        m.update({"step": fitted.step, "scaling_factor": scaling, "train_subset": subset_record(train, cfg.data),
                  "training": training_record(fitted, accelerator)})
        Logger(run, True).log(fitted.step, val_psnr=m["psnr"], val_ssim=m["ssim"])
        export_vae(run, model, m, scaling)
        say(f"autoencoder validation: PSNR {m['psnr']:.2f} dB, SSIM {m['ssim']:.4f} (gate {cfg.train.ssim_gate}); "
            f"exported to {export}")
    accelerator.wait_for_everyone()
    return export
