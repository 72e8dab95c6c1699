"""Data: loaders for MedMNIST .npz, image folders, CSV/JSONL manifests, DICOM, and a phantom.

Everything becomes an :class:`ImageSet`: uint8 tensor ``images`` of shape
(N, 1, R, R), int64 ``labels`` (N,), optional free-text ``prompts`` and the class
names.  Preprocessing is medical-safe and the same for every source:

* grey stays grey (RGB with three equal channels, the common case for X-ray
  JPEGs, is converted with ITU-R 601 luma; true colour is refused unless
  ``channels`` says otherwise);
* pad to square with black, centred, *then* resize (never stretch anatomy);
* intensity: 8-bit images are kept as they are (0..255); 16-bit and DICOM
  images are rescaled (DICOM RescaleSlope/Intercept, then the file's window if
  it has one, else the 0.5-99.5 percentile range) to 0..255;
* inside models pixels are floats in [-1, 1]: x / 127.5 - 1;
* no horizontal flip unless ``data.hflip: true`` (laterality matters).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}

MEDMNIST_CLASSES = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal_benign"],
}
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"


class DataError(ValueError):
    """Bad or missing data; the message is one line naming the problem and the fix."""


@dataclass
class ImageSet:
    """A prepared split: ``images`` uint8 (N, 1, R, R), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    prompts: list[str] | None = None
    source: str = ""
    skipped: int = 0
    indices: torch.Tensor | None = None  # rows of the source split this set keeps (None: all, in order)
    n_source: int | None = None  # size of the source split before subsetting

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ---------------------------------------------------------------------------
# Preprocessing


