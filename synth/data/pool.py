"""Unlabelled pools (``data.unlabelled``): images without a class that a conditional generator trains on under the
null condition, so that it learns anatomy and acquisition from every scan and class semantics from the few
labelled ones.

Where a pool comes from:

* ``none``: no pool (the default);
* ``rest``: the rest of the source's training split after ``data.fraction`` / ``data.max_items``, labels
  dropped (the low-data study's pool: the labelled subset is never in it, the validation carve never is);
* ``source``: what ``data.name`` itself marks unlabelled: manifest rows with an empty label, an
  ``unlabelled/`` folder beside the class folders, or an npz key ``unlabelled_images``;
* a path: another source whose labels (if any) are ignored: an npz (``unlabelled_images``, else
  ``train_images``), a folder of images (any depth, no class folders needed) or a manifest (its train rows).

A pool is refused when it shares images with the test split (by content at the training resolution), holds
another channel count than the labelled images, or is empty.  Its record (kind, source, size, hash) goes into
every export so evaluation can refuse a generator whose pool differs from the one it is asked about.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from synth.data.base import DataError, ImageSet, pool_kind
from synth.data.images import image_files, prepare, stack_images, unused_note
from synth.data.manifest import unlabelled_manifest_files
from synth.data.sources import UNLABELLED_DIR, _read_files, check_memory
from synth.data.splits import _subset, load_split, subset_record

POOL_NPZ_KEY = "unlabelled_images"


@dataclass
class UnlabelledPool:
    """``images`` uint8 (M, C, R, R) without labels; ``record`` is what an export keeps about them."""

    images: torch.Tensor
    record: dict
    notes: list[str] = field(default_factory=list)
    # the true labels of a ``rest`` pool: never trained on; evaluation reports pseudo-labels' accuracy with them
    hidden_labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])


def content_hash(images: torch.Tensor) -> str:
    """16 hex digits over the prepared uint8 images (M, C, R, R): the same pool at the same size hashes alike."""
    h = hashlib.sha256(f"{tuple(images.shape)}|".encode())
    h.update(images.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def load_pool(data_cfg, train: ImageSet) -> UnlabelledPool | None:
    """The pool ``data_cfg.unlabelled`` names, checked against the labelled ``train`` set and the test split.

    Raises :class:`DataError` (one line, naming the fix) for a missing, empty, differently-channelled pool or
    one that shares images with the test split."""
    kind = pool_kind(getattr(data_cfg, "unlabelled", "none"))
    if kind == "none":
        return None
    if kind == "rest":
        pool = _rest_pool(data_cfg, train)
    else:
        where = Path(str(data_cfg.name) if kind == "source" else str(data_cfg.unlabelled)).expanduser()
        images, notes = _read_pool(where, data_cfg, own=kind == "source")
        pool = UnlabelledPool(images, {"kind": kind, "source": str(where), "n": len(images),
                                       "sha256": content_hash(images)}, notes)
    _check_channels(pool, train, data_cfg)
    _check_test_overlap(pool, data_cfg)
    return pool


def _rest_pool(data_cfg, train: ImageSet) -> UnlabelledPool:
    """The training split's rows outside the labelled subset, labels dropped."""
    whole_cfg = dataclasses.replace(data_cfg, fraction=1.0, max_items=None, unlabelled="none")
    whole = load_split(whole_cfg, "train", list(train.classes))
    taken = set((train.indices if train.indices is not None else torch.arange(len(train))).tolist())
    rows = whole.indices if whole.indices is not None else torch.arange(len(whole))
    keep = torch.tensor([i for i, r in enumerate(rows.tolist()) if r not in taken], dtype=torch.long)
    if len(keep) == 0:
        raise DataError(f"data.unlabelled=rest: the labelled subset is the whole training split of '{data_cfg.name}' "
                        f"(data.fraction={data_cfg.fraction:g}), so no images are left for the pool; lower "
                        f"data.fraction or pass a pool path (data.unlabelled=/path/to/images)")
    rest = _subset(whole, keep)
    rec = subset_record(rest, data_cfg)
    record = {"kind": "rest", "source": str(data_cfg.name), "n": len(rest), "n_source": rec["n_source"],
              "indices_sha256": rec["indices_sha256"], "sha256": content_hash(rest.images)}
    return UnlabelledPool(rest.images, record, list(rest.notes), hidden_labels=rest.labels)


