"""The layout of a sample set folder, written by ``synth sample``/``synth translate`` and read by everyone.

* ``imagefolder``: ``shard-XXXXX/<index>.png`` + root ``metadata.jsonl`` (Hugging Face imagefolder
  convention: ``datasets.load_dataset("imagefolder", data_dir=out)``).
* ``webdataset``: ``shard-XXXXX.tar`` with ``<index>.png``, ``<index>.json``, ``<index>.cls``.

Both get ``manifest.json`` (:mod:`synth.sampleset.manifest`), ``README.md`` (the dataset card) and
``.synth/`` (the request's identity, a lock, and one done record per finished shard,
:mod:`synth.sampleset.records`).  Image ``index`` lives in shard ``index // shard_size``.
"""
from __future__ import annotations

import re
from pathlib import Path

from synth.labels import Condition, LabelSchema

FORMATS = ("imagefolder", "webdataset")
FREE_TEXT = "(free text)"  # counts_per_label key of images asked by a prompt without a class


OUR_NAMES = ("manifest.json", "metadata.jsonl", "README.md", ".synth")


SHARD_DIR_RE = re.compile(r"^shard-\d{5}$")


SHARD_TAR_RE = re.compile(r"^shard-\d{5}\.tar$")


PNG_RE = re.compile(r"^\d{8}\.png$")


OUR_FILE_RE = re.compile(r"^(\d{8}\.png|\..+\.tmp)$")  # a shard folder's images and write temps


ROOT_TMP_RE = re.compile(r"^\.(manifest\.json|metadata\.jsonl|README\.md|shard-\d{5}\.tar)\..+\.tmp$")  # left by a kill


def shard_range(s: int, n: int, size: int) -> range:
    return range(s * size, min(n, (s + 1) * size))


def shard_name(s: int) -> str:
    return f"shard-{s:05d}"


def png_name(index: int) -> str:
    return f"{index:08d}.png"


def metadata_row(index: int, cond: Condition, seed: int, req, schema: LabelSchema) -> dict:
    row = {"index": index, "label": None if cond.label is None else schema.classes[cond.label],
           "label_id": cond.label, "prompt": cond.prompt, "seed": seed, "sampler": req.sampler,
           "steps": req.steps, "guidance": req.guidance}
    if getattr(req, "negative_prompt", ""):
        row["negative_prompt"] = req.negative_prompt
    for key, value in req.spec.source_of(index).items():  # a prompts manifest's caption and columns
        row[key if key not in row and key != "file_name" else f"source_{key}"] = value
    if req.format == "imagefolder":
        row = {"file_name": f"{shard_name(index // req.shard_size)}/{png_name(index)}", **row}
    return row
def set_format(root: Path, manifest: dict) -> str:
    """``imagefolder`` or ``webdataset`` (from the manifest; older ones: from the files)."""
    fmt = manifest.get("format")
    if fmt in ("imagefolder", "webdataset"):
        return fmt
    return "webdataset" if any(root.glob("shard-*.tar")) else "imagefolder"
