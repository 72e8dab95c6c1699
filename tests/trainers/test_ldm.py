import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from synth.config import ConfigError
from tests.conftest import ROOT, TINY, run_cli_and_kill_when, tiny_cfg
from synth.trainers.checkpoints import list_checkpoints
from synth.trainers.common import TrainingError
from synth.trainers.ldm import train_ldm

quiet = dict(log=lambda *a: None)


def cli(*args, check=True, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run([sys.executable, "-m", "synth.cli", *args], capture_output=True, text=True, env=env,
                       timeout=timeout, cwd=ROOT)
    if check and p.returncode != 0:
        raise AssertionError(p.stderr[-3000:])
    return p


def sets(*extra):
    return [a for kv in (TINY + list(extra)) for a in ("--set", kv)]


def test_export_is_a_diffusers_pipeline(tiny_export):
    from diffusers import StableDiffusionPipeline

    run = tiny_export.parent
    assert (run / "config.yaml").is_file() and (run / "samples" / "final.png").is_file()
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 6]
    files = [p.name for p in tiny_export.rglob("*") if p.is_file()]
    assert not [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt"))]  # safetensors only
    meta = json.loads((tiny_export / "synth.json").read_text())
    assert meta["codec"] == "pixel" and meta["labels"]["classes"] == ["normal", "pneumonia"]
    pipe = StableDiffusionPipeline.from_pretrained(tiny_export, vae=None, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("chest x-ray, pneumonia", height=128, width=128, num_inference_steps=3, output_type="latent").images
    assert out.shape == (1, 1, 16, 16) and torch.isfinite(out).all()


def test_rerun_of_finished_run_changes_nothing(tiny_export):
    run = tiny_export.parent
    before = load_file(str(run / "checkpoints" / "step-00000006" / "unet.safetensors"))
    train_ldm(tiny_cfg("train.steps=6"), run, **quiet)
    after = load_file(str(run / "checkpoints" / "step-00000006" / "unet.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)


def _final_state(run: Path, step: int) -> dict:
    d = run / "checkpoints" / f"step-{step:08d}"
    out = {f"unet.{k}": v for k, v in load_file(str(d / "unet.safetensors")).items()}
    out.update({f"ema.{k}": v for k, v in load_file(str(d / "ema.safetensors")).items()})
    opt = torch.load(d / "optim.pt", weights_only=True)["optimizer"]["state"]
    out.update({f"opt.{k}.{n}": t for k, s in opt.items() for n, t in s.items()})
    return out


def test_sigkill_resume_is_bit_exact(tmp_path):
    """A run SIGKILLed mid-way and started again ends with the same weights as an uninterrupted one."""
    steps = 30
    args = sets(f"train.steps={steps}", "train.checkpoint_every=3", "data.phantom_items=48")
    cli("train", "ldm", "--run", str(tmp_path / "a"), *args)
    proc = run_cli_and_kill_when(["train", "ldm", "--run", str(tmp_path / "b"), *args],
                                 tmp_path / "b" / "checkpoints" / "step-00000006" / "state.json")
    assert proc.returncode == -signal.SIGKILL
    done = [s for s, _ in list_checkpoints(tmp_path / "b")]
    assert done and max(done) < steps, "the run finished before it could be killed"
    cli("train", "ldm", "--run", str(tmp_path / "b"), *args)
    a, b = _final_state(tmp_path / "a", steps), _final_state(tmp_path / "b", steps)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_refuses_breaking_config_change(tmp_path):
    train_ldm(tiny_cfg("train.steps=2"), tmp_path, **quiet)
    with pytest.raises(ConfigError, match=r"config field 'model.unet.layers_per_block' changed"):
        train_ldm(tiny_cfg("train.steps=4", "model.unet.layers_per_block=2"), tmp_path, **quiet)
    train_ldm(tiny_cfg("train.steps=4"), tmp_path, **quiet)  # extending the run is fine
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 4]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    train_ldm(tiny_cfg("train.steps=2"), tmp_path, **quiet)
    good = load_file(str(tmp_path / "checkpoints" / "step-00000002" / "unet.safetensors"))
    with pytest.raises(TrainingError, match=r"(loss became (nan|inf)|not finite).*[Ll]ast good checkpoint: .*step-00000002"):
        train_ldm(tiny_cfg("train.steps=12", "train.grad_clip=0", "train.warmup_steps=0", "train.lr=1e36"), tmp_path, **quiet)
    kept = load_file(str(tmp_path / "checkpoints" / "step-00000002" / "unet.safetensors"))
    assert all(torch.equal(good[k], kept[k]) for k in good)
    assert all(torch.isfinite(v).all() for v in kept.values())


def test_objective_options_run(tmp_path):
    """v-prediction, no Min-SNR, noise offset, gradient accumulation, linear schedule, no EMA."""
    export = train_ldm(tiny_cfg("train.steps=2", "train.prediction_type=v_prediction", "train.min_snr_gamma=null",
                                "train.noise_offset=0.05", "train.grad_accum=2", "train.lr_schedule=linear",
                                "train.ema_decay=0", "train.cache_text=false", "train.gradient_checkpointing=true"),
                       tmp_path, **quiet)
    meta = json.loads((export / "synth.json").read_text())
    assert meta["prediction_type"] == "v_prediction"
    sched = json.loads((export / "scheduler" / "scheduler_config.json").read_text())
    assert sched["prediction_type"] == "v_prediction"
    logs = [json.loads(l) for l in (tmp_path / "logs" / "scalars.jsonl").read_text().splitlines()]
    assert all(map(lambda r: r["loss"] == r["loss"], logs)) and logs[-1]["step"] == 2


def test_cli_errors_are_one_line(tmp_path):
    p = cli("train", "ldm", "--run", str(tmp_path), "--set", "train.lrr=1", check=False)
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: unknown config key 'train.lrr'")
    p = cli("train", "ldm", "--run", str(tmp_path), "--set", "data.name=/no/such/data", check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr.strip().splitlines()[-1]
    p = cli("train", "ldm", "--run", str(tmp_path), *sets("train.mixed_precision=fp16"), check=False)
    if not torch.cuda.is_available():
        assert p.returncode == 2 and "fp16 needs a CUDA GPU" in p.stderr
    p = cli("train", "ldm", "--run", str(tmp_path), *sets("train.attention=xformers"), check=False)
    if not torch.cuda.is_available():
        assert p.returncode == 2 and "xformers" in p.stderr.strip().splitlines()[-1]


def test_bf16_autocast_on_cpu(tmp_path):
    export = train_ldm(tiny_cfg("train.steps=1", "train.mixed_precision=bf16"), tmp_path, **quiet)
    assert (export / "unet" / "diffusion_pytorch_model.safetensors").is_file()


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "synth.cli",
                        "train", "ldm", "--run-dir", str(tmp_path), *sets("train.steps=3", "train.batch_size=4")],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert (tmp_path / "export" / "synth.json").is_file()
    state = json.loads((tmp_path / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["samples_seen"] == 3 * 4 * 2  # two ranks, each its own slice of the global batch


def test_demo_falls_back_to_phantom(tmp_path):
    p = cli("demo", "--out", str(tmp_path), "--set", "data.name=/no/such/data.npz", "--set", "data.resolution=16",
            "--set", "train.steps=2",
            "--set", "sample.steps=2", "--set", "sample.per_class=2", "--set", "train.progress=false")
    assert "falling back to the built-in phantom" in p.stderr
    assert (tmp_path / "samples" / "demo.png").is_file() and (tmp_path / "export" / "synth.json").is_file()
    assert "Label fidelity" in p.stdout and "next:" in p.stdout and "Traceback" not in p.stderr


def test_cli_output_has_no_library_noise_but_keeps_notes_about_input(tmp_path, tiny_export):
    from synth.quiet import HARMLESS

    run = cli("train", "ldm", "--run", str(tmp_path / "run"), *sets("train.steps=2"))
    out = run.stdout + run.stderr
    p = cli("sample", "--model", str(tiny_export), "--n", "2", "--out", str(tmp_path / "s"), "--steps", "2",
            "--labels", "normal=1,pneumonia=1")
    out += p.stdout + p.stderr
    assert not [h for h in HARMLESS if h in out] and "Loading weights" not in out and "Traceback" not in out
    assert "label weights sum to 2" in out  # a note about the user's own input stays
