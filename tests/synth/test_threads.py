"""CPU threads (issue 19): the choice and its order, its line at start, and a set's bytes that never mix
two thread counts: a resume with another count is refused naming the fix, and the fix works."""
import os
import subprocess
import sys

import pytest

from synth.threads import ThreadsError, choose_threads, cores_available, set_wait_policy
from tests.conftest import ROOT
from tests.samplers.test_bulk import base_args, tree_bytes


def test_the_choice_and_its_order():
    cores = cores_available()
    assert choose_threads(None, {}).threads == cores and choose_threads(None, {}).source == "auto"
    assert choose_threads(None, {"LOCAL_WORLD_SIZE": str(cores * 2)}).threads == 1  # never 0
    assert choose_threads(None, {"OMP_NUM_THREADS": "3"}).threads == 3
    assert choose_threads(None, {"OMP_NUM_THREADS": "3", "SYNTH_THREADS": "2"}).source == "SYNTH_THREADS"
    assert choose_threads(5, {"SYNTH_THREADS": "2"}).threads == 5
    for bad, source in (("0", "SYNTH_THREADS"), ("two", "SYNTH_THREADS")):
        with pytest.raises(ThreadsError, match=source):
            choose_threads(None, {source: bad})


def test_wait_policy_is_bounded_unless_the_user_chose_one():
    env = {}
    set_wait_policy(env)
    assert env == {"GOMP_SPINCOUNT": "1000"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    set_wait_policy(env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}


def run_cli(args, **env_set):
    env = {k: v for k, v in os.environ.items() if k not in ("SYNTH_THREADS", "OMP_NUM_THREADS")}
    env.update({"PYTHONPATH": str(ROOT), **env_set})
    return subprocess.run([sys.executable, "-m", "synth.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=600)


def test_sets_never_mix_thread_counts(tiny_export, tmp_path):
    """The same set made with OMP_NUM_THREADS=1 and =2; a resume across them is refused naming the fix."""
    one = run_cli(base_args(tiny_export, tmp_path / "one", 16), OMP_NUM_THREADS="1")
    assert one.returncode == 0, one.stderr[-2000:]
    assert "threads: 1 CPU thread(s) (from OMP_NUM_THREADS)" in one.stderr
    part = run_cli(base_args(tiny_export, tmp_path / "resumed", 8), OMP_NUM_THREADS="1")
    assert part.returncode == 0, part.stderr[-2000:]
    refused = run_cli(base_args(tiny_export, tmp_path / "resumed", 16), OMP_NUM_THREADS="2")
    last = refused.stderr.strip().splitlines()[-1]
    assert refused.returncode == 2 and "sampled on CPU with 1 thread(s) and this run is on CPU with 2 thread(s)" in last
    assert "synth --threads 1" in last
    fixed = run_cli(["--threads", "1", *base_args(tiny_export, tmp_path / "resumed", 16)], OMP_NUM_THREADS="2")
    assert fixed.returncode == 0, fixed.stderr[-2000:]
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "resumed")
    two = run_cli(base_args(tiny_export, tmp_path / "two", 16), OMP_NUM_THREADS="2")
    assert two.returncode == 0, two.stderr[-2000:]
    # labels, names and layout agree whatever the thread count; the pixels may differ in the last bits
    assert sorted(tree_bytes(tmp_path / "two")) == sorted(tree_bytes(tmp_path / "one"))
