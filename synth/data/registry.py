"""Data sources, found by what a path is: one ``open_source(path, split)`` that training (through
:func:`synth.data.load_split`), translation and evaluation read with.

A source says whether it takes a path, reads one split as stored, and whether it stores a validation split
(when it does not, ``load_split`` carves one from train).  Add one with :func:`register_source`; the first
that takes a path reads it.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from synth.data.base import DataError, ImageSet
from synth.data.manifest import _read_manifest_rows, load_manifest
from synth.data.sources import _class_dirs, load_image_folder, load_npz

VAL_DIRS = ("val", "valid", "validation")


@dataclass(frozen=True)
class Source:
    """``takes(path)``; ``read(path, split, size, on_error, classes, channels) -> ImageSet``; ``has_val(path)``."""

    name: str
    takes: Callable[[Path], bool]
    read: Callable[..., ImageSet]
    has_val: Callable[[Path], bool]


SOURCES: list[Source] = [
    Source("npz", lambda p: p.is_file() and p.suffix.lower() == ".npz",
           lambda p, split, size, on_error, classes, ch: load_npz(p, split, size, classes, ch), lambda p: True),
    Source("manifest", lambda p: p.is_file() and p.suffix.lower() in (".csv", ".jsonl"), load_manifest,
           lambda p: any(r.split == "val" for r in _read_manifest_rows(p, unlabelled=True))),
    Source("image folder", lambda p: p.is_dir(), load_image_folder,
           lambda p: any(d.name.lower() in VAL_DIRS for d in _class_dirs(p))),
]


def register_source(source: Source, first: bool = True) -> None:
    """Add a source (before the built-in ones unless ``first=False``)."""
    SOURCES.insert(0, source) if first else SOURCES.append(source)


def source_for(path: Path) -> Source:
    for s in SOURCES:
        if s.takes(path):
            return s
    raise DataError(f"'{path}' is not a .npz, .csv, .jsonl or folder; pass one of those")


def open_source(path: str | Path, split: str, size: int, *, on_error: str = "raise", classes: list[str] | None = None,
                channels="auto") -> ImageSet:
    """Split ``split`` of the data at ``path``, as the source stores it (no carve), prepared at ``size`` px."""
    p = Path(path)
    return source_for(p).read(p, split, size, on_error, classes, channels)


__all__ = ["SOURCES", "Source", "open_source", "register_source", "source_for"]
