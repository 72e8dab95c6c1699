"""``synth eval text`` end to end: judges and the CLIP trained once on the real training split (cached in ``out``),
then for each model its images from the test captions, their swaps, and its text encoder's probe."""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import torch

from synth.data import DataError, ImageSet
from synth.evaluation import text as T
from synth.evaluation import textclip as C
from synth.evaluation.real import EvalError


READ_AS_TRAINED = ("channels", "on_error", "val_fraction", "carve", "seed")  # recorded data settings a split follows


def _load(data: str, resolution: int, split: str, classes: list[str] | None, recorded: dict | None = None,
          log: Callable[[str], None] | None = None) -> ImageSet:
    """One split of ``data`` at ``resolution`` (no subsetting, no validation cap), classes numbered as given.

    ``recorded``: the model's recorded ``data`` settings (:data:`READ_AS_TRAINED`) so the split is read as training
    read it; the source, resolution and caps are this evaluation's."""
    from synth.config import ConfigError, load_config
    from synth.data import load_split

    sets = [f"data.{k}={json.dumps(v)}" for k, v in (recorded or {}).items() if k in READ_AS_TRAINED and v is not None]
    base = [f"data.name={data}", f"data.resolution={resolution}", "data.val_max_items=null"]
    try:
        cfg = load_config(None, [*sets, *base])
    except ConfigError as e:  # a recorded value this version reads otherwise: the defaults, said out loud
        if log:
            log(f"note: the model's recorded data settings cannot be read here ({str(e).splitlines()[0]}); the "
                f"{split} split is read with the defaults and may differ from the one it was trained on")
        cfg = load_config(None, base)
    try:
        s = load_split(cfg.data, split, classes=classes)
    except DataError as e:
        raise EvalError(str(e)) from None
    if len(s) == 0:
        raise EvalError(f"--data {data} has no {split} images; synth eval text needs a manifest with train and test "
                        f"rows (a 'split' column)")
    return s


def probe_splits(ctx: dict, meta: dict) -> tuple[ImageSet, list[ImageSet]]:
    """(training split, held-out splits) as ``meta``'s model was trained: its own recorded validation carve, so
    a caption it trained on is never scored as held out.  Cached per distinct recorded setting."""
    rec = (meta.get("config") or {}).get("data") or {}
    key = json.dumps({k: rec.get(k) for k in READ_AS_TRAINED}, sort_keys=True, default=str)
    if key not in ctx["splits"]:
        classes = list(ctx["train"].classes)
        train = _load(ctx["data"], ctx["resolution"], "train", classes, rec, ctx["log"])
        try:  # the validation split's captions too: more held-out text, no image generated
            held = [_load(ctx["data"], ctx["resolution"], "val", classes, rec, ctx["log"]), ctx["test"]]
        except EvalError:
            held = [ctx["test"]]
        ctx["splits"][key] = (train, held)
    return ctx["splits"][key]


def _head(s: ImageSet, n: int | None, seed: int = 0) -> ImageSet:
    """``n`` rows of ``s`` (all when None): a quicker, still deterministic evaluation.  Classes take turns (a
    seeded order within each), so a manifest sorted by class still gives every class its share; rows keep
    their order in ``s``."""
    if n is None or n >= len(s):
        return s
    by_class: dict[int, list[int]] = {}
    for i, k in enumerate(s.labels.tolist()):
        by_class.setdefault(int(k), []).append(i)
    g = torch.Generator().manual_seed(seed)
    queues = {k: [rows[j] for j in torch.randperm(len(rows), generator=g).tolist()] for k, rows in sorted(by_class.items())}
    picked: list[int] = []
    while len(picked) < n:
        for k in sorted(queues):
            if queues[k] and len(picked) < n:
                picked.append(queues[k].pop(0))
    return _rows(s, sorted(picked))


