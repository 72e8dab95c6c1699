"""The real data of an evaluation (the classifier's fraction, full val and test splits), the subset check a
generator must pass, and a synthetic set as tensors."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from synth.errors import SynthError
from synth.config import Config
from synth.data import ImageSet, load_split, subset_record

class EvalError(SynthError, ValueError):
    """A bad evaluation input; one line naming the problem and the fix."""


@dataclass
class RealSplits:
    """Real images for one fraction: uint8 (N, 1, R, R) tensors and int64 labels."""

    train: ImageSet
    val: ImageSet
    test: ImageSet
    subset: dict  # subset_record of ``train``


def real_splits(cfg: Config, fraction: float) -> RealSplits:
    """The stratified training fraction the classifier (and its generator) see; full val and test splits."""
    data = dataclasses.replace(cfg.data, fraction=fraction, val_max_items=None)
    classes = cfg.labels.classes or None
    train = load_split(data, "train", classes)
    val, test = load_split(data, "val", classes), load_split(data, "test", classes)
    from synth.data import carve_applies

    return RealSplits(train, val, test, {**subset_record(train, data), "carve_applies": carve_applies(data)})


def old_carve_hint(rec: dict, mine: dict) -> str:
    """The fix when a generator was trained before ``data.carve`` existed (random carve) and the data has no
    validation split: its subset hash is only reproduced with ``data.carve=random``; '' otherwise."""
    if "carve" in rec or mine.get("carve") != "stratified" or not mine.get("carve_applies"):
        return ""
    return ("its generator was trained before synth carved validation per class (random carve); evaluate with "
            "data.carve=random (synth eval fidelity --set-config data.carve=random, or --set data.carve=random) or "
            "retrain it")


def check_subset(manifest: dict, splits: RealSplits, where: str) -> None:
    """Refuse a synthetic set whose generator was trained on another real subset than the classifier's."""
    rec = (manifest.get("model") or {}).get("train_subset")
    if not rec:
        raise EvalError(f"{where}: its generator records no training subset (exported before data.fraction existed); "
                        f"retrain it with this version so the evaluation can check it saw only the classifier's data")
    mine = splits.subset
    if rec.get("indices_sha256") != mine["indices_sha256"] and old_carve_hint(rec, mine):
        raise EvalError(f"{where}: {old_carve_hint(rec, mine)}")
    if rec.get("indices_sha256") != mine["indices_sha256"]:
        raise EvalError(f"{where}: the generator was trained on another real subset (fraction {rec.get('fraction')}, "
                        f"seed {rec.get('seed')}, {rec.get('n')} images of '{rec.get('data')}') than the classifier "
                        f"(fraction {mine['fraction']}, seed {mine['seed']}, {mine['n']} images); a generator must "
                        f"see only the real images the classifier sees — retrain it with data.fraction={mine['fraction']}")


def synthetic_tensors(path: Path, classes: list[str], quality: str | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """uint8 images (N, 1, R, R), labels (N,) mapped onto ``classes`` by name, and the set's manifest.

    ``quality="keep"``: only the images the set's quality filter kept.
    """
    from synth.augment import SyntheticSet

    s = SyntheticSet(path, classes=classes, quality=quality)
    images, labels = s.tensors()
    return images, labels, s.manifest
