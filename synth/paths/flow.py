"""The linear flow-matching path (rectified flow), for training and for sampling.

Convention (written once, here): t in [0, 1], t = 0 noise, t = 1 data, ``x_t = (1 - t) x0 + t x1``,
velocity ``v = x1 - x0``, the network sees the time as ``1000 t``.  The solvers walk a VE denoiser over
sigmas (:mod:`synth.solvers.base`); a flow model maps to it by ``sigma = (1 - t) / t`` and
``x_ve = x_t / t``, ``x0_hat = x_t + (1 - t) v``.

The two ends of the path are singular in the VE form and are handled HERE, once, never inside a solver:

* t = 0 (pure noise) is sigma = inf and x_ve = x0 / 0.  A path that starts at the noise end starts at
  ``T_EDGE`` instead: the state there is taken to be the noise itself, i.e. ``x_t = x0`` where the true
  ``x_t`` is ``(1 - T_EDGE) x0 + T_EDGE x1``, an error of ``T_EDGE * |x1 - x0|`` (about 3e-4 in [-1, 1]
  units, 1/25 of a grey level) -- the exact limit of the first solver step as the start goes to 0.
* t = 1 (data) is sigma = 0.  Ending there is exact (every solver's last step into sigma = 0 returns the
  denoised estimate); STARTING there (inverting data towards noise) would divide by zero, so an
  inversion starts at ``1 - T_EDGE``, where the state is the data to within ``T_EDGE * |v|``.

Grids are uniform in t (``steps`` intervals over the whole path; a partial path [t_a, t_b] gets
``max(1, round(steps * |t_b - t_a|))`` intervals).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch

from synth import solvers
from synth.config import ConfigError

T_EDGE = 1e-4
TIME_SCALE = 1000  # the UNet's timestep embedding sees 1000 t, as a diffusion UNet sees its integer steps

Velocity = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


def flow_sigma(t: torch.Tensor) -> torch.Tensor:
    """Flow-matching time t (0 noise, 1 data) -> sigma = (1 - t) / t."""
    return (1 - t) / t


def flow_time(sigma: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`flow_sigma`: t = 1 / (1 + sigma)."""
    return 1 / (1 + sigma)


def flow_denoiser(velocity: Velocity):
    """Wrap ``velocity(x_t, t, cond)`` (v = x1 - x0) as a VE denoiser ``predict(x, sigma, cond)``."""

    def predict(x, sigma, cond):
        t = flow_time(sigma).to(x.dtype)
        tb = t.view(-1, *([1] * (x.ndim - 1)))
        x_t = x * tb
        return x_t + (1 - tb) * velocity(x_t, t, cond)

    return predict


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

    ``steps`` intervals for the whole path (this leg gets its share); any solver of :mod:`synth.solvers`;
    guidance ``v_u + w (v_c - v_u)``.  Returns x at ``t_to``.
    """
    if t_from == t_to:
        return x_t
    ts = flow_times(t_from, t_to, leg_steps(steps, t_from, t_to))
    sig = times_to_sigmas(ts)
    x = x_t.float() / float(ts[0])
    solve = solvers.get(sampler).fn
    out = solve(flow_denoiser(velocity), x, sig, cond=cond, uncond=uncond, guidance=guidance, rng=rng)
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


class FlowPath:
    """The linear path ``x_t = (1 - t) x0 + t x1`` with target ``v = x1 - x0``: training and sampling."""

    T_EDGE = T_EDGE
    TIME_SCALE = TIME_SCALE

    # -- training -----------------------------------------------------------------
    @staticmethod
    def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0 noise, x1 data: (B, ...); t: (B,) in [0, 1] -> x_t (B, ...)."""
        tb = t.view(-1, *([1] * (x1.ndim - 1))).to(x1.dtype)
        return (1 - tb) * x0 + tb * x1

    @staticmethod
    def target(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """The velocity the network learns, (B, ...)."""
        return x1 - x0

    @staticmethod
    def network_time(t: torch.Tensor) -> torch.Tensor:
        """Flow time (B,) -> the timestep the UNet embeds (B,)."""
        return t * TIME_SCALE

    # -- sampling ------------------------------------------------------------------
    denoiser = staticmethod(flow_denoiser)
    solver_name = staticmethod(solvers.for_flow)
    times = staticmethod(flow_times)
    sigmas = staticmethod(times_to_sigmas)
    integrate = staticmethod(integrate_flow)
    translate = staticmethod(translate_latents)

    @staticmethod
    def velocity(network) -> Velocity:
        """``network(x, timestep, cond)`` (the UNet in its own time) as ``velocity(x_t, t, cond)``, t in [0, 1]."""
        return lambda x_t, t, c: network(x_t, FlowPath.network_time(t).to(x_t.device, torch.float32), c)

    def generate(self, network, x0: torch.Tensor, steps: int, *, sampler: str, cond, uncond=None,
                 guidance: float = 1.0, rng=None) -> torch.Tensor:
        """Noise x0 (B, c, h, w) at t = 0 -> data (B, c, h, w) at t = 1 (``network`` as in :meth:`velocity`)."""
        return integrate_flow(self.velocity(network), x0, 0.0, 1.0, steps, sampler=self.solver_name(sampler),
                              cond=cond, uncond=uncond, guidance=guidance, rng=rng)

    def carry(self, network, x1: torch.Tensor, source, target, null, tau: float, steps: int, *, sampler: str,
              guidance: float = 1.0, rng=None) -> torch.Tensor:
        """Data x1 (B, c, h, w) under condition ``source`` -> the same data under ``target``
        (:func:`translate_latents`)."""
        return translate_latents(self.velocity(network), x1, source, target, null, tau, steps,
                                 sampler=self.solver_name(sampler), guidance=guidance, rng=rng)


FLOW = FlowPath()

__all__ = ["FLOW", "FlowPath", "T_EDGE", "TIME_SCALE", "flow_denoiser", "flow_sigma", "flow_time",
           "flow_times", "integrate_flow", "leg_steps", "times_to_sigmas", "translate_latents"]
