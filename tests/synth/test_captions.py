"""Captions as prompts (issue 18 item 1): cleaning, report sections, caption templates over manifest columns."""
import json

import numpy as np
import pytest
from PIL import Image

from synth.captions import CaptionError, check_caption_template, clean_caption, render_captions, report_section
from tests.conftest import tiny_cfg


def test_cleaning_collapses_space_and_drops_deidentification_placeholders():
    assert clean_caption("  The prostate is enlarged  with\n several\tcalcifications .") == \
        "The prostate is enlarged with several calcifications."
    assert clean_caption("Seen by Dr. XXXX on [**2101-3-4**] , no change from ___ .") == "Seen by Dr. on, no change from."
    assert clean_caption("XXXX", deid=True) == ""
    assert clean_caption("a  b XXXX", deid=False) == "a b XXXX"


def test_report_sections_are_extracted_and_text_without_headers_is_kept():
    report = "INDICATION: cough.\nFINDINGS: Clear lungs. No effusion.\nIMPRESSION: Normal chest.\n"
    assert report_section(report, "findings") == "Clear lungs. No effusion."
    assert report_section(report, "impression") == "Normal chest."
    assert report_section(report, "findings+impression") == "Clear lungs. No effusion. Normal chest."
    assert report_section("Axial CT of the head.", "findings") == "Axial CT of the head."
    assert report_section(report, "all") == report


def test_templates_fill_columns_and_refuse_unknown_ones():
    cols = {"type": ["CT", "MR", "CT"], "plane": ["Axial", "Coronal", "Axial"]}
    out, empty = render_captions("{type}, {plane}, {label}: {prompt}", ["Mass  in LUL.", "", "XXXX"],
                                 ["Thorax", "Head", "Head"], cols)
    assert out == ["CT, Axial, Thorax: Mass in LUL.", "", ""] and empty == 2
    check_caption_template("{type}: {prompt}", ["type", "plane"], "m.jsonl")
    with pytest.raises(CaptionError, match=r"names the column \{sequence\}, which 'm.jsonl' does not have \(it has: "
                                           r"label, prompt, type, plane\)"):
        check_caption_template("{sequence}: {prompt}", ["type", "plane"], "m.jsonl")
    with pytest.raises(CaptionError, match=r"has the field \{0\}"):
        check_caption_template("{0} {prompt}", [], "m")
    with pytest.raises(CaptionError, match=r"not a valid template"):
        check_caption_template("{prompt", [], "m")


def _captioned(tmp_path, n=12, long_every=4):
    rows = []
    for i in range(n):
        Image.fromarray(np.full((16, 16), 20 * i, np.uint8)).save(tmp_path / f"{i}.png")
        words = " ".join(["opacity"] * (40 if i % long_every == 0 else 3))
        rows.append({"file_name": f"{i}.png", "label": "head" if i % 2 else "chest", "prompt": "" if i == 1 else f"A  {words}.",
                     "type": "CT" if i % 3 else "MR", "plane": "Axial", "split": "val" if i >= n - 2 else "train"})
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path / "m.jsonl"


def test_training_renders_captions_counts_empty_and_cut_ones(tmp_path):
    from synth.data import load_split
    from synth.trainers.ldm import train_ldm

    man = _captioned(tmp_path)
    cfg = tiny_cfg(f"data.name={man}", "labels.caption_template={type}, {plane}: {prompt}", "train.steps=1")
    train = load_split(cfg.data, "train")
    assert train.columns["type"][:3] == ["MR", "CT", "CT"] and "file_name" not in train.columns
    said = []
    export = train_ldm(cfg, tmp_path / "run", log=said.append)
    assert any("1 of 10 training images have no caption" in s for s in said)
    assert any("longer than the text encoder's window of 12 tokens" in s for s in said)
    labels = json.loads((export / "labels.json").read_text())
    assert labels["caption_template"] == "{type}, {plane}: {prompt}"
    with pytest.raises(CaptionError, match=r"names the column \{sequence\}"):
        train_ldm(tiny_cfg(f"data.name={man}", "labels.caption_template={sequence}: {prompt}", "train.steps=1"),
                  tmp_path / "bad", log=lambda *a: None)
