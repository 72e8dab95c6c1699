import torch

from synth.metrics import kid, label_fidelity


def test_kid_separates_distributions():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    c = torch.randn(400, 8, generator=g) + 1.0
    same, se = kid(a, b, subsets=20, subset_size=100)
    diff, _ = kid(a, c, subsets=20, subset_size=100)
    assert abs(same) < 3 * se + 1e-3 and diff > 10 * max(se, 1e-4)


def test_label_fidelity_counts():
    class Fixed(torch.nn.Module):
        def forward(self, x):
            return torch.stack([x.mean((1, 2, 3)), -x.mean((1, 2, 3))], 1)  # bright -> class 0

    imgs = torch.cat([torch.full((3, 1, 4, 4), 250, dtype=torch.uint8), torch.full((2, 1, 4, 4), 5, dtype=torch.uint8)])
    r = label_fidelity(Fixed(), imgs, torch.tensor([0, 0, 1, 1, 1]), 2)
    assert r["per_class"][0] == 1.0 and abs(r["per_class"][1] - 2 / 3) < 1e-6 and abs(r["overall"] - 0.8) < 1e-6
