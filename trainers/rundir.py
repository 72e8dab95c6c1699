"""The run folder: created or checked on resume (what may change, what may not, the global batch), its config
recorded."""
from __future__ import annotations

import json
import shutil
from pathlib import Path


from synth.config import Config, ConfigError, config_to_dict, diff_configs, save_config
from synth.io import atomic_write_json, check_ours
from synth.trainers.checkpoints import checkpoint_dir, latest_checkpoint, quarantine_corrupt_checkpoints


# Changing these breaks the checkpoint (shapes, data meaning or the objective).  The
# per-process batch and accumulation may change as long as the global batch does not
# (see :func:`check_global_batch`): that is how a job moves to another process count.
RESUME_BREAKING = ("data.name", "data.resolution", "data.channels", "data.max_items", "data.fraction", "data.seed",
                   "data.carve", "data.unlabelled", "train.unlabelled_share", "train.new_parts_lr",
                   "train.lora_rank", "train.lora_alpha", "train.lora_text_encoder",
                   "labels", "model",
                   "train.path", "train.prediction_type", "train.num_train_timesteps",
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
