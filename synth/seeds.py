"""Seeds: every random stream is a hash of (seed, stream name, indices), never arithmetic.

Image i of a request uses ``image_seed(seed, i)``; training step s uses
``step_generator(seed, s, rank, stream)``.  Because seeds are hashes of the whole
tuple, two different tuples (rank 7 / micro-batch 0 vs rank 0 / micro-batch 1, an
image's starting noise vs its ancestral noise) never share a stream.
"""
from __future__ import annotations

import hashlib
import operator

import torch

from synth.errors import SynthError


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed from any tuple of ints and names (blake2b of their text, ``:``-joined)."""
    text = ":".join(str(int(p)) if isinstance(p, (int, bool)) else f"'{p}'" for p in parts)
    h = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


def image_seed(base: int, index: int) -> int:
    """A 63-bit seed for image ``index`` of a request seeded with ``base``.

    Hash-derived so neighbouring indices and bases give unrelated streams.
    """
    h = hashlib.blake2b(f"{int(base)}:{int(index)}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "little") & ((1 << 63) - 1)


SEED_LIMIT = 1 << 63  # torch seeds are signed 64-bit: [0, 2**63) is the range every stream here can use


class SeedError(SynthError, ValueError):
    """A seed outside [0, 2**63) or not an integer."""


def check_seed(seed, what: str = "seed") -> int:
    """``seed`` as an int in [0, 2**63), else a one-line :class:`SeedError` naming it."""
    try:
        value = operator.index(seed)  # ints and numpy integers; 1.5 and "7" are refused
    except TypeError:
        raise SeedError(f"{what} {seed!r} is not an integer; use a whole number in [0, 2**63)") from None
    if isinstance(seed, bool) or not 0 <= value < SEED_LIMIT:
        raise SeedError(f"{what} {seed!r} is outside [0, 2**63) (torch seeds are signed 64-bit); use a whole number "
                        f"in that range")
    return value


def generator_for(seed: int, device: str | torch.device = "cpu") -> torch.Generator:
    """A generator seeded with ``seed`` (CPU by default, so results match across devices)."""
    return torch.Generator(device=device).manual_seed(check_seed(seed))


def step_generator(seed: int, step: int, rank: int = 0, stream: int | str = 0,
                   device: str | torch.device = "cpu") -> torch.Generator:
    """The generator for training step ``step`` of ``rank``'s ``stream``: resumes need no saved RNG state.

    On a GPU pass ``device`` so noise is drawn where it is used (no host copy per step).
    """
    return generator_for(derive_seed("train-step", seed, step, rank, stream), device)
