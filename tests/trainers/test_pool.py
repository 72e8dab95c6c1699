"""Unlabelled pools (issue 17 item 1) and foundation-then-adaptation (item 2): the batch mix, where pools come from,
the null condition they train under, exact resume, export records, and every refusal."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from synth.config import ConfigError
from synth.data import DataError, load_pool, load_split
from synth.trainers.bridge import train_bridge
from synth.trainers.common import params_hash, pool_batch_indices, pool_counts
from synth.trainers.foundation import adapt_bridge_unet, class_rows
from tests.conftest import PNEUMONIA_NPZ, need, tiny_cfg
from tests.trainers.test_bridge import BRIDGE, three_domains

quiet = dict(log=lambda *a: None)
TWO = ["labels.domains=[clean,dim]", "model.unet.attention_levels=[false,false]"]


def two_domains(path, n=64, size=16, pool=0):
    """Phantoms in two domains, with ``pool`` more images under ``unlabelled_images`` (another seed)."""
    from synth.data import phantom_domains

    imgs, dom = phantom_domains(n, size)
    keep = dom < 2
    imgs, dom = imgs[keep], dom[keep]
    extra = {}
    if pool:
        more, _ = phantom_domains(pool, size, seed=123)  # another seed: no copy of a labelled or test image
        extra["unlabelled_images"] = more
    np.savez(path, train_images=imgs, train_labels=dom[:, None], val_images=imgs[:8], val_labels=dom[:8, None],
             test_images=imgs[-8:], test_labels=dom[-8:, None], **extra)
    return path


# --- the batch mix ---------------------------------------------------------------------------------


def test_each_batch_holds_the_share_and_each_part_cycles_its_own_epochs():
    n_lab, n_pool, g = 10, 37, 8
    seen_lab, seen_pool = [], []
    for step in range(20):
        idx = pool_batch_indices(step, n_lab, n_pool, g, 0.5, seed=3)
        assert torch.equal(idx, pool_batch_indices(step, n_lab, n_pool, g, 0.5, seed=3))  # pure: resume reads alike
        lab, pool = idx[idx < n_lab], idx[idx >= n_lab]
        assert len(lab) == len(pool) == 4
        assert torch.equal((idx >= n_lab)[:4].sum(), torch.tensor(2))  # spread: each half-batch (rank) holds the share
        seen_lab += lab.tolist()
        seen_pool += (pool - n_lab).tolist()
    # every labelled image once per epoch of 10 (2.5 steps), every pool image once per 37
    assert sorted(seen_lab[:10]) == list(range(10)) and sorted(seen_lab[10:20]) == list(range(10))
    assert sorted(seen_pool[:37]) == list(range(37))


def test_share_edges_never_drop_a_part_silently():
    assert pool_counts(8, 0.0) == (8, 0) and pool_counts(8, 1.0) == (0, 8)
    assert pool_counts(8, 0.01) == (7, 1) and pool_counts(8, 0.99) == (1, 7)
    idx = pool_batch_indices(0, 5, 9, 8, 1.0, seed=0)
    assert (idx >= 5).all()


# --- where pools come from ---------------------------------------------------------------------------


def test_rest_is_the_training_split_outside_the_labelled_subset():
    npz = need(PNEUMONIA_NPZ)
    cfg = tiny_cfg(f"data.name={npz}", "data.resolution=28", "data.fraction=0.05", "data.unlabelled=rest")
    train = load_split(cfg.data, "train")
    pool = load_pool(cfg.data, train)
    whole = np.load(npz)["train_images"]
    assert len(train) + len(pool) == len(whole)
    lab = {bytes(r.numpy().tobytes()) for r in train.images}
    assert not any(bytes(r.numpy().tobytes()) in lab for r in pool.images[:500])
    assert pool.record["kind"] == "rest" and pool.record["n"] == len(pool) and len(pool.record["indices_sha256"]) == 16
    with pytest.raises(DataError, match=r"data.unlabelled=rest: the labelled subset is the whole training split.*lower data.fraction"):
        load_pool(dataclasses.replace(cfg.data, fraction=1.0), load_split(dataclasses.replace(cfg.data, fraction=1.0), "train"))


def test_pool_paths_manifests_folders_and_npz_keys(tmp_path):
    grey = lambda v: Image.fromarray(np.full((16, 16), v, np.uint8))  # noqa: E731
    (tmp_path / "ds" / "a").mkdir(parents=True)
    (tmp_path / "ds" / "b").mkdir()
    (tmp_path / "ds" / "unlabelled" / "deep").mkdir(parents=True)
    for i in range(4):
        grey(10 + i).save(tmp_path / "ds" / "a" / f"{i}.png")
        grey(100 + i).save(tmp_path / "ds" / "b" / f"{i}.png")
    for i in range(5):
        grey(200 + i).save(tmp_path / "ds" / "unlabelled" / "deep" / f"{i}.png")
    # an image folder's own unlabelled/ is its pool with data.unlabelled=source, and not a class
    cfg = tiny_cfg(f"data.name={tmp_path / 'ds'}", "data.unlabelled=source", "data.val_fraction=0.25")
    train = load_split(cfg.data, "train")
    assert train.classes == ["a", "b"]
    assert len(load_pool(cfg.data, train)) == 5
    # a flat folder (any depth) as a path pool
    import shutil

    shutil.move(tmp_path / "ds" / "unlabelled", tmp_path / "elsewhere")  # beside the data, not inside it
    assert len(load_pool(dataclasses.replace(cfg.data, unlabelled=str(tmp_path / "elsewhere")), train)) == 5
    shutil.move(tmp_path / "elsewhere", tmp_path / "ds" / "unlabelled")
    # a manifest whose empty-label rows are the pool
    man = tmp_path / "ds" / "m.csv"
    man.write_text("file_name,label\n" + "".join(f"a/{i}.png,a\nb/{i}.png,b\n" for i in range(4))
                   + "".join(f"unlabelled/deep/{i}.png,\n" for i in range(5)))
    with pytest.raises(DataError, match=r"has an empty label.*set data.unlabelled=source"):
        load_split(tiny_cfg(f"data.name={man}").data, "train")
    mcfg = tiny_cfg(f"data.name={man}", "data.unlabelled=source", "data.val_fraction=0.25")
    mtrain = load_split(mcfg.data, "train")
    assert mtrain.classes == ["a", "b"] and len(load_pool(mcfg.data, mtrain)) == 5
    # an npz's unlabelled_images key
    npz = two_domains(tmp_path / "two.npz", pool=12)
    ncfg = tiny_cfg(f"data.name={npz}", *TWO, "data.unlabelled=source")
    assert len(load_pool(ncfg.data, load_split(ncfg.data, "train"))) == 12


def test_bad_pools_are_one_line(tmp_path):
    npz = two_domains(tmp_path / "two.npz", pool=12)
    cfg = tiny_cfg(f"data.name={npz}", *TWO)
    train = load_split(cfg.data, "train")
    with pytest.raises(DataError, match=r"data.unlabelled '.*nope' does not exist"):
        load_pool(dataclasses.replace(cfg.data, unlabelled=str(tmp_path / "nope")), train)
    # a pool that shares images with the test split
    z = dict(np.load(npz))
    leak = tmp_path / "leak.npz"
    np.savez(leak, train_images=np.concatenate([z["unlabelled_images"], z["test_images"][:3]]), train_labels=np.zeros((15, 1)))
    with pytest.raises(DataError, match=r"shares 3 image\(s\) with the test split.*pool image 12 = test image 0"):
        load_pool(dataclasses.replace(cfg.data, unlabelled=str(leak)), train)
    # another channel count
    (tmp_path / "rgb").mkdir()
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "rgb" / f"{i}.png")
    with pytest.raises(DataError, match=r"holds colour images but the labelled ones are grey"):
        load_pool(dataclasses.replace(cfg.data, unlabelled=str(tmp_path / "rgb")), train)
    # an image folder without unlabelled/
    with pytest.raises(DataError, match=r"has no 'unlabelled/' folder"):
        load_pool(dataclasses.replace(cfg.data, name=str(tmp_path / "rgb"), unlabelled="source"), train)
    with pytest.raises(ConfigError, match=r"train.unlabelled_share.*1.5"):
        tiny_cfg("train.unlabelled_share=1.5")


# --- training with a pool ----------------------------------------------------------------------------


def test_pool_trains_under_the_null_domain_and_resumes_exactly(tmp_path):
    npz = two_domains(tmp_path / "two.npz", pool=24)
    base = [f"data.name={npz}", *TWO, "data.unlabelled=source", "train.checkpoint_every=3", "train.ema_decay=0",
            "train.lr_schedule=constant"]  # constant: a run extended from 3 to 6 steps has the same schedule
    # share 1: only pool rows, so the class rows of the embedding never get a gradient; the null row does
    only_pool = train_bridge(tiny_cfg(*base, "train.steps=3", "train.unlabelled_share=1"), tmp_path / "p", **quiet)
    from synth.samplers.generator import load_generator
    from synth.models import build_flow_unet

    torch.manual_seed(0)
    init = build_flow_unet(16, 1, [16, 32], 1, 8, 8, [False, False], 2).class_embedding.weight
    trained = load_generator(only_pool).unet.class_embedding.weight
    assert torch.equal(trained[:2], init[:2]) and not torch.equal(trained[2], init[2])
    rec = json.loads((only_pool / "synth.json").read_text())["train_subset"]
    assert rec["n"] == 43 and rec["unlabelled"]["n"] == 24 and rec["unlabelled"]["share"] == 1.0
    assert rec["unlabelled"]["kind"] == "source" and len(rec["unlabelled"]["sha256"]) == 16
    # fine-tuning that pool-only foundation: its class rows were never trained, so they start from its null row
    said = []
    tuned = train_bridge(tiny_cfg(f"data.name={npz}", *TWO, "train.steps=1", "train.lr=1e-12", "train.warmup_steps=0",
                                  f"model.pretrained={only_pool}"), tmp_path / "ft", log=said.append)
    assert any("never saw a labelled image" in s for s in said)
    table = load_generator(tuned).unet.class_embedding.weight
    assert torch.allclose(table[0], trained[2], atol=1e-6) and torch.allclose(table[1], trained[2], atol=1e-6)
    # a run of 6 steps equals 3 steps + resume to 6
    whole = train_bridge(tiny_cfg(*base, "train.steps=6"), tmp_path / "a", **quiet)
    train_bridge(tiny_cfg(*base, "train.steps=3"), tmp_path / "b", **quiet)
    resumed = train_bridge(tiny_cfg(*base, "train.steps=6"), tmp_path / "b", **quiet)
    assert params_hash({"u": load_generator(whole).unet}) == params_hash({"u": load_generator(resumed).unet})


def test_ldm_trains_with_a_pool_and_records_it(tmp_path):
    from synth.trainers.ldm import train_ldm

    export = train_ldm(tiny_cfg("data.fraction=0.25", "data.unlabelled=rest", "train.steps=2"), tmp_path / "l", **quiet)
    rec = json.loads((export / "synth.json").read_text())["train_subset"]
    assert rec["n"] == 16 and rec["unlabelled"]["n"] == 48 and rec["n_source"] == 64


# --- foundation, then adaptation ---------------------------------------------------------------------


def test_class_embeddings_are_matched_by_name_and_new_ones_start_from_null():
    from synth.models import build_flow_unet

    unet = build_flow_unet(16, 1, [16, 32], 1, 8, 8, [False, False], 2)
    old = unet.class_embedding.weight.detach().clone()
    adapted, notes = adapt_bridge_unet(unet, ["clean", "dim"], ["Dim", "inverted", "clean"], "by_name")
    new = adapted.class_embedding.weight
    assert new.shape == (4, old.shape[1])
    assert torch.equal(new[0], old[1]) and torch.equal(new[2], old[0]) and torch.equal(new[1], old[2])
    assert torch.equal(new[3], old[2])  # the null row is kept
    assert "no class 'inverted'" in notes[0]
    rows, notes = class_rows(["clean", "dim"], ["clean", "dim"], "fresh")
    assert rows == [None, None] and "fresh" in notes[0]
    with pytest.raises(ConfigError, match=r"as many under other names.*model.class_init=fresh"):
        class_rows(["clean", "dim"], ["a", "b"], "by_name")


def test_fine_tune_a_bridge_export_with_a_new_class_and_its_own_lr(tmp_path):
    two = two_domains(tmp_path / "two.npz")
    foundation = train_bridge(tiny_cfg(f"data.name={two}", *TWO, "train.steps=2"), tmp_path / "f", **quiet)
    three = three_domains(tmp_path / "three.npz", size=16)
    said = []
    cfg = tiny_cfg(f"data.name={three}", *BRIDGE, "train.steps=2", f"model.pretrained={tmp_path / 'f'}",
                   "train.new_parts_lr=0.05")
    export = train_bridge(cfg, tmp_path / "t", log=said.append)
    assert any("no class 'inverted'" in s for s in said) and any("fine-tuning the bridge export" in s for s in said)
    meta = json.loads((export / "synth.json").read_text())
    assert meta["domains"] == ["clean", "dim", "inverted"]
    assert meta["train_subset"]["foundation"]["classes"] == ["clean", "dim"]
    first = json.loads((foundation / "synth.json").read_text())
    assert meta["train_subset"]["foundation"]["train_subset"] == first["train_subset"]
    assert meta["train_subset"]["foundation"]["weights_sha256"] == first["weights_sha256"]
    # the new parts' learning rate is its own param group
    from synth.trainers.loop import Task, param_groups

    lin = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    task = Task("t", lin, {"m": lin}, [("m", 0.1)], 1, None, None, lr_overrides={"m.1.": 0.5})
    groups = param_groups(task)
    assert [g["lr"] for g in groups] == [0.5, 0.1] and [len(g["params"]) for g in groups] == [2, 2]


def test_bad_foundations_are_one_line(tmp_path, tiny_export):
    two = two_domains(tmp_path / "two.npz")
    train_bridge(tiny_cfg(f"data.name={two}", *TWO, "train.steps=2"), tmp_path / "f", **quiet)
    base = [f"data.name={two}", *TWO, "train.steps=2", f"model.pretrained={tmp_path / 'f'}"]
    with pytest.raises(ConfigError, match=r"trained at 16 px but data.resolution=32; set data.resolution=16"):
        train_bridge(tiny_cfg(*base, "data.resolution=32"), tmp_path / "r1", **quiet)
    with pytest.raises(ConfigError, match=r"works in the pixel codec's space but model.codec=vae"):
        train_bridge(tiny_cfg(*base, "model.codec=vae"), tmp_path / "r2", **quiet)
    with pytest.raises(ConfigError, match=r"as many under other names"):
        train_bridge(tiny_cfg(f"data.name={two}", "labels.domains=[x,y]", "model.unet.attention_levels=[false,false]",
                              "train.steps=2", f"model.pretrained={tmp_path / 'f'}"), tmp_path / "r3", **quiet)
    with pytest.raises(ConfigError, match=r"is an export of 'synth train ldm'; 'synth train bridge' fine-tunes bridge exports"):
        train_bridge(tiny_cfg(f"data.name={two}", *TWO, "train.steps=2", f"model.pretrained={tiny_export}"),
                     tmp_path / "r4", **quiet)
    assert not (tmp_path / "r1" / "export").exists() and not (tmp_path / "r4" / "checkpoints").exists()


def test_a_text_model_fine_tunes_a_synth_text_export(tmp_path, tiny_export):
    from synth.trainers.ldm import train_ldm

    said = []
    export = train_ldm(tiny_cfg("train.steps=2", f"model.pretrained={tiny_export}"), tmp_path / "ft", log=said.append)
    meta = json.loads((export / "synth.json").read_text())
    first = json.loads((tiny_export / "synth.json").read_text())
    assert meta["train_subset"]["foundation"]["weights_sha256"] == first["weights_sha256"]
    assert any("pretrained:" in s for s in said)
    with pytest.raises(ConfigError, match=r"set train.path=diffusion"):
        train_ldm(tiny_cfg("train.steps=2", f"model.pretrained={tiny_export}", "train.path=flow"), tmp_path / "f2",
                  **quiet)


def test_review_fixes_pretrained_and_held_out_overlap(tmp_path, tiny_export):
    """A bridge's model.pretrained that is no synth export is refused (never a silent scratch run); a text model
    fine-tunes a synth run folder (hashes checked); a pool holding validation images is refused."""
    from synth.trainers.ldm import train_ldm

    two = two_domains(tmp_path / "two.npz")
    with pytest.raises(ConfigError, match=r"is not a synth bridge export .*or unset it"):
        train_bridge(tiny_cfg(f"data.name={two}", *TWO, "train.steps=1", f"model.pretrained={tmp_path / 'typo'}"),
                     tmp_path / "r", **quiet)
    export = train_ldm(tiny_cfg("train.steps=1", f"model.pretrained={tiny_export.parent}"), tmp_path / "ft", **quiet)
    assert json.loads((export / "synth.json").read_text())["train_subset"]["foundation"]["path"] == str(tiny_export)
    z = dict(np.load(two))
    leak = tmp_path / "leak.npz"
    np.savez(leak, train_images=np.concatenate([255 - z["train_images"][:4], z["val_images"][2:3]]))
    cfg = tiny_cfg(f"data.name={two}", *TWO)
    with pytest.raises(DataError, match=r"shares 1 image\(s\) with the validation split .*pool image 4 = validation image 2"):
        load_pool(dataclasses.replace(cfg.data, unlabelled=str(leak)), load_split(cfg.data, "train"))
    with pytest.raises(DataError, match=r"a MedMNIST name has none\); use data.unlabelled=rest"):
        load_pool(dataclasses.replace(cfg.data, name="pneumoniamnist", unlabelled="source"), load_split(cfg.data, "train"))
