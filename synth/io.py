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

from synth.errors import SynthError


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


class ForeignFolderError(SynthError, FileExistsError):
    """A folder synth would replace or remove does not look like one synth wrote."""


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one atomic step (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL / ENOSYS / EOPNOTSUPP: this file system cannot swap; fall back
        return False
    raise OSError(err, os.strerror(err), str(b))


def check_ours(folder: Path, marker: str | None, what: str = "folder") -> None:
    """Refuse to replace or delete ``folder`` unless it holds ``marker`` (a file synth always writes there).

    A run folder may be a user's own folder (``--run .``); without this a folder named ``export/``
    or ``checkpoints/step-...`` that synth did not write would be deleted.
    """
    folder = Path(folder)
    if marker is None or not folder.exists():
        return
    if not (folder / marker).exists():
        raise ForeignFolderError(f"refusing to replace {what} '{folder}': it has no '{marker}', so synth did not write it; "
                                 f"move it away or choose another folder")


def fresh_tmp_dir(final_dir: Path) -> Path:
    """An empty, uniquely named folder beside ``final_dir`` to write into before :func:`atomic_replace_dir`.

    Unique (``.<name>.tmp-XXXX``) so nothing already there is ever removed to make room.
    """
    final_dir = Path(final_dir)
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def remove_stale_tmp_dirs(final_dir: Path) -> None:
    """Clean up after a run killed while replacing ``final_dir``: remove ``.<name>.tmp-*`` folders, and put
    back the old folder from ``.<name>.old-*`` when the kill fell between the two renames of the fallback."""
    final_dir = Path(final_dir)
    if not final_dir.parent.is_dir():
        return
    for stale in final_dir.parent.glob(f".{final_dir.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    for old in final_dir.parent.glob(f".{final_dir.name}.old-*"):
        if not final_dir.exists() and (old / final_dir.name).is_dir():
            os.replace(old / final_dir.name, final_dir)
        shutil.rmtree(old, ignore_errors=True)


def atomic_replace_dir(tmp_dir: Path, final_dir: Path, marker: str | None = None) -> None:
    """Move a fully written folder into place; there is no moment without a ``final_dir``.

    ``marker``: a file every folder of this kind holds; an existing ``final_dir`` without it is
    not synth's and is refused (:class:`ForeignFolderError`) instead of deleted.  On Linux the
    old and new folders are swapped in one step; elsewhere two renames leave a moment where
    only ``.<final>.old-*/<final>`` exists (:func:`remove_stale_tmp_dirs` puts it back after a crash).
    """
    tmp_dir, final_dir = Path(tmp_dir), Path(final_dir)
    if not final_dir.exists():
        os.replace(tmp_dir, final_dir)
        return
    check_ours(final_dir, marker)
    if _exchange(tmp_dir, final_dir):
        shutil.rmtree(tmp_dir, ignore_errors=True)  # now holds the old folder
        return
    old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old-", dir=final_dir.parent))
    os.replace(final_dir, old / final_dir.name)
    os.replace(tmp_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def fsync_tree(folder: Path) -> None:
    """Flush every file in ``folder`` (recursively) and the folder entries to disk: after this a
    power loss or node crash cannot leave a folder that looks complete but holds truncated files."""
    folder = Path(folder)
    for p in sorted(folder.rglob("*"), reverse=True):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FolderBusyError(SynthError, RuntimeError):
    """Another synth process holds the folder's lock."""


class FolderLock:
    """An exclusive ``flock`` on ``lock_file``, held until :meth:`release` (or the process ends: the kernel drops
    it even after SIGKILL, so there are no stale locks to clean up).

    A second synth command on the same run or output folder stops at once, naming who holds it, instead of
    both doing (and overwriting) the same work.  ``guarded`` is False on a file system without locks
    (some network mounts): the run goes on unguarded, and the caller says so.
    """

    def __init__(self, lock_file: Path, what: str):
        import fcntl
        import socket

        lock_file = Path(lock_file)
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        self.fd, self.guarded = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask()), True
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(self.fd)
            raise FolderBusyError(f"{what} '{lock_file.parent}' is in use by {holder}; wait for it to finish "
                                  f"(then run the same command again) or use another {what}") from None
        except OSError:
            self.guarded = False
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"synth (pid {os.getpid()} on {socket.gethostname()})".encode(), 0)

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing drops the flock
            self.fd = None


def sha256_files(paths: list[Path]) -> list[str]:
    """:func:`sha256_file` of each path, several files at once (hashlib releases the GIL: multi-GB checkpoints
    and exports hash at disk speed instead of one core's ~2 GB/s)."""
    from concurrent.futures import ThreadPoolExecutor

    if len(paths) < 2:
        return [sha256_file(p) for p in paths]
    with ThreadPoolExecutor(max_workers=min(8, len(paths), os.cpu_count() or 1)) as pool:
        return list(pool.map(sha256_file, paths))


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Float images in [-1, 1], shape (B, C, H, W) -> uint8 (B, C, H, W), rounded."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def to_hwc(images: torch.Tensor) -> np.ndarray:
    """uint8 (B, C, H, W) -> numpy (B, H, W) grey or (B, H, W, 3) RGB: what PIL writes as L or RGB PNGs."""
    if images.shape[1] == 1:
        return images[:, 0].cpu().numpy()
    return images.permute(0, 2, 3, 1).contiguous().cpu().numpy()


def channel_word(c: int) -> str:
    return "grey (1-channel)" if c == 1 else f"colour ({c}-channel)"


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


def _labelled_block(images: torch.Tensor, nrow: int, row_labels: list[str], pad: int, k: int, font) -> Image.Image:
    """uint8 (B, C, H, W) laid in rows of ``nrow``, enlarged ``k`` times, with each row's label on its left."""
    from PIL import ImageDraw

    h = images.shape[-2]
    img = Image.fromarray(make_grid(images, nrow=nrow, pad=pad))
    if k > 1:
        img = img.resize((img.width * k, img.height * k), Image.NEAREST)
    label_w = max([int(ImageDraw.Draw(img).textlength(t, font=font)) for t in row_labels] + [0]) + 12
    block = Image.new(img.mode, (img.width + label_w, img.height), 255 if img.mode == "L" else (255,) * 3)
    block.paste(img, (label_w, 0))
    draw = ImageDraw.Draw(block)
    black = 0 if block.mode == "L" else (0, 0, 0)
    for r, text in enumerate(row_labels):
        draw.text((6, pad * k + r * (h + pad) * k + (h * k) // 2 - 6), text, fill=black, font=font)
    return block


def labelled_grid(images: torch.Tensor, nrow: int, row_labels: list[str], title: str, pad: int = 2,
                  min_cell: int = 64, max_rows: int = 16) -> np.ndarray:
    """uint8 (B, C, H, W) -> a grid (H', W') grey or (H', W', 3) RGB with a title band and a label per row.

    Small images are enlarged by an integer factor (nearest neighbour, no smoothing: pixels stay what the
    model drew) so each cell is at least ``min_cell`` px and the text stays readable next to them.  More
    than ``max_rows`` rows (many classes) wrap into side-by-side columns of rows instead of one tall strip.
    """
    from PIL import ImageDraw, ImageFont

    font = ImageFont.load_default()
    k = max(1, -(-min_cell // images.shape[-2]))
    blocks = [_labelled_block(images[r * nrow:(r + max_rows) * nrow], nrow, row_labels[r:r + max_rows], pad, k, font)
              for r in range(0, max(1, len(row_labels)), max_rows)]
    title_h, gap = 24, 8 * k
    probe = ImageDraw.Draw(blocks[0])
    width = max(sum(b.width for b in blocks) + gap * (len(blocks) - 1), int(probe.textlength(title, font=font)) + 12)
    mode = blocks[0].mode
    canvas = Image.new(mode, (width, max(b.height for b in blocks) + title_h), 255 if mode == "L" else (255,) * 3)
    x = 0
    for b in blocks:
        canvas.paste(b, (x, title_h))
        x += b.width + gap
    ImageDraw.Draw(canvas).text((6, 6), title, fill=0 if mode == "L" else (0, 0, 0), font=font)
    return np.asarray(canvas)


def save_png(path: str | Path, array: np.ndarray) -> None:
    """Atomically write a uint8 (H, W) or (H, W, C) array as PNG."""
    import io

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
