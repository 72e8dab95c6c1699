"""The output folder of a set: refuse another model's or a user's files, overwrite or shrink only ours, lock it."""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Callable


from synth.cards import CARD, is_synth_card
from synth.io import FolderBusyError, FolderLock, atomic_write_json
from synth.sampleset.layout import OUR_FILE_RE, OUR_NAMES, PNG_RE, ROOT_TMP_RE, SHARD_DIR_RE, SHARD_TAR_RE
from synth.sampleset.records import done_record, read_done
from synth.threads import adopt_threads

from synth.samplers.request import BulkError, BulkRequest


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
