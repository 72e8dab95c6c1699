"""Label schema and conditions: saved as JSON inside every model and manifest."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path


class LabelError(ValueError):
    """A label that does not match the schema."""


@dataclass(frozen=True)
class Condition:
    """What one image is conditioned on. ``label``: class index or None (unconditional)."""

    label: int | None = None
    domain: int | None = None
    prompt: str = ""


@dataclass(frozen=True)
class LabelSchema:
    """Class names, optional domain names, and how a class becomes a prompt."""

    classes: tuple[str, ...]
    domains: tuple[str, ...] = ()
    prompt_template: str = "chest x-ray, {label}"
    prompts: dict = field(default_factory=dict)  # class name -> prompt override

    def __post_init__(self):
        object.__setattr__(self, "classes", tuple(self.classes))
        object.__setattr__(self, "domains", tuple(self.domains))
        if len(self.classes) == 0:
            raise LabelError("label schema has no classes; set labels.classes or use labelled data")
        if len(set(self.classes)) != len(self.classes):
            raise LabelError(f"label schema has duplicate class names: {list(self.classes)}")
        unknown = set(self.prompts) - set(self.classes)
        if unknown:
            raise LabelError(f"labels.prompts names unknown classes {sorted(unknown)}; known: {list(self.classes)}")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def index(self, name: str) -> int:
        """Class name (or its index as a string) -> index; errors list the known labels."""
        if name in self.classes:
            return self.classes.index(name)
        lowered = [c.lower() for c in self.classes]
        if name.lower() in lowered:
            return lowered.index(name.lower())
        if name.isdigit() and int(name) < len(self.classes):
            return int(name)
        raise LabelError(f"unknown label '{name}'; known labels: {', '.join(self.classes)}")

    def check_index(self, label: int) -> int:
        if not 0 <= int(label) < len(self.classes):
            raise LabelError(f"label {label} is out of range for {len(self.classes)} classes {list(self.classes)}")
        return int(label)

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
        return d

    @classmethod
    def from_json(cls, d: dict) -> "LabelSchema":
        return cls(**d)

    def save(self, path: str | Path) -> None:
        from synth.io import atomic_write_json

        atomic_write_json(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "LabelSchema":
        return cls.from_json(json.loads(Path(path).read_text()))
