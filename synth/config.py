"""Config schema: frozen dataclasses are the schema, YAML presets are data.

``load_config(path, overrides)`` reads a YAML preset (safe loader only), applies
``a.b=c`` overrides and validates everything against the dataclasses below.
Unknown keys are errors that suggest the closest valid key; wrong types are
errors that name the key and the expected type.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from synth import solvers
from synth.errors import SynthError


# Every character str.splitlines() breaks at: the CLI prints an error as one ``error: ...`` line.
_LINE_BREAKS = re.compile("[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with its line breaks escaped (``\\n``), so a message quoting user input stays one line."""
    return _LINE_BREAKS.sub(lambda m: repr(m.group())[1:-1], text)


_SHORT = reprlib.Repr()
_SHORT.maxstring, _SHORT.maxother, _SHORT.maxlevel = 60, 60, 3
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 6


def show(value: Any) -> str:
    """A short one-line repr of a user value for messages (a 1000-item list or a YAML alias bomb stays short)."""
    try:
        return one_line(_SHORT.repr(value))
    except ValueError:  # an int past Python's 4300-digit str() limit
        return f"<{type(value).__name__} too large to print>"


class ConfigError(SynthError, ValueError):
    """A bad config value or key; the message is one line naming the fix."""

    def __init__(self, message: object = ""):
        # safety net: messages quote user text, which may hold line breaks
        super().__init__(one_line(str(message)))


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
    # how: stratified (each class in proportion, never its last image) or random (synth before issue 19)
    carve: str = "stratified"
    val_max_items: int | None = 256
    phantom_items: int = 512
    seed: int = 0
    channels: int | str = "auto"  # auto: grey if every image is grey, RGB if every image is colour; or 1 | 3


@dataclass(frozen=True)
class LabelsConfig:
    """Label schema: class names, optional domains, prompt templates."""

    classes: list[str] = field(default_factory=list)  # empty: taken from the data
    domains: list[str] = field(default_factory=list)
    prompt_template: str = "{label}"  # names no modality: a preset for chest X-rays says so itself
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
    allow_pickle: bool = False  # accept pretrained/autoencoder folders that also hold pickle weights (never unpickled)
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
    perceptual_weight: float = 0.0  # autoencoder stage: feature distance under a classifier trained on the real data
    perceptual_steps: int = 400  # training steps of that feature classifier (once per run, saved in it)
    adversarial_weight: float = 0.0  # autoencoder stage: PatchGAN hinge term on reconstructions (0 = off)
    adversarial_start: int = 0  # step at which that term switches on (the critic trains from step 0)
    ssim_gate: float = 0.85
    ceiling_gate: float = 0.0  # diffusion on a vae codec: per-class judge accuracy on reconstructions must reach it
    ceiling_judges: int = 3  # real-data judges (seeds) behind that accuracy: their mean is gated, the lowest shown
    judge_steps: int = 400  # training steps of each judge (once per run, saved in it)
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

    sampler: str = "dpmpp_2m"  # any name of synth.solvers.names()
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


_TYPE_WORDS = {bool: "true or false", int: "an integer", float: "a number", str: "a string", type(None): "null"}


def _type_name(tp: Any) -> str:
    """How a message names the annotation ``tp`` (``a string or null``, not ``str or NoneType``)."""
    if tp in _TYPE_WORDS:
        return _TYPE_WORDS[tp]
    if typing.get_origin(tp) is list:
        return "a list"
    if typing.get_origin(tp) is dict:
        return "a mapping"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


class _BadNumber(ConfigError):
    """A number that is not usable (infinite, NaN, too large): never retried as another type of a union."""


