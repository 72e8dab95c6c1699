"""What every loader returns (:class:`ImageSet`) and the data errors."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from synth.errors import SynthError



class DataError(SynthError, ValueError):
    """Bad or missing data; the message is one line naming the problem and the fix."""


class MixedChannelsError(DataError):
    """Grey and colour images in one source (``data.channels: auto``); ``grey`` / ``colour`` name one file of
    each, so a caller without ``data.channels`` (translation) can give its own fix."""

    def __init__(self, grey: str, colour: str | None = None):
        if colour is None:  # rebuilt from its message alone (another rank's copy of rank 0's error)
            self.grey, self.colour = None, None
            super().__init__(grey)
            return
        self.grey, self.colour = grey, colour
        super().__init__(f"{self.what}; set data.channels=3 to keep colour (grey images become three equal channels) "
                         f"or data.channels=1 to make every image grey")

    @property
    def what(self) -> str:
        return f"the data mixes grey and colour images (grey: '{self.grey}', colour: '{self.colour}')"


@dataclass
class ImageSet:
    """A prepared split: ``images`` uint8 (N, C, R, R) (C = 1 grey or 3 RGB), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    prompts: list[str] | None = None
    source: str = ""
    skipped: int = 0
    indices: torch.Tensor | None = None  # rows of the source split this set keeps (None: all, in order)
    n_source: int | None = None  # size of the source split before subsetting
    notes: list[str] = field(default_factory=list)  # what loading changed that the user should hear (alpha dropped)
    # a manifest's other columns (type, plane, age, ...) as text, one value per image: caption templates name them
    columns: dict[str, list[str]] | None = None

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.images.shape[0])
MAX_CLASS_INDEX = 9999  # a larger numeric label is an ID column or a typo, and would make that many classes


POOL_KINDS = ("none", "rest", "source")


def pool_kind(value: str | None) -> str:
    """``none`` | ``rest`` | ``source`` | ``path`` for a ``data.unlabelled`` (or ``eval.unlabelled_pool``) value."""
    v = str(value or "none").strip()
    return v.lower() if v.lower() in POOL_KINDS else "path"
