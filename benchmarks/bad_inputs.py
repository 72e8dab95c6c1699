"""Crashes and hostile inputs: what a careless or hostile user can feed synth, and what synth does with it.

    python benchmarks/bad_inputs.py                               # every case (~15 s on 2 CPU cores)
    python benchmarks/bad_inputs.py --only sample-n-0,aug-dotdot  # some cases
    python benchmarks/bad_inputs.py --list                        # the case ids

Each case builds a hostile input in its own scratch folder, runs one action through the CLI
(``synth.cli.main`` in-process with click's CliRunner: imports are paid once) or the Python API,
and judges the outcome against its expectation:

* ``error``: CLI exit code 2, the last stderr line starts with ``error:`` (click's own usage
  errors, ``Error: ...``, count too), no ``Traceback`` anywhere; API: one of the project's error
  classes (``synth.cli._user_errors()``) with a one-line message.  The message must also name
  the problem (a per-case pattern), otherwise the verdict is ``BAD ERROR``.
* ``ok``: it succeeds and a per-case check verifies the result (a note printed, the right
  images written, ...); a failed check is ``SILENT WRONG``.

Every case is also a data-loss check: the files of its scratch folder and of the shared models
are hashed before the action and must all still be there with the same bytes afterwards,
except those the case expects to be replaced.  Any other exception is a ``TRACEBACK``.

Tiny models are trained once per harness run and shared: a pixel LDM on 16x16 phantoms and a
3-domain bridge (``labels.domains=[clean,dim,inverted]`` on ``synth.data.phantom_domains``).
Writes ``<out>/bad_inputs.md`` and ``bad_inputs.json`` (default out: benchmarks/results/) and
exits 1 when any case misses its expectation.
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

ROOT = Path(__file__).resolve().parents[1]
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
    advice: str = ""  # "followed" when the refusal's advice was followed and then worked (bad_inputs_advice.py)


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
    from bad_inputs_advice import FOLLOW

    return FOLLOW


def follow_advice(ctx: Ctx, case: Case, d: Path, state) -> tuple[str, str]:
    """Do what the refusal told the user to do (``bad_inputs_advice.FOLLOW``); ("followed", "") when it then
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


# ---------------------------------------------------------------------------
# The cases: config files and overrides


def cfg_case(cid: str, what: str, content: bytes | str, says: str, *,
             keys: tuple[str, ...] = ()) -> Case:
    """``synth train ldm --config d/cfg.yaml`` with the tiny overrides, except those of ``keys``."""
    def setup(ctx, d):
        write(d / "cfg.yaml", content)

    def action(ctx, d, s):
        extra = [] if "train.steps" in keys else ["train.steps=2"]
        return ["train", "ldm", "--config", str(d / "cfg.yaml"), "--run", str(d / "run"), *sets(tiny_without(*keys) + extra)]

    return Case(cid, "cli", what, setup, action, "error", says, check=nothing_written("run"))


def config_cases() -> list[Case]:
    cases = [
        Case("cfg-missing", "cli", "--config names a file that does not exist", nothing,
             lambda c, d, s: ["train", "ldm", "--config", str(d / "nope.yaml"), "--run", str(d / "run")],
             "error", r"not found"),
        Case("cfg-directory", "cli", "--config names a directory", nothing,
             lambda c, d, s: ["train", "ldm", "--config", str(d), "--run", str(d / "run")], "error", r"(?i)director"),
        Case("cfg-empty", "cli", "--config is an empty file (0 bytes); tiny --set overrides",
             lambda c, d: write(d / "cfg.yaml", b""),
             lambda c, d, s: ["train", "ldm", "--config", str(d / "cfg.yaml"), "--run", str(d / "run"),
                              *sets(TINY + ["train.steps=2", "train.checkpoint_every=2"])],
             "ok", r"exported to",
             check=lambda c, d, s, o: _resolved_config_is(d / "run", TINY + ["train.steps=2", "train.checkpoint_every=2"])),
        cfg_case("cfg-not-utf8", "config file in Latin-1 (byte 0xe9 in a comment)", b"# r\xe9sum\xe9\ntrain: {steps: 2}\n",
                 r"not UTF-8", keys=("train.steps",)),
        cfg_case("cfg-invalid-yaml", "config with an unclosed bracket", "train: {steps: [1, 2\n", r"not valid YAML",
                 keys=("train.steps",)),
        Case("cfg-python-tag", "cli", "config with a !!python/object/apply tag that would run a shell command",
             lambda c, d: write(d / "cfg.yaml", f"train: !!python/object/apply:os.system ['touch {d / 'pwned'}']\n"),
             lambda c, d, s: ["train", "ldm", "--config", str(d / "cfg.yaml"), "--run", str(d / "run"), *sets(TINY)],
             "error", r"not valid YAML|python", check=all_checks(no_file("pwned"), nothing_written("run"))),
        cfg_case("cfg-unknown-key", "config key misspelt (train.stpes)", "train: {stpes: 2}\n", r"did you mean 'train\.steps'"),
        cfg_case("cfg-wrong-type", "train.steps: ten (a word)", "train: {steps: ten}\n", r"train\.steps: expected an integer",
                 keys=("train.steps",)),
        cfg_case("cfg-nan-lr", "train.lr: .nan", "train: {lr: .nan}\n", r"train\.lr.*finite"),
        cfg_case("cfg-negative-lr", "train.lr: -1e-3", "train: {lr: -1.0e-3}\n", r"train\.lr must be > 0"),
        cfg_case("cfg-log-every-0", "train.log_every: 0 (would divide by zero)", "train: {log_every: 0}\n",
                 r"train\.log_every must be > 0", keys=("train.log_every",)),
        cfg_case("cfg-steps-0", "train.steps: 0", "train: {steps: 0}\n", r"train\.steps must be > 0", keys=("train.steps",)),
        cfg_case("cfg-duplicate-keys", "two train: sections (YAML keeps the last silently)",
                 "train: {steps: 2}\nmodel: {codec: pixel}\ntrain: {lr: 0.01}\n", r"duplicate key", keys=("train.steps",)),
        cfg_case("cfg-top-level-list", "config is a YAML list, not a mapping", "- train\n- steps: 2\n", r"mapping"),
        cfg_case("cfg-alias-bomb", "YAML alias bomb ('billion laughs', 9 levels)",
                 "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
                     f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
                 r"unknown config key"),
        cfg_case("cfg-bad-choice", "model.codec: latent (not pixel or vae)", "model: {codec: latent}\n",
                 r"model\.codec.*not one of"),
        cfg_case("cfg-tau-out-of-range", "sample.tau: 2", "sample: {tau: 2}\n", r"sample\.tau must be in \[0, 1\]"),
        Case("set-without-equals", "cli", "--set train.steps (no '=')", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), "--set", "train.steps"], "error",
             r"not of the form key=value", check=nothing_written("run")),
        Case("set-unknown-key", "cli", "--set train.stepz=3", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), *sets(TINY + ["train.stepz=3"])], "error",
             r"did you mean 'train\.steps'", check=nothing_written("run")),
        Case("set-empty-key", "cli", "--set =3", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), "--set", "=3"], "error", r"empty key"),
        Case("set-python-tag", "cli", "--set train.lr='!!python/object/apply:os.system [touch pwned]'", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), *sets(TINY),
                              "--set", f"train.lr=!!python/object/apply:os.system ['touch {d / 'pwned'}']"],
             "error", r"train\.lr: expected a number", check=no_file("pwned")),
        set_case("set-norm-groups", "model.unet.norm_num_groups=5 (16 channels are not divisible by 5)",
                 ["model.unet.norm_num_groups=5"], r"norm_num_groups"),
        set_case("set-text-heads", "model.text.num_heads=3 (hidden_size 32 is not divisible by 3)",
                 ["model.text.num_heads=3"], r"num_heads"),
        set_case("set-text-max-length-1", "model.text.max_length=1 (no room for a prompt)", ["model.text.max_length=1"],
                 r"max_length"),
        set_case("set-fp16-on-cpu", "train.mixed_precision=fp16 on a CPU machine", ["train.mixed_precision=fp16"],
                 r"fp16 needs a CUDA GPU"),
        set_case("set-fewer-classes", "labels.classes=[normal] for 2-class data", ["labels.classes=[normal]"],
                 r"does not match"),
        set_case("set-extra-class", "labels.classes=[normal,pneumonia,covid]: 'covid' has no training image",
                 ["labels.classes=[normal,pneumonia,covid]"], r"covid"),
        set_case("set-prompt-template-field", "labels.prompt_template='x-ray {label} {view}'",
                 ["labels.prompt_template=x-ray {label} {view}"], r"prompt_template"),
        set_case("set-fraction-empties-class", "data.fraction=0.01 of 48 images", ["data.fraction=0.01"],
                 r"leaves class .* empty"),
        Case("api-config-nan", "api", "load_config(None, ['train.lr=nan'])", nothing,
             lambda c, d, s: __import__("synth.config", fromlist=["load_config"]).load_config(None, ["train.lr=nan"]),
             "error", r"train\.lr.*finite"),
    ]
    return cases


