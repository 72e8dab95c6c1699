import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from synth.samplers.bulk import (BulkError, BulkRequest, condition_for, parse_label_spec, parse_prompt_file, prepare_out,
                           run_bulk)
from synth.samplers.generator import load_generator, read_artifact
from synth.labels import LabelError, LabelSchema
from synth.seeds import image_seed
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
    assert [(c.label, c.prompt) for c in conds] == [(1, "pneumonia"), (0, "clear lungs, no effusion"),
                                                   (None, "bilateral infiltrates"), (1, "pneumonia")]


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
    req = BulkRequest(model=str(tiny_export), out=str(out), n=20, spec=parse_label_spec("normal", SCHEMA), steps=3,
                      shard_size=8, batch_size=4)
    run_bulk(BulkRequest(**{**req.__dict__, "n": 8}), load_generator(tiny_export), progress=False)
    (out / "shard-00001").write_text("a file where a folder must go")  # an OSError mid-run, like a full disk
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


class RecordingGenerator:
    """The real tiny generator, recording the indices of every call (padding included)."""

    def __init__(self, gen, seed: int, n: int):
        self.gen, self.calls = gen, []
        self.index_of = {image_seed(seed, i): i for i in range(n)}

    def sample(self, conditions, seeds, **kw):
        self.calls.append([self.index_of[s] for s in seeds])
        return self.gen.sample(conditions, seeds, **kw)


def assert_aligned(calls, batch, shard_size):
    """Every call has ``batch`` images: a run of consecutive indices starting at a batch
    boundary of its shard, then the last one repeated (padding)."""
    for idx in calls:
        assert len(idx) == batch, idx
        real = sorted(set(idx))
        assert real == list(range(idx[0], idx[0] + len(real))) and idx[len(real):] == [real[-1]] * (batch - len(real))
        assert (idx[0] % shard_size) % batch == 0, idx


def done_files(out: Path) -> dict:
    return {e["name"]: e for rec in (out / ".synth" / "done").glob("*.json") for e in json.loads(rec.read_text())["files"]}


@pytest.mark.parametrize("shard_size,batch", [(10, 5), (8, 5)])
def test_batches_aligned_and_padded(tiny_export, tmp_path, shard_size, batch):
    n, out = 23, tmp_path / "set"
    req = BulkRequest(model=str(tiny_export), out=str(out), n=n, spec=parse_label_spec("normal,pneumonia", SCHEMA),
                      steps=2, shard_size=shard_size, batch_size=batch)
    rec = RecordingGenerator(load_generator(tiny_export), req.seed, n)
    res = run_bulk(req, rec, progress=False, pad_batches=True)  # the GPU path
    assert_aligned(rec.calls, batch, shard_size)
    assert sorted({i for c in rec.calls for i in c}) == list(range(n)) and res.generated == n
    files = done_files(out)  # every file with its size and sha256
    assert len(files) == n and all(e["size"] == (out / name).stat().st_size for name, e in files.items())
    before = tree_bytes(out)

    # resume after a partial shard (record gone, two PNGs missing, one cut short by a power loss) and a done
    # shard whose PNG changed: both redone by whole aligned batches, to identical bytes
    (out / ".synth" / "done" / "shard-00001.json").unlink(missing_ok=True)
    s1 = range(shard_size, 2 * shard_size)
    (out / "shard-00001" / f"{s1[1]:08d}.png").unlink()
    (out / "shard-00001" / f"{s1[-1]:08d}.png").unlink()
    (out / "shard-00001" / f"{s1[2]:08d}.png").write_bytes(b"")
    p0 = out / "shard-00000" / "00000003.png"
    p0.write_bytes(p0.read_bytes()[:-5] + b"xxxxx")  # same size, other bytes: only the hash sees it
    rec.calls.clear()
    res = run_bulk(req, rec, progress=False, pad_batches=True)  # the GPU path
    assert_aligned(rec.calls, batch, shard_size)
    sampled = {i for c in rec.calls for i in c}
    assert {3, s1[1], s1[2], s1[-1]} <= sampled and 0 < len(sampled) < n
    assert tree_bytes(out) == before


