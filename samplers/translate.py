"""Bulk translation: every image of an input set, translated by a flow model, written like `synth sample`.

A bridge translates between its domains; a caption-conditioned flow model (``synth train ldm --set
train.path=flow``) between two captions (``--source "CT of the head" --target "MRI of the brain"``).

``synth translate --model EXPORT --input DIR|npz|manifest --source A --target B --tau 0.5 --out DIR``

Image ``i`` of the output is input image ``i`` (in the input's own order: an npz's
train, val, test splits one after the other; a folder's or manifest's files in their
sorted order) translated from domain A to domain B.  Its label (e.g. NORMAL /
PNEUMONIA) travels with it into the metadata, so the output is labelled training data
for the target domain.  Shards, done records, resume, extension, multi-process and the
manifest are the bulk engine's (:mod:`synth.samplers.bulk`); so are the guarantees (a
resumed or multi-process run gives identical bytes).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from synth.samplers.bulk import BulkError, BulkRequest
from synth.data import DataError, ImageSet
from synth.labels import Condition, LabelSchema
from synth.messages import MAX_PROMPT_CHARS, prompt_problem
from synth.io import channel_word, to_hwc
from synth.seeds import image_seed

SPLITS = ("train", "val", "test")


def load_input(path: str, resolution: int, split: str = "all") -> ImageSet:
    """The images to translate, prepared like training data (grey or colour as the files are, pad to square,
    resize to the model's size).

    ``split``: ``all`` (every split the source has, in train, val, test order) or one split.  A source
    mixing grey and colour images is refused: translation has no ``data.channels`` to settle it, and
    silently greying colour (or colouring grey) would translate something else than the user's images.
    """
    from synth.data import MixedChannelsError

    try:
        return _load_input(path, resolution, split)
    except MixedChannelsError as e:
        raise DataError(f"{e.what}; --input must hold one kind: move the other kind out of it, or convert those "
                        "files to the kind the model translates") from None


def _load_input(path: str, resolution: int, split: str) -> ImageSet:
    from synth.config import DataConfig
    from synth.data import _load_path, open_source

    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(f"--input '{path}' does not exist; pass an image folder, a .npz or a CSV/JSONL manifest")
    cfg = DataConfig(name=str(p), resolution=resolution, val_fraction=0.5, val_max_items=None)
    wanted = SPLITS if split == "all" else (split,)
    if p.is_dir() and not any(d.name.lower() in ("train", "val", "valid", "validation", "test") for d in p.iterdir() if d.is_dir()):
        parts = [open_source(p, "train", resolution)]  # a plain <class>/<image> folder: all of it
    elif p.suffix.lower() in (".csv", ".jsonl"):
        parts = [s for s in (open_source(p, sp, resolution) for sp in wanted) if len(s)]
        if split == "all":  # rows without a split column count as train
            parts = parts or [open_source(p, "train", resolution)]
    else:
        parts = []
        first_error = None
        if p.suffix.lower() == ".npz" and split == "all":  # only the splits it holds: their errors are the real ones
            wanted = tuple(sp for sp in SPLITS if f"{sp}_images" in _npz_keys(p)) or SPLITS
        for sp in wanted:
            try:
                parts.append(_load_path(p, sp, cfg, None))
            except DataError as e:  # with --split all a source may lack a split; anything else is reported below
                if split != "all":
                    raise
                first_error = first_error or e
        if not any(len(s) for s in parts) and first_error is not None:
            raise first_error
    parts = [s for s in parts if len(s)]
    if not parts:
        raise DataError(f"--input '{path}' holds no images{'' if split == 'all' else f' in split {split}'}")
    if len({s.channels for s in parts}) > 1:
        raise DataError(f"--input '{path}' has grey images in one split and colour images in another; "
                        f"translate one split at a time (--split) or make them alike")
    classes = parts[0].classes
    return ImageSet(torch.cat([s.images for s in parts]), torch.cat([s.labels for s in parts]), list(classes),
                    source=str(p))


def _npz_keys(p: Path) -> list[str]:
    try:
        with np.load(p) as z:
            return list(z.files)
    except Exception:  # not an npz at all: the loader below says so in one line
        return []


def input_fingerprint(images: ImageSet) -> str:
    """Hash of the prepared input (pixels and labels): a resumed set must translate the same images."""
    h = hashlib.sha256(images.images.numpy().tobytes())
    h.update(images.labels.numpy().tobytes())
    return h.hexdigest()[:16]


@dataclass(frozen=True)
class TranslateRequest(BulkRequest):
    """A bulk request whose images come from an input set instead of noise."""

    input: str = ""
    source: str = ""
    target: str = ""
    tau: float = 0.5
    split: str = "all"
    input_hash: str = ""

    def identity(self, meta: dict, schema: LabelSchema, device="cpu") -> dict:
        """Everything that decides the pixels: the model, the input's hash, the domains, tau and the solver."""
        from synth.samplers.bulk import device_identity

        ident = {"task": "translate", "model_id": meta.get("model_id"), "weights_sha256": meta.get("weights_sha256"),
                 "input_sha256": self.input_hash, "source": self.source, "target": self.target, "tau": self.tau,
                 "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance, "seed": self.seed,
                 "format": self.format, "shard_size": self.shard_size, "dtype": self.dtype}
        return {**ident, **device_identity(device, self.batch_size)}


class TranslateJob:
    """What output image ``i`` is (input image i, its label, the target domain) and how a batch is made."""

    def __init__(self, req: TranslateRequest, data: ImageSet, generator):
        self.req, self.data, self.gen = req, data, generator
        # a caption-conditioned flow model translates between two texts: it has no domains to name
        self.text = generator.conditioner.name == "text"
        self.label_schema = LabelSchema(classes=list(data.classes), domains=[] if self.text else list(generator.domains))
        self.target = None if self.text else generator.domain_index(req.target)

    def condition(self, i: int) -> Condition:
        if self.text:
            return Condition(label=int(self.data.labels[i]), prompt=self.req.target)
        return Condition(label=int(self.data.labels[i]), domain=self.target)

    def seed(self, i: int) -> int:
        return image_seed(self.req.seed, i)

    def row(self, i: int) -> dict:
        label = int(self.data.labels[i])
        return {"index": i, "label": self.data.classes[label], "label_id": label, "source_index": i,
                "source_domain": self.req.source, "target_domain": self.req.target, "tau": self.req.tau,
                "seed": self.seed(i), "sampler": self.req.sampler, "steps": self.req.steps, "guidance": self.req.guidance}

    def make(self, idx: list[int]) -> np.ndarray:
        """uint8 (len(idx), H, W[, 3]) translations of input images ``idx`` (one network-call shape per batch)."""
        out = self.gen.translate(self.data.images[idx], self.req.source, self.req.target, tau=self.req.tau,
                                 steps=self.req.steps, guidance=self.req.guidance, sampler=self.req.sampler,
                                 seeds=[self.seed(i) for i in idx])
        return to_hwc(out)


def check_translate(req: TranslateRequest, generator, data: ImageSet | None = None) -> None:
    """The bad inputs of a translation request, as one-line errors."""
    if not 0.0 <= req.tau <= 1.0:
        raise BulkError(f"--tau must be in [0, 1] (1 keeps the input, 0 is full inversion), got {req.tau}")
    if data is not None and data.channels != generator.channels:
        raise BulkError(f"the model translates {channel_word(generator.channels)} images but --input '{req.input}' "
                        f"holds {channel_word(data.channels)} images; use a model trained on such images")
    if generator.conditioner.name == "text":
        for flag, text in (("--source", req.source), ("--target", req.target)):
            problem = prompt_problem(text)
            if problem:
                raise BulkError(f"{flag} must be one line of text (a caption) under {MAX_PROMPT_CHARS:,} characters "
                                f"for a caption-conditioned model, but it {problem}; pass the caption")
        return
    generator.domain_index(req.source)
    generator.domain_index(req.target)


__all__ = ["TranslateRequest", "TranslateJob", "load_input", "input_fingerprint", "check_translate"]
