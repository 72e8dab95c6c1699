"""A sharper autoencoder and a gate that measures what matters: the perceptual term (features of a classifier
trained on the real data), the patch-adversarial term, and the codec-ceiling gate (real-data judges' mean
per-class accuracy on reconstructions)."""
import pytest
import torch
from safetensors.torch import load_file

from synth.config import ConfigError

from tests.conftest import tiny_cfg
from synth.trainers.autoencoder import perceptual_distance, train_autoencoder
from synth.trainers.common import TrainingError
from synth.trainers.ldm import train_ldm

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
    gated = ("model.codec=vae", f"model.autoencoder={tmp_path / 'ae'}", "train.ssim_gate=0", "train.ceiling_gate=0.99", "train.judge_steps=30",
             "train.steps=1")
    said = []
    with pytest.raises(TrainingError, match=r"the autoencoder caps class '.*': 2 judges trained on the real data "
                                            r"recognise on average 0\.\d+ of its reconstructed validation images"):
        train_ldm(tiny_cfg(*gated, "train.ceiling_judges=2"), tmp_path / "ldm", log=said.append)
    assert any("codec ceiling (2 judges: mean accuracy" in str(m) for m in said)
    assert (tmp_path / "ldm" / "codec-judge.safetensors").is_file()
    assert (tmp_path / "ldm" / "codec-judge-1.safetensors").is_file()  # its own seed: a second opinion
    train_ldm(tiny_cfg(*gated, "train.ceiling_judges=2", "train.force=true"), tmp_path / "ldm", **quiet)


# ---------------------------------------------------------------------------
# The patch-adversarial term: critic and autoencoder in one step, switched on after a warm-up


def test_hinge_terms_train_the_critic_and_the_autoencoder_apart():
    """The critic's loss reaches only the critic (reconstructions detached) and the generator's loss only the
    reconstructions (the critic's weights held fixed): the two never pull on each other's parameters."""
    from synth.models import PatchDiscriminator
    from synth.trainers.autoencoder import critic_hinge, generator_hinge

    torch.manual_seed(0)
    disc = PatchDiscriminator(1, 8, 2)
    real, fake = torch.rand(3, 1, 32, 32) * 2 - 1, (torch.rand(3, 1, 32, 32) * 2 - 1).requires_grad_()
    g = generator_hinge(disc, fake)
    assert g.shape == (3,)
    g.sum().backward()
    assert fake.grad.abs().sum() > 0 and all(p.grad is None for p in disc.parameters())
    fake.grad = None
    c = critic_hinge(disc, real, fake.detach())
    assert c.shape == (3,) and (c >= 0).all()
    c.sum().backward()
    # every weight gets a gradient (the last bias's cancels exactly while both hinges are active: -1 real, +1 fake)
    assert fake.grad is None and all(p.grad is not None for p in disc.parameters())
    assert all(p.grad.abs().sum() > 0 for p in disc.parameters() if p.dim() > 1)


def test_adversarial_term_switches_on_at_its_step_and_resumes_bit_exact(tmp_path):
    adv = ("train.adversarial_weight=0.5", "train.adversarial_start=2")
    said = []
    train_autoencoder(tiny_cfg("train.steps=4", *adv), tmp_path / "a", log=said.append)
    assert any("patch critic" in str(m) and "from step 2" in str(m) for m in said)
    ck = tmp_path / "a" / "checkpoints"
    assert (ck / "step-00000004" / "disc.safetensors").is_file()
    assert not list((tmp_path / "a" / "export").rglob("*disc*"))  # the export is the autoencoder alone
    # before the switch the generator term is off: the autoencoder equals one trained without a critic (whose
    # gradients, clipped apart, do not touch it) ...
    train_autoencoder(tiny_cfg("train.steps=4"), tmp_path / "plain", **quiet)
    a2 = load_file(str(ck / "step-00000002" / "vae.safetensors"))
    p2 = load_file(str(tmp_path / "plain" / "checkpoints" / "step-00000002" / "vae.safetensors"))
    assert all(torch.equal(a2[k], p2[k]) for k in a2)
    # ... and after it, it is on: step 4 differs from a run whose switch never comes
    train_autoencoder(tiny_cfg("train.steps=4", "train.adversarial_weight=0.5", "train.adversarial_start=99"),
                      tmp_path / "late", **quiet)
    l2 = load_file(str(tmp_path / "late" / "checkpoints" / "step-00000002" / "vae.safetensors"))
    assert all(torch.equal(a2[k], l2[k]) for k in a2)
    a4 = load_file(str(ck / "step-00000004" / "vae.safetensors"))
    l4 = load_file(str(tmp_path / "late" / "checkpoints" / "step-00000004" / "vae.safetensors"))
    assert not all(torch.equal(a4[k], l4[k]) for k in a4)
    # stopped at step 2 and resumed: autoencoder and critic bit-identical to the uninterrupted run
    train_autoencoder(tiny_cfg("train.steps=2", *adv), tmp_path / "b", **quiet)
    train_autoencoder(tiny_cfg("train.steps=4", *adv), tmp_path / "b", **quiet)
    for name in ("vae", "disc"):
        a = load_file(str(ck / "step-00000004" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000004" / f"{name}.safetensors"))
        assert all(torch.equal(a[k], b[k]) for k in a), name
    recorded = [(tmp_path / "b" / f).read_bytes() for f in ("run.json", "config.yaml")]
    with pytest.raises(ConfigError, match=r"written with a patch critic but train.adversarial_weight is now 0\.0"):
        train_autoencoder(tiny_cfg("train.steps=6"), tmp_path / "b", **quiet)  # a critic cannot vanish mid-run
    assert [(tmp_path / "b" / f).read_bytes() for f in ("run.json", "config.yaml")] == recorded  # refused before writing
    with pytest.raises(ConfigError, match=r"written without a patch critic"):  # nor appear
        train_autoencoder(tiny_cfg("train.steps=6", *adv), tmp_path / "plain", **quiet)
    train_autoencoder(tiny_cfg("train.steps=6", "train.adversarial_weight=0.2"), tmp_path / "b", **quiet)  # its weight may
    from synth.trainers.autoencoder import check_critic  # a critic file gone from the newest checkpoint is damage, which
    (tmp_path / "b" / "checkpoints" / "step-00000006" / "disc.safetensors").unlink()  # the resume quarantines
    check_critic(tiny_cfg("train.steps=8", *adv), tmp_path / "b")
    with pytest.raises(ConfigError, match=r"at least 8 px for its patch critic \(data.resolution is 6\)"):
        train_autoencoder(tiny_cfg("data.resolution=6", *adv), tmp_path / "small", **quiet)