def set_case(cid: str, what: str, overrides: list[str], says: str) -> Case:
    """``synth train ldm`` (tiny, 2 steps) with hostile ``--set`` overrides."""
    return Case(cid, "cli", what, nothing,
                lambda c, d, s: ["train", "ldm", "--run", str(d / "run"),
                                 *sets(TINY + ["train.steps=2", "train.checkpoint_every=2", *overrides])],
                "error", says, check=lambda c, d, s, o: ["trained and exported anyway"] if (d / "run" / "export").exists() else [])


def _resolved_config_is(run: Path, overrides: list[str]) -> list[str]:
    import yaml

    from synth.config import config_to_dict, load_config

    got = yaml.safe_load((run / "config.yaml").read_text())
    want = config_to_dict(load_config(None, overrides))
    return [] if got == want else ["the resolved config differs from defaults + overrides"]


# ---------------------------------------------------------------------------
# Data sets


def train_on(name_fn: Callable[[Path], Path], *extra: str):
    """Action: ``synth train ldm`` (tiny, 2 steps) on the data set ``name_fn(d)``."""
    return lambda c, d, s: ["train", "ldm", "--run", str(d / "run"),
                            *sets(TINY + ["train.steps=2", "train.checkpoint_every=2", f"data.name={name_fn(d)}", *extra])]


def load_split_of(name_fn: Callable[[Path], Path], *extra: str, split: str = "train"):
    def action(c, d, s):
        from synth.data import load_split

        return load_split(data_cfg(name_fn(d), *extra), split)
    return action


