"""DPM-Solver++(2M): multistep, second order in log-SNR (lambda = -log sigma); synth's default."""
from __future__ import annotations

import math

from synth.solvers.base import Solver, intervals, guided_denoise


def dpmpp_2m(predict, x, sigmas, *, cond, uncond=None, guidance=1.0, rng=None):
    """x: (B, ...) at ``sigmas[0]`` -> (B, ...) at ``sigmas[-1]``; one evaluation per step."""
    old = s_prev = None  # the previous denoised estimate and the sigma it was made at
    for i, s, s_next in intervals(sigmas):
        den = guided_denoise(predict, x, s, cond, uncond, guidance)
        if s_next == 0:
            x = den
            break
        h = math.log(s) - math.log(s_next)
        if old is None:
            d = den
        else:
            r = (math.log(s_prev) - math.log(s)) / h
            d = (1 + 1 / (2 * r)) * den - (1 / (2 * r)) * old
        x = (s_next / s) * x - math.expm1(-h) * d
        old, s_prev = den, s
    return x


SOLVER = Solver("dpmpp_2m", dpmpp_2m, summary="multistep second order, one evaluation per step (default)")
