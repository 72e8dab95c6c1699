"""Every acceptance case, and the FAST subset."""
from __future__ import annotations

from tests.acceptance.cases_boundaries import boundary_cases
from tests.acceptance.cases_core import config_cases, data_cases, train_cases
from tests.acceptance.cases_sets import augment_cases, eval_cases, sample_cases, translate_cases
from tests.acceptance.cases_pool import eval_text_cases, pool_cases, text_cases
from tests.acceptance.harness import Case


def all_cases() -> list[Case]:
    cases = (config_cases() + data_cases() + train_cases() + sample_cases() + translate_cases() + augment_cases()
             + eval_cases() + boundary_cases() + pool_cases() + text_cases() + eval_text_cases())
    ids = [c.id for c in cases]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, f"duplicate case ids {dup}"
    return cases


# A representative subset (every surface, refusals that protect data, resume repairs), run by
# tests/benchmarks/test_bad_inputs.py in a few seconds.
FAST = ("cfg-missing", "cfg-python-tag", "cfg-unknown-key", "set-without-equals", "data-csv-dotdot",
        "train-user-export-folder", "train-truncated-checkpoint", "sample-labels-unknown", "sample-pickle-refused",
        "sample-modified-weights", "sample-out-user-folder", "sample-overwrite-user-file", "sample-shrink",
        "sample-torn-done-record", "sample-concurrent", "tr-unknown-domain", "aug-dotdot", "aug-mix-fraction-1.5",
        "eval-augment-fraction-0", "eval-fidelity-missing-set", "b-dicom-no-suffix", "b-class-case-collision",
        "b-npz-one-hot", "b-prompts-bom", "b-resume-other-threads", "b-exif-rotated-jpeg",
        # refusals whose advice is followed (tests/acceptance/advice.py) and must then work
        "set-fraction-empties-class", "sample-model-unfinished-run", "train-damaged-run-json", "aug-classes-mismatch",
        "b-resolution-odd-unet")


