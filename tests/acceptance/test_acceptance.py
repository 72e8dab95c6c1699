"""The hostile-input acceptance suite: every case, through the harness (tests/acceptance/harness.py).

Each case must keep its verdict: a one-line error where synth should refuse (nothing written, nothing
deleted; where its advice can be followed, following it works), a checked result where it should cope (a
damaged checkpoint skipped, a torn done record redone to the same bytes, --shrink).  The report and the
README table: ``python benchmarks/harness.py``.
"""
import pytest

from tests.acceptance import harness
from tests.acceptance.cases import FAST, all_cases

CASE_IDS = [c.id for c in all_cases()]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case, run once (they share the tiny models the harness trains)."""
    return {r.id: r for r in harness.run(None, tmp_path_factory.mktemp("acceptance"), log=lambda *a: None)}


def test_the_subset_is_representative():
    cases = {c.id: c for c in all_cases()}
    assert len(cases) >= 60 and set(FAST) <= set(cases)
    fast = [cases[i] for i in FAST]
    assert {c.surface for c in fast} == {"cli", "api"} and {c.expect for c in fast} == {"error", "ok"}


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_case_keeps_its_verdict(results, case_id):
    r = results[case_id]
    want = "one-line error" if r.expect == "error" else "ok"
    assert r.verdict == want, f"{case_id}: {r.verdict}: {r.said} {r.problems}"


def test_advice_is_followed_where_the_table_says_so(results):
    """Issue 19: a refusal's advice, done as written, must then work (a fix that reproduces the error is a bug)."""
    follow = harness.follow_table()
    assert set(follow) <= {c.id for c in all_cases()} and len(follow) >= 30
    followed = [i for i in CASE_IDS if i in follow]
    assert len(followed) == len(follow)
    for case_id in followed:
        assert results[case_id].advice == "followed", f"{case_id}: {results[case_id].problems}"


def test_advice_that_fails_is_misleading(tmp_path, monkeypatch):
    """Following advice that reproduces the error turns the verdict into MISLEADING."""
    B = harness
    case = B.Case("x-advice", "cli", "x", B.nothing, lambda c, d, s: ["sample", "--n", "0"], "error", r"(?i)missing option")
    monkeypatch.setitem(B.follow_table(), "x-advice", lambda c, d, s, args: args)  # "fixed" by changing nothing
    r = B.run_case(B.Ctx(tmp_path), case)
    assert r.verdict == "MISLEADING" and "following the advice failed" in r.problems[-1]


def test_the_judge_catches_each_kind_of_failure(tmp_path):
    """The verdicts themselves: a traceback, an accepted bad input, a vague error, a lost file."""
    B = harness
    case = B.Case("x", "cli", "x", B.nothing, lambda c, d, s: [], "error", r"names the problem")
    assert B.judge(case, B.Outcome(exit_code=1, tb="KeyError: 'a'"), [], [])[0] == "TRACEBACK"
    assert B.judge(case, B.Outcome(exit_code=0), [], [])[0] == "SILENT WRONG"
    assert B.judge(case, B.Outcome(exit_code=2, error="error: something went wrong"), [], [])[0] == "BAD ERROR"
    good = B.Outcome(exit_code=2, error="error: this names the problem")
    assert B.judge(case, good, [], [])[0] == "one-line error"
    assert B.judge(case, good, [], ["out/mine.csv deleted"])[0] == "DATA LOSS"
    ok = B.Case("y", "api", "y", B.nothing, lambda c, d, s: None, "ok")
    assert B.judge(ok, B.Outcome(error="refused"), [], [])[0] == "REFUSED"
    assert B.judge(ok, B.Outcome(), ["3 images, expected 4"], [])[0] == "SILENT WRONG"
    (tmp_path / "a").write_text("1")
    before = B.snapshot(tmp_path)
    (tmp_path / "a").write_text("2")
    assert B.lost_files(before, B.snapshot(tmp_path), tmp_path, ()) == ["a changed"]
    assert B.lost_files(before, B.snapshot(tmp_path), tmp_path, ("a",)) == []
