"""The bulk engine: N labelled images to disk, resumable, split across processes.

Everything about image ``i`` is a pure function of the request and ``i``: its
condition (:func:`condition_for`), its seed (``image_seed(seed, i)``) and so its
pixels.  Work is cut into shards of ``shard_size`` consecutive indices; rank ``r``
of ``world`` takes shards ``s`` with ``s % world == r``.  A shard counts as done
only when all its files are in place (each written atomically) and its record
``.synth/done/shard-XXXXX.json`` exists, so a run killed at any moment and started
again completes the set with no duplicates, gaps or truncated files.

Layouts:
* ``imagefolder``: ``shard-XXXXX/<index>.png`` + root ``metadata.jsonl``
  (Hugging Face imagefolder convention: ``datasets.load_dataset("imagefolder", data_dir=out)``).
* ``webdataset``: ``shard-XXXXX.tar`` with ``<index>.png``, ``<index>.json``, ``<index>.cls``.
Both get ``manifest.json`` (model id and weights hash, settings, label schema,
package versions, counts per label, completed index ranges).
"""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import tarfile
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from synth.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from synth.labels import Condition, LabelError, LabelSchema
from synth.seeds import image_seed

GOLDEN = (math.sqrt(5) - 1) / 2
FORMATS = ("imagefolder", "webdataset")


class BulkError(RuntimeError):
    """A bulk-sampling problem the user can fix; one line, says what was kept."""


# ---------------------------------------------------------------------------
# What to sample


@dataclass(frozen=True)
class ConditionSpec:
    """Either label weights (``labels``: class index -> weight, summing to 1) or prompt lines."""

    labels: tuple[tuple[int, float], ...] = ()
    lines: tuple[tuple[int | None, str], ...] = ()  # (label or None, prompt) per line

    def to_json(self, schema: LabelSchema) -> dict:
        if self.labels:
            return {"labels": {schema.classes[k]: w for k, w in self.labels}}
        return {"prompts": [{"label": None if k is None else schema.classes[k], "prompt": p} for k, p in self.lines]}


def parse_label_spec(spec: str, schema: LabelSchema, log: Callable[[str], None] = print) -> ConditionSpec:
    """``"normal=0.5,pneumonia=0.5"`` (or ``"pneumonia"``) -> weights; normalised if they do not sum to 1."""
    items = [s.strip() for s in spec.split(",") if s.strip()]
    if not items:
        raise LabelError(f"empty label spec '{spec}'; use e.g. '{schema.classes[0]}=0.5,{schema.classes[-1]}=0.5'")
    weights: dict[int, float] = {}
    for it in items:
        name, _, w = it.partition("=")
        k = schema.index(name.strip())
        try:
            weight = float(w) if w.strip() else 1.0
        except ValueError:
            raise LabelError(f"malformed label spec item '{it}': weight '{w}' is not a number "
                             f"(use e.g. {schema.classes[0]}=0.5)") from None
        if weight < 0 or not math.isfinite(weight):
            raise LabelError(f"label '{name.strip()}' has weight {weight}; weights must be finite and >= 0")
        if k in weights:
            raise LabelError(f"label '{schema.classes[k]}' appears twice in '{spec}'")
        weights[k] = weight
    total = sum(weights.values())
    if total <= 0:
        raise LabelError(f"label weights in '{spec}' sum to 0; give at least one label a positive weight")
    if abs(total - 1) > 1e-6 and len(items) > 1:
        log(f"note: label weights sum to {total:g}, not 1; normalised to "
            + ", ".join(f"{schema.classes[k]}={w / total:.4g}" for k, w in weights.items()))
    return ConditionSpec(labels=tuple(sorted((k, w / total) for k, w in weights.items() if w > 0)))


def parse_prompt_file(path: str | Path, schema: LabelSchema) -> ConditionSpec:
    """One condition per non-empty line: a class name (or ``label=<name>``) or free text.

    ``label=<name>: free text`` gives both a label and its own prompt.
    """
    p = Path(path)
    if not p.is_file():
        raise LabelError(f"prompts file '{p}' not found; pass a text file with one prompt or label per line")
    lines = []
    for raw in p.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.lower().startswith("label="):
            name, _, text = line[6:].partition(":")
            k = schema.index(name.strip())
            lines.append((k, text.strip() or schema.prompt_for(k)))
            continue
        try:
            k = schema.index(line)
            lines.append((k, schema.prompt_for(k)))
        except LabelError:
            lines.append((None, line))
    if not lines:
        raise LabelError(f"prompts file '{p}' has no prompts; put one prompt or label per line")
    return ConditionSpec(lines=tuple(lines))


