"""``synth eval text``: do generated images follow their text?  (issue 18 item 6)

Four measures, each beside the ceiling that real images reach:

- **attribute fidelity**: judges (:class:`synth.classifier.SmallCNN`) trained on the real training images for
  manifest columns (``type``, ``plane``, the class ``label``); images generated from held-out test captions are
  judged against their row's values, and the judges' accuracy on the real test images is the ceiling;
- **image-text agreement**: a small CLIP trained offline on the training split (:mod:`.textclip`): similarity of
  each image to its caption, and R-precision (its caption ranked first among ``k``);
- **compositional swaps**: the same seed with one attribute of the caption swapped (CT <-> MR ...) in the columns
  and in the caption's words: the share of images whose judged attribute follows the swap;
- **the text encoder's knowledge**: a linear probe of its pooled caption embeddings (free text only, no template)
  for the class, before and after the model's training.

Every image is made from a per-(row, seed) seed, so the numbers are a pure function of the model, the data and
the options; generated images are cached in ``out`` (keyed by the weights' hash and everything that made them).
"""
from __future__ import annotations

import hashlib
import json
import re
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np
import torch

from synth.data import ImageSet
from synth.evaluation.real import EvalError

DEFAULT_ATTRIBUTES = ("type", "plane:Axial|Coronal|Sagittal", "location=label")
DEFAULT_SWAPS = ("type:CT|MR", "plane:Axial|Coronal", "location:Head|Thorax")
MIN_JUDGED = 10  # a value with fewer training images gets no judge class (it is too rare to learn or to score)
# caption words that say an attribute value; a swap writes the other value's first word in their place
SYNONYMS = {"mr": ("MRI", "MR"), "ct": ("CT",), "head": ("head", "brain"), "thorax": ("thorax", "chest"),
            "axial": ("axial",), "coronal": ("coronal",), "sagittal": ("sagittal",)}


@dataclass(frozen=True)
class Attribute:
    """A judged attribute: ``name`` in reports, ``column`` of the manifest (``label``: the class), ``values`` the
    judge's classes (empty: every value with >= MIN_JUDGED training images)."""

    name: str
    column: str
    values: tuple[str, ...] = ()


@dataclass(frozen=True)
class Swap:
    """Swap attribute ``name`` between values ``a`` and ``b`` in rows holding either."""

    name: str
    a: str
    b: str


def parse_attribute(spec: str) -> Attribute:
    """``NAME[=COLUMN][:V1|V2|...]`` -> Attribute (``location=label``, ``plane:Axial|Coronal|Sagittal``)."""
    head, _, values = spec.partition(":")
    name, _, column = head.partition("=")
    name, column = name.strip(), (column or name).strip()
    vals = tuple(v.strip() for v in values.split("|") if v.strip()) if values else ()
    if not name or not re.fullmatch(r"[\w.-]+", name) or not column or (values and len(vals) < 2):
        raise EvalError(f"--attribute '{spec}' is not NAME[=COLUMN][:V1|V2|...]; e.g. --attribute type or "
                        f"--attribute location=label or --attribute plane:Axial|Coronal")
    return Attribute(name, column, vals)


def parse_swap(spec: str, attributes: list[Attribute]) -> Swap:
    """``NAME:A|B`` (NAME an --attribute) -> Swap."""
    name, _, pair = spec.partition(":")
    vals = [v.strip() for v in pair.split("|")]
    known = {a.name for a in attributes}
    if len(vals) != 2 or not all(vals) or vals[0] == vals[1]:
        raise EvalError(f"--swap '{spec}' is not NAME:A|B with two different values; e.g. --swap type:CT|MR")
    if name.strip() not in known:
        raise EvalError(f"--swap '{spec}' names '{name.strip()}', which is no --attribute (they are: "
                        f"{', '.join(sorted(known))}); add --attribute {name.strip()} or fix the name")
    return Swap(name.strip(), vals[0], vals[1])


