"""Checkpoints: step-XXXXXXXX folders with weights, EMA, optimizer, scheduler, RNG states and checksums;
written atomically, a damaged one quarantined on resume."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
import re
import shutil
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from synth.io import atomic_replace_dir, fsync_tree, sha256_files
from synth.trainers.common import TrainingError
from synth.trainers.ema import EMA


CKPT_RE = re.compile(r"^step-(\d{8})$")


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