def test_webdataset_done_record_rechecked(tiny_export, tmp_path):
    out = tmp_path / "wds"
    req = BulkRequest(model=str(tiny_export), out=str(out), n=12, spec=parse_label_spec("pneumonia", SCHEMA),
                      steps=2, shard_size=8, batch_size=4, format="webdataset")
    run_bulk(req, load_generator(tiny_export), progress=False)
    files = done_files(out)
    assert set(files) == {"shard-00000.tar", "shard-00001.tar"}
    before = tree_bytes(out)
    tar = out / "shard-00001.tar"
    tar.write_bytes(tar.read_bytes()[:-1024])  # cut short
    res = run_bulk(req, load_generator(tiny_export), progress=False)
    assert res.generated == 4 and tree_bytes(out) == before


def test_batch_size_in_identity_on_cuda_only(tiny_export, tmp_path):
    meta = read_artifact(tiny_export)
    spec = parse_label_spec("normal", SCHEMA)
    a = BulkRequest(model=str(tiny_export), out=str(tmp_path), n=4, spec=spec, batch_size=64)
    b = BulkRequest(model=str(tiny_export), out=str(tmp_path), n=4, spec=spec, batch_size=32)
    assert a.identity(meta, SCHEMA, "cpu") == b.identity(meta, SCHEMA, "cpu")  # CPU: batch-size independent
    assert a.identity(meta, SCHEMA, "cuda:0")["batch_size"] == 64
    out = tmp_path / "gpu-set"
    prepare_out(out, a.identity(meta, SCHEMA, "cuda"), overwrite=False, main=True)
    prepare_out(out, a.identity(meta, SCHEMA, "cuda:1"), overwrite=False, main=True)  # same batch size: resumes
    with pytest.raises(BulkError, match=r"sampled on CUDA with --batch-size 64 and this run is on CUDA with "
                                        r"--batch-size 32.*same --batch-size"):
        prepare_out(out, b.identity(meta, SCHEMA, "cuda"), overwrite=False, main=True)
    with pytest.raises(BulkError, match=r"sampled on CUDA with --batch-size 64 and this run is on CPU"):
        prepare_out(out, a.identity(meta, SCHEMA, "cpu"), overwrite=False, main=True)


MAIN_FIRST_SCRIPT = """
import sys
from synth.samplers.bulk import BulkError, process_group
from synth.distributed import main_first
def refuse():
    raise BulkError("output folder 'x' holds images from another model")
try:
    with process_group(2):
        main_first(refuse, 2)
except BulkError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
"""


