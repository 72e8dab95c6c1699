"""The export format, written and read in one place: an export folder (``synth.json`` + safetensors parts).

Writing (the trainers): :func:`fresh_export_dir`, then the family's weights, then :func:`finish_export`
(labels, config, ``synth.json`` with the weight hashes, the model card; an atomic replace).  Reading: checked
before any weight is used.  ``read_artifact`` finds and validates ``synth.json``; ``verify_export`` hashes the weights;
``load_component`` / ``finish_loading`` load a part and refuse one that changed meanwhile.  The LDM and bridge
generators both load through here, so neither needs the other.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from synth.errors import SynthError
from synth.labels import Condition, LabelSchema
from synth.messages import show
from synth.cards import model_card, write_card
from synth.config import config_to_dict, save_config
from synth.io import atomic_replace_dir, atomic_write_json, check_ours, fresh_tmp_dir, remove_stale_tmp_dirs
from synth.models import (WeightsDigest, changed_since, digest_weights, first_line, load_part, read_error_message,
                          verify_weights)

ARTIFACT_FILE = "synth.json"
FORMAT_VERSION = 1  # the newest synth.json format this version reads
MAX_ARTIFACT_BYTES = 64 << 20  # a synth.json is a few KB; a huge one is not ours
KINDS = ("ldm", "bridge")
PICKLE_HINT = "pass --allow-pickle (allow_pickle=True in Python)"


class ArtifactError(SynthError, ValueError):
    """A model folder that is missing, damaged or not a synth export; the message is one line naming the fix."""

    def __init__(self, message: object = ""):
        # messages quote paths and file contents, which may hold line breaks
        super().__init__("\\n".join(str(message).splitlines()))


@dataclass
class SampleBatch:
    """``images``: uint8 (B, 1, H, W); one condition and seed per image; the settings used."""

    images: torch.Tensor
    conditions: list[Condition]
    seeds: list[int]
    settings: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])


# ---------------------------------------------------------------------------
# Reading and checking an export


_os_message = read_error_message


def _fix(kind: str = "ldm") -> str:
    return f"re-export the model (run the same 'synth train {kind}' command again) or restore the file"


def _run_stage(run_json: Path) -> str:
    """The stage a run folder's ``run.json`` records ('ldm', 'bridge', ...), or 'ldm' when unreadable."""
    try:
        stage = json.loads(run_json.read_text()).get("stage")
    except (OSError, ValueError, AttributeError):
        return "ldm"
    return stage if isinstance(stage, str) else "ldm"


def _not_an_export(p: Path) -> ArtifactError:
    """Why folder ``p`` (holding no synth.json, nor export/synth.json) is not a generator export."""
    if any((d / "metrics.json").is_file() and (d / "vae").is_dir() for d in (p, p / "export")):
        return ArtifactError(f"'{p}' holds an autoencoder export, not a generator; use it as model.autoencoder of "
                             f"'synth train ldm' or 'synth train bridge'")
    if (p / "run.json").is_file():
        stage = _run_stage(p / "run.json")
        if (p / "export").is_dir():
            return ArtifactError(f"'{p / 'export'}' has no {ARTIFACT_FILE}: its export was interrupted or damaged; "
                                 f"run 'synth train {stage} --run {p}' again to re-export it")
        return ArtifactError(f"'{p}' is a run folder of 'synth train {stage}' without an export (its training has not "
                             f"finished); run 'synth train {stage} --run {p}' again to finish it, then pass {p / 'export'}")
    missing = [n for n in (ARTIFACT_FILE, "model_index.json", "unet") if not (p / n).exists()]
    return ArtifactError(f"'{p}' is not a synth export (missing {', '.join(missing)}); "
                         f"pass <run>/export written by 'synth train ldm'")


def export_folder(path: str | Path) -> Path:
    """The export folder ``path`` names: itself, or ``<run>/export`` for a run folder; clear errors otherwise."""
    p = Path(path)
    if not p.exists():
        raise ArtifactError(f"model folder '{p}' does not exist; pass the export folder of a run (<run>/export)")
    if not p.is_dir():
        hint = (f"pass its folder '{p.parent}'" if p.name == ARTIFACT_FILE
                else "pass the export folder of a run (<run>/export)")
        raise ArtifactError(f"'{p}' is a file, not a model folder; {hint}")
    if (p / ARTIFACT_FILE).is_file():
        return p
    if (p / "export" / ARTIFACT_FILE).is_file():
        return p / "export"
    raise _not_an_export(p)


