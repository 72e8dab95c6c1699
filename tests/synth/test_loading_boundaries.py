"""Loading that never guesses (issue 19): files by content, EXIF orientation, label encodings, NaN pixels,
case-colliding class folders, empty splits, a stratified carve, bounds on resolution and seeds."""
import errno
import os

import numpy as np
import pytest
import torch
from PIL import Image

from synth.config import ConfigError, load_config
from synth.data import DataError, carve_indices, decode_labels, load_split, read_raw, scale_intensity, sniff_format


def data_cfg(name, *extra):
    return load_config(None, [f"data.name={name}", "data.resolution=16", *extra]).data


def write_dicom(path, value=1000):
    """A minimal CT DICOM (128-byte preamble + 'DICM'), pixels (16, 16) int16: the harness's own builder."""
    from tests.acceptance.cases_boundaries import _dicom

    return _dicom(path, value)


def test_formats_are_read_from_content_not_the_name(tmp_path):
    png = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(png)
    webp = tmp_path / "b.webp"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(webp, lossless=True)
    fake = tmp_path / "c.png"
    fake.write_text("not an image")
    dcm = write_dicom(tmp_path / "IM0001")
    assert [sniff_format(p) for p in (png, webp, fake, dcm)] == ["png", "webp", None, "dicom"]
    arr, _ = read_raw(dcm)  # no suffix: still read as DICOM
    assert arr.shape == (16, 16) and arr.max() == 1000


def test_folder_takes_suffixless_dicoms_and_webp_and_counts_what_it_left(tmp_path):
    for k, cls in enumerate(("normal", "pneumonia")):
        d = tmp_path / cls
        d.mkdir()
        for i in range(3):
            write_dicom(d / f"IM{i:04d}", 500 + 500 * k)
        Image.fromarray(np.full((16, 16), 40 + 100 * k, np.uint8)).save(d / "x.webp", lossless=True)
        (d / "notes.txt").write_text("report")
        (d / ".DS_Store").write_bytes(b"\0\1")
    s = load_split(data_cfg(tmp_path), "test")
    assert len(s) == 8 and torch.bincount(s.labels).tolist() == [4, 4]
    note = next(n for n in s.notes if "were not used" in n)
    assert "4 file(s)" in note and "2 hidden" in note and "2 not an image" in note
    # a file NAMED as an image that is none is a broken image: an error naming it, not a note
    (tmp_path / "normal" / "broken.png").write_bytes(b"\0" * 40)
    with pytest.raises(DataError, match=r"cannot read image .*broken.png"):
        load_split(data_cfg(tmp_path), "test")