def _corrupt_png_folder(d: Path) -> None:
    image_folder(d / "data")
    good = (d / "data" / "normal" / "img0.png").read_bytes()
    write(d / "data" / "normal" / "img1.png", good[: len(good) // 2])  # cut short: no IEND, CRC fails


def _symlink_manifest(d: Path) -> None:
    write(d / "outside" / "secret.png", png_bytes(grey(99)))
    image_folder(d / "data")
    os.symlink(d / "outside" / "secret.png", d / "data" / "normal" / "link.png")
    rows_ = [f"{c}/img{i}.png,{c}" for c in ("normal", "pneumonia") for i in range(4)] + ["normal/link.png,normal"]
    write(d / "data" / "train.csv", "file_name,label\n" + "\n".join(rows_) + "\n")


def _la_folder(d: Path):
    import numpy as np
    from PIL import Image

    import io

    for k, c in enumerate(("normal", "pneumonia")):
        for i in range(4):
            la = np.stack([grey(10 * k + i), np.full((16, 16), 128 + i, np.uint8)], axis=-1)
            buf = io.BytesIO()
            Image.fromarray(la, mode="LA").save(buf, format="PNG")
            write(d / "data" / c / f"img{i}.png", buf.getvalue())


def _rgb_stack(n: int):
    import numpy as np

    return np.random.default_rng(5).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _colour_folder(d: Path, alpha: bool, classes=("normal", "pneumonia")):
    import io

    import numpy as np
    from PIL import Image

    imgs = _rgb_stack(8)
    for k, c in enumerate(classes):
        for i in range(4):
            a = imgs[4 * k + i]
            a = np.dstack([a, np.full((16, 16), 200, np.uint8)]) if alpha else a
            buf = io.BytesIO()
            Image.fromarray(a, mode="RGBA" if alpha else "RGB").save(buf, format="PNG")
            write(d / "data" / c / f"col{i}.png", buf.getvalue())


def _check_rgba(c, d, s, out):
    got = out.value
    if tuple(got.images.shape) != (8, 3, 16, 16):
        return [f"images have shape {tuple(got.images.shape)}, expected (8, 3, 16, 16)"]
    if not any("alpha channel was dropped" in n for n in got.notes):
        return ["no note that the alpha channel was dropped"]
    return []


def data_cases() -> list[Case]:
    import numpy as np

    imgs, labels = phantom_arrays()
    return [
        Case("data-npz-no-labels", "cli", "npz with train_images but no train_labels",
             lambda c, d: npz(d / "x.npz", train_images=imgs), train_on(lambda d: d / "x.npz"), "error",
             r"no 'train_labels'", check=nothing_written("run")),
        Case("data-npz-label-count", "cli", "npz with 16 images but 10 labels",
             lambda c, d: npz(d / "x.npz", train_images=imgs, train_labels=labels[:10]), train_on(lambda d: d / "x.npz"),
             "error", r"(?i)label", check=nothing_written("run")),
        Case("data-npz-1d-images", "api", "npz whose images are flat vectors (16, 256)",
             lambda c, d: npz(d / "x.npz", train_images=imgs.reshape(16, 256), train_labels=labels),
             load_split_of(lambda d: d / "x.npz"), "error", r"shape"),
        Case("data-npz-2-channel", "api", "npz whose images have 2 channels (N, H, W, 2)",
             lambda c, d: npz(d / "x.npz", train_images=np.stack([imgs, imgs], -1), train_labels=labels),
             load_split_of(lambda d: d / "x.npz"), "error", r"shape|channel"),
        Case("data-npz-negative-labels", "cli", "npz (all 3 splits) whose labels use -1 for 'unlabelled'",
             lambda c, d: npz(d / "x.npz", **{f"{sp}_{k}": v for sp in ("train", "val", "test")
                                               for k, v in (("images", imgs), ("labels", labels - 1))}),
             train_on(lambda d: d / "x.npz"),
             "error", r"(?i)label", check=nothing_written("run")),
        Case("data-npz-not-a-zip", "cli", "a text file named data.npz",
             lambda c, d: write(d / "x.npz", "not a zip\n"), train_on(lambda d: d / "x.npz"), "error", r"cannot read"),
        Case("data-csv-no-label", "cli", "CSV manifest without a label column",
             lambda c, d: (image_folder(d / "data"), write(d / "data" / "m.csv", "file_name\nnormal/img0.png\n")),
             train_on(lambda d: d / "data" / "m.csv"), "error", r"no 'label' column"),
        Case("data-csv-dotdot", "cli", "manifest row ../outside/secret.png",
             lambda c, d: (write(d / "outside" / "secret.png", png_bytes(grey(1))), image_folder(d / "data"),
                           write(d / "data" / "m.csv", "file_name,label\nnormal/img0.png,normal\n../outside/secret.png,pneumonia\n")),
             train_on(lambda d: d / "data" / "m.csv"), "error", r"\.\.|outside"),
        Case("data-csv-absolute", "api", "manifest row with an absolute path (/etc/hostname)",
             lambda c, d: (image_folder(d / "data"),
                           write(d / "data" / "m.csv", "file_name,label\nnormal/img0.png,normal\n/etc/hostname,pneumonia\n")),
             load_split_of(lambda d: d / "data" / "m.csv"), "error", r"(?i)absolute|relative"),
        Case("data-csv-symlink-out", "api", "manifest row names a symlink pointing out of the data folder",
             lambda c, d: _symlink_manifest(d), load_split_of(lambda d: d / "data" / "train.csv"), "error",
             r"(?i)symlink|outside|points"),
        Case("data-empty-folder", "cli", "data.name is an empty folder",
             lambda c, d: (d / "data").mkdir(), train_on(lambda d: d / "data"), "error", r"no images"),
        Case("data-flat-folder", "api", "images directly in the folder, no class sub-folders",
             lambda c, d: [write(d / "data" / f"{i}.png", png_bytes(grey(i))) for i in range(4)],
             load_split_of(lambda d: d / "data"), "error", r"class sub-folders"),
        Case("data-folder-non-image", "api", "class folders also hold notes.txt and a .DS_Store",
             lambda c, d: (image_folder(d / "data", 5), write(d / "data" / "normal" / "notes.txt", "reader 2 disagrees\n"),
                           write(d / "data" / "pneumonia" / ".DS_Store", b"\0\1\2")),
             load_split_of(lambda d: d / "data"), "ok",
             check=lambda c, d, s, o: [] if len(o.value) + len(load_split_of(lambda d: d / "data", split="val")(c, d, s)) == 10
             else [f"{len(o.value)} train images, expected the 10 PNGs minus the val carve"]),
        Case("data-corrupt-png", "cli", "one PNG in a class folder is cut in half",
             lambda c, d: _corrupt_png_folder(d), train_on(lambda d: d / "data"), "error", r"img1\.png",
             check=nothing_written("run")),
        Case("data-corrupt-png-skip", "api", "the same corrupt PNG with data.on_error=skip",
             lambda c, d: _corrupt_png_folder(d),
             lambda c, d, s: __import__("synth.data", fromlist=["load_image_folder"]).load_image_folder(
                 d / "data", "train", 16, "skip", None), "ok",
             check=lambda c, d, s, o: [] if (len(o.value), o.value.skipped) == (7, 1)
             else [f"{len(o.value)} images, {o.value.skipped} skipped; expected 7 and 1"]),
        Case("data-2-channel-png", "api", "grey+alpha (LA) PNGs, 2 channels", lambda c, d: _la_folder(d),
             lambda c, d, s: __import__("synth.data", fromlist=["load_image_folder"]).load_image_folder(
                 d / "data", "train", 16, "raise", None), "error", r"2-channel image"),
        Case("data-rgba-png", "api", "RGBA PNGs (colour + alpha)", lambda c, d: _colour_folder(d, alpha=True),
             lambda c, d, s: __import__("synth.data", fromlist=["load_image_folder"]).load_image_folder(
                 d / "data", "train", 16, "raise", None), "ok", check=_check_rgba),
        Case("data-mixed-grey-colour", "api", "a folder mixing grey and colour images (data.channels: auto)",
             lambda c, d: (image_folder(d / "data"), _colour_folder(d, alpha=False, classes=("pneumonia",))),
             lambda c, d, s: __import__("synth.data", fromlist=["load_image_folder"]).load_image_folder(
                 d / "data", "train", 16, "raise", None), "error", r"mixes grey and colour images \(grey: .*colour: "),
        Case("data-colour-npz", "api", "an RGB MedMNIST-style npz (N, 16, 16, 3): must stay colour",
             lambda c, d: npz(d / "rgb.npz", train_images=_rgb_stack(8), train_labels=(__import__("numpy").arange(8) % 2)[:, None]),
             lambda c, d, s: __import__("synth.data", fromlist=["load_npz"]).load_npz(d / "rgb.npz", "train", 16, None),
             "ok", check=lambda c, d, s, o: [] if o.value.images.shape[1] == 3 else ["colour came out grey"]),
        Case("data-missing-path", "cli", "data.name=/no/such/data.npz", nothing, train_on(lambda d: d / "nope.npz"),
             "error", r"does not exist"),
        Case("data-jsonl-non-object", "api", "JSONL manifest with a line that is a list",
             lambda c, d: (image_folder(d / "data"),
                           write(d / "data" / "m.jsonl", '{"file_name": "normal/img0.png", "label": "normal"}\n["x", 1]\n')),
             load_split_of(lambda d: d / "data" / "m.jsonl"), "error", r"not a JSON object"),
    ]


# ---------------------------------------------------------------------------
# Training run folders


def _copy_run(ctx: Ctx, d: Path) -> Path:
    return Path(shutil.copytree(ctx.ldm_run, d / "run", symlinks=True))


def _truncate(p: Path, keep: float = 0.5) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


def _damage_latest(ctx: Ctx, d: Path) -> dict:
    run = _copy_run(ctx, d)
    from synth.trainers.checkpoints import latest_checkpoint

    step, ck = latest_checkpoint(run)
    _truncate(ck / "unet.safetensors")
    return {"step": step, "unet": hashlib.sha256((ck / "unet.safetensors").read_bytes()).hexdigest(), "ck": ck.name}


def _check_quarantined(ctx, d, s, out):
    from synth.samplers.generator import load_generator

    problems = []
    q = d / "run" / "checkpoints" / f"corrupt-{s['ck']}"
    if not q.is_dir() or hashlib.sha256((q / "unet.safetensors").read_bytes()).hexdigest() != s["unet"]:
        problems.append(f"the damaged checkpoint was not kept as {q.name}")
    if not (d / "run" / "checkpoints" / s["ck"] / "state.json").is_file():
        problems.append("training did not complete (no new final checkpoint)")
    load_generator(d / "run" / "export")
    return problems


def _user_folder(d: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        write(d / "run" / rel, text)


def train_cases() -> list[Case]:
    tiny2 = lambda c, d, s, *x: ["train", "ldm", "--run", str(d / "run"),  # noqa: E731
                                 *sets(TINY + ["train.steps=2", "train.checkpoint_every=2", *x])]
    return [
        Case("train-user-export-folder", "cli", "--run names a folder holding the user's own export/ (no synth.json)",
             lambda c, d: _user_folder(d, {"export/report.docx": "my report", "export/figures/fig1.txt": "fig"}),
             tiny2, "error", r"refusing to replace export|not empty .*holds no synth run"),
        Case("train-user-config-in-run", "cli", "--run . in a project folder holding the user's own config.yaml",
             lambda c, d: _user_folder(d, {"config.yaml": "# my hand-written notes\ntrain: {steps: 2}\n"}),
             tiny2, "error", r"config\.yaml|not.*synth"),
        Case("train-user-samples-in-run", "cli", "--run folder holding the user's own samples/final.png",
             lambda c, d: write(d / "run" / "samples" / "final.png", png_bytes(grey(5))),
             tiny2, "error", r"samples"),
        Case("train-user-checkpoint-folder", "cli",
             "--run folder whose checkpoints/step-00000002/ is the user's (no state.json)",
             lambda c, d: _user_folder(d, {"checkpoints/step-00000002/notes.txt": "mine"}),
             tiny2, "error", r"refusing to replace|not empty .*holds no synth run"),
        Case("train-damaged-run-json", "cli", "run.json of the run folder cut in half",
             lambda c, d: _truncate(_copy_run(c, d) / "run.json"), lambda c, d, s: c.ldm_args(d / "run"), "error",
             r"run\.json"),
        Case("train-other-stage", "cli", "synth train bridge --run <an ldm run folder>",
             lambda c, d: _copy_run(c, d), lambda c, d, s: ["train", "bridge", "--run", str(d / "run"), *sets(TINY + SHARED_LDM)],
             "error", r"holds a 'ldm' run"),
        Case("train-changed-model", "cli", "resume with another UNet width",
             lambda c, d: _copy_run(c, d), lambda c, d, s: c.ldm_args(d / "run", "model.unet.block_out_channels=[8,32]"),
             "error", r"model\.unet\.block_out_channels"),
        Case("train-truncated-checkpoint", "cli", "the latest checkpoint's unet.safetensors cut in half, same command again",
             _damage_latest, lambda c, d, s: c.ldm_args(d / "run"), "ok", r"damaged.*skipped", check=_check_quarantined,
             replaced=("run/checkpoints/*", "run/export/*", "run/samples/*", "run/logs/*", "run/run.json",
                       "run/config.yaml")),
        Case("train-run-is-file", "cli", "--run names an existing file", lambda c, d: write(d / "run", "a file"),
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), *sets(TINY)], "error", r"(?i)file"),
        Case("train-critic-too-small", "cli", "autoencoder with a patch critic on 4 px images",
             lambda c, d: None, lambda c, d, s: ["train", "autoencoder", "--run", str(d / "ae"),
                                                 *sets(TINY + ["data.resolution=4", "model.vae.block_out_channels=[16,32]",
                                                               "train.adversarial_weight=0.1"])],
             "error", r"at least 8 px for its patch critic"),
        Case("train-critic-appears", "cli", "resume an autoencoder run with train.adversarial_weight switched on",
             lambda c, d: must_succeed(["train", "autoencoder", "--run", str(d / "ae"), *sets(TINY + ["train.steps=2"])]),
             lambda c, d, s: ["train", "autoencoder", "--run", str(d / "ae"),
                              *sets(TINY + ["train.steps=4", "train.adversarial_weight=0.1"])],
             "error", r"written without a patch critic"),
        Case("train-zero-judges", "cli", "train.ceiling_judges=0 with the ceiling gate on",
             lambda c, d: None, lambda c, d, s: ["train", "ldm", "--run", str(d / "run"),
                                                 *sets(TINY + ["train.ceiling_gate=0.5", "train.ceiling_judges=0"])],
             "error", r"train\.ceiling_judges"),
    ]


# ---------------------------------------------------------------------------
# synth sample


def _pickle_bomb(d: Path) -> bytes:
    import pickle

    class Bomb:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'pwned'}",))
    return pickle.dumps(Bomb())


