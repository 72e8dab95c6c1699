"""A text-conditioned flow model (issue 16's composition, issue 18 item 3): FlowPath x text conditioner, trained by
the LDM trainer with train.path=flow, exported, loaded by the same generator class, sampled (in Python and by
`synth sample`) and translated between prompts."""
import json

import pytest
import torch

from synth.labels import Condition
from synth.paths import FLOW
from synth.samplers.generator import LDMGenerator, load_generator
from tests.conftest import tiny_cfg


@pytest.fixture(scope="module")
def flow_export(tmp_path_factory):
    from synth.trainers.ldm import train_ldm

    run = tmp_path_factory.mktemp("textflow")
    return train_ldm(tiny_cfg("train.path=flow", "train.steps=6", "sample.sampler=ddim"), run, log=lambda *a: None)


def test_export_records_its_path_and_loads_as_a_flow(flow_export, tiny_export):
    meta = json.loads((flow_export / "synth.json").read_text())
    assert (meta["family"], meta["conditioner"], meta["kind"], meta["codec"]) == ("flow", "text", "ldm", "pixel")
    assert meta["default_sampling"]["sampler"] == "euler"  # ddim is a diffusion solver: its flow equal
    g = load_generator(flow_export)
    assert g.conditioner.name == "text" and g.is_flow and g.path is FLOW and g.kind == "ldm"
    old = load_generator(tiny_export)  # an export that records no path is a diffusion model
    assert not old.is_flow and json.loads((tiny_export / "synth.json").read_text())["family"] == "diffusion"


def test_samples_follow_their_seed_and_prompt_and_ignore_the_batch(flow_export):
    g = load_generator(flow_export)
    conds = [Condition(label=0), Condition(label=1), Condition(prompt="pneumonia, both lungs")]
    for sampler in ("euler", "heun", "dpmpp_2m", "euler_ancestral"):
        b = g.sample(conds, [1, 2, 3], steps=4, sampler=sampler)
        assert b.images.shape == (3, 1, 16, 16) and b.images.dtype == torch.uint8
        assert torch.equal(b.images[1:2], g.sample(conds[1:2], [2], steps=4, sampler=sampler).images)
    a = g.sample([Condition(label=0)] * 2, [5, 6], steps=4).images
    assert not torch.equal(a[0], a[1])


def test_translation_between_prompts(flow_export):
    g = load_generator(flow_export)
    x = torch.randint(0, 256, (2, 1, 16, 16), dtype=torch.uint8)
    assert torch.equal(g.translate(x, "normal", "pneumonia", tau=1.0), g.translate(x, "normal", "normal", tau=1.0))
    y = g.translate(x, "normal", "pneumonia", tau=0.3, steps=6)
    assert y.shape == x.shape and y.dtype == torch.uint8 and not torch.equal(y, x)


def test_diffusion_models_refuse_prompt_translation(tiny_export):
    from synth.config import ConfigError

    with pytest.raises(ConfigError, match="translation needs a flow model"):
        load_generator(tiny_export).translate(torch.zeros(1, 1, 16, 16, dtype=torch.uint8), "a", "b")


def test_synth_sample_writes_a_set_from_it(flow_export, tmp_path):
    from click.testing import CliRunner

    from synth.cli import main

    res = CliRunner().invoke(main, ["sample", "--model", str(flow_export), "--n", "6", "--out", str(tmp_path / "s"),
                                    "--steps", "3", "--shard-size", "4", "--batch-size", "4", "--quiet"])
    assert res.exit_code == 0, res.stderr
    assert json.loads((tmp_path / "s" / "manifest.json").read_text())["n_done"] == 6


def test_an_export_written_before_families_loads_as_diffusion(tiny_export, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(tiny_export, old)
    meta = json.loads((old / "synth.json").read_text())
    for key in ("family", "conditioner"):
        meta.pop(key)
    (old / "synth.json").write_text(json.dumps(meta))
    g = load_generator(old)
    assert not g.is_flow and g.sample([Condition(label=0)], [0], steps=2).images.shape == (1, 1, 16, 16)


def test_synth_translate_carries_a_set_between_two_captions(flow_export, tmp_path):
    """The CLI translates with any flow export: a caption-conditioned one between two texts (rows name them), the
    same images as the Python API; an empty caption is a one-line error before anything is written."""
    import numpy as np
    from click.testing import CliRunner

    from synth.cli import main

    imgs = np.random.default_rng(0).integers(0, 256, (6, 16, 16), dtype=np.uint8)
    np.savez(tmp_path / "in.npz", test_images=imgs, test_labels=(np.arange(6) % 2)[:, None])
    base = ["translate", "--model", str(flow_export), "--input", str(tmp_path / "in.npz"), "--tau", "0.5",
            "--steps", "4", "--shard-size", "4", "--batch-size", "4", "--quiet"]
    res = CliRunner().invoke(main, base + ["--source", "chest x-ray, normal", "--target", "chest x-ray, pneumonia",
                                           "--out", str(tmp_path / "t")])
    assert res.exit_code == 0, res.stderr
    rows = [json.loads(line) for line in (tmp_path / "t" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and {r["target_domain"] for r in rows} == {"chest x-ray, pneumonia"}
    assert [r["label_id"] for r in rows] == [0, 1, 0, 1, 0, 1] and rows[0]["guidance"] == 1.5
    from PIL import Image

    first = np.array(Image.open(tmp_path / "t" / rows[0]["file_name"]))
    api = load_generator(flow_export).translate(torch.from_numpy(imgs[:1])[:, None], "chest x-ray, normal",
                                                "chest x-ray, pneumonia", tau=0.5, steps=4, seeds=[rows[0]["seed"]])
    assert np.array_equal(first, api[0, 0].numpy())
    res = CliRunner().invoke(main, base + ["--source", " ", "--target", "x", "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "--source must be one line of text (a caption)" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "bad").exists()
