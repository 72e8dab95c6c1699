"""Config schema: frozen dataclasses are the schema, YAML presets are data.

``load_config(path, overrides)`` reads a YAML preset (safe loader only), applies
``a.b=c`` overrides and validates everything against the dataclasses below.
Unknown keys are errors that suggest the closest valid key; wrong types are
errors that name the key and the expected type.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A bad config value or key; the message is one line naming the fix."""


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are prepared.

    ``name``: ``phantom``, a MedMNIST name (``pneumoniamnist``), or a path to an
    ``.npz``, an image folder (sub-folders are classes), a ``.csv``/``.jsonl``
    manifest, or a folder of DICOM files.
    """

    name: str = "phantom"
    resolution: int = 32
    cache_dir: str | None = None
    download: bool = True
    on_error: str = "raise"  # raise | skip
    hflip: bool = False  # laterality matters: never flip unless asked
    max_items: int | None = None  # deterministic subset of the training split
    fraction: float = 1.0  # stratified share of the training split (low-data studies); recorded in exports
    val_fraction: float = 0.1  # carved from train when the source has no val split
    val_max_items: int | None = 256
    phantom_items: int = 512
    seed: int = 0


@dataclass(frozen=True)
class LabelsConfig:
    """Label schema: class names, optional domains, prompt templates."""

    classes: list[str] = field(default_factory=list)  # empty: taken from the data
    domains: list[str] = field(default_factory=list)
    prompt_template: str = "chest x-ray, {label}"
    prompts: dict[str, str] = field(default_factory=dict)  # per-class override


@dataclass(frozen=True)
class VAEConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 16


@dataclass(frozen=True)
class UNetConfig:
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    cross_attention_dim: int = 64
    norm_num_groups: int = 16
    # attention (cross-attention to text) in the lower-resolution blocks only
    attention_levels: list[bool] = field(default_factory=lambda: [False, True, True])


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 4
    max_length: int = 24
    vocab_size: int = 1000


@dataclass(frozen=True)
class ModelConfig:
    """``pretrained``: a diffusers Stable Diffusion folder or hub id to fine-tune.

    Without it, the models are built from the sections below.  ``codec`` is
    ``pixel`` (identity; for 28-64 px images) or ``vae``.  ``autoencoder``: the
    run folder (or export) of ``synth train autoencoder`` to use as the codec.
    """

    pretrained: str | None = None
    codec: str = "pixel"
    autoencoder: str | None = None
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 1000
    batch_size: int = 32
    lr: float = 1e-3
    text_lr: float | None = None  # None: text encoder frozen
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    warmup_steps: int = 50
    lr_schedule: str = "cosine"  # constant | cosine | linear
    grad_accum: int = 1
    grad_clip: float = 1.0  # 0 disables
    mixed_precision: str = "no"  # no | bf16 | fp16 (fp16 on GPU only)
    gradient_checkpointing: bool = False
    attention: str = "sdpa"  # sdpa | xformers
    ema_decay: float = 0.999  # 0 disables EMA
    ema_warmup: bool = True  # decay ramps up as (1+n)/(10+n)
    prediction_type: str = "epsilon"  # epsilon | v_prediction
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    min_snr_gamma: float | None = 5.0
    noise_offset: float = 0.0
    cond_drop_prob: float = 0.1  # classifier-free guidance: prompt (or, for a bridge, domain) dropped
    coupling: str = "independent"  # bridge: independent | ot (label-aware mini-batch optimal transport)
    cache_latents: bool = True
    cache_text: bool = True
    kl_weight: float = 1e-6  # autoencoder stage
    ssim_gate: float = 0.85
    force: bool = False  # train diffusion despite a failing autoencoder gate
    checkpoint_every: int = 200
    keep_checkpoints: int = 2
    sample_every: int = 0  # 0: only at the end
    log_every: int = 10
    eval_every: int = 0  # autoencoder validation; 0: only at the end
    seed: int = 0
    num_workers: int = 0
    progress: bool = True


@dataclass(frozen=True)
class SampleConfig:
    """Settings for preview grids and for the exported default scheduler."""

    sampler: str = "dpmpp_2m"  # ddim | euler | heun | dpmpp_2m
    steps: int = 25
    guidance: float = 1.5
    tau: float = 0.5  # bridge translation: 1 identity, 0 full inversion
    per_class: int = 8
    seed: int = 0


@dataclass(frozen=True)
class EvalConfig:
    """``synth eval augment``: RoentGen's downstream protocol around the generator this config trains.

    For each training fraction f the generator is trained on the same stratified real subset
    the classifiers see (``data.fraction=f``, ``data.seed``), once per generator seed; each
    generator writes ``synthetic_n`` class-balanced images per guidance value; a small CNN is
    trained per arm and classifier seed with early stopping on the real validation split and
    scored on the official test split.
    """

    trainer: str = "bridge"  # bridge | ldm: how the generators are trained
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 1.0])
    ratios: list[float] = field(default_factory=lambda: [0.5])  # synthetic share of each batch in real+synthetic arms
    arms: list[str] = field(default_factory=lambda: ["real", "mixed", "synthetic", "pretrain"])
    classifier_seeds: int = 8
    generator_seeds: int = 2
    guidance: list[float] = field(default_factory=lambda: [1.5])  # the first: every arm; the rest: sweep_fraction only
    sweep_fraction: float = 0.1
    sweep_arms: list[str] = field(default_factory=lambda: ["mixed", "synthetic"])
    synthetic_n: int = 2000  # images per generator and guidance, balanced over classes
    classifier_steps: int = 400
    finetune_steps: int = 200  # pretrain arm: real fine-tuning after classifier_steps on synthetic images
    classifier_batch: int = 64
    classifier_lr: float = 0.002
    classifier_widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    eval_every: int = 50  # validation AUROC for early stopping
    max_shift: int = 2  # light geometric augmentation (px); never flips
    max_rotate: float = 10.0  # degrees
    feature_steps: int = 600  # the fidelity yardstick (feature extractor / judge) on the full real training split
    workers: int = 1  # classifier processes (single-threaded each); 2 on a 2-core machine
    quality_threshold: float = 0.0  # > 0: keep synthetic images a real-subset classifier assigns to their label this surely


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# ---------------------------------------------------------------------------
# Building and validating


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the converted value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        _, vt = typing.get_args(tp) or (Any, Any)
        return {str(k): _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if value is False and key.endswith("mixed_precision"):  # YAML 1.1 reads a bare `no` as false
            return "no"
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"unknown config key '{prefix}{k}'{hint}")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    return cls(**kwargs)


def config_from_dict(values: dict | None) -> Config:
    """Build a validated :class:`Config` from nested plain values."""
    return _build(Config, values or {})


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_path(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = d.get(p)
        if not isinstance(node, dict):
            node = {}
            d[p] = node
        d = node
    d[parts[-1]] = value


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``a.b=value``; the value is read as YAML (``1e-4``, ``[1,2]``, ``null``)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{item}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key, value


def merge_overrides(values: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    out = json.loads(json.dumps(values))  # deep copy of plain data
    for item in overrides:
        key, value = parse_override(item)
        _set_path(out, key, value)
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file '{p}' not found; pass an existing YAML file (see configs/)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file '{p}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping at the top level")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML preset (or defaults when ``path`` is None) and apply overrides."""
    values = read_yaml(path) if path else {}
    values = merge_overrides(values, list(overrides))
    cfg = config_from_dict(values)
    validate(cfg)
    return cfg


