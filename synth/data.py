"""Data: loaders for MedMNIST .npz, image folders, CSV/JSONL manifests, DICOM, and a phantom.

Everything becomes an :class:`ImageSet`: uint8 tensor ``images`` of shape
(N, C, R, R) with C = 1 (grey) or 3 (RGB), int64 ``labels`` (N,), optional
free-text ``prompts`` and the class names.  Preprocessing is medical-safe and the
same for every source:

* grey stays grey and colour stays colour (``data.channels: auto``): RGB files
  whose three channels are equal (the common case for X-ray JPEGs) are grey; a
  set of true-colour images (fundus, dermatology, pathology) stays RGB; a set
  mixing both is an error naming one file of each, unless ``data.channels`` is
  1 (colour to ITU-R 601 luma) or 3 (grey repeated into three channels).  RGBA
  loses its alpha channel (with a note); 2-channel images are refused;
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
import io
import json
import math
import os
import unicodedata
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from synth.errors import SynthError

EXIF_ORIENTATION = 0x0112

IMAGE_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".webp", ".gif"}

# Files are chosen by what they hold, not what they are called: PACS exports name DICOMs ``IM0001``,
# and a ``.png`` may hold anything. (offset, magic bytes) -> format.
MAGIC = [(0, b"\x89PNG\r\n\x1a\n", "png"), (0, b"\xff\xd8\xff", "jpeg"), (0, b"II*\x00", "tiff"),
         (0, b"MM\x00*", "tiff"), (0, b"II+\x00", "tiff"), (0, b"MM\x00+", "tiff"), (0, b"BM", "bmp"), (0, b"GIF87a", "gif"), (0, b"GIF89a", "gif")]


BMP_DIB_SIZES = (12, 16, 40, 52, 56, 64, 108, 124)


def sniff_format(path: Path) -> str | None:
    """The image format ``path`` holds, read from its first bytes ('png', 'jpeg', 'tiff', 'bmp', 'gif',
    'webp', 'dicom'), or None when it holds none of them. A ``.dcm`` without the 128-byte preamble
    (old ACR-NEMA files) counts as DICOM by its name alone."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return None
    if head[128:132] == b"DICM":
        return "dicom"  # first: a DICOM's 128-byte preamble may itself be a TIFF header (dual-format files)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:2] == b"BM" and (len(head) < 18 or int.from_bytes(head[14:18], "little") not in BMP_DIB_SIZES):
        return None  # two letters are weak evidence: a BMP also names its DIB header size (a text "BM..." does not)
    for offset, magic, fmt in MAGIC:
        if head[offset:offset + len(magic)] == magic:
            return fmt
    if path.suffix.lower() in (".dcm", ".dicom") and len(head) >= 8:
        return "dicom"
    return None


def image_files(folder: Path) -> tuple[list[Path], Counter]:
    """Every file under ``folder`` (recursively, sorted) named as an image or holding one (by its first
    bytes: suffix-less DICOMs), and a count of the files seen but not used, by reason ('not an image',
    'hidden')."""
    used, unused = [], Counter()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in f.relative_to(folder).parts):
            unused["hidden"] += 1
        elif f.name.upper() == "DICOMDIR":
            unused["DICOMDIR index"] += 1  # a PACS export's table of contents: DICOM, but no image
        elif f.suffix.lower() in IMAGE_EXTS or sniff_format(f) is not None:
            used.append(f)  # an image by name is read (a broken one is an error, or skipped with on_error=skip)
        else:
            unused["not an image"] += 1
    return used, unused


def unused_note(unused: Counter, where: str) -> list[str]:
    """One note naming how many files under ``where`` were seen but not used, and why."""
    if not unused:
        return []
    parts = ", ".join(f"{n} {why}" for why, n in sorted(unused.items()))
    return [f"note: {sum(unused.values())} file(s) under '{where}' were not used: {parts}"]

MEDMNIST_CLASSES = {
    "pneumoniamnist": ["normal", "pneumonia"],
    "breastmnist": ["malignant", "normal_benign"],
}
MEDMNIST_URL = "https://zenodo.org/records/10519652/files/{name}.npz?download=1"


