"""The hostile-input acceptance suite's machinery: what a careless or hostile user can feed synth, and what
synth does with it.

Each case builds a hostile input in its own scratch folder, runs one action through the CLI
(``synth.cli.main`` in-process with click's CliRunner: imports are paid once) or the Python API,
and judges the outcome against its expectation:

* ``error``: CLI exit code 2, the last stderr line starts with ``error:`` (click's own usage
  errors, ``Error: ...``, count too), no ``Traceback`` anywhere; API: a ``SynthError`` with a
  one-line message.  The message must also name the problem (a per-case pattern), otherwise the
  verdict is ``BAD ERROR``; where the case's advice can be followed (:mod:`tests.acceptance.advice`),
  it is, and must then work (``MISLEADING`` otherwise).
* ``ok``: it succeeds and a per-case check verifies the result; a failed check is ``SILENT WRONG``.

Every case is also a data-loss check: the files of its scratch folder and of the shared models
are hashed before the action and must all still be there with the same bytes afterwards,
except those the case expects to be replaced.  Any other exception is a ``TRACEBACK``.

Tiny models are trained once per run and shared: a pixel LDM on 16x16 phantoms and a 3-domain
bridge.  The cases: :mod:`tests.acceptance.cases` (all of them, and ``FAST``); the report and
README table: ``python benchmarks/bad_inputs.py``.
"""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from tiny import BRIDGE, TINY  # noqa: E402
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
OFFLINE_ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

SHARED_LDM = ["train.steps=4", "train.checkpoint_every=2", "train.keep_checkpoints=3"]
CASE_LIMIT_S = 180  # one case may not run longer (a hang is a finding, not a stuck harness)
CMD = "python benchmarks/bad_inputs.py"


def sets(items) -> list[str]:
    return [a for kv in items for a in ("--set", kv)]


def tiny_without(*keys: str) -> list[str]:
    """TINY minus the overrides of ``keys`` (a config case must not override the key it is about)."""
    return [kv for kv in TINY if kv.split("=", 1)[0] not in keys]


# ---------------------------------------------------------------------------
# Shared tiny models and sets, built once per run (lazily: --only builds only what its cases need)


class Ctx:
    def __init__(self, work: Path):
        self.work = work
        self.shared = work / "shared"
        self.shared.mkdir(parents=True, exist_ok=True)
        self._cache: dict[str, Any] = {}
        self.build_log: list[str] = []

    def _once(self, key: str, build: Callable[[], Any]) -> Any:
        if key not in self._cache:
            t0 = time.perf_counter()
            self._cache[key] = build()
            self.build_log.append(f"{key}: {time.perf_counter() - t0:.1f} s")
        return self._cache[key]

    # the LDM: trained by the CLI so that resume cases can rerun the same command
    def ldm_args(self, run: Path, *extra: str) -> list[str]:
        return ["train", "ldm", "--run", str(run), *sets(TINY + SHARED_LDM + list(extra))]

    @property
    def ldm_run(self) -> Path:
        def build():
            run = self.shared / "ldm-run"
            must_succeed(self.ldm_args(run))
            return run
        return self._once("ldm", build)

    @property
    def ldm_export(self) -> Path:
        return self.ldm_run / "export"

    @property
    def dom3(self) -> Path:
        def build():
            import numpy as np

            from synth.data import phantom_domains

            p = self.shared / "dom3.npz"
            imgs, dom = phantom_domains(96, 16)
            np.savez(p, train_images=imgs, train_labels=dom[:, None], val_images=imgs[:24], val_labels=dom[:24, None],
                     test_images=imgs[:24], test_labels=dom[:24, None])
            return p
        return self._once("dom3", build)

    @property
    def bridge_export(self) -> Path:
        def build():
            run = self.shared / "bridge-run"
            must_succeed(["train", "bridge", "--run", str(run), *sets(TINY + BRIDGE + [f"data.name={self.dom3}"])])
            return run / "export"
        return self._once("bridge", build)

    @property
    def dim_input(self) -> Path:
        """Six 'dim' phantoms with labels 0/1 (an npz with a test split only): translate's input."""
        def build():
            import numpy as np

            from synth.data import phantom_domains

            imgs, dom = phantom_domains(96, 16)
            dim = imgs[dom == 1][:6]
            p = self.shared / "dim-input.npz"
            np.savez(p, test_images=dim, test_labels=(np.arange(len(dim)) % 2)[:, None])
            return p
        return self._once("dim_input", build)

    def sample_args(self, out: Path, n: int, *extra: str, model: Path | None = None) -> list[str]:
        return ["sample", "--model", str(model or self.ldm_export), "--n", str(n), "--out", str(out), "--steps", "2",
                "--shard-size", "4", "--batch-size", "4", "--quiet", *extra]

    @property
    def set6(self) -> Path:
        """A finished 6-image set (2 shards of 4) of the LDM, with labels."""
        def build():
            out = self.shared / "set6"
            must_succeed(self.sample_args(out, 6))
            return out
        return self._once("set6", build)

    def translate_args(self, out: Path, *extra: str, model: Path | None = None, inp: Path | None = None,
                       source: str = "dim", target: str = "clean") -> list[str]:
        return ["translate", "--model", str(model or self.bridge_export), "--input", str(inp or self.dim_input),
                "--source", source, "--target", target, "--steps", "2", "--out", str(out), "--shard-size", "4",
                "--batch-size", "4", "--quiet", *extra]


