"""The one training loop: every trainer is an objective, its data and its artifact.

A trainer builds a :class:`Task` (an ``nn.Module`` whose ``forward(**batch)``
returns the per-sample loss, the submodules it trains, how to draw a step's
randomness and how to assemble a micro-batch) and calls :func:`fit`, which owns
what they all share: accelerate, resume, accumulation, clipping, mixed precision,
EMA, NaN stop, logging, progress, checkpoints and hooks.

Exactness by construction:
* step ``s`` reads the global batch ``batch_indices(s, ...)``; rank ``r`` of ``world``
  takes positions ``[(micro * world + r) * B, ... + B)`` of it;
* the step's randomness (noise, timesteps, condition dropout, ...) is drawn ONCE
  for the whole global batch from ``step_generator(seed, s)`` on the device, and
  sliced the same way, so sample ``j`` of step ``s`` gets the same noise whatever
  the process count, batch split or resume point: 1 process x accum 2 equals
  2 processes x accum 1 (to float tolerance).

GPU hygiene: no host syncs except at log/checkpoint steps (the NaN check is a
device flag read then), randomness drawn on the device, optimizer state loaded
after ``prepare`` (AdamW's step counters stay on the CPU), EMA on the device.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from synth.config import TrainConfig
from synth.seeds import step_generator
from synth.trainers.checkpoints import latest_checkpoint, load_optimizer, load_weights, save_checkpoint
from synth.trainers.common import batch_indices, Compute, Logger, lr_lambda, set_base_lrs, StepStats, TrainingError
from synth.trainers.ema import EMA


@dataclass
class Task:
    """What a trainer hands :func:`fit`.

    ``objective(**batch) -> (B,)`` per-sample loss; ``trained``: submodules of the
    objective that are optimised, checkpointed (``<name>.safetensors``) and tracked
    by EMA (shadow names ``<name>.<param>``); ``param_groups``: ``[(module name, lr)]``.
    ``draw(step, gen, G) -> {name: (G, ...) tensor}`` draws the step's randomness for
    the global batch on ``gen``'s device; ``batch(idx, draws) -> objective kwargs``
    builds this rank's micro-batch from dataset indices ``idx`` (B,) and the
    matching slice of ``draws``.
    """

    name: str
    objective: torch.nn.Module
    trained: dict[str, torch.nn.Module]
    param_groups: list[tuple[str, float]]
    n_items: int
    draw: Callable[[int, torch.Generator, int], dict]
    batch: Callable[[torch.Tensor, dict], dict]
    after_step: Callable[[int, "Fitted"], None] | None = None  # main process: previews, validation
    extra_state: Callable[[int], dict] = field(default_factory=lambda: (lambda step: {}))
    # ``train.grad_clip`` per param group instead of over all of them: an adversary's gradient spikes
    # (a critic) must not throttle the model it judges
    clip_groups_apart: bool = False
    # ``indices(step, global_batch) -> (global_batch,)`` dataset rows of a step; None: epochs over n_items
    indices: Callable[[int, int], torch.Tensor] | None = None
    # {"<module>.<param prefix>": lr}: parameters trained at their own rate (a fine-tuned model's new parts)
    lr_overrides: dict[str, float] = field(default_factory=dict)


@dataclass
class Fitted:
    """The loop's result: the trained modules (unwrapped, on the device) and their EMA."""

    step: int
    trained: dict[str, torch.nn.Module]
    ema: EMA | None
    compute: dict = field(default_factory=dict)  # Compute.total(): seconds spent training, over every resume

    def averaged(self, name: str) -> torch.nn.Module:
        """A copy of ``trained[name]`` with EMA weights (the module itself without EMA), in eval mode."""
        import copy

        m = copy.deepcopy(self.trained[name])
        if self.ema is not None:
            self.ema.copy_to(m, prefix=f"{name}.")
        return m.eval()


@dataclass
class Run:
    """An opened run: the accelerator, the checked run folder, and who this process is."""

    accelerator: object
    folder: Path
    say: Callable

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def device(self):
        return self.accelerator.device

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    def once(self, fn):
        """``fn()`` on rank 0 first (its result there, None elsewhere); rank 0's errors stop every rank."""
        from synth.distributed import main_first

        return main_first(fn, self.world, self.rank)


def holding_run_lock(train_fn):
    """Decorate a trainer ``fn(cfg, run_dir, ...)``: the main process holds ``<run>/.lock`` for the whole call,
    so a second ``synth train`` on the same run folder stops at once (naming who holds it) instead of both
    writing and pruning the same checkpoints."""
    import functools
    import os

    @functools.wraps(train_fn)
    def wrapper(cfg, run_dir, *args, **kwargs):
        lock = None
        if int(os.environ.get("RANK", "0")) == 0:
            from synth.io import FolderLock

            try:
                Path(run_dir).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                from synth.config import ConfigError

                raise ConfigError(f"cannot create run folder '{run_dir}' ({e.strerror}); choose a writable --run") from None
            lock = FolderLock(Path(run_dir) / ".lock", "run folder")
        try:
            return train_fn(cfg, run_dir, *args, **kwargs)
        finally:
            if lock is not None:
                lock.release()

    return wrapper


