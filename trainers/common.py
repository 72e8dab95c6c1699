"""Pieces every training loop shares: run folders, checkpoints, EMA, data order, logging.

Resume is exact by construction: the data order, the noise and the condition
dropout of step ``s`` are functions of (seed, s, rank) alone, and a checkpoint
holds weights, EMA, optimizer, LR scheduler, RNG states and the step.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import pickle
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from synth.errors import SynthError
from synth.config import Config, ConfigError, config_to_dict, diff_configs, save_config
from synth.io import atomic_replace_dir, atomic_save_with, atomic_write_json, check_ours, fsync_tree, sha256_files
from synth.seeds import generator_for, image_seed

CKPT_RE = re.compile(r"^step-(\d{8})$")


class TrainingError(SynthError, RuntimeError):
    """Training stopped for a reason the user can fix; one line, says what was kept."""


# ---------------------------------------------------------------------------
# Run folder and resolved config

# Changing these breaks the checkpoint (shapes, data meaning or the objective).  The
# per-process batch and accumulation may change as long as the global batch does not
# (see :func:`check_global_batch`): that is how a job moves to another process count.
RESUME_BREAKING = ("data.name", "data.resolution", "data.channels", "data.max_items", "data.fraction", "data.seed",
                   "data.carve",
                   "labels", "model",
                   "train.prediction_type", "train.num_train_timesteps",
                   "train.beta_schedule", "train.seed", "train.text_lr", "train.ema_decay")


def global_batch_of(cfg: Config, world: int) -> int:
    """Images per optimizer step over all processes: batch_size x processes x grad_accum."""
    return cfg.train.batch_size * world * cfg.train.grad_accum


def check_global_batch(old_cfg: dict, old_world: int, cfg: Config, world: int, run: Path) -> None:
    """Refuse a resume whose global batch differs; data order and LR schedule depend on it."""
    old_global = old_cfg["train"]["batch_size"] * old_world * old_cfg["train"]["grad_accum"]
    new_global = global_batch_of(cfg, world)
    if old_global == new_global:
        return
    hint = []
    if old_global % (world * cfg.train.grad_accum) == 0:
        hint.append(f"train.batch_size={old_global // (world * cfg.train.grad_accum)}")
    if old_global % (world * cfg.train.batch_size) == 0:
        hint.append(f"train.grad_accum={old_global // (world * cfg.train.batch_size)}")
    fix = f"set {' or '.join(hint)}" if hint else f"choose batch_size x grad_accum x processes = {old_global}"
    raise ConfigError(f"cannot resume '{run}': its checkpoints use a global batch of {old_global} "
                      f"({old_world} process(es) x batch {old_cfg['train']['batch_size']} x accum "
                      f"{old_cfg['train']['grad_accum']}) but this launch gives {new_global} ({world} x "
                      f"{cfg.train.batch_size} x {cfg.train.grad_accum}); {fix}, or use a new --run folder")


def with_defaults(old: dict, defaults: dict | None = None) -> dict:
    """``old`` (a run's recorded config) with every key it lacks filled from today's defaults."""
    defaults = config_to_dict(Config()) if defaults is None else defaults
    out = dict(old)
    for k, v in defaults.items():
        if k not in out:
            out[k] = v
        elif isinstance(v, dict) and isinstance(out[k], dict):
            out[k] = with_defaults(out[k], v)
    return out


def _read_run_meta(path: Path) -> dict:
    """``run.json`` of an earlier run; a damaged one is a one-line error (it decides what a resume may change)."""
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"cannot read '{path}' ({e}); restore it from a backup, or train into a new --run folder (this one is left as it is)") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config"), dict):
        raise ConfigError(f"'{path}' is not a synth run record; restore it, or use another --run folder")
    return meta


def prepare_run_dir(cfg: Config, run_dir: str | Path, stage: str, world: int = 1, say=print) -> Path:
    """Create ``run_dir`` or check a resumed run's config; write ``config.yaml``.

    A resume whose config changed a field in :data:`RESUME_BREAKING` is refused,
    naming the field; so is one whose global batch changed (another process count
    is fine when batch_size or grad_accum keep the global batch). ``train.steps``
    may grow (the run is extended).
    """
    run = Path(run_dir)
    try:
        run.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create run folder '{run}' ({e.strerror}); choose a writable --run") from None
    meta_path = run / "run.json"
    if not meta_path.is_file():
        theirs = sorted(q.name for q in run.iterdir() if q.name != ".lock")
        if theirs:  # synth writes config.yaml, samples/, logs/, export/ ... into a run folder: never over a user's files
            raise ConfigError(f"run folder '{run}' is not empty ({len(theirs)} entries, e.g. '{theirs[0]}') and holds no "
                              f"synth run (no run.json); choose a new or empty --run folder")
    else:
        meta = _read_run_meta(meta_path)
        if meta.get("stage") != stage:
            raise ConfigError(f"run folder '{run}' holds a '{meta.get('stage')}' run, not '{stage}'; use another --run folder")
        old = meta["config"]
        if "carve" not in (old.get("data") or {}):
            from synth.data import carve_applies

            # a run from before data.carve split its data with the random carve, when a carve applied at all
            old = {**old, "data": {**(old.get("data") or {}), "carve": "random" if carve_applies(cfg.data) else cfg.data.carve}}
        old = with_defaults(old)  # a key added since the run began reads as its default, not as a change
        changed = diff_configs(old, config_to_dict(cfg))
        bad = [k for k in changed if any(k == b or k.startswith(b + ".") for b in RESUME_BREAKING)]
        if latest_checkpoint(run) is not None:
            if bad:
                raise ConfigError(f"cannot resume '{run}': config field '{bad[0]}' changed since its checkpoints were written "
                                  f"({_fmt(old, bad[0])} -> {_fmt(config_to_dict(cfg), bad[0])}); restore it or use a new --run folder")
            check_global_batch(old, int(meta.get("world_size", 1)), cfg, world, run)
            quarantine_corrupt_checkpoints(run, say)  # after the refusals: a refused resume hashes nothing
    check_ours(run / "export", "metrics.json" if stage == "autoencoder" else "synth.json", "export")  # before training, not after
    for stale in checkpoint_dir(run).glob(".tmp-step-*") if checkpoint_dir(run).is_dir() else []:
        shutil.rmtree(stale, ignore_errors=True)  # left by a run killed while saving
    atomic_write_json(meta_path, {"stage": stage, "config": config_to_dict(cfg), "world_size": world,
                                  "global_batch": global_batch_of(cfg, world), "synth_version": _version()})
    save_config(cfg, run / "config.yaml")
    return run


def _fmt(d: dict, dotted: str):
    for p in dotted.split("."):
        d = d.get(p) if isinstance(d, dict) else None
    return repr(d)


def _version() -> str:
    from synth import __version__

    return __version__


# ---------------------------------------------------------------------------
# Checkpoints


def checkpoint_dir(run: Path) -> Path:
    return Path(run) / "checkpoints"


def list_checkpoints(run: Path) -> list[tuple[int, Path]]:
    d = checkpoint_dir(run)
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = CKPT_RE.match(p.name)
        if m and (p / "state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(run: Path) -> tuple[int, Path] | None:
    cps = list_checkpoints(run)
    return cps[-1] if cps else None


CHECKSUMS = "checksums"  # state.json key: {file name: sha256} of every other file of the checkpoint


def checkpoint_problem(path: Path) -> str | None:
    """Why the checkpoint folder ``path`` cannot be trusted (a file missing, truncated or changed), or None.

    Checkpoints written before checksums were recorded are trusted as they are.
    """
    try:
        state = json.loads((path / "state.json").read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"state.json unreadable ({e})"
    sums = state.get(CHECKSUMS, {}) if isinstance(state, dict) else None
    if (not isinstance(state, dict) or type(state.get("step")) is not int or not isinstance(sums, dict)
            or not all(isinstance(k, str) and "/" not in k and isinstance(v, str) for k, v in sums.items())):
        return "state.json is not a checkpoint record"
    missing = [name for name in sorted(sums) if not (path / name).is_file()]
    if missing:
        return f"{missing[0]} is missing"
    names = sorted(sums)
    for name, got in zip(names, sha256_files([path / n for n in names])):
        if got != sums[name]:
            return f"{name} does not match its recorded SHA-256 (truncated or changed)"
    return None


def quarantine_corrupt_checkpoints(run: Path, say=print) -> None:
    """Newest first, rename checkpoints that fail :func:`checkpoint_problem` to ``corrupt-step-N[-k]``
    (kept for inspection, never counted or pruned as checkpoints) until a good one is found."""
    moved = 0
    for step, path in reversed(list_checkpoints(run)):
        problem = checkpoint_problem(path)
        if problem is None:
            return
        moved += 1
        target = path.with_name(f"corrupt-{path.name}")
        k = 1
        while target.exists():
            target, k = path.with_name(f"corrupt-{path.name}-{k}"), k + 1
        os.replace(path, target)
        say(f"checkpoint {path} is damaged ({problem}); skipped and moved to {target.name}")
    if moved:
        say(f"no intact checkpoint left in {checkpoint_dir(run)}: training starts again from step 0")


def _rng_state() -> dict[str, torch.Tensor]:
    out = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            out[f"torch_cuda_{i}"] = s
    return out


def save_checkpoint(run: Path, step: int, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler,
                    ema: "EMA | None", extra: dict, keep: int) -> Path:
    """Write ``checkpoints/step-XXXXXXXX/`` atomically (temp folder + rename), keep the last ``keep``."""
    for name, m in modules.items():
        for pn, p in m.named_parameters():
            if not torch.isfinite(p).all():
                raise TrainingError(f"parameter {name}.{pn} is not finite at step {step}; stopped without saving. "
                                    f"Last good checkpoint: {latest_checkpoint(run)[1] if latest_checkpoint(run) else 'none'}; lower train.lr")
    from safetensors import SafetensorError

    final = checkpoint_dir(run) / f"step-{step:08d}"
    tmp = checkpoint_dir(run) / f".tmp-step-{step:08d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        _write_checkpoint(tmp, step, modules, optimizer, lr_scheduler, ema, extra)
        atomic_replace_dir(tmp, final, marker="state.json")
    except (OSError, RuntimeError, SafetensorError) as e:  # a full or read-only disk, a quota: say so, keep the rest
        shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(run)
        reason = getattr(e, "strerror", None) or (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise TrainingError(f"cannot write checkpoint step {step} to '{checkpoint_dir(run)}' ({reason}); free space or "
                            f"fix the folder, then run the same command to resume from "
                            f"{last[1] if last else 'the start (no checkpoint was written yet)'}") from None
    for _, old in list_checkpoints(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_checkpoint(tmp: Path, step: int, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler,
                      ema: "EMA | None", extra: dict) -> None:
    """Every file of a checkpoint into ``tmp``; ``state.json`` last, with the SHA-256 of each other file."""
    for name, m in modules.items():
        save_file({k: v.detach().contiguous().cpu() for k, v in m.state_dict().items()}, str(tmp / f"{name}.safetensors"))
    if ema is not None:
        save_file(ema.state_dict(), str(tmp / "ema.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "lr_scheduler": lr_scheduler.state_dict()}, tmp / "optim.pt")
    save_file(_rng_state(), str(tmp / "rng.safetensors"))
    files = sorted(tmp.iterdir())
    sums = dict(zip([p.name for p in files], sha256_files(files)))
    (tmp / "state.json").write_text(json.dumps({"step": step, "time": time.time(), **extra, CHECKSUMS: sums}, indent=2))
    fsync_tree(tmp)  # a node crash must not leave a checkpoint that looks complete with truncated files


@contextlib.contextmanager
def _reading_checkpoint(path: Path):
    """Damage that checksums cannot catch (a checkpoint from before they were recorded, another
    model's checkpoint) becomes one line naming the folder and the way out."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, EOFError, SafetensorError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError) as e:
        if isinstance(e, torch.OutOfMemoryError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingError(f"checkpoint '{path}' cannot be loaded ({first[:200]}); move that folder out of "
                            f"{path.parent} to resume from the one before, or use a new --run folder") from None


def load_weights(path: Path, modules: dict[str, torch.nn.Module], ema: "EMA | None") -> dict:
    """Restore module weights and EMA (before ``accelerator.prepare``); returns ``state.json``."""
    with _reading_checkpoint(path):
        for name, m in modules.items():
            m.load_state_dict(load_file(str(path / f"{name}.safetensors")))
        if ema is not None:
            ema.load_state_dict(load_file(str(path / "ema.safetensors")))
        return json.loads((path / "state.json").read_text())


def load_optimizer(path: Path, optimizer, lr_scheduler) -> None:
    """Restore optimizer, LR schedule and RNG states, AFTER ``accelerator.prepare``.

    Loaded before prepare, AdamW's ``step`` counters would follow the parameters to
    the GPU, and torch would then sync the host twice per parameter per step.
    """
    with _reading_checkpoint(path):
        opt = torch.load(path / "optim.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(opt["optimizer"])
        lr_scheduler.load_state_dict(opt["lr_scheduler"])
        rng = load_file(str(path / "rng.safetensors"))
    torch.set_rng_state(rng["torch_cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(k for k in rng if k.startswith("torch_cuda_"))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optimizer, lr_scheduler, ema: "EMA | None") -> dict:
    """Restore everything :func:`save_checkpoint` wrote (single-device use); returns ``state.json``."""
    state = load_weights(path, modules, ema)
    load_optimizer(path, optimizer, lr_scheduler)
    return state


# ---------------------------------------------------------------------------
# EMA


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