def _load_meta(f: Path) -> dict:
    """``synth.json`` parsed: a JSON object of sane size, or a one-line ArtifactError."""
    size = f.stat().st_size
    if size > MAX_ARTIFACT_BYTES:
        raise ArtifactError(f"'{f}' is {size} bytes, far too large for a {ARTIFACT_FILE}; {_fix()}")
    try:
        meta = json.loads(f.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ArtifactError(f"'{f}' is not valid JSON (not UTF-8 text); {_fix()}") from None
    except ValueError as e:
        raise ArtifactError(f"'{f}' is not valid JSON ({first_line(e)}); {_fix()}") from None
    except RecursionError:
        raise ArtifactError(f"'{f}' is not a {ARTIFACT_FILE} (JSON nested too deeply); {_fix()}") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"'{f}' holds a JSON {type(meta).__name__}, not an object; {_fix()}")
    return meta


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_sha256(v) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def check_meta(meta: dict, f: Path) -> None:
    """Every field the loaders and samplers read has the type they need; the format is not newer than ours."""
    version = meta.get("format_version", 1)
    kind = meta.get("kind", "ldm")

    def bad(key: str, expected: str):
        got = "missing" if key not in meta else show(meta[key])
        raise ArtifactError(f"'{f}': '{key}' is {got}, expected {expected}; {_fix(kind if kind in KINDS else 'ldm')}")

    if not _is_int(version) or version < 1:
        bad("format_version", "a positive integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"'{f}' has format_version {version}, newer than this synth reads ({FORMAT_VERSION}); "
                            f"upgrade synth to load it")
    if not isinstance(kind, str):
        bad("kind", "'ldm' or 'bridge'")
    if kind not in KINDS:
        raise ArtifactError(f"'{f.parent}' holds a '{kind}' model, which this version cannot load; upgrade synth")
    if meta.get("codec") not in ("pixel", "vae"):
        bad("codec", "'pixel' or 'vae'")
    if not _is_int(meta.get("resolution")) or not 1 <= meta["resolution"] <= 65536:
        bad("resolution", "a positive integer")
    if "channels" in meta and meta["channels"] not in (1, 3):
        bad("channels", "1 (grey) or 3 (RGB)")
    if not isinstance(meta.get("labels"), dict):
        bad("labels", "a label schema (JSON object)")
    try:
        LabelSchema.from_json(meta["labels"])
    except (TypeError, ValueError) as e:
        bad("labels", f"a valid label schema ({first_line(e)})")
    if not _is_sha256(meta.get("weights_sha256")):
        bad("weights_sha256", "the 64-hex-digit SHA-256 of the weights")
    files = meta.get("weights_files")
    if files is not None and not (isinstance(files, dict)
                                  and all(isinstance(k, str) and _is_sha256(v) for k, v in files.items())):
        bad("weights_files", "an object of file -> SHA-256")
    if "default_sampling" in meta and not isinstance(meta["default_sampling"], dict):
        bad("default_sampling", "a JSON object")
    if "model_id" in meta and not isinstance(meta["model_id"], str):
        bad("model_id", "a string")
    if kind == "ldm":
        if meta.get("prediction_type") not in ("epsilon", "v_prediction", "sample"):
            bad("prediction_type", "'epsilon', 'v_prediction' or 'sample'")
        if not _is_int(meta.get("max_length")) or meta["max_length"] < 1:
            bad("max_length", "a positive integer")
    else:
        doms = meta.get("domains")
        if not isinstance(doms, list) or not doms or not all(isinstance(d, str) for d in doms):
            bad("domains", "a non-empty list of domain names")


def _has_weights(folder: Path, name: str) -> bool:
    """``name`` (a safetensors file) or its sharded form (``name.index.json``) is in ``folder``."""
    return (folder / name).is_file() or (folder / f"{name}.index.json").is_file()


def check_files(p: Path, meta: dict) -> None:
    """Every file or folder the loaders read is there: labels, config, each component's config and weights."""
    kind = meta.get("kind", "ldm")
    parts = {"unet": ("config.json", "diffusion_pytorch_model.safetensors")}
    if kind == "ldm":
        parts.update({"text_encoder": ("config.json", "model.safetensors"), "tokenizer": (),
                      "scheduler": ("scheduler_config.json",)})
    if meta["codec"] == "vae":
        parts["vae"] = ("config.json", "diffusion_pytorch_model.safetensors")
    for name in ("labels.json", "config.yaml"):
        if not (p / name).is_file():
            raise ArtifactError(f"export '{p}' is incomplete: '{name}' is missing; {_fix(kind)}")
    for sub, files in parts.items():
        if not (p / sub).is_dir():
            raise ArtifactError(f"export '{p}' is incomplete: the '{sub}' folder is missing; {_fix(kind)}")
        for name in files:
            there = _has_weights(p / sub, name) if name.endswith(".safetensors") else (p / sub / name).is_file()
            if not there:
                raise ArtifactError(f"export '{p}' is incomplete: '{sub}/{name}' is missing; {_fix(kind)}")


