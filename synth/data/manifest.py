"""CSV / JSONL manifests: file_name, label (name or index), optional prompt and split; every row checked."""
from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from synth.data.base import DataError, ImageSet
from synth.data.base import MAX_CLASS_INDEX
from synth.data.sources import _read_files
from synth.data.text import describe, escape_problem, escaping_entry, file_name_problem, show


SPLIT_NAMES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}


JSONL_EXAMPLE = '{"file_name": "a.png", "label": "normal"}'


@dataclass
class ManifestRow:
    """One checked manifest row; ``line`` (1-based, in the file) names it in messages."""

    line: int
    file_name: str
    label: str  # stripped text: a class name, or a class index written in digits
    prompt: str
    split: str  # train | val | test
    extra: dict = field(default_factory=dict)  # the manifest's other columns, as text


@dataclass
class ManifestSplit:
    """One split of a checked manifest, not yet decoded: image paths inside the manifest's folder, label ids."""

    files: list[Path]
    labels: list[int]
    classes: list[str]
    prompts: list[str]
    columns: dict[str, list[str]] = field(default_factory=dict)


def _manifest_text(path: Path) -> str:
    """The manifest as text (UTF-8, a BOM dropped); one-line DataError for folders, permissions and bad bytes."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DataError(f"manifest '{path}' is a folder, not a file; pass the .csv/.jsonl file itself") from None
    except PermissionError:
        raise DataError(f"manifest '{path}' is not readable (permission denied); fix its permissions "
                        f"(e.g. chmod +r) or pass a readable copy") from None
    except OSError as e:
        raise DataError(f"cannot read manifest '{path}' ({e.strerror or type(e).__name__}); check the path") from None
    try:
        return data.decode("utf-8-sig")  # Excel writes a BOM before the first column name
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise DataError(f"manifest '{path}' line {line}: byte 0x{data[e.start]:02x} is not UTF-8 text; "
                        f"save the manifest as UTF-8") from None


def _csv_header(path: Path, cells: list[str], line: int) -> list[str]:
    """Column names (stripped: 'file_name, label' is a common slip); a repeated name is an error."""
    names = [c.strip() for c in cells]
    repeated = [n for n, c in Counter(names).items() if c > 1]
    if repeated:
        raise DataError(f"manifest '{path}' line {line}: column {show(repeated[0])} appears {names.count(repeated[0])} "
                        f"times in the header {show(names, 200)}; rename or remove the repeats")
    return names


def _csv_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(columns, [(line, row)]) of a CSV manifest.  Blank lines are skipped; a short row's missing
    trailing fields are empty; a row with more fields than the header (an unquoted comma) is an error."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True)  # strict: an unclosed quote is an error, not
    # a field that silently swallows the rest of the file
    header: list[str] | None = None
    rows: list[tuple[int, dict]] = []
    try:
        for cells in reader:
            if not any(c.strip() for c in cells):
                continue
            if header is None:
                header = _csv_header(path, cells, reader.line_num)
            elif len(cells) > len(header):
                raise DataError(f"manifest '{path}' line {reader.line_num}: {len(cells)} fields but the header has "
                                f"{len(header)} columns; quote fields that contain commas")
            else:
                rows.append((reader.line_num, dict(zip(header, cells + [""] * (len(header) - len(cells))))))
    except csv.Error as e:
        raise DataError(f"manifest '{path}' line {reader.line_num}: not valid CSV ({e}); check the quotes in and "
                        f"before that line") from None
    if header is None:
        raise DataError(f"manifest '{path}' is empty; write a header line 'file_name,label' and one row per image")
    return header, rows


def json_object_lines(text: str) -> Iterator[tuple[int, Any, str | None]]:
    """(line number, value, problem) for each non-blank line of a JSONL text; ``problem`` is None for a JSON
    object, else what the line is instead ("not JSON", "a JSON list ...").  Callers raise their own error."""
    for n, line in enumerate(text.split("\n"), 1):  # only '\n' ends a line: a JSON string may hold U+2028
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):  # RecursionError: '[[[[...' nested beyond the parser's stack
            yield n, None, "not JSON"
            continue
        yield n, row, None if isinstance(row, dict) else f"{describe(row)}, not a JSON object"


def _jsonl_rows(path: Path, text: str) -> tuple[list[str], list[tuple[int, dict]]]:
    """(keys seen, [(line, row)]) of a JSONL manifest; every non-blank line must be one JSON object."""
    rows: list[tuple[int, dict]] = []
    keys: dict[str, None] = {}
    for n, row, problem in json_object_lines(text):
        if problem:
            what = "not valid JSON; each line must be one JSON object" if problem == "not JSON" else \
                f"{problem}; each line must be one object"
            raise DataError(f"manifest '{path}' line {n}: {what} like {JSONL_EXAMPLE}")
        rows.append((n, row))
        keys.update(dict.fromkeys(row))
    return list(keys), rows


def _require_columns(path: Path, columns: list[str], need_label: bool = True) -> None:
    """Without a ``label`` column every image would be one class named '': refuse, naming what is there
    (a pool of unlabelled images needs ``file_name`` only)."""
    wanted = [("file_name", "each image's path relative to the manifest's folder")]
    if need_label:
        wanted.append(("label", "each image's class (a name, or an index 0..K-1)"))
    for col, holding in wanted:
        if col not in columns:
            raise DataError(f"manifest '{path}' has no '{col}' column (columns found: {show(sorted(columns), 200)}); "
                            f"add a '{col}' column holding {holding}")


def _row_file_name(path: Path, where: str, name: Any) -> str:
    """A row's file name, relative and inside the manifest's folder by spelling (links: :func:`escaping_entry`)."""
    problem = file_name_problem(name)
    if problem:
        raise DataError(f"{where}: file_name {problem}; write the image's path relative to the manifest's folder")
    problem = escape_problem(name)
    if problem:
        raise DataError(f"{where}: file_name {show(name)} {problem}; file names must be relative to the manifest's "
                        f"folder '{path.parent}' and stay inside it (put the manifest next to the images)")
    return name


def _row_label(where: str, name: str, value: Any, allow_empty: bool = False) -> str:
    """A row's label as stripped text: a class name, or a class index (JSON number or digits); '' for an
    unlabelled row when ``allow_empty`` (``data.unlabelled: source``)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        if allow_empty:
            return ""
        raise DataError(f"{where}: {show(name)} has an empty label; fill in its class (a name or an index), "
                        f"remove the row, or set data.unlabelled=source to train on unlabelled rows")
    if isinstance(value, bool) or not isinstance(value, (str, int)) or (isinstance(value, int) and value < 0):
        raise DataError(f"{where}: label of {show(name)} is {describe(value)}; write a class name "
                        f"(text) or a class index (a whole number >= 0)")
    return value.strip() if isinstance(value, str) else str(value)


