"""Metrics: reconstruction PSNR/SSIM (torchmetrics), classifier-based label fidelity, and the fidelity and
privacy metrics of a synthetic set (FID/KID, MS-SSIM diversity, memorisation, privacy score)."""
from __future__ import annotations

import torch

from synth.io import to_float


@torch.no_grad()
def reconstruction_metrics(codec, images: torch.Tensor, batch_size: int = 32) -> dict[str, float]:
    """PSNR (dB) and SSIM of decode(encode(x)) on uint8 images (N, 1, H, W), data range [0, 1]."""
    from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

    psnr = PeakSignalNoiseRatio(data_range=1.0)
    ssim = StructuralSimilarityIndexMeasure(data_range=1.0, **ssim_window(min(images.shape[-2:])))
    for i in range(0, len(images), batch_size):
        x = to_float(images[i:i + batch_size])
        p = _param(codec)
        rec = codec.decode(codec.encode(x.to(p.device, p.dtype))).float().cpu().clamp(-1, 1)
        a, b = (rec + 1) / 2, (x + 1) / 2
        psnr.update(a, b)
        ssim.update(a, b)
    return {"psnr": float(psnr.compute()), "ssim": float(ssim.compute()), "n": int(len(images))}


def ssim_window(side: int) -> dict:
    """SSIM's window for images of ``side`` px: the usual 11 px Gaussian (sigma 1.5), or below 12 px a uniform
    window of the largest odd size whose reflection pad (half a window) stays under the side."""
    if side > 11:
        return {}
    return {"gaussian_kernel": False, "kernel_size": max(3, side if side % 2 else side - 1)}


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


# ---------------------------------------------------------------------------
# Fidelity and privacy of a synthetic set (``synth eval fidelity``): FID/KID on the project's own
# feature extractor, MS-SSIM diversity, nearest-neighbour memorisation and a CheXGenBench-style
# privacy score.  Pure functions on tensors; the extractor is trained in synth/evaluation/fidelity.py.


class FeatureNet(torch.nn.Module):
    """A trained :class:`synth.classifier.SmallCNN` as a torchmetrics feature extractor.

    Input as torchmetrics passes it to a custom ``feature`` module (it does no conversion itself):
    uint8 (B, C, H, W) in 0..255, or float (B, C, H, W) in [0, 1] (what ``normalize=True`` callers
    hold). C may be 1 or 3; RGB is averaged to grey for a grey model, grey repeated for an RGB one.  Output: pooled features
    (B, num_features) float32 on the input's device.  Always in eval mode (BatchNorm uses its running
    statistics, so a feature does not depend on the rest of the batch).
    """

    def __init__(self, model):
        super().__init__()
        self.model = model.eval()
        self.num_features = int(model.widths[-1])

    def train(self, mode: bool = True) -> "FeatureNet":
        return super().train(False)  # torchmetrics or a caller's .train() must not unfreeze BatchNorm

    @torch.no_grad()
    def forward(self, imgs: torch.Tensor) -> torch.Tensor:
        if imgs.ndim != 4 or imgs.shape[1] not in (1, 3):
            raise ValueError(f"FeatureNet expects images (B, 1 or 3, H, W), got shape {tuple(imgs.shape)}")
        x = imgs.float() / 255.0 if imgs.dtype == torch.uint8 else imgs.float()  # -> [0, 1]
        want = getattr(self.model, "in_channels", 1)
        if x.shape[1] == 3 and want == 1:
            x = x.mean(1, keepdim=True)
        elif x.shape[1] == 1 and want == 3:
            x = x.expand(-1, 3, -1, -1)
        p = next(self.model.parameters(), torch.zeros(()))
        return self.model.features((x * 2 - 1).to(p.device, p.dtype)).float().to(imgs.device)


def _as_feature_net(net) -> torch.nn.Module:
    return net if isinstance(net, FeatureNet) or not hasattr(net, "widths") else FeatureNet(net)


def fid_kid(real_images: torch.Tensor, fake_images: torch.Tensor, feature_net, *, kid_subset_size: int = 1000,
            kid_subsets: int = 100, batch_size: int = 256, seed: int = 0) -> dict:
    """FID and KID of uint8 images (N, 1, H, W) with torchmetrics on the project's own features.

    ``feature_net``: a SmallCNN (wrapped in :class:`FeatureNet`) or any module mapping uint8
    (B, C, H, W) to (B, d) with a ``num_features`` attribute.  KID's subset size is capped at the
    smaller set (torchmetrics refuses a larger one); KID's subsets are drawn from the global torch RNG,
    so it is seeded (and restored afterwards) for reproducible numbers.
    Returns {"fid", "kid_mean", "kid_std" (std over subsets), "kid_subset_size", "n_real", "n_fake",
    "num_features"}.
    """
    import warnings

    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    n_real, n_fake = len(real_images), len(fake_images)
    if min(n_real, n_fake) < 2:
        raise ValueError(f"FID/KID need at least 2 images per set (got {n_real} real, {n_fake} synthetic)")
    net = _as_feature_net(feature_net)
    k = int(min(kid_subset_size, n_real, n_fake))
    fid = FrechetInceptionDistance(feature=net, reset_real_features=True)
    with warnings.catch_warnings():  # "KID will save all extracted features in buffer": known and small here
        warnings.simplefilter("ignore", UserWarning)
        kidm = KernelInceptionDistance(feature=net, subsets=kid_subsets, subset_size=k)
    for images, real in ((real_images, True), (fake_images, False)):
        for i in range(0, len(images), batch_size):
            b = images[i:i + batch_size]
            fid.update(b, real=real)
            kidm.update(b, real=real)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        km, ks = kidm.compute()
    return {"fid": float(fid.compute()), "kid_mean": float(km), "kid_std": float(ks), "kid_subset_size": k,
            "n_real": int(n_real), "n_fake": int(n_fake), "num_features": int(net.num_features)}


