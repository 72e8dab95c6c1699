"""The config schema: frozen dataclasses, each field with its default AND its constraint.

A constraint is declared where the field is (``positive(32)``, ``choice("pixel", ("pixel", "vae"))``,
``interval(0.5, 0, 1, note=...)``), as field metadata that :func:`synth.config.checks.validate` walks;
checks that tie several fields together live in :mod:`synth.config.checks`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from synth import solvers
from synth.errors import SynthError
from synth.messages import one_line

MAX_RESOLUTION = 4096  # 4x Stable Diffusion XL's side; beyond it one (N, C, R, R) batch no longer fits a GPU
SEED_LIMIT = 2**63  # numpy refuses negative seeds and torch those past 2**64; derived seeds add small offsets
EVAL_ARMS = ("real", "mixed", "synthetic", "pretrain", "duplicate", "pseudo")
EVAL_RECIPES = ("smallcnn", "resnet")
EVAL_GENERATORS = ("labelled", "pool")


class ConfigError(SynthError, ValueError):
    """A bad config value or key; the message is one line naming the fix."""

    def __init__(self, message: object = ""):
        # safety net: messages quote user text, which may hold line breaks
        super().__init__(one_line(str(message)))


def _field(default: Any, rule: dict) -> Any:
    """A dataclass field with ``rule`` in its metadata; a list/dict default becomes a factory."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"rule": rule})
    return field(default=default, metadata={"rule": rule})


def positive(default: Any, note: str = "") -> Any:
    """> 0 (null allowed when the type is optional; ``note`` says what null means)."""
    return _field(default, {"kind": "positive", "note": note})


def non_negative(default: Any) -> Any:
    return _field(default, {"kind": "non_negative"})


def choice(default: Any, choices: tuple) -> Any:
    return _field(default, {"kind": "choice", "choices": tuple(choices)})


def interval(default: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, note: str = "") -> Any:
    """lo <= x <= hi (either end open); the message shows the interval and ``note``."""
    return _field(default, {"kind": "interval", "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
                            "note": note})


def seed(default: int = 0) -> Any:
    return _field(default, {"kind": "interval", "lo": 0, "hi": "2**63", "hi_value": SEED_LIMIT, "lo_open": False,
                            "hi_open": True, "note": "", "show": True})


def unit_open(default: float) -> Any:
    """[0, 1): a probability or a decay that must stay below one."""
    return _field(default, {"kind": "interval", "lo": 0, "hi": 1, "lo_open": False, "hi_open": True, "note": "",
                            "show": True})


def channel_list(default: list) -> Any:
    """A list of positive channel counts (one per resolution level)."""
    return _field(default, {"kind": "channels"})


@dataclass(frozen=True)
class DataConfig:
    """Where images come from and how they are prepared.

    ``name``: ``phantom``, a MedMNIST name (``pneumoniamnist``), or a path to an
    ``.npz``, an image folder (sub-folders are classes), a ``.csv``/``.jsonl``
    manifest, or a folder of DICOM files.
    """

    name: str = "phantom"
    resolution: int = positive(32)  # at most MAX_RESOLUTION
    cache_dir: str | None = None
    download: bool = True
    on_error: str = choice("raise", ("raise", "skip"))
    hflip: bool = False  # laterality matters: never flip unless asked
    max_items: int | None = positive(None, " (or null for all)")  # deterministic subset of the training split
    # stratified share of the training split (low-data studies); recorded in exports
    fraction: float = interval(1.0, 0, 1, lo_open=True, note=" (share of the training split to use)")
    val_fraction: float = interval(0.1, 0, 1, lo_open=True, hi_open=True)  # carved from train when there is no val
    # how: stratified (each class in proportion, never its last image) or random (synth before issue 19)
    carve: str = choice("stratified", ("stratified", "random"))
    val_max_items: int | None = positive(256, " (or null for all)")
    phantom_items: int = positive(512)
    seed: int = seed()
    # auto: grey if every image is grey, RGB if every image is colour; or 1 | 3
    channels: int | str = choice("auto", ("auto", 1, 3))
    # images without a class, trained under the null condition: none | rest (the training split outside the
    # labelled subset, labels dropped) | source (data.name's own unlabelled rows/folder/key) | a path
    unlabelled: str = "none"


@dataclass(frozen=True)
class LabelsConfig:
    """Label schema: class names, optional domains, prompt templates."""

    classes: list[str] = field(default_factory=list)  # empty: taken from the data
    domains: list[str] = field(default_factory=list)
    prompt_template: str = "{label}"  # names no modality: a preset for chest X-rays says so itself
    prompts: dict[str, str] = field(default_factory=dict)  # per-class override
    # a row with free text (a manifest's prompt column): its prompt; may name {prompt}, {label} and any column
    caption_template: str = "{prompt}"
    clean_captions: bool = True  # whitespace runs to one space; de-identification placeholders (XXXX, [** **]) dropped
    # keep a report's FINDINGS: and/or IMPRESSION: section (the whole text when it has no such header)
    report_section: str = choice("all", ("all", "findings", "impression", "findings+impression"))


