"""Synthetic images in your own PyTorch training loop.

Two lines::

    from synth.augment import mix
    train_ds = mix(train_ds, "synthetic/", fraction=0.3, transform=train_transform)

Pieces (all plain ``torch.utils.data`` datasets and samplers):

* :class:`SyntheticSet`: map-style dataset over an imagefolder set written by
  ``synth sample`` / ``synth translate`` (``shard-XXXXX/<index>.png`` + ``metadata.jsonl``).
* :class:`SyntheticStream`: iterable dataset streaming a webdataset set's tar shards (or an
  imagefolder set in file order), split across DataLoader workers and distributed ranks.
* :class:`MixedDataset` / :func:`mix`: real + synthetic in one map-style dataset (a fraction per
  epoch, optionally class-balanced); :class:`MixedBatchSampler`: an exact number of synthetic
  items in every batch.
* :func:`quality_filter`: keep only images a classifier recognises as their requested label.
* :class:`OnlineSynthetic`: images generated on the fly from a loaded generator.

Labels are matched by name (:func:`map_labels`): the set's class names against yours,
case-insensitive, ``_``/``-``/space alike; ``label_map`` renames or drops classes.
Every bad input raises :class:`AugmentError` with one line naming the problem and the fix.

Core package: imports only torch, numpy, PIL, the standard library and ``synth.*``.
"""
from __future__ import annotations

import difflib
import hashlib
import io
import json
import math
import numbers
import os
import random
import re
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, Sampler, get_worker_info

from synth.allocation import labels_for
from synth.data import path_inside, show
from synth.io import atomic_write_json, atomic_write_text, to_float
from synth.labels import Condition, LabelSchema
from synth.seeds import derive_seed, image_seed
from synth.sampleset.errors import RERUN, AugmentError, first_line
from synth.sampleset.conditions import normalised_weights, split_label_spec
from synth.sampleset.layout import FREE_TEXT, set_format  # noqa: F401  (FREE_TEXT: its old home)
from synth.sampleset.manifest import read_set_manifest, set_classes
from synth.sampleset.rows import quality_kept, read_quality, read_rows  # noqa: F401



# ---------------------------------------------------------------------------
# Sets on disk: manifest, classes, rows


def _real_class_list(classes) -> list[str]:
    """A list of names, or a torchvision-style ``class_to_idx`` dict ordered by index."""
    if isinstance(classes, Mapping):
        return [str(k) for k, _ in sorted(classes.items(), key=lambda kv: kv[1])]
    if isinstance(classes, (str, bytes)):
        raise AugmentError(f"classes must be a list of class names, got the string '{classes}'; "
                           f"pass e.g. classes=train_ds.classes")
    return [str(c) for c in classes]


def _norm(name: str) -> str:
    """Names compare case-insensitively with '_', '-' and ' ' alike ('Pleural_Effusion' == 'pleural effusion')."""
    return re.sub(r"[\s_\-]+", " ", str(name).strip().lower())


def _find(name: str, names: list[str]) -> int | None:
    if name in names:
        return names.index(name)
    normed = [_norm(n) for n in names]
    return normed.index(_norm(name)) if _norm(name) in normed else None


def _suggest(name: str, real: list[str]) -> str | None:
    close = difflib.get_close_matches(_norm(name), [_norm(r) for r in real], n=1, cutoff=0.4)
    return real[[_norm(r) for r in real].index(close[0])] if close else None


def map_labels(set_classes: Sequence[str], real_classes, mapping: Mapping[str, str | None] | None = None) -> list[int]:
    """Synthetic label id -> real label id (``-1``: dropped), one entry per set class.

    Default: same name (case-insensitive, ``_``/``-``/space alike).  ``mapping`` (set name ->
    real name, or -> None to drop that synthetic class) overrides.  A set class with no
    match is an error that lists both label lists and the ``label_map={...}`` to pass.
    """
    set_names, real = [str(c) for c in set_classes], _real_class_list(real_classes)
    override: dict[int, str | None] = {}
    for key, target in dict(mapping or {}).items():
        i = _find(str(key), set_names)
        if i is None:
            raise AugmentError(f"label_map names '{key}', which is not a label of the synthetic set; "
                               f"set labels: {', '.join(set_names)}")
        override[i] = target
    out: list[int] = []
    missing: list[str] = []
    for i, name in enumerate(set_names):
        target = override.get(i, name)
        if i in override and target is None:
            out.append(-1)
            continue
        j = _find(str(target), real)
        if j is None and i in override:
            raise AugmentError(f"label_map sends '{name}' to '{target}', which is not a real class; "
                               f"real labels: {', '.join(real)}")
        if j is None:
            missing.append(name)
        out.append(-1 if j is None else j)
    if missing:
        example = {**{set_names[i]: t for i, t in override.items()}, **{m: _suggest(m, real) for m in missing}}
        raise AugmentError(f"synthetic labels {missing} match no real class; set labels: {', '.join(set_names)}; "
                           f"real labels: {', '.join(real)}; pass label_map={example!r} "
                           f"(a real class name, or None to drop that synthetic class)")
    return out


def _label_lookup(names: list[str], classes, label_map) -> tuple[list[int], list[str]]:
    """(set id -> output label or -1, output class names): mapped when ``classes`` is given."""
    if classes is None:
        if label_map:
            raise AugmentError("label_map needs classes=<your real class names> (e.g. classes=train_ds.classes) "
                               "to map the synthetic labels onto")
        return list(range(len(names))), list(names)
    return map_labels(names, classes, label_map), _real_class_list(classes)


# ---------------------------------------------------------------------------
# Paths inside the set folder


# ---------------------------------------------------------------------------
# Images: PIL in, (C, H, W) out


COLOUR_MODES = ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV")


def _open_pil(data_or_path, what: str) -> Image.Image:
    """A decoded image in mode L (grey, 1 channel) or RGB (3 channels)."""
    try:
        img = Image.open(data_or_path if isinstance(data_or_path, (str, os.PathLike)) else io.BytesIO(data_or_path))
        img.load()
    except FileNotFoundError:
        raise AugmentError(f"image {what} is missing; {RERUN} (it restores missing files)") from None
    except Exception as e:  # undecodable bytes raise a zoo (OSError, SyntaxError, DecompressionBombError, ...)
        raise AugmentError(f"image {what} is unreadable ({first_line(e)}); {RERUN} "
                           f"(it redoes damaged shards)") from None
    if img.mode not in ("L", "RGB"):
        img = img.convert("RGB" if img.mode in COLOUR_MODES else "L")
    return img


def pil_to_uint8(img: Image.Image) -> torch.Tensor:
    """PIL L/RGB -> uint8 (C, H, W): grey stays 1 channel, RGB stays 3."""
    a = torch.from_numpy(np.array(img, dtype=np.uint8, copy=True))
    return a.unsqueeze(0) if a.ndim == 2 else a.permute(2, 0, 1).contiguous()