def values_of(s: ImageSet, column: str) -> list[str]:
    """Each image's value of ``column`` (N,): the class name for ``label``, else the manifest column's text."""
    if column == "label":
        return [s.classes[int(k)] for k in s.labels]
    cols = s.columns or {}
    if column not in cols:
        raise EvalError(f"the data has no column '{column}' (it has: label{''.join(', ' + c for c in cols)}); "
                        f"fix --attribute or use a manifest with that column")
    return list(cols[column])


def judge_classes(attr: Attribute, train_values: list[str]) -> list[str]:
    """The judge's classes: ``attr.values`` (each must occur in training), else the values seen >= MIN_JUDGED times."""
    counts = {v: train_values.count(v) for v in set(train_values)}
    if attr.values:
        missing = [v for v in attr.values if counts.get(v, 0) == 0]
        if missing:
            raise EvalError(f"--attribute {attr.name}: value(s) {', '.join(missing)} never occur in column "
                            f"'{attr.column}' of the training split; use its values ({', '.join(sorted(counts))})")
        return list(attr.values)
    keep = sorted(v for v, n in counts.items() if n >= MIN_JUDGED and v)
    if len(keep) < 2:
        raise EvalError(f"--attribute {attr.name}: column '{attr.column}' has fewer than 2 values with >= {MIN_JUDGED} "
                        f"training images; name the values (--attribute {attr.name}:A|B) or drop it")
    return keep


def _replace_word(text: str, words: tuple[str, ...], new: str) -> str:
    pattern = r"\b(" + "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)) + r")\b"
    return re.sub(pattern, new, text, flags=re.IGNORECASE)


def swap_words(text: str, a: str, b: str) -> str:
    """``text`` with the words saying value ``a`` replaced by ``b``'s first word and vice versa (whole words,
    any case; :data:`SYNONYMS`, else the value itself): 'MRI of the head' with (CT, MR) -> 'CT of the head'."""
    wa, wb = SYNONYMS.get(a.lower(), (a,)), SYNONYMS.get(b.lower(), (b,))
    marker = "\x00SWAP\x00"  # a -> marker -> b, so b's words turned into a's are not turned back
    return _replace_word(_replace_word(text, wa, marker), wb, wa[0]).replace(marker, wb[0])


def swapped_rows(test: ImageSet, attr: Attribute, swap: Swap) -> tuple[list[int], ImageSet, list[str]]:
    """Rows of ``test`` holding ``swap.a`` or ``swap.b`` in the attribute's column, as an ImageSet whose column
    (or class), caption words and values are swapped; -> (row indices, the swapped set, the new values)."""
    vals = values_of(test, attr.column)
    rows = [i for i, v in enumerate(vals) if v in (swap.a, swap.b)]
    new = [swap.b if vals[i] == swap.a else swap.a for i in rows]
    idx = torch.tensor(rows, dtype=torch.long)
    prompts = [swap_words(test.prompts[i] or "", swap.a, swap.b) for i in rows] if test.prompts else None
    cols = {c: [v[i] for i in rows] for c, v in (test.columns or {}).items()}
    labels = test.labels[idx].clone() if rows else test.labels[:0]
    if attr.column == "label":
        labels = torch.tensor([test.classes.index(v) for v in new], dtype=torch.long)
    else:
        cols[attr.column] = new
    return rows, replace(test, images=test.images[idx], labels=labels, prompts=prompts, columns=cols), new


def image_seed(seed: int, row: int, k: int) -> int:
    """The seed of the k-th image of test row ``row``: a swap reuses it, so only the text differs."""
    from synth.seeds import derive_seed

    return derive_seed(seed, "eval-text", row, k)


def judge_view(images: torch.Tensor, size: int | None) -> torch.Tensor:
    """uint8 (N, C, R, R) -> uint8 (N, C, size, size) by area averaging (unchanged when size is None or >= R):
    judges and the CLIP read this view, so on CPUs they train in minutes; their ceiling is measured on it too."""
    if size is None or size >= images.shape[-1] or len(images) == 0:
        return images
    x = torch.nn.functional.interpolate(images.float(), size=(size, size), mode="area")
    return x.round().clamp(0, 255).to(torch.uint8)