def open_run(cfg, run_dir: str | Path, stage: str, log: Callable = print) -> Run:
    """Make the accelerator and check/create the run folder on rank 0 (resume rules, global batch)."""
    from synth.config import check_resolution
    from synth.trainers.common import make_accelerator
    from synth.trainers.rundir import prepare_run_dir

    check_resolution(cfg, stage)
    accelerator = make_accelerator(cfg.train.mixed_precision, cfg.train.seed)
    r = Run(accelerator, Path(run_dir), log if accelerator.is_main_process else (lambda *a, **k: None))
    r.once(lambda: prepare_run_dir(cfg, r.folder, stage, r.world, say=r.say))
    return r


def training_record(fitted: Fitted, accelerator) -> dict:
    """An export's ``training`` record: steps, the seconds they took over every resume (:class:`Compute`) and where."""
    return {"steps": fitted.step, **fitted.compute, "device": accelerator.device.type,
            "processes": accelerator.num_processes}


def rank_slice(micro: int, rank: int, world: int, per_rank: int) -> slice:
    """Positions of this rank's micro-batch inside the step's global batch."""
    lo = (micro * world + rank) * per_rank
    return slice(lo, lo + per_rank)


def _slice_draws(draws: dict, sl: slice) -> dict:
    return {k: v[sl] for k, v in draws.items()}


def _oom_error(tc: TrainConfig, step: int, last_good) -> TrainingError:
    where = last_good[1] if last_good else "none (no checkpoint was written yet)"
    return TrainingError(f"GPU out of memory at step {step + 1} with train.batch_size={tc.batch_size} per process; lower "
                         f"train.batch_size (raise train.grad_accum to keep the global batch) or set "
                         f"train.gradient_checkpointing=true, then run the same command to resume from {where}")


def _nonfinite_error(value: float, lo: int, hi: int, last_good) -> TrainingError:
    where = last_good[1] if last_good else "none (no checkpoint was written yet)"
    at = f"at step {hi}" if lo == hi else f"between steps {lo} and {hi}"
    return TrainingError(f"loss became {value} {at}; stopped. Last good checkpoint: {where}. "
                         f"Lower train.lr or set train.grad_clip")


def clip_gradients(accelerator, groups: list[dict], max_norm: float, apart: bool):
    """Clip to ``max_norm`` over all param groups, or per group when ``apart``; returns the (first group's) norm.

    Apart: fp16's GradScaler may unscale an optimizer's gradients once per step, so unscale once and clip
    each group with torch (accelerate's clip would unscale again and raise)."""
    if not apart:
        return accelerator.clip_grad_norm_([p for g in groups for p in g["params"]], max_norm)
    accelerator.unscale_gradients()
    return [torch.nn.utils.clip_grad_norm_(g["params"], max_norm) for g in groups][0]


def param_groups(task: Task) -> list[dict]:
    """AdamW groups: one per ``task.param_groups`` module, and one per ``lr_overrides`` prefix inside it."""
    groups = []
    for n, lr in task.param_groups:
        named = [(f"{n}.{pn}", p) for pn, p in task.trained[n].named_parameters() if p.requires_grad]
        for prefix, own_lr in task.lr_overrides.items():
            mine = [p for k, p in named if k.startswith(prefix)]
            if mine:
                groups.append({"params": mine, "lr": own_lr})
                named = [(k, p) for k, p in named if not k.startswith(prefix)]
        groups.append({"params": [p for _, p in named], "lr": lr})
    return groups


