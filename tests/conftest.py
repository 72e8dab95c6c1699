"""Shared fixtures: tiny configs, real data from ../shared/data, a trained tiny export."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
PNEUMONIA_NPZ = SHARED / "medmnist" / "pneumoniamnist.npz"
KERMANY = SHARED / "kermany-cxr-224"

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One CPU thread for every process the suite starts and for this one: the bytes a test compares and the
# tolerances it checks must not depend on the machine's core count or on OMP_NUM_THREADS (issue 19).
# Tests of the thread choice itself set their own environment.
os.environ["SYNTH_THREADS"] = "1"


def pytest_configure(config):
    import torch

    torch.set_num_threads(1)


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"real data not found at {path} (see ../shared/data/README.md)")
    return path


# A ~50k-parameter model on 16x16 phantoms: seconds per run on 2 CPU cores.
TINY = [
    "data.name=phantom", "data.resolution=16", "data.phantom_items=64",
    "model.unet.block_out_channels=[16,32]", "model.unet.attention_levels=[false,true]",
    "model.unet.norm_num_groups=8", "model.unet.attention_head_dim=8",
    "model.text.hidden_size=32", "model.text.num_layers=1", "model.text.num_heads=2", "model.text.max_length=12",
    "model.text.vocab_size=600",
    "model.vae.block_out_channels=[16,16]", "model.vae.norm_num_groups=8", "model.vae.latent_channels=4",
    "train.batch_size=8", "train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=10",
    "train.warmup_steps=1", "train.progress=false", "train.log_every=1",
    "sample.per_class=2", "sample.steps=4",
]


def tiny_cfg(*extra: str):
    from synth.config import load_config

    return load_config(None, TINY + list(extra))


@pytest.fixture(scope="session")
def tiny_export(tmp_path_factory):
    """A tiny pixel-space LDM trained for a few steps and exported (shared by sampler tests)."""
    from synth.trainers.ldm import train_ldm

    run = tmp_path_factory.mktemp("tiny-ldm")
    return train_ldm(tiny_cfg("train.steps=6"), run, log=lambda *a: None)


def run_cli_and_kill_when(args: list[str], marker: Path, env_extra: dict | None = None, timeout: float = 300):
    """Start ``synth`` with ``args``, SIGKILL it as soon as ``marker`` exists; returns the process."""
    import signal
    import subprocess
    import sys
    import time

    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env_extra or {})}
    proc = subprocess.Popen([sys.executable, "-m", "synth.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while not marker.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one intra-op thread (a second one only adds barrier waits on a busy 2-core machine)."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
