"""The bridge trainer: tiny 3-domain data, resume after SIGKILL, couplings, export, bad input."""
import json
import signal

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from synth.samplers.bridge import BridgeGenerator
from synth.samplers.generator import ArtifactError, load_generator
from synth.config import ConfigError
from synth.labels import Condition, LabelError
from tests.conftest import TINY, run_cli_and_kill_when, tiny_cfg
from tests.trainers.test_ldm import cli
from synth.trainers.bridge import ot_pairing, train_bridge

DOMAINS = ["clean", "dim", "inverted"]
BRIDGE = ["labels.domains=[clean,dim,inverted]", "model.unet.attention_levels=[false,false]"]
quiet = dict(log=lambda *a: None)


def three_domains(path, n=96, size=16):
    """Phantoms rendered three ways, each image in exactly one domain (unpaired)."""
    from synth.data import phantom_domains

    imgs, dom = phantom_domains(n, size)
    np.savez(path, train_images=imgs, train_labels=dom[:, None], val_images=imgs[:24], val_labels=dom[:24, None],
             test_images=imgs[:24], test_labels=dom[:24, None])
    return path


@pytest.fixture(scope="module")
def bridge_export(tmp_path_factory):
    d = tmp_path_factory.mktemp("bridge")
    data = three_domains(d / "dom3.npz")
    return train_bridge(tiny_cfg(f"data.name={data}", *BRIDGE, "train.steps=30", "train.lr=2e-3",
                                 "train.checkpoint_every=10"), d / "run", **quiet)


def test_export_loads_and_translates_with_every_solver(bridge_export):
    meta = json.loads((bridge_export / "synth.json").read_text())
    assert meta["kind"] == "bridge" and meta["domains"] == DOMAINS and meta["null_domain"] == 3
    assert not [p for p in bridge_export.rglob("*") if p.suffix in (".bin", ".pt", ".pth")]
    g = load_generator(bridge_export)
    assert (g.conditioner.name, g.is_flow, g.kind, g.domains) == ("class", True, "bridge", tuple(DOMAINS))
    x = torch.randint(0, 255, (3, 1, 16, 16), dtype=torch.uint8)
    from synth import solvers

    for sampler in solvers.names():  # every solver file, the new ones included, translates
        y = g.translate(x, "clean", "inverted", tau=0.4, steps=6, guidance=2.0, sampler=sampler, seeds=[1, 2, 3])
        assert y.shape == x.shape and y.dtype == torch.uint8
    assert torch.equal(g.translate(x, "dim", "clean", tau=1.0), g.codec.decode(g.codec.encode(x.float() / 127.5 - 1)).add(1).mul(127.5).round().clamp(0, 255).to(torch.uint8))
    b = g.sample([Condition(domain=k) for k in range(3)], [0, 1, 2], steps=4)
    assert b.images.shape == (3, 1, 16, 16)


def test_round_trip_reproduces_the_input(bridge_export):
    """A domain to itself at tau >= 0.6 integrates back and forth along the same ODE."""
    from torchmetrics.functional.image import structural_similarity_index_measure as ssim

    g = load_generator(bridge_export)
    x = torch.from_numpy(np.load(bridge_export.parent.parent / "dom3.npz")["val_images"][:8])[:, None]
    y = g.translate(x, "clean", "clean", tau=0.6, steps=20, sampler="heun")
    assert float(ssim(y.double() / 255, x.double() / 255, data_range=1.0)) >= 0.9


def test_bad_inputs_are_clear(bridge_export, tmp_path, tiny_export):
    g = load_generator(bridge_export)
    x = torch.zeros(2, 1, 16, 16, dtype=torch.uint8)
    with pytest.raises(LabelError, match=r"unknown domain 'ct'; this model's domains: clean, dim, inverted"):
        g.translate(x, "ct", "clean")
    with pytest.raises(ValueError, match=r"tau must be in \[0, 1\]"):
        g.translate(x, "dim", "clean", tau=1.2)
    with pytest.raises(ValueError, match=r"translates 16x16 images, got 32x32"):
        g.translate(torch.zeros(2, 1, 32, 32, dtype=torch.uint8), "dim", "clean")
    with pytest.raises(ValueError, match=r"translates 1-channel images, got 3-channel"):
        g.translate(torch.zeros(2, 3, 16, 16, dtype=torch.uint8), "dim", "clean")
    with pytest.raises(ArtifactError, match=r"holds a 'ldm' model, not a bridge"):
        BridgeGenerator.from_export(tiny_export)
    with pytest.raises(ConfigError, match=r"at least 2 domains"):
        train_bridge(tiny_cfg("data.name=phantom", "labels.domains=[x]", "train.steps=1"), tmp_path / "r2", **quiet)


