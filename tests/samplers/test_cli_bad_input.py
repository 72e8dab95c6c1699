"""Bad inputs of `synth sample` that concern devices and precision: one line, exit 2, nothing written."""
import pytest
import torch

from tests.samplers.test_bulk import base_args, cli


@pytest.mark.parametrize("extra, message", [
    (["--device", "gpu0"], "--device 'gpu0' is not a device name"),
    (["--device", "cuda"] if not torch.cuda.is_available() else ["--device", "cuda:64"], "--device cuda"),
    (["--dtype", "float16", "--device", "cpu"], "--dtype float16 needs a CUDA device"),
    (["--attention", "xformers", "--device", "cpu"], "xformers"),
])
def test_device_errors_are_one_line(tiny_export, tmp_path, extra, message):
    p = cli(*base_args(tiny_export, tmp_path / "out", 4, *extra), check=False)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith("error:") and message in last, p.stderr[-1500:]
    assert "Traceback" not in p.stderr
    assert not any((tmp_path / "out").rglob("*.png"))
