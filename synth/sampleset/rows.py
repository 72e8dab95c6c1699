"""``metadata.jsonl`` and ``quality.jsonl`` of a sample set, read safely: every file name relative, inside the
set folder (symlinks included), every line a JSON object; damage is a one-line error with the fix."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Iterator

from synth.data import escape_problem, escaping_entry, file_name_problem, json_object_lines, show
from synth.sampleset.errors import RERUN, AugmentError, first_line


def _read_set_text(file: Path, fix: str) -> str:
    """A set's text file (metadata.jsonl, quality.jsonl) as UTF-8; one-line AugmentError when unreadable."""
    try:
        return file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise AugmentError(f"'{file}' is unreadable ({first_line(e)}); {fix}") from None


def _json_lines(text: str, where: Callable[[int], str], fix: str) -> Iterator[tuple[int, dict]]:
    """(line number, object) of each non-blank line of a JSONL text; one-line AugmentError for anything else."""
    for n, row, problem in json_object_lines(text):
        if problem:
            raise AugmentError(f"{where(n)} is {problem}; {fix}")
        yield n, row


def _check_file_name(name, where: str, root: Path) -> str:
    """A relative file name without '..' (synth writes them so, but a set may come from anyone)."""
    problem = file_name_problem(name)
    if problem:
        raise AugmentError(f"{where}: file_name {problem}; the set is damaged, {RERUN}")
    problem = escape_problem(name)
    if problem:
        raise AugmentError(f"{where}: file_name {show(name)} {problem}, pointing outside the set folder '{root}'; "
                           f"refusing to read it, regenerate the set")
    return name


def read_rows(root: Path) -> list[dict]:
    """``metadata.jsonl`` rows with safe ``file_name`` values (relative, inside ``root``, symlinks too)."""
    meta = root / "metadata.jsonl"
    if not meta.is_file():
        raise AugmentError(f"set '{root}' has no metadata.jsonl: it was interrupted; {RERUN}")
    def where(n: int) -> str:
        return f"metadata.jsonl line {n} of '{root}'"

    rows, wheres = [], []
    fix = f"the set is damaged, {RERUN}"
    for n, row in _json_lines(_read_set_text(meta, fix), where, fix):
        _check_file_name(row.get("file_name"), where(n), root)
        rows.append(row)
        wheres.append(where(n))
    hit = escaping_entry(root, [r["file_name"] for r in rows])
    if hit:
        k, why = hit
        raise AugmentError(f"{wheres[k]}: {show(rows[k]['file_name'])} {why} the set folder '{root}'; refusing to "
                           f"read it, regenerate the set")
    return rows


def quality_kept(root: Path, rows: list[dict], quality: str) -> list[dict]:
    """The metadata ``rows`` that :func:`quality_filter` kept (``quality="keep"``); every row must be decided."""
    if quality != "keep":
        raise AugmentError(f"quality must be None or 'keep', got {quality!r}")
    decided = read_quality(root)
    undecided = [r["file_name"] for r in rows if r["file_name"] not in decided]
    if undecided:
        raise AugmentError(f"quality.jsonl of '{root}' has no decision for {len(undecided)} images "
                           f"(first: {undecided[0]}; the set changed after filtering); run quality_filter again")
    return [r for r in rows if decided[r["file_name"]]]


def read_quality(root: Path) -> dict[str, bool]:
    """``quality.jsonl`` decisions of a set: file name -> kept."""
    file = root / "quality.jsonl"
    if not file.is_file():
        raise AugmentError(f"set '{root}' has no quality decisions (quality.jsonl); run "
                           f"synth.augment.quality_filter('{root}', classifier, threshold=0.5) first")
    fix = "the file is damaged, run quality_filter again"
    decided: dict[str, bool] = {}
    for n, q in _json_lines(_read_set_text(file, fix), lambda n: f"quality.jsonl line {n} of '{root}'", fix):
        name, kept = q.get("file_name"), q.get("kept")
        if not isinstance(name, str) or not isinstance(kept, bool):  # bool("false") is True: no guessing
            raise AugmentError(f"quality.jsonl line {n} of '{root}' needs a text file_name and a true/false kept "
                               f"(file_name={show(name)}, kept={show(kept)}); {fix}")
        decided[name] = kept
    return decided
