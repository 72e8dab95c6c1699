"""Hostile-input cases of issue 19 (loading that never guesses, machine-independent bytes, provenance),
and more of the same classes: odd encodings and formats, label encodings, folder names, OS limits,
numbers at the edge of their types. Collected by :func:`tests.acceptance.cases.all_cases`."""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
from PIL import Image

from tests.acceptance.cases_core import load_split_of
from tests.acceptance.harness import (TINY, Case, copy_set, data_cfg, image_folder, nothing, nothing_written, npz,
                                      png_bytes, rows, sets, write)


def _img(value: int, size: int = 16, mode: str = "L") -> Image.Image:
    a = np.full((size, size), value, np.uint8)
    a[: size // 4] = 255 - value  # a band on top, so orientation is visible
    return Image.fromarray(a if mode == "L" else np.stack([a] * 3, -1))


def _folder_of(d: Path, fmt: str, suffix: str, classes=("normal", "pneumonia"), per_class: int = 3) -> Path:
    root = d / "data"
    for k, c in enumerate(classes):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            _img(40 + 60 * k + i, mode="RGB" if fmt == "JPEG" else "L").save(root / c / f"img{i}{suffix}", format=fmt)
    return root


def _dicom(path: Path, value: int = 800) -> Path:
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.Rows = ds.Columns = 16
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    a = np.zeros((16, 16), np.int16)
    a[4:12] = value
    ds.PixelData = a.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(str(path), enforce_file_format=True)
    return path


def _pacs_with_report(c, d: Path) -> None:
    import pydicom

    for k, cls in enumerate(("a", "b")):
        for i in range(2):
            _dicom(d / "data" / cls / f"IM{i:04d}", 500 + 300 * k)
    report = pydicom.dcmread(str(d / "data" / "a" / "IM0000"))
    del report.PixelData
    report.save_as(str(d / "data" / "a" / "SR0001"), enforce_file_format=True)


def _exif_jpeg(path: Path, orientation: int) -> Path:
    a = np.zeros((8, 16), np.uint8)
    a[:, :4] = 255  # a bright band on the left as stored
    im = Image.fromarray(a)
    exif = im.getexif()
    exif[0x0112] = orientation
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, exif=exif, quality=100)
    return path


def _float_tiff(path: Path, fill=np.nan, share: float = 0.25) -> Path:
    a = np.linspace(0, 1000, 256, dtype=np.float32).reshape(16, 16)
    a[: int(16 * share)] = fill
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a, mode="F").save(path, format="TIFF")
    return path


def _labels_case(cid: str, what: str, labels, expect: str, says: str = "", want=None) -> Case:
    imgs = np.stack([np.full((16, 16), 20 * i, np.uint8) for i in range(len(labels))])

    def check(c, d, s, o):
        got = o.value.labels.tolist()
        return [] if got == want else [f"labels came out {got}, expected {want}"]
    return Case(cid, "api", what, lambda c, d: npz(d / "x.npz", test_images=imgs, test_labels=np.asarray(labels)),
                load_split_of(lambda d: d / "x.npz", split="test"), expect, says, check=check if want is not None else None)


def _count(n: int, *, note: str = ""):
    def check(c, d, s, o):
        problems = [] if len(o.value) == n else [f"{len(o.value)} images, expected {n}"]
        if note and not any(note in x for x in o.value.notes):
            problems.append(f"no note saying '{note}' (notes: {o.value.notes})")
        return problems
    return check


def _read_raw_of(name: str):
    def action(c, d, s):
        from synth.data import read_raw

        return read_raw(d / name)[0]
    return action


def _band_on_top(c, d, s, o):
    a = o.value
    return [] if a.shape == (16, 8) and a[:4].mean() > 200 and a[-4:].mean() < 50 else \
        [f"read as stored (shape {a.shape}), not as displayed"]


def _band_at_right(c, d, s, o):
    a = o.value
    return [] if a.shape == (8, 16) and a[:, -4:].mean() > 200 and a[:, :4].mean() < 50 else ["180-degree turn not applied"]


def _prompts_set(c, d):
    write(d / "p.txt", "\ufeffpneumonia\nnormal\n".encode("utf-8"))


def _labels_are(expected: list):
    def check(c, d, s, o):
        got = [r["label"] for r in rows(d / "out")]
        return [] if got == expected else [f"labels {got}, expected {expected}"]
    return check


def _nan_judge(c, d):
    import torch

    class NaNJudge(torch.nn.Module):
        def forward(self, x):
            return torch.full((x.shape[0], 2), float("nan"))
    copy_set(c, d)
    return NaNJudge()


