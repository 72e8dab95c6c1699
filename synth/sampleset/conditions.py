"""What image i of a sample set is asked to be: label weights or prompt lines, and the condition of index i.

``parse_label_spec`` (``"normal=0.5,pneumonia=0.5"``) and ``parse_prompt_file`` make a
:class:`ConditionSpec`; :func:`condition_for` is a pure function of the index (the same for any n, batch
or rank), its labels from :mod:`synth.allocation`.  ``synth sample`` writes the spec into the set's identity
(``ConditionSpec.to_json``); the online datasets of :mod:`synth.augment` read the same weights.
"""
from __future__ import annotations

import json

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from synth.allocation import label_at
from synth.labels import Condition, LabelError, LabelSchema


@dataclass(frozen=True)
class ConditionSpec:
    """Either label weights (``labels``: class index -> weight, summing to 1) or prompt lines."""

    labels: tuple[tuple[int, float], ...] = ()
    lines: tuple[tuple[int | None, str], ...] = ()  # (label or None, prompt) per line
    order: str = "quota"  # synth.allocation: "weyl" only for sets made before exact quotas
    # per line of a prompts manifest: its caption, file and other columns (into each image's metadata)
    sources: tuple[tuple[tuple[str, str], ...], ...] = ()

    def to_json(self, schema: LabelSchema) -> dict:
        if self.labels:
            weights = {"labels": {schema.classes[k]: w for k, w in self.labels}}
            # a set made before exact quotas has no key: it resumes with its own (weyl) labels
            return weights if self.order == "weyl" else {**weights, "label_order": self.order}
        out = {"prompts": [{"label": None if k is None else schema.classes[k], "prompt": p} for k, p in self.lines]}
        if self.sources:
            out["sources"] = [dict(s) for s in self.sources]
        return out

    def source_of(self, index: int) -> dict:
        """The prompts-manifest row image ``index`` was made from ({} for labels and plain prompt files)."""
        return dict(self.sources[index % len(self.sources)]) if self.sources else {}


def split_label_spec(spec: str, schema: LabelSchema, error: type[Exception] = LabelError) -> list[tuple[str, float]]:
    """``"normal=0.5,pneumonia"`` -> [("normal", 0.5), ("pneumonia", 1.0)] (a missing weight is 1)."""
    pairs = []
    for it in (s.strip() for s in spec.split(",")):
        if not it:
            continue
        name, _, w = it.partition("=")
        try:
            pairs.append((name.strip(), float(w) if w.strip() else 1.0))
        except ValueError:
            raise error(f"malformed label spec item '{it}': weight '{w}' is not a number "
                        f"(use e.g. {schema.classes[0]}=0.5)") from None
    return pairs


def normalised_weights(pairs: list[tuple[str, float]], schema: LabelSchema, find: Callable[[str], int],
                       error: type[Exception] = LabelError, spec: str | None = None) -> tuple[dict[int, float], float]:
    """Class id -> weight of (name, weight) pairs, checked (``find`` names the class or raises), and their total."""
    where = f" in '{spec}'" if spec is not None else ""
    weights: dict[int, float] = {}
    for name, weight in pairs:
        k = find(name)
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or weight < 0 or not math.isfinite(weight):
            raise error(f"label '{name}' has weight {weight}; weights must be finite and >= 0")
        if k in weights:
            raise error(f"label '{schema.classes[k]}' appears twice{where}; give each label once")
        weights[k] = float(weight)
    total = sum(weights.values())
    if not math.isfinite(total):
        raise error(f"label weights{where} are too large to add up; use weights like 0.5 or 1")
    if total <= 0:
        raise error(f"label weights{where} sum to 0; give at least one label a positive weight")
    return weights, total


def parse_label_spec(spec: str, schema: LabelSchema, log: Callable[[str], None] = print) -> ConditionSpec:
    """``"normal=0.5,pneumonia=0.5"`` (or ``"pneumonia"``) -> weights; normalised if they do not sum to 1."""
    pairs = split_label_spec(spec, schema)
    if not pairs:
        raise LabelError(f"empty label spec '{spec}'; use e.g. '{schema.classes[0]}=0.5,{schema.classes[-1]}=0.5'")
    weights, total = normalised_weights(pairs, schema, schema.index, spec=spec)
    if abs(total - 1) > 1e-6 and len(pairs) > 1:
        log(f"note: label weights sum to {total:g}, not 1; normalised to "
            + ", ".join(f"{schema.classes[k]}={w / total:.4g}" for k, w in weights.items()))
    return ConditionSpec(labels=tuple(sorted((k, w / total) for k, w in weights.items() if w > 0)))


