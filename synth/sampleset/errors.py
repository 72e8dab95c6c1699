"""The error of reading a sample set (and of the datasets built on it), and the fix most of them share."""
from __future__ import annotations

from synth.errors import SynthError

RERUN = "rerun the same `synth sample`/`synth translate` command to finish it"


class AugmentError(SynthError, ValueError):
    """A synthetic set that cannot be read, or used as asked; one line naming the fix."""


def first_line(e: BaseException) -> str:
    """``Type: message`` of an exception, its first line only (messages stay one line)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__
