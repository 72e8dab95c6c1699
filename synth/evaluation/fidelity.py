"""``synth eval fidelity``: how real, how diverse, how well labelled and how private is a synthetic set?

* One feature extractor per data set (:func:`feature_net`): a :class:`synth.classifier.SmallCNN` trained
  on the FULL real training split, saved (safetensors) and reused, so FID/KID numbers compare across
  runs and generators.  It is also the label-fidelity judge and the embedding network of the
  memorisation and privacy checks.  Inception features need torch-fidelity's weight loader, which
  this project does not depend on (and cannot download offline): asking for them is a one-line error.
* :func:`fidelity_report`: FID/KID (synthetic vs real train, and real test vs real train for
  reference), label fidelity per class, MS-SSIM diversity per class (synthetic vs real), memorisation
  (nearest training image, synthetic vs real test) and a CheXGenBench-style privacy score, written as
  ``fidelity.json``, ``fidelity.md`` and ``closest-pairs.png``.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from synth.classifier import ClassifierError, SmallCNN, load_classifier, save_classifier
from synth.io import atomic_save_with, atomic_write_json, atomic_write_text
from synth.trainers.classifier import train_classifier

if TYPE_CHECKING:
    from synth.config import Config

FEATURE_FORMAT = "synth-fidelity-features-v1"


class FidelityError(ClassifierError):
    """A saved extractor or an option that cannot be used; one line naming the mismatch and the fix."""


def _source(name) -> str:
    """'pneumoniamnist' == '.../pneumoniamnist.npz' (as :func:`synth.data.subset_record` spells it)."""
    return Path(str(name)).name.lower().removesuffix(".npz")


def full_split_config(data_cfg):
    """``data_cfg`` without any training or validation subsetting: the yardstick always sees everything."""
    return dataclasses.replace(data_cfg, max_items=None, fraction=1.0, val_max_items=None)


def feature_net(path, data_cfg, *, steps: int = 600, device: str = "cpu", log=print,
                seed: int = 0, classes: list[str] | None = None) -> tuple[SmallCNN, list[str], dict]:
    """The data set's fixed feature extractor and label judge: (model in eval mode, class names, info).

    Loads ``path`` when it exists and its recorded data name, resolution and training-split fingerprint
    match ``data_cfg`` (a mismatch is refused with one line naming it); otherwise trains a SmallCNN on
    the full real training split (``data.max_items``/``data.fraction`` are ignored: a yardstick is never a
    subset) for ``steps`` steps, saves it to ``path`` with its validation accuracy, and returns it.
    """
    from synth.data import fingerprint, load_split
    from synth.trainers.classifier import accuracy

    cfg = full_split_config(data_cfg)
    path = Path(path)
    train = load_split(cfg, "train", classes)  # ``classes``: names for data that has none (an npz's class_k)
    want = {"data": _source(cfg.name), "resolution": int(cfg.resolution), "train_fingerprint": fingerprint(train)}
    if path.exists():
        model, classes, info = load_classifier(path, device)
        if info.get("format") != FEATURE_FORMAT:
            raise FidelityError(f"'{path}' is a classifier but not a fidelity feature extractor; pass another path "
                                f"or delete it to have one trained")
        for key, label in (("data", "data set"), ("resolution", "resolution"),
                           ("train_fingerprint", "training-split fingerprint")):
            if info.get(key) != want[key]:
                raise FidelityError(f"feature extractor '{path}' was trained on {label} {info.get(key)!r}, this data "
                                    f"has {want[key]!r}; FID/KID are only comparable on one extractor: use the "
                                    f"extractor made for this data (another path) or delete '{path}' to retrain")
        if classes != list(train.classes):
            raise FidelityError(f"feature extractor '{path}' has classes {classes}, this data has "
                                f"{list(train.classes)}; delete it to retrain")
        log(f"feature extractor: reusing {path} (weights {info.get('weights_sha256')}, val accuracy "
            f"{info.get('val_accuracy', float('nan')):.3f})")
        return model, classes, info
    log(f"feature extractor: training a SmallCNN on all {len(train)} real training images of {cfg.name} "
        f"at {cfg.resolution} px ({steps} steps) -> {path}")
    t0 = time.perf_counter()
    model = train_classifier(train.images, train.labels, len(train.classes), steps=steps, seed=seed, device=device,
                             log=log)
    val = load_split(cfg, "val", list(train.classes))
    acc = accuracy(model, val.images, val.labels)
    info = {**want, "format": FEATURE_FORMAT, "steps": int(steps), "seed": int(seed), "n_train": len(train),
            "val_accuracy": acc["overall"], "val_per_class": {train.classes[k]: v for k, v in acc["per_class"].items()},
            "n_val": len(val), "train_seconds": round(time.perf_counter() - t0, 1)}
    sha = save_classifier(model.cpu(), path, list(train.classes), info)
    log(f"feature extractor: val accuracy {acc['overall']:.3f}, saved {path} (weights {sha})")
    return model.to(device).eval(), list(train.classes), {**info, "weights_sha256": sha}


def check_inception_weights(path) -> None:
    """Refuse Inception features that cannot be computed here; one line saying why.

    torchmetrics' Inception (FID's usual network) loads its weights through torch-fidelity's
    FeatureExtractorInceptionV3, which this project does not install; without it a local weights file
    cannot be used, and no numbers are made up in its place.
    """
    if path is None:
        return
    if not Path(path).is_file():
        raise FidelityError(f"Inception weights '{path}' not found; omit them to use the project's own extractor")
    if importlib.util.find_spec("torch_fidelity") is None:
        raise FidelityError(f"Inception weights '{path}' need torch-fidelity to be loaded offline (torchmetrics' "
                            f"Inception is torch-fidelity's), which this project does not install; omit them: FID/KID "
                            f"use the project's extractor trained on the real data")


class _GreyInception(torch.nn.Module):
    """torchmetrics' Inception (torch-fidelity) on grey images: uint8 (B, 1|3, H, W) -> (B, 2048)."""

    def __init__(self, weights_path):
        super().__init__()
        from torchmetrics.image.fid import NoTrainInceptionV3

        self.net = NoTrainInceptionV3(name="inception-v3-compat", features_list=["2048"],
                                      feature_extractor_weights_path=str(weights_path))
        self.num_features = 2048

    def forward(self, imgs):
        if imgs.dtype != torch.uint8:
            imgs = (imgs.float().clamp(0, 1) * 255).round().to(torch.uint8)
        return self.net(imgs.expand(-1, 3, -1, -1) if imgs.shape[1] == 1 else imgs).reshape(len(imgs), -1)


