"""The shared training loop on a toy objective: resume, EMA, OOM and NaN handling."""
import pytest
import torch
from safetensors.torch import load_file

from synth.config import load_config
from synth.trainers.checkpoints import list_checkpoints
from synth.trainers.common import make_accelerator, TrainingError
from synth.trainers.ema import EMA
from synth.trainers.loop import Task, fit


class Toy(torch.nn.Module):
    """Per-sample squared error of a linear map; raises a GPU OOM at ``oom_at`` calls."""

    def __init__(self, oom_at=None):
        super().__init__()
        self.lin = torch.nn.Linear(3, 1)
        self.calls, self.oom_at = 0, oom_at

    def forward(self, x, y):
        self.calls += 1
        if self.oom_at is not None and self.calls >= self.oom_at:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return ((self.lin(x).squeeze(1) - y) ** 2)


DATA_X = torch.randn(40, 3, generator=torch.Generator().manual_seed(0))
DATA_Y = DATA_X @ torch.tensor([1.0, -2.0, 0.5])


def toy_task(model):
    def draw(step, gen, n):
        return {"jitter": 0.01 * torch.randn(n, 3, generator=gen, device=gen.device)}

    def batch(idx, d):
        return {"x": DATA_X[idx] + d["jitter"], "y": DATA_Y[idx]}

    return Task("toy", model, {"lin": model.lin}, [("lin", 0.05)], len(DATA_X), draw, batch)


def tc(*extra):
    return load_config(None, ["train.batch_size=4", "train.warmup_steps=0", "train.lr_schedule=constant", "train.progress=false",
                              "train.checkpoint_every=2", "train.keep_checkpoints=10", *extra]).train


def run_fit(run, model, *extra):
    torch.manual_seed(0)
    return fit(toy_task(model), tc(*extra), make_accelerator("no", 0), run, say=lambda *a: None)


def test_resume_equals_uninterrupted_and_ema_is_saved(tmp_path):
    torch.manual_seed(0)
    a = run_fit(tmp_path / "a", Toy(), "train.steps=6")
    torch.manual_seed(0)
    run_fit(tmp_path / "b", Toy(), "train.steps=4")
    torch.manual_seed(0)
    b = run_fit(tmp_path / "b", Toy(), "train.steps=6")  # resumes at 4
    assert torch.equal(a.trained["lin"].weight, b.trained["lin"].weight)
    ema = load_file(str(tmp_path / "b" / "checkpoints" / "step-00000006" / "ema.safetensors"))
    assert {"shadow.lin.weight", "shadow.lin.bias"} <= set(ema)
    assert not torch.equal(a.averaged("lin").weight, a.trained["lin"].weight)  # EMA differs from raw weights


def test_gpu_out_of_memory_is_one_line_and_keeps_the_checkpoint(tmp_path):
    with pytest.raises(TrainingError, match=r"GPU out of memory at step 3 with train.batch_size=4 per process; lower "
                                            r"train.batch_size .* resume from .*step-00000002"):
        run_fit(tmp_path, Toy(oom_at=3), "train.steps=6")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]


def test_nan_is_caught_at_the_next_log_step(tmp_path):
    class Bad(Toy):
        def forward(self, x, y):
            out = super().forward(x, y)
            return out * float("nan") if self.calls == 3 else out

    with pytest.raises(TrainingError, match=r"loss became nan between steps 3 and 4; stopped. Last good checkpoint: .*step-00000002"):
        run_fit(tmp_path, Bad(), "train.steps=8", "train.log_every=4", "train.checkpoint_every=2")
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2]


def test_ema_matches_a_per_parameter_reference():
    m = torch.nn.Linear(4, 2)
    ema = EMA({f"m.{n}": p for n, p in m.named_parameters()}, decay=0.9, warmup=False)
    ref = {n: p.detach().clone() for n, p in m.named_parameters()}
    for _ in range(3):
        with torch.no_grad():
            for p in m.parameters():
                p.add_(1.0)
        ema.update()
        for n, p in m.named_parameters():
            ref[n].lerp_(p.detach(), 0.1)
    assert all(torch.allclose(ema.shadow[f"m.{n}"], ref[n]) for n in ref)


def test_training_seconds_are_summed_over_every_resume(tmp_path):
    """A run stopped and resumed quotes what all its calls spent (to each one's last checkpoint), not the last call's."""
    import json

    run_fit(tmp_path, Toy(), "train.steps=4")
    state_file = tmp_path / "checkpoints" / "step-00000004" / "state.json"
    state = json.loads(state_file.read_text())
    assert 0 < state["compute"]["cpu_s"] < 600 and state["compute"]["wall_s"] > 0 and state["compute"]["from_step"] == 0
    state["compute"] = {"wall_s": 2000.0, "cpu_s": 1000.0}  # as if the first call had trained for long
    state_file.write_text(json.dumps(state))
    resumed = run_fit(tmp_path, Toy(), "train.steps=6")
    assert 1000.0 < resumed.compute["cpu_s"] < 1600 and 2000.0 < resumed.compute["wall_s"] < 2600
    last = json.loads((tmp_path / "checkpoints" / "step-00000006" / "state.json").read_text())["compute"]
    assert last["cpu_s"] > 1000.0 and last["wall_s"] > 2000.0


def test_a_checkpoint_that_counted_nothing_says_where_counting_starts(tmp_path):
    """A run resumed from a checkpoint made before synth counted seconds must not pass for one that cost ~0 s."""
    import json

    run_fit(tmp_path, Toy(), "train.steps=4")
    state_file = tmp_path / "checkpoints" / "step-00000004" / "state.json"
    state = json.loads(state_file.read_text())
    del state["compute"]
    state_file.write_text(json.dumps(state))
    resumed = run_fit(tmp_path, Toy(), "train.steps=6")
    assert resumed.compute["from_step"] == 4 and resumed.compute["cpu_s"] < 600
