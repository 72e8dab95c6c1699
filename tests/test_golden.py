"""Golden bytes (issue 16): the same commands give the same bytes before and after the house is rebuilt.

Fixed tiny configs on CPU with one thread and portable kernels (see PORTABLE): an autoencoder, a latent diffusion model on it, a pixel
bridge; then a 64-image set of the LDM (imagefolder and webdataset), a translation by the bridge and
an ``eval fidelity`` report.  Their SHA-256s are recorded in ``tests/golden/hashes.json``; a refactor
that changes any byte fails here, naming the artifact.  Re-record deliberately (a change of numerics
or format that is meant) with ``SYNTH_GOLDEN_UPDATE=1 pytest tests/test_golden.py`` and say why in the
commit.  Provenance in every PNG names the synth version, so a version bump re-records too.
"""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests.conftest import ROOT, TINY

GOLDEN = ROOT / "tests" / "golden" / "hashes.json"
AE = TINY + ["train.steps=3", "train.checkpoint_every=3", "train.eval_every=0"]
LDM = TINY + ["train.steps=3", "train.checkpoint_every=3", "model.codec=vae", "train.force=true"]
BRIDGE = TINY + ["labels.domains=[clean,dim,inverted]", "model.unet.attention_levels=[false,false]", "train.steps=4",
                 "train.checkpoint_every=4"]


def synth(*args: str) -> str:
    from synth.cli import main

    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    assert res.exit_code == 0, res.stderr[-2000:]
    return res.stdout


def sets(overrides: list[str]) -> list[str]:
    return [a for kv in overrides for a in ("--set", kv)]


def digest(paths: list[Path], root: Path) -> str:
    """One SHA-256 over the relative names and bytes of ``paths`` (sorted)."""
    h = hashlib.sha256()
    for p in sorted(paths):
        h.update(str(p.relative_to(root)).encode() + b"\0" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


def files(root: Path, pattern: str) -> list[Path]:
    return [p for p in root.rglob(pattern) if p.is_file() and ".synth" not in p.parts]


def fidelity_numbers(report: Path) -> str:
    """The measured values of a fidelity report (its JSON minus timings and paths), canonical."""
    rep = json.loads(report.read_text())

    def keep(v):
        if isinstance(v, dict):
            return {k: keep(x) for k, x in sorted(v.items()) if "second" not in k and "path" not in k and k != "out_dir"}
        if isinstance(v, list):
            return [keep(x) for x in v]
        return round(v, 6) if isinstance(v, float) else v
    return hashlib.sha256(json.dumps(keep(rep), sort_keys=True).encode()).hexdigest()


def build(tmp: Path) -> dict[str, str]:
    """Run every golden command in ``tmp``; name -> SHA-256."""
    from synth.data import phantom_domains

    out = {}
    synth("train", "autoencoder", "--run", tmp / "ae", *sets(AE))
    out["autoencoder weights"] = digest(files(tmp / "ae" / "export", "*.safetensors"), tmp / "ae" / "export")
    synth("train", "ldm", "--run", tmp / "ldm", *sets(LDM + [f"model.autoencoder={tmp / 'ae'}"]))
    out["ldm weights"] = digest(files(tmp / "ldm" / "export", "*.safetensors"), tmp / "ldm" / "export")

    imgs, dom = phantom_domains(96, 16)
    np.savez(tmp / "dom3.npz", train_images=imgs, train_labels=dom[:, None], val_images=imgs[:24],
             val_labels=dom[:24, None], test_images=imgs[:24], test_labels=dom[:24, None])
    synth("train", "bridge", "--run", tmp / "bridge", *sets(BRIDGE + [f"data.name={tmp / 'dom3.npz'}"]))
    out["bridge weights"] = digest(files(tmp / "bridge" / "export", "*.safetensors"), tmp / "bridge" / "export")

    common = ["--n", "64", "--steps", "3", "--shard-size", "16", "--batch-size", "8", "--quiet"]
    synth("sample", "--model", tmp / "ldm" / "export", "--out", tmp / "set", *common)
    out["set imagefolder (PNGs + metadata.jsonl)"] = digest(files(tmp / "set", "*.png") + [tmp / "set" / "metadata.jsonl"],
                                                            tmp / "set")
    synth("sample", "--model", tmp / "ldm" / "export", "--out", tmp / "wds", "--format", "webdataset", *common)
    out["set webdataset (tars)"] = digest(files(tmp / "wds", "*.tar"), tmp / "wds")

    dim = imgs[dom == 1][:12]
    np.savez(tmp / "dim.npz", test_images=dim, test_labels=(np.arange(len(dim)) % 2)[:, None])
    synth("translate", "--model", tmp / "bridge" / "export", "--input", tmp / "dim.npz", "--source", "dim",
          "--target", "clean", "--steps", "3", "--out", tmp / "tr", "--shard-size", "8", "--batch-size", "4", "--quiet")
    out["translation (PNGs + metadata.jsonl)"] = digest(files(tmp / "tr", "*.png") + [tmp / "tr" / "metadata.jsonl"],
                                                        tmp / "tr")

    synth("eval", "fidelity", "--set", tmp / "set", "--data", "phantom", "--out", tmp / "fid",
          "--set-config", "data.phantom_items=64")
    out["eval fidelity (fidelity.json values)"] = fidelity_numbers(tmp / "fid" / "fidelity.json")
    return out


# A float's last bits depend on the kernels the CPU's vector instructions select (oneDNN, MKL and ATen dispatch by
# ISA and sum in other orders): recorded with the recording machine's own kernels, these bytes differed on the next
# machine with the code unchanged.  So the build runs in a child process pinned to one level every x86-64 server
# has: ATen's AVX2 kernels, MKL's AVX2 conditional-reproducibility branch, oneDNN off, one thread.
PORTABLE = {"ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def portable_problem() -> str | None:
    """Why this machine cannot give the recorded bytes (None: it can)."""
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return f"golden bytes are recorded for x86-64 (AVX2 kernels); this machine is {platform.machine()}"
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "golden bytes need /proc/cpuinfo to confirm AVX2"
    return None if " avx2" in flags and " fma" in flags else "golden bytes need a CPU with AVX2 and FMA"


def build_portable(tmp: Path) -> dict[str, str]:
    """:func:`build` in a child process with the :data:`PORTABLE` kernels; name -> SHA-256."""
    import subprocess
    import sys

    out = tmp / "hashes.json"
    env = {**os.environ, **PORTABLE, "PYTHONPATH": str(ROOT)}
    res = subprocess.run([sys.executable, "-m", "tests.test_golden", str(tmp / "work"), str(out)], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.mark.slow
def test_golden_bytes(tmp_path):
    problem = portable_problem()
    if problem:
        pytest.skip(problem)
    got = build_portable(tmp_path)
    if os.environ.get("SYNTH_GOLDEN_UPDATE") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(got, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"recorded {len(got)} golden hashes in {GOLDEN}")
    want = json.loads(GOLDEN.read_text())
    changed = [k for k in want if got.get(k) != want[k]]
    assert set(got) == set(want) and not changed, f"bytes changed for: {changed}"


if __name__ == "__main__":  # the child of build_portable: python -m tests.test_golden WORK_DIR OUT_JSON
    import sys

    import torch

    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    work = Path(sys.argv[1])
    work.mkdir(parents=True)
    Path(sys.argv[2]).write_text(json.dumps(build(work), sort_keys=True))