def test_a_folder_of_unreadable_formats_says_what_it_reads(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.heic").write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 50)
    with pytest.raises(DataError, match=r"1 not an image.*synth reads PNG, JPEG, TIFF, BMP, GIF, WebP and DICOM"):
        load_split(data_cfg(tmp_path), "test")


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((8, 16), np.uint8)
    arr[:, :4] = 255  # bright band on the left as stored
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    im.save(tmp_path / "r.jpg", exif=exif, quality=100)
    shown, _ = read_raw(tmp_path / "r.jpg")
    assert shown.shape == (16, 8)  # displayed upright: taller than wide
    assert shown[:4].mean() > 200 and shown[-4:].mean() < 50  # the band is now at the top


def test_case_colliding_class_folders_are_refused_naming_both(tmp_path):
    for cls in ("Normal", "normal"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / cls / "a.png")
    if len(list(tmp_path.iterdir())) < 2:
        pytest.skip("case-insensitive file system")
    with pytest.raises(DataError, match="'Normal' and 'normal' .* differ only in case"):
        load_split(data_cfg(tmp_path), "test")


@pytest.mark.parametrize("raw, expect", [
    (np.array([[0], [1], [1]]), [0, 1, 1]),
    (np.array([[1, 0], [0, 1], [0, 1]]), [0, 1, 1]),  # one-hot: column 0 alone would invert it
    (np.array([[0, 0, 1], [1, 0, 0], [0, 1, 0]], np.float32), [2, 0, 1]),
    (np.array([[2.0], [0.0], [1.0]]), [2, 0, 1]),
])
def test_labels_decode_when_unambiguous(raw, expect):
    assert decode_labels(raw, "x").tolist() == expect


@pytest.mark.parametrize("raw, message", [
    (np.array([[1, 1], [0, 1]]), "row 0 .* is not one-hot"),
    (np.array([[0.7], [1.0]]), r"non-integer labels \(row 0: 0.7"),
    (np.array([[np.nan], [1.0]]), "NaN or infinite labels"),
    (np.array([[-1], [1]]), "negative label"),
])
def test_ambiguous_labels_are_refused(raw, message):
    with pytest.raises(DataError, match=message):
        decode_labels(raw, "x")


def test_one_hot_npz_loads_with_the_right_labels(tmp_path):
    imgs = np.stack([np.full((8, 8), 10 * i, np.uint8) for i in range(6)])
    one_hot = np.eye(2, dtype=np.uint8)[[1, 1, 0, 1, 0, 0]]
    np.savez(tmp_path / "d.npz", test_images=imgs, test_labels=one_hot)
    assert load_split(data_cfg(tmp_path / "d.npz"), "test").labels.tolist() == [1, 1, 0, 1, 0, 0]


def test_empty_npz_split_is_one_line_before_any_reshape(tmp_path):
    np.savez(tmp_path / "e.npz", test_images=np.zeros((0, 8, 8), np.uint8), test_labels=np.zeros((0, 1)))
    with pytest.raises(DataError, match="holds no images .* the test split is empty"):
        load_split(data_cfg(tmp_path / "e.npz"), "test")


def test_nan_pixels_leave_the_window_and_are_counted(tmp_path):
    a = np.linspace(0, 100, 64, dtype=np.float32).reshape(8, 8)
    a[:2] = np.nan
    out = scale_intensity(a)
    assert out[:2].max() == 0 and out[2:].max() >= 250  # the rest still spans the range
    imgs = np.stack([a, np.ones((8, 8), np.float32)])
    np.savez(tmp_path / "f.npz", test_images=imgs, test_labels=np.array([[0], [1]]))
    s = load_split(data_cfg(tmp_path / "f.npz"), "test")
    assert any("16 NaN or infinite pixel(s) in 1 image(s)" in n for n in s.notes)
    with pytest.raises(DataError, match="every pixel is NaN"):
        scale_intensity(np.full((4, 4), np.nan))


def test_stratified_carve_never_takes_a_class_last_image():
    labels = torch.tensor([0] * 10 + [1] * 1 + [2] * 3)
    val = carve_indices(labels, ["a", "b", "c"], "val", 0.5, 0)
    train = carve_indices(labels, ["a", "b", "c"], "train", 0.5, 0)
    assert sorted(val.tolist() + train.tolist()) == list(range(14))
    assert torch.bincount(labels[train], minlength=3).min() >= 1  # every class keeps training images
    assert torch.bincount(labels[val], minlength=3).tolist() == [5, 0, 2]


def test_one_image_per_class_names_the_real_problem(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / cls / "x.png")
    with pytest.raises(DataError, match="every class has a single image .*a: 1, b: 1.* add images"):
        load_split(data_cfg(tmp_path), "val")
    assert len(load_split(data_cfg(tmp_path), "train")) == 2


def test_resolution_is_bounded_before_allocation():
    with pytest.raises(ConfigError, match="data.resolution 100000 is over 4096 px"):
        load_config(None, ["data.resolution=100000"])


def test_memory_estimate_refuses_before_decoding(tmp_path, monkeypatch):
    import synth.data.sources as data  # where load_split's loaders look it up

    (tmp_path / "a").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a" / "x.png")
    monkeypatch.setattr(data, "available_memory", lambda: 100)
    with pytest.raises(DataError, match=r"need about .* GiB but this machine has .* lower data.resolution"):
        load_split(data_cfg(tmp_path), "test")


@pytest.mark.parametrize("seed", [2**64, -1, 2**63])
def test_seeds_outside_the_torch_range_are_refused_naming_them(seed):
    from synth.seeds import SeedError, generator_for

    with pytest.raises(SeedError, match=f"seed {seed} is outside"):
        generator_for(seed)


def test_path_errors_are_one_line():
    from synth.cli import path_error_line

    e = OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG), "/tmp/" + "x" * 300)
    assert "too long" in path_error_line(e) and "shorter path" in path_error_line(e)


def test_prompt_file_with_a_byte_order_mark_keeps_its_class(tmp_path):
    from synth.samplers.bulk import parse_prompt_file
    from synth.labels import LabelSchema

    p = tmp_path / "p.txt"
    p.write_bytes("\ufeffpneumonia\nnormal\n".encode("utf-8"))
    spec = parse_prompt_file(p, LabelSchema(classes=["normal", "pneumonia"]))
    assert [k for k, _ in spec.lines] == [1, 0]  # without BOM handling line 1 became free text (None)


def test_a_pacs_export_with_a_report_loads_its_images_and_counts_the_report(tmp_path):
    """PACS exports mix image DICOMs with structured reports (DICOM, no PixelData): the report is counted in the
    note by reason, never read as an image and never an error."""
    import pydicom

    for cls in ("a", "b"):
        for i in range(2):
            write_dicom(tmp_path / cls / f"IM{i:04d}", 500 + 100 * i)
    sr = pydicom.dcmread(str(tmp_path / "a" / "IM0000"))
    del sr.PixelData
    sr.save_as(str(tmp_path / "a" / "SR0001"), enforce_file_format=True)
    s = load_split(data_cfg(tmp_path), "test")
    assert len(s) == 4 and any("1 DICOM without pixel data" in n for n in s.notes), s.notes
