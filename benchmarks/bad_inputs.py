"""The hostile-input acceptance suite's report: ``benchmarks/results/bad_inputs.md/.json`` and the README table.

    python benchmarks/bad_inputs.py                               # every case (~1 min on 2 CPU cores)
    python benchmarks/bad_inputs.py --only sample-n-0,aug-dotdot  # some cases
    python benchmarks/bad_inputs.py --list                        # the case ids
    python benchmarks/bad_inputs.py --readme README.md            # also rewrite the README's table

The cases and the machinery are the acceptance suite in ``tests/acceptance/`` (run by ``make test``);
this script only runs them and writes what they found.  Exits 1 when any case misses its expectation.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
from tests.acceptance.cases import all_cases  # noqa: E402
from tests.acceptance.harness import CMD, FAILURES, Result, run, tally  # noqa: E402


def one_line(text: Any) -> str:
    return " ".join(str(text).split())


def tally(results: list[Result]) -> dict:
    n = len(results)
    count = lambda v: sum(r.verdict == v for r in results)  # noqa: E731
    return {"cases": n, "cli": sum(r.surface == "cli" for r in results), "api": sum(r.surface == "api" for r in results),
            "tracebacks": count("TRACEBACK"), "silent_wrong": count("SILENT WRONG"), "data_loss": count("DATA LOSS"),
            "bad_errors": count("BAD ERROR"), "refused": count("REFUSED"), "timeouts": count("TIMEOUT"),
            "setup_failed": count("SETUP FAILED"), "misleading": count("MISLEADING"),
            "advice_followed": sum(r.advice == "followed" for r in results),
            "failed": sum(r.verdict in FAILURES for r in results)}



def _cell(text: str, limit: int = 140) -> str:
    t = one_line(text).replace("|", "\\|")
    return t if len(t) <= limit else t[: limit - 1] + "…"


def report(results: list[Result], seconds: float, command: str) -> str:
    t = tally(results)
    lines = ["# Bad inputs and faults", "",
             f"**{t['cases']} cases** ({t['cli']} CLI, {t['api']} API): **{t['tracebacks']} tracebacks, "
             f"{t['silent_wrong']} silent wrong results, {t['data_loss']} data loss**"
             + (f"; also {t['bad_errors']} unclear error(s), {t['refused']} wrongly refused, {t['timeouts']} timeout(s), "
                f"{t['setup_failed']} setup failure(s)"
                if t["bad_errors"] or t["refused"] or t["timeouts"] or t["setup_failed"] else "") + ".", "",
             f"Regenerate: `{command}` ({seconds:.0f} s on {os.cpu_count()} CPU cores; `--only ID,...` for some cases). "
             "CLI cases run `synth.cli.main` in-process (click's CliRunner); API cases call synth's Python API. "
             "Expectation *error*: exit code 2 and a one-line `error: ...` naming the problem (API: one of synth's "
             "error classes); *ok*: it succeeds and the result is checked. Every case also checks that each file in its "
             "scratch folder and in the shared tiny models still exists with the same bytes (data loss), except files "
             "the case expects to be replaced. "
             f"For {t['advice_followed'] + t['misleading']} refusals the harness also does what the message advises "
             f"(`benchmarks/bad_inputs_advice.py`) and checks that it then works: {t['advice_followed']} did, "
             f"{t['misleading']} misleading.", "",
             "| # | surface | input or fault | what synth said / did | verdict |", "|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        passed = r.verdict in ("ok", "one-line error")
        said = f"{r.said} — {'; '.join(r.problems)}" if r.problems and not passed else r.said
        verdict = (r.verdict + ("; advice followed: works" if r.advice else "")) if passed else f"**{r.verdict}**"
        lines.append(f"| {i} | {r.surface} | `{r.id}`: {_cell(r.what, 120)} | {_cell(said, 140 if passed else 300)} | {verdict} |")
    failed = [r for r in results if r.verdict in FAILURES]
    if failed:
        lines += ["", "## Failures in full", ""]
        for r in failed:
            lines.append(f"* `{r.id}` ({r.verdict}): {one_line(r.what)} -> {one_line(r.said)}"
                         + (f" [{'; '.join(r.problems)}]" if r.problems else ""))
    return "\n".join(lines) + "\n"


README_START, README_END = "<!-- bad-inputs:start -->", "<!-- bad-inputs:end -->"


def readme_block(results: list[Result]) -> str:
    """The README's table (between its markers): every case, synth's answer shortened."""
    t = tally(results)
    lines = [README_START, "",
             f"{t['cases']} bad inputs and faults ({t['cli']} CLI, {t['api']} Python API): {t['tracebacks']} tracebacks, "
             f"{t['silent_wrong']} silent wrong results, {t['data_loss']} data loss, {t['misleading']} misleading messages "
             f"(the advice of {t['advice_followed'] + t['misleading']} refusals is followed and must then work). "
             f"Generated by `{CMD} --readme README.md`; "
             "full messages in `benchmarks/results/bad_inputs.md`.", "",
             "<details><summary>The table</summary>", "",
             "| # | surface | input or fault | what synth said / did | verdict |", "|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        verdict = r.verdict + ("; advice works" if r.advice else "")
        lines.append(f"| {i} | {r.surface} | {_cell(r.what, 90)} | {_cell(r.said, 100)} | {verdict} |")
    return "\n".join(lines + ["", "</details>", "", README_END])


def update_readme(path: Path, results: list[Result]) -> None:
    """Replace the block between the README's markers with :func:`readme_block`."""
    text = path.read_text()
    if README_START not in text or README_END not in text:
        raise SystemExit(f"{path} has no {README_START} ... {README_END} block to replace")
    head, rest = text.split(README_START, 1)
    tail = rest.split(README_END, 1)[1]
    path.write_text(head + readme_block(results) + tail)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated case ids")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="report folder")
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder, removed after)")
    ap.add_argument("--list", action="store_true", help="print the case ids and exit")
    ap.add_argument("--readme", default=None, help="also rewrite the table between the markers of this README")
    a = ap.parse_args(argv)
    if a.list:
        for c in all_cases():
            print(f"{c.id:38s} {c.surface:4s} {c.expect:6s} {c.what}")
        return 0
    ids = [i.strip() for i in a.only.split(",") if i.strip()] or None
    t0 = time.perf_counter()
    results = run(ids, Path(a.work) if a.work else None)
    seconds = time.perf_counter() - t0
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    command = CMD + (f" --only {a.only}" if ids else "")
    (out / "bad_inputs.md").write_text(report(results, seconds, command))
    (out / "bad_inputs.json").write_text(json.dumps({"command": command, "seconds": round(seconds, 1), "tally": tally(results),
                                                     "cases": [dataclasses.asdict(r) for r in results]},
                                                    indent=2, default=str) + "\n")
    if a.readme and not ids:
        update_readme(Path(a.readme), results)
    t = tally(results)
    print(f"{t['cases']} cases: {t['tracebacks']} tracebacks, {t['silent_wrong']} silent wrong, {t['data_loss']} data loss, "
          f"{t['failed']} failed in all ({seconds:.0f} s); report in {out / 'bad_inputs.md'}")
    return 1 if t["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())

