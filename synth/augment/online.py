""":class:`OnlineSynthetic`: images generated on the fly from a loaded generator, image i equal to image i of ``synth sample``."""
from __future__ import annotations

from typing import Callable, Mapping, Sequence

import torch
from torch.utils.data import Dataset, get_worker_info

from synth.allocation import labels_for
from synth.labels import Condition, LabelSchema
from synth.seeds import derive_seed, image_seed
from synth.sampleset.errors import AugmentError
from synth.sampleset.conditions import normalised_weights, split_label_spec


from synth.augment.names import _find, _label_lookup
from synth.augment.sets import uint8_to_pil


def _generator_schema(generator) -> tuple[LabelSchema, bool]:
    """(label schema, is a domain bridge).  A bridge's classes are its domains (as in its export)."""
    schema = getattr(generator, "schema", None)
    if isinstance(schema, LabelSchema):
        return schema, False
    domains = getattr(generator, "domains", None)
    if domains:
        return LabelSchema(classes=list(domains), domains=list(domains)), True
    raise AugmentError(f"{type(generator).__name__} has no label schema (.schema) or domains; pass a generator from "
                       f"synth.samplers.generator.load_generator(export)")


def _generator_device(generator) -> torch.device:
    try:
        return next(generator.unet.parameters()).device
    except (AttributeError, StopIteration, TypeError):
        return torch.device(getattr(generator, "device", "cpu"))


def _label_weights(labels, schema: LabelSchema, allowed: list[bool]) -> tuple[tuple[int, float], ...]:
    """Normalised (class id, weight) pairs, parsed and checked as ``synth sample --labels`` does
    (:mod:`synth.sampleset.conditions`); names match loosely (case, spaces), as real class names do."""
    pairs = (split_label_spec(labels, schema, AugmentError) if isinstance(labels, str)
             else list(labels.items()) if isinstance(labels, Mapping) else None)
    if not pairs:
        raise AugmentError(f"labels must be None (balanced), a dict name -> weight or 'a=0.5,b=0.5', got {labels!r}")

    def find(name) -> int:
        k = _find(str(name), list(schema.classes))
        if k is None:
            raise AugmentError(f"labels names '{name}', which the generator does not know; its labels: "
                               f"{', '.join(schema.classes)}")
        return k

    weights, total = normalised_weights(pairs, schema, find, AugmentError)
    dropped = [k for k, w in weights.items() if w > 0 and not allowed[k]]
    if dropped:
        raise AugmentError(f"labels asks for '{schema.classes[dropped[0]]}' but label_map drops it; give it weight 0 "
                           f"or map it to a real class")
    return tuple(sorted((k, w / total) for k, w in weights.items() if w > 0))