def uint8_to_pil(x: torch.Tensor) -> Image.Image:
    """uint8 (C, H, W), C in {1, 3} -> PIL L or RGB."""
    a = x.cpu().numpy()
    return Image.fromarray(a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0))


def default_image(img: Image.Image) -> torch.Tensor:
    """PIL -> float32 (C, H, W) in [0, 1], like torchvision's ToTensor."""
    return pil_to_uint8(img).float().div_(255.0)


def _output(img: Image.Image, transform: Callable | None):
    return transform(img) if transform is not None else default_image(img)


# ---------------------------------------------------------------------------
# SyntheticSet: map-style over an imagefolder set


class SyntheticSet(Dataset):
    """Map-style dataset over an imagefolder synth set; items ``(image, label)``.

    ``image``: float32 (C, H, W) in [0, 1] (C = 1 for grey, 3 for RGB), or
    ``transform(PIL image)`` when ``transform`` is given (torchvision pipelines work).
    ``label``: int; with ``classes`` (your class names, or a ``class_to_idx`` dict) it is
    your label id (names matched by :func:`map_labels`, ``label_map`` overrides; classes
    mapped to None are left out), else the set's own label id.
    ``quality="keep"``: only images :func:`quality_filter` kept.

    Attributes: ``labels`` (LongTensor (N,)), ``rows`` (metadata dicts), ``manifest``,
    ``classes`` (label names in label order), ``set_classes``, ``root``.
    """

    def __init__(self, path: str | os.PathLike, *, transform: Callable | None = None, classes=None,
                 label_map: Mapping[str, str | None] | None = None, quality: str | None = None):
        self.root = Path(path)
        self.manifest = read_set_manifest(self.root)
        if set_format(self.root, self.manifest) == "webdataset":
            raise AugmentError(f"'{self.root}' is a webdataset set (shard-*.tar); stream it with "
                               f"SyntheticStream('{self.root}') or sample it with --format imagefolder")
        self.transform = transform
        self.set_classes = set_classes(self.manifest)
        self._to_label, self.classes = _label_lookup(self.set_classes, classes, label_map)
        self._ids = {name: i for i, name in enumerate(self.set_classes)}
        rows = self._labelled(read_rows(self.root))
        if quality is not None:
            rows = self._quality_kept(rows, quality)
        keep = [r for r in rows if self._to_label[self._set_id(r)] >= 0]  # label_map -> None drops a class
        self.rows = keep
        self.labels = torch.tensor([self._to_label[self._set_id(r)] for r in keep], dtype=torch.long)

    def _set_id(self, row: dict) -> int:
        return self._ids[row["label"]]

    def _labelled(self, rows: list[dict]) -> list[dict]:
        """Rows all have a label of the set (free-text prompts give none: no training target)."""
        bad = [r for r in rows if not isinstance(r.get("label"), str) or r["label"] not in self._ids]
        if bad:
            raise AugmentError(f"{len(bad)} images of set '{self.root}' (first: {bad[0]['file_name']}) have no class "
                               f"label (label={show(bad[0].get('label'))}; free-text prompts?); sample with --labels "
                               f"or 'label=<class>: text' prompt lines")
        return rows

    def _quality_kept(self, rows: list[dict], quality: str) -> list[dict]:
        return quality_kept(self.root, rows, quality)

    def __len__(self) -> int:
        return len(self.rows)

    def pil(self, i: int) -> Image.Image:
        """Image ``i`` as a PIL image (mode L or RGB)."""
        name = self.rows[i]["file_name"]
        return _open_pil(os.path.join(self.root, name), f"'{name}' of set '{self.root}'")

    def __getitem__(self, i: int):
        return _output(self.pil(i), self.transform), int(self.labels[i])

    def uint8(self, i: int) -> torch.Tensor:
        """Image ``i`` as uint8 (C, H, W) (no transform)."""
        return pil_to_uint8(self.pil(i))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything in memory: uint8 images (N, C, H, W) and labels (N,) (no transform)."""
        imgs = [self.uint8(i) for i in range(len(self))]
        shapes = {tuple(x.shape) for x in imgs}
        if len(shapes) > 1:
            first = next(i for i, x in enumerate(imgs) if tuple(x.shape) != tuple(imgs[0].shape))
            raise AugmentError(f"set '{self.root}' mixes image shapes ({sorted(shapes)}; e.g. "
                               f"{self.rows[first]['file_name']}); load it item by item with a resizing transform")
        if not imgs:
            return torch.zeros(0, 1, 0, 0, dtype=torch.uint8), self.labels.clone()
        return torch.stack(imgs), self.labels.clone()


# ---------------------------------------------------------------------------
# SyntheticStream: iterable over tar shards (or imagefolder files), split over workers and ranks


def dist_rank_world(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """Explicit (rank, world), else torch.distributed's when initialised, else (0, 1)."""
    if rank is None or world_size is None:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            rank = dist.get_rank() if rank is None else rank
            world_size = dist.get_world_size() if world_size is None else world_size
        else:
            rank = 0 if rank is None else rank
            world_size = 1 if world_size is None else world_size
    if world_size < 1 or not 0 <= rank < world_size:
        raise AugmentError(f"rank {rank} is not in [0, world_size={world_size}); pass 0 <= rank < world_size")
    return int(rank), int(world_size)


def _slice(lo: int, hi: int, part: int, parts: int) -> tuple[int, int]:
    """Part ``part`` of ``parts`` near-equal contiguous pieces of [lo, hi)."""
    n = hi - lo
    return lo + n * part // parts, lo + n * (part + 1) // parts


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    """A shuffle buffer: memory of ``size`` items, never the whole stream."""
    buf: list = []
    for it in items:
        if len(buf) < size:
            buf.append(it)
            continue
        j = rng.randrange(size)
        buf[j], it = it, buf[j]
        yield it
    rng.shuffle(buf)
    yield from buf


def _tar_label(data: bytes, key: str, path: Path):
    """The label in a webdataset sample's .json (None when it has none)."""
    try:
        meta = json.loads(data)
    except (ValueError, RecursionError):  # ValueError covers bytes that are not UTF-8
        meta = None
    if not isinstance(meta, dict):
        raise AugmentError(f"sample {show(key)} of shard '{path}': its .json is not a JSON object; the shard is "
                           f"damaged, {RERUN} (it redoes damaged shards)")
    return meta.get("label")