def condition_for(index: int, spec: ConditionSpec, schema: LabelSchema) -> Condition:
    """The condition of image ``index``: a pure function, the same for any n, batch or rank.

    Label weights use a golden-ratio (Weyl) sequence: every prefix of the set
    matches the weights to within a few images, so raising ``--n`` keeps them.
    """
    if spec.labels:
        u = (0.5 + index * GOLDEN) % 1.0
        acc = 0.0
        for k, w in spec.labels:
            acc += w
            if u < acc:
                return schema.condition(k)
        return schema.condition(spec.labels[-1][0])
    k, prompt = spec.lines[index % len(spec.lines)]
    return Condition(label=k, prompt=prompt)


# ---------------------------------------------------------------------------
# The request and its identity


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

    def identity(self, meta: dict, schema: LabelSchema) -> dict:
        """Everything that decides the pixels and layout (not ``n``, batch size or process count)."""
        return {"model_id": meta.get("model_id"), "weights_sha256": meta.get("weights_sha256"),
                "sampler": self.sampler, "steps": self.steps, "guidance": self.guidance, "seed": self.seed,
                "format": self.format, "shard_size": self.shard_size, "dtype": self.dtype,
                "conditions": self.spec.to_json(schema)}


def check_request(req: BulkRequest) -> None:
    if req.n <= 0:
        raise BulkError(f"--n must be a positive number of images, got {req.n}")
    if req.format not in FORMATS:
        raise BulkError(f"--format must be one of {', '.join(FORMATS)}, got '{req.format}'")
    from samplers.integrators import SAMPLERS

    if req.sampler not in SAMPLERS:
        raise BulkError(f"unknown sampler '{req.sampler}'; choose one of {', '.join(SAMPLERS)}")
    if req.batch_size <= 0 or req.shard_size <= 0 or req.steps <= 0:
        raise BulkError("--batch-size, --shard-size and --steps must be positive")


OUR_NAMES = ("manifest.json", "metadata.jsonl", ".synth")


def prepare_out(out: Path, identity: dict, overwrite: bool, main: bool) -> None:
    """Refuse to mix with another model's or other settings' images unless ``overwrite``."""
    req_file = out / ".synth" / "request.json"
    if req_file.is_file():
        old = json.loads(req_file.read_text())
        diff = sorted(k for k in set(old) | set(identity) if old.get(k) != identity.get(k))
        if diff and not overwrite:
            raise BulkError(f"output folder '{out}' holds images from another model or settings (differs in: "
                            f"{', '.join(diff)}); use another --out or pass --overwrite to replace them")
        if diff and overwrite and main:
            for p in out.iterdir():
                if p.name in OUR_NAMES or p.name.startswith("shard-"):
                    shutil.rmtree(p) if p.is_dir() else p.unlink()
    elif out.is_dir() and any(p.name.startswith("shard-") for p in out.iterdir()) and not overwrite:
        raise BulkError(f"output folder '{out}' holds shards without a synth request record; "
                        f"use another --out or pass --overwrite")
    if main:
        atomic_write_json(req_file, identity)


# ---------------------------------------------------------------------------
# Shards


def shard_range(s: int, n: int, size: int) -> range:
    return range(s * size, min(n, (s + 1) * size))


def shard_name(s: int) -> str:
    return f"shard-{s:05d}"


def done_record(out: Path, s: int) -> Path:
    return out / ".synth" / "done" / f"{shard_name(s)}.json"


def shard_is_done(out: Path, s: int, n: int, size: int) -> bool:
    """Done when its record covers all the indices ``n`` asks of it."""
    rec = done_record(out, s)
    if not rec.is_file():
        return False
    r = json.loads(rec.read_text())
    want = shard_range(s, n, size)
    return r["start"] == want.start and r["stop"] >= want.stop


def metadata_row(index: int, cond: Condition, seed: int, req: BulkRequest, schema: LabelSchema) -> dict:
    row = {"index": index, "label": None if cond.label is None else schema.classes[cond.label],
           "label_id": cond.label, "prompt": cond.prompt, "seed": seed, "sampler": req.sampler,
           "steps": req.steps, "guidance": req.guidance}
    if req.format == "imagefolder":
        row = {"file_name": f"{shard_name(index // req.shard_size)}/{index:08d}.png", **row}
    return row


def png_bytes(img: np.ndarray) -> bytes:
    """uint8 (H, W) -> PNG bytes (lossless, no metadata: identical bytes for identical pixels)."""
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


