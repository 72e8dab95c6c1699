"""Property tests for the data readers: CSV/JSONL training manifests and synthetic-set folders.

The contract under test: any file content either reads (and then every file the reader hands
on lies inside the manifest's or set's folder, symlinks resolved) or raises the project's own
error (DataError / AugmentError) with a one-line message.  Any other exception (KeyError,
TypeError, UnicodeDecodeError, RecursionError, a json or csv error ...) would reach the user as
a traceback instead of ``error: ...``, so it fails these tests.

The folders are built once per module (hypothesis and function-scoped ``tmp_path`` do not mix);
each example rewrites only the manifest files inside them.
"""
from __future__ import annotations

import csv
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from synth.augment import AugmentError, SyntheticSet, SyntheticStream
from synth.data import DataError, escape_problem, escaping_entry, file_name_problem, load_manifest, read_manifest

SETTINGS = settings(max_examples=80, deadline=None, database=None,  # no .hypothesis/ in the shared tree
                    suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny tensors on a busy 2-core machine: one intra-op thread (the conftest fixture is function-scoped)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def assert_one_line(err: Exception) -> None:
    """The CLI prints ``error: <message>``: the message must be one non-empty line."""
    msg = str(err)
    assert msg.strip(), f"empty message from {type(err).__name__}"
    assert len(msg.splitlines()) == 1 and "\n" not in msg, f"multi-line message: {msg!r}"
    assert len(msg) < 2000, f"message of {len(msg)} characters"


def assert_inside(path, root) -> None:
    """Independent oracle: the fully resolved path is the folder or below it."""
    real, top = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    assert real == top or real.is_relative_to(top), f"{path} resolves to {real}, outside {top}"


def png_bytes(value: int = 90, size: int = 6) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((size, size), value, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------
# A folder with images, links in and out, a link loop and a dangling link


def populate(folder: Path, outside: Path) -> None:
    """``folder`` gets real images and every kind of link; ``outside`` is what the bad links reach."""
    (outside / "dir").mkdir(parents=True, exist_ok=True)
    (outside / "o.png").write_bytes(png_bytes(200))
    (outside / "dir" / "o.png").write_bytes(png_bytes(210))
    (folder / "sub").mkdir(parents=True)
    (folder / "shard-00000").mkdir()
    for name in ("a.png", "b.png", "sub/c.png", "shard-00000/00000000.png", "shard-00000/00000001.png"):
        (folder / name).write_bytes(png_bytes(40 if "b" in name else 90))
    os.symlink(outside / "o.png", folder / "link_out.png")
    os.symlink("a.png", folder / "link_in.png")
    os.symlink(outside / "dir", folder / "linkdir_out")
    os.symlink("sub", folder / "linkdir_in")
    os.symlink("..", folder / "sub" / "up")  # a folder link climbing out from below
    os.symlink("loop", folder / "loop")
    os.symlink("/nonexistent-synth-test/x.png", folder / "dangle")
    (folder / "notes.txt").write_text("not an image")


@pytest.fixture(scope="module")
def place(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("readers")
    populate(base / "m", base / "outside")
    return base / "m"


SEGMENTS = ["a.png", "b.png", "sub", "c.png", "..", ".", "", "link_out.png", "link_in.png", "linkdir_out",
            "linkdir_in", "up", "loop", "dangle", "o.png", "outside", "m", "notes.txt", "shard-00000",
            "00000000.png", "~", "C:", "..\\x", "\\", "a.png\x00", "é", "\u2028", " ", "x\ud800"]

# path strings: real images (so reads succeed), names built from the folder's entries (so links and '..'
# get hit), absolute and Windows spellings, free text
GOOD_NAMES = ["a.png", "b.png", "sub/c.png", "link_in.png", "linkdir_in/c.png", "./a.png"]
paths = st.one_of(
    st.sampled_from(GOOD_NAMES), st.sampled_from(GOOD_NAMES),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=5).map("/".join),
    st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=3).map(lambda p: "/" + "/".join(p)),
    st.sampled_from(["/etc/passwd", "C:\\Windows\\x.png", "\\\\server\\share\\x.png", "a.png/", "./a.png",
                     "sub/up/outside/o.png", "sub/up/m/a.png", "linkdir_out/o.png", "linkdir_in/c.png"]),
    st.text(max_size=20),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
labels = st.sampled_from(["a", "b", "a", "b", "A", "0", "1", "7", " a ", "", " ", "-1", "²", "99999999999999999999",
                          "normal", "pneumonia"])
splits = st.sampled_from(["train", "train", "val", "valid", "test", "TEST", "dev", "", " "])
COLUMNS = ["file_name", "label", "prompt", "split"]
FIELDS = {"file_name": paths, "label": labels | json_values, "prompt": st.text(max_size=10) | json_values,
          "split": splits | json_values}


@st.composite
def row_objects(draw) -> dict:
    """Mostly a plausible manifest row; one time in three a field is dropped or given any JSON value."""
    plausible = draw(st.integers(0, 4)) > 0
    row = {"file_name": draw(st.sampled_from(GOOD_NAMES) if plausible else paths),
           "label": draw(st.sampled_from(["a", "b", "normal"]) if plausible else labels)}
    for key, values in (("prompt", st.text(max_size=10)), ("split", splits)):
        if draw(st.booleans()):
            row[key] = draw(values)
    if draw(st.integers(0, 4)) == 0:
        key = draw(st.sampled_from(COLUMNS) | st.text(max_size=6))
        if key in row and draw(st.booleans()):
            del row[key]
        else:
            row[key] = draw(FIELDS.get(key, json_values))
    return row


HOSTILE_LINES = st.one_of(
    json_values.map(json.dumps),  # valid JSON, often not an object
    st.text(max_size=20),  # not JSON at all
    st.just("[" * 3000),  # nested beyond the parser's recursion limit
)


@st.composite
def jsonl_text(draw) -> bytes:
    """Lines that are mostly row objects; some blank, some hostile."""
    line = st.one_of(row_objects().map(json.dumps), row_objects().map(lambda r: json.dumps(r, ensure_ascii=False)))
    lines = draw(st.lists(line, min_size=1, max_size=6))
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 2]))):
        lines.insert(draw(st.integers(0, len(lines))), draw(HOSTILE_LINES | st.just("")))
    text = draw(st.sampled_from(["\n", "\r\n"])).join(lines)
    return text.encode("utf-8", "surrogatepass")


