"""`benchmarks/gpu_check.py --tiny`: the GPU check's every code path, on CPU, so it cannot rot."""
import importlib.util

from tests.conftest import ROOT


def test_gpu_check_tiny_runs_every_section(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--tiny", "--out", str(tmp_path)]) == 0
    md = (tmp_path / "gpu_check.md").read_text()
    assert "FAILED" not in md
    for section in ("1. pixel training", "2. latent training", "3-4. SD-1.5-size fine-tune", "5. bulk sampling",
                    "6. determinism", "7. sampler vs StableDiffusionPipeline", "8. bridge training and bulk translation"):
        assert section in md
    assert "| bulk_resumed_equals_uninterrupted | True |" in md
    assert "| batch_1_vs_batch_n_max_grey_levels | 0 |" in md  # exact on CPU
