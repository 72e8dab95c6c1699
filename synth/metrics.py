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
    preds = []
    for i in range(0, len(images), batch_size):
        preds.append(classifier(to_float(images[i:i + batch_size])).argmax(1))
    pred = torch.cat(preds)
    per_class = {}
    for k in range(num_classes):
        m = labels == k
        per_class[k] = float((pred[m] == k).float().mean()) if m.any() else float("nan")
    return {"overall": float((pred == labels).float().mean()), "per_class": per_class, "n": int(len(labels))}