def _rows(s: ImageSet, rows: list[int]) -> ImageSet:
    """The images of ``s`` at ``rows`` (in that order), with their labels, prompts and columns."""
    idx = torch.tensor(rows, dtype=torch.long)
    return replace(s, images=s.images[idx], labels=s.labels[idx],
                   prompts=[s.prompts[i] for i in rows] if s.prompts else None,
                   columns={c: [v[i] for i in rows] for c, v in (s.columns or {}).items()})


def _renumbered(s: ImageSet, classes: list[str], tag: str) -> ImageSet:
    """``s`` with its labels renumbered into ``classes`` (another model's order); every row stays where it is."""
    if list(s.classes) == classes:
        return s
    missing = sorted({s.classes[int(k)] for k in s.labels} - set(classes))
    if missing:
        raise EvalError(f"model {tag} has no class {', '.join(repr(m) for m in missing)} of the test captions (its "
                        f"classes: {', '.join(classes)}); compare models trained on the same labels")
    labels = torch.tensor([classes.index(s.classes[int(k)]) for k in s.labels], dtype=torch.long)
    return replace(s, labels=labels, classes=classes)


def _models(models: list[str]) -> list[dict]:
    """Each model's checked synth.json; text models only, one resolution and channel count."""
    from synth.samplers.artifact import read_artifact

    metas = [read_artifact(m) for m in models]
    for m, meta in zip(models, metas):
        if meta.get("kind", "ldm") != "ldm":
            raise EvalError(f"{m} holds a '{meta['kind']}' model (classes or domains, no text); synth eval text "
                            f"measures text-conditioned models (synth train ldm)")
    if len({(m["resolution"], m.get("channels", 1)) for m in metas}) > 1:
        raise EvalError("the --model exports differ in resolution or channels; compare models of one kind")
    return metas


def _tags(metas: list[dict]) -> list[str]:
    """A short unique name per model: its run folder's name."""
    tags = []
    for meta in metas:
        p = Path(meta["path"])
        base = p.parent.name if p.name == "export" else p.name
        tag, n = base, 2
        while tag in tags:
            tag, n = f"{base}-{n}", n + 1
        tags.append(tag)
    return tags


def train_judges(train: ImageSet, test: ImageSet, attributes: list[T.Attribute], out: Path, steps: int, seed: int,
                 log, view=lambda x: x) -> dict:
    """{name: {"net", "classes", "ceiling", "majority", "n"}}: one judge per attribute, trained on the real
    training images whose value it knows, with its accuracy on the real test images (the ceiling)."""
    from synth.trainers.classifier import cached_classifier

    judges = {}
    for attr in attributes:
        tv = T.values_of(train, attr.column)
        classes = T.judge_classes(attr, tv)
        keep = [i for i, v in enumerate(tv) if v in classes]
        idx = torch.tensor(keep, dtype=torch.long)
        data = ImageSet(view(train.images[idx]), torch.tensor([classes.index(tv[i]) for i in keep]), classes,
                        source=f"{train.source}:{attr.column}")
        net = cached_classifier(out / f"{attr.name}.safetensors", data, steps=steps, seed=seed,
                                role=f"judge of {attr.name}", log=log)
        values = T.values_of(test, attr.column)
        ceiling = T.attribute_accuracy(T.predict(net, view(test.images)), values, classes)
        judges[attr.name] = {"net": net, "classes": classes, "ceiling": ceiling["accuracy"], "n": ceiling["n"],
                             "majority": T.majority_share(values, classes), "train_n": len(keep)}
        log(f"judge of {attr.name} ({'/'.join(classes)}, {len(keep)} training images): {ceiling['accuracy']:.3f} on "
            f"the real test images")
    return judges


def train_text_judge(train: ImageSet, out: Path, steps: int, seed: int, log, view=lambda x: x):
    """The small CLIP of the training split's captions, reused from ``out/clip`` while its record matches."""
    from synth.data import fingerprint

    caps = T.caption_texts(train)
    images = view(train.images)
    record = {"data": fingerprint(train), "captions": hashlib.sha256(json.dumps(caps).encode()).hexdigest(),
              "steps": steps, "seed": seed, "size": int(images.shape[-1])}
    got = C.load_clip(out, record)
    if got is not None:
        return got
    t0 = time.perf_counter()
    model, tok = C.train_clip(images, caps, steps=steps, seed=seed, log=log)
    C.save_clip(model, tok, out, record)
    log(f"text judge (CLIP): trained on {len(train)} image-caption pairs ({time.perf_counter() - t0:.0f}s)")
    return model, tok


