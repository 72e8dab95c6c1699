import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from samplers.bulk import (BulkError, BulkRequest, condition_for, parse_label_spec, parse_prompt_file, run_bulk)
from samplers.generator import load_generator
from synth.labels import LabelError, LabelSchema
from tests.conftest import ROOT, run_cli_and_kill_when

SCHEMA = LabelSchema(["normal", "pneumonia"])


def tree_bytes(out: Path) -> dict[str, str]:
    """Hash of every file the user gets (the manifest minus nothing: it must match too)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and ".synth" not in p.parts}


def cli(*args, check=True, env_extra=None):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env_extra or {})}
    p = subprocess.run([sys.executable, "-m", "synth.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT,
                       timeout=600)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-3000:])
    return p


def base_args(model, out, n, *extra):
    return ["sample", "--model", str(model), "--num-images", str(n), "--out", str(out), "--steps", "3", "--shard-size", "8",
            "--batch-size", "5", "--quiet", *extra]


def test_label_spec_parsing():
    spec = parse_label_spec("normal=0.25,pneumonia=0.75", SCHEMA)
    assert spec.labels == ((0, 0.25), (1, 0.75))
    notes = []
    spec = parse_label_spec("normal=1,pneumonia=3", SCHEMA, log=notes.append)
    assert spec.labels == ((0, 0.25), (1, 0.75)) and "normalised" in notes[0]
    with pytest.raises(LabelError, match="unknown label 'covid'; known labels: normal, pneumonia"):
        parse_label_spec("covid=1", SCHEMA)
    with pytest.raises(LabelError, match="malformed label spec item 'normal=abc'"):
        parse_label_spec("normal=abc", SCHEMA)
    with pytest.raises(LabelError, match="weights must be finite and >= 0"):
        parse_label_spec("normal=-1,pneumonia=2", SCHEMA)


def test_conditions_are_index_functions_with_exact_proportions():
    spec = parse_label_spec("normal=0.3,pneumonia=0.7", SCHEMA)
    labels = [condition_for(i, spec, SCHEMA).label for i in range(1000)]
    assert abs(labels.count(0) - 300) <= 2
    assert abs(labels[:100].count(0) - 30) <= 2  # every prefix is balanced too
    assert labels == [condition_for(i, spec, SCHEMA).label for i in range(1000)]


def test_prompt_file(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("pneumonia\n# comment\nlabel=normal: clear lungs, no effusion\nbilateral infiltrates\n")
    spec = parse_prompt_file(f, SCHEMA)
    conds = [condition_for(i, spec, SCHEMA) for i in range(4)]
    assert [(c.label, c.prompt) for c in conds] == [(1, "chest x-ray, pneumonia"), (0, "clear lungs, no effusion"),
                                                   (None, "bilateral infiltrates"), (1, "chest x-ray, pneumonia")]


def test_imagefolder_loads_with_datasets(tiny_export, tmp_path):
    out = tmp_path / "set"
    req = BulkRequest(model=str(tiny_export), out=str(out), n=20, spec=parse_label_spec("normal,pneumonia", SCHEMA),
                      steps=3, shard_size=8, batch_size=7)
    res = run_bulk(req, load_generator(tiny_export), progress=False)
    m = json.loads((out / "manifest.json").read_text())
    assert m["n_done"] == 20 and m["completed_ranges"] == [[0, 20]] and sum(m["counts_per_label"].values()) == 20
    assert m["model"]["weights_sha256"] and m["versions"]["torch"] and m["label_schema"]["classes"] == ["normal", "pneumonia"]
    assert res.generated == 20
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train")
    assert len(ds) == 20 and {"image", "label", "prompt", "seed"} <= set(ds.column_names)
    assert ds[0]["image"].size == (16, 16) and ds[0]["image"].mode == "L"
    rows = [json.loads(l) for l in (out / "metadata.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(20))


def test_webdataset_readable(tiny_export, tmp_path):
    wds = pytest.importorskip("webdataset")
    out = tmp_path / "wds"
    req = BulkRequest(model=str(tiny_export), out=str(out), n=12, spec=parse_label_spec("pneumonia", SCHEMA),
                      steps=3, shard_size=8, batch_size=5, format="webdataset")
    run_bulk(req, load_generator(tiny_export), progress=False)
    tars = sorted(str(p) for p in out.glob("shard-*.tar"))
    assert len(tars) == 2
    samples = list(wds.WebDataset(tars, shardshuffle=False).decode("pil").to_tuple("png", "cls", "json"))
    assert len(samples) == 12 and all(int(c) == 1 for _, c, _ in samples)
    assert samples[0][0].size == (16, 16) and samples[0][2]["label"] == "pneumonia"


def test_sigkill_resume_same_bytes_and_extend(tiny_export, tmp_path):
    n = 120  # large enough that the run cannot finish between the poll and the kill
    cli(*base_args(tiny_export, tmp_path / "a", n))
    run_cli_and_kill_when(base_args(tiny_export, tmp_path / "b", n), tmp_path / "b" / ".synth" / "done" / "shard-00001.json",
                          {"OMP_NUM_THREADS": "1"})
    assert not (tmp_path / "b" / "manifest.json").exists(), "the run finished before it could be killed"
    cli(*base_args(tiny_export, tmp_path / "b", n))
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "b")
    # extending: 45 then n equals n at once
    cli(*base_args(tiny_export, tmp_path / "c", 45))
    cli(*base_args(tiny_export, tmp_path / "c", n))
    assert tree_bytes(tmp_path / "a") == tree_bytes(tmp_path / "c")


def test_refuses_other_settings_unless_overwrite(tiny_export, tmp_path):
    cli(*base_args(tiny_export, tmp_path / "o", 6))
    p = cli(*base_args(tiny_export, tmp_path / "o", 6, "--guidance", "3"), check=False)
    assert p.returncode == 2 and "differs in: guidance" in p.stderr and "--overwrite" in p.stderr
    cli(*base_args(tiny_export, tmp_path / "o", 6, "--guidance", "3", "--overwrite"))
    assert json.loads((tmp_path / "o" / "manifest.json").read_text())["settings"]["guidance"] == 3.0


def test_bad_inputs(tiny_export, tmp_path):
    for args, msg in [(["--n", "0"], "--n must be a positive"), (["--n", "-3"], "--n must be a positive"),
                      (["--labels", "covid=1"], "known labels: normal, pneumonia"),
                      (["--sampler", "nope"], "unknown sampler 'nope'")]:
        a = ["sample", "--model", str(tiny_export), "--out", str(tmp_path / "x"), "--n", "4", "--quiet", *args]
        p = cli(*a, check=False)
        assert p.returncode == 2 and msg in p.stderr, p.stderr[-500:]
    p = cli("sample", "--model", str(tmp_path), "--n", "4", "--out", str(tmp_path / "x"), check=False)
    assert p.returncode == 2 and "not a synth export" in p.stderr
    p = cli(*base_args(tiny_export, tmp_path / "y", 4, "--attention", "xformers"), check=False)
    assert p.returncode == 2 and "xformers" in p.stderr.strip().splitlines()[-1]


def test_write_error_mid_run_keeps_done_shards(tiny_export, tmp_path):
    out = tmp_path / "w"
    out.mkdir()
    (out / "shard-00001").write_text("a file where a folder must go")  # like a full disk: an OSError mid-run
    req = BulkRequest(model=str(tiny_export), out=str(out), n=20, spec=parse_label_spec("normal", SCHEMA), steps=3,
                      shard_size=8, batch_size=4, overwrite=True)
    with pytest.raises(BulkError, match=r"writing images to .* failed .*run the same command again to resume"):
        run_bulk(req, load_generator(tiny_export), progress=False)
    done = sorted(p.name for p in (out / ".synth" / "done").glob("*.json"))
    assert "shard-00001.json" not in done
    (out / "shard-00001").unlink()
    res = run_bulk(req, load_generator(tiny_export), progress=False)
    assert res.manifest["n_done"] == 20


@pytest.mark.slow
def test_two_processes_equal_one(tiny_export, tmp_path):
    cli(*base_args(tiny_export, tmp_path / "one", 30))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "synth.cli",
                        *base_args(tiny_export, tmp_path / "two", 30)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert tree_bytes(tmp_path / "one") == tree_bytes(tmp_path / "two")
