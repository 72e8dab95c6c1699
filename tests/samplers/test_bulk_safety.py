"""The output folder is the user's data: never written into or deleted unless synth made it; locks, shrink,
damaged records, a full disk and a read-only disk (real tmpfs mounts when the tests run as root)."""
import contextlib
import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from synth.samplers.bulk import BulkError, BulkRequest, output_lock, parse_label_spec, prepare_out, run_bulk
from synth.samplers.generator import load_generator
from synth.labels import LabelSchema
from tests.samplers.test_bulk import tree_bytes

SCHEMA = LabelSchema(["normal", "pneumonia"])
pytestmark = pytest.mark.usefixtures("one_thread")


def request(export, out, n, **kw) -> BulkRequest:
    return BulkRequest(model=str(export), out=str(out), n=n, spec=parse_label_spec("normal=0.5,pneumonia=0.5", SCHEMA, log=lambda *a: None), steps=2,
                       shard_size=8, batch_size=4, **kw)


@pytest.fixture(scope="module")
def gen(tiny_export):
    return load_generator(tiny_export)


@pytest.fixture(scope="module")
def reference(tiny_export, gen, tmp_path_factory):
    """An uninterrupted 20-image set every other run must equal byte for byte."""
    out = tmp_path_factory.mktemp("ref") / "set"
    run_bulk(request(tiny_export, out, 20), gen, progress=False)
    return tree_bytes(out)


