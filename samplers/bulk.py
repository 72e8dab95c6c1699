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
import io
import json
import math
import os
import shutil
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image

from synth import solvers
from synth.errors import SynthError
from synth.cards import CARD, is_synth_card
from synth.distributed import barrier, dist_info, main_first
from synth.io import FolderBusyError, FolderLock, atomic_write_bytes, atomic_write_json, to_hwc
from synth.labels import LabelSchema
from synth.provenance import base_provenance, image_provenance, pnginfo
from synth.seeds import check_seed, image_seed
from synth.sampleset.conditions import ConditionSpec, condition_for, parse_label_spec, parse_prompt_file
from synth.sampleset.layout import (FORMATS, OUR_FILE_RE, OUR_NAMES, PNG_RE, ROOT_TMP_RE, SHARD_DIR_RE, SHARD_TAR_RE,
                                    metadata_row, png_name, shard_name, shard_range)
from synth.sampleset.manifest import merge_ranges, write_manifest  # noqa: F401  (merge_ranges: its old home)
from synth.sampleset.records import (PNG_SIGNATURE, done_record,  # noqa: F401  (old home of all)
                                     file_entry, file_matches, png_intact, read_done,
                                     shard_is_done)
from synth.threads import adopt_threads



class BulkError(SynthError, RuntimeError):
    """A bulk-sampling problem the user can fix; one line, says what was kept."""


# ---------------------------------------------------------------------------
# What to sample


# ---------------------------------------------------------------------------
# The request and its identity


def is_cuda(device: str | torch.device | None) -> bool:
    return device is not None and torch.device(device).type == "cuda"


@dataclass(frozen=True)
class BulkRequest:
    model: str
    out: str
    n: int
    spec: ConditionSpec
    sampler: str = "dpmpp_2m"
    steps: int = 25
    guidance: float = 1.5
    seed: int = 0
    batch_size: int = 64
    format: str = "imagefolder"
    shard_size: int = 1000
    dtype: str = "float32"
    overwrite: bool = False
    shrink: bool = False  # allow a smaller --n than the folder holds: the images past it are deleted
    allow_pickle: bool = False  # load an export that also holds pickle weights (never unpickled; see load_generator)

    def identity(self, meta: dict, schema: LabelSchema, device: str | torch.device = "cpu") -> dict:
        """Everything that decides the pixels and layout (never ``n`` or the process count).

        See :func:`device_identity` for the batch size (CUDA) and the thread count (CPU).
        """
        ident = {"model_id": meta.get("model_id"), "weights_sha256": meta.get("weights_sha256"),
                 "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance, "seed": self.seed,
                 "format": self.format, "shard_size": self.shard_size, "dtype": self.dtype,
                 "conditions": self.spec.to_json(schema)}
        return {**ident, **device_identity(device, self.batch_size)}


def device_identity(device: str | torch.device, batch_size: int) -> dict:
    """What of the machine decides the pixels: on CUDA the batch size (kernels differ by batch shape, up to
    1 grey level on an H200); on CPU the intra-op thread count (kernels split their sums by thread, so 1 and
    2 threads can differ in the last bits, and after rounding in a grey level), while every CPU image is
    batch-size independent, so CPU runs stay free to change the batch size."""
    from synth.threads import identity_threads

    return {"batch_size": batch_size} if is_cuda(device) else {"cpu_threads": identity_threads()}


def batch_len(req: BulkRequest) -> int:
    """Images per network call: a batch never spans two shards, so at most a shard."""
    return min(req.batch_size, req.shard_size)


MAX_IMAGES = 10 ** 9  # beyond this, planning the shards alone takes minutes: surely a typo


def check_request(req: BulkRequest) -> None:
    if req.n <= 0:
        raise BulkError(f"--n must be a positive number of images, got {req.n}")
    if req.n > MAX_IMAGES:
        raise BulkError(f"--n {req.n} is more than {MAX_IMAGES:.0e} images in one set; split it into several --out "
                        f"folders with different --seed")
    if req.format not in FORMATS:
        raise BulkError(f"--format must be one of {', '.join(FORMATS)}, got '{req.format}'")
    if req.sampler not in solvers.names():
        raise BulkError(f"unknown sampler '{req.sampler}'; choose one of {', '.join(solvers.names())}")
    if req.batch_size <= 0 or req.shard_size <= 0 or req.steps <= 0:
        raise BulkError("--batch-size, --shard-size and --steps must be positive")
    check_seed(req.seed, "--seed")
    if not math.isfinite(req.guidance) or req.guidance < 0:
        raise BulkError(f"--guidance must be a finite number >= 0 (1 = no guidance), got {req.guidance}")