def grid_rows(test: ImageSet, n: int = 6) -> list[int]:
    """Up to ``n`` test rows for the picture: the first row of each class in turn, then the next ones."""
    by_class: dict[int, list[int]] = {}
    for i, k in enumerate(test.labels.tolist()):
        by_class.setdefault(k, []).append(i)
    rows, depth = [], 0
    while len(rows) < min(n, len(test)):
        for k in sorted(by_class):
            if depth < len(by_class[k]) and len(rows) < n:
                rows.append(by_class[k][depth])
        depth += 1
    return rows


def training_of(meta: dict) -> dict:
    """What the report says about how a model was trained (from its recorded config)."""
    cfg = meta.get("config") or {}
    t, m, lab = cfg.get("train") or {}, cfg.get("model") or {}, cfg.get("labels") or {}
    return {"steps": t.get("steps"), "batch_size": t.get("batch_size"), "lr": t.get("lr"), "text_lr": t.get("text_lr"),
            "path": t.get("path", "diffusion"), "codec": m.get("codec"), "pretrained": m.get("pretrained"),
            "caption_template": lab.get("caption_template")}


def _repeat(xs: list, n: int) -> list:
    return [x for x in xs for _ in range(n)]


def evaluate_model(meta: dict, tag: str, ctx: dict, log) -> dict:
    """Every measure for one model: attribute fidelity, CLIP scores, swaps, probe."""
    from synth.captions import prompts_of
    from synth.labels import LabelSchema
    from synth.samplers.generator import load_generator

    o = ctx["opts"]
    gen = load_generator(meta["path"], device=o["device"])
    schema = LabelSchema.from_json(meta["labels"])
    d = meta.get("default_sampling", {})
    steps, guidance = o["steps"] or d.get("steps", 25), o["guidance"] if o["guidance"] is not None else d.get("guidance", 1.5)
    sampler = o["sampler"] or d.get("sampler", "dpmpp_2m")
    test = _renumbered(ctx["test"], list(schema.classes), tag)  # the same rows, numbered as this model numbers them
    lc, S = T.labels_config(meta), o["seeds"]
    cache = ctx["out"] / "models" / tag

    def make(s: ImageSet, rows: list[int]) -> torch.Tensor:
        prompts = prompts_of(s, schema, lc)
        seeds = [T.image_seed(o["seed"], r, k) for r in rows for k in range(S)]
        return T.generate(gen, _repeat(prompts, S), _repeat([int(x) for x in s.labels], S), seeds, steps=steps,
                          guidance=guidance, sampler=sampler, batch=o["batch"], cache=cache, log=log)

    t0 = time.perf_counter()
    log(f"{tag}: {len(test)} test captions x {S} seed(s), {sampler} {steps} steps, guidance {guidance}")
    images = make(test, list(range(len(test))))
    ctx["grid"][tag] = images.view(len(test), S, *images.shape[1:])[ctx["grid_rows"]]
    res = {"path": meta["path"], "sampling": {"steps": steps, "guidance": guidance, "sampler": sampler, "seeds": S},
           "windows": int(meta.get("text_windows", 1)), "max_length": int(meta["max_length"]), "attributes": {},
           "swaps": {}, "training": training_of(meta)}
    hits = {}  # measure -> (image ids row * S + seed, 1/0/NaN per image, swap direction or None): paired comparisons
    for name, j in ctx["judges"].items():
        attr = ctx["attributes"][name]
        pred, values = T.predict(j["net"], ctx["view"](images)), _repeat(T.values_of(test, attr.column), S)
        acc = T.attribute_accuracy(pred, values, j["classes"])
        hits[name] = (torch.arange(len(images)), T.attribute_hits(pred, values, j["classes"]), None)
        res["attributes"][name] = {**acc, "share_of_ceiling": acc["accuracy"] / j["ceiling"] if j["ceiling"] else None}
    clip, ctok = ctx["clip"]
    emb = C.embed_images(clip, ctx["view"](images))
    res["clip"] = C.r_precision(emb, ctx["caption_emb"], _repeat(list(range(len(test))), S), ctx["candidates"])
    hits["r_precision"] = (torch.arange(len(images)), res["clip"].pop("hits"), None)
    ctx["hits"][tag] = hits
    for sw in ctx["swaps"]:
        attr, j = ctx["attributes"][sw.name], ctx["judges"][sw.name]
        rows, swapped, new = T.swapped_rows(test, attr, sw)
        changed = [n for n, (a, b) in enumerate(zip(prompts_of(_rows(test, rows), schema, lc),
                                                     prompts_of(swapped, schema, lc))) if a != b]
        if len(changed) < len(rows):  # a prompt the swap leaves as it was asks nothing of the model
            rows, swapped, new = [rows[n] for n in changed], _rows(swapped, changed), [new[n] for n in changed]
        if not rows:
            res["swaps"][f"{sw.name}:{sw.a}|{sw.b}"] = {"accuracy": float("nan"), "n": 0}
            continue
        moved = make(swapped, rows)
        old = [T.values_of(test, attr.column)[r] for r in rows]
        picks = [r * S + k for r in rows for k in range(S)]
        after = T.predict(j["net"], ctx["view"](moved))
        res["swaps"][f"{sw.name}:{sw.a}|{sw.b}"] = T.swap_scores(
            T.predict(j["net"], ctx["view"](images[picks])), after, _repeat(old, S), _repeat(new, S), j["classes"])
        direction = torch.tensor([int(v == sw.a) for v in _repeat(new, S)])  # 1: -> a, 0: -> b
        hits[f"swap {sw.name}:{sw.a}|{sw.b}"] = (torch.tensor(picks), T.attribute_hits(after, _repeat(new, S), j["classes"]),
                                              direction)
    res["probe"] = probe(meta, gen, ctx)
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def probe_rows(train: ImageSet, *held_out: ImageSet) -> tuple[list[str], list[int], list[str], list[int]]:
    """The probe's captions and class ids (in ``train.classes``): each distinct non-empty caption once (its first
    row's class), fitted on the training split's and scored on the held-out splits' (validation and test) that
    never occur in training (a caption seen in training would be recalled, not read)."""
    def distinct(sets, banned: set[str]) -> tuple[list[str], list[int]]:
        caps, ys, seen = [], [], set(banned)
        for s in sets:
            for c, k in zip(T.caption_texts(s), s.labels.tolist()):
                key = C.caption_key(c)
                if key and key not in seen and s.classes[int(k)] in train.classes:
                    seen.add(key)
                    caps.append(c)
                    ys.append(train.classes.index(s.classes[int(k)]))
        return caps, ys

    caps_tr, ytr = distinct([train], set())
    caps_te, yte = distinct(held_out, {C.caption_key(c) for c in caps_tr})
    return caps_tr, ytr, caps_te, yte


