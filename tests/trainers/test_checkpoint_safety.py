"""Damaged training state: a checkpoint cut short or changed is detected by its recorded SHA-256, skipped
with a message naming it, and the run resumes from the one before and ends where an uninterrupted run ends."""
import json
from pathlib import Path

import pytest
import torch

from synth.config import ConfigError
from tests.conftest import tiny_cfg
from tests.trainers.test_ldm import _final_state
from synth.trainers.checkpoints import checkpoint_problem, list_checkpoints
from synth.trainers.common import TrainingError
from synth.trainers.ldm import train_ldm

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(run, steps, log=None):
    return train_ldm(tiny_cfg(f"train.steps={steps}", "data.phantom_items=32"), run, log=log or (lambda *a: None))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    run = tmp_path_factory.mktemp("ckpt-ref")
    _train(run, 6)
    return _final_state(run, 6)


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete"])
def test_damaged_latest_checkpoint_is_skipped_and_resume_matches(tmp_path, uninterrupted, damage):
    _train(tmp_path, 4)
    victim = tmp_path / "checkpoints" / "step-00000004" / ("unet.safetensors" if damage != "flip" else "optim.pt")
    data = victim.read_bytes()
    if damage == "truncate":
        victim.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        victim.write_bytes(data[:-10] + bytes(b ^ 0xFF for b in data[-10:]))
    else:
        victim.unlink()
    assert checkpoint_problem(victim.parent) is not None
    said = []
    _train(tmp_path, 6, log=said.append)
    msg = " ".join(map(str, said))
    assert "step-00000004 is damaged" in msg and "corrupt-step-00000004" in msg, msg
    assert (tmp_path / "checkpoints" / "corrupt-step-00000004").is_dir()  # kept for inspection, never pruned
    b = _final_state(tmp_path, 6)
    assert all(torch.equal(uninterrupted[k], b[k]) for k in uninterrupted)


def test_old_checkpoint_without_checksums_that_cannot_load_is_one_line(tmp_path):
    _train(tmp_path, 2)
    ck = tmp_path / "checkpoints" / "step-00000002"
    state = json.loads((ck / "state.json").read_text())
    state.pop("checksums")  # as written before checksums were recorded
    (ck / "state.json").write_text(json.dumps(state))
    (ck / "unet.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(TrainingError, match=r"checkpoint '.*step-00000002' cannot be loaded .*move that folder out"):
        _train(tmp_path, 4)


def test_damaged_run_record_is_one_line(tmp_path):
    _train(tmp_path, 2)
    (tmp_path / "run.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"cannot read '.*run.json'.*restore it"):
        _train(tmp_path, 4)


def test_checkpoint_records_checksums_of_every_file(tmp_path):
    _train(tmp_path, 2)
    (_, ck), = list_checkpoints(tmp_path)
    sums = json.loads((ck / "state.json").read_text())["checksums"]
    assert sorted(sums) == sorted(p.name for p in ck.iterdir() if p.name != "state.json")


def test_full_disk_while_checkpointing_is_one_line_and_resume_matches(uninterrupted):
    """A run folder on a tiny real tmpfs: the disk fills at a checkpoint; the error names it and the last good one;
    with room again the same command resumes and ends where the uninterrupted run ends."""
    from tests.samplers.test_bulk_safety import remount, tmpfs

    with tmpfs(1200) as where:  # room for the data cache and a few checkpoints of the 0.25M-param model, not 3
        run = Path(where) / "run"
        with pytest.raises(TrainingError, match=r"cannot write checkpoint step \d+ .*No space left on device.*resume from"):
            _train(run, 6)
        assert all(checkpoint_problem(c) is None for _, c in list_checkpoints(run))
        assert not list((run / "checkpoints").glob(".tmp-step-*"))
        remount(where, "size=64m")
        _train(run, 6)
        b = _final_state(run, 6)
        assert all(torch.equal(uninterrupted[k], b[k]) for k in uninterrupted)


def test_every_checkpoint_damaged_restarts_from_zero_and_says_so(tmp_path, uninterrupted):
    _train(tmp_path, 4)
    for ck in (tmp_path / "checkpoints").glob("step-*"):
        (ck / "ema.safetensors").write_bytes(b"")
    said = []
    _train(tmp_path, 6, log=said.append)
    assert any("no intact checkpoint left" in str(m) and "step 0" in str(m) for m in said)
    b = _final_state(tmp_path, 6)
    assert all(torch.equal(uninterrupted[k], b[k]) for k in uninterrupted)


def test_a_users_export_folder_in_the_run_is_refused_before_training(tmp_path):
    from synth.io import ForeignFolderError

    _train(tmp_path, 2)
    import shutil

    shutil.rmtree(tmp_path / "export")
    (tmp_path / "export").mkdir()
    (tmp_path / "export" / "my-notes.txt").write_text("mine")
    with pytest.raises(ForeignFolderError, match=r"refusing to replace export .* no 'synth.json'"):
        _train(tmp_path, 4)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]  # refused before any training
    assert (tmp_path / "export" / "my-notes.txt").read_text() == "mine"


def test_a_non_empty_user_folder_is_not_a_run_folder(tmp_path):
    (tmp_path / "config.yaml").write_text("# my notes")
    with pytest.raises(ConfigError, match=r"run folder .* is not empty .*'config.yaml'.*no run.json"):
        _train(tmp_path, 2)
    assert (tmp_path / "config.yaml").read_text() == "# my notes"


def test_second_trainer_on_the_same_run_folder_stops(tmp_path):
    from synth.io import FolderBusyError, FolderLock

    lock = FolderLock(tmp_path / ".lock", "run folder")
    try:
        with pytest.raises(FolderBusyError, match=r"run folder '.*' is in use by synth \(pid \d+"):
            _train(tmp_path, 2)
    finally:
        lock.release()
    _train(tmp_path, 2)


def test_atomic_replace_dir_swaps_or_falls_back_and_refuses_foreign(tmp_path, monkeypatch):
    import synth.io as sio

    for exchange in (True, False):
        final = tmp_path / f"export-{exchange}"
        for version in ("old", "new"):
            tmp = sio.fresh_tmp_dir(final)
            (tmp / "synth.json").write_text(version)
            if not exchange:
                monkeypatch.setattr(sio, "_exchange", lambda a, b: False)
            sio.atomic_replace_dir(tmp, final, marker="synth.json")
        assert (final / "synth.json").read_text() == "new"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(f".export-{exchange}")) == []
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x").write_text("mine")
    with pytest.raises(sio.ForeignFolderError):
        sio.atomic_replace_dir(sio.fresh_tmp_dir(foreign), foreign, marker="synth.json")
    assert (foreign / "x").read_text() == "mine"


def test_kill_between_the_fallbacks_two_renames_restores_the_old_folder(tmp_path):
    import os

    import synth.io as sio

    final = tmp_path / "export"
    final.mkdir()
    (final / "synth.json").write_text("old")
    old = tmp_path / ".export.old-abc"
    old.mkdir()
    os.replace(final, old / "export")  # the state right after the first rename
    sio.remove_stale_tmp_dirs(final)
    assert (final / "synth.json").read_text() == "old" and not old.exists()
