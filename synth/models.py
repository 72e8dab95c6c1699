"""Model builders: the one place that turns config sections into diffusers/transformers objects.

Builders take plain keyword arguments (never the config object) so library code
can be used without our config schema; :func:`build_from_config` bridges the two.

Folders of weights synth did not just write (``model.pretrained``, exports, autoencoders) are
checked before they load: pickle weights refused unless allowed, safetensors complete, hashes
equal to what an export records (:func:`digest_weights`), and every failure one line.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from synth.messages import first_line


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
    """AutoencoderKL with 2**(len(blocks)-1) downsampling: (B, C, H, W) <-> (B, c, H/f, W/f)."""
    from diffusers import AutoencoderKL

    n = len(block_out_channels)
    return AutoencoderKL(in_channels=in_channels, out_channels=in_channels,
                         down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                         block_out_channels=tuple(block_out_channels), layers_per_block=layers_per_block,
                         latent_channels=latent_channels, norm_num_groups=norm_num_groups, sample_size=sample_size,
                         scaling_factor=1.0)


def discriminator_layers(resolution: int) -> int:
    """Strided layers of :class:`PatchDiscriminator` for ``resolution`` px: 3 (70 px receptive field, as in
    pix2pix and the latent-diffusion autoencoders) down to 1 for small images (at least 8 px: a 2x2 grid there)."""
    return max(1, min(3, resolution.bit_length() - 4))


class PatchDiscriminator(torch.nn.Module):
    """PatchGAN critic: (B, C, H, W) in [-1, 1] -> (B, 1, h, w) logits, one per overlapping patch.

    GroupNorm, not BatchNorm: each sample's logits depend on that sample only, so a batch split across
    processes or accumulation steps trains the same critic.
    """

    def __init__(self, in_channels: int = 1, width: int = 64, layers: int = 3):
        super().__init__()
        nn = torch.nn
        mods: list[nn.Module] = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = width
        for i in range(1, layers + 1):
            nc = width * min(2 ** i, 8)
            stride = 2 if i < layers else 1
            mods += [nn.Conv2d(c, nc, 4, stride, 1, bias=False), nn.GroupNorm(min(32, nc // 16), nc), nn.LeakyReLU(0.2)]
            c = nc
        mods.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.body = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def build_noise_scheduler(num_train_timesteps: int, beta_schedule: str, prediction_type: str):
    """The training noise schedule (Stable Diffusion's scaled-linear betas by default)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012,
                         beta_schedule=beta_schedule, prediction_type=prediction_type, clip_sample=False)


def vae_from_config(model_cfg, resolution: int, channels: int = 1):
    """A scratch autoencoder for ``channels``-channel images (1 grey, 3 RGB) from ``model.vae``."""
    v = model_cfg.vae
    return build_vae(channels, v.block_out_channels, v.layers_per_block, v.latent_channels, v.norm_num_groups, resolution)


def unet_from_config(model_cfg, sample_size: int, in_channels: int, cross_attention_dim: int | None = None):
    u = model_cfg.unet
    return build_unet(sample_size, in_channels, u.block_out_channels, u.layers_per_block, u.attention_head_dim,
                      cross_attention_dim or u.cross_attention_dim, u.norm_num_groups, u.attention_levels)


def count_parameters(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------
# Loading weights from folders we did not write (pretrained models, exports, autoencoders)

# File types that hold pickled Python objects: loading one can run arbitrary code.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# A safetensors header is JSON of at most 100 MB (the library's own limit).
MAX_SAFETENSORS_HEADER = 100_000_000


def pickle_weight_files(folder: str | Path) -> list[Path]:
    """Files under ``folder`` whose suffix marks pickle weights (``*.bin``, ``*.pt``, ``*.ckpt`` ...), sorted."""
    return sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in PICKLE_SUFFIXES and p.is_file())