def to_grey(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array -> (H, W) grey, same dtype."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        return np.clip(np.round(grey), 0, np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else None).astype(arr.dtype)
    raise DataError(f"{name}: unsupported image shape {arr.shape}; expected grey or RGB")


def scale_intensity(arr: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Any-dtype (H, W) array -> uint8 (H, W). uint8 passes unchanged."""
    if arr.dtype == np.uint8 and window is None:
        return arr
    a = arr.astype(np.float64)
    if window is not None:
        lo, hi = window
    else:
        lo, hi = np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip(np.round((a - lo) / (hi - lo) * 255.0), 0, 255).astype(np.uint8)


def pad_to_square(arr: np.ndarray) -> np.ndarray:
    """(H, W) -> (S, S) with S = max(H, W), centred, padded with black."""
    h, w = arr.shape
    s = max(h, w)
    if h == w:
        return arr
    out = np.zeros((s, s), dtype=arr.dtype)
    y, x = (s - h) // 2, (s - w) // 2
    out[y:y + h, x:x + w] = arr
    return out


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 (S, S) -> uint8 (size, size); Lanczos (antialiased) down, bicubic up."""
    if arr.shape[0] == size:
        return arr
    method = Image.LANCZOS if arr.shape[0] > size else Image.BICUBIC
    return np.asarray(Image.fromarray(arr).resize((size, size), method))


def prepare(arr: np.ndarray, size: int, name: str = "image", window=None) -> np.ndarray:
    """Raw image array -> uint8 (size, size) grey, padded to square then resized."""
    return resize(pad_to_square(scale_intensity(to_grey(arr, name), window)), size)


def read_dicom(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """DICOM file -> (float array (H, W) in modality units, window or None).

    MONOCHROME1 (low values bright, common for CR/DX) comes back already windowed and inverted as
    uint8 with no window: the file's window is in stored units, so it must be applied BEFORE inverting.
    """
    import pydicom

    ds = pydicom.dcmread(str(path))
    arr = ds.pixel_array.astype(np.float64)
    if arr.ndim == 3 and getattr(ds, "NumberOfFrames", 1) and arr.shape[-1] not in (3, 4):
        arr = arr[arr.shape[0] // 2]  # a multi-frame volume: take the middle slice
    slope = float(getattr(ds, "RescaleSlope", 1) or 1)
    inter = float(getattr(ds, "RescaleIntercept", 0) or 0)
    arr = arr * slope + inter
    window = None
    if "WindowCenter" in ds and "WindowWidth" in ds:
        c, w = ds.WindowCenter, ds.WindowWidth
        c = float(c[0] if isinstance(c, pydicom.multival.MultiValue) else c)
        w = float(w[0] if isinstance(w, pydicom.multival.MultiValue) else w)
        window = (c - w / 2, c + w / 2)
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        return 255 - scale_intensity(arr, window), None
    return arr, window


def read_image(path: Path, size: int) -> np.ndarray:
    """Any supported file -> uint8 (size, size). Raises on unreadable files."""
    if path.suffix.lower() in (".dcm", ".dicom"):
        arr, window = read_dicom(path)
        return prepare(arr, size, str(path), window)
    with Image.open(path) as im:
        im.load()
        if im.mode in ("I;16", "I;16B", "I", "F"):
            arr = np.asarray(im)
        elif im.mode in ("L", "RGB", "RGBA", "LA", "P"):
            arr = np.asarray(im.convert("RGB") if im.mode in ("P", "LA") else im)
        else:
            arr = np.asarray(im.convert("RGB"))
    return prepare(arr, size, str(path))


# ---------------------------------------------------------------------------
# Phantom


def phantom_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A chest-like grey phantom, uint8 (size, size). Class 1 adds lung opacities."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size), np.float32)
    cx = 0.5 + rng.normal(0, 0.02)
    body = ((xx - cx) / (0.42 + rng.normal(0, 0.02))) ** 2 + ((yy - 0.55) / 0.5) ** 2 < 1
    img[body] = 0.55 + rng.normal(0, 0.03)
    for side in (-1, 1):  # lung fields: dark ellipses
        lx = cx + side * (0.17 + rng.normal(0, 0.01))
        lung = ((xx - lx) / 0.13) ** 2 + ((yy - 0.5) / (0.3 + rng.normal(0, 0.02))) ** 2 < 1
        img[lung] = 0.2 + rng.normal(0, 0.02)
    for k in range(6):  # ribs: faint bright arcs
        ry = 0.28 + 0.08 * k + rng.normal(0, 0.005)
        rib = np.abs(yy - ry - 0.15 * (xx - cx) ** 2 * 4) < 0.012
        img[rib & body] += 0.12
    spine = np.abs(xx - cx) < 0.035
    img[spine & body] = 0.8
    if label == 1:  # pneumonia: cloudy opacities in one or both lungs
        for _ in range(int(rng.integers(1, 4))):
            ox = cx + rng.choice([-1, 1]) * rng.uniform(0.1, 0.24)
            oy = rng.uniform(0.35, 0.7)
            r = rng.uniform(0.05, 0.1)
            img += 0.45 * np.exp(-(((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * r * r)))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def phantom_set(n: int, size: int, seed: int, split: str) -> ImageSet:
    """``n`` phantom images, alternating classes ("normal", "pneumonia")."""
    offset = {"train": 0, "val": 1, "test": 2}[split]
    images, labels = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, offset, i])
        label = i % 2
        images.append(phantom_image(label, size, rng))
        labels.append(label)
    return ImageSet(torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels), ["normal", "pneumonia"],
                    source="phantom")


# ---------------------------------------------------------------------------
# Locating data


def phantom_domains(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Phantoms in three 'acquisition domains' (plain, dim, inverted), each image in exactly one:
    uint8 images (n, size, size) and domain ids (n,) = i % 3. Unpaired data for bridge tests and checks."""
    imgs = phantom_set(n, size, seed, "train").images[:, 0].numpy().astype(np.float32)
    dom = np.arange(n) % 3
    imgs[dom == 1] = imgs[dom == 1] * 0.6 + 60
    imgs[dom == 2] = 255 - imgs[dom == 2]
    return imgs.clip(0, 255).astype(np.uint8), dom


def default_cache_dirs(cache_dir: str | None) -> list[Path]:
    """Where named data sets are looked for, in order."""
    dirs = []
    if cache_dir:
        dirs.append(Path(cache_dir).expanduser())
    if os.environ.get("SYNTH_DATA_DIR"):
        dirs.append(Path(os.environ["SYNTH_DATA_DIR"]).expanduser())
    dirs.append(Path.home() / ".cache" / "synth")
    return dirs


def resolve_medmnist(name: str, cache_dir: str | None, download: bool) -> Path:
    """A MedMNIST name -> local .npz path: cache dirs first, then the official download."""
    fname = f"{name}.npz"
    for d in default_cache_dirs(cache_dir):
        for cand in (d / fname, d / "medmnist" / fname):
            if cand.is_file():
                return cand
    target = default_cache_dirs(cache_dir)[0] / fname
    if download:
        try:
            from synth.io import atomic_write_bytes

            with urllib.request.urlopen(MEDMNIST_URL.format(name=name), timeout=30) as r:
                atomic_write_bytes(target, r.read())
            return target
        except Exception as e:  # offline: fall through to the one clear error
            reason = f"download failed ({type(e).__name__})"
    else:
        reason = "download disabled"
    raise DataError(
        f"data set '{name}' not found and {reason}: pass a path (data.name=/path/{fname}), "
        f"put {fname} in a cache dir (data.cache_dir or $SYNTH_DATA_DIR or ~/.cache/synth), "
        f"or allow the MedMNIST download (data.download=true, with network)"
    )


# ---------------------------------------------------------------------------
# Loaders (each returns the raw split before subsetting)


def load_npz(path: Path, split: str, size: int, classes: list[str] | None) -> ImageSet:
    try:
        z = np.load(path)
    except Exception as e:
        raise DataError(f"cannot read '{path}' as .npz ({type(e).__name__}); pass a MedMNIST-format .npz") from None
    key = f"{split}_images"
    if key not in z:
        raise DataError(f"'{path}' has no '{key}'; it holds {sorted(z.files)}")
    imgs = z[key]
    if f"{split}_labels" not in z:
        raise DataError(f"'{path}' has '{key}' but no '{split}_labels'; a MedMNIST-format .npz needs both "
                        f"(it holds {sorted(z.files)})")
    labels = z[f"{split}_labels"].reshape(len(imgs), -1)[:, 0].astype(np.int64)
    if imgs.ndim == 4 and imgs.shape[-1] == 3:
        imgs = np.stack([to_grey(a) for a in imgs])
    out = np.stack([prepare(a, size, f"{path}[{i}]") for i, a in enumerate(imgs)]) if len(imgs) else np.zeros((0, size, size), np.uint8)
    stem = path.stem.lower()
    names = classes or MEDMNIST_CLASSES.get(stem) or [f"class_{k}" for k in range(int(labels.max()) + 1)]
    return ImageSet(torch.from_numpy(out)[:, None], torch.from_numpy(labels), list(names), source=str(path))


def _read_files(files: list[Path], size: int, on_error: str) -> tuple[list[np.ndarray], list[int]]:
    """Decode files; returns (images, kept indices). Fails on the first bad file unless skipping."""
    images, kept = [], []
    for i, f in enumerate(files):
        try:
            images.append(read_image(f, size))
            kept.append(i)
        except Exception as e:
            if on_error == "skip":
                continue
            raise DataError(f"cannot read image '{f}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                            f"fix or remove it, or set data.on_error=skip") from None
    return images, kept


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def load_image_folder(root: Path, split: str, size: int, on_error: str, classes: list[str] | None) -> ImageSet:
    """``root/<class>/*`` or ``root/<split>/<class>/*``; DICOM files allowed."""
    split_dirs = {p.name.lower(): p for p in _class_dirs(root) if p.name.lower() in ("train", "val", "valid", "validation", "test")}
    if split_dirs:
        aliases = {"val": ["val", "valid", "validation"], "train": ["train"], "test": ["test"]}[split]
        base = next((split_dirs[a] for a in aliases if a in split_dirs), None)
        if base is None:
            raise DataError(f"'{root}' has no '{split}' folder (it has {sorted(split_dirs)})")
    else:
        base = root
    cdirs = _class_dirs(base)
    if not cdirs:
        files = sorted(p for p in base.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
        if not files:
            raise DataError(f"no images found under '{base}'; expected <class>/<image> sub-folders")
        raise DataError(f"images under '{base}' are not in class sub-folders; use <class>/<image> or a CSV/JSONL manifest")
    names = [d.name for d in cdirs]
    if classes:
        lowered = [c.lower() for c in classes]
        bad = [n for n in names if n.lower() not in lowered]
        if bad:
            raise DataError(f"folder classes {bad} under '{base}' are not in labels.classes {classes}; add them or fix the folders")
    schema_names = list(classes) if classes else names
    files, labels = [], []
    for d in cdirs:
        idx = [c.lower() for c in schema_names].index(d.name.lower())
        for f in sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS):
            files.append(f)
            labels.append(idx)
    images, kept = _read_files(files, size, on_error)
    labels = [labels[i] for i in kept]
    arr = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    return ImageSet(torch.from_numpy(arr)[:, None], torch.tensor(labels, dtype=torch.long), schema_names,
                    source=str(base), skipped=len(files) - len(kept))


def _read_manifest_rows(path: Path) -> list[dict]:
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise DataError(f"{path}:{n}: not valid JSON; each line must be one JSON object") from None
    return rows


def load_manifest(path: Path, split: str, size: int, on_error: str, classes: list[str] | None) -> ImageSet:
    """CSV/JSONL with ``file_name``, ``label`` (name or index), optional ``prompt`` and ``split``."""
    rows = _read_manifest_rows(path)
    if rows and "file_name" not in rows[0]:
        raise DataError(f"manifest '{path}' has no 'file_name' column; columns: {sorted(rows[0])}")
    if rows and "split" in rows[0]:
        rows = [r for r in rows if str(r.get("split", "train")).lower() == split]
    elif split != "train":
        rows = []
    raw_labels = [str(r.get("label", "")) for r in rows]
    if classes:
        names = list(classes)
    else:
        found = sorted(set(raw_labels))
        names = found if not all(x.isdigit() for x in found) else [f"class_{k}" for k in range(max(map(int, found)) + 1)] if found else []
    lowered = [c.lower() for c in names]
    labels = []
    for r, lab in zip(rows, raw_labels):
        if lab.lower() in lowered:
            labels.append(lowered.index(lab.lower()))
        elif lab.isdigit() and int(lab) < len(names):
            labels.append(int(lab))
        else:
            raise DataError(f"manifest '{path}': label '{lab}' of '{r['file_name']}' is not in the schema {names}; fix the row or labels.classes")
    files = [(path.parent / r["file_name"]) for r in rows]
    images, kept = _read_files(files, size, on_error)
    prompts = [str(rows[i].get("prompt") or "") for i in kept]
    arr = np.stack(images) if images else np.zeros((0, size, size), np.uint8)
    return ImageSet(torch.from_numpy(arr)[:, None], torch.tensor([labels[i] for i in kept], dtype=torch.long), names,
                    prompts=prompts if any(prompts) else None, source=str(path), skipped=len(files) - len(kept))


# ---------------------------------------------------------------------------
# Entry point


def _subset(s: ImageSet, idx: torch.Tensor) -> ImageSet:
    rows = idx if s.indices is None else s.indices[idx]
    return ImageSet(s.images[idx], s.labels[idx], s.classes, [s.prompts[i] for i in idx.tolist()] if s.prompts else None,
                    s.source, s.skipped, rows, s.n_source)


def fraction_subset(s: ImageSet, fraction: float, seed: int) -> ImageSet:
    """Stratified ``fraction`` of a training split, fixed by ``seed``; refuses to empty a class."""
    n = int(round(fraction * len(s)))
    counts = torch.bincount(s.labels, minlength=len(s.classes)).tolist()
    for k, c in enumerate(counts):
        if c and int(round(n * c / len(s))) == 0:
            raise DataError(f"data.fraction={fraction} leaves class '{s.classes[k]}' empty ({c} of {len(s)} training "
                            f"images); use data.fraction >= {0.5 / c:.3g}")
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
    return {"data": data_cfg.name, "fraction": data_cfg.fraction, "max_items": data_cfg.max_items, "seed": data_cfg.seed,
            "n": len(s), "n_source": n_source, "indices_sha256": h.hexdigest()[:16]}


def _carve(s: ImageSet, split: str, fraction: float, seed: int) -> ImageSet:
    """Deterministic train/val carve of a source with no validation split."""
    g = torch.Generator().manual_seed(seed + 7919)
    perm = torch.randperm(len(s), generator=g)
    n_val = max(1, int(round(len(s) * fraction)))
    idx = perm[:n_val] if split == "val" else perm[n_val:]
    return _subset(s, idx.sort().values)


def load_split(data_cfg, split: str = "train", classes: list[str] | None = None) -> ImageSet:
    """Load ``split`` (train | val | test) as described by a DataConfig.

    Raises :class:`DataError` with one line naming the fix when data is missing,
    unreadable, mislabelled or empty.
    """
    name, size = data_cfg.name, data_cfg.resolution
    p = Path(name).expanduser()
    if name == "phantom":
        n = data_cfg.phantom_items if split == "train" else max(16, data_cfg.phantom_items // 8)
        s = phantom_set(n, size, data_cfg.seed, split)
    elif p.exists():
        s = _load_path(p, split, data_cfg, classes)
    elif name.lower() in MEDMNIST_CLASSES or name.lower().endswith("mnist"):
        path = resolve_medmnist(name.lower(), data_cfg.cache_dir, data_cfg.download)
        s = load_npz(path, split, size, classes)
    else:
        raise DataError(f"data path '{name}' does not exist; pass an existing .npz, image folder, manifest, "
                        f"a MedMNIST name (e.g. pneumoniamnist) or 'phantom'")
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
    size, on_error = data_cfg.resolution, data_cfg.on_error
    if p.is_file() and p.suffix.lower() == ".npz":
        return load_npz(p, split, size, classes)
    if p.is_file() and p.suffix.lower() in (".csv", ".jsonl"):
        s = load_manifest(p, split, size, on_error, classes)
        if split == "val" and len(s) == 0:
            return _carve(load_manifest(p, "train", size, on_error, classes), "val", data_cfg.val_fraction, data_cfg.seed)
        if split == "train" and _manifest_has_no_val(p):
            return _carve(s, "train", data_cfg.val_fraction, data_cfg.seed)
        return s
    if p.is_dir():
        has_val = any(d.name.lower() in ("val", "valid", "validation") for d in _class_dirs(p))
        if split in ("train", "val") and not has_val:
            full = load_image_folder(p, "train", size, on_error, classes)
            return _carve(full, split, data_cfg.val_fraction, data_cfg.seed)
        return load_image_folder(p, split, size, on_error, classes)
    raise DataError(f"'{p}' is not a .npz, .csv, .jsonl or folder; pass one of those")


def _manifest_has_no_val(p: Path) -> bool:
    rows = _read_manifest_rows(p)
    return not any(str(r.get("split", "")).lower() == "val" for r in rows)


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