_CHOICES = {
    "data.on_error": ("raise", "skip"),
    "model.codec": ("pixel", "vae"),
    "train.lr_schedule": ("constant", "cosine", "linear"),
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "train.attention": ("sdpa", "xformers"),
    "train.prediction_type": ("epsilon", "v_prediction"),
    "train.coupling": ("independent", "ot"),
    "sample.sampler": ("ddim", "euler", "heun", "midpoint", "dpmpp_2m"),
}


def validate(cfg: Config) -> None:
    """Range and choice checks the type system cannot express."""
    d = config_to_dict(cfg)
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        v = d[section][name]
        if v not in choices:
            raise ConfigError(f"{key}: '{v}' is not one of {', '.join(choices)}")
    positives = ["data.resolution", "train.steps", "train.batch_size", "train.grad_accum", "train.lr",
                 "train.checkpoint_every", "train.keep_checkpoints", "train.log_every", "sample.steps"]
    for key in positives:
        section, name = key.split(".")
        if d[section][name] <= 0:
            raise ConfigError(f"{key} must be > 0, got {d[section][name]}")
    if cfg.train.text_lr is not None and cfg.train.text_lr <= 0:
        raise ConfigError(f"train.text_lr must be > 0 (or null to freeze the text encoder), got {cfg.train.text_lr}")
    if cfg.train.weight_decay < 0:
        raise ConfigError(f"train.weight_decay must be >= 0, got {cfg.train.weight_decay}")
    if not 0 <= cfg.train.cond_drop_prob < 1:
        raise ConfigError(f"train.cond_drop_prob must be in [0, 1), got {cfg.train.cond_drop_prob}")
    if not 0 <= cfg.sample.tau <= 1:
        raise ConfigError(f"sample.tau must be in [0, 1] (1 = identity, 0 = full inversion), got {cfg.sample.tau}")
    if not 0 <= cfg.train.ema_decay < 1:
        raise ConfigError(f"train.ema_decay must be in [0, 1), got {cfg.train.ema_decay}")
    _validate_eval(cfg.eval)
    if not 0 < cfg.data.fraction <= 1:
        raise ConfigError(f"data.fraction must be in (0, 1] (share of the training split to use), got {cfg.data.fraction}")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    if "{label}" not in cfg.labels.prompt_template:
        raise ConfigError("labels.prompt_template must contain '{label}', e.g. 'chest x-ray, {label}'")
    if len(cfg.model.unet.attention_levels) != len(cfg.model.unet.block_out_channels):
        raise ConfigError("model.unet.attention_levels needs one entry per model.unet.block_out_channels entry")