@torch.no_grad()
def predict(net, images: torch.Tensor, batch: int = 256) -> torch.Tensor:
    """Judge predictions (N,) for uint8 images (N, C, H, W)."""
    from synth.io import to_float

    return torch.cat([net(to_float(images[i:i + batch])).argmax(1) for i in range(0, len(images), batch)])


def attribute_hits(pred: torch.Tensor, values: list[str], classes: list[str]) -> torch.Tensor:
    """(M,) float: 1 where the judged class (pred (M,) ids) equals the value (values (M,) texts), 0 where not,
    NaN where the judge does not know the value."""
    return torch.tensor([float(int(p) == classes.index(v)) if v in classes else float("nan")
                         for p, v in zip(pred.tolist(), values)], dtype=torch.float64)


def attribute_accuracy(pred: torch.Tensor, values: list[str], classes: list[str]) -> dict:
    """Share of images whose judged class equals their value, over images whose value the judge knows;
    pred (M,) class ids, values (M,) texts."""
    hits = attribute_hits(pred, values, classes)
    known = hits[~hits.isnan()]
    return {"accuracy": float(known.mean()) if len(known) else float("nan"), "n": len(known)}


def paired_difference(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, groups: torch.Tensor | None = None,
                      n_boot: int = 2000, seed: int = 0) -> dict:
    """Mean of ``b`` minus mean of ``a`` over the images both scored (per-image hits (M,) of two models on the same
    images; NaN = unscored), with a 95% bootstrap interval that resamples test rows (rows (M,): each image's row, 0..R-1),
    so the images of one caption stay together and both models see the same draw.  ``groups`` (M,) ints: the
    statistic is the mean over groups of each group's mean (a swap's two directions weigh alike, as reported).
    -> {"delta", "lo", "hi", "n"}; NaNs when no image was scored by both."""
    ok = ~a.isnan() & ~b.isnan()
    n = int(ok.sum())
    if n == 0:
        return {"delta": float("nan"), "lo": float("nan"), "hi": float("nan"), "n": 0}
    a, b, rows = a[ok].double(), b[ok].double(), rows[ok]
    groups = torch.zeros_like(rows) if groups is None else groups[ok]
    n_rows = int(rows.max()) + 1
    g = torch.Generator().manual_seed(seed)
    draws = torch.randint(0, n_rows, (n_boot, n_rows), generator=g)
    w = torch.zeros(n_boot, n_rows, dtype=torch.float64).scatter_add_(1, draws, torch.ones_like(draws, dtype=torch.float64))
    full = torch.ones(1, n_rows, dtype=torch.float64)  # the observed data: every row once

    def stat(weights: torch.Tensor) -> torch.Tensor:
        per_group = []
        for k in groups.unique().tolist():
            m = groups == k
            cnt = torch.zeros(n_rows, dtype=torch.float64).index_add_(0, rows[m], torch.ones(int(m.sum()), dtype=torch.float64))
            sa = torch.zeros(n_rows, dtype=torch.float64).index_add_(0, rows[m], a[m])
            sb = torch.zeros(n_rows, dtype=torch.float64).index_add_(0, rows[m], b[m])
            c = weights @ cnt
            per_group.append(torch.where(c > 0, (weights @ sb - weights @ sa) / c.clamp(min=1), torch.nan))
        return torch.stack(per_group).nanmean(0)

    deltas = stat(w)
    deltas = deltas[~deltas.isnan()]
    lo, hi = torch.quantile(deltas, torch.tensor([0.025, 0.975], dtype=torch.float64)).tolist()
    return {"delta": float(stat(full)[0]), "lo": lo, "hi": hi, "n": n}

