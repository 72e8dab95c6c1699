"""Probability paths: one object per model family, used by training AND sampling.

:class:`~synth.paths.diffusion.DiffusionPath` (a discrete noise schedule: ``add_noise``, the training
target, the Min-SNR loss weight, and the denoiser and sigma grid the solvers integrate) and
:class:`~synth.paths.flow.FlowPath` (the linear flow-matching path: interpolation, target velocity,
network time, the singular ends, time grids, integration and translation).  An objective takes its
training targets from its path; a generator integrates with the same object, so the math of a family
is written once.
"""
from synth.paths.diffusion import DiffusionPath
from synth.paths.flow import FLOW, FlowPath

__all__ = ["DiffusionPath", "FlowPath", "FLOW"]
