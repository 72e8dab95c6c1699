"""`synth translate`: labels travel, resume and process count give identical bytes, bad input is one line."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT, run_cli_and_kill_when, tiny_cfg
from tests.samplers.test_bulk import cli, tree_bytes
from tests.trainers.test_bridge import BRIDGE, three_domains


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    from synth.trainers.bridge import train_bridge

    d = tmp_path_factory.mktemp("translate")
    data = three_domains(d / "dom3.npz", n=120)
    export = train_bridge(tiny_cfg(f"data.name={data}", *BRIDGE, "train.steps=8"), d / "run", log=lambda *a: None)
    # the input: 40 images of domain "dim" with their own (pathology-like) labels
    z = np.load(data)
    dim = z["train_images"][z["train_labels"][:, 0] == 1][:40]
    np.savez(d / "input.npz", test_images=dim, test_labels=(np.arange(len(dim)) % 2)[:, None])
    return export, d / "input.npz"


def args(export, inp, out, *extra):
    return ["translate", "--model", str(export), "--input", str(inp), "--source", "dim", "--target", "clean",
            "--tau", "0.5", "--steps", "4", "--out", str(out), "--shard-size", "8", "--batch-size", "4", "--quiet", *extra]


def test_labels_travel_and_resume_is_identical(bridge, tmp_path):
    export, inp = bridge
    cli(*args(export, inp, tmp_path / "a"))
    rows = [json.loads(line) for line in (tmp_path / "a" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 40 and [r["label_id"] for r in rows] == [i % 2 for i in range(40)]
    assert {r["source_domain"] for r in rows} == {"dim"} and {r["target_domain"] for r in rows} == {"clean"}
    assert rows[0]["label"] == "class_0" and rows[0]["tau"] == 0.5
    proc = run_cli_and_kill_when(args(export, inp, tmp_path / "b"), tmp_path / "b" / ".synth" / "done" / "shard-00001.json")
    assert proc.returncode != 0
    cli(*args(export, inp, tmp_path / "b"))
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")


@pytest.mark.slow
def test_two_processes_give_identical_bytes(bridge, tmp_path):
    export, inp = bridge
    cli(*args(export, inp, tmp_path / "one"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "synth.cli",
                        *args(export, inp, tmp_path / "two")], capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")


@pytest.mark.parametrize("change, message", [
    (("--source", "ct"), "unknown domain 'ct'; this model's domains: clean, dim, inverted"),
    (("--tau", "-0.1"), "--tau must be in [0, 1]"),
    (("--input", "/no/such.npz"), "does not exist"),
])
def test_bad_input_is_one_line(bridge, tmp_path, change, message):
    export, inp = bridge
    a = args(export, inp, tmp_path / "x")
    a[a.index(change[0]) + 1] = change[1]
    p = cli(*a, check=False)
    assert p.returncode == 2 and message in p.stderr.strip().splitlines()[-1] and "Traceback" not in p.stderr


def test_not_a_bridge_and_round_trip_note(bridge, tiny_export, tmp_path):
    export, inp = bridge
    a = args(tiny_export, inp, tmp_path / "x")
    p = cli(*a, check=False)
    assert p.returncode == 2 and "not a bridge" in p.stderr.strip().splitlines()[-1]
    a = args(export, inp, tmp_path / "rt")
    a[a.index("--target") + 1] = "dim"
    p = cli(*a)
    assert "a round trip" in p.stderr