def probe(meta: dict, gen, ctx: dict) -> dict:
    """Linear-probe accuracy (distinct held-out captions, with its binomial standard error) of the text encoder's
    pooled caption embeddings (first window) for the class, after training (the export's encoder) and before
    (:func:`text.text_encoder_before`)."""
    import copy

    train, held_out = probe_splits(ctx, meta)
    caps_tr, ytr, caps_te, yte = probe_rows(train, *held_out)
    text_lr = ((meta.get("config") or {}).get("train") or {}).get("text_lr")
    if len(caps_te) == 0 or len(set(ytr)) < 2:
        return {"after": None, "before": None, "before_is": "nothing to probe: no held-out caption absent from "
                "training, or one class", "text_lr": text_lr, "n": len(caps_te), "train_n": len(caps_tr),
                "majority": None, "se": None}

    def acc(encoder) -> float:
        enc = copy.deepcopy(encoder).float().cpu()  # the generator keeps its own encoder where it was
        return T.linear_probe(T.pooled_text(enc, gen.tokenizer, caps_tr, gen.max_length), torch.tensor(ytr),
                              T.pooled_text(enc, gen.tokenizer, caps_te, gen.max_length), torch.tensor(yte),
                              len(train.classes))

    before, where = T.text_encoder_before(meta, gen.tokenizer)
    after = acc(gen.text_encoder)
    return {"after": after, "before": acc(before) if before is not None else None, "before_is": where,
            "text_lr": text_lr, "n": len(caps_te), "train_n": len(caps_tr),
            "se": (after * (1 - after) / len(caps_te)) ** 0.5,
            "majority": T.majority_share([train.classes[y] for y in yte], list(train.classes))}


