"""Euler: first order on the probability-flow ODE (== deterministic DDIM for an eps model)."""
from __future__ import annotations

from synth.solvers.base import Solver, intervals, guided_denoise, slope


def euler(predict, x, sigmas, *, cond, uncond=None, guidance=1.0, rng=None):
    """x: (B, ...) at ``sigmas[0]`` -> (B, ...) at ``sigmas[-1]``."""
    for i, s, s_next in intervals(sigmas):
        if s == 0:  # starting at the data end (inversion): nudge off sigma 0
            s = s_next * 1e-3
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        x = x + (s_next - s) * slope(x, den, s) if s_next != 0 else den
    return x


SOLVER = Solver("euler", euler, summary="first order; the bridge's default and the one that inverts")