# ---------------------------------------------------------------------------
# The report


def _tensors(s):
    """An ImageSet-like object (``.images``, ``.labels``) or an (images, labels) pair."""
    return (s.images, s.labels) if hasattr(s, "images") else (s[0], s[1])


def _named(per_class: dict, classes: list[str]) -> dict:
    return {classes[k]: v for k, v in per_class.items()}


def fidelity_report(real_train, real_test, syn_images: torch.Tensor, syn_labels: torch.Tensor, classes: list[str],
                    net: SmallCNN, *, out_dir=None, seed: int = 0, kid_subset_size: int = 1000,
                    diversity_pairs: int = 200, privacy_quantile: float = 0.01, inception_weights=None,
                    extractor_info: dict | None = None, fid_reference=None) -> dict:
    """Fidelity, diversity, memorisation and privacy of one synthetic set, side by side with real data.

    real_train: the real images the generator was trained on (ImageSet or (uint8 (N, 1, R, R), labels));
    real_test: held-out real images of the same data (the reference for FID, memorisation and the
    privacy threshold; must not be the set passed as synthetic); syn_images uint8 (M, 1, R, R) with
    requested labels (M,) in [0, len(classes)); ``net``: the extractor/judge from :func:`feature_net`.
    ``fid_reference``: real images FID/KID compare against (default ``real_train``); pass one fixed set (e.g. the
    full training split) to compare generators trained on subsets of different sizes, since FID is biased by the
    reference's size.
    Returns a JSON-able dict (also written to ``out_dir/fidelity.json`` with ``fidelity.md`` and
    ``closest-pairs.png`` when ``out_dir`` is given).  Distances are cosine distances between the
    extractor's features.  Held-out images that are byte-identical to a training image (leakage in the
    data set itself) are counted and left out of the memorisation and privacy reference.
    """
    from synth.metrics import (classifier_features, exact_copies, fid_kid, label_fidelity, memorisation,
                               ms_ssim_diversity, privacy_score)

    check_inception_weights(inception_weights)
    tr_x, tr_y = _tensors(real_train)
    te_x, te_y = _tensors(real_test)
    syn_labels = syn_labels.long()
    if net.num_classes != len(classes):
        raise FidelityError(f"the extractor has {net.num_classes} classes, the synthetic set {len(classes)} "
                            f"({classes}); use the extractor made for this data")
    if syn_images.shape[1:] != tr_x.shape[1:]:
        raise FidelityError(f"synthetic images are {tuple(syn_images.shape[1:])}, real ones "
                            f"{tuple(tr_x.shape[1:])}; prepare both at one resolution")
    t0 = time.perf_counter()
    nc = len(classes)
    rep: dict = {"counts": {"train": len(tr_x), "test": len(te_x), "synthetic": len(syn_images),
                            "synthetic_per_class": {c: int((syn_labels == k).sum()) for k, c in enumerate(classes)}},
                 "resolution": int(syn_images.shape[-1]), "classes": list(classes),
                 "distance": "cosine distance (1 - cos) between the extractor's pooled features"}
    if extractor_info:
        rep["extractor"] = {k: extractor_info.get(k) for k in ("data", "resolution", "train_fingerprint", "steps",
                                                               "val_accuracy", "weights_sha256") if k in extractor_info}

    # FID / KID: synthetic vs the training images, and held-out real vs the same for scale
    ref_x = tr_x if fid_reference is None else _tensors(fid_reference)[0]
    rep["fid_reference"] = "the generator's training images" if fid_reference is None else f"{len(ref_x)} fixed real images"
    rep["fid"] = fid_kid(ref_x, syn_images, net, kid_subset_size=kid_subset_size, seed=seed)
    rep["fid_real_test"] = fid_kid(ref_x, te_x, net, kid_subset_size=kid_subset_size, seed=seed)
    if inception_weights is not None:
        inc = _GreyInception(inception_weights)
        rep["fid_inception"] = fid_kid(tr_x, syn_images, inc, kid_subset_size=kid_subset_size, seed=seed)
        rep["fid_inception_real_test"] = fid_kid(tr_x, te_x, inc, kid_subset_size=kid_subset_size, seed=seed)

    # label fidelity: the real-data judge's agreement with the requested label (and its own test accuracy)
    lf, lr = label_fidelity(net, syn_images, syn_labels, nc), label_fidelity(net, te_x, te_y.long(), nc)
    rep["label_fidelity"] = {"overall": lf["overall"], "per_class": _named(lf["per_class"], classes),
                             "real_test_overall": lr["overall"], "real_test_per_class": _named(lr["per_class"], classes)}

    # diversity within a class (MS-SSIM of random same-class pairs; lower = more diverse)
    ds = ms_ssim_diversity(syn_images, syn_labels, nc, pairs=diversity_pairs, seed=seed)
    dr = ms_ssim_diversity(tr_x, tr_y.long(), nc, pairs=diversity_pairs, seed=seed)
    rep["diversity"] = {"synthetic_mean": ds["mean"], "real_mean": dr["mean"],
                        "synthetic_per_class": _named(ds["per_class"], classes),
                        "real_per_class": _named(dr["per_class"], classes), "pairs": diversity_pairs,
                        "ms_ssim": ds["settings"]}

    # memorisation and privacy on the same embedding; held-out real images that are exact copies of a
    # training image (data-set leakage) are not "distinct real images": left out of the reference
    dup = exact_copies(te_x, tr_x)
    if int((~dup).sum()) < 2:
        raise FidelityError(f"only {int((~dup).sum())} held-out real images are not exact copies of training "
                            f"images; memorisation and privacy need distinct real images for reference")
    syn_dup = exact_copies(syn_images, tr_x)
    rep["counts"]["test_exact_copies_of_train"] = int(dup.sum())
    rep["counts"]["synthetic_exact_copies_of_train"] = int(syn_dup.sum())
    f_tr, f_te, f_syn = (classifier_features(net, x) for x in (tr_x, te_x[~dup], syn_images))
    mem = memorisation(f_syn, f_tr, f_te)
    rep["memorisation"] = {k: v for k, v in mem.items() if not isinstance(v, torch.Tensor)}
    rep["memorisation"]["syn_exact_copies"] = int(syn_dup.sum())
    rep["privacy"] = privacy_score(f_syn, f_tr, calib_feats=f_te, quantile=privacy_quantile, seed=seed)
    order = mem["syn_distances"].argsort()[:8]
    pairs = [{"synthetic_index": int(i), "train_index": int(mem["syn_index"][i]),
              "distance": float(mem["syn_distances"][i]), "class": classes[int(syn_labels[i])]} for i in order]
    rep["closest_pairs"] = pairs
    rep["seconds"] = round(time.perf_counter() - t0, 1)

    if out_dir is not None:
        out = Path(out_dir)
        atomic_write_json(out / "fidelity.json", rep)
        atomic_write_text(out / "fidelity.md", markdown(rep))
        closest_pairs_png(out / "closest-pairs.png", syn_images, tr_x, pairs)
    return rep


