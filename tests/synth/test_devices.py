import pytest
import torch

from synth.config import ConfigError
from synth.devices import resolve_device


def test_device_names_are_checked():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ConfigError, match=r"--device 'gpu0' is not a device name; use cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    with pytest.raises(ConfigError, match=r"cuda:64: this machine has|no CUDA GPU is visible"):
        resolve_device("cuda:64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine_is_one_line():
    with pytest.raises(ConfigError, match=r"--device cuda: no CUDA GPU is visible .*; use --device cpu"):
        resolve_device("cuda")