class DataError(SynthError, ValueError):
    """Bad or missing data; the message is one line naming the problem and the fix."""


class MixedChannelsError(DataError):
    """Grey and colour images in one source (``data.channels: auto``); ``grey`` / ``colour`` name one file of
    each, so a caller without ``data.channels`` (translation) can give its own fix."""

    def __init__(self, grey: str, colour: str | None = None):
        if colour is None:  # rebuilt from its message alone (another rank's copy of rank 0's error)
            self.grey, self.colour = None, None
            super().__init__(grey)
            return
        self.grey, self.colour = grey, colour
        super().__init__(f"{self.what}; set data.channels=3 to keep colour (grey images become three equal channels) "
                         f"or data.channels=1 to make every image grey")

    @property
    def what(self) -> str:
        return f"the data mixes grey and colour images (grey: '{self.grey}', colour: '{self.colour}')"


@dataclass
class ImageSet:
    """A prepared split: ``images`` uint8 (N, C, R, R) (C = 1 grey or 3 RGB), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    prompts: list[str] | None = None
    source: str = ""
    skipped: int = 0
    indices: torch.Tensor | None = None  # rows of the source split this set keeps (None: all, in order)
    n_source: int | None = None  # size of the source split before subsetting
    notes: list[str] = field(default_factory=list)  # what loading changed that the user should hear (alpha dropped)

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ---------------------------------------------------------------------------
# Preprocessing


def to_grey(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """(H, W), (H, W, 1), (H, W, 3) or (H, W, 4) array -> (H, W) grey (ITU-R 601 luma), same dtype."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3].astype(np.float32)
        grey = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
        return np.clip(np.round(grey), 0, np.iinfo(arr.dtype).max if arr.dtype.kind == "u" else None).astype(arr.dtype)
    raise DataError(f"{name}: unsupported image shape {arr.shape}; expected grey or RGB")


def channel_layout(arr: np.ndarray, name: str = "image") -> np.ndarray:
    """A decoded image -> (H, W) when it is grey (one channel, or RGB whose channels agree within
    :data:`GREY_TOLERANCE`, converted with luma) or (H, W, 3) when it is colour.  RGBA loses its alpha
    (callers count it for a note); 2-channel images are refused."""
    if arr.ndim == 2:
        return arr
    if arr.ndim == 3 and arr.shape[2] == 1:
        return arr[..., 0]
    if arr.ndim == 3 and arr.shape[2] in (3, 4):
        rgb = arr[..., :3]
        if _near_grey(rgb):
            return to_grey(rgb, name)
        return rgb
    if arr.ndim == 3 and arr.shape[2] == 2:
        raise DataError(f"{name}: a 2-channel image (grey + alpha?), which synth cannot take as grey or colour; "
                        f"save it as grey (L) or RGB")
    raise DataError(f"{name}: unsupported image shape {arr.shape}; expected grey (H, W) or RGB (H, W, 3)")


GREY_TOLERANCE = 3  # grey levels (of 255): JPEG chroma rounding can leave an X-ray's channels a level or two apart
COLOUR_SHARE = 0.005  # an image is colour when more pixels than this differ: a burned-in marker or tint is not


def _near_grey(rgb: np.ndarray) -> bool:
    """(H, W, 3): at most :data:`COLOUR_SHARE` of the pixels have channels further apart than
    :data:`GREY_TOLERANCE` levels of the image's range (any dtype: 8-bit, 16-bit, float DICOM)."""
    a = rgb.astype(np.float64)
    span = float(a.max() - a.min()) or 1.0
    tol = GREY_TOLERANCE / 255 * (255.0 if rgb.dtype == np.uint8 else span)
    spread = np.maximum(np.abs(a[..., 0] - a[..., 1]), np.abs(a[..., 1] - a[..., 2]))
    return bool(np.mean(spread > tol) <= COLOUR_SHARE)


def has_alpha(arr: np.ndarray) -> bool:
    return arr.ndim == 3 and arr.shape[-1] == 4


