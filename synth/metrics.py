"""Metrics: reconstruction PSNR/SSIM (torchmetrics) and classifier-based label fidelity."""
from __future__ import annotations

import torch

from synth.io import to_float


@torch.no_grad()
def reconstruction_metrics(codec, images: torch.Tensor, batch_size: int = 32) -> dict[str, float]:
    """PSNR (dB) and SSIM of decode(encode(x)) on uint8 images (N, 1, H, W), data range [0, 1]."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    psnr = PeakSignalNoiseRatio(data_range=1.0)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size])
        p = _param(codec)
        rec = codec.decode(codec.encode(x.to(p.device, p.dtype))).float().cpu().clamp(-1, 1)
        a, b = (rec + 1) / 2, (x + 1) / 2
        psnr.update(a, b)
        ssim.update(a, b)
    return {"psnr": float(psnr.compute()), "ssim": float(ssim.compute()), "n": int(len(images))}


def _param(codec):
    vae = getattr(codec, "vae", None)
    if vae is not None:
        return next(vae.parameters())
    return torch.zeros(())


@torch.no_grad()
def label_fidelity(classifier, images: torch.Tensor, labels: torch.Tensor, num_classes: int,
                   batch_size: int = 256) -> dict:
    """Share of images (N, 1, H, W uint8) that ``classifier`` assigns to their requested label (N,)."""
    classifier.eval()
    dev = next(classifier.parameters(), torch.zeros(())).device  # a parameter-free judge runs on the CPU
    preds = []
    for i in range(0, len(images), batch_size):  # images travel to the judge's device, predictions back
        preds.append(classifier(to_float(images[i:i + batch_size].to(dev))).argmax(1).cpu())
    pred = torch.cat(preds)
    per_class = {}
    for k in range(num_classes):
        m = labels == k
        per_class[k] = float((pred[m] == k).float().mean()) if m.any() else float("nan")
    return {"overall": float((pred == labels).float().mean()), "per_class": per_class, "n": int(len(labels))}


def _poly_mmd2(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Unbiased MMD^2 with the cubic polynomial kernel k(a, b) = (a.b / d + 1)^3 (KID's kernel)."""
    d = x.shape[1]
    kxx = (x @ x.T / d + 1) ** 3
    kyy = (y @ y.T / d + 1) ** 3
    kxy = (x @ y.T / d + 1) ** 3
    m, n = x.shape[0], y.shape[0]
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return sxx + syy - 2 * kxy.mean()


def kid(real_features: torch.Tensor, fake_features: torch.Tensor, subsets: int = 50, subset_size: int = 200,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance on any features (N, d): (mean, standard error) over random subsets.

    Binkowski et al. 2018; here the features come from a small classifier trained on the
    real data, since Inception weights cannot be downloaded offline.
    """
    g = torch.Generator().manual_seed(seed)
    r, f = real_features.double(), fake_features.double()
    k = min(subset_size, len(r), len(f))
    vals = []
    for _ in range(subsets):
        ri = torch.randperm(len(r), generator=g)[:k]
        fi = torch.randperm(len(f), generator=g)[:k]
        vals.append(_poly_mmd2(r[ri], f[fi]))
    v = torch.stack(vals)
    return float(v.mean()), float(v.std() / len(v) ** 0.5)


@torch.no_grad()
def classifier_features(model, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """uint8 images (N, 1, H, W) -> pooled classifier features (N, d)."""
    model.eval()
    dev = next(model.parameters(), torch.zeros(())).device
    return torch.cat([model.features(to_float(images[i:i + batch_size].to(dev))).cpu()
                      for i in range(0, len(images), batch_size)])
