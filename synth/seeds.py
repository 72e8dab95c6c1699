"""Per-image seeds: image i's random source depends only on (request seed, i)."""
from __future__ import annotations

import hashlib

import torch


def image_seed(base: int, index: int) -> int:
    """A 63-bit seed for image ``index`` of a request seeded with ``base``.

    Hash-derived so neighbouring indices and bases give unrelated streams.
    """
    h = hashlib.blake2b(f"{int(base)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def generator_for(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed`` (CPU so results match across devices)."""
    return torch.Generator().manual_seed(int(seed))


def step_generator(seed: int, step: int, rank: int = 0, stream: int = 0) -> torch.Generator:
    """The generator for training step ``step``: resumes need no saved RNG stream."""
    return generator_for(image_seed(seed * 1_000_003 + stream * 7 + rank, step))