def _quality(c, d, s):
    from synth.augment import quality_filter

    return quality_filter(d / "set", s, threshold=0.5, classes=["normal", "pneumonia"])


def _sample_seed(seed):
    def action(c, d, s):
        from synth.samplers.generator import load_generator
        from synth.labels import Condition

        return load_generator(c.ldm_export).sample([Condition(label=0)], [seed], steps=2)
    return action


def _restore_threads(_state) -> None:
    import os

    import torch

    torch.set_num_threads(1)
    os.environ["OMP_NUM_THREADS"] = "1"


def _nfc_nfd(d: Path) -> None:
    for name in ("Pneumon\u00eda", "Pneumoni\u0301a"):  # the same word, composed and decomposed
        write(d / "data" / name / "a.png", png_bytes(np.zeros((16, 16), np.uint8)))


def _inspect_real(c, d):
    write(d / "real.png", png_bytes(np.zeros((8, 8), np.uint8)))


def boundary_cases() -> list[Case]:
    long_name = "x" * 300
    return [
        # --- issue 19, as reported -------------------------------------------------------------------
        Case("b-exif-rotated-jpeg", "api", "a JPEG stored sideways with EXIF orientation 6 (rotate for display)",
             lambda c, d: _exif_jpeg(d / "r.jpg", 6), _read_raw_of("r.jpg"), "ok", check=_band_on_top),
        Case("b-dicom-no-suffix", "api", "PACS export: DICOMs named IM0000.. with no suffix",
             lambda c, d: [_dicom(d / "data" / cls / f"IM{i:04d}", 500 + 300 * k) for k, cls in enumerate(("a", "b"))
                           for i in range(3)],
             load_split_of(lambda d: d / "data", split="test"), "ok", check=_count(6)),
        Case("b-dicom-report-in-export", "api", "a PACS export whose folder also holds a structured report (DICOM, no pixels)",
             _pacs_with_report, load_split_of(lambda d: d / "data", split="test"), "ok",
             check=_count(4, note="1 DICOM without pixel data")),
        Case("b-class-case-collision", "api", "class folders Normal/ and normal/",
             lambda c, d: (image_folder(d / "data", 2, ("Normal", "normal"))),
             load_split_of(lambda d: d / "data", split="test"), "error", r"'Normal' and 'normal' .* differ only in case"),
        _labels_case("b-npz-one-hot", "npz labels one-hot encoded (N, 2)", np.eye(2, dtype=np.uint8)[[1, 0, 1, 1]], "ok",
                     want=[1, 0, 1, 1]),
        _labels_case("b-npz-float-labels", "npz labels 0.7 / 1.0 (scores, not classes)", [[0.7], [1.0]], "error",
                     r"non-integer labels \(row 0: 0.7\)"),
        Case("b-float-tiff-nan", "api", "float TIFFs whose masked region is NaN",
             lambda c, d: [_float_tiff(d / "data" / cls / f"{i}.tif") for cls in ("a", "b") for i in range(2)],
             load_split_of(lambda d: d / "data", split="test"), "ok",
             check=_count(4, note="NaN or infinite pixel(s) in 4 image(s)")),
        Case("b-quality-nan-classifier", "api", "quality_filter with a classifier returning NaN",
             _nan_judge, _quality, "error", r"NaN or infinite logits .* nothing was written",
             check=lambda c, d, s, o: ["quality.json was written"] if (d / "set" / "quality.json").exists() else []),
        Case("b-prompts-bom", "cli", "a --prompts file saved with a byte-order mark (Notepad)", _prompts_set,
             lambda c, d, s: c.sample_args(d / "out", 2, "--prompts", str(d / "p.txt")), "ok",
             check=_labels_are(["pneumonia", "normal"])),
        Case("b-one-image-per-class", "cli", "a folder with one image per class (no val split to carve)",
             lambda c, d: image_folder(d / "data", 1), lambda c, d, s: ["train", "ldm", "--run", str(d / "run"),
                                                                          "--set", f"data.name={d / 'data'}",
                                                                          "--set", "data.resolution=16"],
             "error", r"every class has a single image .* add images", check=nothing_written("run")),
        Case("b-webp-folder", "api", "a folder of .webp images", lambda c, d: _folder_of(d, "WEBP", ".webp"),
             load_split_of(lambda d: d / "data", split="test"), "ok", check=_count(6)),
        Case("b-seed-2-64", "api", "sample(..., seeds=[2**64])", nothing, _sample_seed(2 ** 64), "error",
             r"seed 18446744073709551616 is outside \[0, 2\*\*63\)"),
        Case("b-resolution-huge", "cli", "--set data.resolution=100000", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), "--set", "data.resolution=100000"], "error",
             r"data.resolution 100000 is over 4096", check=nothing_written("run")),
        Case("b-resolution-odd-autoencoder", "cli", "autoencoder at 6 px (its 3 levels halve it twice)", nothing,
             lambda c, d, s: ["train", "autoencoder", "--run", str(d / "ae"), *sets(TINY + ["data.resolution=6",
                                                                                        "train.steps=2"])],
             "error", r"data.resolution 6 cannot pass the autoencoder's 2 halvings.*data.resolution=8",
             check=nothing_written("ae")),
        Case("b-resolution-odd-unet", "cli", "a pixel diffusion model at 17 px (its UNet halves it once)", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), *sets(TINY + ["data.resolution=17",
                                                                                   "train.steps=2"])],
             "error", r"UNet cannot take a 17 px image.*multiple of 2.*data.resolution=16", check=nothing_written("run")),
        Case("b-out-name-too-long", "cli", "--out with a 300-byte folder name", nothing,
             lambda c, d, s: c.sample_args(d / long_name / "out", 2), "error", r"too long .* shorter path"),
        Case("b-translate-empty-npz", "cli", "synth translate --input an npz holding 0 images",
             lambda c, d: npz(d / "e.npz", test_images=np.zeros((0, 16, 16), np.uint8), test_labels=np.zeros((0, 1))),
             lambda c, d, s: c.translate_args(d / "out", inp=d / "e.npz"), "error", r"holds no images",
             check=nothing_written("out")),
        # --- odd encodings and formats -----------------------------------------------------------------
        Case("b-heic-only", "api", "a class folder of .heic photos (a format synth does not read)",
             lambda c, d: write(d / "data" / "a" / "x.heic", b"\0\0\0\x18ftypheic" + b"\0" * 64),
             load_split_of(lambda d: d / "data", split="test"), "error", r"1 not an image.*synth reads PNG"),
        Case("b-png-named-jpg", "api", "PNG files named .jpg", lambda c, d: _folder_of(d, "PNG", ".jpg"),
             load_split_of(lambda d: d / "data", split="test"), "ok", check=_count(6)),
        Case("b-jpeg-named-png", "api", "JPEG files named .png", lambda c, d: _folder_of(d, "JPEG", ".png"),
             load_split_of(lambda d: d / "data", split="test"), "ok", check=_count(6)),
        Case("b-gif-folder", "api", "a folder of GIF images", lambda c, d: _folder_of(d, "GIF", ".gif"),
             load_split_of(lambda d: d / "data", split="test"), "ok", check=_count(6)),
        Case("b-dicom-named-png", "api", "a DICOM named .png", lambda c, d: _dicom(d / "x.png", 900),
             _read_raw_of("x.png"), "ok",
             check=lambda c, d, s, o: [] if o.value.max() == 900 else [f"max {o.value.max()}, expected 900"]),
        Case("b-text-named-bmp", "api", "a text file starting 'BM' named .bmp beside real images",
             lambda c, d: (image_folder(d / "data", 2), write(d / "data" / "normal" / "notes.bmp", "BMI table\n" * 5)),
             load_split_of(lambda d: d / "data", split="test"), "error", r"cannot read image .*notes\.bmp"),
        Case("b-text-no-suffix", "api", "a text file starting 'BM' with no suffix beside real images",
             lambda c, d: (image_folder(d / "data", 2), write(d / "data" / "normal" / "README", "BMI table\n" * 5)),
             load_split_of(lambda d: d / "data", split="test"), "ok", check=_count(4, note="1 not an image")),
        Case("b-exif-upside-down", "api", "a JPEG with EXIF orientation 3 (upside down)",
             lambda c, d: _exif_jpeg(d / "u.jpg", 3), _read_raw_of("u.jpg"), "ok", check=_band_at_right),
        Case("b-float-tiff-inf", "api", "float TIFFs with +inf pixels (overflow)",
             lambda c, d: [_float_tiff(d / "data" / cls / f"{i}.tif", np.inf) for cls in ("a", "b") for i in range(2)],
             load_split_of(lambda d: d / "data", split="test"), "ok", check=_count(4, note="NaN or infinite")),
        Case("b-all-nan-image", "api", "an npz image whose every pixel is NaN",
             lambda c, d: npz(d / "x.npz", test_images=np.full((2, 16, 16), np.nan, np.float32), test_labels=[[0], [1]]),
             load_split_of(lambda d: d / "x.npz", split="test"), "error", r"x.npz\[test_images\]\[0\]: every pixel is NaN"),
        Case("b-hidden-files-counted", "api", "class folders holding .DS_Store and Thumbs.db",
             lambda c, d: (image_folder(d / "data", 2), write(d / "data" / "normal" / ".DS_Store", b"\0\1"),
                           write(d / "data" / "pneumonia" / "Thumbs.db", b"\xd0\xcf\x11\xe0")),
             load_split_of(lambda d: d / "data", split="test"), "ok",
             check=_count(4, note="1 hidden, 1 not an image")),
        # --- label encodings ---------------------------------------------------------------------------------
        _labels_case("b-npz-multi-label", "npz labels with two 1s in a row (multi-label)", [[1, 1], [0, 1]], "error",
                     r"row 0 .* is not one-hot"),
        _labels_case("b-npz-nan-label", "npz labels holding NaN", [[np.nan], [1.0]], "error", r"NaN or infinite labels"),
        _labels_case("b-npz-bool-labels", "npz labels stored as booleans", [[True], [False], [True]], "ok", want=[1, 0, 1]),
        _labels_case("b-npz-id-column", "npz labels that are patient IDs (1234567)", [[1234567], [1234568]], "error",
                     r"label 1234567 .* ID column"),
        _labels_case("b-npz-string-labels", "npz labels stored as text ('normal')", [["normal"], ["pneumonia"]], "error",
                     r"holds <U9 values; labels must be whole numbers"),
        _labels_case("b-npz-float-whole", "npz labels as floats 2.0/0.0/1.0 (whole numbers)", [[2.0], [0.0], [1.0]], "ok",
                     want=[2, 0, 1]),
        # --- folder names -------------------------------------------------------------------------------------
        Case("b-class-nfc-nfd", "api", "class folders 'Pneumonía' composed and decomposed (macOS vs Linux)",
             lambda c, d: _nfc_nfd(d), load_split_of(lambda d: d / "data", split="test"), "error", r"differ only in case"),
        Case("b-small-class-keeps-training", "api", "a class of 2 images with data.val_fraction=0.5",
             lambda c, d: (image_folder(d / "data", 10, ("a",)), image_folder(d / "data", 2, ("b",))),
             load_split_of(lambda d: d / "data", "data.val_fraction=0.5"), "ok",
             check=lambda c, d, s, o: [] if o.value.labels.tolist().count(1) == 1 and len(o.value) == 6
             else [f"train labels {o.value.labels.tolist()}"]),
        # --- OS limits ------------------------------------------------------------------------------------------
        Case("b-out-under-a-file", "cli", "--out below an existing file (a/file.txt/out)",
             lambda c, d: write(d / "file.txt", "x"), lambda c, d, s: c.sample_args(d / "file.txt" / "out", 2), "error",
             r"is a file|not a folder|Not a directory"),
        # --- numbers at the edge of their types ------------------------------------------------------------
        Case("b-seed-2-63", "api", "sample(..., seeds=[2**63]) (one past the signed 64-bit range)", nothing,
             _sample_seed(2 ** 63), "error", r"seed 9223372036854775808 is outside"),
        Case("b-threads-zero", "cli", "synth --threads 0 sample ...", nothing,
             lambda c, d, s: ["--threads", "0", *c.sample_args(d / "out", 2)], "error", r"--threads must be >= 1",
             teardown=_restore_threads),
        Case("b-threads-text", "cli", "synth --threads two sample ...", nothing,
             lambda c, d, s: ["--threads", "two", *c.sample_args(d / "out", 2)], "error", r"not a whole number",
             teardown=_restore_threads),
        Case("b-resume-other-threads", "cli", "a CPU set made with 1 thread, resumed with --threads 2",
             lambda c, d: copy_set(c, d), lambda c, d, s: ["--threads", "2", *c.sample_args(d / "set", 8)], "error",
             r"1 thread\(s\) and this run is on CPU with 2 thread\(s\).*synth --threads 1", teardown=_restore_threads),
        # --- provenance ----------------------------------------------------------------------------------------
        Case("b-inspect-missing", "cli", "synth inspect /no/such.png", nothing,
             lambda c, d, s: ["inspect", str(d / "no" / "such.png")], "error", r"does not exist"),
        Case("b-inspect-real-png", "cli", "synth inspect a real (non-synth) PNG", _inspect_real,
             lambda c, d, s: ["inspect", str(d / "real.png")], "ok", r"no synth provenance"),
        Case("b-synthetic-png-says-so", "cli", "synth inspect one PNG copied out of a set", lambda c, d: copy_set(c, d),
             lambda c, d, s: ["inspect", str(next((d / "set").rglob("*.png")))], "ok", r"SYNTHETIC image"),
    ]
