"""Foundation, then adaptation (RoentGen's recipe at our scale): ``model.pretrained`` may be a synth export.

Pre-train on a large pool (``data.unlabelled`` with ``train.unlabelled_share=1``, or another data set with other
labels), then fine-tune on the labelled subset with ``model.pretrained=<that run>``:

* the export must be of the same family (a bridge export for ``synth train bridge``, a text model for
  ``synth train ldm``), resolution, codec and channel count: anything else is one line, nothing written;
* a bridge's class embeddings are matched by name (case-insensitive); classes the export lacks are added,
  initialised from its null embedding (the unconditional direction the pool taught), with a note;
  ``model.class_init=fresh`` re-initialises every class that way; the same number of classes under all-new
  names is refused as a rename (it would keep the old meanings under new names);
* ``train.new_parts_lr`` trains the class-embedding table at its own rate;
* the fine-tuned export records its foundation (path, model id, weights hash and what it was trained on).
"""
from __future__ import annotations

from pathlib import Path

import torch

from synth.config import Config, ConfigError

FRESH_HINT = "model.class_init=fresh"


def foundation_meta(cfg: Config, trainer: str) -> dict | None:
    """``synth.json`` of ``model.pretrained`` when it is a synth export (or run folder), checked against this
    run's family, resolution, codec and channels; None when it is not a synth export."""
    from synth.samplers.artifact import ARTIFACT_FILE, read_artifact

    p = Path(str(cfg.model.pretrained or "")).expanduser()
    if not cfg.model.pretrained or not p.is_dir() or not ((p / ARTIFACT_FILE).is_file()
                                                          or (p / "export" / ARTIFACT_FILE).is_file()):
        if cfg.model.pretrained and trainer == "bridge":  # a bridge starts only from a synth bridge export
            raise ConfigError(f"model.pretrained '{p}' is not a synth bridge export (no {ARTIFACT_FILE} in it or in its "
                              f"export/); pass the run folder or export of a finished 'synth train bridge', or unset it")
        return None
    meta = read_artifact(p)
    kind = meta.get("kind", "ldm")
    want = "bridge" if trainer == "bridge" else "ldm"
    if kind != want:
        other = "synth train bridge" if kind == "bridge" else "synth train ldm"
        raise ConfigError(f"model.pretrained '{p}' is an export of 'synth train {kind}'; 'synth train {trainer}' fine-tunes "
                          f"{want} exports "
                          f"(fine-tune this one with '{other}')")
    where = f"model.pretrained '{p}'"
    if int(meta["resolution"]) != cfg.data.resolution:
        raise ConfigError(f"{where} was trained at {meta['resolution']} px but data.resolution={cfg.data.resolution}; "
                          f"set data.resolution={meta['resolution']} or pre-train at {cfg.data.resolution} px")
    if meta.get("codec", "pixel") != cfg.model.codec:
        raise ConfigError(f"{where} works in the {meta.get('codec')} codec's space but model.codec={cfg.model.codec}; "
                          f"set model.codec={meta.get('codec')} (its codec comes with it)")
    if trainer == "ldm" and meta.get("family", "diffusion") != cfg.train.path:
        raise ConfigError(f"{where} is a {meta.get('family', 'diffusion')} model but train.path={cfg.train.path}; "
                          f"set train.path={meta.get('family', 'diffusion')}")
    return meta


def check_foundation_channels(meta: dict, channels: int) -> None:
    if int(meta.get("channels", 1)) != channels:
        word = {1: "grey", 3: "colour"}
        raise ConfigError(f"model.pretrained '{meta['path']}' was trained on {word.get(int(meta.get('channels', 1)))} "
                          f"images but this data is {word.get(channels)}; set data.channels={meta.get('channels', 1)} "
                          f"or pre-train on {word.get(channels)} images")


def foundation_record(meta: dict | None) -> dict | None:
    """What a fine-tuned export keeps about its foundation (evaluation reads what the foundation saw)."""
    if meta is None:
        return None
    return {"path": meta["path"], "model_id": meta.get("model_id"), "weights_sha256": meta.get("weights_sha256"),
            "classes": list(meta.get("domains") or meta.get("labels", {}).get("classes", [])),
            "train_subset": meta.get("train_subset")}