def stack_images(images: Sequence[np.ndarray], names: Sequence[str], channels="auto", size: int = 0) -> torch.Tensor:
    """Prepared images, each (R, R) grey or (R, R, 3) colour -> uint8 (N, C, R, R).

    ``channels``: ``auto`` (grey when every image is grey, RGB when every image is colour; a mix is an
    error naming one file of each), 1 (colour becomes luma) or 3 (grey repeated into three channels).
    """
    if not len(images):
        return torch.zeros((0, 3 if channels == 3 else 1, size, size), dtype=torch.uint8)
    colour = [i for i, a in enumerate(images) if a.ndim == 3]
    if channels == "auto":
        if colour and len(colour) < len(images):
            grey = next(i for i, a in enumerate(images) if a.ndim == 2)
            raise MixedChannelsError(names[grey], names[colour[0]])
        channels = 3 if colour else 1
    if channels == 1:
        arr = np.stack([to_grey(a) for a in images])[:, None]
    else:
        arr = np.stack([a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in images]).transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(arr))


def hwc_list(images: torch.Tensor) -> list[np.ndarray]:
    """uint8 (N, C, R, R) -> N arrays (R, R) grey or (R, R, 3) colour (the inverse of :func:`stack_images`)."""
    from synth.io import to_hwc

    return list(to_hwc(images))


def check_splits_agree(train: ImageSet, val: ImageSet) -> list[str]:
    """Both splits grey or both colour (``data.channels: auto`` decides per split); returns the loaders'
    notes to print once."""
    from synth.io import channel_word

    if train.channels != val.channels:
        raise DataError(f"the training images are {channel_word(train.channels)} but the validation images are "
                        f"{channel_word(val.channels)}; set data.channels=1 or data.channels=3")
    return list(dict.fromkeys(train.notes + val.notes))


def alpha_note(n: int, where: str) -> list[str]:
    return [f"note: {n} RGBA image(s) in {where}: the alpha channel was dropped (synth models grey or RGB)"] if n else []


