"""LoRA fine-tuning of a pretrained text model (``train.lora_rank``), as diffusers' own LoRA scripts do it.

The base UNet (and text encoder) are frozen; ``peft`` adds rank-r adapters to the attention projections
(``to_q``, ``to_k``, ``to_v``, ``to_out.0`` in the UNet; ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` in the
text encoder with ``train.lora_text_encoder``), and only they train.  The export holds the merged model (so synth's
sampler and diffusers' pipeline load it as any export) and the adapters alone in diffusers' LoRA format under
``export/lora/`` (``pipe.load_lora_weights("export/lora")`` on the base model gives the same weights).
"""
from __future__ import annotations

from pathlib import Path

import torch

from synth.config import Config, ConfigError

UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]


def lora_config(rank: int, alpha: float | None, targets: list[str]):
    try:
        from peft import LoraConfig
    except ImportError:
        raise ConfigError("train.lora_rank needs the peft package: pip install 'synth[lora]' (or peft)") from None
    return LoraConfig(r=rank, lora_alpha=alpha or rank, init_lora_weights="gaussian", target_modules=targets)


def _has_targets(module: torch.nn.Module, targets: list[str]) -> bool:
    return any(name.endswith(tuple("." + t for t in targets)) for name, _ in module.named_modules())


def add_adapters(cfg: Config, unet, text_encoder, say) -> tuple[int, int]:
    """Freeze the base model and add LoRA adapters; returns (trainable, total) parameter counts."""
    t = cfg.train
    if not _has_targets(unet, UNET_TARGETS):
        raise ConfigError("train.lora_rank asks for LoRA but this UNet has no attention layers to adapt "
                          "(model.unet.attention_levels are all false); fine-tune it fully (train.lora_rank=null)")
    total = sum(p.numel() for p in unet.parameters()) + sum(p.numel() for p in text_encoder.parameters())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(t.seed + 4242)  # the adapters' initial weights are a function of the seed (exact resume)
        _inject(cfg, unet, text_encoder)
    trainable = sum(p.numel() for m in (unet, text_encoder) for p in m.parameters() if p.requires_grad)
    say(f"LoRA rank {t.lora_rank} (alpha {t.lora_alpha or t.lora_rank:g}) on the UNet"
        + (" and the text encoder" if t.lora_text_encoder else "") + f": {trainable:,} trainable parameters of "
        f"{total:,} ({100 * trainable / total:.2f}%)")
    return trainable, total


def _inject(cfg: Config, unet, text_encoder) -> None:
    """Freeze the base weights and add the adapters (random initial weights from the current RNG)."""
    t = cfg.train
    unet.requires_grad_(False)
    unet.add_adapter(lora_config(t.lora_rank, t.lora_alpha, UNET_TARGETS))
    if t.lora_text_encoder:
        text_encoder.requires_grad_(False)
        from peft import inject_adapter_in_model

        # peft directly: transformers' add_adapter insists on a newer peft than diffusers does
        inject_adapter_in_model(lora_config(t.lora_rank, t.lora_alpha, TEXT_TARGETS), text_encoder)


def save_adapters(out: Path, unet, text_encoder, with_text: bool) -> Path:
    """The adapters alone, in diffusers' LoRA format (``pytorch_lora_weights.safetensors``), into ``out``."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict

    out.mkdir(parents=True, exist_ok=True)
    StableDiffusionPipeline.save_lora_weights(
        save_directory=str(out), unet_lora_layers=get_peft_model_state_dict(unet),
        text_encoder_lora_layers=get_peft_model_state_dict(text_encoder) if with_text else None,
        safe_serialization=True)
    return out


def merged(module: torch.nn.Module) -> torch.nn.Module:
    """A copy of ``module`` with its LoRA adapters merged into the base weights and removed (plain weights)."""
    import copy

    from peft.tuners.tuners_utils import BaseTunerLayer

    m = copy.deepcopy(module)
    for name, layer in list(m.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
            parent_name, _, child = name.rpartition(".")
            parent = m.get_submodule(parent_name) if parent_name else m
            setattr(parent, child, layer.get_base_layer())
    if hasattr(m, "_hf_peft_config_loaded"):
        m._hf_peft_config_loaded = False
    if hasattr(m, "peft_config"):
        del m.peft_config
    return m


__all__ = ["add_adapters", "save_adapters", "merged", "lora_config", "UNET_TARGETS", "TEXT_TARGETS"]