def class_rows(old: list[str], new: list[str], class_init: str) -> tuple[list[int | None], list[str]]:
    """For each new class, the export's row it starts from (None: from the null row), and notes.

    Raises ConfigError for a rename: as many classes as the export under entirely different names."""
    lowered = [c.lower() for c in old]
    if class_init == "fresh":
        return [None] * len(new), [f"model.class_init=fresh: every class embedding ({', '.join(new)}) starts from "
                                   f"the pretrained null embedding"]
    rows = [lowered.index(c.lower()) if c.lower() in lowered else None for c in new]
    if len(old) == len(new) and len(old) > 1 and all(r is None for r in rows):
        raise ConfigError(f"model.pretrained's classes {old} and this data's {new} are as many under other names: "
                          f"reusing them by position would keep the old meanings; name them as the export does "
                          f"(labels.classes={old}) or set {FRESH_HINT} to learn every class embedding anew")
    notes = []
    added = [c for c, r in zip(new, rows) if r is None]
    if added:
        notes.append(f"model.pretrained has no class {', '.join(repr(c) for c in added)}: "
                     f"{'its embedding starts' if len(added) == 1 else 'their embeddings start'} from the pretrained "
                     f"null embedding (classes kept: {', '.join(c for c, r in zip(new, rows) if r is not None) or 'none'})")
    dropped = [c for c in old if c.lower() not in [n.lower() for n in new]]
    if dropped and not added:
        notes.append(f"model.pretrained's classes {dropped} are not in this data; their embeddings are dropped")
    return rows, notes


def adapt_bridge_unet(unet, old: list[str], new: list[str], class_init: str) -> tuple[torch.nn.Module, list[str]]:
    """The pretrained class-conditional UNet with one embedding row per ``new`` class plus the null row.

    unet.class_embedding: (len(old) + 1, D) -> (len(new) + 1, D); every other weight is kept."""
    from diffusers import UNet2DModel

    rows, notes = class_rows(old, new, class_init)
    if rows == list(range(len(old))) and len(new) == len(old):
        return unet, notes
    table = unet.class_embedding.weight.detach()
    null = table[len(old)]
    fresh = torch.stack([table[r] if r is not None else null for r in rows] + [null])
    adapted = UNet2DModel.from_config({**unet.config, "num_class_embeds": len(new) + 1})
    state = {k: v for k, v in unet.state_dict().items() if not k.startswith("class_embedding.")}
    missing, unexpected = adapted.load_state_dict(state, strict=False)
    assert missing == ["class_embedding.weight"] and not unexpected, (missing, unexpected)
    with torch.no_grad():
        adapted.class_embedding.weight.copy_(fresh)
    return adapted, notes


def never_saw_labels(meta: dict) -> bool:
    """Whether an export was trained on its unlabelled pool only (``train.unlabelled_share=1``)."""
    pool = (meta.get("train_subset") or {}).get("unlabelled") or {}
    return float(pool.get("share", 0.0)) >= 1.0


def load_bridge_foundation(meta: dict, domains: list[str], cfg: Config, channels: int, say):
    """(codec, UNet) of a bridge export to fine-tune on ``domains``; notes go to ``say``."""
    from synth.samplers.bridge import BridgeGenerator

    check_foundation_channels(meta, channels)
    gen = BridgeGenerator.from_export(meta["path"], allow_pickle=bool(getattr(cfg.model, "allow_pickle", False)))
    class_init = cfg.model.class_init
    if never_saw_labels(meta) and class_init != "fresh":
        # its class rows are the random initial ones: the null row is what the pool taught
        say(f"model.pretrained '{meta['path']}' never saw a labelled image (train.unlabelled_share=1): every class "
            f"embedding starts from its null embedding")
        class_init = "fresh"
    unet, notes = adapt_bridge_unet(gen.unet.train(), list(gen.domains), domains, class_init)
    for note in notes:
        say(note)
    say(f"fine-tuning the bridge export '{meta['path']}' ({meta.get('model_id')}); model.unet settings are the export's")
    return gen.codec, unet


def new_parts_lrs(cfg: Config, meta: dict | None, say=None) -> dict[str, float]:
    """``Task.lr_overrides`` of a fine-tuned bridge: the class-embedding table at ``train.new_parts_lr``."""
    if cfg.train.new_parts_lr is not None and meta is None and say is not None:
        say("note: train.new_parts_lr applies when fine-tuning a synth bridge export (model.pretrained); ignored here")
    if meta is None or cfg.train.new_parts_lr is None:
        return {}
    return {"unet.class_embedding.": cfg.train.new_parts_lr}


__all__ = ["new_parts_lrs", "foundation_meta", "foundation_record", "adapt_bridge_unet", "class_rows", "load_bridge_foundation",
           "check_foundation_channels"]