class ShardWriter:
    """Encodes and writes images on worker threads while the model samples.

    ``add(index, image, row)`` queues one image; when a shard's last image is on
    disk its done record is written.  Errors surface on the next ``add`` or on
    ``close``; nothing partial is ever recorded as done.
    """

    def __init__(self, out: Path, req: BulkRequest, n: int, workers: int = 2, max_pending: int = 512):
        self.out, self.req, self.n = out, req, n
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synth-writer")
        self.pending: dict[int, dict] = {}  # shard -> {"futures": [...], "rows": {...}, "expected": int, "tar": {...}}
        self.slots = threading.BoundedSemaphore(max_pending)
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self.written = 0

    def _check(self) -> None:
        if self.error is not None:
            e = self.error
            raise BulkError(f"writing images to '{self.out}' failed ({type(e).__name__}: {getattr(e, 'strerror', None) or e}); "
                            f"fix the cause (disk space, permissions) and run the same command again to resume") from e

    def _write_png(self, path: Path, img: np.ndarray) -> bytes:
        data = png_bytes(img)
        if self.req.format == "imagefolder":
            atomic_write_bytes(path, data)
        return data

    def add(self, index: int, image: np.ndarray, row: dict, existing: bool = False) -> None:
        self._check()
        s = index // self.req.shard_size
        with self.lock:
            st = self.pending.setdefault(s, {"futures": [], "rows": {}, "data": {},
                                             "expected": len(shard_range(s, self.n, self.req.shard_size))})
            st["rows"][index] = row
        if existing:  # already on disk from an interrupted run: same bytes by construction
            self._maybe_finish(s)
            return
        self.slots.acquire()
        path = self.out / shard_name(s) / f"{index:08d}.png"
        fut = self.pool.submit(self._write_png, path, image)
        fut.add_done_callback(lambda f, s=s, i=index: self._on_done(f, s, i))

    def _on_done(self, fut: Future, s: int, index: int) -> None:
        self.slots.release()
        try:
            data = fut.result()
        except BaseException as e:  # surfaced to the main thread
            self.error = self.error or e
            return
        with self.lock:
            self.written += 1
            st = self.pending.get(s)
            if st is None:  # the shard was already closed: its files were all on disk before this callback ran
                return
            st["data"][index] = data
        try:
            self._maybe_finish(s)
        except BaseException as e:
            self.error = self.error or e

    def _maybe_finish(self, s: int) -> None:
        with self.lock:
            st = self.pending.get(s)
            if st is None or len(st["rows"]) < st["expected"]:
                return
            if self.req.format == "imagefolder":
                done = sum(1 for i in st["rows"] if i in st["data"] or (self.out / shard_name(s) / f"{i:08d}.png").is_file())
                if done < st["expected"]:
                    return
            elif len(st["data"]) < st["expected"]:
                return
            del self.pending[s]
        rows = [st["rows"][i] for i in sorted(st["rows"])]
        if self.req.format == "webdataset":
            self._write_tar(s, rows, st["data"])
        r = shard_range(s, self.n, self.req.shard_size)
        atomic_write_json(done_record(self.out, s), {"shard": s, "start": r.start, "stop": r.stop, "rows": rows})

    def _write_tar(self, s: int, rows: list[dict], data: dict[int, bytes]) -> None:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for row in rows:
                key = f"{row['index']:08d}"
                meta = json.dumps(row, sort_keys=True).encode()
                cls = str(row["label_id"] if row["label_id"] is not None else -1).encode()
                for ext, payload in (("png", data[row["index"]]), ("json", meta), ("cls", cls)):
                    info = tarfile.TarInfo(f"{key}.{ext}")
                    info.size, info.mtime, info.mode = len(payload), 0, 0o644  # fixed mtime: same bytes every run
                    tar.addfile(info, io.BytesIO(payload))
        atomic_write_bytes(self.out / f"{shard_name(s)}.tar", buf.getvalue())

    def close(self) -> None:
        self.pool.shutdown(wait=True)
        self._check()
        if self.pending:
            left = sorted(self.pending)
            raise BulkError(f"shards {left[:5]} did not complete; run the same command again to resume")


# ---------------------------------------------------------------------------
# Manifest


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