def paired(hits: dict[str, dict[str, tuple]], seeds: int, seed: int) -> dict:
    """{model: {measure: {"delta", "lo", "hi", "n"}}}: each model after the first minus the first, on the images
    both made and scored (same test row, same seed; a swap's images only where both models' prompts changed),
    with a 95% bootstrap interval over test rows.  A swap's difference averages its two directions, as its
    reported score does."""
    tags = list(hits)
    base = hits[tags[0]]
    out = {}
    for tag in tags[1:]:
        out[tag] = {}
        for measure, (ids, h, groups) in hits[tag].items():
            if measure not in base:
                continue
            ids0, h0, _ = base[measure]
            at0 = {int(i): n for n, i in enumerate(ids0.tolist())}
            common = [n for n, i in enumerate(ids.tolist()) if int(i) in at0]
            if not common:
                continue
            a = h0[[at0[int(ids[n])] for n in common]]
            b = h[common]
            _, rows = torch.unique(ids[common] // seeds, return_inverse=True)  # dense row numbers for the bootstrap
            out[tag][measure] = T.paired_difference(a, b, rows, None if groups is None else groups[common], seed=seed)
    return {"versus": tags[0], "models": out}


def evaluate_text(models: list[str], data: str, out: str | Path, *, attributes=T.DEFAULT_ATTRIBUTES,
                  swaps=T.DEFAULT_SWAPS, seeds: int = 2, max_rows: int | None = None, steps: int | None = None,
                  guidance: float | None = None, sampler: str | None = None, k: int = 10, judge_steps: int = 600,
                  clip_steps: int = 600, seed: int = 0, batch: int = 64, device: str = "cpu",
                  judge_resolution: int | None = None,
                  report: str | Path | None = None, command: str | None = None,
                  log: Callable[[str], None] = print) -> dict:
    """The report of ``synth eval text`` (a dict; also written to ``out/report.json``)."""
    from synth.evaluation.text_report import _no_nan
    from synth.io import atomic_write_json
    from synth.labels import LabelSchema

    if seeds < 1 or k < 2 or (max_rows is not None and max_rows < k):
        raise EvalError(f"need --seeds >= 1, --k >= 2 and --max-captions >= --k (got {seeds}, {k}, {max_rows})")
    from synth import solvers
    from synth.config import ConfigError
    from synth.devices import resolve_device

    try:
        resolve_device(device)
    except ConfigError as e:
        raise EvalError(str(e)) from None
    if sampler is not None and sampler not in solvers.names():
        raise EvalError(f"--sampler '{sampler}' is unknown; choose one of {', '.join(solvers.names())}")
    if steps is not None and steps < 1:
        raise EvalError(f"--steps must be >= 1 (got {steps})")
    out = Path(out)
    metas = _models(models)
    attrs = [T.parse_attribute(a) for a in attributes]
    if len({a.name for a in attrs}) != len(attrs):
        raise EvalError("two --attribute options share a name; give each its own")
    sw = [T.parse_swap(s, attrs) for s in swaps]
    res, classes = metas[0]["resolution"], list(LabelSchema.from_json(metas[0]["labels"]).classes)
    recorded = (metas[0].get("config") or {}).get("data")
    train = _load(data, res, "train", classes, recorded, log)
    test = _head(_load(data, res, "test", classes, recorded, log), max_rows, seed)
    if train.channels != metas[0].get("channels", 1):
        raise EvalError(f"--data {data} holds {train.channels}-channel images but the model makes "
                        f"{metas[0].get('channels', 1)}-channel ones; evaluate against the data it was trained on")
    log(f"data: {len(train)} training / {len(test)} test images with captions from {data}")
    caps = T.caption_texts(test)
    if not any(caps):
        raise EvalError(f"the test images of --data {data} have no captions; synth eval text needs a manifest whose "
                        f"'prompt' column holds each image's caption")
    try:
        candidates = C.distractors(caps, k, seed)
    except ValueError as e:
        raise EvalError(str(e)) from None
    def view(x: torch.Tensor) -> torch.Tensor:
        return T.judge_view(x, judge_resolution)

    for s_ in sw:  # before any training: the judge's classes come from the training values alone
        attr = next(a for a in attrs if a.name == s_.name)
        known = T.judge_classes(attr, T.values_of(train, attr.column))
        bad = [v for v in (s_.a, s_.b) if v not in known]
        if bad:
            raise EvalError(f"--swap {s_.name}:{s_.a}|{s_.b}: {', '.join(repr(v) for v in bad)} is not a value the judge "
                            f"of {s_.name} knows ({', '.join(known)}); swap two of those")

    judges = train_judges(train, test, attrs, out / f"judges-{int(view(test.images[:1]).shape[-1])}px", judge_steps,
                          seed, log, view)
    clip = train_text_judge(train, out / f"clip-{int(view(test.images[:1]).shape[-1])}px", clip_steps, seed, log, view)
    caption_emb = C.embed_captions(clip[0], clip[1], caps)
    real = C.r_precision(C.embed_images(clip[0], view(test.images)), caption_emb, list(range(len(test))), candidates)
    real.pop("hits")
    log(f"text judge on the real test images: R-precision@1 among {k} {real['r_precision']:.3f}")
    ctx = {"opts": {"device": device, "steps": steps, "guidance": guidance, "sampler": sampler, "max_rows": max_rows,
                    "seeds": seeds, "seed": seed, "batch": batch},
           "data": data, "resolution": res, "train": train, "test": test, "splits": {}, "log": log, "out": out, "judges": judges,
           "attributes": {a.name: a for a in attrs}, "swaps": sw, "clip": clip, "caption_emb": caption_emb,
           "candidates": candidates, "grid": {}, "hits": {}, "grid_rows": grid_rows(test), "view": view}
    summary = {"data": data, "resolution": res, "judge_resolution": int(view(test.images[:1]).shape[-1]), "train_n": len(train), "test_n": len(test), "k": k, "seed": seed,
              "judges": {n: {x: j[x] for x in ("classes", "ceiling", "majority", "n", "train_n")} for n, j in judges.items()},
              "clip_real": real, "swaps": [f"{s.name}:{s.a}|{s.b}" for s in sw],
              "models": {}}
    for meta, tag in zip(metas, _tags(metas)):
        summary["models"][tag] = evaluate_model(meta, tag, ctx, log)
        atomic_write_json(out / "report.json", _no_nan(summary))  # each model's numbers survive a crash in the next
    if len(metas) > 1:
        summary["paired"] = paired(ctx["hits"], seeds, seed)
        atomic_write_json(out / "report.json", _no_nan(summary))
    if report is not None:
        from synth.evaluation.text_report import write_text_report

        rows = ctx["grid_rows"]
        grid = {"captions": [caps[r] for r in rows], "real": test.images[rows], "generated": ctx["grid"],
                "title": f"Test captions of {Path(data).name}: real image | generated images (each column a seed)"}
        for p in write_text_report(summary, Path(report), grid, command):
            log(f"wrote {p}")
    return summary