EVAL_ARMS = ("real", "mixed", "synthetic", "pretrain")


def _validate_eval(e: EvalConfig) -> None:
    """One-line errors for the augmentation protocol's settings."""
    if e.trainer not in ("bridge", "ldm"):
        raise ConfigError(f"eval.trainer: '{e.trainer}' is not one of bridge, ldm")
    for name, values in (("eval.fractions", e.fractions), ("eval.ratios", e.ratios)):
        lo_open = name == "eval.fractions"
        for v in values:
            if not ((0 < v <= 1) if lo_open else (0 <= v <= 1)):
                raise ConfigError(f"{name}: {v} is outside {'(0, 1]' if lo_open else '[0, 1]'}")
    for a in list(e.arms) + list(e.sweep_arms):
        if a not in EVAL_ARMS:
            raise ConfigError(f"eval.arms: '{a}' is not one of {', '.join(EVAL_ARMS)}")
    if not e.guidance:
        raise ConfigError("eval.guidance needs at least one value (e.g. [1.5])")
    if len(e.guidance) > 1 and not any(abs(f - e.sweep_fraction) < 1e-9 for f in e.fractions):
        raise ConfigError(f"eval.sweep_fraction {e.sweep_fraction} is not one of eval.fractions {list(e.fractions)}: "
                          f"the guidance sweep would not run; set it to one of them")
    if not e.classifier_widths or min(e.classifier_widths) <= 0:
        raise ConfigError(f"eval.classifier_widths must be positive channel counts, e.g. [16, 32, 64], got "
                          f"{list(e.classifier_widths)}")
    if e.classifier_lr <= 0:
        raise ConfigError(f"eval.classifier_lr must be > 0, got {e.classifier_lr}")
    for key in ("classifier_seeds", "generator_seeds", "synthetic_n", "classifier_steps", "classifier_batch",
                "eval_every", "workers", "finetune_steps", "feature_steps"):
        if getattr(e, key) <= 0:
            raise ConfigError(f"eval.{key} must be > 0, got {getattr(e, key)}")
    if not 0 <= e.quality_threshold <= 1:
        raise ConfigError(f"eval.quality_threshold must be in [0, 1] (0 = no filter), got {e.quality_threshold}")


def save_config(cfg: Config, path: str | Path) -> None:
    from synth.io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def diff_configs(old: dict, new: dict, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two plain config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += diff_configs(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}")
    return out