def _tar_samples(path: Path, start: int, stop: int) -> Iterator[tuple[bytes, str]]:
    """(png bytes, label name) of samples ``start``..``stop - 1`` of a webdataset tar.

    Members before ``start`` are skipped without reading their data (tarfile seeks
    over them), so a consumer that begins mid-shard costs only header reads.
    """
    def finish(key, parts):
        if "png" not in parts or "json" not in parts:
            raise AugmentError(f"sample {show(key)} of shard '{path}' lacks its .png or .json; the shard is damaged, "
                               f"{RERUN}")
        return parts["png"], _tar_label(parts["json"], key, path)

    k, key, parts = -1, None, {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                stem, _, ext = m.name.partition(".")
                if stem != key:
                    if key is not None and start <= k:
                        yield finish(key, parts)
                    k, key, parts = k + 1, stem, {}
                    if k >= stop:
                        return
                if start <= k and m.isfile() and ext in ("png", "json"):
                    parts[ext] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError) as e:
        raise AugmentError(f"shard '{path}' is unreadable ({e}); {RERUN} (it redoes damaged shards)") from None
    if k + 1 < stop:  # the manifest promised more samples than the tar holds
        raise AugmentError(f"shard '{path}' holds {k + 1} samples, fewer than its manifest says; {RERUN}")
    if start <= k:
        yield finish(key, parts)


class SyntheticStream(IterableDataset):
    """Iterable dataset streaming a synth set; items ``(image, label)`` (as :class:`SyntheticSet`).

    Webdataset sets are read shard by shard with ``tarfile`` (one sample in memory at a
    time, plus the shuffle buffer); imagefolder sets are read file by file in order.
    Each epoch's items (shards in a per-epoch order when shuffling) are cut into
    near-equal contiguous pieces, first across ranks (``rank``/``world_size``, else
    torch.distributed when initialised, else one process), then across DataLoader
    workers: every item is seen exactly once per epoch over all workers and ranks, and
    ranks get equal counts to within one item.  ``shuffle_buffer > 0`` shuffles (shard
    order + a buffer of that many items); ``set_epoch(e)`` changes the order
    deterministically from ``(seed, e)``; 0 keeps file order.  Call ``set_epoch`` before
    each epoch's iteration, with ``persistent_workers=False`` (workers copy the dataset).
    ``quality="keep"`` (imagefolder sets): only the images :func:`quality_filter` kept.
    """

    def __init__(self, path: str | os.PathLike, *, transform: Callable | None = None, classes=None,
                 label_map: Mapping[str, str | None] | None = None, shuffle_buffer: int = 0, seed: int = 0,
                 rank: int | None = None, world_size: int | None = None, quality: str | None = None):
        self.root = Path(path)
        self.manifest = read_set_manifest(self.root)
        self.format = set_format(self.root, self.manifest)
        self.quality = quality
        if quality not in (None, "keep"):
            raise AugmentError(f"quality must be None or 'keep', got {quality!r}")
        if quality is not None and self.format == "webdataset":
            raise AugmentError(f"quality='keep' needs an imagefolder set (quality_filter decides per file); '{self.root}' "
                               f"is a webdataset set: sample it again with --format imagefolder")
        if shuffle_buffer < 0:
            raise AugmentError(f"shuffle_buffer must be >= 0 (0: file order), got {shuffle_buffer}")
        self.transform, self.shuffle_buffer, self.seed, self.epoch = transform, int(shuffle_buffer), int(seed), 0
        self._rank, self._world = rank, world_size
        if rank is not None or world_size is not None:
            dist_rank_world(rank if rank is not None else 0, world_size if world_size is not None else 1)
        self.set_classes = set_classes(self.manifest)
        self._to_label, self.classes = _label_lookup(self.set_classes, classes, label_map)
        self._ids = {name: i for i, name in enumerate(self.set_classes)}
        self.shards = self._tar_shards() if self.format == "webdataset" else self._folder_shards()

    def _tar_shards(self) -> list[tuple[str, int]]:
        """(tar name, samples) per shard, from the manifest's size and shard size."""
        n, size = self.manifest["n_requested"], self.manifest.get("shard_size") or 0
        tars = {p.name for p in self.root.glob("shard-*.tar")}
        if size <= 0:
            raise AugmentError(f"manifest of '{self.root}' has no shard_size; {RERUN} with a current synth")
        count = math.ceil(n / size)
        # stops at the first gap, so a damaged manifest claiming 10**15 shards costs len(tars) checks, not a hang
        missing = next((s for s in range(count) if f"shard-{s:05d}.tar" not in tars), None)
        if missing is not None:
            raise AugmentError(f"shard 'shard-{missing:05d}.tar' of set '{self.root}' is missing; {RERUN}")
        shards = [(f"shard-{s:05d}.tar", min(n, (s + 1) * size) - s * size) for s in range(count)]
        root_real = os.path.realpath(self.root)
        for name, _ in shards:
            if not path_inside(os.path.realpath(self.root / name), root_real):
                raise AugmentError(f"shard '{name}' of set '{self.root}' is a symlink pointing outside the set folder; "
                                   f"refusing to read it, regenerate the set")
        return shards

    def _folder_shards(self) -> list[tuple[str, int]]:
        """Imagefolder: the rows (only the kept ones with ``quality="keep"``) grouped by shard folder, in file order;
        filtered before the split across ranks and workers, so their counts stay equal."""
        rows = read_rows(self.root)
        self._rows = rows if self.quality is None else quality_kept(self.root, rows, self.quality)
        groups: dict[str, list[int]] = {}
        for k, r in enumerate(self._rows):
            groups.setdefault(r["file_name"].split("/")[0], []).append(k)
        self._groups = groups
        return [(name, len(ks)) for name, ks in groups.items()]

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    @property
    def n_items(self) -> int:
        """Items in the whole set (all ranks)."""
        return sum(c for _, c in self.shards)

    def _rank_range(self) -> tuple[int, int]:
        rank, world = dist_rank_world(self._rank, self._world)
        return _slice(0, self.n_items, rank, world)

    def __len__(self) -> int:
        """Items this rank yields per epoch (over all its workers)."""
        if any(t < 0 for t in self._to_label):
            raise TypeError("SyntheticStream has no length when label_map drops classes (counts per rank are unknown)")
        lo, hi = self._rank_range()
        return hi - lo

    def _shard_order(self) -> list[int]:
        if self.shuffle_buffer <= 0:
            return list(range(len(self.shards)))
        g = torch.Generator().manual_seed(derive_seed("stream-shards", self.seed, self.epoch))
        return torch.randperm(len(self.shards), generator=g).tolist()

    def _raw(self, lo: int, hi: int) -> Iterator[tuple[Any, str]]:
        """(png bytes or file path, label name) of epoch positions [lo, hi)."""
        off = 0
        for s in self._shard_order():
            name, count = self.shards[s]
            a, b = max(lo, off) - off, min(hi, off + count) - off
            off += count
            if a >= b:
                continue
            if self.format == "webdataset":
                yield from _tar_samples(self.root / name, a, b)
            else:
                for k in self._groups[name][a:b]:
                    r = self._rows[k]
                    yield os.path.join(self.root, r["file_name"]), r.get("label")

    def __iter__(self):
        rank, world = dist_rank_world(self._rank, self._world)
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        lo, hi = _slice(*_slice(0, self.n_items, rank, world), worker, workers)
        items = self._raw(lo, hi)
        if self.shuffle_buffer > 0:
            rng = random.Random(derive_seed("stream-buffer", self.seed, self.epoch, rank, worker))
            items = _shuffled(items, self.shuffle_buffer, rng)
        for data, name in items:
            if not isinstance(name, str) or name not in self._ids:
                raise AugmentError(f"an image of set '{self.root}' has no class label (label={show(name)}); "
                                   f"sample with --labels")
            label = self._to_label[self._ids[name]]
            if label < 0:
                continue  # dropped by label_map
            what = f"'{data}'" if isinstance(data, str) else f"in a shard of '{self.root}'"
            yield _output(_open_pil(data, what), self.transform), label