def test_main_first_failure_reaches_every_rank(tmp_path):
    """Plain processes, no torchrun agent to kill a waiting rank: only main_first can release rank 1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen([sys.executable, "-c", MAIN_FIRST_SCRIPT], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "RANK": str(r), "WORLD_SIZE": "2",
                                   "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}) for r in (0, 1)]
    try:
        errs = [p.communicate(timeout=120)[1] for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [2, 2], errs
    assert all("holds images from another model" in e for e in errs)


@pytest.mark.slow
def test_torchrun_refusal_does_not_hang(tiny_export, tmp_path):
    cli(*base_args(tiny_export, tmp_path / "o", 6, "--guidance", "3"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "synth.cli",
                        *base_args(tiny_export, tmp_path / "o", 6)], capture_output=True, text=True, env=env,
                       cwd=ROOT, timeout=120)
    assert p.returncode != 0 and "differs in: guidance" in p.stderr, p.stderr[-3000:]


def test_set_made_before_exact_quotas_resumes_with_its_own_labels(tiny_export, tmp_path):
    """A set whose request.json has no label_order was made with golden-ratio labels: extending it keeps them."""
    import dataclasses

    from synth.allocation import labels_for

    spec = parse_label_spec("normal=0.2,pneumonia=0.8", SCHEMA)
    old = BulkRequest(model=str(tiny_export), out=str(tmp_path / "old"), n=10, spec=dataclasses.replace(spec, order="weyl"),
                      steps=2, shard_size=8, batch_size=5)
    run_bulk(old, progress=False, log=lambda m: None)
    ident = json.loads((tmp_path / "old" / ".synth" / "request.json").read_text())
    assert "label_order" not in ident["conditions"]
    res = run_bulk(dataclasses.replace(old, spec=spec, n=20), progress=False, log=lambda m: None)
    rows = [json.loads(line) for line in (tmp_path / "old" / "metadata.jsonl").read_text().splitlines()]
    assert [r["label_id"] for r in rows] == labels_for(20, spec.labels, "weyl") and res.manifest["n_done"] == 20
    new = run_bulk(dataclasses.replace(old, spec=spec, n=20, out=str(tmp_path / "new")), progress=False,
                   log=lambda m: None)
    new_rows = [json.loads(line) for line in (tmp_path / "new" / "metadata.jsonl").read_text().splitlines()]
    assert [r["label_id"] for r in new_rows] == labels_for(20, spec.labels) and new.manifest["n_done"] == 20
    assert sum(r["label_id"] == 0 for r in new_rows) == 4


def test_the_python_api_writes_what_the_cli_writes(tiny_export, tmp_path):
    """One orchestration (issue 16): synth.samplers.orchestrate.sample_set, called from Python, gives the bytes
    `synth sample` gives, and refuses the same bad input with the same one-line error."""
    from synth.config import ConfigError
    from synth.samplers.orchestrate import sample_set

    cli(*base_args(tiny_export, tmp_path / "cli", 10))
    res = sample_set(tiny_export, tmp_path / "api", 10, steps=3, shard_size=8, batch_size=5, progress=False,
                     log=lambda m: None)
    assert res.manifest["n_done"] == 10 and tree_bytes(tmp_path / "cli") == tree_bytes(tmp_path / "api")
    with pytest.raises(ConfigError, match="--dtype float16 needs a CUDA device"):
        sample_set(tiny_export, tmp_path / "x", 2, dtype="float16", device="cpu", log=lambda m: None)
    assert not (tmp_path / "x").exists()


def test_synth_sample_resumes_a_set_made_before_exact_quotas(tiny_export, tmp_path):
    """The out check runs before the model loads: it must see the set's own (golden-ratio) label order, or a set
    made before exact quotas is refused as "other settings" (review finding)."""
    import dataclasses

    from synth.samplers.orchestrate import sample_set

    spec = parse_label_spec("normal=0.2,pneumonia=0.8", SCHEMA)
    old = BulkRequest(model=str(tiny_export), out=str(tmp_path / "old"), n=6, spec=dataclasses.replace(spec, order="weyl"),
                      steps=2, shard_size=4, batch_size=4)
    run_bulk(old, progress=False, log=lambda m: None)
    res = sample_set(tiny_export, tmp_path / "old", 10, labels="normal=0.2,pneumonia=0.8", steps=2, shard_size=4,
                     batch_size=4, progress=False, log=lambda m: None)
    assert res.manifest["n_done"] == 10


def test_numpy_weights_are_numbers(tiny_export):
    import numpy as np

    from synth.augment import OnlineSynthetic

    g = load_generator(tiny_export)
    ds = OnlineSynthetic(g, 10, labels={"normal": np.float32(0.2), "pneumonia": np.float64(0.8)})
    assert OnlineSynthetic(g, 4, labels={"normal": np.int64(1), "pneumonia": np.int64(1)}).labels.tolist().count(0) == 2
    assert ds.labels.tolist().count(0) == 2
