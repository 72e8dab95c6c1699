"""Synthetic images say they are synthetic (issue 19): PNG text chunks, webdataset JSON, translated
images naming their input, and ``synth inspect``."""
import io
import json
import tarfile

import numpy as np
from PIL import Image

from synth.provenance import read_png_provenance
from tests.samplers.test_bulk import base_args, cli
from tests.samplers.test_translate import args as translate_args
from tests.samplers.test_translate import bridge  # noqa: F401  (fixture)


def test_every_png_carries_its_provenance_and_inspect_reads_it(tiny_export, tmp_path):
    out = tmp_path / "set"
    cli(*base_args(tiny_export, out, 6))
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    manifest = json.loads((out / "manifest.json").read_text())
    for row in rows:
        with Image.open(out / row["file_name"]) as im:
            text = dict(im.text)
        prov = json.loads(text["synth:provenance"])
        assert text["synth:synthetic"] == "true" and "not a patient image" in text["Description"]
        assert prov["seed"] == row["seed"] and prov["label"] == row["label"] and prov["guidance"] == row["guidance"]
        assert prov["weights_sha256"] == manifest["model"]["weights_sha256"] and prov["synthetic"] is True
    # the image moved out of its folder, renamed, still says it is synthetic
    lone = tmp_path / "copy.png"
    lone.write_bytes((out / rows[0]["file_name"]).read_bytes())
    p = cli("inspect", str(lone))
    assert "SYNTHETIC image" in p.stdout and f"seed: {rows[0]['seed']}" in p.stdout
    p = cli("inspect", str(out), "--json")
    assert json.loads(p.stdout)["kind"] == "set" and json.loads(p.stdout)["images"] == 6
    # a real image says it has none
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "real.png")
    assert "no synth provenance" in cli("inspect", str(tmp_path / "real.png")).stdout
    bad = cli("inspect", str(tmp_path / "nothing"), check=False)
    assert bad.returncode == 2 and "does not exist" in bad.stderr.strip().splitlines()[-1]


def test_webdataset_json_carries_the_same(tiny_export, tmp_path):
    out = tmp_path / "wds"
    cli(*base_args(tiny_export, out, 4, "--format", "webdataset"))
    with tarfile.open(out / "shard-00000.tar") as tar:
        meta = json.loads(tar.extractfile("00000000.json").read())
        png = tar.extractfile("00000000.png").read()
    assert meta["provenance"]["synthetic"] is True and meta["provenance"]["seed"] == meta["seed"]
    assert json.loads(Image.open(io.BytesIO(png)).text["synth:provenance"])["seed"] == meta["seed"]


def test_translated_images_say_so_and_name_their_input(bridge, tmp_path):  # noqa: F811
    export, inp = bridge
    out = tmp_path / "t"
    cli(*translate_args(export, inp, out))
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines()]
    prov = read_png_provenance(out / rows[3]["file_name"])
    assert prov["translated"] is True and prov["source_index"] == 3 and prov["source_domain"] == "dim"
    assert prov["target_domain"] == "clean" and len(prov["input_sha256"]) >= 16
    assert "Translated image" in Image.open(out / rows[3]["file_name"]).text["Description"]


def front_matter(path):
    import yaml

    text = path.read_text(encoding="utf-8")
    assert text.startswith("---\n")
    return yaml.safe_load(text.split("---\n")[1]), text


def test_exports_and_sets_have_cards_that_keep_measurements(tiny_export, tmp_path):
    from synth.cards import append_measurement

    meta, text = front_matter(tiny_export / "README.md")
    assert meta["library_name"] == "diffusers" and "research-only" in meta["tags"]
    assert meta["synth"]["train_subset"]["counts_per_class"] and "Not for diagnosis" in text
    out = tmp_path / "set"
    cli(*base_args(tiny_export, out, 4))
    meta, text = front_matter(out / "README.md")
    assert meta["synth"]["synthetic"] is True and meta["synth"]["images"] == 4 and "synthetic" in meta["tags"]
    append_measurement(out, "synth eval fidelity", ["- FID 1.0"])
    cli(*base_args(tiny_export, out, 6))  # extending the set rewrites the card, keeping what was measured
    meta, text = front_matter(out / "README.md")
    assert meta["synth"]["images"] == 6 and "- FID 1.0" in text


def test_a_set_with_its_card_still_loads_in_datasets(tiny_export, tmp_path):
    datasets = __import__("pytest").importorskip("datasets")
    out = tmp_path / "set"
    cli(*base_args(tiny_export, out, 4))
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == 4 and "label" in ds.column_names


def test_a_card_says_what_training_cost_and_since_when():
    from synth.cards import model_card

    meta = {"model_id": "m", "labels": {"classes": ["a"]}, "config": {"train": {"steps": 10}}, "kind": "bridge"}
    assert "compute" not in model_card(meta)  # an export made before synth counted
    card = model_card({**meta, "training": {"steps": 10, "cpu_s": 12.4, "wall_s": 7.0, "device": "cuda",
                                            "processes": 4, "from_step": 6}})
    assert ("- compute: 12 CPU s over all processes (7 s wall) for 10 steps on 4 cuda processes, summed over every "
            "resume since step 6 (earlier steps were not counted)") in card
