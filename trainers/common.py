"""Pieces every training loop shares: run folders, checkpoints, EMA, data order, logging.

Resume is exact by construction: the data order, the noise and the condition
dropout of step ``s`` are functions of (seed, s, rank) alone, and a checkpoint
holds weights, EMA, optimizer, LR scheduler, RNG states and the step.
"""
from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import save_file

from synth.errors import SynthError
from synth.config import ConfigError
from synth.io import atomic_save_with
from synth.seeds import generator_for, image_seed


class TrainingError(SynthError, RuntimeError):
    """Training stopped for a reason the user can fix; one line, says what was kept."""


# ---------------------------------------------------------------------------
# Run folder and resolved config


# ---------------------------------------------------------------------------
# Checkpoints


# ---------------------------------------------------------------------------
# EMA


# ---------------------------------------------------------------------------
# Data order, LR schedule, precision


def batch_indices(step: int, n_items: int, global_batch: int, seed: int) -> torch.Tensor:
    """(global_batch,) dataset indices of ``step``: epochs are seeded permutations.

    A pure function of its arguments, so a resumed run reads the same data, and
    any process count reads the same global batch (each rank takes a slice).
    """
    first = step * global_batch
    parts = []
    k, left = first, global_batch
    while left > 0:
        epoch, pos = divmod(k, n_items)
        take = min(left, n_items - pos)
        parts.append(_epoch_permutation(n_items, seed, epoch)[pos:pos + take])
        k, left = k + take, left - take
    return torch.cat(parts)


def pool_counts(global_batch: int, share: float) -> tuple[int, int]:
    """(labelled, unlabelled) rows of every global batch for ``train.unlabelled_share``: both parts get at least one
    row when their share is neither 0 nor 1, so a small batch never silently drops one of them."""
    k = int(round(share * global_batch))
    if 0 < share and k == 0:
        k = 1
    if share < 1 and k == global_batch:
        k = global_batch - 1
    return global_batch - k, k


def pool_batch_indices(step: int, n_labelled: int, n_pool: int, global_batch: int, share: float,
                       seed: int) -> torch.Tensor:
    """(global_batch,) indices into [labelled rows | pool rows] for ``step``.

    Each part is its own epoch stream (:func:`batch_indices`, the pool's seeded apart), so a labelled subset of
    236 images and a pool of 4,472 each cycle at their own pace; the pool rows are spread evenly over the batch,
    so every rank's and micro-batch's slice holds the same share.  A pure function of its arguments: resume and
    any process count read the same rows."""
    n_lab, n_unl = pool_counts(global_batch, share)
    lab = batch_indices(step, n_labelled, n_lab, seed) if n_lab else torch.zeros(0, dtype=torch.long)
    unl = n_labelled + batch_indices(step, n_pool, n_unl, seed + 7_777_777) if n_unl else torch.zeros(0, dtype=torch.long)
    pos = torch.arange(global_batch)
    is_pool = (pos + 1) * n_unl // global_batch > pos * n_unl // global_batch
    out = torch.empty(global_batch, dtype=torch.long)
    out[is_pool] = unl
    out[~is_pool] = lab
    return out


@functools.lru_cache(maxsize=4)
def _epoch_permutation(n_items: int, seed: int, epoch: int) -> torch.Tensor:
    # cached: a GPU step must not pay a randperm of the whole data set every time
    return torch.randperm(n_items, generator=generator_for(image_seed(seed, 10_000_000 + epoch)))