def read_artifact(path: str | Path) -> dict:
    """The artifact's ``synth.json`` (codec, resolution, schema, ...), checked; ``path`` may be the run folder.

    Cheap (no weights are read).  Missing, unreadable, malformed, newer-format or incomplete
    exports raise a one-line :class:`ArtifactError`.
    """
    p = Path(path)
    try:
        p = export_folder(p)
        meta = _load_meta(p / ARTIFACT_FILE)
        check_meta(meta, p / ARTIFACT_FILE)
        check_files(p, meta)
    except OSError as e:
        raise ArtifactError(_os_message(e, p)) from None
    meta["path"] = str(p)
    return meta


def verify_export(meta: dict, allow_pickle: bool = False) -> WeightsDigest:
    """Before loading the weights of the export ``meta`` describes: no pickle weights (unless allowed),
    every safetensors file complete, and their SHA-256 equal to what ``synth.json`` records.

    Returns the digest (hashed once here); :func:`finish_loading` checks nothing changed meanwhile.
    """
    return verify_weights(meta["path"], meta["weights_sha256"], meta.get("weights_files"), allow_pickle=allow_pickle,
                          how_to_allow=PICKLE_HINT, fix=_fix(meta.get("kind", "ldm")), error=ArtifactError,
                          record_name=f"{ARTIFACT_FILE}'s weights_sha256")


def load_component(meta: dict, load, sub: str, **kwargs):
    """``load(<export>/<sub>, **kwargs)`` (a ``from_pretrained``, offline); failures become one-line ArtifactErrors."""
    p = Path(meta["path"])
    return load_part(load, f"'{p / sub}'", _fix(meta.get("kind", "ldm")), ArtifactError,
                     pretrained_model_name_or_path=p / sub, local_files_only=True, **kwargs)


def finish_loading(generator, meta: dict, digest: WeightsDigest):
    """Refuse weights that changed while they loaded; record the verified hash on the generator
    (``weights_sha256``: what the sampled set's manifest should name)."""
    p = Path(meta["path"])
    changed = changed_since(digest, p)
    if changed:
        raise ArtifactError(f"'{p / changed[0]}' changed while it was loaded; run again once nothing writes to the export")
    generator.weights_sha256 = digest.sha256
    return generator


# ---------------------------------------------------------------------------
# Writing (the same format, from the trainers)


def weights_hash(folder: Path) -> str:
    """SHA-256 over every ``*.safetensors`` file in ``folder`` (sorted by path): synth.json's ``weights_sha256``."""
    return digest_weights(folder).sha256


def weights_record(folder: Path) -> dict:
    """What an export records about its weights, for :func:`synth.samplers.generator.verify_export` to check at load:
    ``weights_sha256`` (all files together) and ``weights_files`` (relative path -> SHA-256, so a changed
    file can be named).  Read once."""
    d = digest_weights(folder)
    return {"weights_sha256": d.sha256, "weights_files": d.files}


def fresh_export_dir(out: Path) -> Path:
    """A new temp folder beside ``out``, after checking that an existing ``out`` is an export synth wrote
    (a run folder may be a user's own folder: ``--run .``); checked before writing, not after."""
    check_ours(out, ARTIFACT_FILE, "export")
    remove_stale_tmp_dirs(out)
    return fresh_tmp_dir(out)


def finish_export(tmp: Path, out: Path, kind: str, codec, cfg, schema, train_subset: dict | None, family: dict,
                   sampling: dict, training: dict | None = None) -> Path:
    """What every export writes after its weights: labels.json, config.yaml, synth.json (the common fields, the
    family's own, the default sampling, the weight hashes and ``training``: steps and the seconds they took, see
    ``synth.trainers.loop.training_record``), the model card; then ``tmp`` replaces ``out``."""
    schema.save(tmp / "labels.json")
    save_config(cfg, tmp / "config.yaml")
    meta = {"kind": kind, "format_version": 1, "codec": codec.kind, "resolution": cfg.data.resolution,
            "channels": codec.channels, **family, "labels": schema.to_json(), "default_sampling": sampling,
            "latent_scaling_factor": codec.scaling_factor if codec.kind == "vae" else 1.0, **weights_record(tmp),
            "config": config_to_dict(cfg), "train_subset": train_subset,
            **({"training": training} if training is not None else {})}
    meta["model_id"] = f"synth-{kind}-{meta['weights_sha256'][:12]}"
    atomic_write_json(tmp / ARTIFACT_FILE, meta)
    write_card(tmp, model_card(meta))
    atomic_replace_dir(tmp, out, marker=ARTIFACT_FILE)
    return out
