"""One classifier of the protocol: a SmallCNN trained on real and/or synthetic pools with light geometric
augmentation (never flips), early stopping on validation AUROC, scored on the test split."""
from __future__ import annotations

import contextlib
import functools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from synth.classifier import SmallCNN
from synth.config import EvalConfig
from synth.data import ImageSet
from synth.io import to_float
from synth.evaluation.real import EvalError, RealSplits


def light_geometric(x: torch.Tensor, gen: torch.Generator, max_shift: int, max_rotate: float) -> torch.Tensor:
    """Random shift (up to ``max_shift`` px) and rotation (up to ``max_rotate`` degrees); no flips.

    x: (B, 1, H, W) float in [-1, 1] -> same shape; outside the image is black (-1), like the padding
    the data loader adds.  One batched affine resample instead of a loop over images.
    """
    if max_shift <= 0 and max_rotate <= 0:
        return x
    b, _, h, w = x.shape
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(max_rotate)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * max_shift
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1),
                         torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    return F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1


def strong_geometric(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """The second recipe's augmentation: shifts <= 3 px, rotations <= 15 deg, scale 0.9-1.1, brightness +-0.1 and
    contrast x0.9-1.1 (in [-1, 1] units); never flips.  x: (B, C, H, W) float in [-1, 1] -> same shape."""
    b, _, h, w = x.shape
    angle = (torch.rand(b, generator=gen) * 2 - 1) * math.radians(15.0)
    shift = (torch.rand(b, 2, generator=gen) * 2 - 1) * 3.0
    scale = 0.9 + 0.2 * torch.rand(b, generator=gen)
    cos, sin = angle.cos() / scale, angle.sin() / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0] * 2 / w], 1),
                         torch.stack([sin, cos, shift[:, 1] * 2 / h], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    y = F.grid_sample(x + 1, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1
    contrast = (0.9 + 0.2 * torch.rand(b, 1, 1, 1, generator=gen)).to(x)
    bright = ((torch.rand(b, 1, 1, 1, generator=gen) * 2 - 1) * 0.1).to(x)
    return ((y - y.mean(dim=(1, 2, 3), keepdim=True)) * contrast + y.mean(dim=(1, 2, 3), keepdim=True) + bright).clamp(-1, 1)


@dataclass(frozen=True)
class Recipe:
    """A classifier recipe: its network and its augmentation.  ``smallcnn``: :class:`SmallCNN` at
    ``eval.classifier_widths`` with light shifts/rotations; ``resnet``: :class:`SmallResNet` (16, 32, 64) with
    :func:`strong_geometric`.  Two recipes that differ in both, so a claim that holds under both is not an
    artefact of one architecture or one augmentation strength."""

    name: str

    def model(self, num_classes: int, e: EvalConfig, in_channels: int) -> torch.nn.Module:
        if self.name == "resnet":
            from synth.classifier import SmallResNet

            return SmallResNet(num_classes, (16, 32, 64), in_channels=in_channels)
        return SmallCNN(num_classes, tuple(e.classifier_widths), in_channels=in_channels)

    def augment(self, x: torch.Tensor, gen: torch.Generator, e: EvalConfig) -> torch.Tensor:
        if self.name == "resnet":
            return strong_geometric(x, gen)
        return light_geometric(x, gen, e.max_shift, e.max_rotate)


@torch.no_grad()
def predict_proba(model: SmallCNN, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """uint8 (N, 1, H, W) -> class probabilities (N, K)."""
    model.eval()
    return torch.cat([model(to_float(images[i:i + batch_size])).softmax(1) for i in range(0, len(images), batch_size)])


def scores(probs: torch.Tensor, labels: torch.Tensor) -> dict:
    """AUROC (binary: positive = class 1; else macro one-vs-rest) and accuracy of probabilities (N, K)."""
    from torchmetrics.functional import auroc

    k = probs.shape[1]
    if k == 2:
        a = auroc(probs[:, 1], labels, task="binary")
    else:
        a = auroc(probs, labels, task="multiclass", num_classes=k, average="macro")
    return {"auroc": float(a), "accuracy": float((probs.argmax(1) == labels).float().mean())}


@dataclass
class Pool:
    """Training images drawn from in one arm: uint8 (N, 1, R, R) and labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor


def draw_batch(real: Pool | None, syn: Pool | None, ratio: float, batch: int, gen: torch.Generator):
    """A batch with ``round(batch * ratio)`` synthetic images and the rest real (uint8, labels)."""
    n_syn = batch if real is None else (0 if syn is None else int(round(batch * ratio)))
    parts = []
    for pool, n in ((real, batch - n_syn), (syn, n_syn)):
        if pool is not None and n > 0:
            idx = torch.randint(0, len(pool.labels), (n,), generator=gen)
            parts.append((pool.images[idx], pool.labels[idx]))
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def fit_classifier(real: Pool | None, syn: Pool | None, ratio: float, val: ImageSet, num_classes: int, e: EvalConfig,
                   *, seed: int, steps: int, lr: float, init: torch.nn.Module | None = None,
                   recipe: str = "smallcnn") -> tuple[torch.nn.Module, dict]:
    """Train (or fine-tune ``init``) with early stopping on validation AUROC; returns the best model.

    Batches are drawn with replacement from the pools by a generator fixed by ``seed``, so a result
    depends only on (arm, seed, data) and never on what ran before it.
    """
    torch.manual_seed(seed)
    how = Recipe(recipe)
    model = how.model(num_classes, e, val.images.shape[1])
    if init is not None:
        model.load_state_dict(init.state_dict())
    gen = torch.Generator().manual_seed(seed * 7919 + 17)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    best = {"val_auroc": -1.0, "step": 0}
    best_state = {k: v.clone() for k, v in model.state_dict().items()}
    for step in range(1, steps + 1):
        model.train()
        x, y = draw_batch(real, syn, ratio, e.classifier_batch, gen)
        x = how.augment(to_float(x), gen, e)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % e.eval_every == 0 or step == steps:
            v = scores(predict_proba(model, val.images), val.labels)["auroc"]
            if v > best["val_auroc"]:
                best = {"val_auroc": v, "step": step}
                best_state = {k: t.clone() for k, t in model.state_dict().items()}
    model.load_state_dict(best_state)
    return model.eval(), best


@contextlib.contextmanager
def single_thread():
    """Classifiers train on one thread wherever they run (main process or a worker), so a result never
    depends on ``eval.workers``; small CNNs also use a second thread badly."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)


def run_arm(arm: str, splits: RealSplits, syn: Pool | None, ratio: float, e: EvalConfig, seed: int,
            recipe: str = "smallcnn") -> dict:
    """Train one classifier of ``arm`` and score it on the test split (single-threaded)."""
    with single_thread():
        return _run_arm(arm, splits, syn, ratio, e, seed, recipe)


def pretrain_steps(ratio: float, e: EvalConfig) -> int:
    """Pre-training steps of the pretrain and duplicate arms: ``ratio`` x ``eval.classifier_steps`` (at least 1)."""
    return max(1, int(round(ratio * e.classifier_steps)))


def _run_arm(arm: str, splits: RealSplits, syn: Pool | None, ratio: float, e: EvalConfig, seed: int,
             recipe: str = "smallcnn") -> dict:
    """``mixed``/``pseudo``: each batch ``ratio`` from ``syn`` (synthetic or pseudo-labelled); ``synthetic``: only
    ``syn``; ``pretrain``: ``syn`` for ratio x classifier_steps, then real fine-tuning; ``duplicate``: the same
    schedule with the real subset in place of ``syn`` (the count-matched control: as many images and steps, the
    extra ones the real images repeated under the same augmentation)."""
    k = len(splits.train.classes)
    real = Pool(splits.train.images, splits.train.labels)
    fit = functools.partial(fit_classifier, val=splits.val, num_classes=k, e=e, lr=e.classifier_lr, recipe=recipe)
    t0 = time.process_time()
    if arm == "real":
        model, best = fit(real, None, 0.0, seed=seed, steps=e.classifier_steps)
    elif arm in ("mixed", "pseudo"):
        model, best = fit(real, syn, ratio, seed=seed, steps=e.classifier_steps)
    elif arm == "synthetic":
        model, best = fit(None, syn, 1.0, seed=seed, steps=e.classifier_steps)
    elif arm in ("pretrain", "duplicate"):
        first = syn if arm == "pretrain" else real
        pre, _ = fit(None, first, 1.0, seed=seed, steps=pretrain_steps(ratio, e))
        model, best = fit(real, None, 0.0, seed=seed + 500, steps=e.finetune_steps, lr=e.classifier_lr / 4, init=pre)
    else:
        raise EvalError(f"unknown arm '{arm}'")
    res = scores(predict_proba(model, splits.test.images), splits.test.labels)
    return {**res, "val_auroc": best["val_auroc"], "best_step": best["step"], "cpu_s": time.process_time() - t0}