def fit(task: Task, tc: TrainConfig, accelerator, run: Path, say: Callable = print) -> Fitted:
    """Train ``task`` to ``tc.steps`` (resuming from ``run``'s last checkpoint)."""
    main, device = accelerator.is_main_process, accelerator.device
    world, rank = accelerator.num_processes, accelerator.process_index
    per_rank, accum = tc.batch_size, tc.grad_accum
    global_batch = per_rank * world * accum

    # --- optimizer, schedule, EMA, resume ---------------------------------------
    groups = param_groups(task)
    optimizer = torch.optim.AdamW(groups, betas=(tc.adam_beta1, tc.adam_beta2), weight_decay=tc.weight_decay)
    lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(tc.lr_schedule, tc.warmup_steps, tc.steps))
    # only what trains: a LoRA run's frozen base needs no second copy
    named = {f"{n}.{pn}": p for n, m in task.trained.items() for pn, p in m.named_parameters() if p.requires_grad}
    ema = EMA(named, tc.ema_decay, tc.ema_warmup) if tc.ema_decay > 0 else None
    resume = latest_checkpoint(run)
    start, resumed_state = 0, None
    if resume is not None:
        resumed_state = load_weights(resume[1], task.trained, ema)
        start = resumed_state["step"]
    spent = Compute.resumed(resumed_state)
    if spent.from_step:
        say(f"note: {resume[1]} records no training seconds (made before synth counted them); the export's "
            f"training record counts from step {start}")

    def sum_ranks(x: float) -> float:  # a collective: only where every rank passes
        return float(accelerator.reduce(torch.tensor([x], dtype=torch.float64, device=device), reduction="sum")[0])

    ranks = sum_ranks if world > 1 else None
    objective, optimizer = accelerator.prepare(task.objective, optimizer)
    if resume is not None:
        load_optimizer(resume[1], optimizer, lr_scheduler)
        set_base_lrs(lr_scheduler, [g["lr"] for g in groups])
        say(f"resumed from {resume[1]} (step {start})")
    logger = Logger(run, main)
    fp16 = accelerator.mixed_precision == "fp16"

    from tqdm.auto import tqdm

    bar = tqdm(total=tc.steps, initial=start, disable=not (main and tc.progress), unit="step", dynamic_ncols=True,
               desc=task.name)
    stats = StepStats(time.perf_counter())
    objective.train()
    last_good = resume
    bad = torch.zeros((), dtype=torch.bool, device=device)  # any non-finite loss since the last check
    loss_run = torch.zeros((), device=device)
    run_steps, checked = 0, start
    grad_norm = None
    step = start
    try:
        while step < tc.steps:
            idx_all = (task.indices(step, global_batch) if task.indices is not None
                       else batch_indices(step, task.n_items, global_batch, tc.seed))
            draws = task.draw(step, step_generator(tc.seed, step, device=device), global_batch)
            for micro in range(accum):
                sl = rank_slice(micro, rank, world, per_rank)
                batch = task.batch(idx_all[sl].to(device, non_blocking=True), _slice_draws(draws, sl))
                sync = micro == accum - 1
                ctx = accelerator.no_sync(objective) if not sync and world > 1 else contextlib.nullcontext()
                with ctx, accelerator.autocast():
                    loss = objective(**batch).mean() / accum
                accelerator.backward(loss)
                loss_run += loss.detach()
            bad |= ~torch.isfinite(loss_run)
            if tc.grad_clip > 0:
                grad_norm = clip_gradients(accelerator, groups, tc.grad_clip, task.clip_groups_apart)
            try:
                optimizer.step()
            except RuntimeError as e:  # an absurd LR can overflow inside the optimizer itself
                if "overflow" not in str(e):
                    raise
                raise TrainingError(f"optimizer step overflowed at step {step + 1}; stopped. Last good checkpoint: "
                                    f"{last_good[1] if last_good else 'none'}. Lower train.lr") from None
            skipped = fp16 and optimizer.step_was_skipped  # GradScaler found inf: the step did not happen
            if not skipped:
                lr_scheduler.step()
                if ema is not None:
                    ema.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            run_steps += 1
            if step == start + 1:  # steady-state rate: the first step pays for warm-up
                stats = StepStats(time.perf_counter())
            else:
                stats.samples += global_batch
            bar.update(1)
            log_now = step % tc.log_every == 0 or step == tc.steps
            ckpt_now = step % tc.checkpoint_every == 0 or step == tc.steps
            if log_now or ckpt_now:  # the only host syncs of the loop
                if bool(bad):
                    raise _nonfinite_error(float(loss_run) if not torch.isfinite(loss_run) else float("nan"),
                                           checked + 1, step, last_good)
                checked = step
            if log_now:
                lv = float(accelerator.reduce(loss_run, reduction="mean")) / max(1, run_steps)
                loss_run.zero_()
                run_steps = 0
                bar.set_postfix(loss=f"{lv:.4f}", img_s=f"{stats.rate():.1f}")
                extra = {} if grad_norm is None else {"grad_norm": float(grad_norm)}
                logger.log(step, loss=lv, lr=lr_scheduler.get_last_lr()[0], samples_per_s=stats.rate(), **extra)
            if ckpt_now:
                accelerator.wait_for_everyone()
                compute = spent.total(ranks)
                if main:
                    state = {"samples_seen": step * global_batch, "data_position": (step * global_batch) % task.n_items,
                             "epoch": (step * global_batch) // task.n_items, "world_size": world,
                             "global_batch": global_batch, "compute": compute, **task.extra_state(step)}
                    path = save_checkpoint(run, step, task.trained, optimizer, lr_scheduler, ema, state,
                                           tc.keep_checkpoints)
                    last_good = (step, path)
                accelerator.wait_for_everyone()
            if main and task.after_step is not None and step < tc.steps:
                task.after_step(step, Fitted(step, task.trained, ema))  # main only: no collective here
    except torch.OutOfMemoryError:
        raise _oom_error(tc, step, last_good) from None
    finally:
        bar.close()
        logger.close()
    return Fitted(step, task.trained, ema, spent.total(ranks))


__all__ = ["Task", "Fitted", "Run", "fit", "open_run", "rank_slice", "training_record"]
