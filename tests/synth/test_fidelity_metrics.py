"""Fidelity and privacy metrics on constructed cases whose answer is known (tiny tensors, CPU seconds)."""
import math

import pytest
import torch

from synth.classifier import SmallCNN
from synth.data import phantom_set
from synth.metrics import (FeatureNet, exact_copies, fid_kid, memorisation, ms_ssim_diversity, ms_ssim_settings,
                           nearest_neighbours, privacy_score)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def phantoms():
    return phantom_set(48, 28, 0, "train"), phantom_set(48, 28, 0, "test")


def test_feature_net_accepts_what_torchmetrics_passes():
    torch.manual_seed(0)
    fn = FeatureNet(SmallCNN(2, widths=(8, 16)))
    x = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    f = fn(x)
    assert f.shape == (3, 16) and fn.num_features == 16
    assert torch.allclose(f, fn(x.float() / 255), atol=1e-6)           # normalize=True style input
    assert torch.allclose(f, fn(x.repeat(1, 3, 1, 1)), atol=1e-6)       # RGB averaged to grey
    fn.train()
    assert not fn.model.training                                        # BatchNorm stays frozen


def test_fid_kid_zero_for_identical_sets_and_positive_for_different(phantoms):
    train, test = phantoms
    torch.manual_seed(0)
    net = SmallCNN(2, widths=(8, 16))
    same = fid_kid(train.images, train.images, net, kid_subset_size=1000, kid_subsets=10)
    diff = fid_kid(train.images, 255 - train.images, net, kid_subset_size=1000, kid_subsets=10)
    assert same["kid_subset_size"] == 48 and same["num_features"] == 16  # capped at the smaller set
    assert diff["fid"] > 0 and abs(same["fid"]) < 1e-3 * diff["fid"]
    assert abs(same["kid_mean"]) < 1e-3 * diff["kid_mean"]
    again = fid_kid(train.images, 255 - train.images, net, kid_subset_size=20, kid_subsets=10, seed=3)
    assert again == fid_kid(train.images, 255 - train.images, net, kid_subset_size=20, kid_subsets=10, seed=3)


def test_ms_ssim_settings_work_at_medmnist_sizes(phantoms):
    assert ms_ssim_settings(28)["scales"] == 3 and ms_ssim_settings(32)["scales"] == 3
    assert ms_ssim_settings(16)["scales"] == 2 and ms_ssim_settings(256)["scales"] == 5
    assert abs(sum(ms_ssim_settings(28)["betas"]) - 1) < 1e-9
    train, _ = phantoms
    d = ms_ssim_diversity(train.images, train.labels, 2, pairs=40)
    assert all(0 < v < 0.999 for v in d["per_class"].values())


def test_diversity_of_identical_images_is_one():
    img = phantom_set(1, 32, 0, "train").images
    imgs = torch.cat([img.repeat(6, 1, 1, 1), 255 - img.repeat(6, 1, 1, 1)])
    labels = torch.tensor([0] * 6 + [1] * 6)
    d = ms_ssim_diversity(imgs, labels, 3, pairs=10)
    assert abs(d["per_class"][0] - 1) < 1e-5 and abs(d["per_class"][1] - 1) < 1e-5
    assert math.isnan(d["per_class"][2]) and abs(d["mean"] - 1) < 1e-5  # an empty class is NaN, not 1


def test_nearest_neighbours_hand_case():
    ref = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    q = torch.tensor([[2.0, 0.1], [-0.5, -3.0], [1.0, 2.0]])
    d, i = nearest_neighbours(q, ref, chunk=2)                              # two chunks
    assert i.tolist() == [0, 2, 1]
    want = torch.tensor([1 - 2 / math.sqrt(4.01), 1 - 0.5 / math.sqrt(9.25), 1 - 2 / math.sqrt(5)], dtype=torch.float64)
    assert torch.allclose(d, want, atol=1e-6)
    d2, i2 = nearest_neighbours(q, ref * 5)                                 # scale-free: features are normalised
    assert torch.equal(i2, i) and torch.allclose(d2, d, atol=1e-6)


def test_exclude_same_index():
    x = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
    d, i = nearest_neighbours(x, x)
    assert i.tolist() == [0, 1, 2, 3] and d.max() < 1e-6
    d, i = nearest_neighbours(x, x, exclude_same_index=True, chunk=3)     # chunk boundary inside the diagonal
    assert i.tolist() == [1, 0, 3, 2] and d.min() > 1e-4
    with pytest.raises(ValueError):
        nearest_neighbours(x, x[:3], exclude_same_index=True)


def _clusters(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g)


def test_memorisation_and_privacy_flag_copies_not_distinct_images():
    train, test, fresh = _clusters(400, 16, 0), _clusters(400, 16, 1), _clusters(300, 16, 2)
    copies = train[:300] + 1e-4 * _clusters(300, 16, 3)
    m_copy, m_fresh = memorisation(copies, train, test), memorisation(fresh, train, test)
    assert not m_copy["no_closer_than_real"] and m_copy["share_below_real_p05"] > 0.99
    assert m_fresh["no_closer_than_real"] and m_fresh["share_below_real_p05"] < 0.15
    assert m_copy["syn_distances"].shape == (300,) and m_copy["test_distances"].shape == (400,)
    assert torch.equal(m_copy["syn_index"], torch.arange(300))
    p_copy = privacy_score(copies, train, calib_feats=test, quantile=0.01)
    p_fresh = privacy_score(fresh, train, calib_feats=test, quantile=0.01)
    assert p_copy["score"] > 0.99                                         # copies are re-identified
    assert p_fresh["score"] < 0.04 and p_fresh["real_rate"] < 0.04        # ~quantile for distinct images
    assert p_copy["threshold"] == p_fresh["threshold"] > 0
    p_loo = privacy_score(fresh, train, calib_feats=None, quantile=0.05)  # calibrated within the training set
    assert p_loo["n_calib"] == 400 and p_loo["score"] < 0.15


def test_exact_copies_and_float64_distances_of_copies():
    x = torch.randint(0, 256, (6, 1, 4, 4), dtype=torch.uint8)
    q = torch.cat([x[[4, 1]], 255 - x[:1]])
    assert exact_copies(q, x).tolist() == [True, True, False]
    f = torch.rand(50, 128) + 1.0                    # positive, nearly parallel features (ReLU-pooled ones are)
    d, i = nearest_neighbours(f[:10], f)
    assert torch.equal(i, torch.arange(10)) and d.max() < 1e-12   # a copy is at 0, below any real pair