def _read_pool(p: Path, data_cfg, own: bool) -> tuple[torch.Tensor, list[str]]:
    """Decode the pool at ``p``: (uint8 (M, C, R, R), notes).  ``own``: only what the source marks unlabelled."""
    size, on_error, ch = data_cfg.resolution, data_cfg.on_error, getattr(data_cfg, "channels", "auto")
    what = "data.name" if own else "data.unlabelled"
    if own and not p.exists():
        raise DataError(f"data.unlabelled=source reads the images data.name marks unlabelled, but '{p}' is not a file or "
                        f"folder (a MedMNIST name has none); use data.unlabelled=rest or a path to unlabelled images")
    if not p.exists():
        raise DataError(f"{what} '{p}' does not exist; pass an .npz, an image folder or a manifest of unlabelled "
                        f"images, or data.unlabelled=rest | source | none")
    if p.is_file() and p.suffix.lower() == ".npz":
        return _npz_pool(p, size, ch, own), []
    if p.is_file() and p.suffix.lower() in (".csv", ".jsonl"):
        files = unlabelled_manifest_files(p, only_empty=own)
        if not files:
            raise DataError(f"manifest '{p}' has no unlabelled train rows" + (" (rows with an empty label)" if own else "")
                            + "; add them, or set data.unlabelled to another pool or none")
        check_memory(len(files), size, 1, f"'{p}'")
        images, kept, notes = _read_files(files, size, on_error, ch)
        return images, notes + ([f"{len(files) - len(kept)} unreadable pool images skipped"] if len(kept) < len(files) else [])
    if p.is_dir():
        folder = _own_pool_folder(p) if own else p
        files, unused = image_files(folder)
        if not files:
            raise DataError(f"no images found under '{folder}' for the unlabelled pool; synth reads PNG, JPEG, TIFF, "
                            f"BMP, GIF, WebP and DICOM")
        check_memory(len(files), size, 1, f"'{folder}'")
        images, kept, notes = _read_files(files, size, on_error, ch)
        return images, notes + unused_note(unused, str(folder))
    raise DataError(f"{what} '{p}' is not a .npz, .csv, .jsonl or folder; pass one of those")


def _own_pool_folder(root: Path) -> Path:
    """``root/unlabelled`` or ``root/train/unlabelled`` (an image folder's own pool)."""
    for cand in (root / UNLABELLED_DIR, root / "train" / UNLABELLED_DIR):
        if cand.is_dir():
            return cand
    raise DataError(f"data.unlabelled=source but '{root}' has no '{UNLABELLED_DIR}/' folder; put the unlabelled "
                    f"images in '{root / UNLABELLED_DIR}' or pass their folder as data.unlabelled")


def _npz_pool(p: Path, size: int, channels, own: bool) -> torch.Tensor:
    """``unlabelled_images`` (or, for another source, ``train_images``) of an npz, labels ignored."""
    try:
        z = np.load(p)
    except Exception as e:
        raise DataError(f"cannot read '{p}' as .npz ({type(e).__name__}); pass a MedMNIST-format .npz") from None
    keys = (POOL_NPZ_KEY,) if own else (POOL_NPZ_KEY, "train_images")
    key = next((k for k in keys if k in z.files), None)
    if key is None:
        raise DataError(f"'{p}' has no {' or '.join(repr(k) for k in keys)} for the unlabelled pool; it holds "
                        f"{sorted(z.files)}")
    imgs = z[key]
    if imgs.ndim not in (3, 4) or len(imgs) == 0:
        raise DataError(f"'{p}': '{key}' has shape {tuple(imgs.shape)}; expected (N, H, W) grey or (N, H, W, 3) RGB")
    check_memory(len(imgs), size, 1, f"'{p}'")
    names = [f"{p}[{key}][{i}]" for i in range(len(imgs))]
    return stack_images([prepare(a, size, n) for a, n in zip(imgs, names)], names, channels, size)


