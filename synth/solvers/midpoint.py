"""Explicit midpoint: second order, the midpoint taken geometrically in sigma."""
from __future__ import annotations

import math

from synth.solvers.base import Solver, intervals, guided_denoise, slope


def midpoint(predict, x, sigmas, *, cond, uncond=None, guidance=1.0, rng=None):
    """x: (B, ...) at ``sigmas[0]`` -> (B, ...) at ``sigmas[-1]``; two evaluations per step but the last."""
    for i, s, s_next in intervals(sigmas):
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        if s_next == 0:
            x = den
            continue
        s_mid = math.sqrt(s * s_next)
        x_m = x + (s_mid - s) * slope(x, den, s)
        x = x + (s_next - s) * slope(x_m, guided_denoise(predict, x_m, s_mid, cond, uncond, guidance), s_mid)
    return x


SOLVER = Solver("midpoint", midpoint, evals_per_step=2, summary="second order, two evaluations per step")
