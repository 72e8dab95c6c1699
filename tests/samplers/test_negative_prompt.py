"""--negative-prompt (issue 18 item 5): guidance steers away from a text, recorded in the set; refused where
it cannot act."""
import json

import pytest
import torch

from synth.config import ConfigError
from synth.samplers.generator import load_generator
from synth.samplers.orchestrate import sample_set

quiet = dict(progress=False, log=lambda m: None)


def test_negative_prompt_changes_guided_images_only(tiny_export):
    g = load_generator(tiny_export)
    conds = [g.schema.condition(0)] * 2
    plain = g.sample(conds, [1, 2], steps=3, guidance=3.0).images
    away = g.sample(conds, [1, 2], steps=3, guidance=3.0, negative_prompt="pneumonia").images
    assert not torch.equal(plain, away)
    assert torch.equal(g.sample(conds, [1, 2], steps=3, guidance=3.0, negative_prompt="").images, plain)
    same = g.sample(conds, [1, 2], steps=3, guidance=1.0, negative_prompt="pneumonia").images
    assert torch.equal(same, g.sample(conds, [1, 2], steps=3, guidance=1.0).images)  # no guidance, no effect


def test_sets_record_it_and_refuse_another_on_resume(tiny_export, tmp_path):
    out = tmp_path / "set"
    sample_set(tiny_export, out, 4, steps=2, guidance=2.0, negative_prompt="blurry", batch_size=4, **quiet)
    rows = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()] if (out / "metadata.jsonl").is_file() \
        else [json.loads(x) for p in sorted(out.glob("shard-*/metadata.jsonl")) for x in p.read_text().splitlines()]
    assert rows and all(r["negative_prompt"] == "blurry" for r in rows)
    with pytest.raises(Exception, match=r"negative_prompt"):
        sample_set(tiny_export, out, 6, steps=2, guidance=2.0, negative_prompt="noisy", batch_size=4, **quiet)


def test_negative_prompt_without_text_is_refused(tmp_path, tiny_export):
    from tests.trainers.test_bridge import BRIDGE, three_domains
    from tests.conftest import tiny_cfg
    from synth.trainers.bridge import train_bridge

    data = three_domains(tmp_path / "d.npz")
    bridge = train_bridge(tiny_cfg(f"data.name={data}", *BRIDGE, "train.steps=1"), tmp_path / "b", log=lambda *a: None)
    with pytest.raises(ConfigError, match=r"--negative-prompt needs a text-conditioned model.*drop --negative-prompt"):
        sample_set(bridge, tmp_path / "s", 2, negative_prompt="noise", **quiet)
    assert not (tmp_path / "s").exists()
    said = []
    sample_set(tiny_export, tmp_path / "g1", 2, steps=2, guidance=1.0, negative_prompt="x", progress=False,
               log=said.append)
    assert any("no effect at --guidance 1" in s for s in said)


def test_prompts_from_a_manifest_label_each_image_by_its_row(tmp_path):
    """--prompts m.jsonl: the caption through the model's caption template, and the row's columns in the metadata."""
    from synth.trainers.ldm import train_ldm
    from tests.conftest import tiny_cfg
    from tests.synth.test_captions import _captioned

    man = _captioned(tmp_path)
    export = train_ldm(tiny_cfg(f"data.name={man}", "labels.caption_template={type}: {prompt}", "train.steps=1"),
                       tmp_path / "run", log=lambda *a: None)
    out = tmp_path / "set"
    sample_set(export, out, 3, prompts_file=str(man), prompts_split="val", steps=2, batch_size=4, **quiet)
    rows = [json.loads(x) for p in sorted(out.glob("**/metadata.jsonl")) for x in p.read_text().splitlines()]
    src = [json.loads(x) for x in man.read_text().splitlines() if json.loads(x)["split"] == "val"]
    assert [r["prompt"] for r in rows] == [f"{s['type']}: {' '.join(s['prompt'].split())}" for s in src + src[:1]]
    assert [r["caption"] for r in rows] == [s["prompt"] for s in src + src[:1]]
    assert rows[0]["plane"] == "Axial" and rows[0]["source_file_name"] == src[0]["file_name"]
    assert rows[0]["label"] == src[0]["label"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a mass", "plane": "Axial"}) + "\n")
    with pytest.raises(Exception, match=r"names the column \{type\}.*\(it has: label, prompt, plane\)"):
        sample_set(export, tmp_path / "s2", 2, prompts_file=str(bad), **quiet)
    assert not (tmp_path / "s2").exists()