def swap_scores(pred_before: torch.Tensor, pred_after: torch.Tensor, old: list[str], new: list[str],
                classes: list[str]) -> dict:
    """How swapped images follow the swap; pred_before/after (M,) judged class ids of the same seeds before and
    after the swap, old/new (M,) the values asked for.

    ``accuracy``: the mean over the two directions (a -> b, b -> a) of the share judged as the new value, so a
    generator that ignores the text (always one value) scores 0.5, not the share of one direction;
    ``strict``: judged as asked both before and after (the image really changed);
    ``unswapped_follow``: judged as asked before the swap."""
    keep = [i for i in range(len(new)) if new[i] in classes and old[i] in classes]
    after = [int(pred_after[i]) == classes.index(new[i]) for i in keep]
    before = [int(pred_before[i]) == classes.index(old[i]) for i in keep]
    per_dir = {}
    for i, ok in zip(keep, after):
        per_dir.setdefault(f"{old[i]}->{new[i]}", []).append(ok)
    shares = {d: sum(v) / len(v) for d, v in per_dir.items()}
    n = len(keep)
    # one direction only (the rows hold one of the two values): no text-blind baseline of 0.5; the report says so
    return {"accuracy": sum(shares.values()) / len(shares) if shares else float("nan"), "directions": shares,
            "both_directions": len(shares) == 2,
            "strict": sum(a and b for a, b in zip(after, before)) / n if n else float("nan"),
            "unswapped_follow": sum(before) / n if n else float("nan"), "n": n}


def majority_share(values: list[str], classes: list[str]) -> float:
    """The accuracy of always answering the most common judged value (the chance line beside each accuracy)."""
    known = [v for v in values if v in classes]
    return max(known.count(c) for c in classes) / len(known) if known else float("nan")


def generate(gen, prompts: list[str], labels: list[int | None], seeds: list[int], *, steps: int, guidance: float,
             sampler: str, batch: int, cache: Path, log: Callable[[str], None]) -> torch.Tensor:
    """uint8 images (N, C, R, R), one per (prompt, seed): from ``cache`` when it holds exactly these, else made in
    batches of ``batch`` and saved there atomically."""
    from synth.io import atomic_save_with
    from synth.labels import Condition

    record = {"weights": gen.weights_sha256, "prompts": prompts, "labels": labels, "seeds": seeds, "steps": steps,
              "guidance": guidance, "sampler": sampler, "windows": getattr(gen, "windows", 1)}
    p = next(gen.unet.parameters())
    if p.device.type != "cpu" or p.dtype != torch.float32:  # GPU or half-precision bytes differ: their own key
        record["device"], record["dtype"] = p.device.type, str(p.dtype)
    key = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]
    path = cache / f"images-{key}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                cached = torch.from_numpy(z["images"].copy())
            if len(cached) == len(prompts):
                return cached
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # damaged or short: made again
    out = []
    for i in range(0, len(prompts), batch):
        conds = [Condition(label=k, prompt=p) for k, p in zip(labels[i:i + batch], prompts[i:i + batch])]
        out.append(gen.sample(conds, seeds[i:i + batch], steps=steps, guidance=guidance, sampler=sampler).images)
        log(f"  generated {min(i + batch, len(prompts))}/{len(prompts)}")
    images = torch.cat(out)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a bare temp name
            np.savez(f, images=images.numpy())

    atomic_save_with(path, save)
    return images


def caption_texts(s: ImageSet) -> list[str]:
    """Each image's free-text caption, cleaned (no template, no columns): what the CLIP and the probe read."""
    from synth.captions import clean_caption

    return [clean_caption(p or "") for p in (s.prompts or [""] * len(s))]


@torch.no_grad()
def pooled_text(text_encoder, tokenizer, captions: list[str], max_length: int, batch: int = 128) -> torch.Tensor:
    """Mean of the encoder's last hidden states over each caption's real tokens (first window): (N, hidden)."""
    out = []
    for i in range(0, len(captions), batch):
        enc = tokenizer(captions[i:i + batch], padding="max_length", truncation=True, max_length=max_length,
                        return_tensors="pt")
        h = text_encoder(enc.input_ids).last_hidden_state.float()
        m = enc.attention_mask.unsqueeze(-1).float()
        out.append((h * m).sum(1) / m.sum(1).clamp(min=1))
    return torch.cat(out)