def _export_with_pickle(c: Ctx, d: Path) -> None:
    e = copy_export(c, d)
    write(e / "unet" / "diffusion_pytorch_model.bin", _pickle_bomb(d))


def _flip_last_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))


def _hold_lock(c: Ctx, d: Path):
    import synth.samplers.bulk as bulk

    (d / "out").mkdir()
    lock = getattr(bulk, "output_lock", None) or getattr(bulk, "OutputLock")  # the lock's API is being reworked
    return lock(d / "out")


def _same_images_as_set6(n: int):
    def check(c, d, s, out):
        problems = []
        want = {p.relative_to(c.set6).as_posix(): p.read_bytes() for p in pngs(c.set6) if int(p.stem) < n}
        got = {p.relative_to(d / "out").as_posix(): p.read_bytes() for p in pngs(d / "out")}
        if got != want:
            problems.append(f"images differ from a fresh {n}-image set ({sorted(got)} vs {sorted(want)})")
        m = json.loads((d / "out" / "manifest.json").read_text())
        if m["n_done"] != n or len(rows(d / "out")) != n:
            problems.append(f"manifest n_done {m['n_done']}, {len(rows(d / 'out'))} metadata rows; expected {n}")
        return problems
    return check


def _torn_record(c: Ctx, d: Path) -> dict:
    out = copy_set(c, d, "out")
    rec = out / ".synth" / "done" / "shard-00000.json"
    _truncate(rec, 0.4)
    return {"files": {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
                      if p.is_file() and ".synth" not in p.parts}}


def _check_torn(c, d, s, out):
    from synth.samplers.bulk import read_done

    o = d / "out"
    got = {p.relative_to(o).as_posix(): p.read_bytes() for p in o.rglob("*") if p.is_file() and ".synth" not in p.parts}
    problems = []
    if {k: v for k, v in got.items() if k.endswith(".png")} != {k: v for k, v in s["files"].items() if k.endswith(".png")}:
        problems.append("the redone shard's images differ from the originals")
    if read_done(o, 0) is None:
        problems.append("the torn done record was not rewritten")
    return problems


