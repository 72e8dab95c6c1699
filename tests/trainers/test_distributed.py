"""Multi-process training on CPU (torchrun, gloo): global batch semantics, resume across
process counts, and a failure on rank 0 reaching every rank."""
import json
import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from synth.config import ConfigError
from tests.conftest import ROOT, TINY, tiny_cfg
from synth.trainers.rundir import prepare_run_dir
from synth.trainers.ldm import train_ldm

pytestmark = pytest.mark.slow


def torchrun(*args, nproc=2, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
                           "-m", "synth.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)


def sets(*extra):
    return [a for kv in (TINY + list(extra)) for a in ("--set", kv)]


def unet_weights(run, step):
    return load_file(str(run / "checkpoints" / f"step-{step:08d}" / "unet.safetensors"))


def test_two_processes_equal_one_process_with_the_same_global_batch(tmp_path):
    common = ("train.steps=4", "train.ema_decay=0", "train.checkpoint_every=4")
    train_ldm(tiny_cfg(*common, "train.batch_size=8"), tmp_path / "one", log=lambda *a: None)
    p = torchrun("train", "ldm", "--run-dir", str(tmp_path / "two"), *sets(*common, "train.batch_size=4"))
    assert p.returncode == 0, p.stderr[-3000:]
    train_ldm(tiny_cfg(*common, "train.batch_size=8", "train.seed=1"), tmp_path / "control", log=lambda *a: None)
    # the baseline: the same global batch summed in another order in ONE process (4 x accumulation 2),
    # measured here, on this machine's numerics, instead of a bound guessed on another machine
    train_ldm(tiny_cfg(*common, "train.batch_size=4", "train.grad_accum=2"), tmp_path / "accum", log=lambda *a: None)
    a, b = unet_weights(tmp_path / "one", 4), unet_weights(tmp_path / "two", 4)
    c, e = unet_weights(tmp_path / "control", 4), unet_weights(tmp_path / "accum", 4)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    control = max(float((a[k] - c[k]).abs().max()) for k in a)
    baseline = max(float((a[k] - e[k]).abs().max()) for k in a)
    # float tolerance: the all-reduce sums in another order and Adam magnifies tiny gradient
    # differences on near-zero gradients, as accumulation does; a different seed moves weights ~100x further
    assert worst <= 10 * max(baseline, 1e-6) and control > 20 * worst, \
        f"2 x 4 differs from 1 x 8 by {worst} (accumulation baseline: {baseline}; other seed: {control})"
    assert json.loads((tmp_path / "two" / "run.json").read_text())["global_batch"] == 8
    two = json.loads((tmp_path / "two" / "export" / "synth.json").read_text())["training"]
    one = json.loads((tmp_path / "one" / "export" / "synth.json").read_text())["training"]
    assert two["processes"] == 2 and two["steps"] == 4 and two["cpu_s"] > 0  # every rank's CPU seconds, summed
    assert one["processes"] == 1 and one["from_step"] == 0

    # resuming the 2-process run in ONE process works when the global batch is kept ...
    train_ldm(tiny_cfg("train.steps=6", "train.ema_decay=0", "train.checkpoint_every=4", "train.batch_size=8"),
              tmp_path / "two", log=lambda *a: None)
    assert (tmp_path / "two" / "checkpoints" / "step-00000006").is_dir()
    # ... and is refused, naming the fix, when it is not
    with pytest.raises(ConfigError, match=r"global batch of 8 .* set train\.batch_size=8 or train\.grad_accum=2"):
        prepare_run_dir(tiny_cfg("train.steps=8", "train.ema_decay=0", "train.checkpoint_every=4", "train.batch_size=4"),
                        tmp_path / "two", "ldm", world=1)


def test_gradient_accumulation_equals_a_bigger_batch(tmp_path):
    common = ("train.steps=3", "train.ema_decay=0", "train.checkpoint_every=3")
    train_ldm(tiny_cfg(*common, "train.batch_size=8"), tmp_path / "big", log=lambda *a: None)
    train_ldm(tiny_cfg(*common, "train.batch_size=4", "train.grad_accum=2"), tmp_path / "acc", log=lambda *a: None)
    train_ldm(tiny_cfg(*common, "train.batch_size=8", "train.seed=1"), tmp_path / "control", log=lambda *a: None)
    a, b, c = (unet_weights(tmp_path / r, 3) for r in ("big", "acc", "control"))
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    control = max(float((a[k] - c[k]).abs().max()) for k in a)
    # float tolerance, as for 2 processes above: the sums run in another order (and another thread count
    # changes that order too); Adam magnifies it on near-zero gradients; another seed moves weights far more
    assert worst < 1e-4 and control > 20 * worst, f"4 x accum 2 differs from 8 by {worst} (other seed: {control})"


def test_rank0_failure_stops_every_rank(tmp_path):
    """Rank 0 refuses the run folder; rank 1 must not wait forever at a barrier."""
    (tmp_path / "run.json").write_text(json.dumps({"stage": "autoencoder", "config": {}}))
    p = torchrun("train", "ldm", "--run-dir", str(tmp_path), *sets("train.steps=2"), timeout=180)
    assert p.returncode != 0
    # both ranks print the same one-line error; the only traceback is torchrun's own summary
    assert p.stderr.count("error: run folder") == 2, p.stderr[-2000:]
    assert p.stderr.count("Traceback") <= 1 and "ChildFailedError" in p.stderr


def test_rank0_errors_are_rebuilt_with_their_type_and_errno():
    """What the other ranks raise: the same class and message; an OSError keeps its errno, so the CLI's one-line
    disk-full / read-only messages hold on every rank; a class it cannot rebuild still stops with the message."""
    import errno

    from synth.config import ConfigError
    from synth.distributed import _rebuild

    e = _rebuild("synth.config", "ConfigError", "bad key")
    assert type(e) is ConfigError and str(e) == "bad key"
    full = OSError(errno.ENOSPC, "No space left on device", "/out/x.png")
    e = _rebuild(type(full).__module__, type(full).__qualname__, str(full), full.errno, full.strerror, full.filename)
    assert type(e) is OSError and e.errno == errno.ENOSPC and e.filename == "/out/x.png"
    e = _rebuild("no.such.module", "Boom", "it broke")
    assert isinstance(e, RuntimeError) and "rank 0 failed: Boom: it broke" in str(e)
