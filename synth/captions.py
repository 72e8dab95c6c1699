"""Free-text captions and reports as prompts: cleaning, report sections and the caption template.

A row with free text (a manifest's ``prompt`` column) becomes ``labels.caption_template`` filled in with its
cleaned caption (``{prompt}``), its class name (``{label}``) and any other column of the manifest (``{type}``,
``{plane}``, ...), e.g. ``"{type}, {plane}, {label}: {prompt}"``; a row without text keeps its class prompt
(``labels.prompt_template``).  Cleaning (``labels.clean_captions``): whitespace runs become one space, and
de-identification placeholders (``XXXX``, ``[** ... **]``, ``___``) are dropped.  ``labels.report_section`` keeps
the ``FINDINGS:`` and/or ``IMPRESSION:`` section of a report (the whole text when it has no such header).
"""
from __future__ import annotations

import re
import string
from typing import TYPE_CHECKING

from synth.errors import SynthError
from synth.messages import clip_repr
from synth.textwindows import window_ids

if TYPE_CHECKING:
    from synth.data import ImageSet
    from synth.labels import LabelSchema

# de-identification placeholders of public report sets: MIMIC's [** ... **] and ___, IU X-ray's XXXX
_DEID = re.compile(r"\[\*\*.*?\*\*\]|\bX{2,}\b|_{3,}")
_SPACE = re.compile(r"\s+")
_HEADER = re.compile(r"(?im)^\s*([A-Z][A-Z /&-]{2,40}):")
SECTIONS = ("all", "findings", "impression", "findings+impression")
CAPTION_FIELDS = ("label", "prompt")  # always available to a caption template; manifest columns add theirs


class CaptionError(SynthError, ValueError):
    """A caption template or caption that cannot be used; one line naming the fix."""


def clean_caption(text: str, deid: bool = True) -> str:
    """Whitespace runs to one space, ends stripped; de-identification placeholders dropped when ``deid``."""
    if deid:
        text = _DEID.sub(" ", text)
    text = _SPACE.sub(" ", text).strip()
    return re.sub(r"\s+([,.;:])", r"\1", text)  # 'mass , noted' after a dropped placeholder


def report_section(text: str, section: str) -> str:
    """The ``FINDINGS:`` / ``IMPRESSION:`` part(s) of a report (``section``), or ``text`` when it has neither."""
    if section == "all":
        return text
    heads = [(m.start(), m.end(), m.group(1).strip().lower()) for m in _HEADER.finditer(text)]
    parts = {}
    for i, (start, end, name) in enumerate(heads):
        stop = heads[i + 1][0] if i + 1 < len(heads) else len(text)
        parts.setdefault(name, text[end:stop].strip())
    want = section.split("+")
    found = [parts[w] for w in want if parts.get(w)]
    return " ".join(found) if found else text


def template_fields(template: str, where: str = "labels.caption_template") -> list[str]:
    """The named fields of a str.format template; positional or malformed fields are a CaptionError."""
    if not isinstance(template, str):
        raise CaptionError(f"{where} must be a string, got {clip_repr(template)}")
    try:
        names = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise CaptionError(f"{where} {clip_repr(template)} is not a valid template ({e}); write fields as {{name}} "
                           f"and a literal brace as {{{{ or }}}}") from None
    bad = [f for f in names if not f.isidentifier()]
    if bad:
        raise CaptionError(f"{where} {clip_repr(template)} has the field {{{bad[0]}}}; fields are column names such "
                           f"as {{prompt}}, {{label}} or {{plane}}")
    return names


def check_caption_template(template: str, columns: list[str], source: str) -> None:
    """Refuse a template naming a column the data does not have (one line, listing what it has)."""
    have = list(CAPTION_FIELDS) + [c for c in columns if c not in CAPTION_FIELDS]
    missing = [f for f in template_fields(template) if f not in have]
    if missing:
        raise CaptionError(f"labels.caption_template names the column {{{missing[0]}}}, which '{source}' does not have "
                           f"(it has: {', '.join(have)}); fix the template or add the column to the manifest")


def render_captions(template: str, captions: list[str], labels: list[str], columns: dict[str, list[str]],
                    *, deid: bool = True, section: str = "all") -> tuple[list[str], int]:
    """One prompt per row with a caption ('' where the row has none), and how many rows had none.

    captions, labels: (N,) texts and class names; columns: {name: (N,) texts}."""
    out, empty = [], 0
    for i, raw in enumerate(captions):
        text = clean_caption(report_section(raw or "", section), deid)
        if not text:
            out.append("")
            empty += 1
            continue
        fields = {name: values[i] for name, values in columns.items()}
        fields.update(label=labels[i], prompt=text)
        out.append(clean_caption(template.format(**fields), deid=False))
    return out, empty


def prompts_of(data: ImageSet, schema: LabelSchema, labels_cfg=None, say=None) -> list[str]:
    """One prompt per image: its caption through ``labels.caption_template`` (cleaned, :mod:`synth.captions`) when
    it has one, else its class prompt; rows without a caption are counted in a note."""
    by_class = [schema.prompt_for(k) for k in range(schema.num_classes)]
    labels = [int(x) for x in data.labels]
    if not data.prompts:
        return [by_class[k] for k in labels]
    check_caption_template(schema.caption_template, list(data.columns or {}), data.source)
    captions, empty = render_captions(schema.caption_template, data.prompts, [schema.classes[k] for k in labels],
                                      data.columns or {}, deid=getattr(labels_cfg, "clean_captions", True),
                                      section=getattr(labels_cfg, "report_section", "all"))
    if empty and say is not None:
        say(f"{empty} of {len(captions)} training images have no caption (after cleaning): they train under their "
            f"class prompt")
    return [c or by_class[k] for c, k in zip(captions, labels)]

def count_cut(tokenizer, prompts: list[str], max_length: int, windows: int = 1) -> int:
    """How many distinct prompts are longer than ``windows`` windows of ``max_length`` tokens (start and end
    tokens included in each window)."""
    uniq = sorted(set(prompts))
    return window_ids(tokenizer, uniq, max_length, windows)[1] if uniq else 0


__all__ = ["prompts_of", "count_cut", "CaptionError", "SECTIONS", "clean_caption", "report_section", "template_fields", "check_caption_template",
           "render_captions"]
