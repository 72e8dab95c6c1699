""":func:`quality_filter`: keep only the images a classifier recognises as their requested label (decisions in quality.jsonl)."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from synth.io import atomic_write_json, atomic_write_text, to_float
from synth.sampleset.errors import AugmentError
from synth.sampleset.layout import set_format
from synth.sampleset.manifest import read_set_manifest


from synth.augment.mixing import _unit_interval
from synth.augment.names import _find, _real_class_list
from synth.augment.sets import SyntheticSet


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
