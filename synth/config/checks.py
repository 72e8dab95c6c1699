"""Checking a built config: the constraints declared on the fields (:mod:`synth.config.schema`), then the
checks that tie several fields together; and the size rule a model puts on the resolution."""
from __future__ import annotations

from typing import Any

from synth.data.base import pool_kind
from synth.config.schema import EVAL_ARMS, EVAL_GENERATORS, EVAL_RECIPES, MAX_RESOLUTION, Config, ConfigError, EvalConfig, LabelsConfig, ModelConfig, rules
from synth.messages import show


def _get(cfg: Config, key: str) -> Any:
    """The value at dotted ``key`` (``model.unet.norm_num_groups``)."""
    for part in key.split("."):
        cfg = getattr(cfg, part)
    return cfg


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


def _bracket(rule: dict) -> str:
    return f"{'(' if rule['lo_open'] else '['}{rule['lo']}, {rule['hi']}{')' if rule['hi_open'] else ']'}"


def _breaks(rule: dict, v: Any) -> bool:
    """Whether ``v`` breaks the field's declared ``rule`` (null is not checked: its type says it may be null)."""
    kind = rule["kind"]
    if kind == "choice":
        return v not in rule["choices"]
    if v is None:
        return False
    if kind == "positive":
        return v <= 0
    if kind == "non_negative":
        return v < 0
    if kind == "channels":
        return not v or min(v) <= 0
    lo, hi = rule["lo"], rule.get("hi_value", rule["hi"])
    return not ((lo < v if rule["lo_open"] else lo <= v) and (v < hi if rule["hi_open"] else v <= hi))


def _rule_message(key: str, rule: dict, v: Any) -> str:
    kind = rule["kind"]
    if kind == "choice":
        return f"{key}: {show(v)} is not one of {', '.join(map(str, rule['choices']))}"
    if kind == "positive":
        return f"{key} must be > 0{rule['note']}, got {show(v)}"
    if kind == "non_negative":
        return f"{key} must be >= 0, got {show(v)}"
    if kind == "channels":
        return f"{key} must be positive channel counts, e.g. [32, 64, 64], got {show(v)}"
    return f"{key} must be in {_bracket(rule)}{rule['note']}, got {show(v)}"


# the order in which kinds are checked: a config with several problems hears of the most basic first
_KIND_ORDER = ("choice", "positive", "non_negative", "channels", "interval")


def check_declared(cfg: Config) -> None:
    """Every constraint declared next to a field (:mod:`synth.config.schema`), one-line messages."""
    declared = rules()
    for kind in _KIND_ORDER:
        for key, rule in declared:
            if rule["kind"] == kind and _breaks(rule, _get(cfg, key)):
                raise ConfigError(_rule_message(key, rule, _get(cfg, key)))
        if kind == "positive" and cfg.data.resolution > MAX_RESOLUTION:
            raise ConfigError(f"data.resolution {cfg.data.resolution} is over {MAX_RESOLUTION} px (one image would "
                              f"take {cfg.data.resolution ** 2 * 3 / 2**30:.1f} GiB as RGB); use a resolution <= "
                              f"{MAX_RESOLUTION}")


def validate(cfg: Config) -> None:
    """The declared constraints, then the checks that tie several fields together."""
    check_declared(cfg)
    _validate_eval(cfg.eval)
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


def _validate_eval(e: EvalConfig) -> None:
    """The list-valued settings of the augmentation protocol, and the sweep that must be one of its fractions."""
    for name, values in (("eval.fractions", e.fractions), ("eval.ratios", e.ratios)):
        lo_open = name == "eval.fractions"
        for v in values:
            if not ((0 < v <= 1) if lo_open else (0 <= v <= 1)):
                raise ConfigError(f"{name}: {v} is outside {'(0, 1]' if lo_open else '[0, 1]'}")
    for name, arms in (("eval.arms", e.arms), ("eval.sweep_arms", e.sweep_arms)):
        for a in arms:
            if a not in EVAL_ARMS:
                raise ConfigError(f"{name}: {show(a)} is not one of {', '.join(EVAL_ARMS)}")
    for name, values, allowed in (("eval.recipes", e.recipes, EVAL_RECIPES), ("eval.generators", e.generators, EVAL_GENERATORS)):
        if not values:
            raise ConfigError(f"{name} needs at least one of {', '.join(allowed)}")
        for v in values:
            if v not in allowed:
                raise ConfigError(f"{name}: {show(v)} is not one of {', '.join(allowed)}")
    for r in e.syn_real_ratios:
        if not (isinstance(r, (int, float)) and 0 < r <= 100):
            raise ConfigError(f"eval.syn_real_ratios: {show(r)} is not a synthetic:real ratio in (0, 100] (e.g. 0.5 = one "
                              f"synthetic image per two real)")
    if pool_kind(e.unlabelled_pool) == "source":
        raise ConfigError("eval.unlabelled_pool is none, rest or a path (source is a data.unlabelled value); pass the "
                          "unlabelled images' path, or rest")
    no_pool = pool_kind(e.unlabelled_pool) == "none"
    if no_pool and "pool" in e.generators:
        raise ConfigError("eval.generators has 'pool' but eval.unlabelled_pool is none; set eval.unlabelled_pool=rest "
                          "(or a path to unlabelled images)")
    if no_pool and ("pseudo" in e.arms or "pseudo" in e.sweep_arms):
        raise ConfigError("eval.arms has 'pseudo' (pseudo-labelling the unlabelled pool) but eval.unlabelled_pool is "
                          "none; set eval.unlabelled_pool=rest (or a path) or drop the arm")
    if not e.guidance:
        raise ConfigError("eval.guidance needs at least one value (e.g. [1.5])")
    if len(e.guidance) > 1 and not any(abs(f - e.sweep_fraction) < 1e-9 for f in e.fractions):
        raise ConfigError(f"eval.sweep_fraction {e.sweep_fraction} is not one of eval.fractions "
                          f"{show(list(e.fractions))}: "
                          f"the guidance sweep would not run; set it to one of them")
    if not e.classifier_widths or min(e.classifier_widths) <= 0:
        raise ConfigError(f"eval.classifier_widths must be positive channel counts, e.g. [16, 32, 64], got "
                          f"{show(list(e.classifier_widths))}")