# ---------------------------------------------------------------------------
# Mixing real and synthetic data


def _unit_interval(value, name: str, hint: str, what: str = "a number") -> float:
    """``value`` as a float in [0, 1], else a one-line AugmentError naming ``name`` and ``hint``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise AugmentError(f"{name} must be {what} in [0, 1], got {value!r}") from None
    if not 0.0 <= v <= 1.0:
        raise AugmentError(f"{name}={v} is outside [0, 1]; {hint}")
    return v


def _check_fraction(f) -> float:
    return _unit_interval(f, "synthetic_fraction", "use e.g. 0.3 for 30% synthetic items (0: real only, 1: synthetic only)")


def _synthetic_labels(synthetic) -> torch.Tensor:
    labels = getattr(synthetic, "labels", None)
    if labels is None:
        raise AugmentError(f"the synthetic part ({type(synthetic).__name__}) has no .labels; pass a SyntheticSet, "
                           f"OnlineSynthetic or a dataset with a .labels tensor")
    return torch.as_tensor(labels, dtype=torch.long)


def _real_labels(real) -> torch.Tensor:
    """Real labels (N,) from ``.targets``/``.labels`` (torchvision style), a Subset's parent, or a scan."""
    for attr in ("targets", "labels"):
        v = getattr(real, attr, None)
        if v is None or callable(v):
            continue
        try:
            arr = np.asarray(v) if len(v) == len(real) else None
        except (TypeError, ValueError):
            arr = None
        if arr is None or arr.dtype.kind not in "iub":  # not integer ids (e.g. names): read the items instead
            continue
        if arr.ndim > 1 and arr.shape[1:] != (1,) * (arr.ndim - 1):
            raise AugmentError(f"the real dataset's .{attr} has shape {arr.shape}: multi-label targets; "
                               f"mixing and balancing need one class per image")
        return torch.as_tensor(arr, dtype=torch.long).reshape(-1)
    if isinstance(real, torch.utils.data.Subset):
        return _real_labels(real.dataset)[torch.as_tensor(list(real.indices), dtype=torch.long)]
    return torch.tensor([int(real[i][1]) for i in range(len(real))], dtype=torch.long)  # reads every item once


def water_fill(counts: Sequence[int], budget: int) -> list[int]:
    """Extra items per class so ``counts + extra`` are as equal as possible; ``sum(extra) == budget``.

    Raise the lowest classes first to a common level L (the largest with
    ``sum(max(0, L - c)) <= budget``); the remainder goes one each to the classes at
    level L, lowest class id first (deterministic).
    """
    if not counts or budget <= 0:
        return [0] * len(counts)
    lo, hi = min(counts), max(counts) + budget
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if sum(max(0, mid - c) for c in counts) <= budget:
            lo = mid
        else:
            hi = mid - 1
    extra = [max(0, lo - c) for c in counts]
    left = budget - sum(extra)
    for k, c in enumerate(counts):
        if left == 0:
            break
        if c + extra[k] == lo:
            extra[k] += 1
            left -= 1
    return extra


def _cycled_perm(n: int, count: int, *seed_parts) -> torch.Tensor:
    """``count`` indices into range(n): permutations of it one after another (seeded per cycle)."""
    out, cycle = [], 0
    while sum(len(p) for p in out) < count:
        g = torch.Generator().manual_seed(derive_seed(*seed_parts, cycle))
        out.append(torch.randperm(n, generator=g))
        cycle += 1
    return torch.cat(out)[:count] if out else torch.zeros(0, dtype=torch.long)


def _fetch(ds, indices: list[int]) -> list:
    """Items of ``ds``, through its batched ``__getitems__`` when it has one (one generator call)."""
    if not indices:
        return []
    many = getattr(ds, "__getitems__", None)
    return list(many(indices)) if many is not None else [ds[i] for i in indices]


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor {str(x.dtype).replace('torch.', '')} {tuple(x.shape)}"
    if isinstance(x, Image.Image):
        return f"PIL image {x.mode} {x.size[0]}x{x.size[1]}"
    if isinstance(x, np.ndarray):
        return f"array {x.dtype} {x.shape}"
    return type(x).__name__


