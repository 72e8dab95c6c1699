"""Sources: MedMNIST .npz (found or downloaded), image folders, label decoding, memory checks before decoding."""
from __future__ import annotations

import os
import unicodedata
import urllib.request
from collections import Counter
from pathlib import Path

import numpy as np
import torch

from synth.data.base import DataError, ImageSet
from synth.data.base import MAX_CLASS_INDEX
from synth.data.images import (alpha_note, has_alpha, image_files, nonfinite_count, nonfinite_note, prepare, read_raw,
                               stack_images, unused_note)


MEDMNIST_CLASSES = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal_benign"],
}


UNLABELLED_DIR = "unlabelled"  # an image folder's pool of images without a class (data.unlabelled: source)

MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"


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


def load_npz(path: Path, split: str, size: int, classes: list[str] | None, channels="auto") -> ImageSet:
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
    raw = z[f"{split}_labels"]
    if imgs.ndim == 0 or len(imgs) == 0:
        raise DataError(f"'{path}': '{key}' holds no images (shape {tuple(imgs.shape)}); the {split} split is empty, "
                        f"so fill it or pass another file")
    if raw.ndim == 0 or raw.shape[0] != len(imgs) or raw.size == 0 and len(imgs):
        raise DataError(f"'{path}': '{split}_labels' has shape {tuple(raw.shape)} but '{key}' holds {len(imgs)} images; "
                        f"give one label per image")
    labels = decode_labels(raw.reshape(len(imgs), -1), f"'{path}': '{split}_labels'")
    if imgs.ndim not in (3, 4) or (imgs.ndim == 4 and imgs.shape[-1] not in (1, 3, 4)):
        two = " (2 channels: grey + alpha?)" if imgs.ndim == 4 and imgs.shape[-1] == 2 else ""
        raise DataError(f"'{path}': '{key}' has shape {tuple(imgs.shape)}{two}; expected (N, H, W) grey or "
                        f"(N, H, W, 3) RGB")
    check_memory(len(imgs), size, 1, f"'{path}'")
    names_i = [f"{path}[{key}][{i}]" for i in range(len(imgs))]
    bad = [nonfinite_count(a) for a in imgs] if imgs.dtype.kind == "f" else []
    out = stack_images([prepare(a, size, n) for a, n in zip(imgs, names_i)], names_i, channels, size)
    stem = path.stem.lower()
    n_named = max(int(labels.max()) + 1, raw.shape[1] if raw.ndim == 2 and raw.shape[1] > 1 else 0)  # one-hot: K columns
    names = classes or MEDMNIST_CLASSES.get(stem) or [f"class_{k}" for k in range(n_named)]
    alpha = len(imgs) if imgs.ndim == 4 and imgs.shape[-1] == 4 else 0
    notes = alpha_note(alpha, str(path)) + nonfinite_note(sum(bad), sum(b > 0 for b in bad), str(path))
    return ImageSet(out, torch.from_numpy(labels), list(names), source=str(path), notes=notes)


def decode_labels(raw: np.ndarray, where: str) -> np.ndarray:
    """Labels as stored, (N, K) -> int64 class ids (N,).

    K = 1: the column, when every value is a whole number >= 0.  K > 1: one-hot rows (exactly one 1, the
    rest 0) decode to the column of their 1; anything else (multi-label rows, scores) is refused, because
    reading one column of it would invert or invent labels.
    """
    if raw.dtype.kind not in "biuf":
        raise DataError(f"{where} holds {raw.dtype} values; labels must be whole numbers (class ids) or one-hot rows")
    values = raw.astype(np.float64)
    if not np.isfinite(values).all():
        raise DataError(f"{where} holds NaN or infinite labels; give each image a class id")
    if raw.shape[1] > 1:
        one_hot = np.isin(values, (0.0, 1.0)).all() and (values.sum(axis=1) == 1).all()
        if not one_hot:
            row = int(np.flatnonzero(~(np.isin(values, (0.0, 1.0)).all(axis=1) & (values.sum(axis=1) == 1)))[0])
            raise DataError(f"{where} has {raw.shape[1]} columns and row {row} ({values[row].tolist()}) is not one-hot; "
                            f"synth needs one class per image: store class ids (N,) or one-hot rows")
        return values.argmax(axis=1).astype(np.int64)
    col = values[:, 0]
    frac = np.flatnonzero(col != np.round(col))
    if len(frac):
        raise DataError(f"{where} holds non-integer labels (row {int(frac[0])}: {float(col[frac[0]]):g}); labels must be class "
                        f"ids 0, 1, ...: threshold or round them yourself")
    if (col > MAX_CLASS_INDEX).any():
        row = int(np.flatnonzero(col > MAX_CLASS_INDEX)[0])
        raise DataError(f"{where} holds label {int(col[row])} (row {row}), which would make that many classes; labels "
                        f"must be class ids 0..{MAX_CLASS_INDEX} (is this an ID column?)")
    if (col < 0).any():
        row = int(np.flatnonzero(col < 0)[0])
        raise DataError(f"{where} holds a negative label (row {row}: {int(col[row])}); labels must be class ids 0, 1, ...")
    return col.astype(np.int64)