def _user_file_in_shard(c: Ctx, d: Path) -> None:
    out = copy_set(c, d, "out")
    write(out / "shard-00000" / "my-annotations.csv", "index,reader\n0,A\n")


def _shard_symlink(c: Ctx, d: Path) -> None:
    out = copy_set(c, d, "out")
    image_folder(d / "patients")
    shutil.rmtree(out / "shard-00001")
    os.symlink(d / "patients" / "normal", out / "shard-00001")


def sample_cases() -> list[Case]:
    S = lambda n, *x: (lambda c, d, s: c.sample_args(d / "out", n, *x))  # noqa: E731
    refused = nothing_written()
    return [
        Case("sample-n-0", "cli", "--n 0", nothing, S(0), "error", r"--n must be a positive", check=refused),
        Case("sample-n-negative", "cli", "--n -3", nothing, S(-3), "error", r"--n must be a positive", check=refused),
        Case("sample-steps-0", "cli", "--steps 0", nothing, lambda c, d, s: c.sample_args(d / "out", 4) + ["--steps", "0"],
             "error", r"must be positive", check=refused),
        Case("sample-unknown-sampler", "cli", "--sampler dpm++", nothing, S(4, "--sampler", "dpm++"), "error",
             r"unknown sampler 'dpm\+\+'", check=refused),
        Case("sample-labels-unknown", "cli", "--labels normal=0.5,covid=0.5 (no such class)", nothing,
             S(4, "--labels", "normal=0.5,covid=0.5"), "error", r"covid", check=refused),
        Case("sample-labels-nan", "cli", "--labels normal=nan,pneumonia=1", nothing,
             S(4, "--labels", "normal=nan,pneumonia=1"), "error", r"finite", check=refused),
        Case("sample-labels-overflow", "cli", "--labels normal=1e308,pneumonia=1e308 (sum overflows)", nothing,
             S(4, "--labels", "normal=1e308,pneumonia=1e308"), "error", r"too large", check=refused),
        Case("sample-labels-empty", "cli", "--labels '' (an unset shell variable)", nothing, S(4, "--labels", ""),
             "error", r"(?i)empty|label", check=refused),
        Case("sample-labels-commas", "cli", "--labels ',' (nothing between the commas)", nothing, S(4, "--labels", ","),
             "error", r"empty label spec", check=refused),
        Case("sample-labels-unnormalised", "cli", "--labels normal=2,pneumonia=2 (sum 4)", nothing,
             S(4, "--labels", "normal=2,pneumonia=2"), "ok", r"note: label weights sum to 4",
             check=expect_set(4, labels={"normal", "pneumonia"})),
        Case("sample-labels-zero", "cli", "--labels normal=0", nothing, S(4, "--labels", "normal=0"), "error",
             r"sum to 0", check=refused),
        Case("sample-labels-negative", "cli", "--labels normal=-1,pneumonia=2", nothing,
             S(4, "--labels", "normal=-1,pneumonia=2"), "error", r">= 0", check=refused),
        Case("sample-prompts-directory", "cli", "--prompts names a directory", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4, "--prompts", str(d)), "error", r"prompts file", check=refused),
        Case("sample-labels-and-prompts", "cli", "--labels and --prompts together",
             lambda c, d: write(d / "p.txt", "normal\n"), lambda c, d, s: c.sample_args(d / "out", 4, "--labels", "normal",
                                                                                       "--prompts", str(d / "p.txt")),
             "error", r"either --labels or --prompts", check=refused),
        Case("sample-prompts-not-utf8", "cli", "--prompts file in Latin-1", lambda c, d: write(d / "p.txt", b"pneumonie l\xe9g\xe8re\n"),
             lambda c, d, s: c.sample_args(d / "out", 4, "--prompts", str(d / "p.txt")), "error", r"not UTF-8", check=refused),
        Case("sample-prompts-empty", "cli", "--prompts file with only comments", lambda c, d: write(d / "p.txt", "# todo\n\n"),
             lambda c, d, s: c.sample_args(d / "out", 4, "--prompts", str(d / "p.txt")), "error", r"no prompts", check=refused),
        Case("sample-device-gpu0", "cli", "--device gpu0", nothing, S(4, "--device", "gpu0"), "error",
             r"not a device name", check=refused),
        Case("sample-device-cuda", "cli", "--device cuda on a CPU-only build", nothing, S(4, "--device", "cuda"),
             "error", r"--device cuda", check=refused),
        Case("sample-batch-size-0", "cli", "--batch-size 0", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4) + ["--batch-size", "0"],
             "error", r"--batch-size must be a positive", check=refused),
        Case("sample-shard-size-0", "cli", "--shard-size 0", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4) + ["--shard-size", "0"], "error", r"shard-size", check=refused),
        Case("sample-chunk-size-negative", "cli", "--chunk-size -1", nothing, S(4, "--chunk-size", "-1"), "error",
             r"chunk_size|chunk-size", check=refused),
        Case("sample-guidance-nan", "cli", "--guidance nan", nothing, S(4, "--guidance", "nan"), "error",
             r"(?i)guidance", check=refused),
        Case("sample-guidance-inf", "cli", "--guidance inf", nothing, S(4, "--guidance", "inf"), "error",
             r"(?i)guidance", check=refused),
        Case("sample-pickle-refused", "cli",
             "--model folder also holds unet/diffusion_pytorch_model.bin (a pickle that runs a command)",
             _export_with_pickle, lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error",
             r"--allow-pickle", check=all_checks(no_file("pwned"), refused)),
        Case("sample-pickle-allowed", "cli", "the same folder with --allow-pickle", _export_with_pickle,
             lambda c, d, s: c.sample_args(d / "out", 4, "--allow-pickle", model=d / "export"), "ok",
             check=all_checks(no_file("pwned"), expect_set(4))),
        Case("sample-truncated-safetensors", "cli", "the export's unet safetensors cut in half",
             lambda c, d: _truncate(copy_export(c, d) / "unet" / "diffusion_pytorch_model.safetensors"),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error", r"diffusion_pytorch_model",
             check=refused),
        Case("sample-modified-weights", "cli", "one byte of the unet weights flipped (hash mismatch)",
             lambda c, d: _flip_last_byte(copy_export(c, d) / "unet" / "diffusion_pytorch_model.safetensors"),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error", r"SHA-256", check=refused),
        Case("sample-missing-synth-json", "cli", "the export's synth.json deleted",
             lambda c, d: (copy_export(c, d) / "synth.json").unlink(),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error", r"synth\.json|not a synth export",
             check=refused),
        Case("sample-synth-json-not-json", "cli", "synth.json replaced by a YAML text",
             lambda c, d: write(copy_export(c, d) / "synth.json", "kind: ldm\n"),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error", r"not valid JSON", check=refused),
        Case("sample-model-is-file", "cli", "--model names the weights file", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4, model=c.ldm_export / "unet" / "diffusion_pytorch_model.safetensors"),
             "error", r"is a file", check=refused),
        Case("sample-model-missing", "cli", "--model names a folder that does not exist", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "nope"), "error", r"does not exist", check=refused),
        Case("sample-model-user-folder", "cli", "--model names an ordinary folder of PNGs",
             lambda c, d: image_folder(d / "pics"), lambda c, d, s: c.sample_args(d / "out", 4, model=d / "pics"),
             "error", r"not a synth export", check=refused),
        Case("sample-model-unfinished-run", "cli", "--model names a run folder whose training has not finished (no export)",
             lambda c, d: shutil.rmtree(_copy_run(c, d) / "export"),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "run"), "error", r"without an export", check=refused),
        Case("sample-seed-negative", "cli", "--seed -1 (seeds are [0, 2**63) everywhere, as in the config)", nothing,
             S(4, "--seed", "-1"), "error", r"--seed -1 is outside \[0, 2\*\*63\)", check=nothing_written("out")),
        Case("sample-out-is-file", "cli", "--out names an existing file", lambda c, d: write(d / "out", "my notes"),
             S(4), "error", r"(?i)file"),
        Case("sample-out-user-folder", "cli", "--out is a non-empty folder of the user's",
             lambda c, d: write(d / "out" / "patients.csv", "id\n1\n"), S(4), "error", r"not empty",
             check=lambda c, d, s, o: [] if sorted(p.name for p in (d / "out").iterdir()) == ["patients.csv"]
             else [f"wrote {sorted(p.name for p in (d / 'out').iterdir())}"]),
        Case("sample-out-user-folder-overwrite", "cli", "the same with --overwrite",
             lambda c, d: write(d / "out" / "patients.csv", "id\n1\n"), S(4, "--overwrite"), "error", r"not empty",
             check=lambda c, d, s, o: [] if sorted(p.name for p in (d / "out").iterdir()) == ["patients.csv"]
             else [f"wrote {sorted(p.name for p in (d / 'out').iterdir())}"]),
        Case("sample-other-settings", "cli", "the same --out again with another --guidance (no --overwrite)",
             lambda c, d: copy_set(c, d, "out"), S(6, "--guidance", "3"), "error", r"differs in: .*guidance"),
        Case("sample-overwrite-user-file", "cli", "--overwrite on a set whose shard folder holds the user's my-annotations.csv",
             _user_file_in_shard, S(6, "--overwrite", "--guidance", "3"), "error", r"my-annotations\.csv.*nothing was deleted"),
        Case("sample-overwrite-shard-symlink", "cli", "--overwrite on a set whose shard-00001 is a symlink to a patient folder",
             _shard_symlink, S(6, "--overwrite", "--guidance", "3"), "error", r"shard-00001"),
        Case("sample-smaller-n", "cli", "--n 3 into a 6-image set", lambda c, d: copy_set(c, d, "out"), S(3), "error",
             r"--shrink"),
        Case("sample-shrink", "cli", "--n 3 --shrink into a 6-image set", lambda c, d: copy_set(c, d, "out"), S(3, "--shrink"),
             "ok", r"--shrink: deleted 3 images", check=_same_images_as_set6(3),
             replaced=("out/shard-00000/0000000[3-9].png", "out/shard-00001/*", "out/.synth/*", "out/metadata.jsonl", "out/README.md",
                       "out/manifest.json")),
        Case("sample-torn-done-record", "cli", "a shard's done record cut short (power loss), same command again",
             _torn_record, S(6), "ok", check=_check_torn, replaced=("out/.synth/*",)),
        Case("sample-concurrent", "cli", "a second synth sample into a folder another run holds (OutputLock)",
             _hold_lock, S(4), "error", r"being written by|in use by", check=refused, teardown=lambda lock: lock.release()),
    ]


