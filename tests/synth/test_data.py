import json
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
    pydicom = pytest.importorskip("pydicom")
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
    pydicom = pytest.importorskip("pydicom")
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
