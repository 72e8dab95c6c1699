"""The bridge: a class-conditional flow-matching model whose classes are domains (MedShift's path).

A bridge is the flow path x the class conditioner x a codec; :class:`BridgeGenerator` builds that
:class:`~synth.samplers.generator.Generator` from its parts in memory (the trainer's previews) and loads
bridge exports, refusing any other.  ``translate(images, source, target, tau)`` encodes deterministically
(autoencoder mean), integrates back under the source domain from t = 1 to ``tau``, forward under the target
domain from ``tau`` to 1, and decodes; ``sample(conditions, seeds)`` draws a domain from noise (t = 0 -> 1).
Index ``len(domains)`` of the class embedding is the null (unconditional) domain used for guidance.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from synth.conditioners import ClassConditioner
from synth.labels import LabelSchema
from synth.paths.flow import FLOW
from synth.samplers.artifact import ArtifactError, read_artifact
from synth.samplers.generator import Generator, model_parts


class BridgeGenerator(Generator):
    """Domain-conditional flow model (latent or pixel space) with its codec (``channels``: kept for callers of
    older versions; the codec's channels are the model's)."""

    def __init__(self, unet, codec, domains: Sequence[str], resolution: int, channels: int = 1,
                 model_id: str = "in-memory"):
        schema = LabelSchema(classes=list(domains), domains=list(domains))
        super().__init__(unet, ClassConditioner(schema), codec, FLOW, resolution, model_id)

    @classmethod
    def from_export(cls, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                    *, allow_pickle: bool = False) -> "BridgeGenerator":
        """Load a bridge export, checked like :meth:`Generator.from_export` (safetensors only, hashes verified)."""
        meta = read_artifact(path)
        if model_parts(meta)[:2] != ("flow", "class"):
            raise ArtifactError(f"'{meta['path']}' holds a '{meta.get('kind', 'ldm')}' model, not a bridge; "
                                f"translation needs an export of 'synth train bridge'")
        return super().from_export(meta["path"], device, dtype, allow_pickle=allow_pickle)


def load_bridge(path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                *, allow_pickle: bool = False) -> BridgeGenerator:
    """:meth:`BridgeGenerator.from_export`."""
    return BridgeGenerator.from_export(path, device, dtype, allow_pickle=allow_pickle)


__all__ = ["BridgeGenerator", "load_bridge"]