def must_succeed(args: list[str]) -> None:
    out = invoke(args)
    if out.exit_code != 0 or out.tb:
        raise RuntimeError(f"building a shared model failed: synth {' '.join(args[:2])}: "
                           f"{out.tb or out.stderr.strip().splitlines()[-1:]}")


# ---------------------------------------------------------------------------
# Running one action


@dataclass
class Outcome:
    exit_code: int | None = None  # CLI only
    stdout: str = ""
    stderr: str = ""
    error: str | None = None  # the one-line error (CLI: stderr's last line; API: the exception's message)
    error_type: str | None = None
    tb: str | None = None  # an unexpected exception: "Type: message (file:line)"
    value: Any = None  # the API call's return value


class _WentAhead(BaseException):
    """Raised by a guard in place of a long job (the first generator training of ``synth eval augment``)."""


class CaseTimeout(BaseException):
    """Raised in the main thread by SIGALRM; a BaseException so no ``except Exception`` in synth swallows it."""


def _where(tb) -> str:
    frames = [f for f in traceback.extract_tb(tb) if "click" not in f.filename]
    if not frames:
        return "?"
    f = frames[-1]
    try:
        rel = str(Path(f.filename).resolve().relative_to(ROOT))
    except ValueError:
        rel = Path(f.filename).name
    own = [g for g in frames if str(ROOT) in str(Path(g.filename).resolve())
           and not any(part in g.filename for part in ("benchmarks", "site-packages", ".venv"))]
    src = f" via {Path(own[-1].filename).resolve().relative_to(ROOT)}:{own[-1].lineno} {own[-1].name}" \
        if own and own[-1] is not f else ""
    return f"{rel}:{f.lineno} {f.name}{src}"


def _describe_exc(e: BaseException, tb) -> str:
    msg = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {msg[:300]} ({_where(tb)})"


def invoke(args: list[str]) -> Outcome:
    """``synth ARGS`` in-process; a result whose exception is not SystemExit is a traceback."""
    from click.testing import CliRunner

    from synth.cli import main

    try:
        res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=True)
    except _WentAhead as e:  # a guarded long job started instead of refusing: it did not stop at the input
        return Outcome(exit_code=None, stdout=f"went ahead: {e}")
    out = Outcome(exit_code=res.exit_code, stdout=res.stdout, stderr=res.stderr)
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        out.tb = _describe_exc(exc, res.exc_info[2] if res.exc_info else None)
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    if res.exit_code != 0 and lines:
        out.error = lines[-1].strip()
    return out


def call_api(fn: Callable[[], Any]) -> Outcome:
    from synth.cli import _user_errors

    out = Outcome()
    try:
        out.value = fn()
    except _user_errors() as e:
        out.error, out.error_type = str(e), type(e).__name__
    except CaseTimeout:
        raise
    except Exception as e:  # any other exception escaping the API is what the user would see as a traceback
        out.tb = _describe_exc(e, e.__traceback__)
    return out


# ---------------------------------------------------------------------------
# Data-loss snapshots


def snapshot(*roots: Path) -> dict[str, str]:
    """path -> sha256 (or the target of a symlink) of every file under ``roots``."""
    out = {}
    for root in roots:
        if not root.exists():
            continue
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
                p = os.path.join(dirpath, name)
                if os.path.islink(p):
                    out[p] = "symlink:" + os.readlink(p)
                    continue
                h = hashlib.sha256()
                try:
                    with open(p, "rb") as f:
                        for block in iter(lambda: f.read(1 << 20), b""):
                            h.update(block)
                except OSError as e:
                    out[p] = f"unreadable:{e.strerror}"
                    continue
                out[p] = h.hexdigest()
    return out