def refuse_pickle(folder: str | Path, allow: bool, how_to_allow: str, error=None) -> None:
    """Raise ``error`` (default :class:`synth.config.ConfigError`) naming the first pickle weight file in
    ``folder``, unless ``allow``: pickle can run code when it is loaded."""
    if allow:
        return
    found = pickle_weight_files(folder)
    if not found:
        return
    from synth.config import ConfigError

    more = f" (and {len(found) - 1} more pickle file(s))" if len(found) > 1 else ""
    raise (error or ConfigError)(
        f"'{found[0]}'{more} holds pickle weights, which can run code when loaded; convert it to safetensors "
        f"or delete it, or {how_to_allow} if you trust where it came from")


def safetensors_problem(path: str | Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (empty, truncated, damaged header), or None.

    Reads the header only (8 bytes of length + JSON) and the file size: cheap for any file size.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        return "is empty (0 bytes)"
    if size < 8:
        return f"is truncated ({size} bytes, shorter than a safetensors header)"
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        if n > MAX_SAFETENSORS_HEADER:
            return "has a damaged header (its first 8 bytes are not a safetensors header length)"
        if 8 + n > size:
            return f"is truncated inside its header ({size} bytes; the header alone needs {8 + n})"
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, ValueError):
        return "has a damaged header (not JSON)"
    if not isinstance(header, dict):
        return "has a damaged header (not a JSON object)"
    try:
        end = max((int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "has a damaged header (bad tensor entries)"
    if 8 + n + end > size:
        return f"is truncated ({size} bytes; its header needs {8 + n + end})"
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as e:
        return f"is damaged ({str(e).splitlines()[0]})"
    return None


def check_safetensors_files(folder: str | Path, fix: str, error=None) -> None:
    """Raise ``error`` (default ConfigError) for the first ``*.safetensors`` under ``folder`` that is
    empty, truncated or has a damaged header: '<file> is truncated ...; <fix>'."""
    from synth.config import ConfigError

    for f in sorted(Path(folder).rglob("*.safetensors")):
        problem = safetensors_problem(f)
        if problem:
            raise (error or ConfigError)(f"'{f}' {problem}; {fix}")


@dataclass
class WeightsDigest:
    """SHA-256 of the ``*.safetensors`` files of a folder: ``sha256`` over all of them (the value an export
    records as ``weights_sha256``), ``files`` per file (relative path -> hex), and each file's
    (size, mtime_ns) when it was hashed (to notice a file changing while it is loaded)."""

    sha256: str
    files: dict[str, str]
    stats: dict[str, tuple[int, int]]


def digest_weights(folder: str | Path) -> WeightsDigest:
    """Hash every ``*.safetensors`` file under ``folder`` once (sorted by path; each relative path, then its
    bytes, feed the combined hash).  The one definition behind exports' ``weights_sha256``."""
    folder = Path(folder)
    total, files, stats = hashlib.sha256(), {}, {}
    for f in sorted(folder.rglob("*.safetensors")):
        rel = str(f.relative_to(folder))
        total.update(rel.encode())
        one = hashlib.sha256()
        with open(f, "rb") as fh:
            st = os.fstat(fh.fileno())
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                total.update(chunk)
                one.update(chunk)
        files[rel], stats[rel] = one.hexdigest(), (st.st_size, st.st_mtime_ns)
    return WeightsDigest(total.hexdigest(), files, stats)


def changed_since(digest: WeightsDigest, folder: str | Path) -> list[str]:
    """Relative paths of hashed files whose size or modification time differs now (or that are gone)."""
    out = []
    for rel, (size, mtime) in digest.stats.items():
        try:
            st = (Path(folder) / rel).stat()
        except FileNotFoundError:
            out.append(rel)
            continue
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            out.append(rel)
    return out


def weights_mismatch(digest: WeightsDigest, recorded_sha256, recorded_files=None) -> tuple[str | None, str] | None:
    """How hashed weights differ from a record: (relative file, 'is missing' / 'was modified or damaged after
    export' / 'was added after export'), or (None, ...) when only the combined hash is recorded; None if equal."""
    if isinstance(recorded_files, dict):
        for rel in sorted(recorded_files):
            if rel not in digest.files:
                return rel, "is missing"
            if digest.files[rel] != recorded_files[rel]:
                return rel, "was modified or damaged after export"
        for rel in sorted(set(digest.files) - set(recorded_files)):
            return rel, "was added after export"
    if digest.sha256 != recorded_sha256:
        return None, "were modified or damaged after export"
    return None


def read_error_message(e: OSError, path: str | Path) -> str:
    """One line for an OSError met while reading ``path``: the file it names and the system's reason."""
    return f"cannot read '{e.filename or path}': {e.strerror or first_line(e)}; check its permissions and that the disk is readable"


def verify_weights(folder: str | Path, recorded_sha256: str | None, recorded_files: dict | None, *, allow_pickle: bool,
                   how_to_allow: str, fix: str, error, record_name: str) -> WeightsDigest | None:
    """Before loading weights from ``folder``: no pickle weights (unless ``allow_pickle``), every safetensors
    file complete, and (when a hash is recorded) their SHA-256 equal to the record.  Returns the digest (each
    file read once; None without a record) for :func:`changed_since`; one-line ``error`` otherwise."""
    folder = Path(folder)
    try:
        refuse_pickle(folder, allow_pickle, how_to_allow, error)
        check_safetensors_files(folder, fix, error)
        digest = digest_weights(folder) if recorded_sha256 else None
    except OSError as e:
        raise error(read_error_message(e, folder)) from None
    bad = weights_mismatch(digest, recorded_sha256, recorded_files) if digest is not None else None
    if bad:
        rel, problem = bad
        if rel is None:
            raise error(f"the weights in '{folder}' ({', '.join(digest.files) or 'none'}) {problem} (their SHA-256 "
                        f"differs from {record_name}); {fix}")
        raise error(f"'{folder / rel}' {problem} (SHA-256 differs from {record_name}); {fix}")
    return digest


def load_errors() -> tuple[type[BaseException], ...]:
    """What ``from_pretrained`` raises for a damaged or incompatible folder (never out-of-memory, which
    the CLI reports on its own)."""
    from safetensors import SafetensorError

    return (OSError, ValueError, RuntimeError, KeyError, TypeError, NotImplementedError, SafetensorError)


def load_part(load, what: str, fix: str, error=None, **kwargs):
    """``load(**kwargs)`` (a ``from_pretrained``); a failure becomes one line ``cannot load <what>: ...; <fix>``
    as ``error`` (default ConfigError).  Out-of-memory passes through."""
    from synth.config import ConfigError

    try:
        return load(**kwargs)
    except torch.OutOfMemoryError:
        raise
    except load_errors() as e:
        raise (error or ConfigError)(f"cannot load {what}: {first_line(e)}; {fix}") from None


def _pretrained_kwargs(allow_pickle: bool) -> dict:
    """``use_safetensors=True`` unless pickle is allowed (then safetensors is still preferred where present)."""
    return {"use_safetensors": None if allow_pickle else True}


# ---------------------------------------------------------------------------
# Pretrained models (model.pretrained)

PRETRAINED_PICKLE_HINT = "set model.allow_pickle=true"


def allows_pickle(model_cfg) -> bool:
    """``model.allow_pickle`` of a config (False where the config has no such key)."""
    return bool(getattr(model_cfg, "allow_pickle", False))


def check_weights_folder(folder: Path, what: str, allow_pickle: bool, fix: str) -> None:
    """A local folder of weights we did not write: readable, no pickle weights (unless allowed),
    every ``*.safetensors`` complete.  One-line :class:`synth.config.ConfigError` otherwise."""
    from synth.config import ConfigError

    try:
        refuse_pickle(folder, allow_pickle, PRETRAINED_PICKLE_HINT)
        check_safetensors_files(folder, fix)
    except OSError as e:
        raise ConfigError(f"cannot read {what} '{e.filename or folder}': {e.strerror or first_line(e)}; "
                          f"check its permissions") from None


def _local_pretrained(path_or_id: str, allow_pickle: bool) -> bool:
    """True for a local folder (checked: a diffusers pipeline, no pickle, complete safetensors); False for a hub id."""
    from synth.config import ConfigError

    p = Path(path_or_id)
    try:
        if not p.exists():
            return False
        if not p.is_dir():
            raise ConfigError(f"model.pretrained '{p}' is a file, not a diffusers folder; pass a Stable Diffusion "
                              f"folder (with model_index.json) or hub id")
        if not (p / "model_index.json").is_file():
            raise ConfigError(f"model.pretrained '{p}' is not a diffusers pipeline folder (no model_index.json); "
                              f"pass a Stable Diffusion folder or hub id")
    except OSError as e:
        raise ConfigError(f"cannot read model.pretrained '{e.filename or p}': {e.strerror or first_line(e)}; "
                          f"check its permissions") from None
    check_weights_folder(p, "model.pretrained", allow_pickle, "restore or re-download the pretrained model")
    return True


def load_pretrained(path_or_id: str, allow_pickle: bool = False) -> dict:
    """Components of a diffusers Stable Diffusion folder or hub id (offline uses the local cache).

    Weights load from safetensors only (``use_safetensors=True``); a local folder holding pickle weights
    (``*.bin``, ``*.ckpt`` ...) is refused unless ``allow_pickle`` (``model.allow_pickle``), and then
    safetensors are still preferred where both exist.  Damaged folders raise one-line ConfigErrors.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    local = _local_pretrained(path_or_id, allow_pickle)
    kw = _pretrained_kwargs(allow_pickle)
    if local:
        kw["local_files_only"] = True
    fix = f"check model.pretrained '{path_or_id}' (a diffusers Stable Diffusion folder or hub id)"

    def part(load, sub: str, **extra):
        return load_part(load, f"{sub} of model.pretrained '{path_or_id}'", fix,
                         pretrained_model_name_or_path=path_or_id, subfolder=sub, **extra)

    out = {
        "unet": part(UNet2DConditionModel.from_pretrained, "unet", **kw),
        "text_encoder": part(CLIPTextModel.from_pretrained, "text_encoder", **kw),
        "tokenizer": part(AutoTokenizer.from_pretrained, "tokenizer", **({"local_files_only": True} if local else {})),
    }
    if local:  # a folder without vae/ is a pixel-space export of ours; a damaged vae/ is an error
        out["vae"] = part(AutoencoderKL.from_pretrained, "vae", **kw) if (Path(path_or_id) / "vae").is_dir() else None
    else:
        try:
            out["vae"] = AutoencoderKL.from_pretrained(path_or_id, subfolder="vae", **kw)
        except (OSError, EnvironmentError):
            out["vae"] = None
    return out


def load_pretrained_vae(path_or_id: str, allow_pickle: bool = False):
    """The ``AutoencoderKL`` of ``model.pretrained`` for the autoencoder stage: a pipeline folder's ``vae/``,
    an autoencoder folder itself, or a hub id; checked and loaded like :func:`load_pretrained`."""
    from diffusers import AutoencoderKL

    from synth.config import ConfigError

    p = Path(path_or_id)
    kw = _pretrained_kwargs(allow_pickle)
    try:
        local = p.exists()
        if local and not p.is_dir():
            raise ConfigError(f"model.pretrained '{p}' is a file, not a diffusers folder; pass an autoencoder or "
                              f"Stable Diffusion folder or hub id")
        sub = "vae" if not local or (p / "vae").is_dir() else None
    except OSError as e:
        raise ConfigError(f"cannot read model.pretrained '{e.filename or p}': {e.strerror or first_line(e)}; "
                          f"check its permissions") from None
    if local:
        check_weights_folder(p, "model.pretrained", allow_pickle,
                             "restore or re-download the pretrained model")
        kw["local_files_only"] = True
    return load_part(AutoencoderKL.from_pretrained, f"the autoencoder of model.pretrained '{p}'",
                     f"check model.pretrained '{p}' (an autoencoder or Stable Diffusion folder or hub id)",
                     pretrained_model_name_or_path=path_or_id, subfolder=sub, **kw)