# ---------------------------------------------------------------------------
# synth translate


def translate_cases() -> list[Case]:
    T = lambda *x, **kw: (lambda c, d, s: c.translate_args(d / "out", *x, **kw))  # noqa: E731
    refused = nothing_written()

    def two_channel(c, d):
        imgs, labels = phantom_arrays(4)
        npz(d / "in.npz", test_images=__import__("numpy").stack([imgs, imgs], -1), test_labels=labels)

    def big(c, d):
        import numpy as np

        from synth.data import phantom_domains

        imgs, dom = phantom_domains(96, 32)
        npz(d / "in.npz", test_images=imgs[dom == 1][:4], test_labels=np.zeros((4, 1), np.int64))

    return [
        Case("tr-unknown-domain", "cli", "--source ct (not a domain of the model)", nothing, T(source="ct"), "error",
             r"unknown domain 'ct'", check=refused),
        Case("tr-tau-out-of-range", "cli", "--tau 1.5", nothing, T("--tau", "1.5"), "error", r"--tau must be in \[0, 1\]",
             check=refused),
        Case("tr-tau-nan", "cli", "--tau nan", nothing, T("--tau", "nan"), "error", r"--tau", check=refused),
        Case("tr-guidance-nan", "cli", "--guidance nan", nothing, T("--guidance", "nan"), "error", r"(?i)guidance",
             check=refused),
        Case("tr-steps-0", "cli", "--steps 0", nothing, lambda c, d, s: c.translate_args(d / "out") + ["--steps", "0"],
             "error", r"must be positive", check=refused),
        Case("tr-ldm-export", "cli", "--model is an LDM export, not a bridge", nothing,
             lambda c, d, s: c.translate_args(d / "out", model=c.ldm_export), "error", r"not a bridge", check=refused),
        Case("tr-input-missing", "cli", "--input names a missing file", nothing, T(inp=Path("/no/such/input.npz")),
             "error", r"does not exist", check=refused),
        Case("tr-input-2-channel", "cli", "--input npz of 2-channel images", two_channel,
             lambda c, d, s: c.translate_args(d / "out", inp=d / "in.npz"), "error", r"shape|channel", check=refused),
        Case("tr-input-32px", "cli", "--input of 32x32 images for a 16x16 model (resized, as documented)", big,
             lambda c, d, s: c.translate_args(d / "out", inp=d / "in.npz"), "ok", check=expect_set(4)),
        Case("tr-same-domain", "cli", "--source dim --target dim", nothing, T(target="dim"), "ok",
             r"note: source and target are both 'dim'", check=expect_set(6)),
        Case("tr-split-missing", "cli", "--split val on an npz that has only a test split", nothing, T("--split", "val"),
             "error", r"val", check=refused),
        Case("tr-flat-folder", "cli", "--input a flat folder of PNGs (no class sub-folders)",
             lambda c, d: [write(d / "scans" / f"{i}.png", png_bytes(grey(i))) for i in range(3)],
             lambda c, d, s: c.translate_args(d / "out", inp=d / "scans"), "error", r"class sub-folders", check=refused),
        Case("api-translate-3-channel", "api", "BridgeGenerator.translate() of RGB (3-channel) images", nothing,
             lambda c, d, s: _bridge(c).translate(__import__("torch").zeros(2, 3, 16, 16, dtype=__import__("torch").uint8),
                                                  "dim", "clean"), "error", r"1-channel"),
        Case("api-translate-tau", "api", "BridgeGenerator.translate(..., tau=1.5)", nothing,
             lambda c, d, s: _bridge(c).translate(__import__("torch").zeros(2, 1, 16, 16, dtype=__import__("torch").uint8),
                                                  "dim", "clean", tau=1.5), "error", r"tau must be in \[0, 1\]"),
        Case("api-translate-unknown-domain", "api", "BridgeGenerator.translate(x, 'ct', 'clean')", nothing,
             lambda c, d, s: _bridge(c).translate(__import__("torch").zeros(2, 1, 16, 16, dtype=__import__("torch").uint8),
                                                  "ct", "clean"), "error", r"unknown domain 'ct'"),
        Case("api-load-generator-missing", "api", "load_generator('runs/typo/export')", nothing,
             lambda c, d, s: __import__("synth.samplers.generator", fromlist=["load_generator"]).load_generator(d / "typo"),
             "error", r"does not exist"),
    ]