def lost_files(before: dict[str, str], after: dict[str, str], d: Path, replaced: tuple[str, ...]) -> list[str]:
    lost = []
    for p, digest in before.items():
        if after.get(p) == digest:
            continue
        try:
            rel = str(Path(p).relative_to(d))
        except ValueError:
            rel = None  # a shared model: never replaced
        if rel is not None and any(fnmatch.fnmatch(rel, g) for g in replaced):
            continue
        lost.append(f"{rel or p} {'deleted' if p not in after else 'changed'}")
    return lost


# ---------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    id: str
    surface: str  # "cli" | "api"
    what: str  # what the careless or hostile user did
    setup: Callable[["Ctx", Path], Any]  # builds the input in the case's scratch folder d; returns a state
    action: Callable[["Ctx", Path, Any], Any]  # cli: returns synth's arguments; api: makes the call
    expect: str  # "error" | "ok"
    says: str = ""  # regex the error (or, for ok, stdout+stderr) must match
    check: Callable[["Ctx", Path, Any, Outcome], list[str]] | None = None  # problems with the result
    replaced: tuple[str, ...] = ()  # globs (relative to d) of files the case expects to be replaced or removed
    teardown: Callable[[Any], None] | None = None


@dataclass
class Result:
    id: str
    surface: str
    what: str
    expect: str
    verdict: str
    said: str
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    advice: str = ""  # "followed" when the refusal's advice was followed and then worked (tests/acceptance/advice.py)


FAILURES = ("TRACEBACK", "SILENT WRONG", "DATA LOSS", "BAD ERROR", "REFUSED", "TIMEOUT", "SETUP FAILED", "MISLEADING")


def judge(case: Case, out: Outcome, problems: list[str], lost: list[str], d: Path | None = None) -> tuple[str, str, list[str]]:
    """(verdict, what synth said or did, problems).  ``says`` is matched with the case folder's path masked
    (a case id in a path must not pass for the message naming the problem)."""
    mask = (lambda t: t.replace(str(d), "<case>")) if d is not None else (lambda t: t)  # noqa: E731
    problems = list(problems)
    if out.tb:
        verdict, said = "TRACEBACK", out.tb
    elif case.expect == "error":
        if out.error is None:
            verdict = "SILENT WRONG"
            said = ("accepted it" + (f" (exit {out.exit_code})" if out.exit_code is not None else "")
                    if case.surface == "cli" else "accepted it (no error raised)")
            last = [ln for ln in (out.stdout + out.stderr).splitlines() if ln.strip()]
            if last:
                said += f": {last[-1].strip()}"
        else:
            said = out.error
            bad = []
            if case.surface == "cli":
                if out.exit_code != 2:
                    bad.append(f"exit code {out.exit_code}, not 2")
                if not re.match(r"(?i)error:", out.error):
                    bad.append("stderr's last line does not start with 'error:'")
                if "Traceback" in out.stdout + out.stderr:
                    bad.append("'Traceback' in the output")
            elif "\n" in out.error or "\r" in out.error:
                bad.append("the message is not one line")
            if case.says and not re.search(case.says, mask(out.error)):
                bad.append(f"the message does not say /{case.says}/")
            verdict = "one-line error" if not bad and not problems else ("BAD ERROR" if bad else "SILENT WRONG")
            problems = bad + problems
    else:
        if out.error is not None:
            verdict, said = "REFUSED", out.error
        else:
            text = out.stdout + out.stderr
            if case.says and not re.search(case.says, mask(text)):
                problems.insert(0, f"the output does not say /{case.says}/")
            if "Traceback" in text:
                problems.insert(0, "'Traceback' in the output")
            verdict = "SILENT WRONG" if problems else "ok"
            said = _summary(out.value) if case.surface == "api" else ""
            if not said:
                notes = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("note:")]
                last = [ln.strip() for ln in text.splitlines() if ln.strip()]
                said = (notes or last or ["(no output)"])[-1]
    if lost:
        verdict = "DATA LOSS"
        problems = [f"lost: {', '.join(lost[:5])}{' ...' if len(lost) > 5 else ''}"] + problems
    return verdict, said, problems