def scale_intensity(arr: np.ndarray, window: tuple[float, float] | None = None) -> np.ndarray:
    """Any-dtype (H, W) array -> uint8 (H, W). uint8 passes unchanged."""
    if arr.dtype == np.uint8 and window is None:
        return arr
    a = arr.astype(np.float64)
    finite = np.isfinite(a)
    if not finite.all():
        # masked regions (NaN) and overflow (inf) stay out of the window and become black
        if not finite.any():
            raise DataError("every pixel is NaN or infinite; the image holds no values to show")
        a = np.where(finite, a, np.nan)
    if window is not None:
        lo, hi = window
    else:
        lo, hi = np.nanpercentile(a, [0.5, 99.5]) if not finite.all() else np.percentile(a, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    scaled = np.round((np.nan_to_num(a, nan=lo) - lo) / (hi - lo) * 255.0)
    return np.clip(scaled, 0, 255).astype(np.uint8)


def nonfinite_count(arr: np.ndarray) -> int:
    """How many pixels of a decoded array are NaN or infinite (0 for integer arrays)."""
    return int(arr.size - np.count_nonzero(np.isfinite(arr))) if arr.dtype.kind == "f" else 0


def nonfinite_note(n_pixels: int, n_images: int, where: str) -> list[str]:
    if not n_pixels:
        return []
    return [f"note: {n_pixels} NaN or infinite pixel(s) in {n_images} image(s) of '{where}' were left out of the intensity "
            f"window and shown black"]


def pad_to_square(arr: np.ndarray) -> np.ndarray:
    """(H, W) or (H, W, 3) -> (S, S[, 3]) with S = max(H, W), centred, padded with black."""
    h, w = arr.shape[:2]
    s = max(h, w)
    if h == w:
        return arr
    out = np.zeros((s, s) + arr.shape[2:], dtype=arr.dtype)
    y, x = (s - h) // 2, (s - w) // 2
    out[y:y + h, x:x + w] = arr
    return out


def resize(arr: np.ndarray, size: int) -> np.ndarray:
    """uint8 (S, S[, 3]) -> uint8 (size, size[, 3]); Lanczos (antialiased) down, bicubic up."""
    if arr.shape[0] == size:
        return arr
    method = Image.LANCZOS if arr.shape[0] > size else Image.BICUBIC
    return np.asarray(Image.fromarray(arr).resize((size, size), method))


def prepare(arr: np.ndarray, size: int, name: str = "image", window=None) -> np.ndarray:
    """Raw image array -> uint8 (size, size) grey or (size, size, 3) colour, padded to square then resized."""
    try:
        scaled = scale_intensity(channel_layout(arr, name), window)
    except DataError as e:
        raise DataError(str(e) if str(e).startswith(name) else f"{name}: {e}") from None
    return resize(pad_to_square(scaled), size)


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


def read_raw(path: Path) -> tuple[np.ndarray, tuple[float, float] | None]:
    """A file as decoded: (array (H, W) or (H, W, C), DICOM window or None). Raises on unreadable files."""
    if sniff_format(path) == "dicom":
        return read_dicom(path)
    with Image.open(path) as opened:
        opened.load()
        # a phone or scanner may store the pixels rotated with an EXIF note; a reader sees the displayed image
        im = ImageOps.exif_transpose(opened) if opened.getexif().get(EXIF_ORIENTATION, 1) != 1 else opened
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F", "L", "RGB", "RGBA", "LA"):
            return np.asarray(im), None
        if im.mode in ("P", "PA"):  # a palette: its colours (and transparency) as RGB(A)
            return np.asarray(im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")), None
        if im.mode == "1":
            return np.asarray(im.convert("L")), None
        if im.mode in ("YCbCr", "LAB", "HSV"):
            return np.asarray(im.convert("RGB")), None
        raise DataError(f"{path}: image mode {im.mode} (e.g. CMYK) is not grey or RGB; save it as grey (L) or RGB")


def read_image(path: Path, size: int) -> np.ndarray:
    """Any supported file -> uint8 (size, size) grey or (size, size, 3) colour. Raises on unreadable files."""
    arr, window = read_raw(path)
    return prepare(arr, size, str(path), window)


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


def colour_phantom_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A fundus-like colour phantom, uint8 (size, size, 3): an orange-red disc with a bright optic disc and
    dark vessels; class 1 ("lesion") adds yellow exudate spots.  Colour carries the label: in grey the
    spots are close to the background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = np.hypot(xx - 0.5, yy - 0.5)
    img = np.zeros((size, size, 3), np.float32)
    fundus = r < 0.45
    base = np.array([0.75, 0.32, 0.12]) + rng.normal(0, 0.03, 3)
    img[fundus] = base * (1 - 0.6 * r[fundus, None])
    dx, dy = 0.5 + rng.choice([-1, 1]) * 0.2, 0.5 + rng.normal(0, 0.03)
    disc = np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * 0.05 ** 2))
    img += disc[..., None] * np.array([0.25, 0.35, 0.25])
    for k in range(4):  # vessels: dark arcs from the disc
        ang = rng.uniform(0, 2 * np.pi)
        d = np.abs((yy - dy) * np.cos(ang) - (xx - dx) * np.sin(ang))
        img[(d < 0.01) & fundus] *= 0.55
    if label == 1:
        for _ in range(int(rng.integers(3, 7))):
            ex, ey = rng.uniform(0.25, 0.75, 2)
            spot = np.exp(-((xx - ex) ** 2 + (yy - ey) ** 2) / (2 * 0.025 ** 2))
            img += spot[..., None] * np.array([0.15, 0.45, -0.05])
    img += rng.normal(0, 0.02, img.shape)
    img[~fundus] = 0
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def colour_phantom_set(n: int, size: int, seed: int, split: str) -> ImageSet:
    """``n`` colour phantoms (N, 3, R, R), alternating classes ("healthy", "lesion")."""
    offset = {"train": 0, "val": 1, "test": 2}[split]
    images = [colour_phantom_image(i % 2, size, np.random.default_rng([seed, offset, i, 3])) for i in range(n)]
    return ImageSet(torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()), torch.arange(n) % 2,
                    ["healthy", "lesion"], source="phantom-colour")


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
                      channels="auto") -> ImageSet:
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


# ---------------------------------------------------------------------------
# File names from manifests (shared with synth.augment's synthetic-set readers)
#
# A manifest or a synthetic set may come from anyone: a file name must not reach outside its
# folder, neither by spelling (absolute, '..') nor through a symlink, and a hostile value must
# give a one-line error, never a TypeError from ``Path / 3`` or a ValueError from ``os``.


