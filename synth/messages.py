"""Message helpers, written once: every user-facing error is one line that quotes the user's value safely.

* :func:`one_line`: escape line breaks (a message quoting user text stays one ``error: ...`` line).
* :func:`show`: a short one-line repr (a 1000-item list or a YAML alias bomb stays short).
* :func:`clip_repr`: ``repr`` cut at ``limit`` characters (file names and values read from data files).
* :func:`describe`: a parsed JSON value in words ("null", "a number 3", "a list [1, 2]").
* :func:`first_line` / :func:`error_line`: an exception's first line, without / with its type name.
* :func:`prompt_problem`: why a prompt or caption given on the command line is not one usable line (or None).
"""
from __future__ import annotations

import re
import reprlib
from typing import Any

# Every character str.splitlines() breaks at: the CLI prints an error as one ``error: ...`` line.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")

_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 60, 60, 3
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6


# A prompt longer than this is a pasted file, not a caption; the tokenizer would cut it at 77 tokens anyway.
MAX_PROMPT_CHARS = 10_000


def one_line(text: str) -> str:
    """``text`` with its line breaks escaped (``\\n``), so a message quoting user input stays one line."""
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


def show(value: Any) -> str:
    """A short one-line repr of a user value for messages."""
    try:
        return one_line(_SHORT.repr(value))
    except ValueError:  # an int past Python's 4300-digit str() limit
        return f"<{type(value).__name__} too large to print>"


def clip_repr(value: Any, limit: int = 80) -> str:
    """``repr`` of a user-supplied value for a one-line message: control characters escaped, long values cut."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def describe(value: Any) -> str:
    """A parsed JSON value in words for messages: "null", "a number 3", "a list [1, 2]", ..."""
    if value is None:
        return "null"
    kinds = {bool: "a boolean", int: "a number", float: "a number", str: "a string", list: "a list", dict: "an object"}
    return f"{kinds.get(type(value), type(value).__name__)} {clip_repr(value)}"


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def error_line(e: BaseException) -> str:
    """``Type: message`` of an exception, its first line only (messages stay one line)."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


__all__ = ["clip_repr", "describe", "error_line", "first_line", "one_line", "show"]


def prompt_problem(text: str, *, empty_ok: bool = False) -> str | None:
    """Why ``text`` is not a usable one-line prompt or caption, in words ("holds a line break"), or None."""
    if not empty_ok and not text.strip():
        return "is empty"
    if _LINE_BREAKS.search(text):
        return "holds a line break"
    if len(text) > MAX_PROMPT_CHARS:
        return f"has {len(text):,} characters"
    return None
