"""`benchmarks/fault_soak.py` in CI: one trial each of SIGKILLing the trainer and the bulk sampler at random
moments, 1-3 kills a trial (the soak runs 10 of each plus the translator; tests/samplers/test_bulk.py and the
trainers' tests kill at fixed moments); every trial must end equal to an uninterrupted run."""
import importlib.util
import json
import sys

from tests.conftest import ROOT


def test_random_sigkill_trials_recover_exactly(tmp_path):
    spec = importlib.util.spec_from_file_location("fault_soak", ROOT / "benchmarks" / "fault_soak.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fault_soak"] = mod  # dataclasses look their module up while the class is made
    spec.loader.exec_module(mod)
    code = mod.main(["--trials", "1", "--kinds", "train,sample", "--seed", "1", "--out", str(tmp_path / "report"),
                     "--work", str(tmp_path / "work")])
    trials = json.loads((tmp_path / "report" / "fault_soak.json").read_text())
    assert [t["problems"] for t in trials if not t["ok"]] == [] and code == 0
    assert len(trials) == 2 and all(t["kills"] for t in trials)
