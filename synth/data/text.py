"""Safe names and short values in messages: paths inside a folder, file names from manifests, one-line value previews."""
from __future__ import annotations

from synth.messages import clip_repr as show, describe  # noqa: F401  (data messages clip their values)

import os
import unicodedata
from pathlib import Path
from typing import Any, Sequence




def path_inside(path: str, root_real: str) -> bool:
    """Whether the resolved ``path`` is the resolved folder ``root_real`` or lies below it."""
    return path == root_real or path.startswith(root_real.rstrip(os.sep) + os.sep)


def file_name_problem(name: Any) -> str | None:
    """Why ``name`` is no usable file name ("is missing", "is a number 3, ..."), or None.

    Checked before any disk access: a NUL or an unpaired surrogate makes ``os`` raise
    ValueError/UnicodeEncodeError, and a control character would break one-line messages.
    """
    if name is None:
        return "is missing (or null)"
    if not isinstance(name, str):
        return f"is {describe(name)}, not a path string"
    if not name.strip():
        return f"is empty ({show(name)})"
    if not name.isprintable() and any(unicodedata.category(c) in ("Cc", "Zl", "Zp") for c in name):  # fast path first
        return f"{show(name)} contains a control character (NUL, newline, ...)"
    try:
        os.fsencode(name)
    except UnicodeError:
        return f"{show(name)} cannot be a file name here (it holds an unpaired surrogate)"
    return None


def escape_problem(name: str) -> str | None:
    """Why the file name ``name`` could lead outside its folder by spelling alone ("is absolute", ...), or None.

    Any '..' part is refused, even one that stays inside: with symlinked folders '..' does not
    mean what it reads as, and a path without it never needs one.
    """
    posix = name.replace("\\", "/")  # a manifest written on Windows: '..\\x' climbs too, '\\\\server' is absolute
    # string tests, not pathlib: this runs for every row of a 100k-image manifest
    if posix.startswith("/") or (len(posix) > 2 and posix[0].isascii() and posix[0].isalpha() and posix[1:3] == ":/"):
        return "is absolute"
    if ".." in posix.split("/"):
        return "contains '..'"
    return None


def escaping_entry(root: Path, names: Sequence[str]) -> tuple[int, str] | None:
    """First name whose folder or file is a symlink resolving outside ``root``: (index, why), else None.

    ``names`` have passed :func:`file_name_problem` and :func:`escape_problem`.  One ``scandir``
    per folder (cheap ``d_type`` checks) and a ``realpath`` only for the links, so a 100k-image
    set costs a few ms, not a resolve per file.  ``why`` reads "... outside" + " <the folder>".
    """
    root_real = os.path.realpath(root)
    by_dir: dict[str, list[int]] = {}
    for k, name in enumerate(names):
        by_dir.setdefault(os.path.dirname(name), []).append(k)
    for d, ks in by_dir.items():
        folder = os.path.join(root, d)
        if not path_inside(os.path.realpath(folder), root_real):
            return ks[0], f"is in folder {show(d)}, which a symlink leads outside"
        try:
            links = {e.name for e in os.scandir(folder) if e.is_symlink()}
        except OSError:
            continue  # a missing folder: reported when its images are read
        for k in ks:
            base = os.path.basename(names[k])
            if base in links and not path_inside(os.path.realpath(os.path.join(folder, base)), root_real):
                return k, "is a symlink resolving outside"
    return None