def show(value: Any, limit: int = 80) -> str:
    """``repr`` of a user-supplied value for a one-line message: control characters escaped, long values cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(value: Any) -> str:
    """A parsed JSON value in words for messages: "null", "a number 3", "a list [1, 2]", ..."""
    if value is None:
        return "null"
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return f"{kinds.get(type(value), type(value).__name__)} {show(value)}"


def path_inside(path: str, root_real: str) -> bool:
    """Whether the resolved ``path`` is the resolved folder ``root_real`` or lies below it."""
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def file_name_problem(name: Any) -> str | None:
    """Why ``name`` is no usable file name ("is missing", "is a number 3, ..."), or None.

    Checked before any disk access: a NUL or an unpaired surrogate makes ``os`` raise
    ValueError/UnicodeEncodeError, and a control character would break one-line messages.
    """
    if name is None:
        return "is missing (or null)"
    if not isinstance(name, str):
        return f"is {describe(name)}, not a path string"
    if not name.strip():
        return f"is empty ({show(name)})"
    if not name.isprintable() and any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):  # fast path first
        return f"{show(name)} contains a control character (NUL, newline, ...)"
    try:
        os.fsencode(name)
    except UnicodeError:
        return f"{show(name)} cannot be a file name here (it holds an unpaired surrogate)"
    return None


def escape_problem(name: str) -> str | None:
    """Why the file name ``name`` could lead outside its folder by spelling alone ("is absolute", ...), or None.

    Any '..' part is refused, even one that stays inside: with symlinked folders '..' does not
    mean what it reads as, and a path without it never needs one.
    """
    posix = name.replace("\\", "/")  # a manifest written on Windows: '..\\x' climbs too, '\\\\server' is absolute
    # string tests, not pathlib: this runs for every row of a 100k-image manifest
    if posix.startswith("/") or (len(posix) > 2 and posix[0].isascii() and posix[0].isalpha() and posix[1:3] == ":/"):
        return "is absolute"
    if ".." in posix.split("/"):
        return "contains '..'"
    return None


def escaping_entry(root: Path, names: Sequence[str]) -> tuple[int, str] | None:
    """First name whose folder or file is a symlink resolving outside ``root``: (index, why), else None.

    ``names`` have passed :func:`file_name_problem` and :func:`escape_problem`.  One ``scandir``
    per folder (cheap ``d_type`` checks) and a ``realpath`` only for the links, so a 100k-image
    set costs a few ms, not a resolve per file.  ``why`` reads "... outside" + " <the folder>".
    """
    root_real = os.path.realpath(root)
    by_dir: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        by_dir.setdefault(os.path.dirname(name), []).append(k)
    for d, ks in by_dir.items():
        folder = os.path.join(root, d)
        if not path_inside(os.path.realpath(folder), root_real):
            return ks[0], f"is in folder {show(d)}, which a symlink leads outside"
        try:
            links = {e.name for e in os.scandir(folder) if e.is_symlink()}
        except OSError:
            continue  # a missing folder: reported when its images are read
        for k in ks:
            base = os.path.basename(names[k])
            if base in links and not path_inside(os.path.realpath(os.path.join(folder, base)), root_real):
                return k, "is a symlink resolving outside"
    return None


# ---------------------------------------------------------------------------
# CSV/JSONL manifests


SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_CLASS_INDEX = 9999  # a larger numeric label is an ID column or a typo, and would make that many classes
JSONL_EXAMPLE = '{"file_name": "a.png", "label": "normal"}'


@dataclass
class ManifestRow:
    """One checked manifest row; ``line`` (1-based, in the file) names it in messages."""

    line: int
    file_name: str
    label: str  # stripped text: a class name, or a class index written in digits
    prompt: str
    split: str  # train | val | test


@dataclass
class ManifestSplit:
    """One split of a checked manifest, not yet decoded: image paths inside the manifest's folder, label ids."""

    files: list[Path]
    labels: list[int]
    classes: list[str]
    prompts: list[str]


