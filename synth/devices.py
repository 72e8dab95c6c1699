"""Device names from users -> ``torch.device``, with one-line errors that name the fix."""
from __future__ import annotations

import os

import torch

from synth.config import ConfigError


def resolve_device(spec: str | None, flag: str = "--device") -> torch.device:
    """``None`` -> this process's GPU (``cuda:$LOCAL_RANK``) when there is one, else the CPU.

    Refuses names torch does not know (``gpu0``), CUDA on a machine or torch build
    without it, and GPU indices that do not exist.
    """
    if spec is None or spec == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
        return torch.device("cpu")
    try:
        dev = torch.device(spec)
    except (RuntimeError, ValueError):
        raise ConfigError(f"{flag} '{spec}' is not a device name; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            build = f"CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise ConfigError(f"{flag} {spec}: no CUDA GPU is visible (torch {torch.__version__}, {build}); use {flag} cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"{flag} {spec}: this machine has {torch.cuda.device_count()} GPU(s) "
                              f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif dev.type not in ("cpu", "mps"):
        raise ConfigError(f"{flag} '{spec}' is not supported; use cpu, cuda or cuda:N")
    return dev


def oom_message(what: str) -> str:
    """The one line for a GPU out-of-memory error: which setting to lower, and that nothing is lost."""
    return (f"out of GPU memory; lower {what}; everything already written is kept, run the same command "
            f"again to resume")