def parse_prompt_file(path: str | Path, schema: LabelSchema) -> ConditionSpec:
    """One condition per non-empty line: a class name (or ``label=<name>``) or free text.

    ``label=<name>: free text`` gives both a label and its own prompt.
    """
    p = Path(path)
    if not p.is_file():
        raise LabelError(f"prompts file '{p}' not found; pass a text file with one prompt or label per line")
    try:
        # utf-8-sig: Notepad and Excel put a byte-order mark first, which would turn line 1 into free text
        text = p.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise LabelError(f"prompts file '{p}' is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); "
                         f"save it as UTF-8") from None
    except OSError as e:
        raise LabelError(f"cannot read prompts file '{p}' ({e.strerror}); check its permissions") from None
    lines = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("label="):
            name, _, text = line[6:].partition(":")
            k = schema.index(name.strip())
            lines.append((k, text.strip() or schema.prompt_for(k)))
            continue
        try:
            k = schema.index(line)
            lines.append((k, schema.prompt_for(k)))
        except LabelError:
            lines.append((None, line))
    if not lines:
        raise LabelError(f"prompts file '{p}' has no prompts; put one prompt or label per line")
    return ConditionSpec(lines=tuple(lines))


def parse_prompt_manifest(path: str | Path, schema: LabelSchema, split: str = "all", clean: bool = True,
                          section: str = "all") -> ConditionSpec:
    """One condition per row of a CSV/JSONL manifest (``--prompts m.jsonl``): its ``prompt`` (the caption) through
    the model's caption template with the row's other columns, cleaned as training cleaned it; its ``label`` when it
    has one (a class of the model).  The caption, ``file_name`` and columns of each row go into the image's metadata,
    so a set made from test captions is labelled by them.  ``split``: only rows of that split (``all``: every row)."""
    from synth.captions import check_caption_template, render_captions
    from synth.data.manifest import _csv_rows, _jsonl_rows, _manifest_text

    p = Path(path)
    if not p.is_file():
        raise LabelError(f"prompts manifest '{p}' not found; pass a CSV/JSONL file with a 'prompt' column")
    text = _manifest_text(p)
    columns, raw = _csv_rows(p, text) if p.suffix.lower() == ".csv" else _jsonl_rows(p, text)
    if "prompt" not in columns:
        raise LabelError(f"prompts manifest '{p}' has no 'prompt' column (columns: {', '.join(map(str, columns))}); add "
                         f"one holding each image's caption")
    rows = [r for _, r in raw if split == "all" or str(r.get("split") or "train").strip().lower() == split]
    if not rows:
        raise LabelError(f"prompts manifest '{p}' has no rows" + (f" of split '{split}'" if split != "all" else ""))
    text_of = lambda v: "" if v is None else (v.strip() if isinstance(v, str) else json.dumps(v))  # noqa: E731
    others = [c for c in columns if c not in ("prompt", "label")]
    check_caption_template(schema.caption_template, others, str(p))
    labels = []
    for r in rows:
        name = text_of(r.get("label"))
        labels.append(schema.index(name) if name else None)
    cols = {c: [text_of(r.get(c)) for r in rows] for c in others}
    captions = [text_of(r.get("prompt")) for r in rows]
    names = [schema.classes[k] if k is not None else "" for k in labels]
    prompts, _ = render_captions(schema.caption_template, captions, names, cols, deid=clean, section=section)
    lines = tuple((k, pr or (schema.prompt_for(k) if k is not None else "")) for k, pr in zip(labels, prompts))
    sources = tuple(tuple([("caption", captions[i])] + [(c, cols[c][i]) for c in others]) for i in range(len(rows)))
    return ConditionSpec(lines=lines, sources=sources)


def condition_for(index: int, spec: ConditionSpec, schema: LabelSchema) -> Condition:
    """The condition of image ``index``: a pure function, the same for any n, batch or rank.

    Label weights follow :mod:`synth.allocation`: every prefix of the set holds each class's
    share rounded down or up (exactly when it is whole), so raising ``--n`` keeps every label.
    """
    if spec.labels:
        return schema.condition(label_at(index, spec.labels, spec.order))
    k, prompt = spec.lines[index % len(spec.lines)]
    return Condition(label=k, prompt=prompt)
