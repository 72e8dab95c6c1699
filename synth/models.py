"""Model builders: the one place that turns config sections into diffusers/transformers objects.

Builders take plain keyword arguments (never the config object) so library code
can be used without our config schema; :func:`build_from_config` bridges the two.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch


def build_tokenizer(corpus: list[str], vocab_size: int = 1000, model_max_length: int = 77):
    """Train a CLIP-format BPE tokenizer on ``corpus`` offline -> ``CLIPTokenizer``.

    The vocabulary holds every byte (alone and word-final) so any text encodes;
    merges are learned from the corpus, so prompts become few tokens.
    """
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import CLIPTokenizer

    tok = Tokenizer(models.BPE(unk_token="<|endoftext|>", end_of_word_suffix="</w>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""),
                             behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    base = ["<|startoftext|>", "<|endoftext|>"] + alphabet + [a + "</w>" for a in alphabet]
    trainer = trainers.BpeTrainer(vocab_size=max(vocab_size, len(base) + 1), special_tokens=[], initial_alphabet=alphabet,
                                  end_of_word_suffix="</w>", show_progress=False)
    tok.train_from_iterator(sorted(set(corpus)) or ["x"], trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in merges]
    vocab: dict[str, int] = {}
    for t in base:
        vocab.setdefault(t, len(vocab))
    kept = []
    for a, b in merges:
        if len(vocab) >= vocab_size:
            break
        vocab.setdefault(a + b, len(vocab))
        kept.append((a, b))
    return CLIPTokenizer(vocab=vocab, merges=kept, model_max_length=model_max_length)


def build_text_encoder(vocab_size: int, hidden_size: int, num_layers: int, num_heads: int, max_length: int):
    """A small CLIP text transformer: (B, L) token ids -> (B, L, hidden_size)."""
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=hidden_size * 4,
                         num_hidden_layers=num_layers, num_attention_heads=num_heads,
                         max_position_embeddings=max_length, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    return CLIPTextModel(cfg)


def build_unet(sample_size: int, in_channels: int, block_out_channels: list[int], layers_per_block: int,
               attention_head_dim: int, cross_attention_dim: int, norm_num_groups: int,
               attention_levels: list[bool]):
    """UNet2DConditionModel: (B, C, H, W), t, (B, L, D) text -> (B, C, H, W)."""
    from diffusers import UNet2DConditionModel

    down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels]
    up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)]
    return UNet2DConditionModel(
        sample_size=sample_size, in_channels=in_channels, out_channels=in_channels,
        down_block_types=tuple(down), up_block_types=tuple(up), block_out_channels=tuple(block_out_channels),
        layers_per_block=layers_per_block, attention_head_dim=attention_head_dim,
        cross_attention_dim=cross_attention_dim, norm_num_groups=norm_num_groups,
        mid_block_type="UNetMidBlock2DCrossAttn" if any(attention_levels) else None,
    )


def build_flow_unet(sample_size: int, channels: int, block_out_channels: list[int], layers_per_block: int,
                    attention_head_dim: int, norm_num_groups: int, attention_levels: list[bool], num_domains: int):
    """UNet2DModel conditioned on a domain: (B, C, H, W), t*1000 (B,), domain (B,) -> velocity (B, C, H, W).

    ``num_domains + 1`` class embeddings: index ``num_domains`` is the null domain
    (classifier-free guidance), learned like the others.
    """
    from diffusers import UNet2DModel

    down = ["AttnDownBlock2D" if a else "DownBlock2D" for a in attention_levels]
    up = ["AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(attention_levels)]
    return UNet2DModel(sample_size=sample_size, in_channels=channels, out_channels=channels,
                       down_block_types=tuple(down), up_block_types=tuple(up), block_out_channels=tuple(block_out_channels),
                       layers_per_block=layers_per_block, attention_head_dim=attention_head_dim,
                       norm_num_groups=norm_num_groups, num_class_embeds=num_domains + 1)


def build_vae(in_channels: int, block_out_channels: list[int], layers_per_block: int, latent_channels: int,
              norm_num_groups: int, sample_size: int):
    """AutoencoderKL with 2**(len(blocks)-1) downsampling: (B, 1, H, W) <-> (B, c, H/f, W/f)."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(in_channels=in_channels, out_channels=in_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                         latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=sample_size,
                         scaling_factor=1.0)


def build_noise_scheduler(num_train_timesteps: int, beta_schedule: str, prediction_type: str):
    """The training noise schedule (Stable Diffusion's scaled-linear betas by default)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012,
                         beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=False)


def vae_from_config(model_cfg, resolution: int):
    v = model_cfg.vae
    return build_vae(1, v.block_out_channels, v.layers_per_block, v.latent_channels, v.norm_num_groups, resolution)


def unet_from_config(model_cfg, sample_size: int, in_channels: int, cross_attention_dim: int | None = None):
    u = model_cfg.unet
    return build_unet(sample_size, in_channels, u.block_out_channels, u.layers_per_block, u.attention_head_dim,
                      cross_attention_dim or u.cross_attention_dim, u.norm_num_groups, u.attention_levels)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def load_pretrained(path_or_id: str) -> dict:
    """Components of a diffusers Stable Diffusion folder or hub id (offline uses the local cache)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    p = Path(path_or_id)
    if p.exists() and not (p / "model_index.json").is_file():
        raise FileNotFoundError(f"'{p}' is not a diffusers pipeline folder (no model_index.json); pass a Stable Diffusion folder or hub id")
    kw = {}
    out = {
        "unet": UNet2DConditionModel.from_pretrained(path_or_id, subfolder="unet", **kw),
        "text_encoder": CLIPTextModel.from_pretrained(path_or_id, subfolder="text_encoder", **kw),
        "tokenizer": AutoTokenizer.from_pretrained(path_or_id, subfolder="tokenizer", **kw),
    }
    try:
        out["vae"] = AutoencoderKL.from_pretrained(path_or_id, subfolder="vae", **kw)
    except (OSError, EnvironmentError):
        out["vae"] = None  # pixel-space export of ours
    return out