def _summary(value: Any) -> str:
    """What an API call returned, in a few words."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    text = f"returned {type(value).__name__}"
    try:
        text += f" of {len(value)} items"
    except TypeError:
        pass
    if getattr(value, "classes", None) is not None:
        text += f", classes {list(value.classes)}"
    if getattr(value, "skipped", None):
        text += f", {value.skipped} unreadable file(s) skipped"
    return text


def _alarm(signum, frame):
    raise CaseTimeout()


def run_case(ctx: Ctx, case: Case) -> Result:
    d = ctx.work / "cases" / case.id
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    t0 = time.perf_counter()
    state = state0 = None
    advice = ""
    try:
        try:
            state = case.setup(ctx, d)
        except Exception as e:  # the harness or a shared tiny model broke, not the case: say so, go on
            return Result(case.id, case.surface, case.what, case.expect, "SETUP FAILED",
                          _describe_exc(e, e.__traceback__), [], round(time.perf_counter() - t0, 2))
        before = snapshot(d, ctx.shared)
        timer = threading.current_thread() is threading.main_thread()  # SIGALRM reaches the main thread only
        old = signal.signal(signal.SIGALRM, _alarm) if timer else None
        signal.alarm(CASE_LIMIT_S) if timer else None
        try:
            if case.surface == "cli":
                out = invoke(case.action(ctx, d, state))
            else:
                out = call_api(lambda: case.action(ctx, d, state))
        finally:
            if timer:
                signal.alarm(0)
                signal.signal(signal.SIGALRM, old)
        state0 = state
        if case.teardown is not None:
            case.teardown(state)
            state = None
        problems = []
        if case.check is not None and not out.tb:
            try:
                problems = case.check(ctx, d, state, out) or []
            except Exception as e:  # a check that cannot even read the result: the result is wrong
                problems = [f"check failed: {type(e).__name__}: {e}"]
        lost = lost_files(before, snapshot(d, ctx.shared), d, case.replaced)
        verdict, said, problems = judge(case, out, problems, lost, d)
        if verdict == "one-line error" and case.id in follow_table():
            advice, failure = follow_advice(ctx, case, d, state0)
            if failure:
                verdict, problems = "MISLEADING", problems + [failure]
            if case.teardown is not None:
                case.teardown(state0)
    except CaseTimeout:
        verdict, said, problems = "TIMEOUT", f"still running after {CASE_LIMIT_S} s", []
    finally:
        if case.teardown is not None and state is not None:
            case.teardown(state)

    def short(text: str) -> str:  # scratch paths vary from run to run: name them by role
        return str(text).replace(str(d), "<case>").replace(str(ctx.shared), "<shared>").replace(str(ctx.work), "<work>")

    return Result(case.id, case.surface, case.what, case.expect, verdict, short(said), [short(p) for p in problems],
                  round(time.perf_counter() - t0, 2), advice)


def follow_table() -> dict:
    """case id -> how to follow its refusal's advice (imported late: that module imports this one)."""
    from tests.acceptance.advice import FOLLOW

    return FOLLOW


def follow_advice(ctx: Ctx, case: Case, d: Path, state) -> tuple[str, str]:
    """Do what the refusal told the user to do (``tests.acceptance.advice.FOLLOW``); ("followed", "") when it then
    works, ("", why not) when following it fails: advice that reproduces an error is a misleading message."""
    fix = follow_table()[case.id]
    try:
        if case.surface == "cli":
            out = invoke(fix(ctx, d, state, [str(a) for a in case.action(ctx, d, state)]))
        else:
            out = call_api(lambda: fix(ctx, d, state, None))
    except Exception as e:  # the follow-up itself could not be done as advised
        return "", f"following the advice failed: {_describe_exc(e, e.__traceback__)}"
    if out.tb or out.error or (out.exit_code not in (None, 0)):
        return "", f"following the advice failed: {out.tb or out.error or f'exit {out.exit_code}'}"
    return "followed", ""


# ---------------------------------------------------------------------------
# Helpers for building hostile inputs


def write(p: Path, data: bytes | str) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        p.write_text(data)
    else:
        p.write_bytes(data)
    return p


def png_bytes(arr) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def grey(seed: int, size: int = 16):
    import numpy as np

    return np.random.default_rng(seed).integers(0, 256, (size, size), dtype=np.uint8)


def image_folder(root: Path, per_class: int = 4, classes=("normal", "pneumonia")) -> Path:
    for k, c in enumerate(classes):
        for i in range(per_class):
            write(root / c / f"img{i}.png", png_bytes(grey(10 * k + i)))
    return root


def npz(p: Path, **arrays) -> Path:
    import numpy as np

    p.parent.mkdir(parents=True, exist_ok=True)
    np.savez(p, **arrays)
    return p


