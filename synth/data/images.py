"""Reading and preparing one image: format by content, EXIF, DICOM, grey/colour, intensity window, pad to square, resize."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from synth.data.base import DataError, ImageSet, MixedChannelsError


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
        elif (fmt := sniff_format(f)) == "dicom" and not dicom_has_pixels(f):
            unused["DICOM without pixel data (a report or other non-image object)"] += 1
        elif f.suffix.lower() in IMAGE_EXTS or fmt is not None:
            used.append(f)  # an image by name is read (a broken one is an error, or skipped with on_error=skip)
        else:
            unused["not an image"] += 1
    return used, unused


def dicom_has_pixels(path: Path) -> bool:
    """Whether a DICOM file holds an image: PACS exports mix images with structured reports, key-object
    selections and presentation states, which are DICOM but hold no PixelData.  Only the header is parsed
    (values are deferred); an unreadable file counts as an image, so reading it reports the real problem."""
    import pydicom

    try:
        ds = pydicom.dcmread(str(path), defer_size="1 KB", force=True)
    except Exception:  # noqa: BLE001 - any parse failure: let the image reader say what is wrong
        return True
    return any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))


def unused_note(unused: Counter, where: str) -> list[str]:
    """One note naming how many files under ``where`` were seen but not used, and why."""
    if not unused:
        return []
    parts = ", ".join(f"{n} {why}" for why, n in sorted(unused.items()))
    return [f"note: {sum(unused.values())} file(s) under '{where}' were not used: {parts}"]


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
