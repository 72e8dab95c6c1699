"""The unlabelled pool in ``synth eval augment`` (issue 17): which pool a generator (and its whole chain of
foundations) may have seen, the pseudo-labelling baseline on that pool, and the pool images a pool generator's
memorisation is measured against."""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from synth.config import Config, EvalConfig
from synth.evaluation.arms import Pool, fit_classifier, single_thread
from synth.evaluation.real import EvalError, RealSplits
from synth.io import atomic_write_json


def check_pool(manifest: dict, expected: dict | None, where: str) -> None:
    """Refuse a synthetic set whose generator saw another unlabelled pool than the study declares (or one when
    the study declares none): its images would carry knowledge the protocol does not account for."""
    rec = ((manifest.get("model") or {}).get("train_subset") or {}).get("unlabelled")
    if expected is None and rec:
        raise EvalError(f"{where}: its generator also trained on an unlabelled pool ({rec.get('n')} images from "
                        f"{rec.get('source')}) but this arm's generator must see the labelled subset only; retrain "
                        f"it without data.unlabelled or evaluate it as a pool generator (eval.generators: [pool])")
    if expected is not None and (not rec or rec.get("sha256") != expected.get("sha256")):
        seen = f"{rec.get('n')} images from {rec.get('source')}" if rec else "no pool"
        raise EvalError(f"{where}: its generator saw {seen}, not the study's eval.unlabelled_pool ({expected.get('n')} "
                        f"images from {expected.get('source')}); delete that generator and its set (under generators/ and "
                        f"synthetic/) so the study retrains them on that pool, or set eval.unlabelled_pool to the pool it saw")


def check_foundations(manifest: dict, subset: dict, expected_pool: dict | None, where: str) -> None:
    """A fine-tuned generator carries what its foundation (and the foundation's own foundation ...) saw: each of them
    must have seen the classifier's labelled subset (or none of it) and no pool but the study's."""
    rec = ((manifest.get("model") or {}).get("train_subset") or {}).get("foundation")
    depth = 0
    while rec:
        depth += 1
        seen = rec.get("train_subset") or {}
        if not seen:
            raise EvalError(f"{where}: its generator was fine-tuned from '{rec.get('path')}', which records no training "
                            f"subset, so the study cannot check what it saw; pre-train the foundation with this version")
        pool = seen.get("unlabelled")
        labels_seen = not (pool and float(pool.get("share", 0)) >= 1.0)  # a pool-only foundation saw no label
        if labels_seen and seen.get("indices_sha256") != subset["indices_sha256"]:
            raise EvalError(f"{where}: its generator was fine-tuned from '{rec.get('path')}', which saw another labelled "
                            f"subset ({seen.get('n')} images, fraction {seen.get('fraction')}) than the classifier "
                            f"({subset['n']} images): the synthetic images would carry labels the classifier lacks; "
                            f"pre-train the foundation on this fraction's subset or on the pool alone")
        if pool and (expected_pool is None or pool.get("sha256") != expected_pool.get("sha256")):
            raise EvalError(f"{where}: its generator was fine-tuned from '{rec.get('path')}', which trained on an "
                            f"unlabelled pool ({pool.get('n')} images from {pool.get('source')}) that this arm does not "
                            f"declare; evaluate it as a pool generator with that pool as eval.unlabelled_pool")
        rec = seen.get("foundation")
        if depth > 32:
            break


def pseudo_label(splits: RealSplits, unlabelled, e: EvalConfig, recipe: str, record: Path,
                 log: Callable[[str], None]) -> Pool:
    """Train a teacher of ``recipe`` on the labelled subset, label the pool, keep confident images.

    The teacher's seed is fixed (30_011) so every student of a fraction sees the same pseudo-labelled pool; the
    kept count per class (and, for ``rest``, the pseudo-labels' accuracy against the hidden labels) goes to
    ``record``."""
    from synth.evaluation.arms import predict_proba

    k = len(splits.train.classes)
    t0 = time.process_time()
    with single_thread():
        teacher, _ = fit_classifier(Pool(splits.train.images, splits.train.labels), None, 0.0, splits.val, k, e,
                                    seed=30_011, steps=e.classifier_steps, lr=e.classifier_lr, recipe=recipe)
        probs = predict_proba(teacher, unlabelled.images)
    conf, labels = probs.max(1)
    keep = conf >= e.pseudo_threshold
    counts = torch.bincount(labels[keep], minlength=k).tolist()
    if not keep.any():
        raise EvalError(f"the pseudo-labelling teacher labels no pool image with confidence >= eval.pseudo_threshold="
                        f"{e.pseudo_threshold:g}; lower the threshold")
    info = {"n_pool": len(unlabelled), "n_kept": int(keep.sum()), "kept_per_class": dict(zip(splits.train.classes, counts)),
            "threshold": e.pseudo_threshold, "teacher_cpu_s": time.process_time() - t0}
    hidden = getattr(unlabelled, "hidden_labels", None)
    if hidden is not None:
        info["pseudo_label_accuracy"] = float((labels[keep] == hidden[keep]).float().mean())
    atomic_write_json(record, info)
    log(f"pseudo-labelling ({recipe}): kept {info['n_kept']} of {len(unlabelled)} pool images "
        + ", ".join(f"{c}: {n}" for c, n in info["kept_per_class"].items())
        + (f"; accuracy vs hidden labels {info['pseudo_label_accuracy']:.3f}" if "pseudo_label_accuracy" in info else ""))
    return Pool(unlabelled.images[keep], labels[keep])


def seen_with_pool(cfg: Config, f: float, splits: RealSplits):
    """The labelled subset and the unlabelled pool a pool generator trained on, as one ImageSet (pool rows keep
    their hidden labels where the pool is the rest of the split; otherwise the labelled subset alone)."""
    from synth.data import ImageSet, load_pool

    pool = load_pool(dataclasses.replace(cfg.data, fraction=f, unlabelled=cfg.eval.unlabelled_pool), splits.train)
    if pool is None or pool.hidden_labels is None:
        return splits.train
    t = splits.train
    return ImageSet(torch.cat([t.images, pool.images]), torch.cat([t.labels, pool.hidden_labels]), t.classes,
                    source=t.source)


__all__ = ["check_pool", "check_foundations", "pseudo_label", "seen_with_pool"]
