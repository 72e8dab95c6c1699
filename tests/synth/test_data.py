import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from synth.config import load_config
from synth.data import DataError, fingerprint, load_split, pad_to_square, phantom_set, prepare, to_grey
from tests.conftest import KERMANY, PNEUMONIA_NPZ, need


def data_cfg(name, *extra):
    return load_config(None, [f"data.name={name}", *extra]).data


def test_pad_to_square_then_resize_keeps_aspect():
    a = np.full((20, 40), 200, np.uint8)  # wide image
    sq = pad_to_square(a)
    assert sq.shape == (40, 40)
    assert sq[:10].max() == 0 and sq[30:].max() == 0 and sq[10:30].min() == 200
    out = prepare(a, 16)
    assert out.shape == (16, 16) and out.dtype == np.uint8
    assert out[0].max() < 30 and out[8].min() > 150  # black bars top, content middle: no stretch


def test_grey_stays_grey():
    g = np.random.default_rng(0).integers(0, 256, (8, 8), dtype=np.uint8)
    rgb = np.stack([g, g, g], -1)
    assert np.array_equal(to_grey(rgb), g)
    assert np.array_equal(prepare(g, 8), g)  # uint8 at target size: untouched


def test_sixteen_bit_scaled_to_uint8():
    a = np.linspace(0, 4000, 64 * 64).reshape(64, 64).astype(np.uint16)
    out = prepare(a, 32)
    assert out.dtype == np.uint8 and out.min() <= 2 and out.max() >= 253


def test_phantom_is_deterministic_and_labelled():
    a, b = phantom_set(8, 32, 0, "train"), phantom_set(8, 32, 0, "train")
    assert torch.equal(a.images, b.images) and a.images.shape == (8, 1, 32, 32)
    assert a.labels.tolist() == [0, 1] * 4 and a.classes == ["normal", "pneumonia"]
    assert not torch.equal(a.images, phantom_set(8, 32, 1, "train").images)


def test_medmnist_npz_splits():
    path = need(PNEUMONIA_NPZ)
    train = load_split(data_cfg(str(path), "data.resolution=32"), "train")
    assert len(train) == 4708 and train.images.shape[1:] == (1, 32, 32)
    assert train.classes == ["normal", "pneumonia"] and int((train.labels == 0).sum()) == 1214
    val = load_split(data_cfg(str(path), "data.val_max_items=null"), "val")
    assert len(val) == 524
    sub = load_split(data_cfg(str(path), "data.max_items=100"), "train")
    assert len(sub) == 100 and 0 < int((sub.labels == 0).sum()) < 50  # stratified
    assert fingerprint(sub) == fingerprint(load_split(data_cfg(str(path), "data.max_items=100"), "train"))


def test_missing_named_dataset_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SYNTH_DATA_DIR", raising=False)
    with pytest.raises(DataError, match=r"not found.*pass a path.*cache dir.*download"):
        load_split(data_cfg("breastmnist", f"data.cache_dir={tmp_path}", "data.download=false"), "train")


def test_cache_dir_resolution(tmp_path, monkeypatch):
    need(PNEUMONIA_NPZ)
    monkeypatch.setenv("SYNTH_DATA_DIR", str(PNEUMONIA_NPZ.parent))
    s = load_split(data_cfg("pneumoniamnist", "data.download=false", "data.max_items=10"), "train")
    assert len(s) == 10


def test_missing_path():
    with pytest.raises(DataError, match="does not exist"):
        load_split(data_cfg("/no/such/folder"), "train")


def _mini_folder(tmp_path, n=3):
    src = need(KERMANY) / "train"
    root = tmp_path / "xr"
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir(parents=True)
        for f in sorted((src / cls).glob("*.jpeg"))[:n]:
            shutil.copy(f, root / cls / f.name)
    return root


def test_image_folder_and_corrupt_file(tmp_path):
    root = _mini_folder(tmp_path, 4)
    s = load_split(data_cfg(str(root), "data.resolution=64", "data.val_fraction=0.25"), "train")
    v = load_split(data_cfg(str(root), "data.resolution=64", "data.val_fraction=0.25"), "val")
    assert len(s) + len(v) == 8 and s.classes == ["NORMAL", "PNEUMONIA"]
    assert s.images.shape[1:] == (1, 64, 64) and s.images.dtype == torch.uint8
    (root / "NORMAL" / "broken.jpeg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot read image '.*broken.jpeg'.*data.on_error=skip"):
        load_split(data_cfg(str(root)), "train")
    skipped = load_split(data_cfg(str(root), "data.on_error=skip", "data.val_fraction=0.25"), "train")
    assert skipped.skipped == 1 and len(skipped) == 6