# MS-SSIM's standard weights for 5 scales (Wang, Simoncelli & Bovik 2003).
_MS_SSIM_BETAS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim_settings(size: int) -> dict:
    """Kernel, sigma and betas (one per scale) for MS-SSIM on ``size`` x ``size`` images.

    The standard setting (11-tap Gaussian, 5 scales) needs images of at least ~176 px: each scale
    halves the image and SSIM is only defined where the whole window fits.  At 28 px (MedMNIST) and
    32 px we use a 3-tap window (sigma 1.0) and as many scales as keep the coarsest scale >= 7 px,
    i.e. 3 scales (28 -> 14 -> 7, 32 -> 16 -> 8): a 3-tap window then still has 5x5 (6x6) valid
    positions at the coarsest scale, where 4 scales would leave 1 (2x2).  It also satisfies
    torchmetrics' own check (``size // (scales - 1) ** 2 > kernel - 1``).  The betas are the first
    ``scales`` standard weights, renormalised to sum to 1 (the finest scales keep their relative say).
    16 px gets 2 scales, 64 px 4, >= 112 px 5.
    """
    scales = 1
    while scales < 5 and size // 2 ** scales >= 7:
        scales += 1
    b = torch.tensor(_MS_SSIM_BETAS[:scales], dtype=torch.float64)
    return {"kernel_size": 3, "sigma": 1.0, "betas": tuple(float(v) for v in b / b.sum()), "scales": scales}


@torch.no_grad()
def ms_ssim_diversity(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, pairs: int = 200,
                      seed: int = 0, batch_size: int = 256) -> dict:
    """Mean MS-SSIM over ``pairs`` random pairs of distinct images of the same class, per class.

    images: uint8 (N, 1, H, W); labels: (N,) in [0, num_classes).  Lower = more diverse; 1 = all
    images of the class identical.  Pairs are drawn with a fixed ``seed`` (two different indices each,
    with replacement across pairs); a class with fewer than 2 images gets NaN.  Compare with the same
    on real images of the same size.  Returns {"per_class": {k: value}, "mean": mean over the classes
    that have a value, "pairs": pairs, "settings": :func:`ms_ssim_settings`}.
    """
    from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure

    st = ms_ssim_settings(min(images.shape[-2:]))
    g = torch.Generator().manual_seed(seed)
    per_class = {}
    for k in range(num_classes):
        idx = (labels == k).nonzero().flatten()
        n = len(idx)
        if n < 2:
            per_class[k] = float("nan")
            continue
        i = torch.randint(0, n, (pairs,), generator=g)
        j = (i + torch.randint(1, n, (pairs,), generator=g)) % n  # never i itself
        m = MultiScaleStructuralSimilarityIndexMeasure(kernel_size=st["kernel_size"], sigma=st["sigma"],
                                                       betas=st["betas"], data_range=1.0)
        for s in range(0, pairs, batch_size):
            a = images[idx[i[s:s + batch_size]]].float() / 255.0
            b = images[idx[j[s:s + batch_size]]].float() / 255.0
            m.update(a, b)
        per_class[k] = float(m.compute())
    vals = [v for v in per_class.values() if v == v]
    return {"per_class": per_class, "mean": float(sum(vals) / len(vals)) if vals else float("nan"),
            "pairs": int(pairs), "settings": st}


