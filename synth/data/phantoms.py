"""Synthetic phantoms (grey, colour, three acquisition domains, captioned CT/MR): data for tests, demos and offline
fallbacks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from synth.data.base import ImageSet


def phantom_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A chest-like grey phantom, uint8 (size, size). Class 1 adds lung opacities."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = np.zeros((size, size), np.float32)
    cx = 0.5 + rng.normal(0, 0.02)
    body = ((xx - cx) / (0.42 + rng.normal(0, 0.02))) ** 2 + ((yy - 0.55) / 0.5) ** 2 < 1
    img[body] = 0.55 + rng.normal(0, 0.03)
    for side in (-1, 1):  # lung fields: dark ellipses
        lx = cx + side * (0.17 + rng.normal(0, 0.01))
        lung = ((xx - lx) / 0.13) ** 2 + ((yy - 0.5) / (0.3 + rng.normal(0, 0.02))) ** 2 < 1
        img[lung] = 0.2 + rng.normal(0, 0.02)
    for k in range(6):  # ribs: faint bright arcs
        ry = 0.28 + 0.08 * k + rng.normal(0, 0.005)
        rib = np.abs(yy - ry - 0.15 * (xx - cx) ** 2 * 4) < 0.012
        img[rib & body] += 0.12
    spine = np.abs(xx - cx) < 0.035
    img[spine & body] = 0.8
    if label == 1:  # pneumonia: cloudy opacities in one or both lungs
        for _ in range(int(rng.integers(1, 4))):
            ox = cx + rng.choice([-1, 1]) * rng.uniform(0.1, 0.24)
            oy = rng.uniform(0.35, 0.7)
            r = rng.uniform(0.05, 0.1)
            img += 0.45 * np.exp(-(((xx - ox) ** 2 + (yy - oy) ** 2) / (2 * r * r)))
    img += rng.normal(0, 0.03, img.shape).astype(np.float32)
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def phantom_set(n: int, size: int, seed: int, split: str) -> ImageSet:
    """``n`` phantom images, alternating classes ("normal", "pneumonia")."""
    offset = {"train": 0, "val": 1, "test": 2}[split]
    images, labels = [], []
    for i in range(n):
        rng = np.random.default_rng([seed, offset, i])
        label = i % 2
        images.append(phantom_image(label, size, rng))
        labels.append(label)
    return ImageSet(torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels), ["normal", "pneumonia"],
                    source="phantom")


def colour_phantom_image(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A fundus-like colour phantom, uint8 (size, size, 3): an orange-red disc with a bright optic disc and
    dark vessels; class 1 ("lesion") adds yellow exudate spots.  Colour carries the label: in grey the
    spots are close to the background."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    r = np.hypot(xx - 0.5, yy - 0.5)
    img = np.zeros((size, size, 3), np.float32)
    fundus = r < 0.45
    base = np.array([0.75, 0.32, 0.12]) + rng.normal(0, 0.03, 3)
    img[fundus] = base * (1 - 0.6 * r[fundus, None])
    dx, dy = 0.5 + rng.choice([-1, 1]) * 0.2, 0.5 + rng.normal(0, 0.03)
    disc = np.exp(-((xx - dx) ** 2 + (yy - dy) ** 2) / (2 * 0.05 ** 2))
    img += disc[..., None] * np.array([0.25, 0.35, 0.25])
    for k in range(4):  # vessels: dark arcs from the disc
        ang = rng.uniform(0, 2 * np.pi)
        d = np.abs((yy - dy) * np.cos(ang) - (xx - dx) * np.sin(ang))
        img[(d < 0.01) & fundus] *= 0.55
    if label == 1:
        for _ in range(int(rng.integers(3, 7))):
            ex, ey = rng.uniform(0.25, 0.75, 2)
            spot = np.exp(-((xx - ex) ** 2 + (yy - ey) ** 2) / (2 * 0.025 ** 2))
            img += spot[..., None] * np.array([0.15, 0.45, -0.05])
    img += rng.normal(0, 0.02, img.shape)
    img[~fundus] = 0
    return np.clip(img * 255, 0, 255).astype(np.uint8)


def colour_phantom_set(n: int, size: int, seed: int, split: str) -> ImageSet:
    """``n`` colour phantoms (N, 3, R, R), alternating classes ("healthy", "lesion")."""
    offset = {"train": 0, "val": 1, "test": 2}[split]
    images = [colour_phantom_image(i % 2, size, np.random.default_rng([seed, offset, i, 3])) for i in range(n)]
    return ImageSet(torch.from_numpy(np.stack(images).transpose(0, 3, 1, 2).copy()), torch.arange(n) % 2,
                    ["healthy", "lesion"], source="phantom-colour")


def phantom_domains(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Phantoms in three 'acquisition domains' (plain, dim, inverted), each image in exactly one:
    uint8 images (n, size, size) and domain ids (n,) = i % 3. Unpaired data for bridge tests and checks."""
    imgs = phantom_set(n, size, seed, "train").images[:, 0].numpy().astype(np.float32)
    dom = np.arange(n) % 3
    imgs[dom == 1] = imgs[dom == 1] * 0.6 + 60
    imgs[dom == 2] = 255 - imgs[dom == 2]
    return imgs.clip(0, 255).astype(np.uint8), dom


# The captions of the captioned phantoms: the words a text model must tie to modality and body part.
CAPTION_WORDS = {("CT", "Head"): "CT of the head", ("MR", "Head"): "MRI of the brain",
                 ("CT", "Thorax"): "CT of the chest", ("MR", "Thorax"): "MRI of the thorax"}


def captioned_phantom(kind: str, where: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 (size, size): CT bright, MR dark; a head is a disc, a thorax two lobes."""
    yy, xx = np.mgrid[:size, :size] * (16 / size)
    mask = ((yy - 8) ** 2 + (xx - 8) ** 2 < 30) if where == "Head" else (
        ((yy - 8) ** 2 + (xx - 4) ** 2 < 10) | ((yy - 8) ** 2 + (xx - 12) ** 2 < 10))
    return np.clip(mask * (200 if kind == "CT" else 90) + rng.normal(0, 8, (size, size)), 0, 255).astype(np.uint8)


def captioned_manifest(root: Path, size: int, n: int, n_test: int | None = None,
                       name: str = "manifest.jsonl") -> Path:
    """``n`` captioned phantom PNGs under ``root`` and their manifest (columns label Head/Thorax, type CT/MR, plane,
    prompt "<CAPTION_WORDS>, case i."); the last ``n_test`` (default n // 4) rows are the test split."""
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    n_test = n // 4 if n_test is None else n_test
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        kind, where = ("CT", "MR")[i % 2], ("Head", "Thorax")[(i // 2) % 2]
        plane = ("Axial", "Coronal", "Sagittal")[(i // 4) % 3]
        Image.fromarray(captioned_phantom(kind, where, size, rng)).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "label": where, "type": kind, "plane": plane,
                     "prompt": f"{CAPTION_WORDS[kind, where]}, case {i}.", "split": "test" if i >= n - n_test else "train"})
    (root / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / name
