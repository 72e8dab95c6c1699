"""feature_net (train once, reuse, refuse another data set) and fidelity_report's files, on tiny phantoms."""
import json

import pytest
import torch

import synth.evaluation.fidelity as fidelity
from synth.config import load_config
from synth.data import phantom_set
from synth.evaluation.fidelity import FidelityError, feature_net, fidelity_report


pytestmark = pytest.mark.usefixtures("one_thread")


def data_cfg(*extra):
    return load_config(None, ["data.name=phantom", "data.resolution=16", "data.phantom_items=32", *extra]).data


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = fidelity.train_classifier

    def train(*a, **k):
        calls.append(len(a[0]))
        return real(*a, **k)

    monkeypatch.setattr(fidelity, "train_classifier", train)
    return calls


def test_feature_net_trains_on_the_full_split_saves_and_reuses(tmp_path, counted):
    path = tmp_path / "features.safetensors"
    net, classes, info = feature_net(path, data_cfg("data.max_items=8", "data.fraction=0.5"), steps=3, log=lambda s: None)
    assert counted == [32]                              # never a subset: max_items and fraction are ignored
    assert path.is_file() and classes == ["normal", "pneumonia"]
    assert info["resolution"] == 16 and info["data"] == "phantom" and info["steps"] == 3 and "val_accuracy" in info
    net2, classes2, info2 = feature_net(path, data_cfg(), steps=99, log=lambda s: None)
    assert counted == [32]                              # reloaded, not retrained
    assert info2["weights_sha256"] == info["weights_sha256"] and classes2 == classes
    x = torch.randint(0, 256, (4, 1, 16, 16), dtype=torch.uint8).float() / 127.5 - 1
    assert torch.allclose(net(x), net2(x), atol=1e-5)


def test_feature_net_refuses_another_data_config(tmp_path, counted):
    path = tmp_path / "features.safetensors"
    feature_net(path, data_cfg(), steps=2, log=lambda s: None)
    with pytest.raises(FidelityError, match="resolution"):
        feature_net(path, data_cfg("data.resolution=20"), steps=2, log=lambda s: None)
    with pytest.raises(FidelityError, match="fingerprint"):
        feature_net(path, data_cfg("data.seed=1"), steps=2, log=lambda s: None)   # other phantom images
    with pytest.raises(FidelityError) as e:
        feature_net(path, data_cfg("data.resolution=20"), steps=2, log=lambda s: None)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert counted == [32]                              # refusing never retrains


def test_inception_weights_are_refused_in_one_line(tmp_path):
    w = tmp_path / "pt_inception-2015-12-05.pth"
    w.write_bytes(b"not really")
    with pytest.raises(FidelityError) as e:
        fidelity.check_inception_weights(w)
    assert "torch-fidelity" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(FidelityError, match="not found"):
        fidelity.check_inception_weights(tmp_path / "missing.pth")


