"""The flow-matching adapter: flow time in, the shared VE integrators underneath.

Convention (written once, here and in :mod:`synth.samplers.integrators`): t in [0, 1],
t = 0 noise, t = 1 data, ``x_t = (1 - t) x0 + t x1``, velocity ``v = x1 - x0``.
The integrators walk a VE denoiser over sigmas; a flow model maps to it by
``sigma = (1 - t) / t`` and ``x_ve = x_t / t`` (:func:`synth.samplers.integrators.flow_denoiser`).

The two ends of the path are singular in the VE form and are handled HERE, once,
never inside a solver:

* t = 0 (pure noise) is sigma = inf and x_ve = x0 / 0.  A path that starts at the
  noise end starts at ``T_EDGE`` instead: the state there is taken to be the noise
  itself, i.e. ``x_t = x0`` where the true ``x_t`` is ``(1 - T_EDGE) x0 + T_EDGE x1``,
  an error of ``T_EDGE * |x1 - x0|`` (about 3e-4 in [-1, 1] units, 1/25 of a grey
  level) -- the exact limit of the first solver step as the start goes to 0.
* t = 1 (data) is sigma = 0.  Ending there is exact (every solver's last step into
  sigma = 0 returns the denoised estimate); STARTING there (inverting data towards
  noise) would divide by zero, so an inversion starts at ``1 - T_EDGE``, where the
  state is the data to within ``T_EDGE * |v|``.

Grids are uniform in t (``steps`` intervals over the whole path; a partial path
[t_a, t_b] gets ``max(1, round(steps * |t_b - t_a|))`` intervals).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from synth.samplers.integrators import flow_denoiser, get_sampler
from synth.config import ConfigError

T_EDGE = 1e-4

Velocity = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def leg_steps(steps: int, t_from: float, t_to: float) -> int:
    """Solver steps for the leg [t_from, t_to] of a ``steps``-step full path (at least 1)."""
    return max(1, round(steps * abs(t_to - t_from)))


def flow_times(t_from: float, t_to: float, n: int) -> torch.Tensor:
    """(n + 1,) float64 times from ``t_from`` to ``t_to``, uniform, with the singular starts moved
    off the edges (see the module docstring); an end at t = 1 stays exactly 1."""
    if not (0.0 <= t_from <= 1.0 and 0.0 <= t_to <= 1.0):
        raise ValueError(f"flow times must lie in [0, 1], got {t_from} -> {t_to}")
    ts = torch.linspace(t_from, t_to, n + 1, dtype=torch.float64)
    ts[0] = ts[0].clamp(T_EDGE, 1 - T_EDGE)
    if t_to != 1.0:
        ts[-1] = ts[-1].clamp(T_EDGE, 1 - T_EDGE)
    return ts


def times_to_sigmas(ts: torch.Tensor) -> torch.Tensor:
    """(n,) flow times -> VE sigmas ``(1 - t) / t`` (0 at t = 1)."""
    return (1 - ts) / ts


def integrate_flow(velocity: Velocity, x_t: torch.Tensor, t_from: float, t_to: float, steps: int, *,
                   sampler: str = "euler", cond: Any = None, uncond: Any = None, guidance: float = 1.0,
                   rng: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Carry ``x_t`` (B, ...) at time ``t_from`` to time ``t_to`` along the model's flow.

    ``steps`` intervals for the whole path (this leg gets its share); any solver of
    :mod:`synth.samplers.integrators`; guidance ``v_u + w (v_c - v_u)``.  Returns x at ``t_to``.
    """
    if t_from == t_to:
        return x_t
    ts = flow_times(t_from, t_to, leg_steps(steps, t_from, t_to))
    sig = times_to_sigmas(ts)
    x = x_t.float() / float(ts[0])
    out = get_sampler(sampler)(flow_denoiser(velocity), x, sig, cond=cond, uncond=uncond, guidance=guidance, rng=rng)
    return out * float(ts[-1])


def translate_latents(velocity: Velocity, x1: torch.Tensor, source: Any, target: Any, null: Any, tau: float,
                      steps: int, *, sampler: str = "euler", guidance: float = 1.0,
                      rng: Sequence[torch.Generator] | None = None) -> torch.Tensor:
    """Bridge translation (B, ...) -> (B, ...): back under ``source`` from t = 1 to ``tau``,
    then forward under ``target`` from ``tau`` to 1.

    tau = 1 is the identity, tau = 0 full inversion to noise (the DDIB limit).  Both legs
    use the same solver and guidance (``null`` is the unconditional condition).
    """
    if not 0.0 <= tau <= 1.0:
        raise ConfigError(f"tau must be in [0, 1], got {tau}")
    if tau == 1.0:
        return x1
    z = integrate_flow(velocity, x1, 1.0, tau, steps, sampler=sampler, cond=source, uncond=null,
                       guidance=guidance, rng=rng)
    return integrate_flow(velocity, z, tau, 1.0, steps, sampler=sampler, cond=target, uncond=null,
                          guidance=guidance, rng=rng)


__all__ = ["T_EDGE", "flow_times", "times_to_sigmas", "integrate_flow", "translate_latents", "leg_steps"]