def _read_files(files: list[Path], size: int, on_error: str, channels="auto") -> tuple[torch.Tensor, list[int], list[str]]:
    """Decode files; returns (uint8 (N, C, size, size), kept indices, notes). Fails on the first bad file
    unless skipping; a mix of grey and colour files is an error under ``channels: auto`` (see stack_images)."""
    images, kept, alpha, bad_pixels, bad_images = [], [], 0, 0, 0
    for i, f in enumerate(files):
        try:
            arr, window = read_raw(f)
            images.append(prepare(arr, size, str(f), window))
            alpha += has_alpha(arr)
            n_bad = nonfinite_count(arr)
            bad_pixels, bad_images = bad_pixels + n_bad, bad_images + (n_bad > 0)
            kept.append(i)
        except Exception as e:
            if on_error == "skip":
                continue
            reason = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            raise DataError(f"cannot read image {str(f)!r} ({reason}); fix or remove it, or set data.on_error=skip") from None
    where = str(files[0].parent.parent) if files else ""
    notes = alpha_note(alpha, where) + nonfinite_note(bad_pixels, bad_images, where)
    return stack_images(images, [str(files[i]) for i in kept], channels, size), kept, notes


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _refuse_case_collisions(dirs: list[Path], base: Path) -> None:
    """Class folders whose names differ only in case (``Normal/`` and ``normal/``) would share one label."""
    seen: dict[str, Path] = {}
    for d in dirs:
        key = unicodedata.normalize("NFC", d.name).casefold()
        if key in seen:
            raise DataError(f"class folders '{seen[key].name}' and '{d.name}' under '{base}' differ only in case, so "
                            f"synth cannot tell them apart (case or Unicode form); merge them into one folder or rename one")
        seen[key] = d


def load_image_folder(root: Path, split: str, size: int, on_error: str, classes: list[str] | None,
                      channels="auto", skip_unlabelled: bool = False) -> ImageSet:
    """``root/<class>/*`` or ``root/<split>/<class>/*``; DICOM files allowed.  ``skip_unlabelled``: an
    ``unlabelled/`` folder is the pool (``data.unlabelled: source``), not a class."""
    split_dirs = {p.name.lower(): p for p in _class_dirs(root) if p.name.lower() in ("train", "val", "valid", "validation", "test")}
    if split_dirs:
        aliases = {"val": ["val", "valid", "validation"], "train": ["train"], "test": ["test"]}[split]
        base = next((split_dirs[a] for a in aliases if a in split_dirs), None)
        if base is None:
            raise DataError(f"'{root}' has no '{split}' folder (it has {sorted(split_dirs)})")
    else:
        base = root
    cdirs = [d for d in _class_dirs(base) if not (skip_unlabelled and d.name.lower() == UNLABELLED_DIR)]
    if not cdirs:
        files, unused = image_files(base)
        if not files:
            seen = f" ({unused_note(unused, str(base))[0]})" if unused else ""
            raise DataError(f"no images found under '{base}'{seen}; synth reads PNG, JPEG, TIFF, BMP, GIF, WebP and "
                            f"DICOM in <class>/<image> sub-folders")
        raise DataError(f"images under '{base}' are not in class sub-folders; use <class>/<image> or a CSV/JSONL manifest")
    _refuse_case_collisions(cdirs, base)
    names = [d.name for d in cdirs]
    if classes:
        lowered = [c.lower() for c in classes]
        bad = [n for n in names if n.lower() not in lowered]
        if bad:
            raise DataError(f"folder classes {bad} under '{base}' are not in labels.classes {classes}; add them or fix the folders")
    schema_names = list(classes) if classes else names
    files, labels, unused = [], [], Counter()
    for d in cdirs:
        idx = [c.lower() for c in schema_names].index(d.name.lower())
        found, not_used = image_files(d)
        files += found
        labels += [idx] * len(found)
        unused += not_used
    if not files and unused:
        raise DataError(f"no images found under '{base}' ({unused_note(unused, str(base))[0]}); synth reads PNG, JPEG, "
                        f"TIFF, BMP, GIF, WebP and DICOM")
    check_memory(len(files), size, 1, f"'{base}'")
    images, kept, notes = _read_files(files, size, on_error, channels)
    labels = [labels[i] for i in kept]
    return ImageSet(images, torch.tensor(labels, dtype=torch.long), schema_names, source=str(base),
                    skipped=len(files) - len(kept), notes=notes + unused_note(unused, str(base)))


def available_memory() -> int | None:
    """Bytes of memory this machine has available now (Linux: MemAvailable), or None when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(n_images: int, size: int, channels: int, where: str) -> None:
    """Refuse before allocating when ``n_images`` prepared images at ``size`` px cannot fit in memory.

    Counts the uint8 set (N, C, R, R) twice (the prepared arrays and their stacked copy); a lower bound, so
    a set that fits is never refused, and one that cannot fit is refused before a single image is decoded.
    """
    need = n_images * channels * size * size * 2
    free = available_memory()
    if free is not None and need > free:
        raise DataError(f"{where}: {n_images} images at {size} x {size} px need about {need / 2**30:.1f} GiB but this "
                        f"machine has {free / 2**30:.1f} GiB available; lower data.resolution or load fewer images")
