"""`benchmarks/gpu_check.py --tiny`: the GPU check's every code path, on CPU, so it cannot rot."""
import importlib.util

from tests.conftest import ROOT


def test_gpu_check_tiny_runs_every_section(tmp_path):
    import torch

    from synth.threads import cores_available

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    # every comparison it makes is within this one process, so all the cores may serve it (the suite pins 1
    # thread for bytes compared across processes; here that would only double the suite's longest test)
    before = torch.get_num_threads()
    torch.set_num_threads(cores_available())
    try:
        assert mod.main(["--tiny", "--out", str(tmp_path)]) == 0
    finally:
        torch.set_num_threads(before)
    md = (tmp_path / "gpu_check.md").read_text()
    assert "FAILED" not in md
    for section in ("1. pixel training", "2. latent training", "3-4. SD-1.5-size fine-tune", "5. bulk sampling",
                    "6. determinism", "7. sampler vs StableDiffusionPipeline", "8. bridge training and bulk translation",
                    "10. text flow with an unlabelled pool, translation, eval text"):
        assert section in md
    assert "| bulk_resumed_equals_uninterrupted | True |" in md
    assert "| batch_1_vs_batch_n_max_grey_levels | 0 |" in md  # exact on CPU
