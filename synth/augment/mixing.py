"""Real and synthetic in one dataset: :func:`mix` / :class:`MixedDataset` (a fraction per epoch, optionally class-balanced)\nand :class:`MixedBatchSampler` (an exact number of synthetic items in every batch)."""
from __future__ import annotations

import math
import os
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from synth.seeds import derive_seed
from synth.sampleset.errors import AugmentError
from synth.sampleset.manifest import read_set_manifest, set_classes


from synth.augment.names import _real_class_list
from synth.augment.sets import dist_rank_world
from synth.augment.sets import SyntheticSet


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