def phantom_arrays(n: int = 16, size: int = 16):
    import numpy as np

    imgs = np.stack([grey(i, size) for i in range(n)])
    return imgs, (np.arange(n) % 2)[:, None]


def copy_export(ctx: Ctx, d: Path, which: str = "ldm") -> Path:
    src = ctx.ldm_export if which == "ldm" else ctx.bridge_export
    return Path(shutil.copytree(src, d / "export"))


def copy_set(ctx: Ctx, d: Path, name: str = "set") -> Path:
    return Path(shutil.copytree(ctx.set6, d / name, symlinks=True))


def data_cfg(name: str | Path, *extra: str):
    from synth.config import load_config

    return load_config(None, [f"data.name={name}", "data.resolution=16", *extra]).data


def pngs(out: Path) -> list[Path]:
    return sorted(out.rglob("*.png")) if out.exists() else []


def rows(out: Path) -> list[dict]:
    return [json.loads(ln) for ln in (out / "metadata.jsonl").read_text().splitlines() if ln.strip()]


def expect_set(n: int, *, labels: set[str] | None = None):
    """Check: ``d/out`` is a finished set of ``n`` decodable images, each index once in the metadata."""
    def check(ctx, d, state, out):
        from PIL import Image

        o, problems = d / "out", []
        files = pngs(o)
        if len(files) != n:
            problems.append(f"{len(files)} PNGs written, expected {n}")
        for f in files:
            with Image.open(f) as im:
                im.load()
        meta = rows(o)
        if sorted(r["index"] for r in meta) != list(range(n)):
            problems.append(f"metadata indices {[r['index'] for r in meta]}, expected 0..{n - 1}")
        if labels is not None and {r["label"] for r in meta} != labels:
            problems.append(f"labels {sorted({str(r['label']) for r in meta})}, expected {sorted(labels)}")
        return problems
    return check


def nothing_written(*names: str):
    """Check: the action left no new files under d/<name> (beyond what setup put there)."""
    def check(ctx, d, state, out):
        problems = []
        for name in names or ("out",):
            p = d / name
            made = pngs(p)
            if made:
                import numpy as np
                from PIL import Image

                px = np.stack([np.asarray(Image.open(q)) for q in made])
                problems.append(f"wrote {len(made)} PNGs into {name}/ (pixel values {px.min()}..{px.max()}"
                                + (": every image is black" if px.max() == 0 else "") + ")")
        return problems
    return check


def no_file(name: str):
    def check(ctx, d, state, out):
        return [f"{name} was created: the hostile input ran code"] if (d / name).exists() else []
    return check


def all_checks(*checks):
    def check(ctx, d, state, out):
        return [p for c in checks if c for p in c(ctx, d, state, out)]
    return check


def nothing(ctx, d):
    return None



def run(ids: list[str] | None = None, work: Path | None = None, log=print) -> list[Result]:
    """Run the cases ``ids`` (default: all) in scratch folder ``work`` (default: a temp folder, removed after)."""
    import torch

    from synth.quiet import install

    install()
    threads, env = torch.get_num_threads(), dict(os.environ)
    torch.set_num_threads(1)
    for k, v in OFFLINE_ENV.items():  # for this run only: the test suite imports this module
        os.environ.setdefault(k, v)
    from tests.acceptance.cases import all_cases

    cases = all_cases()
    if ids:
        known = {c.id for c in cases}
        unknown = [i for i in ids if i not in known]
        if unknown:
            raise SystemExit(f"unknown case id(s) {unknown}; see --list")
        cases = [c for c in cases if c.id in ids]
    own = work is None
    work = Path(work) if work else Path(tempfile.mkdtemp(prefix="synth-bad-inputs-"))
    cwd = os.getcwd()
    os.chdir(work)  # a default output path (runs/...) lands in the scratch folder, never in the checkout
    ctx = Ctx(work)
    results = []
    try:
        for case in cases:
            r = run_case(ctx, case)
            results.append(r)
            flag = "" if r.verdict in ("ok", "one-line error") else "   <-- " + "; ".join(r.problems)[:200]
            log(f"{r.id:38s} {r.verdict:15s} {r.seconds:6.2f}s  {one_line(r.said)[:110]}{flag}")
    finally:
        os.chdir(cwd)
        torch.set_num_threads(threads)
        os.environ.clear()
        os.environ.update(env)
        if own:
            shutil.rmtree(work, ignore_errors=True)
    return results


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