class MixedDataset(Dataset):
    """Real + synthetic items in one map-style dataset; items ``(image, label, is_synthetic)``.

    ``real``: any map-style dataset returning ``(image, label[, ...])``; ``synthetic``: a
    :class:`SyntheticSet`, :class:`OnlineSynthetic` or any dataset with ``.labels``, whose
    images match the real ones (same type and shape: pass ``transform=`` to it).
    Indices ``[0, n_real)`` are the real items; the next ``n_syn`` pick synthetic items
    through a per-epoch permutation (``set_epoch``; from ``(seed, epoch)``; cycling
    through new permutations when ``n_syn > len(synthetic)``), where
    ``n_syn = round(n_real * f / (1 - f))``; ``f = 1`` is synthetic only (``len(synthetic)``
    items), ``f = 0`` real only.  ``balance=True`` spends the synthetic budget per class so
    real + synthetic class counts are as equal as possible (:func:`water_fill`).
    Works with ``DataLoader(shuffle=True, num_workers=k)`` and ``DistributedSampler``; call
    ``set_epoch`` before each epoch (``persistent_workers=False``: workers copy the dataset).
    """

    def __init__(self, real, synthetic, *, synthetic_fraction: float, balance: bool = False, seed: int = 0):
        self.fraction = _check_fraction(synthetic_fraction)
        self.real, self.synthetic, self.balance, self.seed, self.epoch = real, synthetic, bool(balance), int(seed), 0
        self.syn_labels = _synthetic_labels(synthetic)
        self.n_real = 0 if self.fraction == 1.0 else len(real)
        if self.fraction == 1.0:
            n_syn = len(synthetic)
        elif self.fraction == 0.0:
            n_syn = 0
        else:
            n_syn = int(round(self.n_real * self.fraction / (1.0 - self.fraction)))
        if n_syn > 0 and len(self.syn_labels) == 0:
            raise AugmentError("the synthetic set has no images (all classes dropped or filtered?); "
                               "check label_map/quality or use synthetic_fraction=0")
        self.classes = self._check_classes()
        self._real_counts = self._class_counts_of_real() if self.balance else None
        self._set_budget(n_syn)
        if self.n_real and self.n_syn:
            self._check_compatible()

    # -- checks ---------------------------------------------------------------
    def _check_classes(self) -> list[str] | None:
        """Synthetic labels must already be the real label ids (mapped by name with classes=)."""
        real_c, syn_c = getattr(self.real, "classes", None), getattr(self.synthetic, "classes", None)
        if real_c is not None and syn_c is not None and self.n_real:
            real_c, syn_c = _real_class_list(real_c), list(syn_c)
            if real_c != syn_c:
                raise AugmentError(f"synthetic labels follow classes {syn_c} but the real data's classes are {real_c}; "
                                   f"build the synthetic set with classes=real.classes (mix() does it) so labels "
                                   f"are mapped by name")
        names = _real_class_list(real_c) if real_c is not None else (list(syn_c) if syn_c is not None else None)
        if names is not None and len(self.syn_labels) and int(self.syn_labels.max()) >= len(names):
            raise AugmentError(f"synthetic label {int(self.syn_labels.max())} is outside the {len(names)} real classes "
                               f"{names}; map the set's labels with classes=... and label_map={{...}}")
        return names

    def _check_compatible(self) -> None:
        """One item of each side: a type/shape mismatch fails here with the fix, not deep in collate."""
        a, b = self.real[0][0], _fetch(self.synthetic, [0])[0][0]
        same = type(a) is type(b)
        if same and isinstance(a, torch.Tensor):
            same = a.dtype == b.dtype and a.shape == b.shape
        if same and isinstance(a, Image.Image):
            same = a.mode == b.mode and a.size == b.size
        if not same:
            raise AugmentError(f"real images are {_describe(a)} but synthetic images are {_describe(b)}; pass the "
                               f"same transform to the synthetic set (mix(..., transform=...)) so they match")
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            self._check_value_ranges()

    def _check_value_ranges(self) -> None:
        """Float tensors on one scale: a normalised real image (values < 0 or > 1) beside a [0, 1] synthetic
        one trains on two scales without a word. A few items of each side (C, H, W) are compared."""
        def span(xs) -> tuple[float, float]:
            return min(float(x.min()) for x in xs), max(float(x.max()) for x in xs)
        k_real, k_syn = min(4, self.n_real), min(4, self.n_syn)
        real = span([self.real[i][0] for i in range(k_real)])
        syn = span([x for x, _ in _fetch(self.synthetic, list(range(k_syn)))])
        unit = [lo >= -0.01 and hi <= 1.01 for lo, hi in (real, syn)]
        if unit[0] != unit[1]:
            raise AugmentError(f"real images hold values in [{real[0]:.3g}, {real[1]:.3g}] but synthetic images in "
                               f"[{syn[0]:.3g}, {syn[1]:.3g}]: two scales in one batch; pass your real training "
                               f"transform (normalisation included) as mix(..., transform=...)")

    def _class_counts_of_real(self) -> list[int]:
        k = max(len(self.classes or []), int(self.syn_labels.max()) + 1 if len(self.syn_labels) else 0)
        labels = _real_labels(self.real) if self.n_real else torch.zeros(0, dtype=torch.long)
        if len(labels):
            k = max(k, int(labels.max()) + 1)
        return torch.bincount(labels, minlength=k).tolist()

    def _name(self, k: int) -> str:
        return f"'{self.classes[k]}'" if self.classes and k < len(self.classes) else f"label {k}"

    # -- the synthetic plan ---------------------------------------------------------
    def _allocation(self, budget: int) -> list[int]:
        """Synthetic items per class under balance: water-filling over the classes present."""
        syn = torch.bincount(self.syn_labels, minlength=len(self._real_counts)).tolist()
        counts = self._real_counts + [0] * (len(syn) - len(self._real_counts))
        present = [k for k in range(len(counts)) if counts[k] > 0 or syn[k] > 0]
        extra = water_fill([counts[k] for k in present], budget)
        alloc = [0] * len(counts)
        for k, e in zip(present, extra):
            if e > 0 and syn[k] == 0:
                raise AugmentError(f"balance needs {e} synthetic images of class {self._name(k)} (it has {counts[k]} "
                                   f"real ones) but the synthetic set has none; sample that class, map one to it "
                                   f"with label_map, or use balance=False")
            alloc[k] = e
        return alloc

    def _set_budget(self, n_syn: int) -> None:
        self.n_syn = int(n_syn)
        self._alloc = self._allocation(self.n_syn) if self.balance else None
        self._order = self._synthetic_order(self.epoch)

    def _synthetic_order(self, epoch: int) -> torch.Tensor:
        """Synthetic item of each synthetic position (n_syn,) for ``epoch``."""
        if self.n_syn == 0:
            return torch.zeros(0, dtype=torch.long)
        if not self.balance:
            return _cycled_perm(len(self.syn_labels), self.n_syn, "mix", self.seed, epoch)
        parts = []
        for k, a in enumerate(self._alloc):
            if a:
                pool = torch.nonzero(self.syn_labels == k).flatten()
                parts.append(pool[_cycled_perm(len(pool), a, "mix-class", self.seed, epoch, k)])
        picks = torch.cat(parts)
        # one shuffle over classes: a batch sampler taking positions in order gets mixed classes
        g = torch.Generator().manual_seed(derive_seed("mix-order", self.seed, epoch))
        return picks[torch.randperm(len(picks), generator=g)]

    def set_epoch(self, epoch: int) -> None:
        """Pick the synthetic items of ``epoch`` (deterministic from seed and epoch)."""
        self.epoch = int(epoch)
        self._order = self._synthetic_order(self.epoch)

    @property
    def synthetic_counts(self) -> list[int]:
        """Synthetic items per label this epoch."""
        return torch.bincount(self.syn_labels[self._order], minlength=len(self.classes or [])).tolist()

    # -- items ------------------------------------------------------------------------
    def __len__(self) -> int:
        return self.n_real + self.n_syn

    def _check_index(self, i: int) -> int:
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for a MixedDataset of {len(self)} items")
        return i

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]

    def __getitems__(self, indices: Sequence[int]) -> list:
        """Items of ``indices``; synthetic ones fetched in one batched call when the set supports it."""
        idx = [self._check_index(i) for i in indices]
        real_pos = [p for p, i in enumerate(idx) if i < self.n_real]
        syn_pos = [p for p, i in enumerate(idx) if i >= self.n_real]
        out: list = [None] * len(idx)
        for p, item in zip(real_pos, _fetch(self.real, [idx[p] for p in real_pos])):
            out[p] = (item[0], int(item[1]), False)
        syn_idx = [int(self._order[idx[p] - self.n_real]) for p in syn_pos]
        for p, item in zip(syn_pos, _fetch(self.synthetic, syn_idx)):
            out[p] = (item[0], int(item[1]), True)
        return out