def test_image_folder_labels_must_match_schema(tmp_path):
    root = _mini_folder(tmp_path, 1)
    with pytest.raises(DataError, match=r"not in labels.classes"):
        load_split(data_cfg(str(root)), "train", classes=["NORMAL", "COVID"])


def test_manifest_csv_and_jsonl(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((10, 20), 60 * i, np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "m.csv").write_text("file_name,label,prompt\n" + "".join(
        f"im{i}.png,{'a' if i % 2 else 'b'},{'free text ' + str(i) if i == 3 else ''}\n" for i in range(4)))
    s = load_split(data_cfg(str(tmp_path / "m.csv"), "data.resolution=16", "data.val_fraction=0.25"), "train")
    assert s.classes == ["a", "b"] and len(s) == 3
    rows = [{"file_name": f"im{i}.png", "label": "x" if i < 2 else "y", "prompt": f"p{i}", "split": "train" if i < 3 else "val"}
            for i in range(4)]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    s = load_split(data_cfg(str(tmp_path / "m.jsonl"), "data.resolution=16"), "train")
    assert s.prompts == ["p0", "p1", "p2"] and s.labels.tolist() == [0, 0, 1]
    assert len(load_split(data_cfg(str(tmp_path / "m.jsonl"), "data.resolution=16"), "val")) == 1
    with pytest.raises(DataError, match=r"label 'x' of 'im0.png' is not in the schema"):
        load_split(data_cfg(str(tmp_path / "m.jsonl")), "train", classes=["y", "z"])


def test_dicom_folder(tmp_path):
    pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    for cls, name in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        (tmp_path / "d" / cls).mkdir(parents=True)
        for k in range(2):
            shutil.copy(get_testdata_file(name), tmp_path / "d" / cls / f"{k}.dcm")
    s = load_split(data_cfg(str(tmp_path / "d"), "data.resolution=32", "data.val_fraction=0.25"), "train")
    assert s.images.shape[1:] == (1, 32, 32) and s.classes == ["ct", "mr"]
    assert s.images.float().std() > 10  # windowed to a real intensity range, not flat


def test_empty_dataset(tmp_path):
    (tmp_path / "m.csv").write_text("file_name,label\n")
    with pytest.raises(DataError, match="is empty"):
        load_split(data_cfg(str(tmp_path / "m.csv"), "data.val_fraction=0.5"), "train")


def test_npz_without_labels_is_a_one_line_error(tmp_path):
    np.savez(tmp_path / "x.npz", train_images=np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(DataError, match="no 'train_labels'"):
        load_split(data_cfg(str(tmp_path / "x.npz")), "train")


def test_dicom_monochrome1_is_windowed_then_inverted(tmp_path):
    """CR/DX MONOCHROME1: the window is in stored units, so window first, then invert (hand-computed)."""
    pytest.importorskip("pydicom")
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    from synth.data import read_image

    stored = np.array([[0, 1000], [1500, 4000]], dtype=np.uint16)
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    ds = FileDataset(str(tmp_path / "cr.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows, ds.Columns = stored.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME1"
    ds.WindowCenter, ds.WindowWidth = 1000, 1000  # window [500, 1500] in stored units
    ds.PixelData = stored.tobytes()
    ds.save_as(str(tmp_path / "cr.dcm"), enforce_file_format=True)
    got = read_image(tmp_path / "cr.dcm", 2)
    lo, hi = 500.0, 1500.0
    want = 255 - np.clip(np.round((stored.astype(float) - lo) / (hi - lo) * 255), 0, 255)
    assert got.tolist() == want.astype(np.uint8).tolist()  # [[255, 128], [0, 0]]: 0 stored is bright


# ---------------------------------------------------------------------------
# Manifests: missing columns, paths outside the folder, hostile content (one-line DataErrors)


def _manifest_folder(tmp_path):
    """``tmp_path/m`` with images a.png, b.png and sub/c.png; ``tmp_path/outside.png`` next to it."""
    root = tmp_path / "m"
    (root / "sub").mkdir(parents=True)
    for name, v in (("a.png", 40), ("b.png", 200), ("sub/c.png", 120)):
        Image.fromarray(np.full((10, 20), v, np.uint8)).save(root / name)
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(tmp_path / "outside.png")
    return root


def _manifest_error(path, split="train", classes=None) -> str:
    from synth.data import load_manifest

    with pytest.raises(DataError) as e:
        load_manifest(path, split, 16, "raise", classes)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    return msg


def test_manifest_without_label_column_is_an_error(tmp_path):
    """Before: every image became one class named '' and training ran."""
    root = _manifest_folder(tmp_path)
    (root / "m.csv").write_text("file_name,prompt\na.png,x\nb.png,y\n")
    msg = _manifest_error(root / "m.csv")
    assert "m.csv' has no 'label' column (columns found: ['file_name', 'prompt']); add a 'label' column" in msg
    assert "class (a name, or an index" in msg
    (root / "m.jsonl").write_text('{"file_name": "a.png"}\n{"file_name": "b.png", "prompt": "p"}\n')
    assert "has no 'label' column (columns found: ['file_name', 'prompt'])" in _manifest_error(root / "m.jsonl")
    with pytest.raises(DataError, match="has no 'label' column"):  # through load_split (the CLI's path) too
        load_split(data_cfg(str(root / "m.csv")), "train")


def test_manifest_empty_label_names_the_row(tmp_path):
    """Before: an empty cell made a class '' and a JSON null a class 'None'."""
    root = _manifest_folder(tmp_path)
    (root / "m.csv").write_text("file_name,label\na.png,x\n\nb.png,  \n")
    assert "m.csv' line 4: 'b.png' has an empty label; fill in its class" in _manifest_error(root / "m.csv")
    (root / "m.jsonl").write_text('{"file_name": "a.png", "label": "x"}\n{"file_name": "b.png", "label": null}\n')
    assert "m.jsonl' line 2: 'b.png' has an empty label" in _manifest_error(root / "m.jsonl")
    (root / "k.jsonl").write_text('{"file_name": "a.png", "label": "x"}\n{"file_name": "b.png"}\n')
    assert "k.jsonl' line 2: 'b.png' has an empty label" in _manifest_error(root / "k.jsonl")


@pytest.mark.parametrize("name, problem", [
    ("ABS", "is absolute"),
    ("../outside.png", "contains '..'"),
    ("sub/../../outside.png", "contains '..'"),
    ("sub\\..\\..\\outside.png", "contains '..'"),
    ("C:\\images\\a.png", "is absolute"),
    ("link.png", "is a symlink resolving outside the manifest's folder"),
    ("linkdir/outside.png", "is in folder 'linkdir', which a symlink leads outside the manifest's folder"),
    ("sub/up/outside.png", "is in folder 'sub/up', which a symlink leads outside"),
])
def test_manifest_paths_must_stay_inside_its_folder(tmp_path, name, problem):
    """Before: absolute paths, '..' and links leading anywhere on the disk were read as training images."""
    root = _manifest_folder(tmp_path)
    os.symlink(tmp_path / "outside.png", root / "link.png")  # real symlinks pointing outside
    os.symlink(tmp_path, root / "linkdir")
    os.symlink("../..", root / "sub" / "up")
    name = str(tmp_path / "outside.png") if name == "ABS" else name
    (root / "m.jsonl").write_text(json.dumps({"file_name": "a.png", "label": "x"}) + "\n"
                                  + json.dumps({"file_name": name, "label": "y", "split": "test"}) + "\n")
    msg = _manifest_error(root / "m.jsonl")  # a bad test row fails the train split too: every row is checked
    assert f"m.jsonl' line 2: file_name {name!r} {problem}" in msg and str(root) in msg


def test_manifest_links_inside_its_folder_are_fine(tmp_path):
    root = _manifest_folder(tmp_path)
    os.symlink("a.png", root / "alias.png")
    os.symlink("sub", root / "subalias")
    (root / "m.csv").write_text("file_name,label\nalias.png,x\nsubalias/c.png,y\n./b.png,y\n")
    from synth.data import load_manifest

    s = load_manifest(root / "m.csv", "train", 16, "raise", None)
    assert len(s) == 3 and s.labels.tolist() == [0, 1, 1]


@pytest.mark.parametrize("content, message", [
    (b"[1, 2]\n", "line 1: a list [1, 2], not a JSON object; each line must be one object like"),
    (b'{"file_name": "a.png", "label": "x"}\n"x"\n', "line 2: a string 'x', not a JSON object"),
    (b"3\n", "line 1: a number 3, not a JSON object"),
    (b'{"file_name": 3, "label": "x"}\n', "line 1: file_name is a number 3, not a path string"),
    (b'{"file_name": null, "label": "x"}\n', "line 1: file_name is missing (or null)"),
    (b'{"file_name": ["a.png"], "label": "x"}\n', "line 1: file_name is a list ['a.png'], not a path string"),
    (b'{"file_name": "a\\u0000.png", "label": "x"}\n', "file_name 'a\\x00.png' contains a control character"),
    (b'{"file_name": "a\\n.png", "label": "x"}\n', "file_name 'a\\n.png' contains a control character"),
    (b'{"file_name": "a\\ud800.png", "label": "x"}\n', "holds an unpaired surrogate"),
    (b'{"file_name": "a.png", "label": 1.5}\n', "line 1: label of 'a.png' is a number 1.5; write a class name"),
    (b'{"file_name": "a.png", "label": true}\n', "label of 'a.png' is a boolean True"),
    (b'{"file_name": "a.png", "label": -1}\n', "label of 'a.png' is a number -1"),
    (b'{"file_name": "a.png", "label": "x", "prompt": {"a": 1}}\n', "prompt of 'a.png' is an object"),
    (b'{"file_name": "a.png", "label": "x", "split": "dev"}\n', "split 'dev' of 'a.png' is not train, val or test"),
    (b'{"file_name": "a.png", "label": "x", "split": 1}\n', "split 1 of 'a.png' is not train, val or test"),
    (b"[" * 100000 + b"\n", "line 1: not valid JSON"),
    (b'{"file_name": "a.png", "label": "x"}\n{"file_name": "b.png", "label": "caf\xe9"}\n',
     "line 2: byte 0xe9 is not UTF-8 text; save the manifest as UTF-8"),
    (b'{"file_name": "a.png", "label": "A"}\n{"file_name": "b.png", "label": "a"}\n',
     "labels 'A' and 'a' differ only in case"),
    (b'{"file_name": "a.png", "label": 0}\n{"file_name": "b.png", "label": 123456789012345678901234567890}\n',
     "line 2: label '123456789012345678901234567890' of 'b.png' is a class index above 9999"),
])
def test_hostile_jsonl_manifests_are_one_line_errors(tmp_path, content, message):
    """Before: TypeError / UnicodeDecodeError / RecursionError tracebacks, or silently wrong classes."""
    root = _manifest_folder(tmp_path)
    (root / "m.jsonl").write_bytes(content)
    msg = _manifest_error(root / "m.jsonl")
    assert message in msg and "m.jsonl'" in msg


@pytest.mark.parametrize("content, message", [
    (b"file_name,label,label\na.png,x,y\n", "line 1: column 'label' appears 2 times in the header"),
    (b"file_name,label\na.png,x,extra\n", "line 2: 3 fields but the header has 2 columns; quote fields that contain"),
    (b"file_name,label\na.png,caf\xe9\n", "line 2: byte 0xe9 is not UTF-8 text"),
    (b"", "is empty; write a header line 'file_name,label'"),
    (b"\n\n", "is empty; write a header line"),
    (b"file_name,label\n/etc/passwd,x\n", "line 2: file_name '/etc/passwd' is absolute"),
    (b"file_name,label\na.png,\xc2\xb2x\nb.png,0\n", None),  # a name with a superscript: fine (no int('²'))
    (b"file_name,label\na.png,99999999999999999999999\n", "is a class index above 9999"),
    (b'file_name,label\n"a.png,x\nb.png,y\n', "line 3: not valid CSV (unexpected end of data); check the quotes"),
    (b'file_name,label\n"a.png"x,y\n', "line 2: not valid CSV"),
])
def test_hostile_csv_manifests_are_one_line_errors(tmp_path, content, message):
    root = _manifest_folder(tmp_path)
    (root / "m.csv").write_bytes(content)
    if message is None:
        from synth.data import load_manifest

        assert load_manifest(root / "m.csv", "train", 16, "raise", None).classes == ["0", "²x"]
        return
    assert message in _manifest_error(root / "m.csv")


def test_manifest_bom_blank_lines_spaces_and_line_separators_read(tmp_path):
    """Before: a BOM hid the first column ('\\ufefffile_name'); a U+2028 inside a JSON string split the line."""
    from synth.data import load_manifest

    root = _manifest_folder(tmp_path)
    (root / "m.csv").write_bytes("\ufefffile_name, label ,split\r\n\r\na.png, x ,train\r\n,,\r\nb.png,y,\r\n"
                                 "sub/c.png,y,VALID\r\n".encode())
    s = load_manifest(root / "m.csv", "train", 16, "raise", None)
    assert s.classes == ["x", "y"] and s.labels.tolist() == [0, 1]  # empty split: train; 'VALID' is val
    assert len(load_manifest(root / "m.csv", "val", 16, "raise", None)) == 1
    (root / "m.jsonl").write_text('{"file_name": "a.png", "label": "x", "prompt": "left\u2028right"}\r\n\n   \n'
                                  '{"file_name": "b.png", "label": 1}\n', encoding="utf-8")
    s = load_manifest(root / "m.jsonl", "train", 16, "raise", ["x", "y"])
    assert s.prompts == ["left\u2028right", ""] and s.labels.tolist() == [0, 1]


def test_manifest_splits_share_one_class_list(tmp_path):
    """Before: each split named its classes from its own rows, so a test split without class 'a' numbered 'b'
    as 0 (and translate concatenated splits with different numberings); and a split column present only
    after the first row was ignored, training on the val rows."""
    from synth.data import load_manifest

    root = _manifest_folder(tmp_path)
    rows = [{"file_name": "a.png", "label": "a"}, {"file_name": "b.png", "label": "b", "split": "val"},
            {"file_name": "sub/c.png", "label": "b", "split": "test"}]
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    test = load_manifest(root / "m.jsonl", "test", 16, "raise", None)
    assert test.classes == ["a", "b"] and test.labels.tolist() == [1]
    assert len(load_manifest(root / "m.jsonl", "train", 16, "raise", None)) == 1  # the val row is not trained on


def test_manifest_that_is_a_folder_or_unreadable(tmp_path, monkeypatch):
    from pathlib import Path

    root = _manifest_folder(tmp_path)
    (root / "dir.csv").mkdir()
    assert "dir.csv' is a folder, not a file; pass the .csv/.jsonl file itself" in _manifest_error(root / "dir.csv")
    (root / "m.csv").write_text("file_name,label\na.png,x\n")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)  # root ignores chmod, so simulate what a user sees
    assert "m.csv' is not readable (permission denied); fix its permissions" in _manifest_error(root / "m.csv")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_manifest_without_read_permission(tmp_path):
    root = _manifest_folder(tmp_path)
    (root / "m.csv").write_text("file_name,label\na.png,x\n")
    (root / "m.csv").chmod(0)
    try:
        assert "is not readable (permission denied)" in _manifest_error(root / "m.csv")
    finally:
        (root / "m.csv").chmod(0o644)


def test_min_fraction_keeps_every_class():
    """The fraction the 'leaves class empty' error advises must, when used, keep every class."""
    import torch

    from synth.data import ImageSet, fraction_subset, min_fraction

    for counts in ([24, 24], [3, 45], [1, 99], [5, 7, 300]):
        labels = torch.cat([torch.full((c,), k) for k, c in enumerate(counts)])
        s = ImageSet(torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8), labels, [f"c{k}" for k in range(len(counts))])
        f = min_fraction(counts)
        sub = fraction_subset(s, f, 0)
        assert torch.bincount(sub.labels, minlength=len(counts)).min() >= 1, (counts, f)


def test_one_registry_opens_every_source_and_takes_new_ones(tmp_path):
    """Issue 16: open_source(path, split) picks the loader by what the path is; a registered source is used by
    load_split (training and evaluation) like the built-in ones, its missing validation split carved."""
    import numpy as np
    import torch

    from synth.config import load_config
    from synth.data import DataError, ImageSet, Source, SOURCES, load_split, open_source, register_source

    imgs = (np.arange(8 * 16 * 16) % 251).astype(np.uint8).reshape(8, 16, 16)
    np.savez(tmp_path / "d.npz", test_images=imgs, test_labels=(np.arange(8) % 2)[:, None])
    assert len(open_source(tmp_path / "d.npz", "test", 16)) == 8
    with pytest.raises(DataError, match="is not a .npz, .csv, .jsonl or folder"):
        open_source(tmp_path / "notes.txt", "test", 16)

    def read(p, split, size, on_error, classes, channels):
        n = 10
        return ImageSet(torch.zeros(n, 1, size, size, dtype=torch.uint8), torch.arange(n) % 2, ["a", "b"], source=str(p))

    (tmp_path / "scans.mine").write_text("my format")
    register_source(Source("mine", lambda p: p.suffix == ".mine", read, lambda p: False))
    try:
        cfg = load_config(None, [f"data.name={tmp_path / 'scans.mine'}", "data.resolution=16"]).data
        train, val = load_split(cfg, "train"), load_split(cfg, "val")
        assert len(train) + len(val) == 10 and len(val) == 1  # no val split of its own: 10% carved
    finally:
        SOURCES.pop(0)