HEADERS = st.one_of(
    st.just(["file_name", "label"]), st.just(["file_name", "label", "prompt", "split"]),
    st.just(["label", "file_name ", " split"]),
    st.lists(st.sampled_from(COLUMNS + [" label", "file_name ", ""]) | st.text(max_size=6), max_size=6),
)
CSV_CELLS = {"file_name": paths, "label": labels, "split": splits, "prompt": st.text(max_size=8)}


@st.composite
def csv_text(draw) -> bytes:
    """A header, then rows whose cells mostly suit their column; some rows too short or too long."""
    header = draw(HEADERS)
    rows = []
    for _ in range(draw(st.integers(0, 5) | st.integers(1, 5))):
        plausible = draw(st.integers(0, 4)) > 0
        cells = {**CSV_CELLS, **({"file_name": st.sampled_from(GOOD_NAMES), "label": st.sampled_from(["a", "b"])}
                                 if plausible else {})}
        row = [draw(cells.get(col.strip(), st.text(max_size=8))) for col in header]
        if draw(st.integers(0, 4)) == 0:
            row = row[:draw(st.integers(0, len(row)))] + draw(st.lists(st.text(max_size=5), max_size=2))
        rows.append(row)
    if draw(st.integers(0, 3)):  # properly quoted
        buf = io.StringIO()
        csv.writer(buf).writerows([header, *rows])
        text = buf.getvalue()
    else:  # naive commas: unquoted commas, quotes and newlines inside fields
        text = "\n".join(",".join(r) for r in [header, *rows])
    if draw(st.integers(0, 4)) == 0:
        text = text.replace("\n", "\n\n")  # blank lines
    bom = draw(st.sampled_from(["", "", "\ufeff"]))
    return (bom + text).encode("utf-8", "surrogatepass")


