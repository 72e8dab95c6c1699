"""A text-conditioned flow model: the flow-matching path (:class:`synth.paths.FlowPath`) with the text
conditioner of the latent-diffusion trainer (tokenizer + text encoder + cross-attention UNet).

MedShift's model with language: ``synth train ldm --set train.path=flow`` trains it with everything the
diffusion model has (prompts from data, classifier-free dropout, cached text, a pretrained or from-scratch
text encoder, the same loop, checkpoints and export); only the path differs.  The export records
``"path": "flow"``; the generator then integrates the flow ODE, and translates between prompts
(:meth:`synth.samplers.generator.LDMGenerator.translate`).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from synth.paths.flow import FLOW
from synth.textwindows import encode_windows


class TextFlowObjective(torch.nn.Module):
    """Per-sample flow-matching loss (B,): || v_theta(x_t, t | text) - (x1 - x0) ||^2, one module for DDP."""

    def __init__(self, unet, text_encoder):
        super().__init__()
        self.unet, self.text_encoder = unet, text_encoder

    def forward(self, x: torch.Tensor, noise: torch.Tensor, t: torch.Tensor, text: torch.Tensor | None = None,
                ids: torch.Tensor | None = None) -> torch.Tensor:
        """x data, noise: (B, c, h, w); t: (B,) float in [0, 1]; text (B, L, D) embeddings or ids (B, L) -> (B,)."""
        if text is None:
            text = encode_windows(self.text_encoder, ids)
        x_t = FLOW.interpolate(noise, x, t)
        pred = self.unet(x_t, FLOW.network_time(t), encoder_hidden_states=text).sample
        return F.mse_loss(pred.float(), FLOW.target(noise, x).float(), reduction="none").mean(dim=(1, 2, 3))


def flow_times_for(draws: dict, gen: torch.Generator) -> dict:
    """The step's draws with ``t`` (n,) uniform in [0, 1): drawn after the diffusion draws from the same
    generator, so a step's randomness stays a function of (seed, step) and resume stays exact."""
    t = torch.rand(draws["t"].shape, generator=gen, device=gen.device)
    return {**draws, "t": t}


__all__ = ["TextFlowObjective", "flow_times_for"]
