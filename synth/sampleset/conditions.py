"""What image i of a sample set is asked to be: label weights or prompt lines, and the condition of index i.

``parse_label_spec`` (``"normal=0.5,pneumonia=0.5"``) and ``parse_prompt_file`` make a
:class:`ConditionSpec`; :func:`condition_for` is a pure function of the index (the same for any n, batch
or rank), its labels from :mod:`synth.allocation`.  ``synth sample`` writes the spec into the set's identity
(``ConditionSpec.to_json``); the online datasets of :mod:`synth.augment` read the same weights.
"""
from __future__ import annotations

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

    def to_json(self, schema: LabelSchema) -> dict:
        if self.labels:
            weights = {"labels": {schema.classes[k]: w for k, w in self.labels}}
            # a set made before exact quotas has no key: it resumes with its own (weyl) labels
            return weights if self.order == "weyl" else {**weights, "label_order": self.order}
        return {"prompts": [{"label": None if k is None else schema.classes[k], "prompt": p} for k, p in self.lines]}


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


def condition_for(index: int, spec: ConditionSpec, schema: LabelSchema) -> Condition:
    """The condition of image ``index``: a pure function, the same for any n, batch or rank.

    Label weights follow :mod:`synth.allocation`: every prefix of the set holds each class's
    share rounded down or up (exactly when it is whole), so raising ``--n`` keeps every label.
    """
    if spec.labels:
        return schema.condition(label_at(index, spec.labels, spec.order))
    k, prompt = spec.lines[index % len(spec.lines)]
    return Condition(label=k, prompt=prompt)