def _f(x, spec=".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and x != x) else format(x, spec)


def markdown(rep: dict) -> str:
    """``fidelity.md``: one readable table, synthetic next to the real reference."""
    c = rep["counts"]
    fid, fr = rep["fid"], rep["fid_real_test"]
    lf, dv, m, p = rep["label_fidelity"], rep["diversity"], rep["memorisation"], rep["privacy"]
    rows = [("FID (vs real train)", _f(fid["fid"], ".3f"), _f(fr["fid"], ".3f"), "lower = closer"),
            ("KID (vs real train)", f"{_f(fid['kid_mean'])} ± {_f(fid['kid_std'])}",
             f"{_f(fr['kid_mean'])} ± {_f(fr['kid_std'])}", f"subset size {fid['kid_subset_size']}")]
    if "fid_inception" in rep:
        rows.append(("FID, Inception", _f(rep["fid_inception"]["fid"], ".3f"),
                     _f(rep["fid_inception_real_test"]["fid"], ".3f"), "torch-fidelity weights"))
    rows.append(("label fidelity, overall", _f(lf["overall"], ".3f"), _f(lf["real_test_overall"], ".3f"),
                 "judge agrees with the label"))
    for k in lf["per_class"]:
        rows.append((f"label fidelity, {k}", _f(lf["per_class"][k], ".3f"), _f(lf["real_test_per_class"][k], ".3f"), ""))
    rows.append(("MS-SSIM within class, mean", _f(dv["synthetic_mean"], ".3f"), _f(dv["real_mean"], ".3f"),
                 "lower = more diverse"))
    for k in dv["synthetic_per_class"]:
        rows.append((f"MS-SSIM, {k}", _f(dv["synthetic_per_class"][k], ".3f"), _f(dv["real_per_class"][k], ".3f"), ""))
    rows += [("NN distance to train, median", _f(m["syn_median"], ".3g"), _f(m["real_median"], ".3g"),
              "synthetic should not be closer" + ("" if m["no_closer_than_real"] else " — **it is**")),
             ("NN distance to train, 5th percentile", _f(m["syn_p05"], ".3g"), _f(m["real_p05"], ".3g"), ""),
             ("exact copies of a training image", str(m.get("syn_exact_copies", "–")),
              str(c.get("test_exact_copies_of_train", "–")), "held-out copies are left out of the reference rows"),
             ("share closer than real 5th pct.", _f(m["share_below_real_p05"], ".3f"), "0.05", "~0.05 when nothing is copied"),
             (f"privacy score (threshold {_f(p['threshold'], '.2e')})", _f(p["score"], ".3f"), _f(p["real_rate"], ".3f"),
              f"~{p['quantile']:g} unless training images are copied")]
    lines = [f"# Fidelity and privacy of a synthetic set ({rep['resolution']} px)", "",
             f"{c['synthetic']} synthetic images ({', '.join(f'{k}: {v}' for k, v in c['synthetic_per_class'].items())}); "
             f"real: {c['train']} training images (the generator's), {c['test']} held-out test images "
             f"({c.get('test_exact_copies_of_train', 0)} of them exact copies of training images, left out of the "
             f"memorisation and privacy reference). "
             f"Features, judge and embedding: a SmallCNN trained on the full real training split"
             + (f" (weights {rep['extractor'].get('weights_sha256')}, val accuracy "
                f"{_f(rep['extractor'].get('val_accuracy'), '.3f')})" if rep.get("extractor") else "")
             + f"; distances are {rep['distance']}.", "",
             "| metric | synthetic | real test (reference) | note |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {r} | {n} |" for a, b, r, n in rows]
    lines += ["", "Closest pairs (`closest-pairs.png`): " + ", ".join(
        f"syn {q['synthetic_index']} ~ train {q['train_index']} ({q['class']}, {q['distance']:.3g})"
        for q in rep["closest_pairs"]), ""]
    return "\n".join(lines)


def closest_pairs_png(path, syn_images: torch.Tensor, train_images: torch.Tensor, pairs: list[dict]) -> None:
    """The synthetic images closest to a training image (top row) above that training image (bottom row)."""
    from matplotlib.figure import Figure

    n = max(1, len(pairs))
    fig = Figure(figsize=(1.6 * n + 1.2, 4.0))
    axes = fig.subplots(2, n, squeeze=False)
    for j in range(n):
        for r in range(2):
            ax = axes[r][j]
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(pairs):
                continue
            q = pairs[j]
            img = syn_images[q["synthetic_index"]] if r == 0 else train_images[q["train_index"]]
            if img.shape[0] == 1:
                ax.imshow(img[0].cpu().numpy(), cmap="gray", vmin=0, vmax=255)
            else:  # colour stays colour
                ax.imshow(img.permute(1, 2, 0).cpu().numpy())
            if r == 0:
                ax.set_title(f"{q['class']}\nd = {q['distance']:.3g}", fontsize=8)
            else:
                ax.set_xlabel(f"train #{q['train_index']}", fontsize=7)
    axes[0][0].set_ylabel("synthetic", fontsize=9)
    axes[1][0].set_ylabel("nearest training image", fontsize=9)
    fig.suptitle("Synthetic images closest to a real training image\n(cosine distance of the extractor's features; "
                 "lower = more similar)", fontsize=10)
    fig.tight_layout()
    atomic_save_with(path, lambda p: fig.savefig(p, format="png", dpi=110))


def fidelity_of_sets(cfg: Config, out: Path, sets: list[Path], log: Callable[[str], None]) -> dict:
    """Label fidelity, diversity, FID/KID and privacy of each planned synthetic set, next to its usefulness.

    One yardstick for all: the extractor is trained once on the full real training split and FID/KID
    compare against that split (FID depends on the reference's size); memorisation and privacy compare
    against what each generator was trained on.  Reports go to ``<out>/fidelity/<set>/`` and are reused
    only while the extractor, the set and the filter are the ones they were made with.
    """
    import json

    from synth.data import load_split
    from synth.evaluation.pools import seen_with_pool
    from synth.evaluation.real import EvalError, real_splits, synthetic_tensors

    kept = {}  # a set no longer on this machine (a study seeded from its kept raw results): its last report stands
    for d in sets:
        cache = out / "fidelity" / d.name / "fidelity.json"
        if not (d / "manifest.json").is_file() and cache.is_file():
            rec = json.loads(cache.read_text())
            if (rec.get("cache_key") or {}).get("quality") == cfg.eval.quality_threshold:
                kept[d.name] = rec
    sets = [d for d in sets if (d / "manifest.json").is_file()]
    if not sets:
        return kept
    data = dataclasses.replace(cfg.data, fraction=1.0, val_max_items=None)
    net, classes, info = feature_net(out / "features.safetensors", data, steps=cfg.eval.feature_steps, log=log,
                                     classes=list(cfg.labels.classes) or None)
    full = load_split(data, "train", cfg.labels.classes or None)
    if classes != full.classes:
        raise EvalError(f"the feature extractor's classes {classes} are not the data's {full.classes}; "
                        f"delete {out / 'features.safetensors'} to retrain it")
    quality = "keep" if cfg.eval.quality_threshold > 0 else None
    res = dict(kept)
    for d in sets:
        manifest = json.loads((d / "manifest.json").read_text())
        key = {"extractor": info.get("weights_sha256"), "set": (manifest.get("model") or {}).get("weights_sha256"),
               "n_done": manifest.get("n_done"), "quality": cfg.eval.quality_threshold, "reference": "full-train"}
        rep_dir = out / "fidelity" / d.name
        cache = rep_dir / "fidelity.json"
        if cache.is_file() and json.loads(cache.read_text()).get("cache_key") == key:
            res[d.name] = json.loads(cache.read_text())
            continue
        f = float(d.name.split("-")[0][1:])
        splits = real_splits(cfg, f)  # memorisation and privacy against what THIS generator was trained on
        seen = splits.train
        if d.name.endswith("-pool"):  # ... which for a pool generator includes the pool: it must not copy it either
            seen = seen_with_pool(cfg, f, splits)
        images, labels, _ = synthetic_tensors(d, classes, quality)
        rep = fidelity_report(seen, splits.test, images, labels, classes, net, fid_reference=full)
        rep["memorisation_reference"] = ("labelled subset + unlabelled pool" if seen is not splits.train else
                                         "labelled subset" + (" (the pool's labels are unknown: not included)"
                                                              if d.name.endswith("-pool") else ""))
        rep["cache_key"] = key
        rep_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(cache, rep)
        atomic_write_text(rep_dir / "fidelity.md", markdown(rep))
        closest_pairs_png(rep_dir / "closest-pairs.png", images, seen.images, rep["closest_pairs"])
        res[d.name] = rep
    return res


__all__ = ["fidelity_of_sets", "feature_net", "fidelity_report", "FidelityError", "check_inception_weights", "full_split_config",
           "markdown", "closest_pairs_png"]
