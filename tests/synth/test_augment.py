"""synth.augment: synthetic sets in user training loops (datasets, streams, mixing, quality, online)."""
import json
import os
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from synth.augment import (AugmentError, MixedBatchSampler, MixedDataset, OnlineSynthetic, SyntheticSet,
                           SyntheticStream, map_labels, mix, module_hash, quality_filter, read_set_manifest, water_fill)
from synth.seeds import image_seed

CLASSES = ["normal", "pneumonia"]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------
# Sets written in the exact layout of samplers/bulk.py (fast: no model)


def pixels(i: int, label: int | None, rgb: bool = False, size: int = 28) -> np.ndarray:
    """Dark 'normal', bright 'pneumonia' (the quality judge below reads that); pixel (0, 0..1) holds the index."""
    a = np.full((size, size), 40 if not label else 200, np.uint8)
    a[0, 0], a[0, 1] = i % 256, i // 256
    return np.stack([a, a // 2, a // 3], -1) if rgb else a


def item_id(image: torch.Tensor) -> int:
    """The index written by :func:`pixels`, from a float (C, H, W) [0, 1] image."""
    v = (image[0, 0, :2] * 255).round().long()
    return int(v[0] + 256 * v[1])


def png(a: np.ndarray) -> bytes:
    from synth.samplers.bulk import png_bytes

    if a.ndim == 2:
        return png_bytes(a)
    import io

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def write_set(root, labels, *, fmt="imagefolder", classes=CLASSES, shard_size=8, rgb=False, dark=(), n_requested=None):
    """A finished synth set: ``labels[i]`` is image i's class id (None: free-text prompt); ``dark``: indices
    drawn dark whatever their label (what a quality filter should reject)."""
    from synth.samplers.bulk import tar_bytes

    root.mkdir(parents=True)
    rows, by_shard = [], {}
    for i, k in enumerate(labels):
        row = {"index": i, "label": None if k is None else classes[k], "label_id": k, "seed": image_seed(0, i),
               "prompt": "chest x-ray", "sampler": "euler", "steps": 2, "guidance": 1.5}
        if fmt == "imagefolder":
            row = {"file_name": f"shard-{i // shard_size:05d}/{i:08d}.png", **row}
        data = png(pixels(i, 0 if i in dark else k, rgb))
        by_shard.setdefault(i // shard_size, []).append((row, data))
        rows.append(row)
    for s, items in by_shard.items():
        if fmt == "imagefolder":
            (root / f"shard-{s:05d}").mkdir()
            for row, data in items:
                (root / row["file_name"]).write_bytes(data)
        else:
            (root / f"shard-{s:05d}.tar").write_bytes(tar_bytes([r for r, _ in items], {r["index"]: d for r, d in items}))
    if fmt == "imagefolder":
        (root / "metadata.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    counts = Counter("(free text)" if r["label"] is None else r["label"] for r in rows)
    manifest = {"format": fmt, "n_requested": n_requested or len(labels), "n_done": len(labels),
                "completed_ranges": [[0, len(labels)]], "counts_per_label": dict(counts), "shard_size": shard_size,
                "model": {"path": "m", "model_id": "m", "weights_sha256": "abc", "train_subset": None},
                "label_schema": {"classes": list(classes), "domains": [], "prompt_template": "chest x-ray, {label}",
                                 "prompts": {}}}
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def alternating(n, k=2):
    return [i % k for i in range(n)]


class RealSet(Dataset):
    """A user's real data: float (1, 28, 28) images in [0, 1], torchvision-style .classes/.targets."""

    def __init__(self, labels, classes=("normal", "pneumonia"), extra=False, size=28):
        self.targets, self.classes, self.extra, self.size = list(labels), list(classes), extra, size

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        x = torch.full((1, self.size, self.size), 0.5)
        return (x, self.targets[i], "meta") if self.extra else (x, self.targets[i])


# ---------------------------------------------------------------------------
# Manifest and labels


def test_read_set_manifest_errors(tmp_path):
    with pytest.raises(AugmentError, match="'.*nowhere' does not exist"):
        read_set_manifest(tmp_path / "nowhere")
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "notes.txt").write_text("x")
    with pytest.raises(AugmentError, match=r"'.*random' is not a synth set"):
        read_set_manifest(tmp_path / "random")
    s = write_set(tmp_path / "s", alternating(4))
    (s / "manifest.json").unlink()
    with pytest.raises(AugmentError, match="still being written or was interrupted; rerun the same `synth sample`"):
        read_set_manifest(s)
    write_set(tmp_path / "part", alternating(4), n_requested=10)
    with pytest.raises(AugmentError, match=r"incomplete \(4 of 10 images\); rerun the same"):
        SyntheticSet(tmp_path / "part")
    assert read_set_manifest(write_set(tmp_path / "ok", alternating(4)))["n_done"] == 4


def test_map_labels_by_name_and_overrides():
    assert map_labels(["Pleural_Effusion", "normal"], ["NORMAL", "pleural effusion"]) == [1, 0]
    assert map_labels(["a-b", "c"], {"c": 0, "A B": 1}) == [1, 0]  # class_to_idx dicts too
    assert map_labels(["normal", "pneumonia"], ["healthy", "sick"], {"normal": "healthy", "pneumonia": None}) == [0, -1]
    with pytest.raises(AugmentError) as e:
        map_labels(["normal", "pneumonia"], ["normal", "bacterial", "viral"])
    msg = str(e.value)
    assert ("synthetic labels ['pneumonia'] match no real class" in msg and "set labels: normal, pneumonia" in msg
            and "real labels: normal, bacterial, viral" in msg and "label_map={'pneumonia':" in msg)
    with pytest.raises(AugmentError, match="label_map names 'covid', which is not a label of the synthetic set"):
        map_labels(CLASSES, CLASSES, {"covid": "normal"})
    with pytest.raises(AugmentError, match="label_map sends 'pneumonia' to 'sick', which is not a real class"):
        map_labels(CLASSES, CLASSES, {"pneumonia": "sick"})


# ---------------------------------------------------------------------------
# SyntheticSet


def test_synthetic_set_items_labels_tensors(tmp_path):
    root = write_set(tmp_path / "s", alternating(20))
    ds = SyntheticSet(root)
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and 0 <= x.min() and x.max() <= 1
    assert item_id(x) == 3 and y == 1 and ds.labels.tolist() == alternating(20) and len(ds.rows) == 20
    assert ds.rows[3]["file_name"] == "shard-00000/00000003.png" and ds.manifest["n_done"] == 20
    # the user's class order and spelling: mapped by name
    mapped = SyntheticSet(root, classes=["PNEUMONIA", "Normal"])
    assert mapped.labels.tolist() == [1 - k for k in alternating(20)] and mapped.classes == ["PNEUMONIA", "Normal"]
    dropped = SyntheticSet(root, classes=["sick"], label_map={"pneumonia": "sick", "normal": None})
    assert len(dropped) == 10 and set(dropped.labels.tolist()) == {0}
    seen = []
    tf = SyntheticSet(root, transform=lambda im: seen.append(im) or im.size)
    assert tf[0] == ((28, 28), 0) and isinstance(seen[0], Image.Image) and seen[0].mode == "L"
    imgs, labels = ds.tensors()
    assert imgs.dtype == torch.uint8 and imgs.shape == (20, 1, 28, 28) and labels.tolist() == alternating(20)
    rgb = SyntheticSet(write_set(tmp_path / "rgb", alternating(4), rgb=True))
    assert rgb[0][0].shape == (3, 28, 28) and rgb.tensors()[0].shape == (4, 3, 28, 28)


def test_synthetic_set_errors(tmp_path):
    with pytest.raises(AugmentError, match=r"webdataset set \(shard-\*\.tar\); stream it with SyntheticStream"):
        SyntheticSet(write_set(tmp_path / "w", alternating(4), fmt="webdataset"))
    with pytest.raises(AugmentError, match="label_map needs classes="):
        SyntheticSet(write_set(tmp_path / "s", alternating(4)), label_map={"normal": None})
    with pytest.raises(AugmentError, match=r"2 images .* have no class label .*sample with --labels"):
        SyntheticSet(write_set(tmp_path / "free", [0, None, 1, None]))
    missing = write_set(tmp_path / "m", alternating(4))
    (missing / "shard-00000" / "00000002.png").unlink()
    with pytest.raises(AugmentError, match="image 'shard-00000/00000002.png' of set .* is missing; rerun the same"):
        SyntheticSet(missing)[2]


@pytest.mark.parametrize("bad", ["../outside.png", "/etc/passwd", "shard-00000/../../x.png", "link", "dirlink"])
def test_paths_must_stay_inside_the_set(tmp_path, bad):
    root = write_set(tmp_path / "s", alternating(4))
    outside = tmp_path / "outside.png"
    outside.write_bytes(png(pixels(0, 0)))
    if bad == "link":  # a symlink inside the folder that points outside it
        os.symlink(outside, root / "shard-00000" / "evil.png")
        bad = "shard-00000/evil.png"
    if bad == "dirlink":  # a folder inside that is a symlink to one outside
        os.symlink(tmp_path, root / "shard-00009")
        bad = "shard-00009/outside.png"
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    rows[1]["file_name"] = bad
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(AugmentError, match=f"metadata.jsonl line 2 .*'{bad}'.* outside the set folder"):
        SyntheticSet(root)


# ---------------------------------------------------------------------------
# SyntheticStream


def stream_ids(ds, workers=2):
    return [item_id(x) for x, _ in DataLoader(ds, batch_size=None, num_workers=workers)]


def test_stream_splits_over_workers_and_ranks_exactly_once(tmp_path):
    root = write_set(tmp_path / "w", alternating(21), fmt="webdataset", shard_size=8)  # shards of 8, 8, 5
    per_rank = [stream_ids(SyntheticStream(root, rank=r, world_size=2)) for r in range(2)]
    assert sorted(per_rank[0] + per_rank[1]) == list(range(21))
    shuffled = [stream_ids(SyntheticStream(root, rank=r, world_size=2, shuffle_buffer=3, seed=1)) for r in range(2)]
    assert sorted(shuffled[0] + shuffled[1]) == list(range(21)) and shuffled != per_rank
    assert [len(p) for p in per_rank] == [len(SyntheticStream(root, rank=r, world_size=2)) for r in range(2)] == [10, 11]
    one = SyntheticStream(root, classes=["PNEUMONIA", "normal"])
    items = list(one)
    assert [item_id(x) for x, _ in items] == list(range(21)) and [y for _, y in items] == [1 - k for k in alternating(21)]
    # shuffling: an order per epoch, the same for the same epoch, still every item once
    s = SyntheticStream(root, shuffle_buffer=4, seed=3)
    e0 = [item_id(x) for x, _ in s]
    s.set_epoch(1)
    e1 = [item_id(x) for x, _ in s]
    s.set_epoch(0)
    assert [item_id(x) for x, _ in s] == e0 != e1 and sorted(e0) == sorted(e1) == list(range(21))
    # imagefolder sets stream through the same API
    folder = write_set(tmp_path / "f", alternating(9), shard_size=4)
    assert sorted(stream_ids(SyntheticStream(folder, rank=0, world_size=2)) +
                  stream_ids(SyntheticStream(folder, rank=1, world_size=2))) == list(range(9))
    with pytest.raises(AugmentError, match=r"rank 2 is not in \[0, world_size=2\)"):
        SyntheticStream(root, rank=2, world_size=2)
    (root / "shard-00001.tar").unlink()
    with pytest.raises(AugmentError, match="shard 'shard-00001.tar' of set .* is missing; rerun the same"):
        SyntheticStream(root)


# ---------------------------------------------------------------------------
# MixedDataset, MixedBatchSampler, mix


def test_mixed_lengths_items_and_epochs(tmp_path):
    syn = SyntheticSet(write_set(tmp_path / "s", alternating(8)), classes=CLASSES)
    real = RealSet(alternating(30), extra=True)
    m = MixedDataset(real, syn, synthetic_fraction=0.25, seed=1)
    assert (m.n_real, m.n_syn, len(m)) == (30, 10, 40)  # 30 * 0.25 / 0.75
    x, y, flag = m[0]
    assert flag is False and y == 0 and x.shape == (1, 28, 28)
    picks = [item_id(m[i][0]) for i in range(30, 40)]
    assert all(m[i][2] is True for i in range(30, 40))
    # 10 picks from 8 items: one full permutation, then 2 of the next
    assert sorted(Counter(picks).values()) == [1] * 6 + [2] * 2
    assert [item_id(m[i][0]) for i in range(30, 40)] == picks  # same epoch, same picks
    m.set_epoch(1)
    e1 = [item_id(m[i][0]) for i in range(30, 40)]
    m.set_epoch(0)
    assert e1 != picks and [item_id(m[i][0]) for i in range(30, 40)] == picks
    assert len(MixedDataset(real, syn, synthetic_fraction=1.0)) == 8 and MixedDataset(real, syn, synthetic_fraction=1.0)[0][2]
    assert len(MixedDataset(real, syn, synthetic_fraction=0)) == 30
    for bad in (1.5, -0.1):
        with pytest.raises(AugmentError, match=f"synthetic_fraction={bad} is outside \\[0, 1\\]"):
            MixedDataset(real, syn, synthetic_fraction=bad)


def test_mixed_errors_name_the_fix(tmp_path):
    root = write_set(tmp_path / "s", alternating(8))
    real = RealSet(alternating(10))
    with pytest.raises(AugmentError, match=r"synthetic labels follow classes \['pneumonia', 'normal'\] but the real"):
        MixedDataset(real, SyntheticSet(root, classes=["pneumonia", "normal"]), synthetic_fraction=0.5)
    with pytest.raises(AugmentError, match=r"real images are tensor float32 \(1, 28, 28\) but synthetic images are "
                                           r"PIL image L 28x28; pass the same transform"):
        mix(real, root, 0.5, transform=lambda im: im)
    three = torch.utils.data.TensorDataset(torch.zeros(3, 1, 28, 28), torch.tensor([0, 1, 2]))
    three.labels = three.tensors[1]  # a plain dataset with .labels, not mapped by name
    with pytest.raises(AugmentError, match=r"synthetic label 2 is outside the 2 real classes"):
        MixedDataset(real, three, synthetic_fraction=0.5)
    with pytest.raises(AugmentError, match=r"has no .labels"):
        MixedDataset(real, [1, 2], synthetic_fraction=0.5)
    nameless = torch.utils.data.TensorDataset(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long))
    with pytest.raises(AugmentError, match=r"real dataset has no .classes; pass classes=\[...\].*classes=\['normal', 'pneumonia'\]"):
        mix(nameless, root)
    assert len(mix(nameless, root, 0.5, classes=CLASSES)) == 8
    with pytest.raises(AugmentError, match="classes apply when mix\\(\\) reads a set folder"):
        mix(real, SyntheticSet(root), classes=CLASSES)


def test_balance_water_fills_and_names_a_missing_class(tmp_path):
    assert water_fill([10, 2, 5], 9) == [0, 6, 3] and water_fill([3, 3], 3) == [2, 1]
    classes = ["a", "b", "c"]
    syn = SyntheticSet(write_set(tmp_path / "s", [0, 1, 1, 1, 2], classes=classes), classes=classes)
    real = RealSet([0] * 12 + [1] * 3 + [2] * 6, classes=classes)
    m = MixedDataset(real, syn, synthetic_fraction=0.3, balance=True)  # budget 9
    assert m.n_syn == 9 and m.synthetic_counts == [0, 6, 3]
    total = Counter(m[i][1] for i in range(len(m)))
    assert [total[k] for k in range(3)] == [12, 9, 9]
    # class 'c' has no synthetic images: fine while balance does not need it ...
    no_c = SyntheticSet(write_set(tmp_path / "noc", [0, 1, 1], classes=classes), classes=classes)
    assert MixedDataset(real, no_c, synthetic_fraction=0.1, balance=True).synthetic_counts == [0, 2, 0]
    # ... named when it does
    with pytest.raises(AugmentError, match=r"balance needs \d+ synthetic images of class 'c' .* has none"):
        MixedDataset(real, no_c, synthetic_fraction=0.5, balance=True)


def test_mixed_with_dataloader_workers_and_distributed_sampler(tmp_path):
    syn = SyntheticSet(write_set(tmp_path / "s", alternating(12)), classes=CLASSES)
    m = mix(RealSet(alternating(18)), syn, fraction=0.4, seed=2)
    assert len(m) == 30
    flags = []
    for x, y, f in DataLoader(m, batch_size=7, shuffle=True, num_workers=2):
        assert x.shape[1:] == (1, 28, 28) and y.dtype == torch.long
        flags += f.tolist()
    assert len(flags) == 30 and sum(flags) == 12
    covered = []
    for rank in range(2):
        sampler = DistributedSampler(m, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        covered += list(sampler)
    assert sorted(covered) == list(range(30))


def test_batch_sampler_exact_synthetic_per_batch(tmp_path):
    syn = SyntheticSet(write_set(tmp_path / "s", alternating(40)), classes=CLASSES)
    m = mix(RealSet(alternating(23)), syn, fraction=0.25)
    sampler = MixedBatchSampler(m, 8, synthetic_per_batch=3, seed=1)
    assert len(sampler) == 5 and m.n_syn == 15  # ceil(23 / 5) batches x 3
    batches = list(DataLoader(m, batch_sampler=sampler))
    assert all(int(f.sum()) == 3 for _, _, f in batches)
    real_seen = [i for b in sampler for i in b if i < m.n_real]
    assert sorted(real_seen) == list(range(23))
    syn_items = [item_id(x[k]) for x, _, f in batches for k in range(len(f)) if f[k]]
    assert len(set(syn_items)) == 15  # distinct within the epoch
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first and m.epoch == 1
    ranks = [MixedBatchSampler(m, 8, synthetic_per_batch=3, seed=1, rank=r, world_size=2) for r in range(2)]
    assert [len(r) for r in ranks] == [3, 3]  # 5 batches: rank 1 repeats one to stay in step
    assert {i for r in ranks for b in r for i in b if i < 23} == set(range(23))
    with pytest.raises(AugmentError, match=r"synthetic_per_batch=9 must be in \[0, batch_size=8\]"):
        MixedBatchSampler(m, 8, synthetic_per_batch=9)


# ---------------------------------------------------------------------------
# Quality filter


class BrightnessJudge(torch.nn.Module):
    """Logits over (normal, pneumonia) from mean brightness: float (B, 1, H, W) in [-1, 1] -> (B, 2)."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(1, 2)
        with torch.no_grad():
            self.lin.weight.copy_(torch.tensor([[-8.0], [8.0]]))
            self.lin.bias.zero_()

    def forward(self, x):
        return self.lin(x.mean(dim=(1, 2, 3))[:, None])


def test_quality_filter_writes_decisions_and_keep(tmp_path):
    root = write_set(tmp_path / "s", alternating(12), dark={1, 5})  # two 'pneumonia' images drawn dark
    with pytest.raises(AugmentError, match=r"has no quality decisions \(quality.jsonl\); run synth.augment.quality_filter"):
        SyntheticSet(root, quality="keep")
    for bad in (1.5, -1):
        with pytest.raises(AugmentError, match=f"threshold={float(bad)} is outside \\[0, 1\\]"):
            quality_filter(root, BrightnessJudge(), threshold=bad)
    judge = BrightnessJudge().train()
    summary = quality_filter(root, judge, threshold=0.9, batch_size=5)
    assert judge.training  # mode restored
    assert summary["kept"] == 10 and summary["rejected"] == 2 and summary["per_label"]["pneumonia"] == {"kept": 4, "rejected": 2}
    assert summary["classifier_sha256"] == module_hash(judge) and json.loads((root / "quality.json").read_text()) == summary
    rows = [json.loads(line) for line in (root / "quality.jsonl").read_text().splitlines()]
    assert [r["kept"] for r in rows] == [i not in (1, 5) for i in range(12)] and rows[1]["confidence"] < 0.9
    kept = SyntheticSet(root, quality="keep")
    assert len(kept) == 10 and 1 not in [item_id(kept[i][0]) for i in range(len(kept))]
    # streamed: the same kept images, split evenly across ranks after filtering
    halves = [list(SyntheticStream(root, quality="keep", rank=r, world_size=2)) for r in range(2)]
    assert [len(h) for h in halves] == [5, 5]
    assert sorted(item_id(x) for h in halves for x, _ in h) == sorted(item_id(kept[i][0]) for i in range(len(kept)))
    with pytest.raises(AugmentError, match="quality must be None or 'keep'"):
        SyntheticStream(root, quality="best")
    with pytest.raises(AugmentError, match=r"quality='keep' needs an imagefolder set .* --format imagefolder"):
        SyntheticStream(write_set(tmp_path / "w-stream", alternating(4), fmt="webdataset"), quality="keep")
    judge.weights_sha256 = "recorded"
    assert quality_filter(root, judge, threshold=0.5, classes=["NORMAL", "Pneumonia"])["classifier_sha256"] == "recorded"
    # a saved synth classifier (safetensors) works by path; its hash is the file's weights hash
    from synth.classifier import SmallCNN, load_classifier, save_classifier

    save_classifier(SmallCNN(2, (4,)), tmp_path / "judge.safetensors", CLASSES)
    out = quality_filter(root, str(tmp_path / "judge.safetensors"), threshold=0.0)
    assert out["kept"] == 12 and out["classifier_sha256"] == load_classifier(tmp_path / "judge.safetensors")[2]["weights_sha256"]
    with pytest.raises(AugmentError, match=r"logits of shape \(5, 2\), expected \(B, 3\)"):
        quality_filter(root, BrightnessJudge(), threshold=0.5, classes=["normal", "pneumonia", "x"], batch_size=5)
    with pytest.raises(AugmentError, match=r"classifier's classes \['healthy', 'sick'\] lack the set's labels"):
        quality_filter(root, judge, threshold=0.5, classes=["healthy", "sick"])
    with pytest.raises(AugmentError, match="quality_filter needs an imagefolder set"):
        quality_filter(write_set(tmp_path / "w", alternating(4), fmt="webdataset"), judge, threshold=0.5)


# ---------------------------------------------------------------------------
# Real generators (random tiny weights: no training) and a real bulk set


@pytest.fixture(scope="module")
def tiny_bridge():
    from synth.samplers.bridge import BridgeGenerator
    from synth.codecs import PixelCodec
    from synth.models import build_flow_unet

    torch.manual_seed(0)
    unet = build_flow_unet(16, 1, [8, 16], 1, 8, 4, [False, False], num_domains=2).eval()
    return BridgeGenerator(unet, PixelCodec(), ["low_dose", "full_dose"], 16)


@pytest.fixture(scope="module")
def tiny_ldm_export(tmp_path_factory):
    """A random-weight tiny pixel LDM, exported exactly as a trained one (export_ldm)."""
    from synth.codecs import PixelCodec
    from synth.labels import LabelSchema
    from synth.models import build_noise_scheduler, build_text_encoder, build_tokenizer, build_unet
    from tests.conftest import tiny_cfg
    from synth.trainers.export import export_ldm

    cfg = tiny_cfg()
    torch.manual_seed(0)
    schema = LabelSchema(CLASSES)
    tok = build_tokenizer([schema.prompt_for(k) for k in range(2)], 600, 12)
    te = build_text_encoder(len(tok), 32, 1, 2, 12)
    unet = build_unet(16, 1, [8, 16], 1, 8, 32, 4, [False, True])
    sched = build_noise_scheduler(1000, "scaled_linear", "epsilon")
    return export_ldm(tmp_path_factory.mktemp("ldm") / "export", unet, te, tok, PixelCodec(), schema, cfg, sched, 12)


class CountingGenerator:
    """A real generator, counting its sample() calls (to see one call per DataLoader batch)."""

    def __init__(self, gen):
        self.gen, self.calls, self.domains = gen, [], gen.domains

    def sample(self, conditions, seeds, **kw):
        self.calls.append(len(seeds))
        return self.gen.sample(conditions, seeds, **kw)


def test_online_same_index_same_image_and_batched(tiny_bridge):
    gen = CountingGenerator(tiny_bridge)
    ds = OnlineSynthetic(gen, 10, steps=2, seed=5)
    assert ds.labels.tolist() == alternating(10) and ds.classes == ["low_dose", "full_dose"]
    a = ds.__getitems__([3, 4, 7])
    b = ds.__getitems__([7, 0, 3, 9, 1])
    assert torch.equal(a[0][0], b[2][0]) and torch.equal(a[2][0], b[0][0]) and torch.equal(ds[3][0], a[0][0])
    assert a[0][0].dtype == torch.float32 and a[0][0].shape == (1, 16, 16) and a[0][1] == 1
    assert not torch.equal(a[0][0], a[1][0])  # another domain and seed
    gen.calls.clear()
    batches = list(DataLoader(ds, batch_size=4, num_workers=0))
    assert gen.calls == [4, 4, 2] and torch.equal(batches[0][0][3], ds[3][0])
    fresh = OnlineSynthetic(tiny_bridge, 4, steps=2, seed=5, epoch_fresh=True)
    assert torch.equal(fresh[1][0], ds[1][0])  # epoch 0: the plain seeds
    fresh.set_epoch(1)
    e1 = fresh[1][0]
    assert not torch.equal(e1, ds[1][0])
    fresh.set_epoch(0)
    fresh.set_epoch(1)
    assert torch.equal(fresh[1][0], e1)
    weighted = OnlineSynthetic(tiny_bridge, 100, labels={"low_dose": 0.25, "full_dose": 0.75})
    assert abs(weighted.labels.tolist().count(0) - 25) <= 2  # the bulk engine's allocation
    pil = OnlineSynthetic(tiny_bridge, 2, steps=1, transform=lambda im: (im.mode, im.size))
    assert pil[0][0] == ("L", (16, 16))
    # as the synthetic part of a MixedDataset: mapped, and fetched batched
    m = MixedDataset(RealSet(alternating(6), classes=["full", "low"], size=16),
                     OnlineSynthetic(gen, 4, steps=1, classes=["full", "low"], label_map={"low_dose": "low", "full_dose": "full"}),
                     synthetic_fraction=0.4)
    gen.calls.clear()
    items = m.__getitems__([0, 6, 7, 8, 9])
    assert gen.calls == [4] and [i[2] for i in items] == [False, True, True, True, True]


def test_online_errors(tiny_bridge, monkeypatch):
    with pytest.raises(AugmentError, match="labels names 'covid', which the generator does not know"):
        OnlineSynthetic(tiny_bridge, 4, labels={"covid": 1})
    with pytest.raises(AugmentError, match="n must be a positive number of images"):
        OnlineSynthetic(tiny_bridge, 0)
    with pytest.raises(AugmentError, match="has no label schema"):
        OnlineSynthetic(type("G", (), {"sample": lambda self: None})(), 4)
    ds = OnlineSynthetic(tiny_bridge, 4, steps=1)
    import synth.augment.online as aug  # where OnlineSynthetic looks it up

    monkeypatch.setattr(aug, "get_worker_info", lambda: object())  # as inside a DataLoader worker
    monkeypatch.setattr(aug, "_generator_device", lambda g: torch.device("cuda"))
    with pytest.raises(AugmentError, match=r"CUDA generator inside a DataLoader worker.*num_workers=0"):
        ds[0]


def test_real_bulk_sets_and_online_equal_synth_sample(tiny_ldm_export, tmp_path):
    """Sets written by run_bulk read back; OnlineSynthetic with the same spec gives the same pixels."""
    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.samplers.generator import load_generator

    gen = load_generator(tiny_ldm_export)
    spec = parse_label_spec("normal=0.3,pneumonia=0.7", gen.schema)
    for fmt in ("imagefolder", "webdataset"):
        req = BulkRequest(model=str(tiny_ldm_export), out=str(tmp_path / fmt), n=10, spec=spec, steps=2, seed=4,
                          shard_size=4, batch_size=4, format=fmt)
        run_bulk(req, gen, progress=False, log=lambda m: None)
    disk = SyntheticSet(tmp_path / "imagefolder", classes=["Pneumonia", "Normal"])
    online = OnlineSynthetic(gen, 10, labels={"normal": 0.3, "pneumonia": 0.7}, steps=2, seed=4,
                             classes=["Pneumonia", "Normal"])
    assert disk.labels.tolist() == online.labels.tolist() == [1 - r["label_id"] for r in disk.rows]
    imgs, _ = disk.tensors()
    assert torch.equal(imgs, online.images(range(10)))
    streamed = list(SyntheticStream(tmp_path / "webdataset", classes=["Pneumonia", "Normal"]))
    assert torch.equal(torch.stack([x for x, _ in streamed]), imgs.float() / 255)
    assert [y for _, y in streamed] == disk.labels.tolist()


def test_remaining_bad_inputs_are_one_line_errors(tmp_path, tiny_bridge):
    root = write_set(tmp_path / "s", alternating(6))
    syn = SyntheticSet(root, classes=CLASSES)
    real = RealSet(alternating(6))
    cases = [
        (lambda: SyntheticSet(root, quality="all"), "quality must be None or 'keep'"),
        (lambda: SyntheticSet(root, classes="normal"), "classes must be a list of class names, got the string 'normal'"),
        (lambda: SyntheticStream(root, shuffle_buffer=-1), "shuffle_buffer must be >= 0"),
        (lambda: MixedDataset(real, syn, synthetic_fraction="lots"), "synthetic_fraction must be a number in"),
        (lambda: MixedBatchSampler(real, 4, synthetic_per_batch=1), "needs a MixedDataset"),
        (lambda: MixedBatchSampler(MixedDataset(real, syn, synthetic_fraction=0.5), 0, synthetic_per_batch=0),
         "batch_size must be >= 1"),
        (lambda: MixedBatchSampler(MixedDataset(real, syn, synthetic_fraction=1), 4, synthetic_per_batch=1),
         "no real items .* use synthetic_per_batch=4"),
        (lambda: MixedDataset(real, SyntheticSet(root, classes=CLASSES, label_map={"normal": None, "pneumonia": None}),
                              synthetic_fraction=0.5), "the synthetic set has no images"),
        (lambda: quality_filter(root, "not a module.safetensors", threshold=0.5), "classifier 'not a module.safetensors' not found"),
        (lambda: quality_filter(root, object(), threshold=0.5), "classifier must be an nn.Module"),
        (lambda: quality_filter(root, BrightnessJudge(), threshold="high"), "threshold must be a confidence in"),
        (lambda: quality_filter(root, BrightnessJudge(), threshold=0.5, batch_size=0), "batch_size must be >= 1"),
        (lambda: OnlineSynthetic(tiny_bridge, 4, labels={"low_dose": -1}), "weights must be finite and >= 0"),
        (lambda: OnlineSynthetic(tiny_bridge, 4, labels=["low_dose"]), "labels must be None"),
        (lambda: OnlineSynthetic(tiny_bridge, 4, labels="low_dose=x"), "weight 'x' is not a number"),
        (lambda: OnlineSynthetic(tiny_bridge, 4, classes=["low"], label_map={"low_dose": "low", "full_dose": None},
                                 labels={"full_dose": 1}), "labels asks for 'full_dose' but label_map drops it"),
        (lambda: OnlineSynthetic(tiny_bridge, 4, classes=["x"], label_map={"low_dose": None, "full_dose": None}),
         "label_map drops every class"),
    ]
    for make, message in cases:
        with pytest.raises(AugmentError, match=message):
            make()
    dropped = OnlineSynthetic(tiny_bridge, 4, classes=["low"], label_map={"low_dose": "low", "full_dose": None})
    assert dropped.labels.tolist() == [0] * 4 and dropped.gen_labels.tolist() == [0] * 4
    # damaged sets
    bad = write_set(tmp_path / "json", alternating(4))
    (bad / "manifest.json").write_text("{")
    with pytest.raises(AugmentError, match="manifest .* is unreadable"):
        SyntheticSet(bad)
    (bad / "manifest.json").write_text("{}")
    with pytest.raises(AugmentError, match="is not a synth set manifest"):
        SyntheticSet(bad)
    rows = write_set(tmp_path / "rows", alternating(4))
    with open(rows / "metadata.jsonl", "a") as f:
        f.write("{oops\n")
    with pytest.raises(AugmentError, match="metadata.jsonl line 5 .* is not JSON"):
        SyntheticSet(rows)
    shapes = write_set(tmp_path / "shapes", alternating(4))
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(shapes / "shard-00000" / "00000002.png")
    with pytest.raises(AugmentError, match=r"mixes image shapes .*shard-00000/00000002.png"):
        SyntheticSet(shapes).tensors()
    free = write_set(tmp_path / "free", [0, None], fmt="webdataset")
    with pytest.raises(AugmentError, match="has no class label"):
        list(SyntheticStream(free))
    cut = write_set(tmp_path / "cut", alternating(8), fmt="webdataset")
    tar = cut / "shard-00000.tar"
    tar.write_bytes(tar.read_bytes()[:5 * 512 + 100])
    with pytest.raises(AugmentError, match="shard .*shard-00000.tar' (is unreadable|holds)"):
        list(SyntheticStream(cut))


def test_multilabel_real_targets_and_wasted_real_items_are_refused():
    import torch as _t
    from synth.augment import AugmentError, _real_labels

    class MultiLabel(_t.utils.data.Dataset):
        targets = np.zeros((4, 3), dtype=np.int64)

        def __len__(self):
            return 4

        def __getitem__(self, i):
            return _t.zeros(1, 4, 4), self.targets[i]

    with pytest.raises(AugmentError, match="multi-label"):
        _real_labels(MultiLabel())


# ---------------------------------------------------------------------------
# Damaged or foreign set files: one-line AugmentErrors, never KeyError/TypeError/UnicodeDecodeError


def _one_line_error(make) -> str:
    with pytest.raises(AugmentError) as e:
        make()
    msg = str(e.value)
    assert len(msg.splitlines()) == 1, msg
    return msg


@pytest.mark.parametrize("field, value, message", [
    ("n_done", "abc", "n_done is a string 'abc', not a whole number >= 0; the manifest is damaged"),
    ("n_requested", None, "n_requested is null, not a whole number >= 0"),
    ("n_requested", float("inf"), "n_requested is a number inf"),
    ("n_done", True, "n_done is a boolean True"),
    ("shard_size", "8", "shard_size is a string '8'"),
    ("label_schema", [1], "label_schema.classes is a list [1], not a list of class names"),
    ("label_schema", {"classes": 3}, "label_schema.classes is a number 3"),
    ("label_schema", {"classes": ["a", None]}, "label_schema.classes is a list ['a', None]"),
    ("counts_per_label", ["normal"], "counts_per_label is a list ['normal'], not an object"),
    ("model", [], None),  # empty: treated as absent
    ("model", "m", "model is a string 'm', not an object"),
])
def test_damaged_manifest_fields_are_one_line_errors(tmp_path, field, value, message):
    """Before: ValueError/TypeError from int(...) and ['classes'], or a misleading 'no class label' error."""
    root = write_set(tmp_path / "s", alternating(4))
    manifest = json.loads((root / "manifest.json").read_text())
    manifest[field] = value
    (root / "manifest.json").write_text(json.dumps(manifest))
    if message is None:
        assert len(SyntheticSet(root)) == 4
    else:
        assert message in _one_line_error(lambda: read_set_manifest(root))


def test_damaged_rows_and_quality_decisions_are_one_line_errors(tmp_path):
    root = write_set(tmp_path / "s", alternating(4))
    meta = root / "metadata.jsonl"
    good = meta.read_bytes()
    cases = [
        (good + b'{"file_name": "caf\xe9.png"}\n', "metadata.jsonl' is unreadable (UnicodeDecodeError"),
        (good + b"[" * 100000 + b"\n", "is not JSON; the set is damaged"),
        (good + b"[1, 2]\n", "is a list [1, 2], not a JSON object; the set is damaged"),
        (b'{"file_name": "a\\u0000b.png", "label": "normal"}\n', "file_name 'a\\x00b.png' contains a control"),
        (b'{"file_name": "a\\ud800.png", "label": "normal"}\n', "unpaired surrogate"),
        (b'{"file_name": 7, "label": "normal"}\n', "file_name is a number 7, not a path string"),
        (b'{"file_name": "shard-00000/00000000.png", "label": ["normal"]}\n', "have no class label (label=['normal']"),
    ]
    for content, message in cases:
        meta.write_bytes(content)
        msg = _one_line_error(lambda: SyntheticSet(root))
        assert message in msg, (message, msg)
    meta.write_bytes(good)
    quality = root / "quality.jsonl"
    names = [f"shard-00000/{i:08d}.png" for i in range(4)]
    cases = [
        (b"{oops\n", "is not JSON; the file is damaged, run quality_filter again"),
        (b'{"x": 1}\n', "needs a text file_name and a true/false kept (file_name=None, kept=None)"),
        ("".join(json.dumps({"file_name": n, "kept": "false"}) + "\n" for n in names).encode(),
         "kept='false'"),  # before: bool("false") is True, so every image was kept
        (b"\xff\n", "quality.jsonl' is unreadable (UnicodeDecodeError"),
    ]
    for content, message in cases:
        quality.write_bytes(content)
        msg = _one_line_error(lambda: SyntheticSet(root, quality="keep"))
        assert message in msg and "quality.jsonl" in msg, (message, msg)


def test_damaged_webdataset_samples_and_manifests_are_one_line_errors(tmp_path):
    import io
    import tarfile

    root = write_set(tmp_path / "w", alternating(2), fmt="webdataset")
    tar = root / "shard-00000.tar"
    with tarfile.open(tar) as t:
        members = [(m.name, t.extractfile(m).read()) for m in t]
    for bad_json in (b"[1", b"[1, 2]", b"\xff", b"[" * 100000):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            for name, data in members:
                data = bad_json if name.endswith(".json") else data
                info = tarfile.TarInfo(name)
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
        tar.write_bytes(buf.getvalue())
        msg = _one_line_error(lambda: list(SyntheticStream(root)))
        assert "its .json is not a JSON object; the shard is damaged" in msg
    # a manifest claiming 10**15 images in shards of 1: before, listing the shards never ended
    manifest = json.loads((root / "manifest.json").read_text())
    manifest.update(n_requested=10**15, n_done=10**15, shard_size=1)
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert "shard 'shard-00001.tar' of set" in _one_line_error(lambda: SyntheticStream(root))


class NormalisedRealSet(RealSet):
    """Real images after a user's Normalize(mean=0.5, std=0.25): values in [-2, 2], not [0, 1]."""

    def __getitem__(self, i):
        x = torch.linspace(-2, 2, self.size * self.size).reshape(1, self.size, self.size)
        return x, self.targets[i]


def test_mix_refuses_two_scales_and_a_classes_that_contradicts_the_real_data(tmp_path):
    """Issue 19: normalised real tensors beside [0, 1] synthetic ones trained silently; mix(classes=) that
    differs from real.classes got advice to 'use mix()' while calling it."""
    root = write_set(tmp_path / "s", alternating(8))
    with pytest.raises(AugmentError, match=r"real images hold values in \[-2, 2\] but synthetic images in \[0, 0.*"
                                           r"transform"):
        mix(NormalisedRealSet(alternating(10)), root, 0.5)
    # following the advice: the same normalisation as transform= puts both on one scale
    m = mix(NormalisedRealSet(alternating(10)), root, 0.5,
            transform=lambda im: torch.from_numpy(np.asarray(im, dtype=np.float32)[None] / 255.0).sub(0.5).div(0.25))
    assert len(m) == 20
    with pytest.raises(AugmentError, match=r"classes=\['pneumonia', 'normal'\] differs from the real dataset's classes "
                                           r"\['normal', 'pneumonia'\].*label_map="):
        mix(RealSet(alternating(10)), root, 0.5, classes=["pneumonia", "normal"])
    assert len(mix(RealSet(alternating(10)), root, 0.5, classes=["normal", "pneumonia"])) == 20