@dataclass(frozen=True)
class VAEConfig:
    block_out_channels: list[int] = channel_list([32, 64, 64])
    layers_per_block: int = positive(1)
    latent_channels: int = positive(4)
    norm_num_groups: int = positive(16)


@dataclass(frozen=True)
class UNetConfig:
    block_out_channels: list[int] = channel_list([32, 64, 64])
    layers_per_block: int = positive(1)
    attention_head_dim: int = positive(8)
    cross_attention_dim: int = positive(64)
    norm_num_groups: int = positive(16)
    # attention (cross-attention to text) in the lower-resolution blocks only
    attention_levels: list[bool] = field(default_factory=lambda: [False, True, True])


@dataclass(frozen=True)
class TextConfig:
    hidden_size: int = positive(64)
    num_layers: int = non_negative(2)
    num_heads: int = positive(4)
    max_length: int = positive(24)
    vocab_size: int = positive(1000)
    # prompts longer than max_length: 1 cuts them; W > 1 encodes up to W windows and concatenates them (synth.textwindows)
    windows: int = positive(1)


@dataclass(frozen=True)
class ModelConfig:
    """``pretrained``: a diffusers Stable Diffusion folder or hub id to fine-tune.

    Without it, the models are built from the sections below.  ``codec`` is
    ``pixel`` (identity; for 28-64 px images) or ``vae``.  ``autoencoder``: the
    run folder (or export) of ``synth train autoencoder`` to use as the codec.
    """

    pretrained: str | None = None
    codec: str = choice("pixel", ("pixel", "vae"))
    autoencoder: str | None = None
    allow_pickle: bool = False  # accept pretrained/autoencoder folders that also hold pickle weights (never unpickled)
    # fine-tuning a synth bridge export: class embeddings matched by name (new ones from the null row) or all fresh
    class_init: str = choice("by_name", ("by_name", "fresh"))
    vae: VAEConfig = field(default_factory=VAEConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    text: TextConfig = field(default_factory=TextConfig)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = positive(1000)
    batch_size: int = positive(32)
    lr: float = positive(1e-3)
    text_lr: float | None = positive(None, " (or null to freeze the text encoder)")  # None: text encoder frozen
    # LoRA fine-tuning of a pretrained text model: adapter rank (null: full fine-tuning), alpha (null: = rank), and
    # whether the text encoder gets adapters too (it then trains at train.text_lr)
    lora_rank: int | None = positive(None, " (or null for full fine-tuning)")
    lora_alpha: float | None = positive(None, " (or null for the rank)")
    lora_text_encoder: bool = False
    # fine-tuning a synth export: the learning rate of the parts it did not have (the class-embedding table)
    new_parts_lr: float | None = positive(None, " (or null for train.lr)")
    weight_decay: float = non_negative(0.0)
    adam_beta1: float = unit_open(0.9)
    adam_beta2: float = unit_open(0.999)
    warmup_steps: int = non_negative(50)
    lr_schedule: str = choice("cosine", ("constant", "cosine", "linear"))
    grad_accum: int = positive(1)
    grad_clip: float = non_negative(1.0)  # 0 disables
    mixed_precision: str = choice("no", ("no", "bf16", "fp16"))  # fp16 on GPU only
    gradient_checkpointing: bool = False
    attention: str = choice("sdpa", ("sdpa", "xformers"))
    ema_decay: float = unit_open(0.999)  # 0 disables EMA
    ema_warmup: bool = True  # decay ramps up as (1+n)/(10+n)
    # the family of the text/label model: DDPM noise (diffusion) or the linear flow path (a text-conditioned flow)
    path: str = choice("diffusion", ("diffusion", "flow"))
    prediction_type: str = choice("epsilon", ("epsilon", "v_prediction"))
    num_train_timesteps: int = positive(1000)
    # DDPMScheduler's schedules
    beta_schedule: str = choice("scaled_linear", ("linear", "scaled_linear", "squaredcos_cap_v2", "laplace", "sigmoid"))
    min_snr_gamma: float | None = positive(5.0, " (or null for no Min-SNR weighting)")
    noise_offset: float = non_negative(0.0)
    # share of every batch drawn from data.unlabelled (the rest: labelled images); ignored without a pool
    unlabelled_share: float = interval(0.5, 0, 1, note=" (share of each batch from the unlabelled pool)")
    cond_drop_prob: float = unit_open(0.1)  # classifier-free guidance: prompt (or, for a bridge, domain) dropped
    # bridge: independent | ot (label-aware mini-batch optimal transport)
    coupling: str = choice("independent", ("independent", "ot"))
    cache_latents: bool = True
    cache_text: bool = True
    kl_weight: float = non_negative(1e-6)  # autoencoder stage
    # autoencoder stage: feature distance under a classifier trained on the real data
    perceptual_weight: float = non_negative(0.0)
    perceptual_steps: int = positive(400)  # training steps of that feature classifier (once per run, saved in it)
    adversarial_weight: float = non_negative(0.0)  # autoencoder stage: PatchGAN hinge term on reconstructions (0 = off)
    adversarial_start: int = non_negative(0)  # step at which that term switches on (the critic trains from step 0)
    ssim_gate: float = 0.85
    # diffusion on a vae codec: per-class judge accuracy on reconstructions must reach it
    ceiling_gate: float = interval(0.0, 0, 1, note=" (a per-class accuracy; 0 = off)")
    ceiling_judges: int = positive(3)  # real-data judges (seeds) behind that accuracy: their mean is gated
    judge_steps: int = positive(400)  # training steps of each judge (once per run, saved in it)
    force: bool = False  # train diffusion despite a failing autoencoder gate
    checkpoint_every: int = positive(200)
    keep_checkpoints: int = positive(2)
    sample_every: int = non_negative(0)  # 0: only at the end
    log_every: int = positive(10)
    eval_every: int = non_negative(0)  # autoencoder validation; 0: only at the end
    seed: int = seed()
    num_workers: int = non_negative(0)
    progress: bool = True


@dataclass(frozen=True)
class SampleConfig:
    """Settings for preview grids and for the exported default scheduler."""

    sampler: str = choice("dpmpp_2m", solvers.names())  # every file in synth/solvers
    steps: int = positive(25)
    guidance: float = 1.5
    tau: float = interval(0.5, 0, 1, note=" (1 = identity, 0 = full inversion)")  # bridge translation strength
    per_class: int = positive(8)
    seed: int = seed()


@dataclass(frozen=True)
class EvalConfig:
    """``synth eval augment``: RoentGen's downstream protocol around the generator this config trains.

    For each training fraction f the generator is trained on the same stratified real subset
    the classifiers see (``data.fraction=f``, ``data.seed``), once per generator seed; each
    generator writes ``synthetic_n`` class-balanced images per guidance value; a small CNN is
    trained per arm and classifier seed with early stopping on the real validation split and
    scored on the official test split.
    """

    trainer: str = choice("bridge", ("bridge", "ldm"))  # how the generators are trained
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 1.0])
    ratios: list[float] = field(default_factory=lambda: [0.5])  # synthetic share of each batch in real+synthetic arms
    arms: list[str] = field(default_factory=lambda: ["real", "mixed", "synthetic", "pretrain"])
    classifier_seeds: int = positive(8)
    generator_seeds: int = positive(2)
    guidance: list[float] = field(default_factory=lambda: [1.5])  # the first: every arm; the rest: sweep_fraction only
    sweep_fraction: float = 0.1
    sweep_arms: list[str] = field(default_factory=lambda: ["mixed", "synthetic"])
    synthetic_n: int = positive(2000)  # images per generator and guidance, balanced over classes
    classifier_steps: int = positive(400)
    finetune_steps: int = positive(200)  # pretrain arm: real fine-tuning after classifier_steps on synthetic images
    classifier_batch: int = positive(64)
    classifier_lr: float = positive(0.002)
    classifier_widths: list[int] = field(default_factory=lambda: [16, 32, 64])
    eval_every: int = positive(50)  # validation AUROC for early stopping
    max_shift: int = non_negative(2)  # light geometric augmentation (px); never flips
    max_rotate: float = non_negative(10.0)  # degrees
    feature_steps: int = positive(600)  # the fidelity yardstick (feature extractor / judge) on the full real split
    workers: int = positive(1)  # classifier processes (single-threaded each); 2 on a 2-core machine
    # > 0: keep synthetic images a real-subset classifier assigns to their label this surely
    quality_threshold: float = interval(0.0, 0, 1, note=" (0 = no filter)")
    # images without labels the study may use: none | rest (the training split outside each fraction's labelled
    # subset, labels removed) | a path; pool-trained generators and the pseudo-labelling arm draw on it
    unlabelled_pool: str = "none"
    # which generators make synthetic sets: labelled (the labelled subset only) and/or pool (+ eval.unlabelled_pool)
    generators: list[str] = field(default_factory=lambda: ["labelled"])
    # classifier recipes; every arm runs under each (a claim needs them to agree): smallcnn | resnet
    recipes: list[str] = field(default_factory=lambda: ["smallcnn"])
    # synthetic:real ratios swept by mixed and pseudo (share r/(1+r)) and pretrain/duplicate (r x finetune_steps
    # pre-training steps): all at eval.sweep_fraction, the first elsewhere; empty: eval.ratios / classifier_steps
    syn_real_ratios: list[float] = field(default_factory=list)
    # pseudo-labelling arm: pool images a real-subset classifier labels at least this surely are added
    pseudo_threshold: float = interval(0.9, 0, 1, lo_open=True, note=" (teacher confidence)")


@dataclass(frozen=True)
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def rules(cls: type = Config, prefix: str = "") -> list[tuple[str, dict]]:
    """(dotted key, rule) of every constrained field, in declaration order."""
    out = []
    for f in dataclasses.fields(cls):
        key = prefix + f.name
        if "rule" in f.metadata:
            out.append((key, f.metadata["rule"]))
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            out += rules(type(default), key + ".")
    return out
