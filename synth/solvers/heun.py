"""Heun: second order (EDM's solver); Euler on the final step into sigma = 0."""
from __future__ import annotations

from synth.solvers.base import Solver, intervals, guided_denoise, slope


def heun(predict, x, sigmas, *, cond, uncond=None, guidance=1.0, rng=None):
    """x: (B, ...) at ``sigmas[0]`` -> (B, ...) at ``sigmas[-1]``; two evaluations per step but the last."""
    for i, s, s_next in intervals(sigmas):
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        d = slope(x, den, s)
        if s_next == 0:
            x = den
            continue
        x_e = x + (s_next - s) * d
        d2 = slope(x_e, guided_denoise(predict, x_e, s_next, cond, uncond, guidance), s_next)
        x = x + (s_next - s) * (d + d2) / 2
    return x


SOLVER = Solver("heun", heun, evals_per_step=2, summary="second order, two evaluations per step")
