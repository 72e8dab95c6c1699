"""Conditioners: how a generator turns :class:`~synth.labels.Condition` s into what its network reads.

A model is path x conditioner x codec (:mod:`synth.paths`, this module, :mod:`synth.codecs`).  Every
conditioner has the same five members, so one generator drives any of them:

* ``name``: what the export records (``"text"``, ``"class"``, ``"none"``);
* ``encode(conditions, device, dtype) -> (cond, conditions)``: the network's condition for a batch, and the
  conditions as they were resolved (a text conditioner fills in the prompt it used);
* ``null(n, device, dtype, negative="")``: the unconditional entry classifier-free guidance pushes away from;
* ``lookup(names, device, dtype)``: one condition per name (``None``: the null entry), for translation;
* ``network_kwargs(cond)``: the keyword the UNet takes it under.

Adding a conditioner (an image prompt, a segmentation map) is one class here plus its loading in
:func:`synth.samplers.generator.load_conditioner`.
"""
from __future__ import annotations

from typing import Sequence

import torch

from synth.labels import Condition, LabelError, LabelSchema
from synth.textwindows import encode_windows, window_ids

CONDITIONERS = ("text", "class", "none")


def encode_prompts(tokenizer, text_encoder, prompts: Sequence[str], max_length: int, windows: int = 1) -> torch.Tensor:
    """Prompts -> text embeddings (B, W x L, D) from the encoder's last hidden state (``windows`` W:
    :mod:`synth.textwindows`; 1 truncates to one window of L tokens)."""
    p = next(text_encoder.parameters())
    if windows > 1:
        ids, _ = window_ids(tokenizer, prompts, max_length, windows)
        return encode_windows(text_encoder, ids.to(p.device))
    ids = tokenizer(list(prompts), padding="max_length", max_length=max_length, truncation=True,
                    return_tensors="pt").input_ids
    return text_encoder(ids.to(p.device))[0]


class TextConditioner:
    """Free text through a tokenizer and a text encoder; labels become prompts through the schema's templates.

    The null entry is the empty prompt (or a negative prompt).  Embeddings are cached per distinct prompt:
    labelled sampling repeats a few prompts."""

    name = "text"

    def __init__(self, tokenizer, text_encoder, schema: LabelSchema, max_length: int, windows: int = 1):
        self.tokenizer, self.text_encoder, self.schema = tokenizer, text_encoder, schema
        self.max_length, self.windows = max_length, windows
        self._cache: dict[str, torch.Tensor] = {}

    def prompt(self, c: Condition) -> str:
        """The text a condition asks for: its prompt, else its label's prompt, else '' (unconditional)."""
        return c.prompt or (self.schema.prompt_for(c.label) if c.label is not None else "")

    @torch.no_grad()
    def embeddings(self, prompts: Sequence[str]) -> torch.Tensor:
        """(B, L, D) embeddings of ``prompts``; the ones not cached are encoded together, in sorted order."""
        missing = sorted({pr for pr in prompts if pr not in self._cache})
        if missing:
            emb = encode_prompts(self.tokenizer, self.text_encoder, missing, self.max_length, self.windows)
            for pr, e in zip(missing, emb):
                self._cache[pr] = e
        return torch.stack([self._cache[pr] for pr in prompts])

    def clear_cache(self) -> None:
        self._cache.clear()

    def encode(self, conditions: Sequence[Condition], device, dtype) -> tuple[torch.Tensor, list[Condition]]:
        """(B, L, D) embeddings and the conditions with the prompt each one used."""
        prompts = [self.prompt(c) for c in conditions]
        resolved = [Condition(label=c.label, domain=c.domain, prompt=pr) for c, pr in zip(conditions, prompts)]
        return self.embeddings(prompts).to(device, dtype), resolved

    def null(self, n: int, device, dtype, negative: str = "") -> torch.Tensor:
        """(n, L, D): the empty prompt, or ``negative``."""
        return self.embeddings([negative] * n).to(device, dtype)

    def lookup(self, names: Sequence[str | None], device, dtype) -> torch.Tensor:
        """(k, L, D): one embedding per prompt text (None: the empty prompt)."""
        return self.embeddings(["" if s is None else s for s in names]).to(device, dtype)

    @staticmethod
    def network_kwargs(cond: torch.Tensor) -> dict:
        return {"encoder_hidden_states": cond}


class ClassConditioner:
    """Classes (a bridge's domains) as rows of the network's class embedding; row ``len(classes)`` is the null
    entry.  A condition asks by ``domain``, else by ``label`` (so ``synth sample --labels`` works), else for the
    null entry (an unconditional sample)."""

    name = "class"

    def __init__(self, schema: LabelSchema):
        self.schema = schema
        self.classes = tuple(schema.classes)

    @property
    def null_index(self) -> int:
        return len(self.classes)

    def index(self, name: str | int) -> int:
        """Class name (or index) -> index; an unknown name lists the model's classes."""
        if isinstance(name, int) and not isinstance(name, bool):
            if 0 <= name < len(self.classes):
                return name
        elif name in self.classes:
            return self.classes.index(name)
        raise LabelError(f"unknown domain '{name}'; this model's domains: {', '.join(self.classes)}")

    def resolve(self, c: Condition) -> int:
        if c.domain is not None:
            return self.index(c.domain)
        if c.label is not None:
            return self.index(c.label)
        return self.null_index

    def encode(self, conditions: Sequence[Condition], device, dtype) -> tuple[torch.Tensor, list[Condition]]:
        """(B,) class indices; the conditions unchanged."""
        return torch.tensor([self.resolve(c) for c in conditions], device=device), list(conditions)

    def null(self, n: int, device, dtype, negative: str = "") -> torch.Tensor:
        """(n,) the null index.  A negative prompt needs text: refused before sampling starts."""
        if negative:
            raise LabelError("a negative prompt needs a text-conditioned model; this one is conditioned on classes "
                             "only: drop the negative prompt")
        return torch.full((n,), self.null_index, dtype=torch.long, device=device)

    def lookup(self, names: Sequence[str | int | None], device, dtype) -> torch.Tensor:
        """(k,) one index per class name (None: the null index)."""
        return torch.tensor([self.null_index if s is None else self.index(s) for s in names], dtype=torch.long,
                            device=device)

    @staticmethod
    def network_kwargs(cond: torch.Tensor) -> dict:
        return {"class_labels": cond}


class NoConditioner:
    """An unconditional model: every condition is the same, and there is no null entry to guide away from
    (guidance must be 1)."""

    name = "none"

    def __init__(self, schema: LabelSchema | None = None):
        self.schema = schema or LabelSchema(classes=["image"])

    def encode(self, conditions: Sequence[Condition], device, dtype) -> tuple[None, list[Condition]]:
        return None, list(conditions)

    def null(self, n: int, device, dtype, negative: str = "") -> None:
        return None

    def lookup(self, names: Sequence, device, dtype) -> list[None]:
        return [None] * len(names)

    @staticmethod
    def network_kwargs(cond) -> dict:
        return {}


__all__ = ["CONDITIONERS", "ClassConditioner", "NoConditioner", "TextConditioner", "encode_prompts"]