def test_ot_coupling_pairs_within_domains_and_trains(tmp_path):
    x1 = torch.cat([torch.full((4, 1, 2, 2), 3.0), torch.full((4, 1, 2, 2), -3.0)])
    x0 = torch.cat([torch.full((4, 1, 2, 2), -3.0), torch.full((4, 1, 2, 2), 3.0)]) + 0.01 * torch.randn(8, 1, 2, 2)
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    paired = ot_pairing(x0, x1, groups)
    assert torch.equal(paired.sort(0).values[:4], x0[:4].sort(0).values)  # noise never leaves its domain
    # one group: OT brings the nearest noise to each image
    assert (ot_pairing(x0, x1, torch.zeros(8, dtype=torch.long)) - x1).pow(2).sum() < (x0 - x1).pow(2).sum()
    data = three_domains(tmp_path / "d.npz")
    export = train_bridge(tiny_cfg(f"data.name={data}", *BRIDGE, "train.steps=2", "train.coupling=ot"), tmp_path / "r", **quiet)
    assert (export / "synth.json").is_file()


def test_sigkill_resume_is_bit_exact(tmp_path):
    data = three_domains(tmp_path / "d.npz")
    args = [a for kv in TINY + [f"data.name={data}", *BRIDGE, "train.steps=24", "train.checkpoint_every=3"]
            for a in ("--set", kv)]
    cli("train", "bridge", "--run", str(tmp_path / "a"), *args)
    proc = run_cli_and_kill_when(["train", "bridge", "--run", str(tmp_path / "b"), *args],
                                 tmp_path / "b" / "checkpoints" / "step-00000006" / "state.json")
    assert proc.returncode == -signal.SIGKILL
    cli("train", "bridge", "--run", str(tmp_path / "b"), *args)
    for f in ("unet.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "a" / "checkpoints" / "step-00000024" / f))
        b = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000024" / f))
        assert all(torch.equal(a[k], b[k]) for k in a), f


def test_a_class_label_selects_its_domain_in_bulk_sampling(bridge_export, tmp_path):
    """`synth sample --labels` on a bridge: Condition(label=k) is domain k (was silently domain 0)."""
    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.labels import LabelSchema

    g = load_generator(bridge_export)
    by_label = g.sample([Condition(label=k) for k in range(3)], [5, 5, 5], steps=4).images
    by_domain = g.sample([Condition(domain=k) for k in range(3)], [5, 5, 5], steps=4).images
    assert torch.equal(by_label, by_domain) and not torch.equal(by_label[0], by_label[2])
    schema = LabelSchema.from_json(json.loads((bridge_export / "synth.json").read_text())["labels"])
    req = BulkRequest(model=str(bridge_export), out=str(tmp_path / "set"), n=4, sampler="euler", steps=4,
                      spec=parse_label_spec("inverted", schema), seed=0)
    run_bulk(req, generator=g, progress=False, log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp_path / "set" / "metadata.jsonl").read_text().splitlines()]
    from synth.seeds import image_seed
    want = g.sample([Condition(domain=2)], [image_seed(0, 0)], steps=4, sampler="euler").images[0, 0].numpy()
    from PIL import Image
    got = np.asarray(Image.open(tmp_path / "set" / rows[0]["file_name"]))
    assert rows[0]["label"] == "inverted" and np.array_equal(got, want)


def test_labels_classes_names_a_bridge_like_an_ldm(tmp_path):
    """Issue 19: ``labels.classes`` was silently ignored by the bridge (npz classes came out class_0..2)."""
    import json

    from synth.trainers.bridge import train_bridge

    data = three_domains(tmp_path / "d.npz", n=48)
    cfg = tiny_cfg(f"data.name={data}", "labels.classes=[clean,dim,inverted]", "model.unet.attention_levels=[false,false]",
                   "train.steps=2")
    export = train_bridge(cfg, tmp_path / "run", **quiet)
    assert json.loads((export / "synth.json").read_text())["domains"] == ["clean", "dim", "inverted"]
    with pytest.raises(ConfigError, match="labels.domains .* and labels.classes .* differ"):
        train_bridge(tiny_cfg(f"data.name={data}", "labels.classes=[a,b,c]", "labels.domains=[clean,dim,inverted]"),
                     tmp_path / "run2", **quiet)