def _manifest_text(path: Path) -> str:
    """The manifest as text (UTF-8, a BOM dropped); one-line DataError for folders, permissions and bad bytes."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DataError(f"manifest '{path}' is a folder, not a file; pass the .csv/.jsonl file itself") from None
    except PermissionError:
        raise DataError(f"manifest '{path}' is not readable (permission denied); fix its permissions "
                        f"(e.g. chmod +r) or pass a readable copy") from None
    except OSError as e:
        raise DataError(f"cannot read manifest '{path}' ({e.strerror or type(e).__name__}); check the path") from None
    try:
        return data.decode("utf-8-sig")  # Excel writes a BOM before the first column name
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"manifest '{path}' line {line}: byte 0x{data[e.start]:02x} is not UTF-8 text; "
                        f"save the manifest as UTF-8") from None


def _csv_header(path: Path, cells: list[str], line: int) -> list[str]:
    """Column names (stripped: 'file_name, label' is a common slip); a repeated name is an error."""
    names = [c.strip() for c in cells]
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated:
        raise DataError(f"manifest '{path}' line {line}: column {show(repeated[0])} appears {names.count(repeated[0])} "
                        f"times in the header {show(names, 200)}; rename or remove the repeats")
    return names


def _csv_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line, row)]) of a CSV manifest.  Blank lines are skipped; a short row's missing
    trailing fields are empty; a row with more fields than the header (an unquoted comma) is an error."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: an unclosed quote is an error, not
    # a field that silently swallows the rest of the file
    header: list[str] | None = None
    rows: list[tuple[int, dict]] = []
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = _csv_header(path, cells, reader.line_num)
            elif len(cells) > len(header):
                raise DataError(f"manifest '{path}' line {reader.line_num}: {len(cells)} fields but the header has "
                                f"{len(header)} columns; quote fields that contain commas")
            else:
                rows.append((reader.line_num, dict(zip(header, cells + [""] * (len(header) - len(cells))))))
    except csv.Error as e:
        raise DataError(f"manifest '{path}' line {reader.line_num}: not valid CSV ({e}); check the quotes in and "
                        f"before that line") from None
    if header is None:
        raise DataError(f"manifest '{path}' is empty; write a header line 'file_name,label' and one row per image")
    return header, rows


def json_object_lines(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value, problem) for each non-blank line of a JSONL text; ``problem`` is None for a JSON
    object, else what the line is instead ("not JSON", "a JSON list ...").  Callers raise their own error."""
    for n, line in enumerate(text.split("\n"), 1):  # only '\n' ends a line: a JSON string may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: '[[[[...' nested beyond the parser's stack
            yield n, None, "not JSON"
            continue
        yield n, row, None if isinstance(row, dict) else f"{describe(row)}, not a JSON object"


def _jsonl_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(keys seen, [(line, row)]) of a JSONL manifest; every non-blank line must be one JSON object."""
    rows: list[tuple[int, dict]] = []
    keys: dict[str, None] = {}
    for n, row, problem in json_object_lines(text):
        if problem:
            what = "not valid JSON; each line must be one JSON object" if problem == "not JSON" else \
                f"{problem}; each line must be one object"
            raise DataError(f"manifest '{path}' line {n}: {what} like {JSONL_EXAMPLE}")
        rows.append((n, row))
        keys.update(dict.fromkeys(row))
    return list(keys), rows


def _require_columns(path: Path, columns: list[str]) -> None:
    """Without a ``label`` column every image would be one class named '': refuse, naming what is there."""
    for col, holding in (("file_name", "each image's path relative to the manifest's folder"),
                         ("label", "each image's class (a name, or an index 0..K-1)")):
        if col not in columns:
            raise DataError(f"manifest '{path}' has no '{col}' column (columns found: {show(sorted(columns), 200)}); "
                            f"add a '{col}' column holding {holding}")


def _row_file_name(path: Path, where: str, name: Any) -> str:
    """A row's file name, relative and inside the manifest's folder by spelling (links: :func:`escaping_entry`)."""
    problem = file_name_problem(name)
    if problem:
        raise DataError(f"{where}: file_name {problem}; write the image's path relative to the manifest's folder")
    problem = escape_problem(name)
    if problem:
        raise DataError(f"{where}: file_name {show(name)} {problem}; file names must be relative to the manifest's "
                        f"folder '{path.parent}' and stay inside it (put the manifest next to the images)")
    return name


def _row_label(where: str, name: str, value: Any) -> str:
    """A row's label as stripped text: a class name, or a class index (JSON number or digits)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise DataError(f"{where}: {show(name)} has an empty label; fill in its class (a name or an index) "
                        f"or remove the row")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, int) and value < 0):
        raise DataError(f"{where}: label of {show(name)} is {describe(value)}; write a class name "
                        f"(text) or a class index (a whole number >= 0)")
    return value.strip() if isinstance(value, str) else str(value)