def test_fidelity_report_writes_json_markdown_and_png(tmp_path):
    torch.manual_seed(0)
    train, test = phantom_set(40, 28, 0, "train"), phantom_set(24, 28, 0, "test")
    from synth.trainers.classifier import train_classifier
    net = train_classifier(train.images, train.labels, 2, steps=5, batch_size=16)
    syn = torch.cat([train.images[:10], phantom_set(14, 28, 5, "val").images])   # 10 copies, 14 new images
    labels = torch.cat([train.labels[:10], torch.arange(14) % 2])
    rep = fidelity_report(train, test, syn, labels, train.classes, net, out_dir=tmp_path, diversity_pairs=20)
    for name in ("fidelity.json", "fidelity.md", "closest-pairs.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert json.loads((tmp_path / "fidelity.json").read_text()) == json.loads(json.dumps(rep))
    assert rep["counts"] == {"train": 40, "test": 24, "synthetic": 24, "synthetic_per_class": {"normal": 12, "pneumonia": 12},
                             "test_exact_copies_of_train": 0, "synthetic_exact_copies_of_train": 10}
    assert rep["memorisation"]["syn_exact_copies"] == 10 and not rep["memorisation"]["no_closer_than_real"]
    assert set(rep["label_fidelity"]["per_class"]) == {"normal", "pneumonia"}
    assert rep["fid"]["n_fake"] == 24 and rep["fid_real_test"]["n_fake"] == 24
    assert rep["closest_pairs"][0]["distance"] < 1e-5 and len(rep["closest_pairs"]) == 8   # a copy comes first
    assert rep["privacy"]["score"] >= 10 / 24 - 1e-9      # every copy is under any positive threshold
    md = (tmp_path / "fidelity.md").read_text()
    assert "| privacy score" in md and "MS-SSIM" in md and "FID" in md
    from PIL import Image
    w, h = Image.open(tmp_path / "closest-pairs.png").size
    assert w > 400 and h > 200


def test_held_out_copies_of_training_images_are_left_out_of_the_privacy_reference():
    torch.manual_seed(0)
    train, test = phantom_set(30, 16, 0, "train"), phantom_set(20, 16, 0, "test")
    from synth.trainers.classifier import train_classifier
    net = train_classifier(train.images, train.labels, 2, steps=2, batch_size=8)
    leaky = (torch.cat([test.images, train.images[:4]]), torch.cat([test.labels, train.labels[:4]]))
    syn, labels = phantom_set(12, 16, 9, "val").images, torch.arange(12) % 2
    a = fidelity_report(train, test, syn, labels, train.classes, net, diversity_pairs=4)
    b = fidelity_report(train, leaky, syn, labels, train.classes, net, diversity_pairs=4)
    assert b["counts"]["test_exact_copies_of_train"] == 4 and b["privacy"]["n_calib"] == 20
    assert a["privacy"] == b["privacy"] and a["memorisation"] == b["memorisation"]
    assert a["privacy"]["threshold"] > 1e-9


def test_feature_net_names_npz_classes_as_the_user_does(tmp_path):
    """Issue 19: an npz's classes load as class_0..; with labels.classes the judge must carry the user's names,
    or eval fidelity / eval augment cannot match a generator whose classes were named (their advice, deleting
    the features file, reproduced the error)."""
    import numpy as np

    from synth.config import load_config
    from synth.evaluation.fidelity import feature_net

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (24, 16, 16), dtype=np.uint8)
    labels = (np.arange(24) % 2)[:, None]
    np.savez(tmp_path / "d.npz", train_images=imgs, train_labels=labels, val_images=imgs[:8], val_labels=labels[:8],
             test_images=imgs[:8], test_labels=labels[:8])
    data = load_config(None, [f"data.name={tmp_path / 'd.npz'}", "data.resolution=16"]).data
    _, classes, _ = feature_net(tmp_path / "f.safetensors", data, steps=2, log=lambda *a: None, classes=["grade0", "grade1"])
    assert classes == ["grade0", "grade1"]
    _, again, _ = feature_net(tmp_path / "f.safetensors", data, steps=2, log=lambda *a: None, classes=["grade0", "grade1"])
    assert again == ["grade0", "grade1"]  # reused, not refused


def test_eval_fidelity_names_npz_classes_as_its_generator_did(tmp_path):
    """Issue 19 end to end: a generator trained on an npz with labels.classes=[grade0, grade1] wrote a set whose
    classes are named; `synth eval fidelity --data the.npz` (no labels.classes) evaluates it under those names,
    because the generator's recorded subset is exactly these rows. Another subset is still refused."""
    import json

    import numpy as np

    from synth.config import load_config
    from synth.data import load_split, subset_record
    from tests.synth.test_augment import write_set
    from synth.evaluation.fidelity_cli import fidelity_cli
    from synth.evaluation.real import EvalError
    from synth.evaluation.fidelity import feature_net

    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (40, 28, 28), dtype=np.uint8)  # the size write_set draws
    labels = (np.arange(40) % 2)[:, None]
    npz = tmp_path / "fundus.npz"
    np.savez(npz, train_images=imgs[:24], train_labels=labels[:24], val_images=imgs[24:32], val_labels=labels[24:32],
             test_images=imgs[32:], test_labels=labels[32:])
    named = ["grade0", "grade1"]
    data = load_config(None, [f"data.name={npz}", "data.resolution=28", "data.val_max_items=null",
                              "data.fraction=1.0", "labels.classes=[grade0, grade1]"]).data
    feats = tmp_path / "out" / "judge.safetensors"
    feature_net(feats, data, steps=2, log=lambda *a: None, classes=named)
    s = write_set(tmp_path / "set", [i % 2 for i in range(16)], classes=named)
    manifest = json.loads((s / "manifest.json").read_text())
    manifest["model"]["train_subset"] = subset_record(load_split(data, "train", named), data)
    (s / "manifest.json").write_text(json.dumps(manifest))
    summary = fidelity_cli(str(s), str(npz), None, None, str(feats), [], str(tmp_path / "out"))
    assert "grade0" in summary and "grade1" in summary
    report = json.loads((tmp_path / "out" / "fidelity.json").read_text())
    assert set(report["label_fidelity"]["per_class"]) == set(named)

    manifest["model"]["train_subset"]["indices_sha256"] = "0" * 16  # a generator trained on other rows
    (s / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(EvalError, match="trained on another subset"):
        fidelity_cli(str(s), str(npz), None, None, str(feats), [], str(tmp_path / "out2"))