def _bridge(c: Ctx):
    from synth.samplers.generator import load_generator

    return c._once("bridge_gen", lambda: load_generator(c.bridge_export))


# ---------------------------------------------------------------------------
# synth.augment


def _edit_metadata(c: Ctx, d: Path, edit: Callable[[list[str]], list[str]]) -> Path:
    s = copy_set(c, d)
    lines = (s / "metadata.jsonl").read_text().splitlines()
    write(s / "metadata.jsonl", "\n".join(edit(lines)) + "\n")
    return s


def _row_with(lines: list[str], k: int, **change) -> list[str]:
    row = json.loads(lines[k])
    for key, v in change.items():
        if v is None:
            row.pop(key, None)
        else:
            row[key] = v
    return lines[:k] + [json.dumps(row)] + lines[k + 1:]


class _Real:
    """A tiny real data set with .classes and .targets (torchvision style)."""

    def __init__(self, n: int = 8, classes=("normal", "pneumonia")):
        import torch

        self.classes = list(classes)
        self.targets = [i % len(classes) for i in range(n)]
        self.x = torch.zeros(n, 1, 16, 16)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def augment_cases() -> list[Case]:
    def Set(**kw):
        return lambda c, d, s: __import__("synth.augment", fromlist=["SyntheticSet"]).SyntheticSet(d / "set", **kw)

    def mix(**kw):
        def action(c, d, s):
            from synth.augment import mix as mix_

            return mix_(_Real(), d / "set", **kw)
        return action

    def symlink_out(c, d):
        s = copy_set(c, d)
        write(d / "outside" / "secret.png", png_bytes(grey(7)))
        p = s / rows(s)[0]["file_name"]
        p.unlink()
        os.symlink(d / "outside" / "secret.png", p)

    def missing_image(c, d):
        s = copy_set(c, d)
        (s / rows(s)[2]["file_name"]).unlink()

    def incomplete(c, d):
        s = copy_set(c, d)
        m = json.loads((s / "manifest.json").read_text())
        m["n_requested"] = 10
        write(s / "manifest.json", json.dumps(m))

    return [
        Case("aug-dotdot", "api", "SyntheticSet on a set whose metadata.jsonl names ../../etc/passwd",
             lambda c, d: _edit_metadata(c, d, lambda ls: _row_with(ls, 1, file_name="../../etc/passwd")), Set(),
             "error", r"\.\.|outside"),
        Case("aug-absolute", "api", "metadata.jsonl row with file_name /etc/passwd",
             lambda c, d: _edit_metadata(c, d, lambda ls: _row_with(ls, 0, file_name="/etc/passwd")), Set(), "error",
             r"(?i)absolute|outside|relative"),
        Case("aug-non-object", "api", "metadata.jsonl with a line that is a JSON list",
             lambda c, d: _edit_metadata(c, d, lambda ls: ls[:2] + ['["shard-00000/00000002.png", "normal"]'] + ls[3:]),
             Set(), "error", r"not a JSON object"),
        Case("aug-not-json", "api", "metadata.jsonl with a half-written last line",
             lambda c, d: _edit_metadata(c, d, lambda ls: ls[:-1] + [ls[-1][:20]]), Set(), "error", r"not JSON"),
        Case("aug-missing-file-name", "api", "metadata.jsonl row without file_name",
             lambda c, d: _edit_metadata(c, d, lambda ls: _row_with(ls, 3, file_name=None)), Set(), "error", r"file_name"),
        Case("aug-file-name-number", "api", "metadata.jsonl row with file_name 3 (a number)",
             lambda c, d: _edit_metadata(c, d, lambda ls: _row_with(ls, 3, file_name=3)), Set(), "error", r"file_name"),
        Case("aug-symlink-out", "api", "an image of the set replaced by a symlink to a file outside it", symlink_out,
             Set(), "error", r"(?i)symlink|outside"),
        Case("aug-missing-image", "api", "one PNG of the set deleted, then set[2]", missing_image,
             lambda c, d, s: __import__("synth.augment", fromlist=["SyntheticSet"]).SyntheticSet(d / "set")[2], "error",
             r"missing"),
        Case("aug-incomplete-set", "api", "SyntheticSet on a set whose manifest asks for more than it holds", incomplete,
             Set(), "error", r"incomplete"),
        Case("aug-not-a-set", "api", "SyntheticSet on an ordinary image folder", lambda c, d: image_folder(d / "set"), Set(),
             "error", r"not a synth set"),
        Case("aug-mix-fraction-1.5", "api", "mix(real, set, fraction=1.5)", lambda c, d: copy_set(c, d), mix(fraction=1.5),
             "error", r"outside \[0, 1\]"),
        Case("aug-mix-fraction-nan", "api", "mix(real, set, fraction=float('nan'))", lambda c, d: copy_set(c, d),
             mix(fraction=float("nan")), "error", r"\[0, 1\]"),
        Case("aug-label-map-unknown", "api", "mix(..., label_map={'covid': 'pneumonia'}) (no such synthetic class)",
             lambda c, d: copy_set(c, d), mix(fraction=0.3, label_map={"covid": "pneumonia"}), "error", r"covid"),
        Case("aug-label-map-unknown-target", "api", "mix(..., label_map={'pneumonia': 'bacterial'}) (no such real class)",
             lambda c, d: copy_set(c, d), mix(fraction=0.3, label_map={"pneumonia": "bacterial"}), "error", r"bacterial"),
        Case("aug-classes-mismatch", "api", "mix() of a set labelled normal/pneumonia into real classes cat/dog",
             lambda c, d: copy_set(c, d),
             lambda c, d, s: __import__("synth.augment", fromlist=["mix"]).mix(_Real(classes=("cat", "dog")), d / "set"),
             "error", r"match no real class"),
        Case("aug-mix-ok", "api", "mix(real, set, fraction=0.5) with classes in another case/spelling (Normal, PNEUMONIA)",
             lambda c, d: copy_set(c, d),
             lambda c, d, s: __import__("synth.augment", fromlist=["mix"]).mix(_Real(classes=("Normal", "PNEUMONIA")),
                                                                               d / "set", fraction=0.5), "ok",
             check=lambda c, d, s, o: _check_mix(o.value)),
        Case("aug-quality-without-filter", "api", "SyntheticSet(set, quality='keep') before any quality_filter",
             lambda c, d: copy_set(c, d), Set(quality="keep"), "error", r"quality_filter"),
        Case("aug-batch-sampler-too-many", "api", "MixedBatchSampler(ds, 4, synthetic_per_batch=5)",
             lambda c, d: copy_set(c, d),
             lambda c, d, s: __import__("synth.augment", fromlist=["MixedBatchSampler"]).MixedBatchSampler(
                 mix(fraction=0.5)(c, d, s), 4, synthetic_per_batch=5), "error", r"synthetic_per_batch"),
        Case("aug-online-n-0", "api", "OnlineSynthetic(generator, n=0)", nothing,
             lambda c, d, s: __import__("synth.augment", fromlist=["OnlineSynthetic"]).OnlineSynthetic(_ldm(c), 0),
             "error", r"positive"),
    ]


