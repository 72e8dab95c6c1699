"""The one base of every error synth raises for a problem the user can fix.

Its message is one line that names the problem and the fix; the CLI prints it as ``error: ...`` and
exits 2, and Python callers catch ``SynthError`` to catch them all.  Each subclass also keeps the
built-in base it always had (``ValueError``, ``RuntimeError``, ``FileExistsError``), so existing
``except ValueError`` code still works.
"""
from __future__ import annotations


class SynthError(Exception):
    """A problem with synth's input or surroundings that the user can fix; the message says how."""


__all__ = ["SynthError"]
