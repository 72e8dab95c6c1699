"""A bulk request: what to sample, its identity (what decides the pixels) and its checks."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from synth import solvers
from synth.errors import SynthError
from synth.labels import LabelSchema
from synth.sampleset.conditions import ConditionSpec
from synth.sampleset.layout import FORMATS
from synth.seeds import check_seed


class BulkError(SynthError, RuntimeError):
    """A bulk-sampling problem the user can fix; one line, says what was kept."""


def is_cuda(device: str | torch.device | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


@dataclass(frozen=True)
class BulkRequest:
    model: str
    out: str
    n: int
    spec: ConditionSpec
    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float = 1.5
    seed: int = 0
    batch_size: int = 64
    format: str = "imagefolder"
    shard_size: int = 1000
    dtype: str = "float32"
    overwrite: bool = False
    shrink: bool = False  # allow a smaller --n than the folder holds: the images past it are deleted
    allow_pickle: bool = False  # load an export that also holds pickle weights (never unpickled; see load_generator)
    negative_prompt: str = ""  # the text guidance steers away from (in place of the null prompt)

    def identity(self, meta: dict, schema: LabelSchema, device: str | torch.device = "cpu") -> dict:
        """Everything that decides the pixels and layout (never ``n`` or the process count).

        See :func:`device_identity` for the batch size (CUDA) and the thread count (CPU).
        """
        ident = {"model_id": meta.get("model_id"), "weights_sha256": meta.get("weights_sha256"),
                 "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance, "seed": self.seed,
                 "format": self.format, "shard_size": self.shard_size, "dtype": self.dtype,
                 "conditions": self.spec.to_json(schema)}
        if self.negative_prompt:  # absent when unused: sets made before it existed keep their identity
            ident["negative_prompt"] = self.negative_prompt
        return {**ident, **device_identity(device, self.batch_size)}


def device_identity(device: str | torch.device, batch_size: int) -> dict:
    """What of the machine decides the pixels: on CUDA the batch size (kernels differ by batch shape, up to
    1 grey level on an H200); on CPU the intra-op thread count (kernels split their sums by thread, so 1 and
    2 threads can differ in the last bits, and after rounding in a grey level), while every CPU image is
    batch-size independent, so CPU runs stay free to change the batch size."""
    from synth.threads import identity_threads

    return {"batch_size": batch_size} if is_cuda(device) else {"cpu_threads": identity_threads()}


def batch_len(req: BulkRequest) -> int:
    """Images per network call: a batch never spans two shards, so at most a shard."""
    return min(req.batch_size, req.shard_size)


MAX_IMAGES = 10 ** 9  # beyond this, planning the shards alone takes minutes: surely a typo


def check_request(req: BulkRequest) -> None:
    if req.n <= 0:
        raise BulkError(f"--n must be a positive number of images, got {req.n}")
    if req.n > MAX_IMAGES:
        raise BulkError(f"--n {req.n} is more than {MAX_IMAGES:.0e} images in one set; split it into several --out "
                        f"folders with different --seed")
    if req.format not in FORMATS:
        raise BulkError(f"--format must be one of {', '.join(FORMATS)}, got '{req.format}'")
    if req.sampler not in solvers.names():
        raise BulkError(f"unknown sampler '{req.sampler}'; choose one of {', '.join(solvers.names())}")
    if req.batch_size <= 0 or req.shard_size <= 0 or req.steps <= 0:
        raise BulkError("--batch-size, --shard-size and --steps must be positive")
    check_seed(req.seed, "--seed")
    if not math.isfinite(req.guidance) or req.guidance < 0:
        raise BulkError(f"--guidance must be a finite number >= 0 (1 = no guidance), got {req.guidance}")


def deterministic_kernels(device: str | torch.device) -> None:
    """On CUDA, make every network call a deterministic function of its inputs and shape.

    Without this, cuDNN may pick a different convolution algorithm from run to run
    (``benchmark``) or use atomics-based kernels, and cuBLAS may split reductions
    differently, so the same batch could give slightly different pixels in a resumed
    run or on another rank.  ``CUBLAS_WORKSPACE_CONFIG`` must be set before cuBLAS
    makes its first handle (it is read then); we set it here, before the first
    sampling call, unless the user set it.  ``warn_only``: an op with no
    deterministic kernel warns instead of stopping a long run.  No-op on CPU.
    """
    if not is_cuda(device):
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)