def _finite_float(value: Any, key: str) -> float:
    """``value`` as a finite float: NaN and infinities pass every ``x <= 0`` check, so refuse them here."""
    try:
        out = float(value)
    except OverflowError:  # an int with hundreds of digits
        raise _BadNumber(f"{key}: {show(value)} is too large for a number; use a finite value") from None
    if not math.isfinite(out):
        raise _BadNumber(f"{key}: expected a finite number, got {show(value)}")
    return out


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return the converted value."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except _BadNumber:
                raise  # the right type, a bad value: "expected a number or null, got nan" would mislead
            except ConfigError:
                pass
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {show(value)}")
    if _is_dataclass_type(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {show(value)}")
        return _build(tp, value, key + ".")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {show(value)}")
        (inner,) = typing.get_args(tp) or (Any,)
        return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {show(value)}")
        _, vt = typing.get_args(tp) or (Any, Any)
        for k in value:
            # str(k) would silently turn `yes:` into 'True' and `null:` into 'None'
            if not isinstance(k, str):
                raise ConfigError(f"{key}: key {show(k)} is not a string (YAML reads bare numbers, yes/no and null "
                                  f"as other types); quote it")
        return {k: _coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {show(value)}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {show(value)}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _finite_float(value, key)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" as a string
            try:
                float(value)
            except ValueError:
                pass
            else:
                return _finite_float(value, key)
        raise ConfigError(f"{key}: expected a number, got {show(value)}")
    if tp is str:
        if isinstance(value, str):
            return value
        if value is False and key.endswith("mixed_precision"):  # YAML 1.1 reads a bare `no` as false
            return "no"
        # `--set labels.prompt_template={label}` reads as a YAML mapping: say how to pass text
        how = ("quote each item, e.g. ['yes', '1']" if key.endswith("]") else
               f"quote the text: --set \"{key}='...'\" or {key.split('.')[-1]}: '...' in the file")
        raise ConfigError(f"{key}: expected a string, got {show(value)}; YAML read it as another type, so {how}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, values: dict, prefix: str = "") -> Any:
    """``cls(**values)`` with every key checked against the dataclass fields and every value coerced."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for k, v in values.items():
        if k not in names:
            close = difflib.get_close_matches(str(k), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            shown = k if isinstance(k, str) and len(k) <= 80 else show(k)
            raise ConfigError(f"unknown config key '{prefix}{shown}'{hint}")
        kwargs[k] = _coerce(v, hints[k], prefix + k)
    return cls(**kwargs)


def config_from_dict(values: dict | None) -> Config:
    """Build a validated :class:`Config` from nested plain values."""
    return _build(Config, values or {})


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _set_path(d: dict, dotted: str, value: Any) -> None:
    """``d[a][b][c] = value`` for ``a.b.c``; mappings on the way are copied, never mutated in place.

    Copying only the path (not the whole tree) keeps the caller's data intact and works for
    any YAML value (dates, bytes, self-referencing aliases) that a JSON round trip refuses.
    """
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = d.get(p)
        node = dict(node) if isinstance(node, dict) else {}
        d[p] = node
        d = node
    d[parts[-1]] = value


class _SafeLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no Python tags) that also refuses duplicate keys.

    Plain YAML keeps the last of two ``train:`` sections and silently drops the first.
    """

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value if isinstance(node, yaml.MappingNode) else ():
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue  # non-scalar keys: the base class refuses the unhashable ones
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {show(key)}; keep one and merge their values", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _yaml_problem(e: Exception) -> str:
    """The one useful line of a YAML error: the problem and where, not PyYAML's multi-line context."""
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        mark = e.problem_mark or e.context_mark
        return e.problem + (f" (line {mark.line + 1}, column {mark.column + 1})" if mark else "")
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


class _NotYAML(ConfigError):
    """Text the YAML reader rejects or cannot convert (an override then takes it as plain text)."""


def parse_yaml(text: str, what: str) -> Any:
    """``text`` read with the safe loader; any failure is a one-line ConfigError about ``what``."""
    try:
        return yaml.load(text, Loader=_SafeLoader)  # noqa: S506 - a SafeLoader subclass: safe loading only
    except yaml.YAMLError as e:
        raise _NotYAML(f"{what} is not valid YAML: {_yaml_problem(e)}") from None
    except RecursionError:
        raise ConfigError(f"{what} is nested too deeply to read; flatten it") from None
    except ValueError as e:  # a date like 2024-13-45, an integer past Python's 4300-digit limit
        reason = str(e).split(";")[0].strip() or type(e).__name__
        raise _NotYAML(f"{what} has a value YAML cannot convert ({reason[:120]}); quote it if it is text") from None


def parse_override(item: str) -> tuple[str, Any]:
    """Parse ``a.b=value``; the value is read as YAML (``1e-4``, ``[1,2]``, ``null``).

    A value YAML rejects (``chest x-ray: {label}``, a ``!!python`` tag) is taken as plain text.
    """
    if "=" not in item:
        raise ConfigError(f"override {show(item)} is not of the form key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {show(item)} has an empty key; use e.g. train.lr=1e-4")
    if not raw.strip():
        return key, ""
    try:
        return key, parse_yaml(raw, f"override {show(item)}")
    except _NotYAML:
        return key, raw


def merge_overrides(values: dict, overrides: list[str] | tuple[str, ...]) -> dict:
    """``values`` with every ``key=value`` override applied in order (``values`` itself is left as it was)."""
    out = dict(values)
    for item in overrides:
        key, value = parse_override(item)
        _set_path(out, key, value)
    return out


def read_yaml(path: str | Path) -> dict:
    """The mapping in the YAML file ``path`` (empty for an empty file); one-line errors otherwise."""
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"config file '{p}' not found; pass an existing YAML file (see configs/)")
    if p.is_dir():
        raise ConfigError(f"config '{p}' is a directory; pass a YAML file (see configs/)")
    if not p.is_file():
        raise ConfigError(f"config '{p}' is not a regular file; pass a YAML file (see configs/)")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"config file '{p}' cannot be read ({e.strerror or e}); check its permissions") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file '{p}' is not UTF-8 text (byte {raw[e.start]:#04x} at offset {e.start}); "
                          f"save it as UTF-8") from None
    data = parse_yaml(text, f"config file '{p}'")
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file '{p}' must hold a mapping at the top level (e.g. 'train: {{steps: 100}}'), "
                          f"not a {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML preset (or defaults when ``path`` is None) and apply overrides."""
    # `is not None`: an empty --config "" must not silently mean "defaults"
    values = read_yaml(path) if path is not None else {}
    values = merge_overrides(values, list(overrides))
    cfg = config_from_dict(values)
    validate(cfg)
    return cfg


_CHOICES = {
    "data.on_error": ("raise", "skip"),
    "data.channels": ("auto", 1, 3),
    "model.codec": ("pixel", "vae"),
    "train.lr_schedule": ("constant", "cosine", "linear"),
    "train.mixed_precision": ("no", "bf16", "fp16"),
    "train.attention": ("sdpa", "xformers"),
    "train.prediction_type": ("epsilon", "v_prediction"),
    "train.coupling": ("independent", "ot"),
    "sample.sampler": solvers.names(),  # every file in synth/solvers
    "train.beta_schedule": ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid"),  # DDPMScheduler's
}


def _get(cfg: Config, key: str) -> Any:
    """The value at dotted ``key`` (``model.unet.norm_num_groups``)."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


# Numeric ranges the type system cannot express. A null (optional) value is not checked; a key
# listed in _RANGE_HINTS says what null means.
_POSITIVE = ("data.resolution", "data.phantom_items", "data.max_items", "data.val_max_items",
             "model.vae.layers_per_block", "model.vae.latent_channels", "model.vae.norm_num_groups",
             "model.unet.layers_per_block", "model.unet.attention_head_dim", "model.unet.cross_attention_dim",
             "model.unet.norm_num_groups", "model.text.hidden_size", "model.text.num_heads", "model.text.max_length",
             "model.text.vocab_size", "train.steps", "train.batch_size", "train.grad_accum", "train.lr",
             "train.text_lr", "train.num_train_timesteps", "train.min_snr_gamma", "train.checkpoint_every",
             "train.keep_checkpoints", "train.log_every", "train.perceptual_steps", "train.ceiling_judges",
             "train.judge_steps", "sample.steps", "sample.per_class")
_NON_NEGATIVE = ("model.text.num_layers", "train.weight_decay", "train.warmup_steps", "train.grad_clip",
                 "train.noise_offset", "train.kl_weight", "train.perceptual_weight", "train.adversarial_weight",
                 "train.adversarial_start",
                 "train.sample_every", "train.eval_every",
                 "train.num_workers", "eval.max_shift", "eval.max_rotate")
_RANGE_HINTS = {"train.text_lr": " (or null to freeze the text encoder)", "data.max_items": " (or null for all)",
                "data.val_max_items": " (or null for all)",
                "train.min_snr_gamma": " (or null for no Min-SNR weighting)"}
# numpy refuses negative seeds and torch those past 2**64; derived seeds add small offsets
_SEEDS = ("data.seed", "train.seed", "sample.seed")
_SEED_LIMIT = 2**63
MAX_RESOLUTION = 4096  # 4x Stable Diffusion XL's side; beyond it one (N, C, R, R) batch no longer fits a GPU
_UNIT_OPEN = ("train.cond_drop_prob", "train.ema_decay", "train.adam_beta1", "train.adam_beta2")  # [0, 1)


def _check_ranges(cfg: Config) -> None:
    """The per-key numeric ranges above; messages name the key, the range and the value."""
    for key in _POSITIVE:
        v = _get(cfg, key)
        if v is not None and v <= 0:
            raise ConfigError(f"{key} must be > 0{_RANGE_HINTS.get(key, '')}, got {show(v)}")
    for key in _NON_NEGATIVE:
        v = _get(cfg, key)
        if v < 0:
            raise ConfigError(f"{key} must be >= 0, got {show(v)}")
    if cfg.data.resolution > MAX_RESOLUTION:
        raise ConfigError(f"data.resolution {cfg.data.resolution} is over {MAX_RESOLUTION} px (one image would take "
                          f"{cfg.data.resolution ** 2 * 3 / 2**30:.1f} GiB as RGB); use a resolution <= {MAX_RESOLUTION}")
    for key in _SEEDS:
        v = _get(cfg, key)
        if not 0 <= v < _SEED_LIMIT:
            raise ConfigError(f"{key} must be in [0, 2**63), got {show(v)}")
    for key in _UNIT_OPEN:
        v = _get(cfg, key)
        if not 0 <= v < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {show(v)}")
    for key in ("model.vae.block_out_channels", "model.unet.block_out_channels"):
        v = _get(cfg, key)
        if not v or min(v) <= 0:
            raise ConfigError(f"{key} must be positive channel counts, e.g. [32, 64, 64], got {show(v)}")


def _check_labels(lc: LabelsConfig) -> None:
    """Class/domain names and the prompt template, before any data is read."""
    for key, names in (("labels.classes", lc.classes), ("labels.domains", lc.domains)):
        if any(not n.strip() for n in names):
            raise ConfigError(f"{key} has an empty name: {show(names)}; give every entry a name")
        if len(set(names)) != len(names):
            raise ConfigError(f"{key} has duplicate names: {show(names)}; list each once")
    empty = [k for k, v in lc.prompts.items() if not v.strip()]
    if empty:
        raise ConfigError(f"labels.prompts gives {show(empty)} an empty prompt; write one or drop the entry")
    unknown = sorted(set(lc.prompts) - set(lc.classes)) if lc.classes else []
    if unknown:
        raise ConfigError(f"labels.prompts names unknown classes {show(unknown)}; known: {show(lc.classes)}")
    t = lc.prompt_template
    if "{label}" not in t:
        raise ConfigError("labels.prompt_template must contain '{label}', e.g. 'chest x-ray, {label}'")
    try:
        t.format(label="x")
    except (KeyError, IndexError, ValueError, AttributeError, TypeError) as e:
        # every prompt is made with .format(label=...): another field or a lone brace fails at training time
        raise ConfigError(f"labels.prompt_template {show(t)} cannot be filled in ({type(e).__name__}: {show(str(e))}); "
                          f"'{{label}}' must be its only field (write a literal brace as '{{{{' or '}}}}')") from None


def check_resolution(cfg: Config, stage: str) -> None:
    """Before a run is made: each stride-2 level of the autoencoder and of the UNet halves the image, and the
    up path must meet the down path at every level, so the size must divide by 2 at each one."""
    r = cfg.data.resolution
    vae_levels = len(cfg.model.vae.block_out_channels) - 1
    own_vae = stage == "autoencoder" or (cfg.model.codec == "vae" and not cfg.model.autoencoder and not cfg.model.pretrained)
    if own_vae and r % 2 ** vae_levels:
        raise ConfigError(f"data.resolution {r} cannot pass the autoencoder's {vae_levels} halvings "
                          f"(model.vae.block_out_channels has {vae_levels + 1} levels); use a multiple of "
                          f"{2 ** vae_levels}, e.g. data.resolution={_multiple_near(r, 2 ** vae_levels)}")
    if stage == "autoencoder" or cfg.model.pretrained or (cfg.model.codec == "vae" and cfg.model.autoencoder):
        return  # the UNet's input size is known only once the pretrained model or codec is loaded
    size = r // 2 ** vae_levels if own_vae else r
    unet_levels = len(cfg.model.unet.block_out_channels) - 1
    if size % 2 ** unet_levels:
        where = f"the {size} px latent of a {r} px image" if own_vae else f"a {r} px image"
        raise ConfigError(f"the UNet cannot take {where}: model.unet.block_out_channels has {unet_levels + 1} levels, "
                          f"so the size must be a multiple of {2 ** unet_levels}; use data.resolution="
                          f"{_multiple_near(r, 2 ** (unet_levels + (vae_levels if own_vae else 0)))} or fewer UNet levels")


def _multiple_near(r: int, m: int) -> int:
    """The multiple of ``m`` nearest ``r`` (at least ``m``)."""
    return max(m, m * round(r / m))


def validate(cfg: Config) -> None:
    """Range and choice checks the type system cannot express."""
    for key, choices in _CHOICES.items():
        v = _get(cfg, key)
        if v not in choices:
            raise ConfigError(f"{key}: {show(v)} is not one of {', '.join(map(str, choices))}")
    _check_ranges(cfg)
    if not 0 <= cfg.sample.tau <= 1:
        raise ConfigError(f"sample.tau must be in [0, 1] (1 = identity, 0 = full inversion), got {cfg.sample.tau}")
    _validate_eval(cfg.eval)
    if not 0 <= cfg.train.ceiling_gate <= 1:
        raise ConfigError(f"train.ceiling_gate must be in [0, 1] (a per-class accuracy; 0 = off), got {cfg.train.ceiling_gate}")
    if not 0 < cfg.data.fraction <= 1:
        raise ConfigError(f"data.fraction must be in (0, 1] (share of the training split to use), got {cfg.data.fraction}")
    if cfg.data.carve not in ("stratified", "random"):
        raise ConfigError(f"data.carve must be stratified or random, got {show(cfg.data.carve)}")
    if not 0 < cfg.data.val_fraction < 1:
        raise ConfigError(f"data.val_fraction must be in (0, 1), got {cfg.data.val_fraction}")
    if not cfg.data.name.strip():
        # Path("") is the current folder: it would be read as an image folder
        raise ConfigError("data.name is empty; use 'phantom', a MedMNIST name (e.g. pneumoniamnist) or a data path")
    _check_labels(cfg.labels)
    if len(cfg.model.unet.attention_levels) != len(cfg.model.unet.block_out_channels):
        raise ConfigError("model.unet.attention_levels needs one entry per model.unet.block_out_channels entry")
    if cfg.model.pretrained is None:
        _check_scratch_shapes(cfg.model)


def _check_scratch_shapes(m: ModelConfig) -> None:
    """Shapes the networks built from scratch need (else torch fails deep inside the model build)."""
    for sec in ("unet", "vae"):
        c = getattr(m, sec)
        bad = [w for w in c.block_out_channels if w % c.norm_num_groups]
        if bad:
            raise ConfigError(f"model.{sec}.block_out_channels {c.block_out_channels}: {bad[0]} is not a multiple of "
                              f"model.{sec}.norm_num_groups={c.norm_num_groups} (GroupNorm splits channels into groups); "
                              f"change one of them")
    if m.text.hidden_size % m.text.num_heads:
        raise ConfigError(f"model.text.hidden_size={m.text.hidden_size} is not a multiple of model.text.num_heads="
                          f"{m.text.num_heads}; change one of them")
    if m.text.max_length < 3:
        raise ConfigError(f"model.text.max_length must be >= 3 (start, end and at least one word token), "
                          f"got {m.text.max_length}")


EVAL_ARMS = ("real", "mixed", "synthetic", "pretrain")


def _validate_eval(e: EvalConfig) -> None:
    """One-line errors for the augmentation protocol's settings."""
    if e.trainer not in ("bridge", "ldm"):
        raise ConfigError(f"eval.trainer: {show(e.trainer)} is not one of bridge, ldm")
    for name, values in (("eval.fractions", e.fractions), ("eval.ratios", e.ratios)):
        lo_open = name == "eval.fractions"
        for v in values:
            if not ((0 < v <= 1) if lo_open else (0 <= v <= 1)):
                raise ConfigError(f"{name}: {v} is outside {'(0, 1]' if lo_open else '[0, 1]'}")
    for name, arms in (("eval.arms", e.arms), ("eval.sweep_arms", e.sweep_arms)):
        for a in arms:
            if a not in EVAL_ARMS:
                raise ConfigError(f"{name}: {show(a)} is not one of {', '.join(EVAL_ARMS)}")
    if not e.guidance:
        raise ConfigError("eval.guidance needs at least one value (e.g. [1.5])")
    if len(e.guidance) > 1 and not any(abs(f - e.sweep_fraction) < 1e-9 for f in e.fractions):
        raise ConfigError(f"eval.sweep_fraction {e.sweep_fraction} is not one of eval.fractions "
                          f"{show(list(e.fractions))}: "
                          f"the guidance sweep would not run; set it to one of them")
    if not e.classifier_widths or min(e.classifier_widths) <= 0:
        raise ConfigError(f"eval.classifier_widths must be positive channel counts, e.g. [16, 32, 64], got "
                          f"{show(list(e.classifier_widths))}")
    if e.classifier_lr <= 0:
        raise ConfigError(f"eval.classifier_lr must be > 0, got {e.classifier_lr}")
    for key in ("classifier_seeds", "generator_seeds", "synthetic_n", "classifier_steps", "classifier_batch",
                "eval_every", "workers", "finetune_steps", "feature_steps"):
        if getattr(e, key) <= 0:
            raise ConfigError(f"eval.{key} must be > 0, got {show(getattr(e, key))}")
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
