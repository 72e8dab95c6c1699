"""``synth eval fidelity``: FID/KID, label fidelity, diversity, memorisation and privacy of one synthetic set,
against the real data its generator saw; appended to the set's and the model's cards."""
from __future__ import annotations

import contextlib
import dataclasses
from pathlib import Path


from synth.config import Config
from synth.data import DataError
from synth.evaluation.real import EvalError, RealSplits, old_carve_hint, real_splits, synthetic_tensors


def _named_like_generator(cfg: Config, splits: RealSplits, set_classes: list[str], rec: dict) -> Config:
    """``cfg`` naming the data's classes as the generator did, when the data names none (an npz's class_k) and
    the generator was trained on exactly these rows: its k-th name then is label k (no guess: the subset hash
    matches); otherwise ``cfg`` unchanged."""
    data_classes = splits.train.classes
    generic = data_classes == [f"class_{k}" for k in range(len(data_classes))]
    if (cfg.labels.classes or not generic or not rec or len(set_classes) != len(data_classes)
            or set_classes == data_classes or rec.get("indices_sha256") != splits.subset["indices_sha256"]):
        return cfg
    return dataclasses.replace(cfg, labels=dataclasses.replace(cfg.labels, classes=list(set_classes)))


def fidelity_cli(set_dir: str, data: str, resolution: int | None, fraction: float | None, features: str | None,
                 overrides: list[str], out: str | None) -> str:
    """``synth eval fidelity``: the report of one synthetic set; returns a one-paragraph summary."""
    from synth.augment import SyntheticSet
    from synth.config import load_config
    from synth.io import channel_word
    from synth.evaluation.fidelity import feature_net, fidelity_report

    s = SyntheticSet(set_dir)
    rec = (s.manifest.get("model") or {}).get("train_subset") or {}
    if fraction is None:
        fraction = float(rec.get("fraction") or 1.0)
    seed = rec.get("seed", 0) if rec else 0
    if len(s) < 2:
        raise EvalError(f"{set_dir} holds {len(s)} image(s); fidelity needs at least 2 (FID, diversity)")
    size = int(s.uint8(0).shape[-1])
    res = resolution or size
    if size != res:
        raise EvalError(f"{set_dir} holds {size} px images but --resolution is {res}; drop --resolution")
    max_items = rec.get("max_items") if rec else None
    cfg = load_config(None, [f"data.name={data}", f"data.resolution={res}", "data.val_max_items=null",
                             f"data.fraction={fraction}", f"data.seed={seed}",
                             f"data.max_items={max_items if max_items else 'null'}"] + list(overrides))
    try:
        splits = real_splits(cfg, fraction)
        cfg = _named_like_generator(cfg, splits, list(s.set_classes), rec)
        if cfg.labels.classes and list(cfg.labels.classes) != splits.train.classes:
            splits = real_splits(cfg, fraction)
    except DataError as e:
        raise EvalError(str(e)) from None
    syn_c, real_c = int(s.uint8(0).shape[0]), splits.train.channels
    if syn_c != real_c:  # the feature net, judge and distances would compare grey with colour
        raise EvalError(f"{set_dir} holds {channel_word(syn_c)} images but --data {data} gives {channel_word(real_c)} "
                        f"ones; evaluate against the data its generator was trained on, or pass "
                        f"--set data.channels={syn_c} to read the real images as {channel_word(syn_c)}")
    # before any judge is trained: a refusal after minutes of training is the waste issue 19 reported
    if rec and rec.get("indices_sha256") != splits.subset["indices_sha256"] and old_carve_hint(rec, splits.subset):
        raise EvalError(f"{set_dir}: {old_carve_hint(rec, splits.subset)}")
    if rec and rec.get("indices_sha256") != splits.subset["indices_sha256"]:
        raise EvalError(f"{set_dir}: its generator was trained on another subset of '{rec.get('data')}' (fraction "
                        f"{rec.get('fraction')}, seed {rec.get('seed')}) than --data {data} --fraction {fraction} "
                        f"gives; pass the generator's training data so memorisation is measured against it")
    colour = "-rgb" if syn_c == 3 else ""  # a grey feature net cached beside the set is not reused for colour
    # beside the set (shared by the sets of one folder), or inside --out: nothing is written outside --out
    home = Path(out).resolve() if out else Path(set_dir).resolve().parent
    default = home / f"features-{Path(data).name}-{res}{colour}.safetensors"
    features = Path(features) if features else default
    try:
        net, classes, _ = feature_net(features, cfg.data, classes=list(cfg.labels.classes) or None)
    except DataError as e:
        raise EvalError(str(e)) from None
    images, labels, _ = synthetic_tensors(Path(set_dir), classes)
    rep = fidelity_report(splits.train, splits.test, images, labels, classes, net, out_dir=Path(out or set_dir))
    lf = rep.get("label_fidelity", {}).get("per_class", {})
    summary = (f"FID {rep['fid']['fid']:.2f}, KID {rep['fid']['kid_mean']:.4f}; label fidelity "
               + ", ".join(f"{k} {v:.3f}" for k, v in lf.items())
               + f"; privacy score {rep['privacy']['score']:.3f} (real baseline {rep['privacy']['real_rate']:.3f})")
    from synth.cards import append_measurement

    # the set's card keeps what was measured of it (a resumed or extended set keeps this section)
    title = f"synth eval fidelity against {data} (fraction {fraction}, {len(images)} images)"
    with contextlib.suppress(OSError):  # a read-only set keeps its report; the card is a courtesy
        append_measurement(set_dir, title, [f"- {summary}", f"- full report: `{Path(out or set_dir) / 'fidelity.md'}`"])
    model_dir = (s.manifest.get("model") or {}).get("path")
    if model_dir and Path(model_dir).is_dir():  # the generator's card too: what was measured of its images
        s_settings = s.manifest.get("settings") or {}
        with contextlib.suppress(OSError):
            append_measurement(model_dir, title, [f"- set `{set_dir}` (guidance {s_settings.get('guidance')}, "
                                                  f"sampler {s_settings.get('sampler')}, {s_settings.get('steps')} "
                                                  f"steps): {summary}"])
    return f"{summary}; report in {Path(out or set_dir) / 'fidelity.md'}"
