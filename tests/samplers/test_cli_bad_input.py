"""Bad inputs of `synth sample` that concern devices and precision: one line, exit 2, nothing written."""
import pytest
import torch

from tests.samplers.test_bulk import base_args, cli


@pytest.mark.parametrize("extra, message", [
    (["--device", "gpu0"], "--device 'gpu0' is not a device name"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:64"], "--device cuda"),
    (["--dtype", "float16", "--device", "cpu"], "--dtype float16 needs a CUDA device"),
    (["--attention", "xformers", "--device", "cpu"], "xformers"),
    (["--batch-size", "lots"], "--batch-size must be a positive integer or 'auto'"),
    (["--steps", "0"], "must be positive"),
])
def test_device_errors_are_one_line(tiny_export, tmp_path, extra, message):
    args = [a for a in base_args(tiny_export, tmp_path / "out", 4) if a not in ("--batch-size", "5", "--steps", "3")]
    p = cli(*args, *extra, check=False)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith("error:") and message in last, p.stderr[-1500:]
    assert "Traceback" not in p.stderr
    assert not any((tmp_path / "out").rglob("*.png"))


def test_auto_batch_size_on_cpu(tiny_export, tmp_path):
    args = [a for a in base_args(tiny_export, tmp_path / "out", 4) if a not in ("--batch-size", "5")]
    p = cli(*args, "--batch-size", "auto")
    assert "--batch-size auto -> 64" in p.stderr and len(list((tmp_path / "out").rglob("*.png"))) == 4