def _row_text(where: str, name: str, column: str, value: Any) -> str:
    """An optional text field (prompt): missing or null is ''."""
    if value is None or isinstance(value, str):
        return value or ""
    raise DataError(f"{where}: {column} of {show(name)} is {describe(value)}; write it as text "
                    f"or leave it empty")


def _row_split(where: str, name: str, value: Any) -> str:
    """A row's split, normalised to train | val | test; missing, null or empty means train."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "train"
    split = SPLIT_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
    if split is None:  # a silently unknown split would drop the row from every split
        raise DataError(f"{where}: split {show(value)} of {show(name)} is not train, val or test; fix the row "
                        f"(valid/validation also mean val)")
    return split


def _manifest_row(path: Path, line: int, raw: dict) -> ManifestRow:
    """One raw CSV/JSONL row -> a checked :class:`ManifestRow`."""
    where = f"manifest '{path}' line {line}"
    name = _row_file_name(path, where, raw.get("file_name"))
    return ManifestRow(line, name, _row_label(where, name, raw.get("label")),
                       _row_text(where, name, "prompt", raw.get("prompt")), _row_split(where, name, raw.get("split")))


def _read_manifest_rows(path: Path) -> list[ManifestRow]:
    """Every row of a CSV/JSONL manifest, checked: named columns, a label per row, file names inside the
    manifest's folder (spelling and symlinks).  Anything else is a one-line DataError naming the row."""
    text = _manifest_text(path)
    columns, raw = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    if columns:  # an empty JSONL has none: reported as an empty split
        _require_columns(path, columns)
    rows = [_manifest_row(path, line, r) for line, r in raw]
    hit = escaping_entry(path.parent, [r.file_name for r in rows])
    if hit:
        k, why = hit
        raise DataError(f"manifest '{path}' line {rows[k].line}: file_name {show(rows[k].file_name)} {why} the "
                        f"manifest's folder '{path.parent}'; copy the image into that folder instead of linking it")
    return rows


def _is_index(label: str) -> bool:
    """ASCII digits only: '²'.isdigit() is True but int('²') fails."""
    return label.isascii() and label.isdigit()


def _index_value(label: str) -> int:
    """The value of a digit label, capped at 10**9: int() of a 5000-digit string raises, and any index that
    large is refused anyway."""
    digits = label.lstrip("0") or "0"
    return int(digits) if len(digits) <= 9 else 10**9


def _class_names(path: Path, rows: list[ManifestRow], classes: list[str] | None) -> list[str]:
    """``classes`` when given; else from every row's label, all splits together (so every split numbers the
    classes alike): class_0..class_K when all labels are indices, else the sorted names."""
    if classes:
        return list(classes)
    found = sorted({r.label for r in rows})
    if found and all(_is_index(x) for x in found):
        top = max(rows, key=lambda r: _index_value(r.label))
        if _index_value(top.label) > MAX_CLASS_INDEX:
            raise DataError(f"manifest '{path}' line {top.line}: label {show(top.label)} of {show(top.file_name)} is a "
                            f"class index above {MAX_CLASS_INDEX}; labels are class indices 0..K-1 or class names")
        return [f"class_{k}" for k in range(_index_value(top.label) + 1)]
    first: dict[str, str] = {}
    for name in found:  # labels match case-insensitively: 'A' and 'a' would be one class, the other left empty
        other = first.setdefault(name.lower(), name)
        if other != name:
            raise DataError(f"manifest '{path}': labels {show(other)} and {show(name)} differ only in case; spell "
                            f"each class one way")
    return found


