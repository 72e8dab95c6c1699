"""The bulk engine: N labelled images to disk, resumable, split across processes.

Everything about image ``i`` is a pure function of the request and ``i``: its
condition (:func:`condition_for`), its seed (``image_seed(seed, i)``) and so its
pixels.  Work is cut into shards of ``shard_size`` consecutive indices; rank ``r``
of ``world`` takes shards ``s`` with ``s % world == r``.

Durability.  Every file is written atomically (temp name in the same folder +
``os.replace``) but not fsynced one by one (that cost ~4 ms per PNG).  When all of
a shard's files are in place they are fsynced together, then the shard folder
and the output root, and only then is the shard's record
``.synth/done/shard-XXXXX.json`` written (atomically and durably).  The record
lists every file's name, size and sha256; a resume re-checks them and redoes a
shard whose files are missing or changed.  So a run killed at any moment, or a
machine that loses power, and started again completes the set with no
duplicates, gaps or truncated files.

Batches and GPU determinism.  Network calls always have the same shape: a
shard's images are sampled in batches aligned on the shard start
(``[start + k*B, start + (k+1)*B)``, ``B = min(batch_size, shard_size)``) and the
last, partial batch of a shard is padded to ``B`` (padding outputs are dropped).
Which images share a call therefore never depends on what an earlier run did
or on the number of processes.  On CPU every image is also independent of the
batch size.  On a GPU, kernels give slightly different results for different
batch shapes: changing ``--batch-size`` changes up to 1 grey level in a few
percent of pixels (measured on an H200, issue 6), so on CUDA the batch size is
part of the set's identity and a resume or extension with another one is
refused.  At a fixed batch size, a resumed run, a raised ``--n`` and any process
count give identical bytes on a GPU too (kernels run in deterministic mode, see
:func:`deterministic_kernels`).

Layouts:
* ``imagefolder``: ``shard-XXXXX/<index>.png`` + root ``metadata.jsonl``
  (Hugging Face imagefolder convention: ``datasets.load_dataset("imagefolder", data_dir=out)``).
* ``webdataset``: ``shard-XXXXX.tar`` with ``<index>.png``, ``<index>.json``, ``<index>.cls``.
Both get ``manifest.json`` (model id and weights hash, settings, label schema,
package versions, counts per label, completed index ranges).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from synth.distributed import barrier, dist_info, main_first
from synth.io import to_hwc
from synth.labels import LabelSchema
from synth.provenance import base_provenance
from synth.seeds import image_seed
from synth.sampleset.conditions import ConditionSpec, condition_for, parse_label_spec, parse_prompt_file
from synth.sampleset.layout import metadata_row, png_name, shard_name, shard_range
from synth.sampleset.manifest import merge_ranges, write_manifest  # noqa: F401  (merge_ranges: its old home)
from synth.sampleset.records import (PNG_SIGNATURE, done_record,  # noqa: F401  (old home of all)
                                     file_entry, file_matches, png_intact, read_done,
                                     shard_is_done)
from synth.samplers.folder import (MACHINE_KEYS, check_out, existing_extent, output_lock,  # noqa: F401  (old home)
                                   prepare_out, shrink_out, _make_out)
from synth.samplers.request import (MAX_IMAGES, BulkError, BulkRequest, batch_len, check_request,  # noqa: F401
                                    deterministic_kernels, device_identity, is_cuda)
from synth.samplers.writer import (PNG_COMPRESS_LEVEL, SYNC_THREADS, ShardWriter, durable_write,  # noqa: F401
                                   fsync_path, png_bytes, put_file, tar_bytes, writer_threads)


# ---------------------------------------------------------------------------
# What to sample


# ---------------------------------------------------------------------------
# The request and its identity


# ---------------------------------------------------------------------------
# Shards, batches and done records


def aligned_batches(shard: range, batch: int) -> list[range]:
    """``[start + k*batch, start + (k+1)*batch)`` within the shard.

    Aligned on the shard start, never on a to-do list, so which images share a
    network call does not depend on what an earlier run did or on the rank.
    Aligning on shard starts (rather than refusing a shard size that is not a
    multiple of the batch size) keeps the defaults (1000 / 64) working; the cost is
    one padded batch per shard.
    """
    return [range(lo, min(lo + batch, shard.stop)) for lo in range(shard.start, shard.stop, batch)]


def padded(items: list, size: int) -> list:
    """``items`` with its last element repeated up to ``size``: every network call has the same shape."""
    return items + [items[-1]] * (size - len(items))


@dataclass
class ShardPlan:
    """What a rank still has to do: whole aligned batches to sample, PNGs to keep."""

    batches: list[range] = field(default_factory=list)
    kept: dict[int, dict] = field(default_factory=dict)  # index -> file entry of a PNG from an earlier run
    on_disk: set[int] = field(default_factory=set)  # sampled indices whose file exists: compare before writing

    @property
    def n_sampled(self) -> int:
        return sum(len(b) for b in self.batches)


def kept_pngs(out: Path, s: int, r: range) -> tuple[dict[int, dict], set[int]]:
    """PNGs of an unfinished imagefolder shard that can be kept, and all that exist.

    A PNG listed in an older record of the shard (a set being extended) is kept if
    its hash matches; any other must be a complete PNG (it was not fsynced).
    """
    folder = out / shard_name(s)
    try:
        names = set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return {}, set()
    old = {e["name"]: e for e in (read_done(out, s) or {}).get("files", [])}
    kept, exists = {}, set()
    for i in r:
        name = png_name(i)
        if name not in names:
            continue
        exists.add(i)
        rel = f"{shard_name(s)}/{name}"
        try:
            data = (folder / name).read_bytes()
        except OSError:
            continue
        e = file_entry(rel, data)
        if (rel in old and old[rel]["sha256"] == e["sha256"]) or (rel not in old and png_intact(data)):
            kept[i] = e
    return kept, exists


def plan_shards(out: Path, req: BulkRequest, n: int, shards: list[int]) -> ShardPlan:
    """Aligned batches of the given unfinished shards; a batch whose PNGs are all kept is skipped.

    A batch with only some PNGs on disk is sampled whole (same shape as in the first
    run); the writer then leaves identical files alone.  A tar shard is rewritten whole.
    """
    plan = ShardPlan()
    for s in shards:
        r = shard_range(s, n, req.shard_size)
        kept, exists = kept_pngs(out, s, r) if req.format == "imagefolder" else ({}, set())
        for b in aligned_batches(r, batch_len(req)):
            if all(i in kept for i in b):
                plan.kept.update({i: kept[i] for i in b})
            else:
                plan.batches.append(b)
                plan.on_disk.update(i for i in b if i in exists)
    return plan


# ---------------------------------------------------------------------------
# Writing


# ---------------------------------------------------------------------------
# Manifest


# ---------------------------------------------------------------------------
# Processes


@contextlib.contextmanager
def process_group(world: int):
    """The gloo group of a multi-process run, destroyed on the way out (success or error).

    Only a group created here is destroyed (one made by the caller, e.g. accelerate, is
    left alone).  Left to interpreter shutdown, gloo's threads can abort the process
    ("terminate called without an active exception", SIGABRT), which would turn a clean
    one-line error into a crash.
    """
    import torch.distributed as dist

    owns = world > 1 and not dist.is_initialized()
    try:
        yield
    finally:
        if owns and dist.is_initialized():
            dist.destroy_process_group()


# ---------------------------------------------------------------------------
# The engine


@dataclass
class BulkResult:
    manifest: dict
    generated: int  # images sampled by this process in this call (padding not counted)
    seconds: float
    images_per_s: float = 0.0
    skipped_existing: int = 0
    timings: dict = field(default_factory=dict)


def run_bulk(req: BulkRequest, generator=None, *, device: str = "cpu", progress: bool = True,
             log: Callable[[str], None] = print, job=None, pad_batches: bool | None = None) -> BulkResult:
    """Sample ``req.n`` images into ``req.out``; running it again resumes or extends.

    ``job`` says what image i is and makes batches (default: :class:`SampleJob`, sampling
    ``generator`` from noise under ``req.spec``; translation passes its own).  ``pad_batches``:
    pad short batches to the batch size (default: on CUDA only, where shapes change pixels).
    """
    from synth.samplers.generator import read_artifact

    check_request(req)
    deterministic_kernels(device)
    rank, world = dist_info()
    meta = read_artifact(req.model)
    loaded = getattr(generator, "weights_sha256", None)
    if loaded is not None and loaded != meta.get("weights_sha256"):
        raise BulkError(f"the generator passed in holds weights {loaded[:12]}, not those of '{req.model}' "
                        f"({str(meta.get('weights_sha256'))[:12]}); pass the generator loaded from that export")
    schema = LabelSchema.from_json(meta["labels"])
    req = _legacy_label_order(req, schema)
    identity = req.identity(meta, schema, device)
    with process_group(world):
        pad = is_cuda(device) if pad_batches is None else pad_batches
        return _run(req, generator, device, meta, schema, identity, rank, world, progress, job, pad, log)


def _legacy_label_order(req: BulkRequest, schema: LabelSchema) -> BulkRequest:
    """``req`` with the golden-ratio label order when ``req.out`` holds a set made before exact quotas with
    the same weights, so that set resumes and extends with the labels it already has."""
    if not isinstance(req.spec, ConditionSpec) or not req.spec.labels or req.overwrite:
        return req  # a translation's images come from its input; --overwrite rebuilds with exact quotas
    try:
        old = json.loads((Path(req.out) / ".synth" / "request.json").read_text()).get("conditions")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return req
    legacy = dataclasses.replace(req.spec, order="weyl")
    if req.spec.labels and req.spec.order != "weyl" and old == legacy.to_json(schema):
        return dataclasses.replace(req, spec=legacy)
    return req


class SampleJob:
    """What image ``i`` of a sampled set is (condition, seed, metadata) and how a batch is made.

    The bulk engine asks a job only for these; :class:`synth.samplers.translate.TranslateJob`
    is the other kind (images from an input set instead of noise).
    """

    def __init__(self, req: BulkRequest, schema: LabelSchema, generator):
        self.req, self.schema, self.gen = req, schema, generator

    def seed(self, i: int) -> int:
        return image_seed(self.req.seed, i)

    def row(self, i: int) -> dict:
        return metadata_row(i, condition_for(i, self.req.spec, self.schema), self.seed(i), self.req, self.schema)

    def make(self, idx: list[int]) -> np.ndarray:
        """uint8 (len(idx), H, W) grey or (len(idx), H, W, 3) RGB images (idx already padded to the batch length)."""
        conds = [condition_for(i, self.req.spec, self.schema) for i in idx]
        extra = {"negative_prompt": self.req.negative_prompt} if self.req.negative_prompt else {}
        batch = self.gen.sample(conds, [self.seed(i) for i in idx], steps=self.req.steps, guidance=self.req.guidance,
                                sampler=self.req.sampler, **extra)
        return to_hwc(batch.images)


def _with_file_name(row: dict, req: BulkRequest) -> dict:
    if req.format == "imagefolder" and "file_name" not in row:
        i = row["index"]
        return {"file_name": f"{shard_name(i // req.shard_size)}/{png_name(i)}", **row}
    return row


def _sample_into(writer: ShardWriter, plan: ShardPlan, job, req: BulkRequest, bar, pad: bool = True) -> float:
    """Hand kept PNGs and made batches to the writer; returns the seconds spent in the model.

    On CUDA (``pad``) every call gets ``batch_len(req)`` images: a short batch is padded
    with its last image and the padding outputs are dropped.  On CPU results do not depend
    on the batch shape, so a short batch runs as it is (padding would only cost time).
    """
    for i, entry in sorted(plan.kept.items()):
        writer.add_existing(i, _with_file_name(job.row(i), req), entry)
    b, t_model, t0 = batch_len(req), 0.0, time.perf_counter()
    for idx in plan.batches:
        idx = list(idx)
        tm = time.perf_counter()
        imgs = job.make(padded(idx, b) if pad else idx)[:len(idx)]
        t_model += time.perf_counter() - tm
        rows = [_with_file_name(job.row(i), req) for i in idx]
        writer.add_batch(idx, imgs, rows, plan.on_disk)
        bar.update(len(idx))
        bar.set_postfix(img_s=f"{bar.n / max(1e-9, time.perf_counter() - t0):.1f}")
    return t_model


def _write_manifest_or_say(out: Path, req: BulkRequest, meta: dict, schema: LabelSchema, identity: dict) -> dict:
    """:func:`write_manifest`; a full or read-only disk is one line (the shards are recorded, a rerun only rewrites this)."""
    try:
        return write_manifest(out, req, meta, schema, identity, req.n)
    except OSError as e:
        raise BulkError(f"every image is written but '{out}/manifest.json' could not be ({e.strerror or e}); free "
                        f"space and run the same command again to write it") from None


def _run(req: BulkRequest, generator, device, meta: dict, schema: LabelSchema, identity: dict, rank: int, world: int,
         progress: bool, job=None, pad: bool = True, log: Callable[[str], None] = print) -> BulkResult:
    """run_bulk's body, once the request is checked: prepare and lock ``out``, then :func:`_run_locked`."""
    out = Path(req.out)
    lock = main_first(lambda: _make_out(out, identity, req, log), world, rank)
    try:
        return _run_locked(req, generator, device, meta, schema, identity, rank, world, progress, job, pad)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(req: BulkRequest, generator, device, meta: dict, schema: LabelSchema, identity: dict, rank: int,
                world: int, progress: bool, job=None, pad: bool = True) -> BulkResult:
    """The run once ``out`` is prepared and locked: plan, sample, write, record."""
    from synth.samplers.generator import load_generator

    main, out = rank == 0, Path(req.out)

    n_shards = math.ceil(req.n / req.shard_size)
    mine = [s for s in range(n_shards) if s % world == rank and not shard_is_done(out, s, req.n, req.shard_size)]
    plan = plan_shards(out, req, req.n, mine)
    if generator is None and plan.batches:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[req.dtype]
        generator = load_generator(meta["path"], device=device, dtype=dtype, allow_pickle=req.allow_pickle)
        if getattr(generator, "weights_sha256", identity["weights_sha256"]) != identity["weights_sha256"]:
            raise BulkError(f"'{req.model}' changed since this run started (its weights hash differs); "
                            f"run the same command again")

    writer = ShardWriter(out, req, req.n, provenance=base_provenance(identity))
    from tqdm.auto import tqdm

    bar = tqdm(total=plan.n_sampled, disable=not (main and progress), unit="img", dynamic_ncols=True,
               desc=f"sample (rank 0 of {world})" if world > 1 else "sample")
    t0 = time.perf_counter()
    try:
        t_model = _sample_into(writer, plan, job or SampleJob(req, schema, generator), req, bar, pad=pad)
        writer.close()
    finally:
        bar.close()
        writer.shutdown()
    seconds = time.perf_counter() - t0
    barrier(world)  # every rank's shards are recorded before the manifest reads them
    manifest = main_first(lambda: _write_manifest_or_say(out, req, meta, schema, identity), world, rank) or {}
    if main:
        gaps = req.n - manifest["n_done"]
        if gaps:
            raise BulkError(f"{gaps} images are missing after sampling; run the same command again to complete the set")
    n_new = plan.n_sampled
    return BulkResult(manifest, n_new, seconds, n_new / seconds if seconds > 0 else 0.0, len(plan.kept),
                      {"model_s": t_model, "writer_wait_s": writer.wait_s})


__all__ = ["BulkRequest", "BulkResult", "BulkError", "ConditionSpec", "condition_for", "parse_label_spec",
           "parse_prompt_file", "run_bulk", "ShardWriter", "write_manifest", "process_group",
           "deterministic_kernels"]
