"""Writing a set's files: PNG and tar encoding with provenance, atomic puts, and the shard writer that fsyncs a
shard's files together before its done record (never one fsync per PNG)."""
from __future__ import annotations

import contextlib
import io
import json
import os
import tarfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from synth.io import atomic_write_bytes
from synth.provenance import image_provenance, pnginfo
from synth.sampleset.layout import png_name, shard_name, shard_range
from synth.sampleset.records import done_record, file_entry

from synth.samplers.request import BulkError, BulkRequest


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