def lr_lambda(schedule: str, warmup: int, total: int):
    """Multiplier of the base LR at optimizer step ``s`` (linear warm-up, then the schedule)."""

    def f(s: int) -> float:
        if warmup > 0 and s < warmup:
            return (s + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (s - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return 1.0 - progress

    return f


def set_base_lrs(lr_scheduler, base_lrs: list[float]) -> None:
    """Apply the config's learning rates after a resume.

    A scheduler's saved state carries the old base LRs; a resumed run with a new
    ``train.lr`` must use the new one (at the current point of the schedule).
    """
    lr_scheduler.base_lrs = list(base_lrs)
    step = lr_scheduler.last_epoch
    for group, base, fn in zip(lr_scheduler.optimizer.param_groups, base_lrs, lr_scheduler.lr_lambdas):
        group["lr"] = base * fn(step)
        group["initial_lr"] = base
    lr_scheduler._last_lr = [g["lr"] for g in lr_scheduler.optimizer.param_groups]


# Tensors up to this size live on the device; larger ones stay in (pinned) host memory and
# only each micro-batch's rows travel.
DEVICE_DATA_BYTES = 4 << 30


def place_data(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device`` when small enough, else in pinned host memory (CUDA) or as is."""
    if t.numel() * t.element_size() <= DEVICE_DATA_BYTES:
        return t.to(device)
    return t.pin_memory() if torch.device(device).type == "cuda" else t


def data_rows(t: torch.Tensor, idx: torch.Tensor, device) -> torch.Tensor:
    """``t[idx]`` on ``device`` (indexing where ``t`` lives)."""
    return t[idx.to(t.device)].to(device, non_blocking=True)


def make_accelerator(mixed_precision: str, seed: int):
    """An ``accelerate.Accelerator``; fp16/bf16 requests are checked against the hardware."""
    from accelerate import Accelerator

    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("train.mixed_precision=fp16 needs a CUDA GPU; use bf16 or no on CPU")
    from accelerate.state import AcceleratorState

    # accelerate keeps process-wide state; a second run in the same process (a notebook, a
    # benchmark) may ask for another precision. The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available())


def enable_attention(model, attention: str) -> None:
    """SDPA is diffusers' default; xformers only on CUDA with the package installed."""
    if attention == "xformers":
        if not torch.cuda.is_available():
            raise ConfigError("attention 'xformers' needs CUDA; use sdpa on this machine")
        try:
            import xformers  # noqa: F401
        except ImportError:
            raise ConfigError("attention 'xformers' needs the xformers package: pip install 'synth[cuda]'") from None
        model.enable_xformers_memory_efficient_attention()


class Logger:
    """TensorBoard scalars (main process only) plus a JSONL copy for scripts."""

    def __init__(self, run: Path, enabled: bool):
        self.enabled = enabled
        self.tb = None
        self.jsonl = Path(run) / "logs" / "scalars.jsonl"
        if enabled:
            self.jsonl.parent.mkdir(parents=True, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(Path(run) / "logs"))
            except ImportError:
                self.tb = None

    def log(self, step: int, **scalars: float) -> None:
        if not self.enabled:
            return
        if self.tb is not None:
            for k, v in scalars.items():
                self.tb.add_scalar(k, v, step)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"step": step, **scalars}) + "\n")

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


@dataclass
class StepStats:
    """Running throughput for the progress bar and logs."""

    t0: float
    samples: int = 0

    def rate(self) -> float:
        return self.samples / max(1e-9, time.perf_counter() - self.t0)