def write_manifest(out: Path, req: BulkRequest, meta: dict, schema: LabelSchema, identity: dict, n: int) -> dict:
    """Compose ``metadata.jsonl`` (imagefolder) and ``manifest.json`` from the done records."""
    n_shards = math.ceil(n / req.shard_size)
    rows, ranges = [], []
    for s in range(n_shards):
        rec = done_record(out, s)
        if not rec.is_file():
            continue
        r = json.loads(rec.read_text())
        rs = [row for row in r["rows"] if row["index"] < n]
        rows += rs
        ranges.append((r["start"], min(r["stop"], n)))
    counts: dict[str, int] = {}
    for row in rows:
        key = row["label"] if row["label"] is not None else "(free text)"
        counts[key] = counts.get(key, 0) + 1
    if req.format == "imagefolder":
        atomic_write_text(out / "metadata.jsonl", "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    manifest = {
        "format": req.format, "n_requested": n, "n_done": len(rows), "completed_ranges": merge_ranges(ranges),
        "counts_per_label": counts, "model": {"path": req.model, "model_id": meta.get("model_id"),
                                              "weights_sha256": meta.get("weights_sha256")},
        "settings": {k: v for k, v in identity.items() if k not in ("model_id", "weights_sha256")},
        "label_schema": schema.to_json(), "versions": _versions(), "shard_size": req.shard_size,
    }
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


# ---------------------------------------------------------------------------
# The engine


@dataclass
class BulkResult:
    manifest: dict
    generated: int  # images sampled by this process in this call
    seconds: float
    images_per_s: float = 0.0
    skipped_existing: int = 0
    timings: dict = field(default_factory=dict)


def dist_info() -> tuple[int, int]:
    """(rank, world) from torchrun / accelerate launch environment variables."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("gloo")
        dist.barrier()


def run_bulk(req: BulkRequest, generator=None, *, device: str = "cpu", progress: bool = True,
             log: Callable[[str], None] = print) -> BulkResult:
    """Sample ``req.n`` images into ``req.out``; running it again resumes or extends."""
    from samplers.generator import load_generator, read_artifact

    check_request(req)
    rank, world = dist_info()
    main = rank == 0
    meta = read_artifact(req.model)
    schema = LabelSchema.from_json(meta["labels"])
    out = Path(req.out)
    identity = req.identity(meta, schema)
    if main:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BulkError(f"cannot create output folder '{out}' ({e.strerror}); choose a writable --out") from None
        prepare_out(out, identity, req.overwrite, main)
    _barrier(world)
    if not main:
        prepare_out(out, identity, True, main)  # rank 0 already checked and cleaned

    n_shards = math.ceil(req.n / req.shard_size)
    mine = [s for s in range(n_shards) if s % world == rank and not shard_is_done(out, s, req.n, req.shard_size)]
    todo: list[int] = []
    existing: list[int] = []
    for s in mine:
        for i in shard_range(s, req.n, req.shard_size):
            if req.format == "imagefolder" and (out / shard_name(s) / f"{i:08d}.png").is_file():
                existing.append(i)
            else:
                todo.append(i)
    if req.format == "webdataset":  # a tar shard is rewritten whole
        existing = []
    if generator is None and todo:
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[req.dtype]
        generator = load_generator(meta["path"], device=device, dtype=dtype)

    writer = ShardWriter(out, req, req.n)
    for i in existing:
        c = condition_for(i, req.spec, schema)
        writer.add(i, None, metadata_row(i, c, image_seed(req.seed, i), req, schema), existing=True)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(todo), disable=not (main and progress), unit="img", dynamic_ncols=True,
               desc=f"sample (rank 0 of {world})" if world > 1 else "sample")
    t0 = time.perf_counter()
    t_model = 0.0
    try:
        for lo in range(0, len(todo), req.batch_size):
            idx = todo[lo:lo + req.batch_size]
            conds = [condition_for(i, req.spec, schema) for i in idx]
            seeds = [image_seed(req.seed, i) for i in idx]
            tm = time.perf_counter()
            batch = generator.sample(conds, seeds, steps=req.steps, guidance=req.guidance, sampler=req.sampler)
            t_model += time.perf_counter() - tm
            imgs = batch.images[:, 0].numpy()
            for j, i in enumerate(idx):
                writer.add(i, imgs[j], metadata_row(i, batch.conditions[j], seeds[j], req, schema))
            bar.update(len(idx))
            bar.set_postfix(img_s=f"{bar.n / max(1e-9, time.perf_counter() - t0):.1f}")
        writer.close()
    finally:
        bar.close()
        writer.pool.shutdown(wait=True)
    seconds = time.perf_counter() - t0
    _barrier(world)
    manifest = write_manifest(out, req, meta, schema, identity, req.n) if main else {}
    _barrier(world)
    if main:
        gaps = req.n - manifest["n_done"]
        if gaps:
            raise BulkError(f"{gaps} images are missing after sampling; run the same command again to complete the set")
    return BulkResult(manifest, len(todo), seconds, len(todo) / seconds if seconds > 0 else 0.0, len(existing),
                      {"model_s": t_model})


__all__ = ["BulkRequest", "BulkResult", "BulkError", "ConditionSpec", "condition_for", "parse_label_spec",
           "parse_prompt_file", "run_bulk", "ShardWriter", "write_manifest"]
