"""DDIM (deterministic, eta = 0): for an eps-prediction model it is exactly Euler on the VE ODE."""
from __future__ import annotations

from synth.solvers.base import Solver
from synth.solvers.euler import euler as ddim

SOLVER = Solver("ddim", ddim, summary="deterministic DDIM (== euler)")