def linear_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 num_classes: int, l2: float = 1e-2) -> float:
    """Test accuracy of a multinomial logistic regression (standardised features, L2 ``l2``, full-batch L-BFGS:
    deterministic) fitted on x_train (N, D), y_train (N,)."""
    mu, sd = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    a, b = (x_train - mu) / sd, (x_test - mu) / sd
    w = torch.zeros(a.shape[1], num_classes, requires_grad=True)
    bias = torch.zeros(num_classes, requires_grad=True)
    opt = torch.optim.LBFGS([w, bias], lr=1, max_iter=300, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(a @ w + bias, y_train) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((b @ w + bias).argmax(1) == y_test).float().mean())


def text_encoder_before(meta: dict, tokenizer):
    """The model's text encoder before image training -> (encoder or None, where it came from).

    From scratch: rebuilt from the recorded config and seed exactly as the trainer built it (the trainer seeds
    torch, then builds codec, tokenizer and text encoder; loading a codec draws no random numbers).
    Fine-tuned: only the ``text_encoder/`` of what it started from (a synth export, whose recorded foundation
    path is preferred, or a diffusers folder), when that is still there; pickle weights only where the model's
    config allowed them.  A model without a recorded config gives None."""
    from transformers import CLIPTextModel

    from synth.config.parse import config_from_dict
    from synth.models import _pretrained_kwargs, allows_pickle, build_text_encoder

    if not meta.get("config"):
        return None, "unknown (the export records no training config)"
    cfg = config_from_dict(meta["config"])
    if cfg.model.pretrained:
        found = (meta.get("train_subset") or {}).get("foundation") or {}
        # the recorded synth export first (its hash is known), then the folder or hub id the config named
        candidates = list(dict.fromkeys(str(x) for x in (found.get("path"), cfg.model.pretrained) if x))
        why = []
        for source in candidates:
            reason = _changed_foundation(source, found)
            if reason:
                why.append(reason)
                continue
            kw = _pretrained_kwargs(allows_pickle(cfg.model))
            if Path(source).expanduser().is_dir():
                kw["local_files_only"] = True
            try:
                return CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **kw).eval(), f"pretrained {source}"
            except Exception as e:  # noqa: BLE001 - a moved folder costs only the 'before' half of the probe
                why.append(f"pretrained {source} cannot be loaded ({str(e).splitlines()[0][:120] if str(e) else type(e).__name__})")
        return None, "; ".join(why)
    t = cfg.model.text
    with torch.random.fork_rng():
        torch.manual_seed(cfg.train.seed)
        enc = build_text_encoder(len(tokenizer), t.hidden_size, t.num_layers, t.num_heads, t.max_length)
    return enc.eval(), f"its initial weights (seed {cfg.train.seed}, from scratch)"


def _changed_foundation(source: str, found: dict) -> str | None:
    """Why ``source`` is not the synth export a model was fine-tuned from (None when it is, or when it is not a
    synth export at all): retrained in place since, its weights no longer match the recorded hash."""
    from synth.samplers.artifact import ArtifactError, read_artifact

    if not found.get("weights_sha256") or not Path(source).expanduser().is_dir():
        return None
    try:
        now = read_artifact(source).get("weights_sha256")
    except ArtifactError:
        return None  # not a synth export: a diffusers folder (no hash to compare)
    if now != found["weights_sha256"]:
        return f"{source} was retrained since the model was fine-tuned from it (weights hash differs)"
    return None


def labels_config(meta: dict) -> SimpleNamespace:
    """The model's labels settings (caption cleaning, report section) as training read them."""
    labels = (meta.get("config") or {}).get("labels") or {}
    return SimpleNamespace(clean_captions=labels.get("clean_captions", True),
                           report_section=labels.get("report_section", "all"))
