"""One classifier of the protocol: a SmallCNN trained on real and/or synthetic pools with light geometric
augmentation (never flips), early stopping on validation AUROC, scored on the test split."""
from __future__ import annotations

import contextlib
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
                   *, seed: int, steps: int, lr: float, init: SmallCNN | None = None) -> tuple[SmallCNN, dict]:
    """Train (or fine-tune ``init``) with early stopping on validation AUROC; returns the best model.

    Batches are drawn with replacement from the pools by a generator fixed by ``seed``, so a result
    depends only on (arm, seed, data) and never on what ran before it.
    """
    torch.manual_seed(seed)
    model = SmallCNN(num_classes, tuple(e.classifier_widths), in_channels=val.images.shape[1])
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
        x = light_geometric(to_float(x), gen, e.max_shift, e.max_rotate)
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


def run_arm(arm: str, splits: RealSplits, syn: Pool | None, ratio: float, e: EvalConfig, seed: int) -> dict:
    """Train one classifier of ``arm`` and score it on the test split (single-threaded)."""
    with single_thread():
        return _run_arm(arm, splits, syn, ratio, e, seed)


def _run_arm(arm: str, splits: RealSplits, syn: Pool | None, ratio: float, e: EvalConfig, seed: int) -> dict:
    k = len(splits.train.classes)
    real = Pool(splits.train.images, splits.train.labels)
    t0 = time.process_time()
    if arm == "real":
        model, best = fit_classifier(real, None, 0.0, splits.val, k, e, seed=seed, steps=e.classifier_steps,
                                     lr=e.classifier_lr)
    elif arm == "mixed":
        model, best = fit_classifier(real, syn, ratio, splits.val, k, e, seed=seed, steps=e.classifier_steps,
                                     lr=e.classifier_lr)
    elif arm == "synthetic":
        model, best = fit_classifier(None, syn, 1.0, splits.val, k, e, seed=seed, steps=e.classifier_steps,
                                     lr=e.classifier_lr)
    elif arm == "pretrain":
        pre, _ = fit_classifier(None, syn, 1.0, splits.val, k, e, seed=seed, steps=e.classifier_steps,
                                lr=e.classifier_lr)
        model, best = fit_classifier(real, None, 0.0, splits.val, k, e, seed=seed + 500, steps=e.finetune_steps,
                                     lr=e.classifier_lr / 4, init=pre)
    else:
        raise EvalError(f"unknown arm '{arm}'")
    res = scores(predict_proba(model, splits.test.images), splits.test.labels)
    return {**res, "val_auroc": best["val_auroc"], "best_step": best["step"], "cpu_s": time.process_time() - t0}