def deterministic_kernels(device: str | torch.device) -> None:
    """On CUDA, make every network call a deterministic function of its inputs and shape.

    Without this, cuDNN may pick a different convolution algorithm from run to run
    (``benchmark``) or use atomics-based kernels, and cuBLAS may split reductions
    differently, so the same batch could give slightly different pixels in a resumed
    run or on another rank.  ``CUBLAS_WORKSPACE_CONFIG`` must be set before cuBLAS
    makes its first handle (it is read then); we set it here, before the first
    sampling call, unless the user set it.  ``warn_only``: an op with no
    deterministic kernel warns instead of stopping a long run.  No-op on CPU.
    """
    if not is_cuda(device):
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False
    torch.use_deterministic_algorithms(True, warn_only=True)


MACHINE_KEYS = {"batch_size", "cpu_threads"}


def _ran_on(ident: dict) -> str:
    if "batch_size" in ident:
        return f"on CUDA with --batch-size {ident['batch_size']}"
    if "cpu_threads" in ident:
        return f"on CPU with {ident['cpu_threads']} thread(s)"
    return "on CPU"


def _same_machine_fix(old: dict) -> str:
    """How to resume a set on the machine settings it was made with."""
    if "batch_size" in old:
        return f"resume or extend it on a GPU with the same --batch-size {old['batch_size']}"
    if "cpu_threads" not in old:
        return "resume or extend it on CPU"
    return f"resume or extend it on CPU with 'synth --threads {old['cpu_threads']} ...' (the same command otherwise)"


def _ours(p: Path) -> bool | None:
    """Whether an entry of an output folder is synth's: True, False, or None for a shard folder (ours
    only if every file in it is). A README.md is ours only when it is synth's card."""
    if p.name == CARD:
        return is_synth_card(p)
    if p.name in OUR_NAMES or ROOT_TMP_RE.match(p.name) or (SHARD_TAR_RE.match(p.name) and p.is_file()):
        return True
    if SHARD_DIR_RE.match(p.name) and p.is_dir() and not p.is_symlink():
        return None
    return False


def _foreign_entries(out: Path) -> list[str]:
    """Entries of ``out`` that synth did not make (a shard folder counts as ours only if every file in it is)."""
    bad = []
    for p in sorted(out.iterdir()):
        kind = _ours(p)
        if kind is None:
            bad += [f"{p.name}/{q.name}" for q in sorted(p.iterdir()) if not (OUR_FILE_RE.match(q.name) and q.is_file())]
        elif not kind:
            bad.append(p.name)
    return bad


def _remove_ours(out: Path) -> None:
    """Delete what an earlier ``synth sample`` wrote into ``out`` (checked by :func:`_foreign_entries` first),
    except ``.synth/lock``: this run holds it, and a new lock file would let a second run in."""
    for p in out.iterdir():
        if _ours(p) is False:
            continue
        if p.name == ".synth":
            for q in p.iterdir():
                if q.name != "lock":
                    shutil.rmtree(q) if q.is_dir() and not q.is_symlink() else q.unlink()
        else:
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink()