def _check_channels(pool: UnlabelledPool, train: ImageSet, data_cfg) -> None:
    if pool.images.shape[1] != train.channels:
        word = {1: "grey", 3: "colour"}
        raise DataError(f"the unlabelled pool '{pool.record['source']}' holds {word.get(int(pool.images.shape[1]))} "
                        f"images but the labelled ones are {word.get(train.channels)}; pass a pool of the same "
                        f"modality, or set data.channels=1 or 3 to convert both")


def _check_test_overlap(pool: UnlabelledPool, data_cfg) -> None:
    """Refuse a pool that holds test or validation images (by content): a generator that saw them would leak the
    held-out images into every synthetic image an evaluation scores (or early-stops) on them.  The ``rest`` of a
    training split is only noted: duplicates across a data set's own splits are the data set's, not the pool's."""
    plain = dataclasses.replace(data_cfg, val_max_items=None)
    splits = (["test"] if has_test_split(data_cfg) else []) + ["val"]  # no test split: "test" would read train
    mine = [bytes(r.numpy().tobytes()) for r in pool.images]
    for split in splits:
        held = load_split(plain, split)
        seen = {bytes(row.numpy().tobytes()): j for j, row in enumerate(held.images)}
        hits = [(i, seen[b]) for i, b in enumerate(mine) if b in seen]
        if hits and pool.record["kind"] == "rest":
            # the data set itself repeats these images across its splits: the labelled subset and any real-data
            # run share the same leak, so it is named, not refused
            pool.notes.append(f"note: {len(hits)} image(s) of the training split's rest are byte-identical to "
                              f"{split} images of '{data_cfg.name}' (a duplicate in the data set itself, e.g. pool image "
                              f"{hits[0][0]} = {split} image {hits[0][1]})")
        elif hits:
            i, j = hits[0]
            name = "test" if split == "test" else "validation"
            raise DataError(f"the unlabelled pool '{pool.record['source']}' shares {len(hits)} image(s) with the {name} "
                            f"split of '{data_cfg.name}' (pool image {i} = {name} image {j}); remove them from the pool, "
                            f"since a generator that has seen held-out images makes every evaluation on them dishonest")


def has_test_split(data_cfg) -> bool:
    """Whether ``data.name`` stores a test split of its own (MedMNIST, phantoms, an npz with ``test_images``, a
    ``test/`` folder, manifest rows with split test)."""
    p = Path(str(data_cfg.name)).expanduser()
    if not p.exists():
        return True  # a phantom or a MedMNIST name: both have one
    if p.is_dir():
        return any(d.is_dir() and d.name.lower() == "test" for d in p.iterdir())
    if p.suffix.lower() == ".npz":
        try:
            return "test_images" in np.load(p).files
        except Exception:
            return False
    if p.suffix.lower() in (".csv", ".jsonl"):
        from synth.data.manifest import _read_manifest_rows

        return any(r.split == "test" for r in _read_manifest_rows(p, unlabelled=True))
    return False


def with_pool(train: ImageSet, pool: UnlabelledPool | None) -> ImageSet:
    """The labelled set followed by the pool's images, labelled -1 (no class) with an empty prompt.

    images (N + M, C, R, R); labels (N + M,) with -1 for pool rows."""
    if pool is None:
        return train
    labels = torch.cat([train.labels, torch.full((len(pool),), -1, dtype=torch.long)])
    prompts = (train.prompts or [""] * len(train)) + [""] * len(pool)
    columns = {k: v + [""] * len(pool) for k, v in train.columns.items()} if train.columns else None
    return ImageSet(torch.cat([train.images, pool.images]), labels, train.classes, prompts, train.source, train.skipped,
                    None, train.n_source, train.notes, columns)


__all__ = ["UnlabelledPool", "load_pool", "pool_kind", "with_pool", "content_hash", "POOL_NPZ_KEY"]