@dataclass
class Compute:
    """What a run has spent training, summed over every call that trained it (each counted to its last
    checkpoint, which is what a resumed run keeps): the cost a report can quote for a model however often it
    was stopped.  ``cpu_s`` is CPU time (every thread of every process), so time a process spent paused or
    waiting for the machine does not count; ``wall_s`` (the main process's clock) counts it.  ``from_step`` > 0:
    the run was resumed from a checkpoint that recorded nothing (made before synth counted), so the seconds
    cover the steps after it only."""

    wall_s: float = 0.0
    cpu_s: float = 0.0
    from_step: int = 0
    t_wall: float = field(default_factory=time.perf_counter)
    t_cpu: float = field(default_factory=time.process_time)

    @classmethod
    def resumed(cls, state: dict | None) -> "Compute":
        """Start counting this call on top of what a checkpoint's ``state["compute"]`` recorded."""
        if not state:
            return cls()
        rec = state.get("compute")
        try:
            return cls(float(rec["wall_s"]), float(rec["cpu_s"]), int(rec.get("from_step", 0)))
        except (TypeError, KeyError, ValueError):  # absent or not a record: count from this checkpoint on
            return cls(from_step=int(state.get("step", 0)))

    def total(self, sum_ranks: Callable[[float], float] | None = None) -> dict:
        """{"wall_s", "cpu_s", "from_step"}: the recorded seconds plus this call's so far; ``sum_ranks`` adds up
        this call's CPU seconds over the processes of a distributed run (a collective: every rank calls it)."""
        cpu = time.process_time() - self.t_cpu
        cpu = sum_ranks(cpu) if sum_ranks is not None else cpu
        return {"wall_s": self.wall_s + time.perf_counter() - self.t_wall, "cpu_s": self.cpu_s + cpu,
                "from_step": self.from_step}


def params_hash(modules: dict[str, torch.nn.Module]) -> str:
    """SHA-256 over all parameters and buffers (bit-exact comparisons in tests and logs)."""
    import hashlib

    h = hashlib.sha256()
    for name in sorted(modules):
        for k, v in sorted(modules[name].state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def save_safetensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    atomic_save_with(path, lambda tmp: save_file(tensors, tmp))


@dataclass
class TrainingRows:
    """The rows a generator trains on: the labelled set, then the unlabelled pool (label -1, null condition).

    ``data.images`` (N + M, C, R, R); ``data.labels`` (N + M,) with -1 for the M pool rows."""

    data: object  # synth.data.ImageSet
    n_labelled: int
    pool: object | None  # synth.data.UnlabelledPool

    def indices(self, tc):
        """The loop's ``Task.indices`` for ``train.unlabelled_share`` (None without a pool: plain epochs)."""
        if self.pool is None:
            return None
        n_lab, n_pool, share, seed = self.n_labelled, len(self.pool), tc.unlabelled_share, tc.seed
        return lambda step, g: pool_batch_indices(step, n_lab, n_pool, g, share, seed)

    def record(self, subset: dict, tc, foundation: dict | None = None) -> dict:
        """The export's ``train_subset`` with what the generator saw of the pool (``unlabelled``) and the export it
        was fine-tuned from (``foundation``)."""
        out = dict(subset)
        if self.pool is not None:
            out["unlabelled"] = {**self.pool.record, "share": tc.unlabelled_share}
        if foundation is not None:
            out["foundation"] = foundation
        return out


def training_rows(cfg, train, say) -> TrainingRows:
    """Load ``data.unlabelled`` (if any) beside the labelled ``train`` set and say what each batch will hold."""
    from synth.data import load_pool, pool_kind, with_pool

    share = cfg.train.unlabelled_share
    if share == 0 and pool_kind(cfg.data.unlabelled) != "none":
        say("note: train.unlabelled_share=0 draws nothing from data.unlabelled: the pool is not loaded")
        return TrainingRows(train, len(train), None)
    pool = load_pool(cfg.data, train)
    if pool is None:
        return TrainingRows(train, len(train), None)
    for note in pool.notes:
        say(note)
    import os

    g = cfg.train.batch_size * cfg.train.grad_accum * int(os.environ.get("WORLD_SIZE", "1"))
    n_lab, n_unl = pool_counts(g, share)
    say(f"unlabelled pool: {len(pool)} images from {pool.record['source']} ({pool.record['kind']}), trained under the "
        f"null condition; each step's global batch of {g} holds {n_unl} pool and {n_lab} labelled images "
        f"(train.unlabelled_share={share:g})"
        + ("; share 1 never shows a labelled image (a foundation pre-training)" if share == 1 else ""))
    return TrainingRows(with_pool(train, pool), len(train), pool)
