"""Splits: ``load_split`` (the one entry point: a name or path -> a prepared train/val/test ImageSet), the
stratified training fraction, the validation carve, and the subset record an export keeps."""
from __future__ import annotations

import functools
import hashlib
import math
from pathlib import Path

import torch

from synth.data.base import DataError, ImageSet, pool_kind
from synth.data.images import hwc_list, stack_images
from synth.data.phantoms import colour_phantom_set, phantom_set
from synth.data.registry import open_source, source_for
from synth.data.manifest import load_manifest
from synth.data.sources import MEDMNIST_CLASSES, load_image_folder, resolve_medmnist


def _subset(s: ImageSet, idx: torch.Tensor) -> ImageSet:
    rows = idx if s.indices is None else s.indices[idx]
    keep = idx.tolist()
    columns = {k: [v[i] for i in keep] for k, v in s.columns.items()} if s.columns else None
    return ImageSet(s.images[idx], s.labels[idx], s.classes, [s.prompts[i] for i in keep] if s.prompts else None,
                    s.source, s.skipped, rows, s.n_source, s.notes, columns)


def min_fraction(counts: list[int]) -> float:
    """The smallest data.fraction (4 decimals, rounded up) whose subset keeps every non-empty class of ``counts``:
    class c keeps round(n c / N) > 0 images of n = round(f N) exactly when n > N / (2 c) (round(0.5) is 0)."""
    total = sum(counts)
    need = max(total // (2 * c) + 1 for c in counts if c)
    return min(1.0, math.ceil(need / total * 10 ** 4) / 10 ** 4)


def fraction_subset(s: ImageSet, fraction: float, seed: int) -> ImageSet:
    """Stratified ``fraction`` of a training split, fixed by ``seed``; refuses to empty a class."""
    n = int(round(fraction * len(s)))
    counts = torch.bincount(s.labels, minlength=len(s.classes)).tolist()
    for k, c in enumerate(counts):
        if c and int(round(n * c / len(s))) == 0:
            raise DataError(f"data.fraction={fraction} leaves class '{s.classes[k]}' empty ({c} of {len(s)} training "
                            f"images); use data.fraction >= {min_fraction(counts):g}")
    return _subset(s, _stratified_subset(s.labels, n, seed))


def subset_record(s: ImageSet, data_cfg) -> dict:
    """What an export records about its training subset: enough to refuse a classifier trained on another.

    ``indices_sha256`` hashes the source, the size of the full split and the kept row numbers, so it does not
    depend on the resolution the images were prepared at.
    """
    n_source = s.n_source or len(s)
    rows = s.indices if s.indices is not None else torch.arange(len(s))
    source = Path(str(data_cfg.name)).name.lower().removesuffix(".npz")  # "pneumoniamnist" == ".../pneumoniamnist.npz"
    h = hashlib.sha256(f"{source}|{n_source}|".encode())
    h.update(rows.to(torch.int64).numpy().tobytes())
    counts = torch.bincount(s.labels, minlength=len(s.classes)).tolist() if len(s) else [0] * len(s.classes)
    return {"data": data_cfg.name, "fraction": data_cfg.fraction, "max_items": data_cfg.max_items, "seed": data_cfg.seed,
            "n": len(s), "n_source": n_source, "indices_sha256": h.hexdigest()[:16],
            "counts_per_class": dict(zip(s.classes, counts)), "carve": getattr(data_cfg, "carve", "stratified")}


def _carve(s: ImageSet, split: str, data_cfg) -> ImageSet:
    """Deterministic train/val carve of a source with no validation split (``data.carve``)."""
    fraction, seed = data_cfg.val_fraction, data_cfg.seed
    if getattr(data_cfg, "carve", "stratified") == "random":
        return _subset(s, random_carve_indices(len(s), split, fraction, seed))
    return _subset(s, carve_indices(s.labels, s.classes, split, fraction, seed, s.source))


def random_carve_indices(n: int, split: str, fraction: float, seed: int) -> torch.Tensor:
    """The carve of synth before issue 19 (not stratified: it may take a class's only image), kept so runs and
    exports made with it resume and evaluate on the same split (``data.carve=random``)."""
    g = torch.Generator().manual_seed(seed + 7919)
    perm = torch.randperm(n, generator=g)
    n_val = max(1, int(round(n * fraction)))
    return (perm[:n_val] if split == "val" else perm[n_val:]).sort().values


def carve_applies(data_cfg) -> bool:
    """Whether ``data.name`` has no validation split of its own, so ``data.carve`` decides the split."""
    p = Path(str(data_cfg.name)).expanduser()
    if not p.exists():
        return False
    try:
        return not source_for(p).has_val(p)
    except DataError:
        return False


def val_quota(counts: dict[int, int], n_val: int) -> dict[int, int]:
    """Validation images per class: ``n_val`` shared in proportion to ``counts`` (largest remainder; ties
    to the bigger class, then the lower id), never a class's last image."""
    total = sum(counts.values())
    exact = {k: n_val * c / total for k, c in counts.items()}
    quota = {k: min(int(exact[k]), max(0, counts[k] - 1)) for k in counts}
    order = sorted(counts, key=lambda k: (-(exact[k] - int(exact[k])), -counts[k], k))
    left = n_val - sum(quota.values())
    while left > 0:
        room = [k for k in order if quota[k] < counts[k] - 1]
        if not room:
            break  # every class is down to its last training image
        for k in room[:left]:
            quota[k] += 1
        left -= len(room[:left])
    return quota


def carve_indices(labels: torch.Tensor, classes: list[str], split: str, fraction: float, seed: int,
                  where: str = "") -> torch.Tensor:
    """Sorted indices of the ``split`` side of a stratified train/val carve, fixed by ``seed``.

    ``round(fraction * N)`` images (at least 1) go to validation, shared between the classes in proportion
    (:func:`val_quota`), never a class's last one, so no class leaves training empty. Labels (N,) int64 ->
    indices (M,).
    """
    g = torch.Generator().manual_seed(seed + 7919)
    perm = torch.randperm(len(labels), generator=g)
    members = {k: perm[labels[perm] == k] for k in labels.unique().tolist()}
    quota = val_quota({k: len(m) for k, m in members.items()}, max(1, int(round(len(labels) * fraction))))
    val = [m[:quota[k]] for k, m in members.items() if quota[k]]
    val_idx = torch.cat(val) if val else torch.zeros(0, dtype=torch.long)
    if split == "val" and len(val_idx) == 0 and len(labels):
        counts = torch.bincount(labels, minlength=len(classes)).tolist()
        raise DataError(f"'{where}' has no validation split and every class has a single image "
                        f"({', '.join(f'{c}: {n}' for c, n in zip(classes, counts))}), so none can be set aside for "
                        f"validation; add images (2 or more per class) or a val/ folder")
    mask = torch.zeros(len(labels), dtype=torch.bool)
    mask[val_idx] = True
    return torch.nonzero(mask if split == "val" else ~mask).flatten()


def load_split(data_cfg, split: str = "train", classes: list[str] | None = None) -> ImageSet:
    """Load ``split`` (train | val | test) as described by a DataConfig.

    Raises :class:`DataError` with one line naming the fix when data is missing,
    unreadable, mislabelled or empty.
    """
    name, size = data_cfg.name, data_cfg.resolution
    p = Path(name).expanduser()
    channels = getattr(data_cfg, "channels", "auto")
    if name in ("phantom", "phantom-colour"):
        n = data_cfg.phantom_items if split == "train" else max(16, data_cfg.phantom_items // 8)
        s = (phantom_set if name == "phantom" else colour_phantom_set)(n, size, data_cfg.seed, split)
        if channels != "auto" and channels != s.channels:
            s.images = stack_images(hwc_list(s.images), [name] * len(s), channels, size)
    elif p.exists():
        s = _load_path(p, split, data_cfg, classes)
    elif name.lower() in MEDMNIST_CLASSES or name.lower().endswith("mnist"):
        path = resolve_medmnist(name.lower(), data_cfg.cache_dir, data_cfg.download)
        s = open_source(path, split, size, classes=classes, channels=channels)
    else:
        raise DataError(f"data path '{name}' does not exist; pass an existing .npz, image folder, manifest, "
                        f"a MedMNIST name (e.g. pneumoniamnist), 'phantom' or 'phantom-colour'")
    n_source = len(s)
    if split == "train" and data_cfg.max_items and len(s) > data_cfg.max_items:
        s = _subset(s, _stratified_subset(s.labels, data_cfg.max_items, data_cfg.seed))
    if split != "train" and data_cfg.val_max_items and len(s) > data_cfg.val_max_items:
        s = _subset(s, _stratified_subset(s.labels, data_cfg.val_max_items, data_cfg.seed))
    if split == "train" and getattr(data_cfg, "fraction", 1.0) < 1.0:
        s = fraction_subset(s, data_cfg.fraction, data_cfg.seed)
    s.n_source = n_source
    if len(s) == 0:
        raise DataError(f"the {split} split of '{name}' is empty{f' ({s.skipped} unreadable files skipped)' if s.skipped else ''}; "
                        f"check the path and its contents")
    return s


def _load_path(p: Path, split: str, data_cfg, classes) -> ImageSet:
    """A split of the source at ``p`` (:mod:`synth.data.registry`); train and val are carved from the stored train
    split when the source stores no validation split."""
    src = source_for(p)
    size, on_error, ch = data_cfg.resolution, data_cfg.on_error, getattr(data_cfg, "channels", "auto")
    read = src.read
    if pool_kind(getattr(data_cfg, "unlabelled", "none")) == "source" and src.name in ("manifest", "image folder"):
        # the source's unlabelled rows / folder are the pool (synth.data.pool), not labelled images
        read = load_manifest if src.name == "manifest" else load_image_folder
        read = functools.partial(read, skip_unlabelled=True)
    if split in ("train", "val") and not src.has_val(p):
        return _carve(read(p, "train", size, on_error, classes, ch), split, data_cfg)
    return read(p, split, size, on_error, classes, ch)


def _stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of ``n`` items keeping class proportions, fixed by ``seed``; sorted."""
    g = torch.Generator().manual_seed(seed + 104729)
    perm = torch.randperm(len(labels), generator=g)
    classes = labels.unique().tolist()
    chosen = []
    for c in classes:
        members = perm[labels[perm] == c]
        k = max(1, int(round(n * len(members) / len(labels))))
        chosen.append(members[:k])
    idx = torch.cat(chosen)[:n]
    return idx.sort().values


def fingerprint(s: ImageSet) -> str:
    """Short hash of the prepared images and labels (caches, resume checks)."""
    h = hashlib.sha256()
    h.update(s.images.numpy().tobytes())
    h.update(s.labels.numpy().tobytes())
    return h.hexdigest()[:16]
