"""Label schema and conditions: saved as JSON inside every model and manifest."""
from __future__ import annotations

import dataclasses
import json
import operator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synth.errors import SynthError
from synth.config import one_line, show


class LabelError(SynthError, ValueError):
    """A label that does not match the schema; the message is one line naming the fix."""

    def __init__(self, message: object = ""):
        # safety net: messages quote user text (label specs, prompt lines), which may hold line breaks
        super().__init__(one_line(str(message)))


@dataclass(frozen=True)
class Condition:
    """What one image is conditioned on. ``label``: class index or None (unconditional)."""

    label: int | None = None
    domain: int | None = None
    prompt: str = ""


def _is_number(text: str) -> bool:
    """ASCII digits only: ``'²'.isdigit()`` is true, but ``int('²')`` fails and ``'١'`` is nobody's index."""
    return text.isascii() and text.isdigit()


def _check_names(key: str, names: tuple) -> None:
    """Class or domain names: non-empty strings, each once."""
    for n in names:
        if not isinstance(n, str) or not n.strip():
            raise LabelError(f"{key} must be non-empty names, got {show(n)} in {show(list(names))}")
    if len(set(names)) != len(names):
        raise LabelError(f"label schema has duplicate {key.split('.')[-1]} names: {show(list(names))}")


def _check_template(template: object) -> None:
    """Every prompt is ``template.format(label=name)``: refuse a template that cannot be filled in."""
    if not isinstance(template, str):
        raise LabelError(f"labels.prompt_template must be a string, got {show(template)}")
    try:
        template.format(label="x")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
        raise LabelError(f"labels.prompt_template {show(template)} cannot be filled in ({type(e).__name__}: "
                         f"{show(str(e))}); '{{label}}' must be its only field") from None


@dataclass(frozen=True)
class LabelSchema:
    """Class names, optional domain names, and how a class becomes a prompt."""

    classes: tuple[str, ...]
    domains: tuple[str, ...] = ()
    prompt_template: str = "{label}"  # names no modality: a preset for chest X-rays says so itself
    prompts: dict = field(default_factory=dict)  # class name -> prompt override
    caption_template: str = "{prompt}"  # rows with free text (synth.captions)

    def __post_init__(self):
        for key, names in (("labels.classes", self.classes), ("labels.domains", self.domains)):
            # tuple("abc") would silently make three one-letter classes
            if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
                raise LabelError(f"{key} must be a list of names, got {show(names)}")
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "domains", tuple(self.domains))
        if len(self.classes) == 0:
            raise LabelError("label schema has no classes; set labels.classes or use labelled data")
        _check_names("labels.classes", self.classes)
        _check_names("labels.domains", self.domains)
        if not isinstance(self.prompts, dict) or not all(isinstance(v, str) for v in self.prompts.values()):
            raise LabelError(f"labels.prompts must map class names to prompt strings, got {show(self.prompts)}")
        unknown = set(self.prompts) - set(self.classes)
        if unknown:
            raise LabelError(f"labels.prompts names unknown classes {sorted(map(str, unknown))}; "
                             f"known: {list(self.classes)}")
        _check_template(self.prompt_template)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _unknown(self, name: object, why: str = "") -> LabelError:
        """The error for a name that is no class: says why (when not obvious) and lists the known ones."""
        return LabelError(f"unknown label {show(name)}{f' ({why})' if why else ''}; known labels: "
                          f"{', '.join(self.classes)}")

    def index(self, name: str) -> int:
        """Class name (or its index as a string) -> index; errors list the known labels.

        An exact name wins, then a unique case-insensitive match, then a number as an index,
        unless some class name is itself a number (then ``'0'`` could mean either: refused).
        """
        if not isinstance(name, str):
            raise self._unknown(name, "not a class name")
        if name in self.classes:
            return self.classes.index(name)
        folded = [i for i, c in enumerate(self.classes) if c.casefold() == name.casefold()]
        if len(folded) == 1:
            return folded[0]
        if folded:
            raise LabelError(f"label {show(name)} matches {[self.classes[i] for i in folded]} ignoring case; "
                             f"spell it exactly")
        if _is_number(name):
            if any(_is_number(c) for c in self.classes):
                raise self._unknown(name, "class names here are numbers, so a number is not read as an index")
            # a very long digit string would exceed int()'s digit limit; it is out of range anyway
            if len(name) <= 18 and int(name) < len(self.classes):
                return int(name)
            raise self._unknown(name, f"as an index it is out of range for {len(self.classes)} classes")
        raise self._unknown(name)

    def check_index(self, label: int) -> int:
        """``label`` as a class index in range, else a LabelError."""
        try:
            k = operator.index(label)  # ints, numpy ints, integer tensors; int(1.5) would silently be 1
        except TypeError:
            raise LabelError(f"label {show(label)} is not a class index; use 0..{len(self.classes) - 1}") from None
        if not 0 <= k < len(self.classes):
            raise LabelError(f"label {show(label)} is out of range for {len(self.classes)} classes "
                             f"{list(self.classes)}")
        return k

    def prompt_for(self, label: int) -> str:
        name = self.classes[self.check_index(label)]
        if name in self.prompts:
            return self.prompts[name]
        return self.prompt_template.format(label=name.replace("_", " ").lower())

    def condition(self, label: int, prompt: str | None = None) -> Condition:
        """A condition for class ``label``; free text ``prompt`` overrides the template."""
        return Condition(label=self.check_index(label), prompt=prompt or self.prompt_for(label))

    def to_json(self) -> dict:
        d = asdict(self)
        d["classes"], d["domains"] = list(self.classes), list(self.domains)
        if d["caption_template"] == "{prompt}":
            del d["caption_template"]  # the default: exports keep the bytes they had before it existed
        return d

    @classmethod
    def from_json(cls, d: dict) -> "LabelSchema":
        """The schema saved by :meth:`to_json`; a damaged one is a LabelError naming the bad key."""
        if not isinstance(d, dict):
            raise LabelError(f"label schema must be a JSON object with 'classes', got {show(d)}")
        known = [f.name for f in dataclasses.fields(cls)]
        extra = sorted(map(str, set(d) - set(known)))
        if extra:
            raise LabelError(f"label schema has unknown keys {extra}; expected {', '.join(known)}")
        if "classes" not in d:
            raise LabelError("label schema has no 'classes' list; re-export the model")
        return cls(**d)

    def save(self, path: str | Path) -> None:
        from synth.io import atomic_write_json

        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "LabelSchema":
        """Read a schema saved by :meth:`save`; an unreadable file is a LabelError."""
        p = Path(path)
        try:
            d = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise LabelError(f"label schema '{p}' cannot be read ({type(e).__name__}: {show(str(e))}); "
                             f"re-export the model") from None
        return cls.from_json(d)
