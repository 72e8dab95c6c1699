"""Reading a set as a dataset: :class:`SyntheticSet` (map-style, imagefolder) and :class:`SyntheticStream` (iterable,\nwebdataset tars or imagefolder), images as (C, H, W) float in [0, 1] or through your transform."""
from __future__ import annotations

import io
import json
import math
import os
import random
import tarfile
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from synth.data import path_inside, show
from synth.seeds import derive_seed
from synth.sampleset.errors import RERUN, AugmentError, first_line
from synth.sampleset.layout import set_format
from synth.sampleset.manifest import read_set_manifest, set_classes
from synth.sampleset.rows import quality_kept, read_rows


from synth.augment.names import _label_lookup


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
