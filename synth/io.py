"""Atomic file writes and small image helpers (uint8 at the edges)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _tmp_path(path: Path) -> Path:
    """A unique temp file beside ``path``, with the mode a plain ``open()`` would give (mkstemp makes 0600,
    which left data sets and exports unreadable to the rest of a team)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
    finally:
        os.close(fd)
    return Path(name)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder + rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def atomic_save_with(path: str | Path, save_fn) -> None:
    """Call ``save_fn(tmp_path)`` then rename onto ``path`` (for library savers)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        save_fn(str(tmp))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_replace_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Move a fully written folder into place; an older folder is removed after."""
    final_dir = Path(final_dir)
    if final_dir.exists():
        old = final_dir.with_name(final_dir.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final_dir, old)
        os.replace(tmp_dir, final_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp_dir, final_dir)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1], shape (B, C, H, W) -> uint8 (B, C, H, W), rounded."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [-1, 1]."""
    return x.float() / 127.5 - 1.0


def make_grid(images: torch.Tensor, nrow: int, pad: int = 2) -> np.ndarray:
    """uint8 (B, C, H, W) -> one uint8 array (H', W') or (H', W', C) laid in rows of ``nrow``."""
    b, c, h, w = images.shape
    ncol = nrow
    rows = (b + ncol - 1) // ncol
    grid = np.full((c, rows * (h + pad) + pad, ncol * (w + pad) + pad), 255, np.uint8)
    for i in range(b):
        r, k = divmod(i, ncol)
        y, x = pad + r * (h + pad), pad + k * (w + pad)
        grid[:, y:y + h, x:x + w] = images[i].cpu().numpy()
    return grid[0] if c == 1 else grid.transpose(1, 2, 0)


def labelled_grid(images: torch.Tensor, nrow: int, row_labels: list[str], title: str, pad: int = 2,
                  min_cell: int = 64) -> np.ndarray:
    """uint8 (B, C, H, W) -> a grid (H', W') grey or (H', W', 3) RGB with a title band and a label per row.

    Small images are enlarged by an integer factor (nearest neighbour, no smoothing: pixels stay what the
    model drew) so each cell is at least ``min_cell`` px and the text stays readable next to them.
    """
    from PIL import ImageDraw, ImageFont

    grid = make_grid(images, nrow=nrow, pad=pad)
    h = images.shape[-2]
    k = max(1, -(-min_cell // h))
    img = Image.fromarray(grid)
    if k > 1:
        img = img.resize((img.width * k, img.height * k), Image.NEAREST)
    font = ImageFont.load_default()
    draw = ImageDraw.Draw(img)
    label_w = max([int(draw.textlength(t, font=font)) for t in row_labels] + [0]) + 12
    title_h = 24
    width = max(img.width + label_w, int(draw.textlength(title, font=font)) + 12)
    canvas = Image.new(img.mode, (width, img.height + title_h), 255 if img.mode == "L" else (255,) * 3)
    canvas.paste(img, (label_w, title_h))
    draw = ImageDraw.Draw(canvas)
    black = 0 if canvas.mode == "L" else (0, 0, 0)
    draw.text((6, 6), title, fill=black, font=font)
    row_h = (h + pad) * k
    for r, text in enumerate(row_labels):
        y = title_h + pad * k + r * row_h + (h * k) // 2 - 6
        draw.text((6, y), text, fill=black, font=font)
    return np.asarray(canvas)


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Atomically write a uint8 (H, W) or (H, W, C) array as PNG."""
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
