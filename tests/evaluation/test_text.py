"""synth eval text (issue 18 item 6): attribute judges, the small CLIP, swaps, the text-encoder probe."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from synth.data import ImageSet
from synth.data.phantoms import captioned_manifest, captioned_phantom
from synth.evaluation import text as T
from synth.evaluation import textclip as C
from synth.evaluation.real import EvalError
from tests.conftest import tiny_cfg


def test_attribute_and_swap_specs_parse_and_refuse_with_the_fix():
    assert T.parse_attribute("type") == T.Attribute("type", "type", ())
    assert T.parse_attribute("location=label") == T.Attribute("location", "label", ())
    assert T.parse_attribute("plane:Axial|Coronal") == T.Attribute("plane", "plane", ("Axial", "Coronal"))
    with pytest.raises(EvalError, match=r"is not NAME\[=COLUMN\]"):
        T.parse_attribute("plane:Axial")
    attrs = [T.parse_attribute(a) for a in T.DEFAULT_ATTRIBUTES]
    assert T.parse_swap("type:CT|MR", attrs) == T.Swap("type", "CT", "MR")
    with pytest.raises(EvalError, match=r"names 'sex', which is no --attribute .* add --attribute sex"):
        T.parse_swap("sex:male|female", attrs)
    with pytest.raises(EvalError, match=r"two different values"):
        T.parse_swap("type:CT|CT", attrs)


def test_swapping_words_is_whole_word_any_case_and_both_ways():
    assert T.swap_words("MRI of the head; CT prior", "CT", "MR") == "CT of the head; MRI prior"
    assert T.swap_words("Axial T2 image, coronal reformat", "Axial", "Coronal") == "coronal T2 image, axial reformat"
    assert T.swap_words("Brain mass. Chest clear.", "Head", "Thorax") == "thorax mass. head clear."
    assert T.swap_words("OCTOPUS ACT", "CT", "MR") == "OCTOPUS ACT"  # parts of words are no words


def _set(n=6):
    cols = {"type": ["CT", "MR"] * (n // 2), "plane": ["Axial"] * n}
    return ImageSet(torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 4, 4).clone(),
                    torch.tensor([0, 1, 2] * (n // 3)), ["Head", "Thorax", "Spine"],
                    prompts=[f"CT of the head {i}" for i in range(n)], columns=cols)


def test_swapped_rows_move_the_column_or_the_class_and_keep_the_images():
    s = _set()
    rows, moved, new = T.swapped_rows(s, T.Attribute("type", "type"), T.Swap("type", "CT", "MR"))
    assert rows == list(range(6)) and new == ["MR", "CT"] * 3 and moved.columns["type"] == new
    assert moved.prompts[0] == "MRI of the head 0" and torch.equal(moved.images, s.images)
    rows, moved, new = T.swapped_rows(s, T.Attribute("location", "label"), T.Swap("location", "Head", "Thorax"))
    assert rows == [0, 1, 3, 4] and new == ["Thorax", "Head"] * 2
    assert moved.labels.tolist() == [1, 0, 1, 0] and moved.prompts[0] == "CT of the thorax 0"
    assert moved.columns["type"] == ["CT", "MR", "MR", "CT"]  # other columns follow the kept rows


def test_judge_classes_take_named_values_or_the_common_ones():
    vals = ["Axial"] * 20 + ["Coronal"] * 12 + ["Drawing"] * 2
    assert T.judge_classes(T.Attribute("plane", "plane"), vals) == ["Axial", "Coronal"]
    with pytest.raises(EvalError, match=r"value\(s\) Sagittal never occur"):
        T.judge_classes(T.Attribute("plane", "plane", ("Axial", "Sagittal")), vals)
    assert T.attribute_accuracy(torch.tensor([0, 1, 1, 0]), ["Axial", "Coronal", "Axial", "Drawing"],
                                ["Axial", "Coronal"]) == {"accuracy": 2 / 3, "n": 3}
    assert T.majority_share(["a", "a", "b", "x"], ["a", "b"]) == 2 / 3


def test_r_precision_ranks_own_caption_against_different_ones():
    caps = ["a", "a", "b", "c", "d"]
    cand = C.distractors(caps, 3, seed=0)
    assert all(caps[j] != caps[i] for i, js in enumerate(cand) for j in js) and all(len(js) == 2 for js in cand)
    assert cand == C.distractors(caps, 3, seed=0) and cand != C.distractors(caps, 3, seed=1)
    emb = torch.eye(5)
    emb[1] = emb[0]  # the two images of caption "a" share its embedding
    perfect = C.r_precision(emb, emb, [0, 1, 2, 3, 4], cand)
    assert perfect["r_precision"] == 1.0 and perfect["similarity"] == 1.0 and perfect["k"] == 3
    wrong = C.r_precision(emb[[2, 3, 4, 0, 1]], emb, [0, 1, 2, 3, 4], cand)
    assert wrong["r_precision"] < 1.0
    with pytest.raises(ValueError, match="needs 4 captions that differ .* only 4 distinct"):
        C.distractors(caps, 5, seed=0)
    # repeated texts (any case, any spacing) count once, so k - 1 candidates are k - 1 different captions;
    # a row without text is neither ranked nor a candidate
    many = ["a", "b", "B ", "b", "c", "d", "", "d"]
    norm = [c.strip().lower() for c in many]
    cand = C.distractors(many, 4, seed=3)
    assert cand[6] is None
    for i, js in enumerate(cand):
        if js is not None:
            texts = [norm[j] for j in js]
            assert len(set(texts)) == 3 and norm[i] not in texts and "" not in texts
    got = C.r_precision(torch.eye(8), torch.eye(8), list(range(8)), cand)
    assert got["n"] == 7 and got["k"] == 4
    t = C.same_caption_targets(caps)
    assert torch.allclose(t.sum(1), torch.ones(5)) and t[0, 1] == 0.5 and t[2, 2] == 1.0


def test_linear_probe_reads_separable_features_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(200) % 4
    x = torch.randn(200, 16, generator=g) * 0.1
    x[torch.arange(200), y] += 1.0
    assert T.linear_probe(x[:150], y[:150], x[150:], y[150:], 4) == 1.0
    noise = torch.randn(200, 16, generator=g)
    assert T.linear_probe(noise[:150], y[:150], noise[150:], y[150:], 4) < 0.6


@pytest.fixture(scope="module")
def captioned(tmp_path_factory):
    """A manifest of 72 captioned 16 px images (type CT/MR, plane Axial/Coronal/Sagittal, label Head/Thorax), train + test."""
    return captioned_manifest(tmp_path_factory.mktemp("captioned"), 16, 72, n_test=16, name="m.jsonl")


@pytest.fixture(scope="module")
def text_model(captioned, tmp_path_factory):
    from synth.trainers.ldm import train_ldm

    cfg = tiny_cfg(f"data.name={captioned}", "labels.caption_template={type}, {plane}: {prompt}", "train.steps=3",
                   "train.text_lr=0.001", "model.text.windows=2")
    return train_ldm(cfg, tmp_path_factory.mktemp("text-model") / "run", log=lambda *a: None)


def test_the_probe_rebuilds_the_encoder_the_trainer_started_from(captioned, tmp_path):
    from synth.config.parse import config_to_dict
    from synth.labels import LabelSchema
    from synth.trainers.ldm import build_parts

    cfg = tiny_cfg(f"data.name={captioned}", "train.steps=1", "train.text_lr=0.001", "train.seed=7")
    meta = {"config": json.loads(json.dumps(config_to_dict(cfg)))}
    parts = build_parts(cfg, tmp_path, LabelSchema(["Head", "Thorax"]), ["CT of the head", "MRI"], save=True)
    before, where = T.text_encoder_before(meta, parts.tokenizer)
    assert "seed 7" in where
    assert all(torch.equal(a, b) for a, b in zip(before.state_dict().values(), parts.text_encoder.state_dict().values()))


def _tables_are_whole(md: str) -> None:
    """Every row of every markdown table has as many cells as its header (a stray '|' splits a cell)."""
    import re

    table: list[int] = []
    for line in md.splitlines() + [""]:
        if line.startswith("|"):
            table.append(len(re.split(r"(?<!\\)\|", line)))
        elif table:
            assert len(set(table)) == 1, f"a table row has another cell count: {table}"
            table = []


def test_eval_text_end_to_end_reports_every_measure_and_reuses_its_cache(captioned, text_model, tmp_path, monkeypatch):
    from synth.evaluation.text_report import targets
    from synth.evaluation.text_run import evaluate_text

    said = []
    rep = evaluate_text([str(text_model)], str(captioned), tmp_path / "out", seeds=2, k=4, steps=2, judge_steps=60,
                        clip_steps=30, report=tmp_path / "rep" / "medpix-text", log=said.append)
    assert rep["test_n"] == 16 and rep["train_n"] == 50  # 56 less the validation carve, as training saw it
    assert rep["judges"]["type"]["classes"] == ["CT", "MR"] and rep["judges"]["type"]["ceiling"] >= 0.9
    m = rep["models"]["run"]
    assert m["windows"] == 2 and m["attributes"]["type"]["n"] == 32
    for name in ("type", "plane", "location"):
        assert 0 <= m["attributes"][name]["accuracy"] <= 1
    assert m["clip"]["n"] == 32 and m["clip"]["k"] == 4 and 0 <= m["clip"]["r_precision"] <= 1
    assert m["swaps"]["type:CT|MR"]["n"] == 32 and m["swaps"]["location:Head|Thorax"]["n"] == 32
    p = m["probe"]
    assert p["text_lr"] == 0.001 and p["before"] is not None and p["after"] is not None and "from scratch" in p["before_is"]
    assert p["n"] == 16 + 6 and p["se"] == pytest.approx((p["after"] * (1 - p["after"]) / 22) ** 0.5)  # held out: the 16 test captions and the 6 of the validation carve
    assert {t["target"].split(" ")[0] for t in targets(rep)} >= {"attribute", "R-precision@1", "swap", "text-encoder"}
    for ext in ("md", "json", "png"):
        assert (tmp_path / "rep" / f"medpix-text.{ext}").is_file()
    md = (tmp_path / "rep" / "medpix-text.md").read_text()
    assert "real test images (ceiling)" in md and "## Targets" in md
    # a second run reuses judges, CLIP and images: nothing is sampled again
    from synth.samplers.generator import Generator

    monkeypatch.setattr(Generator, "sample", lambda *a, **k: pytest.fail("sampled again"))
    again = evaluate_text([str(text_model)], str(captioned), tmp_path / "out", seeds=2, k=4, steps=2, judge_steps=60,
                          clip_steps=30, log=said.append)
    assert again["models"]["run"]["attributes"] == m["attributes"] and again["models"]["run"]["clip"] == m["clip"]
    # one model under two names: every paired difference is exactly zero (same images, same judges)
    monkeypatch.undo()
    both = evaluate_text([str(text_model), str(text_model)], str(captioned), tmp_path / "out", seeds=2, k=4, steps=2,
                         judge_steps=60, clip_steps=30, report=tmp_path / "rep2" / "two", log=said.append)
    _tables_are_whole((tmp_path / "rep2" / "two.md").read_text())
    _tables_are_whole(md)
    assert both["paired"]["versus"] == "run" and set(both["paired"]["models"]) == {"run-2"}
    same = both["paired"]["models"]["run-2"]
    assert set(same) == {"type", "plane", "location", "r_precision", "swap type:CT|MR", "swap plane:Axial|Coronal",
                         "swap location:Head|Thorax"}
    assert all((d["delta"], d["lo"], d["hi"]) == (0.0, 0.0, 0.0) and d["n"] > 0 for d in same.values())
    assert same["type"]["n"] == 32 and same["swap type:CT|MR"]["n"] == 32


def test_eval_text_refuses_bad_requests_in_one_line(captioned, text_model, tmp_path, tiny_export):
    from synth.evaluation.text_run import evaluate_text

    with pytest.raises(EvalError, match="needs 16 captions that differ"):
        evaluate_text([str(text_model)], str(captioned), tmp_path, k=17, judge_steps=5, clip_steps=2,
                      log=lambda *a: None)
    with pytest.raises(EvalError, match="--device 'gpu0' is not a device name"):
        evaluate_text([str(text_model)], str(captioned), tmp_path, device="gpu0", log=lambda *a: None)
    with pytest.raises(EvalError, match="--sampler 'nope' is unknown; choose one of"):
        evaluate_text([str(text_model)], str(captioned), tmp_path, sampler="nope", log=lambda *a: None)
    with pytest.raises(EvalError, match="'Spine' is not a value the judge of location knows \\(Head, Thorax\\)"):
        evaluate_text([str(text_model)], str(captioned), tmp_path, swaps=["location:Head|Spine"], log=lambda *a: None)
    assert not (tmp_path / "judges-16px").exists()  # refused before any training
    with pytest.raises(EvalError, match=r"no column 'sex' \(it has: label, type, plane"):
        evaluate_text([str(text_model)], str(captioned), tmp_path, attributes=["sex"], swaps=[], judge_steps=5,
                      log=lambda *a: None)
    with pytest.raises(EvalError, match="have no captions; synth eval text needs a manifest"):
        evaluate_text([str(tiny_export)], "phantom", tmp_path, judge_steps=5, log=lambda *a: None)


def test_an_oracle_generator_scores_at_the_ceiling_and_follows_every_swap(captioned, text_model, tmp_path, monkeypatch):
    """Images drawn from what each prompt says (type from the template, location from the caption's words): every
    measure must then see a generator that follows its text, so rows, seeds and swaps are wired right."""
    from synth.evaluation import text_run

    def oracle(gen, prompts, labels, seeds, **kw):
        rng = np.random.default_rng(0)
        out = []
        for p in prompts:
            where = "Head" if any(w in p.lower() for w in ("head", "brain")) else "Thorax"
            out.append(torch.from_numpy(captioned_phantom(p.split(",")[0], where, 16, rng))[None])
        return torch.stack(out)

    monkeypatch.setattr(text_run.T, "generate", oracle)
    rep = text_run.evaluate_text([str(text_model)], str(captioned), tmp_path, seeds=2, k=4, judge_steps=150,
                                 clip_steps=30, swaps=["type:CT|MR", "location:Head|Thorax"], log=lambda *a: None)
    m = rep["models"]["run"]
    for name in ("type", "location"):
        assert rep["judges"][name]["ceiling"] == 1.0 and m["attributes"][name]["accuracy"] == 1.0
        assert m["attributes"][name]["share_of_ceiling"] == 1.0
    assert m["swaps"]["type:CT|MR"]["accuracy"] == 1.0 and m["swaps"]["location:Head|Thorax"]["accuracy"] == 1.0
    assert m["swaps"]["type:CT|MR"]["unswapped_follow"] == 1.0 and m["swaps"]["type:CT|MR"]["strict"] == 1.0


def test_the_judges_view_averages_areas_and_keeps_smaller_images():
    x = torch.tensor([[0, 2, 10, 10], [2, 0, 10, 10], [255, 255, 1, 1], [255, 255, 1, 2]], dtype=torch.uint8)[None, None]
    assert T.judge_view(x, 2).tolist() == [[[[1, 10], [255, 1]]]]
    assert T.judge_view(x, 8) is x and T.judge_view(x, None) is x


def test_a_generator_that_ignores_the_swap_scores_one_half_not_the_share_of_one_direction():
    old, new = ["CT"] * 8 + ["MR"] * 2, ["MR"] * 8 + ["CT"] * 2
    always_mr = torch.ones(10, dtype=torch.long)  # judged MR whatever the text says
    s = T.swap_scores(always_mr, always_mr, old, new, ["CT", "MR"])
    assert s["accuracy"] == 0.5 and s["directions"] == {"CT->MR": 1.0, "MR->CT": 0.0} and s["strict"] == 0.0
    follows = torch.tensor([1] * 8 + [0] * 2)
    s = T.swap_scores(1 - follows, follows, old, new, ["CT", "MR"])
    assert s["accuracy"] == 1.0 and s["strict"] == 1.0 and s["unswapped_follow"] == 1.0 and s["n"] == 10


class _CountingGen:
    """A stand-in generator that counts its sample calls (the cache logic is what is tested)."""

    weights_sha256 = "0" * 64

    def __init__(self):
        self.unet, self.calls = torch.nn.Linear(1, 1), 0

    def sample(self, conds, seeds, **kw):
        from types import SimpleNamespace

        self.calls += 1
        return SimpleNamespace(images=torch.full((len(conds), 1, 4, 4), 7, dtype=torch.uint8))


def test_the_image_cache_remakes_damaged_or_short_files(tmp_path):
    gen, kw = _CountingGen(), dict(steps=1, guidance=1.0, sampler="ddim", batch=8, cache=tmp_path, log=lambda *a: None)
    first = T.generate(gen, ["a", "b"], [0, 1], [1, 2], **kw)
    assert gen.calls == 1 and T.generate(gen, ["a", "b"], [0, 1], [1, 2], **kw).equal(first) and gen.calls == 1
    (path,) = tmp_path.glob("images-*.npz")
    path.write_bytes(b"PK\x03\x04 not a zip")  # a torn write from an older version
    assert T.generate(gen, ["a", "b"], [0, 1], [1, 2], **kw).equal(first) and gen.calls == 2
    np.savez(open(path, "wb"), images=first[:1].numpy())  # one image where two are asked
    assert len(T.generate(gen, ["a", "b"], [0, 1], [1, 2], **kw)) == 2 and gen.calls == 3


def test_the_text_judge_is_saved_in_one_step_and_a_damaged_one_is_retrained(tmp_path):
    from transformers import CLIPTokenizer  # noqa: F401 - the tokenizer kind load_clip reads

    images = torch.randint(0, 255, (12, 1, 16, 16), dtype=torch.uint8)
    caps = [f"caption {i % 4} of the head" for i in range(12)]
    model, tok = C.train_clip(images, caps, steps=2, seed=0, log=lambda *a: None)
    C.save_clip(model, tok, tmp_path / "clip", {"steps": 2})
    C.save_clip(model, tok, tmp_path / "clip", {"steps": 2})  # over an existing one: replaced whole
    assert C.load_clip(tmp_path / "clip", {"steps": 2}) is not None
    assert C.load_clip(tmp_path / "clip", {"steps": 3}) is None  # stale
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]  # no temporary folder left beside it
    (tmp_path / "clip" / "clip.json").write_text('{"steps": 2, "vocab')  # torn
    assert C.load_clip(tmp_path / "clip", {"steps": 2}) is None


def test_a_subset_of_test_captions_gives_every_class_its_share(captioned):
    from synth.evaluation.text_run import _head, _load

    test = _load(str(captioned), 16, "test", ["Head", "Thorax"])
    sub = _head(test, 6, seed=0)
    assert len(sub) == 6 and sorted(sub.labels.tolist()) == [0, 0, 0, 1, 1, 1]
    assert sub.prompts == [p for p in test.prompts if p in sub.prompts]  # rows keep their order
    assert _head(test, 6, seed=0).prompts == sub.prompts and _head(test, 6, seed=1).prompts != sub.prompts


def test_the_probe_reads_each_caption_once_and_never_a_test_caption_seen_in_training(captioned):
    from dataclasses import replace

    from synth.evaluation.text_run import _load, probe_rows

    train = _load(str(captioned), 16, "train", ["Head", "Thorax"])
    test = _load(str(captioned), 16, "test", ["Head", "Thorax"])
    test = replace(test, prompts=[train.prompts[0], "", test.prompts[2], test.prompts[2].upper()] + test.prompts[4:])
    caps_tr, ytr, caps_te, yte = probe_rows(train, test)
    assert len(caps_tr) == len(set(caps_tr)) == len(train)
    assert train.prompts[0] not in caps_te and "" not in caps_te and len(caps_te) == len(test) - 3
    assert len(yte) == len(caps_te) and set(ytr) == {0, 1}
    val = _load(str(captioned), 16, "val", ["Head", "Thorax"])  # carved from the manifest's training rows
    more = probe_rows(train, val, test)[2]
    assert len(more) == len(caps_te) + len(val) and not set(more) & set(caps_tr)


def test_the_probe_has_no_before_without_a_recorded_config():
    assert T.text_encoder_before({}, None) == (None, "unknown (the export records no training config)")


def test_the_probe_of_a_fine_tuned_model_starts_from_its_foundations_text_encoder(text_model, tmp_path):
    from safetensors.torch import load_file

    from synth.samplers.artifact import read_artifact

    found = read_artifact(str(text_model))
    cfg = json.loads(json.dumps(found["config"]))
    cfg["model"]["pretrained"] = str(tmp_path / "moved-away")  # the folder named in the config is gone ...
    meta = {"config": cfg, "train_subset": {"foundation": {"path": found["path"]}}}  # ... its recorded export is not
    enc, where = T.text_encoder_before(meta, None)
    assert where == f"pretrained {found['path']}"
    saved = load_file(str(Path(found["path"]) / "text_encoder" / "model.safetensors"))
    shared = [k for k in enc.state_dict() if k in saved]
    assert len(shared) >= len(saved) - 1 and all(torch.equal(enc.state_dict()[k], saved[k]) for k in shared)
    meta["train_subset"] = {}
    enc, where = T.text_encoder_before(meta, None)
    assert enc is None and "moved-away cannot be loaded" in where
    # the recorded export moved away, the config's folder is there: that one
    cfg["model"]["pretrained"] = found["path"]
    meta["train_subset"] = {"foundation": {"path": str(tmp_path / "gone"), "weights_sha256": found["weights_sha256"]}}
    enc, where = T.text_encoder_before(meta, None)
    assert enc is not None and where == f"pretrained {found['path']}"
    # retrained in place since (the hash it was fine-tuned from differs): no 'before', and the reason
    meta["train_subset"] = {"foundation": {"path": found["path"], "weights_sha256": "0" * 64}}
    enc, where = T.text_encoder_before(meta, None)
    assert enc is None and "was retrained since" in where


def test_paired_differences_resample_captions_and_compare_only_images_both_scored():
    rows = torch.arange(40) // 2  # 20 captions x 2 seeds
    a = (torch.arange(40) % 3 == 0).double()
    same = T.paired_difference(a, a.clone(), rows)
    assert same == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "n": 40}
    better = T.paired_difference(torch.zeros(40), torch.ones(40), rows)
    assert better["delta"] == 1.0 and better["lo"] == 1.0
    # b unscored on images a got right: on the images both scored the models agree, so no difference
    a2 = torch.cat([torch.ones(10), torch.zeros(10)]).double()
    b2 = torch.cat([torch.full((10,), float("nan")), torch.zeros(10)]).double()
    assert T.paired_difference(a2, b2, torch.arange(20)) == {"delta": 0.0, "lo": 0.0, "hi": 0.0, "n": 10}
    nothing = T.paired_difference(a2, torch.full((20,), float("nan")), torch.arange(20))
    assert nothing["n"] == 0 and math.isnan(nothing["delta"])  # nothing measured is not "no difference"
    b = a.clone()
    b[:10] = 1.0
    d = T.paired_difference(a, b, rows, seed=1)
    assert d["delta"] == pytest.approx(float(b.mean() - a.mean())) and d["lo"] < d["delta"] < d["hi"]
    assert d == T.paired_difference(a, b, rows, seed=1)
    # groups (a swap's two directions) weigh alike: 30 images of a direction where b gains 1, 10 where it loses 1
    groups = torch.cat([torch.zeros(30), torch.ones(10)]).long()
    ga, gb = torch.cat([torch.zeros(30), torch.ones(10)]).double(), torch.cat([torch.ones(30), torch.zeros(10)]).double()
    assert T.paired_difference(ga, gb, rows, groups)["delta"] == pytest.approx(0.0)
    assert T.paired_difference(ga, gb, rows)["delta"] == pytest.approx(0.5)


def test_paired_matches_images_by_row_and_seed_whatever_order_each_model_made_them():
    from synth.evaluation.text_run import paired

    nan = float("nan")
    first = {"swap t:A|B": (torch.tensor([0, 1, 4, 5]), torch.tensor([1.0, 0.0, 1.0, 1.0]).double(),
                            torch.tensor([0, 0, 1, 1]))}
    # the second model made rows 2 and 0 (ids 4, 5, 0, 1) in another order and row 1 only for itself
    second = {"swap t:A|B": (torch.tensor([4, 5, 2, 3, 0, 1]), torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0, nan]).double(),
                             torch.tensor([1, 1, 0, 0, 0, 0]))}
    d = paired({"m1": first, "m2": second}, seeds=2, seed=0)["models"]["m2"]["swap t:A|B"]
    # both scored ids 0, 4, 5: direction 0 -> 1 vs 1 (0), direction 1 -> 0 vs 1 twice (-1): averaged -0.5
    assert d["n"] == 3 and d["delta"] == pytest.approx(-0.5)


def test_a_second_model_is_scored_on_the_same_rows_whatever_its_class_order(captioned):
    from synth.evaluation.text_run import _head, _load, _renumbered

    test = _head(_load(str(captioned), 16, "test", ["Head", "Thorax"]), 6, seed=0)
    other = _renumbered(test, ["Thorax", "Head"], "B")
    assert other.prompts == test.prompts and other.images.equal(test.images)
    assert [other.classes[int(k)] for k in other.labels] == [test.classes[int(k)] for k in test.labels]
    with pytest.raises(EvalError, match="model B has no class 'Thorax' of the test captions"):
        _renumbered(test, ["Head", "Spine"], "B")


def test_an_unfinished_text_judge_of_an_older_version_is_replaced(tmp_path):
    images = torch.randint(0, 255, (12, 1, 16, 16), dtype=torch.uint8)
    model, tok = C.train_clip(images, [f"caption {i % 4}" for i in range(12)], steps=1, seed=0, log=lambda *a: None)
    (tmp_path / "clip" / "tokenizer").mkdir(parents=True)  # killed after the tokenizer, before clip.json
    C.save_clip(model, tok, tmp_path / "clip", {"steps": 1})
    assert C.load_clip(tmp_path / "clip", {"steps": 1}) is not None
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("a user's file")
    with pytest.raises(Exception, match="synth did not write it"):
        C.save_clip(model, tok, tmp_path / "mine", {"steps": 1})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "a user's file"
