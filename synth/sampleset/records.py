"""Done records: ``.synth/done/shard-XXXXX.json`` says a shard is finished, listing each file's name, size and
sha256.  A resume re-checks them (:func:`shard_is_done`) and redoes a shard whose files are missing or
changed; :func:`png_intact` tells a complete PNG of an unfinished shard from one cut short by a crash.
"""
from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

from synth.sampleset.layout import shard_name, shard_range


def done_record(out: Path, s: int) -> Path:
    return out / ".synth" / "done" / f"{shard_name(s)}.json"


def read_done(out: Path, s: int) -> dict | None:
    rec = done_record(out, s)
    try:
        r = json.loads(rec.read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # damaged (not written by a finished durable_write): the shard is redone, same bytes
    ok = (isinstance(r, dict) and all(type(r.get(k)) is int for k in ("start", "stop"))
          and isinstance(r.get("rows"), list) and isinstance(r.get("files", []), list))
    return r if ok else None


def file_entry(name: str, data: bytes) -> dict:
    return {"name": name, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def file_matches(out: Path, entry: dict) -> bool:
    """The file is on disk with the recorded size and sha256.

    We re-hash rather than compare sizes only: a size check would miss a file
    rewritten in place, bit rot, or a file system that lied about fsync, and the
    set's promise is identical bytes.  The cost is one read of the set per resume
    (see benchmarks/results/writer_throughput.md: milliseconds per 1000 PNGs).
    """
    p = out / entry["name"]
    try:
        if p.stat().st_size != entry["size"]:  # cheap reject before reading
            return False
        return hashlib.sha256(p.read_bytes()).hexdigest() == entry["sha256"]
    except OSError:
        return False


def shard_is_done(out: Path, s: int, n: int, size: int) -> bool:
    """Done when its record covers all the indices ``n`` asks of it and every file it
    lists is on disk with the recorded size and sha256.  A record without file hashes
    (older synth) is not trusted: redoing the shard gives the same bytes."""
    r = read_done(out, s)
    want = shard_range(s, n, size)
    if r is None or "files" not in r or r["start"] != want.start or r["stop"] < want.stop:
        return False
    return all(file_matches(out, e) for e in r["files"])


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_intact(data: bytes) -> bool:
    """A complete PNG: signature, every chunk's CRC, ending with IEND.

    PNGs of an unfinished shard were not fsynced yet; after a power loss one may be
    empty or cut short.  The CRCs say so without decoding it.
    """
    if not data.startswith(PNG_SIGNATURE):
        return False
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = pos + 12 + length
        if end > len(data) or zlib.crc32(data[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return False
        if data[pos + 4:pos + 8] == b"IEND":
            return end == len(data)
        pos = end
    return False