def prepare_out(out: Path, identity: dict, overwrite: bool, main: bool) -> None:
    """Refuse to mix with another model's or other settings' images unless ``overwrite``; never write
    into, or delete from, a folder holding files synth did not make."""
    req_file = out / ".synth" / "request.json"
    if not req_file.is_file():
        entries = sorted(p.name for p in out.iterdir() if p.name != ".synth") if out.is_dir() else []
        if entries:
            raise BulkError(f"output folder '{out}' is not empty ({len(entries)} entries, e.g. '{entries[0]}') and was not "
                            f"made by synth; choose a new or empty --out (--overwrite only replaces synth's own sets)")
    else:
        try:
            old = json.loads(req_file.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            old = {"damaged": True}  # treated as other settings: refused unless --overwrite
        if "cpu_threads" in identity and "batch_size" not in old and "cpu_threads" not in old:
            old = {**old, "cpu_threads": identity["cpu_threads"]}  # a CPU set from before threads were recorded
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if diff == ["cpu_threads"] and adopt_threads(old["cpu_threads"]):
            identity["cpu_threads"] = old["cpu_threads"]  # nobody chose a count: take the set's, so it resumes as made
            diff = []
        if diff and set(diff) <= MACHINE_KEYS and not overwrite:
            raise BulkError(f"output folder '{out}' was sampled {_ran_on(old)} and this run is {_ran_on(identity)}; "
                            f"the device, a GPU's batch size and the CPU thread count change pixels (by up to 1 grey "
                            f"level), so {_same_machine_fix(old)}, or use another --out or --overwrite")
        if diff and not overwrite:
            raise BulkError(f"output folder '{out}' holds images from another model or settings (differs in: "
                            f"{', '.join(diff)}); use another --out or pass --overwrite to replace them")
        if diff and overwrite:
            foreign = _foreign_entries(out)
            if foreign:
                raise BulkError(f"--overwrite: output folder '{out}' also holds files synth did not make (e.g. "
                                f"'{foreign[0]}', {len(foreign)} in all); nothing was deleted; move them away or use another --out")
            if main:
                _remove_ours(out)
    if main:
        atomic_write_json(req_file, identity)


def existing_extent(out: Path, shard_size: int) -> int:
    """One past the highest image index this folder's shards hold (done records, shard folders or tars)."""
    hi = 0
    for p in out.iterdir() if out.is_dir() else []:
        if SHARD_DIR_RE.match(p.name) or SHARD_TAR_RE.match(p.name):
            s = int(p.name[6:11])
            r = read_done(out, s)
            if r is not None:
                hi = max(hi, r["stop"])
            elif p.is_dir():  # an unfinished shard: its PNGs are kept by a resume, so they count
                hi = max([hi] + [int(q.name[:8]) + 1 for q in p.iterdir() if PNG_RE.match(q.name)])
            # an unrecorded tar is rewritten whole by whichever run finishes its shard: it holds nothing yet
    return hi


def shrink_out(out: Path, n: int, shard_size: int) -> int:
    """Delete images ``>= n`` (whole shards past it; the rest of the last one) and their records; returns how many
    indices were dropped.  The kept part of a cut shard is re-recorded by the run (its PNGs are kept, not redrawn)."""
    extent = existing_extent(out, shard_size)
    last = (n - 1) // shard_size
    for name in ("manifest.json", "metadata.jsonl"):  # first: a crash below must not leave a list of deleted files
        (out / name).unlink(missing_ok=True)
    for p in sorted(out.iterdir()):
        if not (SHARD_DIR_RE.match(p.name) or SHARD_TAR_RE.match(p.name)):
            continue
        s = int(p.name[6:11])
        if s > last or (s == last and p.is_file()):  # a tar holds the cut images inside it: redone whole
            shutil.rmtree(p) if p.is_dir() else p.unlink()
            done_record(out, s).unlink(missing_ok=True)
        elif s == last:
            for q in p.iterdir():
                if PNG_RE.match(q.name) and int(q.name[:8]) >= n:
                    q.unlink()
            r = read_done(out, s)
            if r is not None and r["stop"] > n:
                done_record(out, s).unlink()
    for rec in (out / ".synth" / "done").glob("shard-*.json") if (out / ".synth" / "done").is_dir() else []:
        if int(rec.stem[6:11]) > last:
            rec.unlink()
    return max(0, extent - n)


def output_lock(out: Path) -> FolderLock:
    """The lock of an output folder (``.synth/lock``), held by the main process for the whole run."""
    try:
        return FolderLock(out / ".synth" / "lock", "output folder")
    except FolderBusyError as e:
        raise BulkError(str(e)) from None  # a BulkError reaches every rank through main_first


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


PNG_COMPRESS_LEVEL = 6  # level 1 is not faster for small images and bigger (benchmarks/results/writer_throughput.md)


def png_bytes(img: np.ndarray, prov: dict | None = None) -> bytes:
    """uint8 (H, W) or (H, W, 3) -> PNG bytes, lossless; with ``prov`` its provenance as text chunks
    (:mod:`synth.provenance`). No time stamps: identical pixels and settings give identical bytes."""
    buf = io.BytesIO()
    extra = {"pnginfo": pnginfo(prov)} if prov is not None else {}
    Image.fromarray(img).save(buf, format="PNG", compress_level=PNG_COMPRESS_LEVEL, **extra)
    return buf.getvalue()


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes the renames into it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def durable_write(path: Path, data: bytes) -> None:
    """Atomic and durable: temp file + fsync + rename, then fsync the folder for the rename."""
    atomic_write_bytes(path, data)
    fsync_path(path.parent)


def put_file(path: str | Path, data: bytes, maybe_on_disk: bool = False) -> None:
    """Atomic without fsync: temp name in the same folder + ``os.replace``.

    The fsync comes once per shard (:meth:`ShardWriter._finish`).  A file that may be
    on disk already (a resumed batch) is left alone when its bytes are identical.
    """
    path = os.fspath(path)
    if maybe_on_disk:
        try:
            with open(path, "rb") as f:
                if f.read() == data:
                    return
        except FileNotFoundError:
            pass
    folder, name = os.path.split(path)
    tmp = os.path.join(folder, f".{name}.tmp")  # fixed name: a run killed mid-write leaves one, overwritten on redo
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def tar_bytes(rows: list[dict], pngs: dict[int, bytes], provenance: dict | None = None) -> bytes:
    """A webdataset shard in memory: ``<index>.png/.json/.cls`` per row, fixed mtime (same bytes every run).
    With ``provenance`` each JSON also says the image is synthetic and how it was made."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for row in rows:
            key = f"{row['index']:08d}"
            meta = json.dumps({**row, "provenance": image_provenance(provenance, row)} if provenance else row,
                              sort_keys=True).encode()
            cls = str(row["label_id"] if row["label_id"] is not None else -1).encode()
            for ext, payload in (("png", pngs[row["index"]]), ("json", meta), ("cls", cls)):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size, info.mtime, info.mode = len(payload), 0, 0o644
                tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


def writer_threads() -> int:
    """Default encoder/writer threads: PIL and file I/O release the GIL, so 2 per core, at most 8."""
    return min(8, 2 * len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 2 * (os.cpu_count() or 1))


SYNC_THREADS = 8  # fsyncs wait on the disk, not the CPU


@dataclass
class _Shard:
    expected: int
    rows: dict[int, dict] = field(default_factory=dict)
    files: dict[int, dict] = field(default_factory=dict)  # index -> file entry, once on disk (or encoded, for tars)
    pngs: dict[int, bytes] = field(default_factory=dict)  # webdataset: PNG bytes until the tar is written


class ShardWriter:
    """Encodes and writes images on worker threads while the model samples.

    ``add_batch`` queues images in jobs of ``job_size``; the main thread blocks only
    when ``max_pending`` images are queued (default: two batches, at least 1024, so a
    fast GPU is not throttled while the writer keeps up).  When a shard's last file
    is in place the worker that wrote it fsyncs the shard's files and folders and
    writes the done record.  Errors surface on the next ``add_batch`` or on
    ``close``; nothing partial is ever recorded as done.
    """

    def __init__(self, out: Path, req: BulkRequest, n: int, workers: int | None = None,
                 max_pending: int | None = None, job_size: int = 16, provenance: dict | None = None):
        self.out, self.req, self.n, self.job_size = out, req, n, job_size
        self.provenance = provenance  # the set's shared fields; each PNG adds its row's (synth.provenance)
        self.workers = workers or writer_threads()
        self.max_pending = max_pending or max(1024, 2 * req.batch_size)
        self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="synth-writer")
        self.sync_pool = ThreadPoolExecutor(max_workers=SYNC_THREADS, thread_name_prefix="synth-fsync")
        self.shards: dict[int, _Shard] = {}
        self.lock = threading.Lock()
        self.room = threading.Condition(self.lock)
        self.pending = 0
        self.error: BaseException | None = None
        self.written = 0
        self.wait_s = 0.0  # time the caller spent blocked on back-pressure

    def _check(self) -> None:
        if self.error is not None:
            e = self.error
            raise BulkError(f"writing images to '{self.out}' failed ({type(e).__name__}: {getattr(e, 'strerror', None) or e}); "
                            f"fix the cause (disk space, permissions) and run the same command again to resume") from e

    def _shard(self, s: int) -> _Shard:
        st = self.shards.get(s)
        if st is None:
            st = self.shards[s] = _Shard(len(shard_range(s, self.n, self.req.shard_size)))
        return st

    def _reserve(self, k: int) -> None:
        t0 = time.perf_counter()
        with self.room:
            while self.pending and self.pending + k > self.max_pending and self.error is None:
                self.room.wait()
            self.pending += k
        self.wait_s += time.perf_counter() - t0

    def _release(self, k: int) -> None:
        with self.room:
            self.pending -= k
            self.room.notify_all()

    def add_batch(self, indices: Sequence[int], images: Sequence[np.ndarray], rows: Sequence[dict],
                  on_disk: set[int] | frozenset = frozenset()) -> None:
        """Queue images (uint8 (H, W) each); ``on_disk``: indices whose file may exist already."""
        self._check()
        items = [(i, img, row, i in on_disk) for i, img, row in zip(indices, images, rows)]
        for lo in range(0, len(items), self.job_size):
            job = items[lo:lo + self.job_size]
            by_shard: dict[int, list] = {}
            for it in job:
                by_shard.setdefault(it[0] // self.req.shard_size, []).append(it)
            for s, part in by_shard.items():
                with self.lock:
                    self._shard(s).rows.update({it[0]: it[2] for it in part})
                self._reserve(len(part))
                self.pool.submit(self._job, s, part)

    def add(self, index: int, image: np.ndarray, row: dict) -> None:
        """Queue one image (prefer ``add_batch``: one job per image costs more)."""
        self.add_batch([index], [image], [row])

    def add_existing(self, index: int, row: dict, entry: dict) -> None:
        """A PNG already on disk from an earlier run (its file entry checked by the caller)."""
        self._check()
        with self.lock:
            st = self._shard(index // self.req.shard_size)
            st.rows[index], st.files[index] = row, entry
            done = self._pop_if_complete(index // self.req.shard_size)
        if done is not None:
            self._finish_or_keep_error(index // self.req.shard_size, done)
            self._check()

    def _encode(self, s: int, index: int, img: np.ndarray, row: dict, maybe_on_disk: bool) -> tuple[dict, bytes]:
        data = png_bytes(img, None if self.provenance is None else image_provenance(self.provenance, row))
        if self.req.format == "imagefolder":
            rel = f"{shard_name(s)}/{png_name(index)}"
            put_file(os.path.join(self.out, rel), data, maybe_on_disk)  # str, not Path: per-image cost
            return file_entry(rel, data), b""
        return {}, data

    def _job(self, s: int, items: list) -> None:
        """Worker: encode (and for imagefolder write) a few images; finish the shard if they were its last."""
        try:
            if self.req.format == "imagefolder":
                (self.out / shard_name(s)).mkdir(exist_ok=True)
            results = [(it[0], *self._encode(s, it[0], it[1], it[2], it[3])) for it in items]
        except BaseException as e:  # surfaced to the main thread
            self.error = self.error or e
            self._release(len(items))
            return
        self._release(len(items))
        with self.lock:
            st = self.shards.get(s)
            for i, entry, data in results:
                st.files[i] = entry
                if data:
                    st.pngs[i] = data
            self.written += len(results)
            done = self._pop_if_complete(s)
        if done is not None:
            self._finish_or_keep_error(s, done)

    def _finish_or_keep_error(self, s: int, st: _Shard) -> None:
        try:
            self._finish(s, st)
        except BaseException as e:  # surfaced to the main thread; the shard stays unrecorded
            self.error = self.error or e

    def _pop_if_complete(self, s: int) -> _Shard | None:
        """(Under the lock.)  The shard's state, removed, once every file of it is in place."""
        st = self.shards.get(s)
        if st is None or len(st.files) < st.expected:
            return None
        return self.shards.pop(s)

    def _finish(self, s: int, st: _Shard) -> None:
        """Make the shard durable, then record it as done (the record is the commit point)."""
        rows = [st.rows[i] for i in sorted(st.rows)]
        if self.req.format == "webdataset":
            tar = self.out / f"{shard_name(s)}.tar"
            data = tar_bytes(rows, st.pngs, self.provenance)
            for leftover in self.out.glob(f".{tar.name}.*.tmp"):  # from a run killed mid-write
                leftover.unlink(missing_ok=True)
            durable_write(tar, data)  # fsyncs the tar and the output root
            files = [file_entry(tar.name, data)]
        else:
            folder = self.out / shard_name(s)
            for leftover in folder.glob(".*.tmp"):  # from a run killed mid-write: not part of the set
                leftover.unlink(missing_ok=True)
            files = [st.files[i] for i in sorted(st.files)]
            # In parallel: the journal commits concurrent fsyncs together (1000 PNGs: ~0.07 s
            # instead of 0.16-2 s one after another on this machine's ext4).
            list(self.sync_pool.map(fsync_path, [self.out / e["name"] for e in files]))
            fsync_path(folder)  # the renames into the shard folder
            fsync_path(self.out)  # the shard folder itself
        r = shard_range(s, self.n, self.req.shard_size)
        rec = {"shard": s, "start": r.start, "stop": r.stop, "rows": rows, "files": files}
        path = done_record(self.out, s)
        path.parent.mkdir(parents=True, exist_ok=True)
        # compact: with ``indent`` json falls back to its pure-Python encoder (~20 us per image here)
        durable_write(path, (json.dumps(rec, sort_keys=True, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        self.shutdown()
        self._check()
        if self.shards:
            left = sorted(self.shards)
            raise BulkError(f"shards {left[:5]} did not complete; run the same command again to resume")

    def shutdown(self) -> None:
        """Wait for queued jobs (the fsync pool last: finishing shards use it)."""
        self.pool.shutdown(wait=True)
        self.sync_pool.shutdown(wait=True)


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


def _check_extent(out: Path, req: BulkRequest) -> int:
    """How many images past ``--n`` the folder holds; refused unless ``--shrink``."""
    extent = existing_extent(out, req.shard_size)
    if extent > req.n and not req.shrink:
        raise BulkError(f"output folder '{out}' already holds images 0..{extent - 1} and --n is {req.n}: the "
                        f"other {extent - req.n} would stay on disk outside the metadata; pass --n {extent} to "
                        f"resume or extend it, or --shrink to delete images {req.n}..{extent - 1}")
    return max(0, extent - req.n)


def check_out(out: str | Path, identity: dict, req: BulkRequest, batch_size_known: bool = True) -> None:
    """Every refusal :func:`_make_out` would give (foreign folder, other settings, smaller ``--n``, a run
    already writing there), without writing or deleting anything: called before the model loads, so a
    mistake in ``--out`` costs no time.  ``batch_size_known=False`` (``--batch-size auto`` on CUDA, decided
    after the load): the batch size is left to the real check."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BulkError(f"--out '{out}' is a file; choose a folder")
    if not out.is_dir():
        return
    if not batch_size_known and "batch_size" in identity:
        try:
            old = json.loads((out / ".synth" / "request.json").read_text())
            identity = {**identity, "batch_size": old.get("batch_size")} if "batch_size" in old else identity
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            pass
    prepare_out(out, identity, req.overwrite, False)
    wiped = req.overwrite and (out / ".synth" / "request.json").is_file() and _request_differs(out, identity)
    if not wiped:
        _check_extent(out, req)
    if (out / ".synth" / "lock").is_file():
        output_lock(out).release()  # raises FolderBusyError naming the holder


def _request_differs(out: Path, identity: dict) -> bool:
    try:
        return json.loads((out / ".synth" / "request.json").read_text()) != identity
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return True


def _make_out(out: Path, identity: dict, req: BulkRequest, log: Callable[[str], None]) -> FolderLock:
    """Create or check ``out`` under its lock (returned; the caller releases it when the run ends)."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        if not (out / ".synth" / "request.json").is_file():
            prepare_out(out, identity, req.overwrite, False)  # refuse a user's folder before making .synth in it
        lock = output_lock(out)
    except OSError as e:
        raise BulkError(f"cannot use output folder '{out}' ({e.strerror or e}); choose a writable --out") from None
    if not lock.guarded:
        log(f"note: '{out}' is on a file system without file locks; nothing stops a second run writing there")
    try:
        prepare_out(out, identity, req.overwrite, True)
        if _check_extent(out, req):
            log(f"--shrink: deleted {shrink_out(out, req.n, req.shard_size)} images (index {req.n} and above)")
    except OSError as e:
        lock.release()
        raise BulkError(f"cannot prepare output folder '{out}' ({e.strerror or e}); fix the cause and run again") from None
    except BaseException:
        lock.release()
        raise
    return lock


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
    if not isinstance(req.spec, ConditionSpec) or not req.spec.labels:  # a translation's images come from its input
        return req
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
        batch = self.gen.sample(conds, [self.seed(i) for i in idx], steps=self.req.steps, guidance=self.req.guidance,
                                sampler=self.req.sampler)
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