class MixedBatchSampler(Sampler):
    """Batches of a :class:`MixedDataset` with exactly ``synthetic_per_batch`` synthetic items each.

    Real items are each seen once per epoch (shuffled from ``(seed, epoch)`` when
    ``shuffle``), ``batch_size - synthetic_per_batch`` per batch (the last batch may have
    fewer real items unless ``drop_last``).  Sets the dataset's synthetic budget to
    ``batches x synthetic_per_batch`` (its ``len`` changes accordingly), so synthetic items
    are distinct within an epoch as far as the set allows.  Batches are dealt to ranks
    (``rank``/``world_size``, else torch.distributed, else one process) round-robin; ranks
    get equal counts (short ones repeat early batches, like DistributedSampler, or the
    extra batches are dropped with ``drop_last``).  ``set_epoch(e)`` also sets the dataset's.

        loader = DataLoader(mixed, batch_sampler=MixedBatchSampler(mixed, 64, synthetic_per_batch=16))
    """

    def __init__(self, mixed: MixedDataset, batch_size: int, *, synthetic_per_batch: int, shuffle: bool = True,
                 seed: int = 0, rank: int | None = None, world_size: int | None = None, drop_last: bool = False):
        if not isinstance(mixed, MixedDataset):
            raise AugmentError(f"MixedBatchSampler needs a MixedDataset (from mix()), got {type(mixed).__name__}")
        if int(batch_size) < 1:
            raise AugmentError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= int(synthetic_per_batch) <= int(batch_size):
            raise AugmentError(f"synthetic_per_batch={synthetic_per_batch} must be in [0, batch_size={batch_size}]")
        self.mixed, self.batch_size, self.s = mixed, int(batch_size), int(synthetic_per_batch)
        self.r = self.batch_size - self.s
        if self.r > 0 and mixed.n_real == 0:
            raise AugmentError(f"the MixedDataset has no real items (synthetic_fraction=1); use "
                               f"synthetic_per_batch={self.batch_size} (= batch_size)")
        if self.s > 0 and len(mixed.syn_labels) == 0:
            raise AugmentError("the MixedDataset's synthetic set is empty; use synthetic_per_batch=0")
        if self.r == 0 and mixed.n_real > 0:
            raise AugmentError(f"synthetic_per_batch={self.s} = batch_size leaves no room for the {mixed.n_real} real "
                               f"items (they would never be used); lower synthetic_per_batch, or mix with fraction=1")
        self.shuffle, self.seed, self.drop_last, self.epoch = bool(shuffle), int(seed), bool(drop_last), mixed.epoch
        self.rank, self.world = dist_rank_world(rank, world_size)
        self.n_batches = self._count_batches()
        mixed._set_budget(self.n_batches * self.s)

    def _count_batches(self) -> int:
        if self.r == 0:  # synthetic only: one pass over the synthetic part
            n = len(self.mixed.syn_labels)
            return n // self.s if self.drop_last else math.ceil(n / self.s)
        n = self.mixed.n_real
        return n // self.r if self.drop_last else math.ceil(n / self.r)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.mixed.set_epoch(epoch)

    def __len__(self) -> int:
        return self.n_batches // self.world if self.drop_last else math.ceil(self.n_batches / self.world)

    def _real_order(self) -> torch.Tensor:
        n = self.mixed.n_real
        if not self.shuffle:
            return torch.arange(n)
        epoch = max(self.epoch, self.mixed.epoch)  # mixed.set_epoch(e) alone (as the README shows) also reshuffles
        return torch.randperm(n, generator=torch.Generator().manual_seed(derive_seed("mixed-batches", self.seed, epoch)))

    def __iter__(self) -> Iterator[list[int]]:
        if self.n_batches == 0:
            return
        real = self._real_order().tolist()
        base = self.mixed.n_real
        for j in range(len(self)):
            b = (self.rank + j * self.world) % self.n_batches  # wraps only to pad short ranks
            batch = real[b * self.r:(b + 1) * self.r]
            batch += list(range(base + b * self.s, base + (b + 1) * self.s))
            yield batch


def mix(real, synthetic_path, fraction: float = 0.3, *, classes=None, label_map: Mapping[str, str | None] | None = None,
        balance: bool = False, transform: Callable | None = None, seed: int = 0, quality: str | None = None) -> MixedDataset:
    """``real`` + a synth set as one :class:`MixedDataset` with ``fraction`` synthetic items.

    ``synthetic_path``: a set folder (read with :class:`SyntheticSet`) or a ready dataset
    (SyntheticSet, OnlineSynthetic).  ``classes`` (default ``real.classes``): your class
    names, matched to the set's by name (``label_map`` overrides); ``transform``: applied
    to synthetic PIL images, usually your real training transform.
    """
    if not isinstance(synthetic_path, (str, os.PathLike)):
        given = [k for k, v in (("classes", classes), ("label_map", label_map), ("transform", transform),
                                ("quality", quality)) if v is not None]
        if given:
            raise AugmentError(f"{', '.join(given)} apply when mix() reads a set folder; synthetic_path is a "
                               f"{type(synthetic_path).__name__}: give them to that dataset instead")
        return MixedDataset(real, synthetic_path, synthetic_fraction=fraction, balance=balance, seed=seed)
    real_classes = getattr(real, "classes", None)
    if classes is not None and real_classes is not None and _real_class_list(classes) != _real_class_list(real_classes):
        raise AugmentError(f"classes={_real_class_list(classes)} differs from the real dataset's classes "
                           f"{_real_class_list(real_classes)}: mix() puts synthetic images under the real label ids, so "
                           f"leave classes= out (it defaults to real.classes) and rename the set's classes with "
                           f"label_map={{'set name': 'your name'}}")
    classes = classes if classes is not None else real_classes
    if classes is None:
        names = set_classes(read_set_manifest(synthetic_path))
        raise AugmentError(f"the real dataset has no .classes; pass classes=[...] (your class names in label order) "
                           f"to map the set's labels {names} by name, e.g. classes={names!r}")
    syn = SyntheticSet(synthetic_path, transform=transform, classes=classes, label_map=label_map, quality=quality)
    if transform is None:
        _check_channels(real, syn, synthetic_path)
    return MixedDataset(real, syn, synthetic_fraction=fraction, balance=balance, seed=seed)