@torch.no_grad()
def nearest_neighbours(query: torch.Tensor, reference: torch.Tensor, *, exclude_same_index: bool = False,
                       chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest reference row for each query row by cosine distance on L2-normalised features.

    query (Nq, d), reference (Nr, d) -> (distances (Nq,) = 1 - cos in [0, 2], indices (Nq,) into
    reference).  ``exclude_same_index``: query and reference are the same set (Nq == Nr) and row i may
    not match itself (nearest *other* image).  Computed ``chunk`` query rows at a time in float64: in
    float32, 1 - cos of identical vectors is ~1e-7, as large as the distance between real near neighbours.
    """
    q = torch.nn.functional.normalize(query.double(), dim=1)
    r = torch.nn.functional.normalize(reference.double(), dim=1)
    if exclude_same_index and len(q) != len(r):
        raise ValueError(f"exclude_same_index needs a set against itself, got {len(q)} and {len(r)} rows")
    if len(r) < (2 if exclude_same_index else 1):
        raise ValueError("nearest_neighbours needs a non-empty reference (2 rows with exclude_same_index)")
    dists, idxs = [], []
    for s in range(0, len(q), chunk):
        sim = q[s:s + chunk] @ r.T
        if exclude_same_index:
            rows = torch.arange(sim.shape[0])
            sim[rows, rows + s] = -float("inf")
        best, i = sim.max(1)
        dists.append((1 - best).clamp(min=0))
        idxs.append(i)
    if not dists:
        return torch.zeros(0, dtype=torch.float64), torch.zeros(0, dtype=torch.long)
    return torch.cat(dists), torch.cat(idxs)


def exact_copies(query: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Which query images (N, ...) are byte-identical to some reference image (M, ...): bool (N,).

    Public data sets are not always clean (PneumoniaMNIST's val split holds 8 exact copies of training
    images), and an exact copy is not a "distinct real image" for calibrating a privacy threshold.
    """
    ref = {bytes(r) for r in reference.reshape(len(reference), -1).cpu().numpy()}
    return torch.tensor([bytes(q) in ref for q in query.reshape(len(query), -1).cpu().numpy()], dtype=torch.bool)


def _q(x: torch.Tensor, q: float) -> float:
    return float(torch.quantile(x.double(), q)) if len(x) else float("nan")


def memorisation(syn_feats: torch.Tensor, train_feats: torch.Tensor, test_feats: torch.Tensor) -> dict:
    """Distance of each synthetic image to its nearest real training image vs the same for real test images.

    Features (N, d) from a real-data embedding network; cosine distance (see :func:`nearest_neighbours`).
    Real test images were never trained on, so their distances are what "new, not copied" looks like.
    Returns per-sample ``syn_distances`` (Ns,), ``syn_index`` (Ns,) (nearest training row) and
    ``test_distances`` (Nt,) as tensors, plus floats: ``syn_median``, ``real_median`` (test), ``syn_p05``,
    ``real_p05``, ``share_below_real_p05`` (share of synthetic images closer than the real test 5th
    percentile; ~0.05 when nothing is copied) and ``no_closer_than_real`` (bool: syn median >= real median).
    """
    sd, si = nearest_neighbours(syn_feats, train_feats)
    td, _ = nearest_neighbours(test_feats, train_feats)
    real_p05 = _q(td, 0.05)
    syn_med, real_med = _q(sd, 0.5), _q(td, 0.5)
    return {"syn_distances": sd, "syn_index": si, "test_distances": td,
            "syn_median": syn_med, "real_median": real_med, "syn_p05": _q(sd, 0.05), "real_p05": real_p05,
            "share_below_real_p05": float((sd < real_p05).float().mean()) if len(sd) else float("nan"),
            "no_closer_than_real": bool(syn_med >= real_med), "n_syn": int(len(sd)), "n_test": int(len(td))}


def privacy_score(syn_feats: torch.Tensor, train_feats: torch.Tensor, *, calib_feats: torch.Tensor | None,
                  quantile: float = 0.01, seed: int = 0) -> dict:
    """Re-identification rate of training images from synthetic ones, in the spirit of CheXGenBench (2025).

    A real-data embedding network's features (N, d).  The threshold is the ``quantile`` of the
    nearest-training-image distances of DISTINCT real images: ``calib_feats`` (held-out real images,
    e.g. the test split, never a set that is also passed as synthetic) against ``train_feats``; with
    ``calib_feats=None``, each training image against the other training images.  ``score`` = share of
    synthetic images whose nearest training image is closer than the threshold: about ``quantile`` for
    a generator that does not copy, up to 1 for copies.  ``real_rate`` is the same rate for real
    held-out images, cross-fitted (threshold from one random half of the calibration distances, rate on
    the other half, averaged over both ways) so it is an honest baseline rather than ``quantile`` by
    construction.  Returns {"score", "real_rate", "threshold", "quantile", "n_syn", "n_calib"}.
    """
    if calib_feats is None:
        cd, _ = nearest_neighbours(train_feats, train_feats, exclude_same_index=True)
    else:
        cd, _ = nearest_neighbours(calib_feats, train_feats)
    if len(cd) < 2:
        raise ValueError("privacy_score needs at least 2 calibration images")
    sd, _ = nearest_neighbours(syn_feats, train_feats)
    thr = _q(cd, quantile)
    perm = torch.randperm(len(cd), generator=torch.Generator().manual_seed(seed))
    a, b = cd[perm[:len(cd) // 2]], cd[perm[len(cd) // 2:]]
    real_rate = 0.5 * (float((b < _q(a, quantile)).float().mean()) + float((a < _q(b, quantile)).float().mean()))
    return {"score": float((sd < thr).float().mean()) if len(sd) else float("nan"), "real_rate": real_rate,
            "threshold": thr, "quantile": float(quantile), "n_syn": int(len(sd)), "n_calib": int(len(cd))}