def _label_ids(path: Path, rows: list[ManifestRow], names: list[str]) -> list[int]:
    """Class id of every row: by name (case-insensitive), else as an index into ``names``."""
    ids_by_name: dict[str, int] = {}
    for k, c in enumerate(names):
        ids_by_name.setdefault(c.lower(), k)
    ids = []
    for r in rows:
        k = ids_by_name.get(r.label.lower())
        if k is None and _is_index(r.label) and _index_value(r.label) < len(names):
            k = _index_value(r.label)
        if k is None:
            raise DataError(f"manifest '{path}' line {r.line}: label {show(r.label)} of {show(r.file_name)} is not in "
                            f"the schema {show(names, 200)}; fix the row or labels.classes")
        ids.append(k)
    return ids


def read_manifest(path: Path, split: str, classes: list[str] | None = None) -> ManifestSplit:
    """The rows of ``split`` of a CSV/JSONL manifest, checked but not decoded (every row of every split is
    checked, so a bad test row fails training too).  Raises :class:`DataError` (one line, naming the row)."""
    rows = _read_manifest_rows(path)
    names = _class_names(path, rows, classes)
    ids = _label_ids(path, rows, names)
    mine = [k for k, r in enumerate(rows) if r.split == split]
    return ManifestSplit([path.parent / rows[k].file_name for k in mine], [ids[k] for k in mine], names,
                         [rows[k].prompt for k in mine])


def load_manifest(path: Path, split: str, size: int, on_error: str, classes: list[str] | None,
                  channels="auto") -> ImageSet:
    """CSV/JSONL with ``file_name``, ``label`` (name or index), optional ``prompt`` and ``split``."""
    m = read_manifest(path, split, classes)
    images, kept, notes = _read_files(m.files, size, on_error, channels)
    prompts = [m.prompts[i] for i in kept]
    return ImageSet(images, torch.tensor([m.labels[i] for i in kept], dtype=torch.long),
                    m.classes, prompts=prompts if any(prompts) else None, source=str(path),
                    skipped=len(m.files) - len(kept), notes=notes)


# ---------------------------------------------------------------------------
# Entry point


def _subset(s: ImageSet, idx: torch.Tensor) -> ImageSet:
    rows = idx if s.indices is None else s.indices[idx]
    return ImageSet(s.images[idx], s.labels[idx], s.classes, [s.prompts[i] for i in idx.tolist()] if s.prompts else None,
                    s.source, s.skipped, rows, s.n_source, s.notes)


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
    if p.is_dir():
        return not any(d.name.lower() in ("val", "valid", "validation") for d in _class_dirs(p))
    if p.is_file() and p.suffix.lower() in (".csv", ".jsonl"):
        try:
            return _manifest_has_no_val(p)
        except DataError:
            return False
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
        s = load_npz(path, split, size, classes, channels)
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
    size, on_error, ch = data_cfg.resolution, data_cfg.on_error, getattr(data_cfg, "channels", "auto")
    if p.is_file() and p.suffix.lower() == ".npz":
        return load_npz(p, split, size, classes, ch)
    if p.is_file() and p.suffix.lower() in (".csv", ".jsonl"):
        s = load_manifest(p, split, size, on_error, classes, ch)
        if split == "val" and len(s) == 0:
            return _carve(load_manifest(p, "train", size, on_error, classes, ch), "val", data_cfg)
        if split == "train" and _manifest_has_no_val(p):
            return _carve(s, "train", data_cfg)
        return s
    if p.is_dir():
        has_val = any(d.name.lower() in ("val", "valid", "validation") for d in _class_dirs(p))
        if split in ("train", "val") and not has_val:
            full = load_image_folder(p, "train", size, on_error, classes, ch)
            return _carve(full, split, data_cfg)
        return load_image_folder(p, split, size, on_error, classes, ch)
    raise DataError(f"'{p}' is not a .npz, .csv, .jsonl or folder; pass one of those")


def _manifest_has_no_val(p: Path) -> bool:
    return not any(r.split == "val" for r in _read_manifest_rows(p))


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
