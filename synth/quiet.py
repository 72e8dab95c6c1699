"""Silence library messages a synth user cannot act on; keep every warning about their input.

Each pattern below was seen in a normal run and is about the libraries' own plumbing (an optional
torchvision backend we never use, a pixel-space pipeline that has no VAE on purpose, weight-loading
progress bars).  Records are dropped at the libraries' handlers, so nothing else is hidden.
"""
from __future__ import annotations

import logging
import warnings

HARMLESS = (
    "requires torchvision",  # transformers image processors: synth never uses them
    "of type <class 'NoneType'> cannot be saved",  # pixel-space pipelines have no VAE by design
    "should be kept in float32: []",  # an empty list: nothing is affected
    "You have disabled the safety checker",  # medical images, no safety checker
)
_done = False


class _DropHarmless(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(p in msg for p in HARMLESS)


def install() -> None:
    """Idempotent: filter the known harmless records of transformers/diffusers and their progress bars."""
    global _done
    if _done:
        return
    _done = True
    flt = _DropHarmless()
    for name in ("transformers", "diffusers"):
        try:
            mod = __import__(f"{name}.utils.logging", fromlist=["get_logger"])
            mod.disable_progress_bar()  # "Loading weights", "Writing model shards": per-file bars on tiny files
            root = mod.get_logger(name)
        except Exception:  # the library is optional here; nothing to quiet
            continue
        root.addFilter(flt)
        for h in root.handlers:
            h.addFilter(flt)
    warnings.filterwarnings("ignore", message=".*requires torchvision.*")
