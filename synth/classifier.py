"""A small CNN classifier for grey or RGB images: the judge of label fidelity and the
feature extractor for KID/FID (offline, no Inception weights needed)."""
from __future__ import annotations

import torch
from torch import nn

from synth.errors import SynthError


class SmallCNN(nn.Module):
    """(B, C, H, W) float in [-1, 1] -> logits (B, num_classes); any H, W >= 16; C = ``in_channels`` (1 or 3)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (32, 64, 128), in_channels: int = 1):
        super().__init__()
        layers, c = [], in_channels
        for w in widths:
            layers += [nn.Conv2d(c, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1), nn.BatchNorm2d(w), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            c = w
        self.body = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)
        self.num_classes = num_classes
        self.widths = tuple(widths)
        self.in_channels = in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, widths[-1]) pooled features."""
        return self.pool(self.body(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class _Block(nn.Module):
    """A ResNet basic block: two 3x3 convolutions with batch norm and an identity (or 1x1 strided) shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                                  nn.ReLU(inplace=True), nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False), nn.BatchNorm2d(c_out))
        self.skip = (nn.Identity() if stride == 1 and c_in == c_out else
                     nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


class SmallResNet(nn.Module):
    """The second classifier recipe of ``synth eval augment``: residual blocks, strided downsampling (no max
    pooling). (B, C, H, W) float in [-1, 1] -> logits (B, num_classes); ~0.08M parameters at widths (16, 32, 64)."""

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (16, 32, 64), in_channels: int = 1):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]),
                                  nn.ReLU(inplace=True))
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(_Block(c, w, 1 if i == 0 else 2))
            c = w
        self.body = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(c, num_classes)
        self.num_classes, self.widths, self.in_channels = num_classes, tuple(widths), in_channels

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, widths[-1]) pooled features."""
        return self.pool(self.body(self.stem(x))).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


# ---------------------------------------------------------------------------
# Saved classifiers (a judge, a feature extractor, a quality filter): one safetensors file
# whose metadata holds the class names and widths, so nothing but tensors and JSON is read.


class ClassifierError(SynthError, ValueError):
    """A saved classifier that cannot be used; one line naming the file and the fix."""


def save_classifier(model: SmallCNN, path, classes: list[str], info: dict | None = None) -> str:
    """Write ``model`` to ``path`` (.safetensors, atomically); returns the weights' sha256 (16 hex)."""
    import hashlib
    import json
    from pathlib import Path

    from safetensors.torch import save
    from synth.io import atomic_write_bytes

    if len(classes) != model.num_classes:
        raise ClassifierError(f"{len(classes)} class names for a {model.num_classes}-class model")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = {"format": "synth-classifier-v1", "classes": json.dumps(list(classes)), "widths": json.dumps(list(model.widths)),
            "in_channels": str(model.in_channels), "info": json.dumps(info or {}, sort_keys=True)}
    data = save(tensors, metadata=meta)
    atomic_write_bytes(Path(path), data)
    return hashlib.sha256(save(tensors)).hexdigest()[:16]


def load_classifier(path, device="cpu") -> tuple[SmallCNN, list[str], dict]:
    """(model in eval mode, class names, info) from :func:`save_classifier`'s file; weights only, no pickle."""
    import hashlib
    import json
    from pathlib import Path

    from safetensors import SafetensorError
    from safetensors.torch import load, save

    p = Path(path)
    if not p.is_file():
        raise ClassifierError(f"classifier '{p}' not found; train one (synth eval writes it) or pass an existing file")
    try:
        raw = p.read_bytes()
        tensors = load(raw)
        from safetensors import safe_open
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise ClassifierError(f"classifier '{p}' is not a readable safetensors file ({str(e).splitlines()[0]}); "
                              f"delete it to have it retrained") from None
    if meta.get("format") != "synth-classifier-v1":
        raise ClassifierError(f"'{p}' is not a synth classifier (no synth-classifier-v1 metadata)")
    classes, widths = json.loads(meta["classes"]), tuple(json.loads(meta["widths"]))
    model = SmallCNN(len(classes), widths, int(meta.get("in_channels", 1)))
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise ClassifierError(f"classifier '{p}' does not match its recorded shape ({str(e).splitlines()[0]})") from None
    info = json.loads(meta.get("info", "{}"))
    info["weights_sha256"] = hashlib.sha256(save(tensors)).hexdigest()[:16]
    return model.to(device).eval(), classes, info
