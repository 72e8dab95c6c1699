"""The exponential moving average of the trained weights (the weights an export ships)."""
from __future__ import annotations


import torch

from synth.trainers.common import TrainingError


class EMA:
    """Exponential moving average of named parameters, fp32 shadows on the parameters' device.

    Built from ``{name: parameter}`` (names are the checkpoint keys, e.g.
    ``unet.conv_in.weight``); ``update()`` reads those same parameter objects, so
    it follows the model wherever accelerate moves it and costs one fused
    ``_foreach_lerp_`` (no host sync) per step.
    """

    def __init__(self, params: dict[str, torch.Tensor], decay: float, warmup: bool = True):
        self.decay, self.warmup = decay, warmup
        self.num_updates = 0
        self.params = {n: p for n, p in params.items() if p.requires_grad}
        self.shadow = {n: p.detach().float().clone() for n, p in self.params.items()}

    def current_decay(self) -> float:
        if not self.warmup:
            return self.decay
        return min(self.decay, (1 + self.num_updates) / (10 + self.num_updates))

    def _follow_params(self) -> None:
        """Move shadows to their parameters' devices (after accelerate.prepare moved the model)."""
        for n, p in self.params.items():
            if self.shadow[n].device != p.device:
                self.shadow[n] = self.shadow[n].to(p.device)

    @torch.no_grad()
    def update(self) -> None:
        self._follow_params()
        w = 1 - self.current_decay()
        self.num_updates += 1
        names = list(self.params)
        shadows, params = [self.shadow[n] for n in names], [self.params[n].detach() for n in names]
        same = [i for i, p in enumerate(params) if p.dtype == torch.float32]
        if same:
            torch._foreach_lerp_([shadows[i] for i in same], [params[i] for i in same], w)
        for i in (i for i, p in enumerate(params) if p.dtype != torch.float32):
            shadows[i].lerp_(params[i].float(), w)

    @torch.no_grad()
    def copy_to(self, module: torch.nn.Module, prefix: str = "") -> None:
        """Write shadows named ``prefix + <param name>`` into ``module``'s parameters."""
        for n, p in module.named_parameters():
            if prefix + n in self.shadow:
                p.copy_(self.shadow[prefix + n].to(p.device, p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        out = {f"shadow.{n}": t.contiguous().cpu() for n, t in self.shadow.items()}
        out["num_updates"] = torch.tensor(self.num_updates, dtype=torch.int64)
        return out

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        missing = [n for n in self.shadow if f"shadow.{n}" not in sd]
        if missing:
            raise TrainingError(f"the checkpoint's EMA lacks {missing[0]} (written by another synth version); "
                                f"use a new --run folder")
        self.num_updates = int(sd["num_updates"])
        for n in self.shadow:
            self.shadow[n].copy_(sd[f"shadow.{n}"])