# (suffix, content): mostly each reader's own format, sometimes the other's, sometimes any bytes
SUFFIXES = st.sampled_from([".csv", ".jsonl"])
manifests = st.one_of(
    st.tuples(st.just(".jsonl"), jsonl_text()), st.tuples(st.just(".csv"), csv_text()),
    st.tuples(st.just(".jsonl"), jsonl_text()), st.tuples(st.just(".csv"), csv_text()),
    st.tuples(SUFFIXES, jsonl_text() | csv_text() | st.binary(max_size=200)),
)


# ---------------------------------------------------------------------------
# The shared path helpers


@SETTINGS
@given(name=paths | json_values)
def test_a_name_passing_every_check_stays_inside(place, name):
    """file_name_problem + escape_problem + escaping_entry together let nothing out of the folder."""
    if file_name_problem(name) is None and escape_problem(name) is None and escaping_entry(place, [name]) is None:
        event("accepted")
        assert_inside(place / name, place)


# ---------------------------------------------------------------------------
# CSV/JSONL manifests


@SETTINGS
@given(manifest=manifests, split=st.sampled_from(["train", "val", "test"]),
       classes=st.none() | st.lists(st.sampled_from(["a", "b", "normal", "pneumonia"]), min_size=1, max_size=3,
                                    unique=True),
       on_error=st.sampled_from(["raise", "skip"]))
def test_manifest_reads_inside_its_folder_or_says_why_in_one_line(place, manifest, split, classes, on_error):
    suffix, data = manifest
    path = place / f"manifest{suffix}"
    path.write_bytes(data)
    try:
        m = read_manifest(path, split, classes)
    except DataError as e:
        event("refused")
        assert_one_line(e)
        return
    event(f"read, {min(len(m.files), 2)}+ files in the split")
    for f in m.files:
        assert_inside(f, place)
    assert len(m.labels) == len(m.files) == len(m.prompts)
    assert all(0 <= k < len(m.classes) for k in m.labels)
    try:
        s = load_manifest(path, split, 8, on_error, classes)
    except DataError as e:
        assert_one_line(e)
        return
    assert s.images.shape[1:] == (1, 8, 8) and len(s) + s.skipped == len(m.files)


# ---------------------------------------------------------------------------
# Synthetic sets: manifest.json, metadata.jsonl, quality.jsonl


GOOD_MANIFEST = {"format": "imagefolder", "n_requested": 2, "n_done": 2, "shard_size": 8,
                 "counts_per_label": {"normal": 1, "pneumonia": 1}, "model": {"weights_sha256": "abc"},
                 "label_schema": {"classes": ["normal", "pneumonia"], "domains": []}}
GOOD_ROWS = [{"file_name": "shard-00000/00000000.png", "label": "normal"},
             {"file_name": "shard-00000/00000001.png", "label": "pneumonia"}]


