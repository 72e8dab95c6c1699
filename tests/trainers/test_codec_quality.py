"""A sharper autoencoder and a gate that measures what matters: the perceptual term (features of a classifier
trained on the real data) and the codec-ceiling gate (a real-data judge's per-class accuracy on reconstructions)."""
import pytest
import torch

from tests.conftest import tiny_cfg
from trainers.autoencoder import perceptual_distance, train_autoencoder
from trainers.common import TrainingError
from trainers.ldm import train_ldm

pytestmark = pytest.mark.usefixtures("one_thread")
quiet = dict(log=lambda *a: None)


def test_perceptual_distance_is_zero_for_the_same_image_and_has_gradients():
    from synth.classifier import SmallCNN

    net = SmallCNN(2, (8, 8)).eval()
    a = torch.rand(3, 1, 16, 16, requires_grad=True)
    b = torch.rand(3, 1, 16, 16)
    assert torch.allclose(perceptual_distance(net, b, b), torch.zeros(3), atol=1e-6)
    d = perceptual_distance(net, a, b)
    assert d.shape == (3,) and (d > 0).all()
    d.sum().backward()
    assert a.grad is not None and a.grad.abs().sum() > 0


def test_autoencoder_with_perceptual_term_trains_its_feature_net_once(tmp_path):
    said = []
    cfg = tiny_cfg("train.steps=2", "train.perceptual_weight=1.0", "train.perceptual_steps=20")
    train_autoencoder(cfg, tmp_path, log=said.append)
    net = tmp_path / "perceptual.safetensors"
    assert net.is_file() and any("perceptual feature net" in str(m) for m in said)
    stamp = net.stat().st_mtime_ns
    said.clear()
    train_autoencoder(tiny_cfg("train.steps=4", "train.perceptual_weight=1.0", "train.perceptual_steps=20"), tmp_path,
                      log=said.append)
    assert net.stat().st_mtime_ns == stamp and not any("perceptual feature net" in str(m) for m in said)


def test_ceiling_gate_refuses_a_codec_that_caps_a_class_unless_forced(tmp_path):
    train_autoencoder(tiny_cfg("train.steps=1"), tmp_path / "ae", **quiet)  # one step: it blurs everything
    gated = ("model.codec=vae", f"model.autoencoder={tmp_path / 'ae'}", "train.ssim_gate=0", "train.ceiling_gate=0.99",
             "train.steps=1")
    said = []
    with pytest.raises(TrainingError, match=r"the autoencoder caps class '.*': a judge trained on the real data "
                                            r"recognises 0\.\d+ of its reconstructed validation images"):
        train_ldm(tiny_cfg(*gated), tmp_path / "ldm", log=said.append)
    assert any("codec ceiling" in str(m) for m in said)
    assert (tmp_path / "ldm" / "codec-judge.safetensors").is_file()
    train_ldm(tiny_cfg(*gated, "train.force=true"), tmp_path / "ldm", **quiet)