class OnlineSynthetic(Dataset):
    """``n`` images generated on the fly from a loaded generator; items ``(image, label)``.

    ``generator``: ``synth.samplers.generator.load_generator(export)`` (an LDM with ``.schema`` or
    a bridge with ``.domains``; anything with ``.sample(conditions, seeds, steps=, guidance=,
    sampler=)`` returning ``.images`` uint8 (N, C, H, W)).  Image ``i`` has label
    ``labels`` allocation of ``i`` (None: round-robin over classes; a dict name -> weight or
    ``"a=0.5,b=0.5"``: the bulk engine's allocation, so with the same seed and settings
    item i is image i of ``synth sample``) and seed ``image_seed(seed, i)``: the same index
    always gives the same image, whatever the batch.  ``epoch_fresh=True``: epochs > 0 use
    seeds from ``(seed, epoch, i)`` (``set_epoch``) for fresh images every epoch.
    ``steps``/``guidance``/``sampler``: None uses the generator's defaults.

    A DataLoader fetches a whole batch in one generator call (``__getitems__``; on the GPU
    when the generator is there).  Use ``num_workers=0``: the model lives in the main
    process (a CUDA generator inside a worker is an error).  ``image``: float32 (C, H, W)
    in [0, 1], or ``transform(PIL image)``.  ``classes``/``label_map``: as :class:`SyntheticSet`.
    """

    def __init__(self, generator, n: int, *, labels=None, seed: int = 0, steps: int | None = None,
                 guidance: float | None = None, sampler: str | None = None, epoch_fresh: bool = False,
                 transform: Callable | None = None, classes=None, label_map: Mapping[str, str | None] | None = None):
        if not isinstance(n, int) or n < 1:
            raise AugmentError(f"n must be a positive number of images, got {n!r}")
        if not callable(getattr(generator, "sample", None)):
            raise AugmentError(f"{type(generator).__name__} has no .sample(); pass a generator from "
                               f"synth.samplers.generator.load_generator(export)")
        self.generator, self.n, self.seed, self.epoch = generator, n, int(seed), 0
        self.schema, self._bridge = _generator_schema(generator)
        self.set_classes = list(self.schema.classes)
        self._to_label, self.classes = _label_lookup(self.set_classes, classes, label_map)
        self.sample_kwargs = {k: v for k, v in (("steps", steps), ("guidance", guidance), ("sampler", sampler))
                              if v is not None}
        self.epoch_fresh, self.transform = bool(epoch_fresh), transform
        self.gen_labels = self._allocate(labels)
        self.labels = torch.tensor([self._to_label[k] for k in self.gen_labels.tolist()], dtype=torch.long)

    def _allocate(self, labels) -> torch.Tensor:
        """Generator class id of every index (N,): deterministic, never dropped classes."""
        allowed = [t >= 0 for t in self._to_label]
        if labels is None:
            ks = [k for k, ok in enumerate(allowed) if ok]
            if not ks:
                raise AugmentError("label_map drops every class of the generator; map at least one to a real class")
            return torch.tensor([ks[i % len(ks)] for i in range(self.n)], dtype=torch.long)
        weights = _label_weights(labels, self.schema, allowed)
        return torch.tensor(labels_for(self.n, weights), dtype=torch.long)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def seed_of(self, i: int) -> int:
        """Seed of index ``i``: ``image_seed(seed, i)`` (as ``synth sample``), per epoch with ``epoch_fresh``."""
        if self.epoch_fresh and self.epoch > 0:
            return derive_seed("online-epoch", self.seed, self.epoch, i)
        return image_seed(self.seed, i)

    def condition(self, k: int) -> Condition:
        """A bridge samples its domain k (its classes are domains); an LDM its class k."""
        if self._bridge:
            return Condition(label=k, domain=k)
        return self.schema.condition(k)

    def __len__(self) -> int:
        return self.n

    def _check_process(self) -> None:
        if get_worker_info() is not None and _generator_device(self.generator).type == "cuda":
            raise AugmentError("OnlineSynthetic with a CUDA generator inside a DataLoader worker: the model lives in "
                               "the main process; use DataLoader(..., num_workers=0)")

    def _index(self, i) -> int:
        i = int(i)
        if i < 0:
            i += self.n
        if not 0 <= i < self.n:
            raise IndexError(f"index {i} out of range for OnlineSynthetic of {self.n} images")
        return i

    def images(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 (B, C, H, W) of ``indices``, in one generator call."""
        self._check_process()
        idx = [self._index(i) for i in indices]
        conds = [self.condition(int(self.gen_labels[i])) for i in idx]
        batch = self.generator.sample(conds, [self.seed_of(i) for i in idx], **self.sample_kwargs)
        return batch.images

    def __getitems__(self, indices: Sequence[int]) -> list:
        imgs = self.images(indices)
        out = []
        for x, i in zip(imgs, indices):
            image = self.transform(uint8_to_pil(x)) if self.transform is not None else x.float().div(255.0)
            out.append((image, int(self.labels[self._index(i)])))
        return out

    def __getitem__(self, i: int):
        return self.__getitems__([i])[0]