def _ldm(c: Ctx):
    from synth.samplers.generator import load_generator

    return c._once("ldm_gen", lambda: load_generator(c.ldm_export))


def _check_mix(ds) -> list[str]:
    items = [ds[i] for i in range(len(ds))]
    syn = [it for it in items if it[2]]
    if len(ds) != 16 or len(syn) != 8:
        return [f"{len(ds)} items ({len(syn)} synthetic), expected 16 (8 synthetic)"]
    if {int(it[1]) for it in syn} - {0, 1}:
        return ["synthetic labels outside the real classes"]
    return []


# ---------------------------------------------------------------------------
# synth eval


def _guard_eval():
    """Stop ``synth eval augment`` at its first generator training (the study would take hours): return the undo."""
    import synth.evaluation.protocol as ev

    orig = ev.train_generator

    def stop(cfg, run, log):
        raise _WentAhead(f"started the protocol: training generator {Path(run).name} with eval defaults "
                         f"({len(ev.plan_cells(cfg.eval))} classifiers planned)")

    ev.train_generator = stop
    return lambda: setattr(ev, "train_generator", orig)


def _eval_augment(cfg_text: str | None, *extra: str):
    def setup(c, d):
        if cfg_text is not None:
            write(d / "cfg.yaml", cfg_text)
        return _guard_eval()

    def action(c, d, s):
        return ["eval", "augment", *(["--config", str(d / "cfg.yaml")] if cfg_text is not None else []),
                "--out", str(d / "study"), *extra]

    return setup, action


TINY_YAML = ("data: {name: phantom, resolution: 16, phantom_items: 48}\n"
             "model: {unet: {block_out_channels: [16, 32], attention_levels: [false, false], norm_num_groups: 8}}\n"
             "train: {steps: 20, batch_size: 8}\n")


def eval_cases() -> list[Case]:
    no_eval = _eval_augment(TINY_YAML)
    no_cfg = _eval_augment(None)
    frac0 = _eval_augment(TINY_YAML + "eval: {fractions: [0.0, 1.0]}\n")
    frac15 = _eval_augment(TINY_YAML, "--set", "eval.fractions=[0.1,1.5]")

    def one_image(c, d):
        must_succeed(c.sample_args(d / "set1", 1))

    return [
        Case("eval-augment-no-eval-section", "cli", "synth eval augment --config <a training preset without an eval: section>",
             *no_eval, "error", r"eval", teardown=lambda undo: undo()),
        Case("eval-augment-no-config", "cli", "synth eval augment --out study (no --config at all)", *no_cfg, "error",
             r"--config|eval", teardown=lambda undo: undo()),
        Case("eval-augment-fraction-0", "cli", "eval.fractions: [0.0, 1.0]", *frac0, "error", r"eval\.fractions: 0\.0",
             teardown=lambda undo: undo()),
        Case("eval-augment-fraction-1.5", "cli", "--set eval.fractions=[0.1,1.5]", *frac15, "error",
             r"eval\.fractions: 1\.5", teardown=lambda undo: undo()),
        Case("eval-augment-unknown-arm", "cli", "--set eval.arms=[real,bogus]",
             *_eval_augment(TINY_YAML, "--set", "eval.arms=[real,bogus]"),
             "error", r"bogus", teardown=lambda undo: undo()),
        Case("eval-fidelity-fraction", "cli", "synth eval fidelity --fraction 1.5", lambda c, d: copy_set(c, d),
             lambda c, d, s: ["eval", "fidelity", "--set", str(d / "set"), "--data", "phantom", "--fraction", "1.5"],
             "error", r"fraction"),
        Case("eval-fidelity-missing-set", "cli", "synth eval fidelity --set <missing folder>", nothing,
             lambda c, d, s: ["eval", "fidelity", "--set", str(d / "nope"), "--data", "phantom"], "error",
             r"does not exist"),
        Case("eval-fidelity-one-image", "cli", "synth eval fidelity on a 1-image set", one_image,
             lambda c, d, s: ["eval", "fidelity", "--set", str(d / "set1"), "--data", "phantom"], "error",
             r"at least 2"),
        Case("eval-fidelity-user-folder", "cli", "synth eval fidelity --set <an ordinary image folder>",
             lambda c, d: image_folder(d / "pics"),
             lambda c, d, s: ["eval", "fidelity", "--set", str(d / "pics"), "--data", "phantom"], "error",
             r"not a synth set"),
    ]


def all_cases() -> list[Case]:
    from bad_inputs_boundaries import boundary_cases

    cases = (config_cases() + data_cases() + train_cases() + sample_cases() + translate_cases() + augment_cases()
             + eval_cases() + boundary_cases())
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
        # refusals whose advice is followed (bad_inputs_advice.py) and must then work
        "set-fraction-empties-class", "sample-model-unfinished-run", "train-damaged-run-json", "aug-classes-mismatch",
        "b-resolution-odd-unet")


# ---------------------------------------------------------------------------
# Running and reporting


def run(ids: list[str] | None = None, work: Path | None = None, log=print) -> list[Result]:
    """Run the cases ``ids`` (default: all) in scratch folder ``work`` (default: a temp folder, removed after)."""
    import torch

    from synth.quiet import install

    install()
    threads, env = torch.get_num_threads(), dict(os.environ)
    torch.set_num_threads(1)
    for k, v in OFFLINE_ENV.items():  # for this run only: the test suite imports this module
        os.environ.setdefault(k, v)
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