def _check_channels(real, syn: "SyntheticSet", path) -> None:
    """Refuse to mix grey and colour: a batch of (1, H, W) and (3, H, W) tensors would fail later, far from the
    cause, or a model would be fed mixed inputs.  Only when both sides give (C, H, W) tensors."""
    try:
        x = real[0][0]
    except Exception:  # an unusual real dataset: its own transform decides
        return
    if not (isinstance(x, torch.Tensor) and x.ndim == 3 and len(syn)):
        return
    c = int(syn.uint8(0).shape[0])
    if int(x.shape[0]) != c:
        raise AugmentError(f"the real images have {int(x.shape[0])} channel(s) but the synthetic set '{path}' has {c}; "
                           f"pass transform= converting synthetic images to your format (e.g. to grey), or sample "
                           f"from a model trained on images like yours")


# ---------------------------------------------------------------------------
# Quality filter


def module_hash(model: torch.nn.Module) -> str:
    """``model.weights_sha256`` if it has one, else sha256 of its state_dict (names, dtypes, shapes, bytes); 16 hex."""
    recorded = getattr(model, "weights_sha256", None)
    if recorded:
        return str(recorded)
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _check_threshold(threshold) -> float:
    return _unit_interval(threshold, "threshold", "it is the minimum softmax confidence of the requested label, e.g. 0.5",
                          what="a confidence")


def _load_judge(classifier, classes):
    """(module, class names, hash): a path loads a saved synth classifier (safetensors)."""
    if isinstance(classifier, (str, os.PathLike)):
        from synth.classifier import ClassifierError, load_classifier

        try:
            model, names, info = load_classifier(classifier)
        except ClassifierError as e:
            raise AugmentError(str(e)) from None
        return model, classes if classes is not None else names, info["weights_sha256"]
    if not isinstance(classifier, torch.nn.Module):
        raise AugmentError(f"classifier must be an nn.Module or a saved classifier path, got {type(classifier).__name__}")
    return classifier, classes, module_hash(classifier)


def _judge_ids(set_names: list[str], judge_names: list[str]) -> list[int]:
    """Set label id -> classifier output index, by name (as map_labels)."""
    missing = [n for n in set_names if _find(n, judge_names) is None]
    if missing:
        raise AugmentError(f"the classifier's classes {judge_names} lack the set's labels {missing}; pass classes= the "
                           f"classifier's class names in output order")
    return [_find(n, judge_names) for n in set_names]


@torch.no_grad()
def _confidences(model, data: SyntheticSet, targets: torch.Tensor, n_classes: int, batch_size: int, device) -> list[float]:
    """Softmax probability of each image's requested label; images fed as float (B, C, H, W) in [-1, 1]."""
    out: list[float] = []
    for lo in range(0, len(data), batch_size):
        idx = range(lo, min(len(data), lo + batch_size))
        x = to_float(torch.stack([data.uint8(i) for i in idx])).to(device)
        logits = model(x)
        if logits.ndim != 2 or logits.shape[1] != n_classes:
            raise AugmentError(f"the classifier returned logits of shape {tuple(logits.shape)}, expected (B, {n_classes}) "
                               f"for its {n_classes} classes; pass classes= the classifier's class names in output order")
        if not torch.isfinite(logits).all():
            bad = int((~torch.isfinite(logits).all(dim=1)).nonzero()[0]) + lo
            raise AugmentError(f"the classifier returned NaN or infinite logits (first for '{data.rows[bad]['file_name']}'); "
                               f"nothing was written: check its weights and its input range (float [-1, 1])")
        p = torch.softmax(logits.float(), dim=1)
        out += p[torch.arange(len(idx)), targets[lo:lo + len(idx)].to(p.device)].tolist()
    return out


