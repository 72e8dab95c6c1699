"""A small CNN classifier for 1-channel images: the judge of label fidelity and the
feature extractor for KID/FID (offline, no Inception weights needed)."""
from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """(B, 1, H, W) float in [-1, 1] -> logits (B, num_classes); any H, W >= 16."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        layers, c = [], 1
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)
        self.num_classes = num_classes
        self.widths = tuple(widths)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) -> (B, widths[-1]) pooled features."""
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
