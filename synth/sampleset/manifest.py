"""``manifest.json`` of a sample set: written from the done records when a run ends (:func:`write_manifest`),
read and checked by every consumer (:func:`read_set_manifest`, :func:`set_classes`)."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from synth.cards import dataset_card, write_card
from synth.data import describe
from synth.io import atomic_write_json, atomic_write_text
from synth.labels import LabelSchema
from synth.sampleset.errors import RERUN, AugmentError, first_line
from synth.sampleset.layout import FREE_TEXT
from synth.sampleset.records import read_done


def _versions() -> dict:
    import diffusers
    import transformers

    from synth import __version__

    return {"synth": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__,
            "transformers": transformers.__version__, "numpy": np.__version__}


def merge_ranges(ranges: list[tuple[int, int]]) -> list[list[int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def write_manifest(out: Path, req, meta: dict, schema: LabelSchema, identity: dict, n: int) -> dict:
    """Compose ``metadata.jsonl`` (imagefolder) and ``manifest.json`` from the done records."""
    n_shards = math.ceil(n / req.shard_size)
    rows, ranges = [], []
    for s in range(n_shards):
        r = read_done(out, s)
        if r is None:
            continue
        rs = [row for row in r["rows"] if row["index"] < n]
        rows += rs
        ranges.append((r["start"], min(r["stop"], n)))
    counts: dict[str, int] = {}
    for row in rows:
        key = row["label"] if row["label"] is not None else "(free text)"
        counts[key] = counts.get(key, 0) + 1
    if req.format == "imagefolder":
        atomic_write_text(out / "metadata.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    settings = {k: v for k, v in identity.items() if k not in ("model_id", "weights_sha256")}
    settings["batch_size"] = req.batch_size  # recorded always; part of the identity on CUDA only
    manifest = {
        "format": req.format, "n_requested": n, "n_done": len(rows), "completed_ranges": merge_ranges(ranges),
        "channels": meta.get("channels", 1),
        "counts_per_label": counts, "model": {"path": req.model, "model_id": meta.get("model_id"),
                                              "weights_sha256": meta.get("weights_sha256"),
                                              "train_subset": meta.get("train_subset")},
        "settings": settings, "label_schema": schema.to_json(), "versions": _versions(), "shard_size": req.shard_size,
    }
    atomic_write_json(out / "manifest.json", manifest)
    write_card(out, dataset_card(manifest))
    return manifest
def read_set_manifest(path: str | os.PathLike) -> dict:
    """``<path>/manifest.json`` of a finished synth set; clear errors for anything else."""
    root = Path(path)
    if not root.is_dir():
        raise AugmentError(f"synthetic set folder '{root}' does not exist; pass the --out folder of "
                           f"`synth sample` or `synth translate`")
    file = root / "manifest.json"
    if not file.is_file():
        if (root / "metadata.jsonl").exists() or (root / ".synth").exists() or any(root.glob("shard-*")):
            raise AugmentError(f"set '{root}' has no manifest.json: it is still being written or was interrupted; "
                               f"{RERUN}")
        raise AugmentError(f"'{root}' is not a synth set (no manifest.json, metadata.jsonl or shard-* inside); "
                           f"pass the --out folder of `synth sample` or `synth translate`")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError) as e:  # ValueError: bad JSON or bytes; RecursionError: '[[[[...'
        raise AugmentError(f"manifest '{file}' is unreadable ({first_line(e)}); {RERUN}") from None
    if not isinstance(manifest, dict) or "label_schema" not in manifest or "n_requested" not in manifest:
        raise AugmentError(f"'{file}' is not a synth set manifest (no label_schema/n_requested); "
                           f"pass the --out folder of `synth sample` or `synth translate`")
    _check_manifest_fields(file, manifest)
    done, want = manifest.get("n_done", 0), manifest["n_requested"]
    if done < want:
        raise AugmentError(f"set '{root}' is incomplete ({done} of {want} images); {RERUN}")
    return manifest


def _check_manifest_fields(file: Path, manifest: dict) -> None:
    """The fields the readers use have the types synth writes: a hand-edited or foreign manifest may not
    (``int("abc")``, ``None["classes"]`` and a 10**15-shard loop are not one-line errors)."""
    def damaged(field: str, value, want: str) -> AugmentError:
        return AugmentError(f"'{file}': {field} is {describe(value)}, not {want}; the manifest is "
                            f"damaged, {RERUN}")

    for field in ("n_requested", "n_done", "shard_size"):  # n_done defaults to 0; shard_size may be absent or null
        value = manifest.get(field)
        if field != "n_requested" and value is None and (field == "shard_size" or field not in manifest):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise damaged(field, value, "a whole number >= 0")
    schema = manifest["label_schema"]
    classes = schema.get("classes") if isinstance(schema, dict) else None
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise damaged("label_schema.classes", classes if isinstance(schema, dict) else schema, "a list of class names")
    if not isinstance(manifest.get("counts_per_label", {}), dict):
        raise damaged("counts_per_label", manifest["counts_per_label"], "an object (label -> count)")
    if not isinstance(manifest.get("model") or {}, dict):
        raise damaged("model", manifest["model"], "an object")


def set_classes(manifest: dict) -> list[str]:
    """The set's class names, in label-id order.

    Normally the manifest's schema.  A translated set's manifest carries the bridge's
    schema (its classes are the domains) while its rows carry the input data's labels;
    then the labels counted in ``counts_per_label`` are the classes (sorted, so
    :class:`SyntheticSet` and :class:`SyntheticStream` agree without reading every row).
    """
    schema = list(manifest["label_schema"]["classes"])
    counted = [k for k in manifest.get("counts_per_label", {}) if k != FREE_TEXT]
    if all(k in schema for k in counted):
        return schema
    return sorted(counted)