@st.composite
def set_manifests(draw) -> bytes:
    """Mostly a real manifest with some fields replaced, dropped or added; sometimes any JSON or bytes."""
    kind = draw(st.sampled_from(["good", "edited", "edited", "json", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=100))
    if kind == "json":
        return json.dumps(draw(json_values)).encode()
    m = dict(GOOD_MANIFEST)
    if kind == "good":
        return json.dumps(m).encode()
    for key in draw(st.lists(st.sampled_from(sorted(GOOD_MANIFEST)), max_size=3, unique=True)):
        if draw(st.booleans()):
            del m[key]
        else:
            m[key] = draw(json_values | st.integers(min_value=0, max_value=10**15))
    return json.dumps(m).encode()


@st.composite
def set_rows(draw) -> bytes:
    """metadata.jsonl: the real rows, some replaced by hostile ones."""
    lines = [json.dumps(r) for r in GOOD_ROWS]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        bad = draw(st.one_of(row_objects().map(json.dumps), json_values.map(json.dumps), st.text(max_size=10),
                             st.fixed_dictionaries({"file_name": paths, "label": labels}).map(json.dumps)))
        lines.insert(draw(st.integers(0, len(lines))), bad)
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@st.composite
def quality_rows(draw) -> bytes | None:
    if draw(st.booleans()):
        return None  # no quality.jsonl
    lines = [json.dumps({"file_name": r["file_name"], "kept": draw(st.booleans() | json_values)}) for r in GOOD_ROWS]
    if draw(st.booleans()):
        lines.append(draw(st.one_of(row_objects().map(json.dumps), st.text(max_size=10), json_values.map(json.dumps))))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@SETTINGS
@given(manifest=set_manifests(), rows=set_rows(), quality=quality_rows(), keep=st.booleans(),
       bad_utf8=st.sampled_from([False, False, False, True]))
def test_synthetic_set_reads_inside_its_folder_or_says_why_in_one_line(place, manifest, rows, quality, keep,
                                                                       bad_utf8):
    (place / "manifest.json").write_bytes(manifest)
    (place / "metadata.jsonl").write_bytes(rows + (b"\n\xff\xfe" if bad_utf8 else b""))
    (place / "quality.jsonl").unlink(missing_ok=True)
    if quality is not None:
        (place / "quality.jsonl").write_bytes(quality)
    try:
        ds = SyntheticSet(place, quality="keep" if keep else None)
        for r in ds.rows:
            assert_inside(place / r["file_name"], place)
        for i in range(min(len(ds), 4)):
            ds[i]
        list(SyntheticStream(place))
        event("read every image")
    except AugmentError as e:
        event("refused")
        assert_one_line(e)


# ---------------------------------------------------------------------------
# Webdataset shards: member names and the bytes inside them


member_names = st.one_of(
    st.sampled_from(["00000000.png", "00000000.json", "00000001.png", "00000001.json", "../x.png", "/abs.json",
                     "a/b.c.json", ".json", "x.tar.png", "00000000.png.json"]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12),
)
member_data = st.one_of(
    st.just(png_bytes()), st.binary(max_size=40),
    st.sampled_from(["normal", "pneumonia", None, 3]).map(lambda lab: json.dumps({"label": lab}).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@st.composite
def shard_members(draw) -> list[tuple[str, bytes]]:
    """Samples as synth writes them (<key>.png + <key>.json), some damaged, some stray members in between."""
    members = []
    for k in range(draw(st.integers(0, 4))):
        label = draw(st.sampled_from(["normal", "pneumonia"]))
        members += [(f"{k:08d}.png", png_bytes(40 if label == "normal" else 200)),
                    (f"{k:08d}.json", json.dumps({"label": label, "index": k}).encode())]
    for _ in range(draw(st.sampled_from([0, 0, 1, 2]))):
        at = draw(st.integers(0, len(members)))
        if members and draw(st.booleans()) and at < len(members):  # damage one member's bytes
            members[at] = (members[at][0], draw(member_data))
        else:
            members.insert(at, (draw(member_names), draw(member_data)))
    return members


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture(scope="module")
def wds(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("wds")


@SETTINGS
@given(members=shard_members(), raw=st.none() | st.binary(max_size=600),  # raw: the whole tar replaced by any bytes
       extra=st.sampled_from([0, 0, 1, -1]), shard_size=st.just(8) | st.integers(0, 8) | json_values)
def test_webdataset_stream_reads_or_says_why_in_one_line(wds, members, raw, extra, shard_size):
    n = max(0, len({name.partition(".")[0] for name, _ in members}) + extra)  # samples promised by the manifest
    manifest = {**GOOD_MANIFEST, "format": "webdataset", "n_requested": n, "n_done": n, "shard_size": shard_size}
    (wds / "manifest.json").write_text(json.dumps(manifest))
    (wds / "shard-00000.tar").write_bytes(raw if raw is not None else tar_of(members))
    try:
        for x, y in SyntheticStream(wds):
            assert x.ndim == 3 and y in (0, 1)
            event("yielded an image")
    except AugmentError as e:
        event("refused")
        assert_one_line(e)
