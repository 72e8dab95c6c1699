"""The error of reading a sample set (and of the datasets built on it), and the fix most of them share."""
from __future__ import annotations

from synth.errors import SynthError
from synth.messages import error_line as first_line  # noqa: F401  (the name its readers use)

RERUN = "rerun the same `synth sample`/`synth translate` command to finish it"


class AugmentError(SynthError, ValueError):
    """A synthetic set that cannot be read, or used as asked; one line naming the fix."""