RESERVED_COLUMNS = ("file_name", "label", "prompt", "split")


def _column_text(value: Any) -> str:
    """Any other column's value as text for caption templates: null is '', numbers and lists as JSON writes them."""
    if value is None:
        return ""
    return value.strip() if isinstance(value, str) else json.dumps(value)


def _row_text(where: str, name: str, column: str, value: Any) -> str:
    """An optional text field (prompt): missing or null is ''."""
    if value is None or isinstance(value, str):
        return value or ""
    raise DataError(f"{where}: {column} of {show(name)} is {describe(value)}; write it as text "
                    f"or leave it empty")


def _row_split(where: str, name: str, value: Any) -> str:
    """A row's split, normalised to train | val | test; missing, null or empty means train."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return "train"
    split = SPLIT_NAMES.get(value.strip().lower()) if isinstance(value, str) else None
    if split is None:  # a silently unknown split would drop the row from every split
        raise DataError(f"{where}: split {show(value)} of {show(name)} is not train, val or test; fix the row "
                        f"(valid/validation also mean val)")
    return split


def _manifest_row(path: Path, line: int, raw: dict, allow_empty: bool = False) -> ManifestRow:
    """One raw CSV/JSONL row -> a checked :class:`ManifestRow` (label '' when unlabelled and ``allow_empty``)."""
    where = f"manifest '{path}' line {line}"
    name = _row_file_name(path, where, raw.get("file_name"))
    return ManifestRow(line, name, _row_label(where, name, raw.get("label"), allow_empty),
                       _row_text(where, name, "prompt", raw.get("prompt")), _row_split(where, name, raw.get("split")),
                       {k: _column_text(v) for k, v in raw.items() if k not in RESERVED_COLUMNS})


def _read_manifest_rows(path: Path, unlabelled: bool = False) -> list[ManifestRow]:
    """Every row of a CSV/JSONL manifest, checked: named columns, a label per row, file names inside the
    manifest's folder (spelling and symlinks).  Anything else is a one-line DataError naming the row.
    ``unlabelled``: rows may have an empty label (label ''), and a manifest without a label column is a pool."""
    text = _manifest_text(path)
    columns, raw = _csv_rows(path, text) if path.suffix.lower() == ".csv" else _jsonl_rows(path, text)
    if columns:  # an empty JSONL has none: reported as an empty split
        _require_columns(path, columns, need_label=not unlabelled)
    rows = [_manifest_row(path, line, r, unlabelled) for line, r in raw]
    hit = escaping_entry(path.parent, [r.file_name for r in rows])
    if hit:
        k, why = hit
        raise DataError(f"manifest '{path}' line {rows[k].line}: file_name {show(rows[k].file_name)} {why} the "
                        f"manifest's folder '{path.parent}'; copy the image into that folder instead of linking it")
    return rows


def _is_index(label: str) -> bool:
    """ASCII digits only: '²'.isdigit() is True but int('²') fails."""
    return label.isascii() and label.isdigit()


def _index_value(label: str) -> int:
    """The value of a digit label, capped at 10**9: int() of a 5000-digit string raises, and any index that
    large is refused anyway."""
    digits = label.lstrip("0") or "0"
    return int(digits) if len(digits) <= 9 else 10**9


def _class_names(path: Path, rows: list[ManifestRow], classes: list[str] | None) -> list[str]:
    """``classes`` when given; else from every row's label, all splits together (so every split numbers the
    classes alike): class_0..class_K when all labels are indices, else the sorted names."""
    if classes:
        return list(classes)
    found = sorted({r.label for r in rows})
    if found and all(_is_index(x) for x in found):
        top = max(rows, key=lambda r: _index_value(r.label))
        if _index_value(top.label) > MAX_CLASS_INDEX:
            raise DataError(f"manifest '{path}' line {top.line}: label {show(top.label)} of {show(top.file_name)} is a "
                            f"class index above {MAX_CLASS_INDEX}; labels are class indices 0..K-1 or class names")
        return [f"class_{k}" for k in range(_index_value(top.label) + 1)]
    first: dict[str, str] = {}
    for name in found:  # labels match case-insensitively: 'A' and 'a' would be one class, the other left empty
        other = first.setdefault(name.lower(), name)
        if other != name:
            raise DataError(f"manifest '{path}': labels {show(other)} and {show(name)} differ only in case; spell "
                            f"each class one way")
    return found


def _label_ids(path: Path, rows: list[ManifestRow], names: list[str]) -> list[int]:
    """Class id of every row: by name (case-insensitive), else as an index into ``names``."""
    ids_by_name: dict[str, int] = {}
    for k, c in enumerate(names):
        ids_by_name.setdefault(c.lower(), k)
    ids = []
    for r in rows:
        k = ids_by_name.get(r.label.lower())
        if k is None and _is_index(r.label) and _index_value(r.label) < len(names):
            k = _index_value(r.label)
        if k is None:
            raise DataError(f"manifest '{path}' line {r.line}: label {show(r.label)} of {show(r.file_name)} is not in "
                            f"the schema {show(names, 200)}; fix the row or labels.classes")
        ids.append(k)
    return ids


def read_manifest(path: Path, split: str, classes: list[str] | None = None, skip_unlabelled: bool = False) -> ManifestSplit:
    """The rows of ``split`` of a CSV/JSONL manifest, checked but not decoded (every row of every split is
    checked, so a bad test row fails training too).  Raises :class:`DataError` (one line, naming the row).
    ``skip_unlabelled``: rows with an empty label are left out (they are the pool, ``data.unlabelled: source``)."""
    rows = _read_manifest_rows(path, skip_unlabelled)
    rows = [r for r in rows if r.label] if skip_unlabelled else rows
    names = _class_names(path, rows, classes)
    ids = _label_ids(path, rows, names)
    mine = [k for k, r in enumerate(rows) if r.split == split]
    names_of_columns = list(dict.fromkeys(c for r in rows for c in r.extra))  # in the order the manifest has them
    columns = {c: [rows[k].extra.get(c, "") for k in mine] for c in names_of_columns}
    return ManifestSplit([path.parent / rows[k].file_name for k in mine], [ids[k] for k in mine], names,
                         [rows[k].prompt for k in mine], columns)


def load_manifest(path: Path, split: str, size: int, on_error: str, classes: list[str] | None,
                  channels="auto", skip_unlabelled: bool = False) -> ImageSet:
    """CSV/JSONL with ``file_name``, ``label`` (name or index), optional ``prompt`` and ``split``."""
    m = read_manifest(path, split, classes, skip_unlabelled)
    images, kept, notes = _read_files(m.files, size, on_error, channels)
    prompts = [m.prompts[i] for i in kept]
    columns = {c: [v[i] for i in kept] for c, v in m.columns.items()}
    return ImageSet(images, torch.tensor([m.labels[i] for i in kept], dtype=torch.long),
                    m.classes, prompts=prompts if any(prompts) else None, source=str(path),
                    skipped=len(m.files) - len(kept), notes=notes, columns=columns or None)


def unlabelled_manifest_files(path: Path, only_empty: bool) -> list[Path]:
    """Image paths of a manifest's unlabelled pool (train split): rows with an empty label when ``only_empty``
    (the rest are labelled training rows), else every train row, its label (if any) ignored."""
    rows = _read_manifest_rows(path, unlabelled=True)
    return [path.parent / r.file_name for r in rows if r.split == "train" and (not only_empty or not r.label)]
