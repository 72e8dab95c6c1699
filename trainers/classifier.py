"""Train the small CNN classifier on real images (the judge for label fidelity)."""
from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from synth.classifier import SmallCNN
from synth.io import to_float
from synth.seeds import step_generator
from synth.trainers.common import batch_indices


def random_shift(x: torch.Tensor, max_shift: int, gen: torch.Generator) -> torch.Tensor:
    """Per-image integer translation by up to ``max_shift`` px (zero fill); no flips."""
    if max_shift <= 0:
        return x
    b, _, h, w = x.shape
    pad = F.pad(x, (max_shift,) * 4, value=-1.0)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=gen)
    return torch.stack([pad[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(b)])


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int = 600,
                     batch_size: int = 64, lr: float = 2e-3, seed: int = 0, balanced: bool = True,
                     max_shift: int = 2, log=None, device: str | torch.device = "cpu") -> SmallCNN:
    """Fit :class:`SmallCNN` on uint8 images (N, C, H, W) and labels (N,).

    ``balanced`` weights the loss by inverse class frequency so that a skewed
    training split does not bias the judge towards the majority class.
    """
    torch.manual_seed(seed)
    model = SmallCNN(num_classes, in_channels=images.shape[1]).to(device)
    images, labels = images.to(device), labels.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.15)
    counts = torch.bincount(labels, minlength=num_classes).float()  # on the device, like the loss
    weight = (counts.sum() / (num_classes * counts.clamp(min=1))) if balanced else None
    model.train()
    t0 = time.perf_counter()
    for step in range(steps):
        idx = batch_indices(step, len(images), batch_size, seed).to(device)
        gen = step_generator(seed, step, stream=99)
        x = random_shift(to_float(images[idx]), max_shift, gen)
        loss = F.cross_entropy(model(x), labels[idx], weight=weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % 100 == 0:
            log(f"classifier step {step + 1}/{steps} loss {loss.item():.4f} ({time.perf_counter() - t0:.0f}s)")
    return model.eval()


@torch.no_grad()
def accuracy(model: SmallCNN, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 256) -> dict:
    """Overall and per-class accuracy on uint8 images (N, 1, H, W)."""
    from synth.metrics import label_fidelity

    return label_fidelity(model, images, labels, model.num_classes, batch_size)


def cached_classifier(path: Path | None, data, *, steps: int, seed: int, role: str, device="cpu", log=None):
    """A :class:`SmallCNN` of ``data`` (an ImageSet: images and labels) trained on ``device``, saved at ``path``
    and reused while its record (data fingerprint, classes, steps, seed) still matches; retrained otherwise."""
    from synth.classifier import ClassifierError, load_classifier, save_classifier
    from synth.data import fingerprint

    record = {"role": role, "data": fingerprint(data), "classes": list(data.classes), "steps": steps, "seed": seed}
    if path is not None and path.is_file():
        try:
            net, _, info = load_classifier(path)
            if all(info.get(k) == v for k, v in record.items()):
                return net.to(device).eval().requires_grad_(False)
        except ClassifierError:
            pass  # damaged: retrained below
    t0 = time.perf_counter()
    net = train_classifier(data.images, data.labels, len(data.classes), steps=steps, seed=seed, device=device)
    if path is not None:
        save_classifier(net.cpu(), path, list(data.classes), record)
    if log:
        log(f"{role}: trained on the real training split ({time.perf_counter() - t0:.0f}s){f', {path}' if path else ''}")
    return net.to(device).eval().requires_grad_(False)