def quality_filter(path: str | os.PathLike, classifier, *, threshold: float, classes=None, batch_size: int = 256,
                   device: str | torch.device = "cpu") -> dict:
    """Score every image of an imagefolder set by a classifier; keep those it recognises.

    ``classifier``: an nn.Module mapping float (B, C, H, W) in [-1, 1] to logits (B, K)
    over ``classes`` (its class names; default: the set's classes in order), or a
    classifier file saved by :func:`synth.classifier.save_classifier`.  An image is kept
    when the softmax confidence of its requested label is >= ``threshold``.  Writes
    ``<set>/quality.jsonl`` (file_name, label, confidence, kept per image) and
    ``<set>/quality.json`` (threshold, classifier hash, counts), atomically; returns the
    summary.  Read the kept images with ``SyntheticSet(path, quality="keep")``.  The
    module is moved to ``device`` and evaluated in eval mode (its mode is restored).
    """
    threshold = _check_threshold(threshold)
    if int(batch_size) < 1:
        raise AugmentError(f"batch_size must be >= 1, got {batch_size}")
    root = Path(path)
    manifest = read_set_manifest(root)
    if set_format(root, manifest) != "imagefolder":
        raise AugmentError(f"quality_filter needs an imagefolder set; '{root}' is a webdataset set: sample it again "
                           f"with --format imagefolder")
    data = SyntheticSet(root)
    model, names, digest = _load_judge(classifier, classes)
    names = list(data.set_classes) if names is None else _real_class_list(names)
    to_judge = _judge_ids(data.set_classes, names)
    targets = torch.tensor([to_judge[int(k)] for k in data.labels], dtype=torch.long)
    was_training = model.training
    model.to(device).eval()
    try:
        conf = _confidences(model, data, targets, len(names), int(batch_size), device)
    finally:
        model.train(was_training)
    rows, per_label = [], {c: {"kept": 0, "rejected": 0} for c in data.set_classes}
    for row, c in zip(data.rows, conf):
        kept = c >= threshold
        rows.append({"file_name": row["file_name"], "label": row["label"], "confidence": round(c, 6), "kept": kept})
        per_label[row["label"]]["kept" if kept else "rejected"] += 1
    n_kept = sum(r["kept"] for r in rows)
    summary = {"threshold": threshold, "classifier_sha256": digest, "classifier_classes": names, "n": len(rows),
               "kept": n_kept, "rejected": len(rows) - n_kept, "per_label": per_label,
               "set": {"n_done": manifest.get("n_done"), "weights_sha256": (manifest.get("model") or {}).get("weights_sha256")}}
    atomic_write_text(root / "quality.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    atomic_write_json(root / "quality.json", summary)
    return summary


# ---------------------------------------------------------------------------
# Online generation


def _generator_schema(generator) -> tuple[LabelSchema, bool]:
    """(label schema, is a domain bridge).  A bridge's classes are its domains (as in its export)."""
    schema = getattr(generator, "schema", None)
    if isinstance(schema, LabelSchema):
        return schema, False
    domains = getattr(generator, "domains", None)
    if domains:
        return LabelSchema(classes=list(domains), domains=list(domains)), True
    raise AugmentError(f"{type(generator).__name__} has no label schema (.schema) or domains; pass a generator from "
                       f"synth.samplers.generator.load_generator(export)")


def _generator_device(generator) -> torch.device:
    try:
        return next(generator.unet.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device(getattr(generator, "device", "cpu"))


def _label_weights(labels, schema: LabelSchema, allowed: list[bool]) -> tuple[tuple[int, float], ...]:
    """Normalised (class id, weight) pairs, parsed and checked as ``synth sample --labels`` does
    (:mod:`synth.sampleset.conditions`); names match loosely (case, spaces), as real class names do."""
    if isinstance(labels, str):
        labels = split_label_spec(labels, schema, AugmentError)
    elif isinstance(labels, Mapping):
        labels = list(labels.items())
    if not isinstance(labels, list) or not labels:
        raise AugmentError(f"labels must be None (balanced), a dict name -> weight or 'a=0.5,b=0.5', got {labels!r}")

    def find(name) -> int:
        k = _find(str(name), list(schema.classes))
        if k is None:
            raise AugmentError(f"labels names '{name}', which the generator does not know; its labels: "
                               f"{', '.join(schema.classes)}")
        return k

    weights, total = normalised_weights(labels, schema, find, AugmentError)
    dropped = [k for k, w in weights.items() if w > 0 and not allowed[k]]
    if dropped:
        raise AugmentError(f"labels asks for '{schema.classes[dropped[0]]}' but label_map drops it; give it weight 0 "
                           f"or map it to a real class")
    return tuple(sorted((k, w / total) for k, w in weights.items() if w > 0))


class OnlineSynthetic(Dataset):
    """``n`` images generated on the fly from a loaded generator; items ``(image, label)``.

    ``generator``: ``synth.samplers.generator.load_generator(export)`` (an LDM with ``.schema`` or
    a bridge with ``.domains``; anything with ``.sample(conditions, seeds, steps=, guidance=,
    sampler=)`` returning ``.images`` uint8 (N, C, H, W)).  Image ``i`` has label
    ``labels`` allocation of ``i`` (None: round-robin over classes; a dict name -> weight or
    ``"a=0.5,b=0.5"``: the bulk engine's allocation, so with the same seed and settings
    item i is image i of ``synth sample``) and seed ``image_seed(seed, i)``: the same index
    always gives the same image, whatever the batch.  ``epoch_fresh=True``: epochs > 0 use
    seeds from ``(seed, epoch, i)`` (``set_epoch``) for fresh images every epoch.
    ``steps``/``guidance``/``sampler``: None uses the generator's defaults.

    A DataLoader fetches a whole batch in one generator call (``__getitems__``; on the GPU
    when the generator is there).  Use ``num_workers=0``: the model lives in the main
    process (a CUDA generator inside a worker is an error).  ``image``: float32 (C, H, W)
    in [0, 1], or ``transform(PIL image)``.  ``classes``/``label_map``: as :class:`SyntheticSet`.
    """

    def __init__(self, generator, n: int, *, labels=None, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, epoch_fresh: bool = False,
                 transform: Callable | None = None, classes=None, label_map: Mapping[str, str | None] | None = None):
        if not isinstance(n, int) or n < 1:
            raise AugmentError(f"n must be a positive number of images, got {n!r}")
        if not callable(getattr(generator, "sample", None)):
            raise AugmentError(f"{type(generator).__name__} has no .sample(); pass a generator from "
                               f"synth.samplers.generator.load_generator(export)")
        self.generator, self.n, self.seed, self.epoch = generator, n, int(seed), 0
        self.schema, self._bridge = _generator_schema(generator)
        self.set_classes = list(self.schema.classes)
        self._to_label, self.classes = _label_lookup(self.set_classes, classes, label_map)
        self.sample_kwargs = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("sampler", sampler))
                              if v is not None}
        self.epoch_fresh, self.transform = bool(epoch_fresh), transform
        self.gen_labels = self._allocate(labels)
        self.labels = torch.tensor([self._to_label[k] for k in self.gen_labels.tolist()], dtype=torch.long)

    def _allocate(self, labels) -> torch.Tensor:
        """Generator class id of every index (N,): deterministic, never dropped classes."""
        allowed = [t >= 0 for t in self._to_label]
        if labels is None:
            ks = [k for k, ok in enumerate(allowed) if ok]
            if not ks:
                raise AugmentError("label_map drops every class of the generator; map at least one to a real class")
            return torch.tensor([ks[i % len(ks)] for i in range(self.n)], dtype=torch.long)
        weights = _label_weights(labels, self.schema, allowed)
        return torch.tensor(labels_for(self.n, weights), dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def seed_of(self, i: int) -> int:
        """Seed of index ``i``: ``image_seed(seed, i)`` (as ``synth sample``), per epoch with ``epoch_fresh``."""
        if self.epoch_fresh and self.epoch > 0:
            return derive_seed("online-epoch", self.seed, self.epoch, i)
        return image_seed(self.seed, i)

    def condition(self, k: int) -> Condition:
        """A bridge samples its domain k (its classes are domains); an LDM its class k."""
        if self._bridge:
            return Condition(label=k, domain=k)
        return self.schema.condition(k)

    def __len__(self) -> int:
        return self.n

    def _check_process(self) -> None:
        if get_worker_info() is not None and _generator_device(self.generator).type == "cuda":
            raise AugmentError("OnlineSynthetic with a CUDA generator inside a DataLoader worker: the model lives in "
                               "the main process; use DataLoader(..., num_workers=0)")

    def _index(self, i) -> int:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for OnlineSynthetic of {self.n} images")
        return i

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (B, C, H, W) of ``indices``, in one generator call."""
        self._check_process()
        idx = [self._index(i) for i in indices]
        conds = [self.condition(int(self.gen_labels[i])) for i in idx]
        batch = self.generator.sample(conds, [self.seed_of(i) for i in idx], **self.sample_kwargs)
        return batch.images

    def __getitems__(self, indices: Sequence[int]) -> list:
        imgs = self.images(indices)
        out = []
        for x, i in zip(imgs, indices):
            image = self.transform(uint8_to_pil(x)) if self.transform is not None else x.float().div(255.0)
            out.append((image, int(self.labels[self._index(i)])))
        return out

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]


__all__ = ["AugmentError", "read_set_manifest", "set_classes", "map_labels", "SyntheticSet", "SyntheticStream",
           "MixedDataset", "MixedBatchSampler", "mix", "quality_filter", "OnlineSynthetic", "water_fill", "module_hash"]