def test_refuses_a_users_non_empty_folder_and_writes_nothing(tiny_export, gen, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for overwrite in (False, True):
        with pytest.raises(BulkError, match=r"is not empty .*e.g. 'notes.txt'.*not made by synth"):
            run_bulk(request(tiny_export, tmp_path, 4, overwrite=overwrite), gen, progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_overwrite_deletes_only_synths_files(tiny_export, gen, tmp_path):
    out = tmp_path / "o"
    run_bulk(request(tiny_export, out, 10), gen, progress=False)
    (out / "shard-00000" / "my-annotations.csv").write_text("a,b")
    with pytest.raises(BulkError, match=r"--overwrite: .*'shard-00000/my-annotations.csv'.*nothing was deleted"):
        run_bulk(request(tiny_export, out, 10, overwrite=True, guidance=3.0), gen, progress=False)
    assert len(list((out / "shard-00000").glob("*.png"))) == 8
    (out / "shard-00000" / "my-annotations.csv").unlink()
    run_bulk(request(tiny_export, out, 10, overwrite=True, guidance=3.0), gen, progress=False)
    assert json.loads((out / "manifest.json").read_text())["settings"]["guidance"] == 3.0


def test_smaller_n_is_refused_then_shrink_equals_a_fresh_set(tiny_export, gen, tmp_path, reference):
    out, small = tmp_path / "s", tmp_path / "fresh"
    run_bulk(request(tiny_export, out, 20), gen, progress=False)
    with pytest.raises(BulkError, match=r"already holds images 0..19 and --n is 11.*--n 20.*--shrink"):
        run_bulk(request(tiny_export, out, 11), gen, progress=False)
    assert tree_bytes(out) == reference  # the refusal touched nothing
    run_bulk(request(tiny_export, out, 11, shrink=True), gen, progress=False)
    run_bulk(request(tiny_export, small, 11), gen, progress=False)
    assert tree_bytes(out) == tree_bytes(small)
    assert len(list(out.rglob("*.png"))) == 11
    run_bulk(request(tiny_export, out, 20), gen, progress=False)  # and it grows back to the same set
    assert tree_bytes(out) == reference


def test_second_run_into_a_locked_folder_stops(tiny_export, gen, tmp_path):
    out = tmp_path / "l"
    run_bulk(request(tiny_export, out, 4), gen, progress=False)
    lock = output_lock(out)
    try:
        with pytest.raises(BulkError, match=r"is in use by synth \(pid \d+ on .*\); wait for it"):
            run_bulk(request(tiny_export, out, 8), gen, progress=False)
    finally:
        lock.release()
    run_bulk(request(tiny_export, out, 8), gen, progress=False)


def test_damaged_done_record_redoes_the_shard(tiny_export, gen, tmp_path, reference):
    out = tmp_path / "d"
    run_bulk(request(tiny_export, out, 20), gen, progress=False)
    (out / ".synth" / "done" / "shard-00001.json").write_text('{"start": 8, "sto')  # torn
    (out / "shard-00001" / "00000009.png").write_bytes(b"\x89PNG\r\n")  # and a truncated image
    run_bulk(request(tiny_export, out, 20), gen, progress=False)
    assert tree_bytes(out) == reference


@contextlib.contextmanager
def tmpfs(size_kb: int):
    """A real small file system (needs root and mount(2): skipped elsewhere)."""
    where = f"/tmp/synth-tmpfs-{uuid.uuid4().hex[:8]}"
    os.makedirs(where)
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", where], capture_output=True)
    if p.returncode != 0:
        os.rmdir(where)
        pytest.skip(f"cannot mount a tmpfs here ({p.stderr.decode().strip()})")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", where], check=False)
        os.rmdir(where)


def remount(where: str, opts: str) -> None:
    subprocess.run(["mount", "-o", f"remount,{opts}", where], check=True)


def all_records_true(out) -> bool:
    """Every shard recorded as done has every listed file on disk with the recorded hash."""
    from synth.samplers.bulk import file_matches, read_done

    recs = [read_done(out, int(p.stem[6:11])) for p in (out / ".synth" / "done").glob("shard-*.json")]
    return all(file_matches(out, e) for r in recs if r for e in r["files"])


def test_full_disk_then_room_completes_the_same_set(tiny_export, gen, reference):
    with tmpfs(24) as where:  # room for the first shard or two of 16x16 PNGs, not all three
        out = Path(where) / "set"
        with pytest.raises(BulkError, match=r"(No space left on device).*run the same command again"):
            run_bulk(request(tiny_export, out, 20), gen, progress=False)
        assert all_records_true(out)
        remount(where, "size=4m")
        run_bulk(request(tiny_export, out, 20), gen, progress=False)
        assert tree_bytes(out) == reference


def test_read_only_disk_is_one_line_and_loses_nothing(tiny_export, gen, reference):
    with tmpfs(4096) as where:
        out = Path(where) / "set"
        run_bulk(request(tiny_export, out, 8), gen, progress=False)
        before = tree_bytes(out)
        remount(where, "ro")
        with pytest.raises(BulkError, match=r"Read-only file system"):
            run_bulk(request(tiny_export, out, 20), gen, progress=False)
        assert tree_bytes(out) == before
        remount(where, "rw")
        run_bulk(request(tiny_export, out, 20), gen, progress=False)
        assert tree_bytes(out) == reference


def test_overwrite_keeps_the_lock_it_holds(tiny_export, gen, tmp_path):
    """--overwrite deletes .synth/ but not the lock file the running process holds (else a second run gets in)."""
    out = tmp_path / "k"
    run_bulk(request(tiny_export, out, 4), gen, progress=False)
    lock = output_lock(out)
    try:
        prepare_out(out, {"other": "settings"}, overwrite=True, main=True)
        with pytest.raises(BulkError, match="is in use by"):
            output_lock(out)
    finally:
        lock.release()


def test_webdataset_killed_between_tar_and_record_resumes_with_the_same_n(tiny_export, gen, tmp_path):
    out = tmp_path / "w"
    req = BulkRequest(**{**request(tiny_export, out, 12).__dict__, "format": "webdataset"})
    run_bulk(req, gen, progress=False)
    ref = tree_bytes(out)
    (out / ".synth" / "done" / "shard-00001.json").unlink()  # the kill fell after the tar, before its record
    run_bulk(req, gen, progress=False)
    assert tree_bytes(out) == ref


def test_refusals_about_out_come_before_the_model_loads(tiny_export, tmp_path):
    """`synth sample` into a user's folder fails in the time of a folder listing, naming the folder."""
    from tests.samplers.test_bulk import base_args, cli

    (tmp_path / "mine.txt").write_text("x")
    p = cli(*base_args(tiny_export, tmp_path, 4), check=False)
    assert p.returncode == 2 and "not made by synth" in p.stderr and "Loading weights" not in p.stderr
