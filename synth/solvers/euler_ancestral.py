"""Ancestral Euler (eta = 1): stochastic, each image's noise from its own generator."""
from __future__ import annotations

import math

from synth.solvers.base import Solver, intervals, ancestral_noise, guided_denoise, slope


def euler_ancestral(predict, x, sigmas, *, cond, uncond=None, guidance=1.0, rng=None):
    """x: (B, ...) at ``sigmas[0]`` -> (B, ...) at ``sigmas[-1]``; ``rng``: one torch.Generator per image."""
    if rng is None or len(rng) != x.shape[0]:
        raise ValueError("stochastic samplers need one torch.Generator per image (rng=[...], len == batch)")
    steps = intervals(sigmas)
    noise = ancestral_noise(rng, tuple(x.shape[1:]), len(steps), x.device).to(x.dtype)
    for i, s, s_next in steps:
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        if s_next == 0:
            x = den
            continue
        sigma_up = math.sqrt(max(0.0, s_next**2 * (s**2 - s_next**2) / s**2))
        sigma_down = math.sqrt(s_next**2 - sigma_up**2)
        x = x + (sigma_down - s) * slope(x, den, s)
        x = x + noise[:, i] * sigma_up
    return x


SOLVER = Solver("euler_ancestral", euler_ancestral, stochastic=True, summary="stochastic (eta = 1), per-image noise")
