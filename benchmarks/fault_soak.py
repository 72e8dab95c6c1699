"""Fault-injection soak: SIGKILL the trainer, the bulk sampler and the translator at random moments.

    python benchmarks/fault_soak.py                       # 10 trials per kind (~15 min on 2 CPU cores)
    python benchmarks/fault_soak.py --trials 1 --kinds train,sample --out /tmp/soak   # what CI runs

Per trial the command is started, SIGKILLed after a random delay (1-3 times; some trainer kills
are aimed at the moment a checkpoint is being written), then run once more to the end. Checked
after every trial against one uninterrupted run of the same command:

* train: the final checkpoint (weights, EMA, optimizer state) equals the uninterrupted run's bit
  for bit; every checkpoint left on disk passes its SHA-256 check; the export loads.
* sample / translate: the output folder's files equal the uninterrupted run's byte for byte;
  every PNG decodes; ``metadata.jsonl`` lists each index exactly once.

Writes ``<out>/fault_soak.md`` and ``fault_soak.json`` (default out: benchmarks/results/).
Tiny models on phantoms: the point is the state machine (checkpoints, shards, records), not
the model. Exits non-zero when any trial failed.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from tiny import BRIDGE, TINY  # noqa: E402
sys.path.insert(0, str(ROOT))

TRAIN = ["train.steps=60", "train.checkpoint_every=3", "train.keep_checkpoints=3"]


def sets(items: list[str]) -> list[str]:
    return [a for kv in items for a in ("--set", kv)]


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def synth(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "synth.cli", *args], capture_output=True, text=True, env=env(), cwd=ROOT,
                       timeout=900)
    if check and p.returncode != 0:
        raise RuntimeError(f"synth {' '.join(args[:2])} failed: {p.stderr.strip().splitlines()[-1:]}")
    return p


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "synth.cli", *args], env=env(), cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def kill_after(proc: subprocess.Popen, delay: float, when=None) -> str:
    """SIGKILL ``proc`` after ``delay`` s, or as soon as ``when()`` is true (polled every ms) if given.
    Returns 'killed' or 'finished' (it ended on its own first)."""
    deadline = time.perf_counter() + delay
    while proc.poll() is None and time.perf_counter() < deadline and not (when and when()):
        time.sleep(0.001 if when else 0.01)
    if proc.poll() is not None:
        return "finished"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return "killed"


def set_digest(out: Path) -> dict[str, str]:
    """SHA-256 of every file a user gets (everything but the ``.synth`` bookkeeping)."""
    return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.rglob("*")) if p.is_file() and ".synth" not in p.parts}


def check_set(out: Path, n: int) -> list[str]:
    """What is wrong with a finished image set: undecodable PNGs, indices missing or listed twice."""
    from PIL import Image

    problems = []
    for png in out.rglob("*.png"):
        try:
            with Image.open(png) as im:
                im.load()
        except Exception as e:  # any decoder complaint is a finding
            problems.append(f"{png.name} does not decode ({e})")
    rows = [json.loads(line) for line in (out / "metadata.jsonl").read_text().splitlines() if line.strip()]
    idx = sorted(r["index"] for r in rows)
    if idx != list(range(n)):
        problems.append(f"metadata lists {len(idx)} rows, {len(set(idx))} distinct indices, expected 0..{n - 1} once each")
    return problems


def final_state(run: Path) -> dict:
    import torch
    from safetensors.torch import load_file

    from synth.trainers.checkpoints import latest_checkpoint

    d = latest_checkpoint(run)[1]
    out = {f"unet.{k}": v for k, v in load_file(str(d / "unet.safetensors")).items()}
    out.update({f"ema.{k}": v for k, v in load_file(str(d / "ema.safetensors")).items()})
    opt = torch.load(d / "optim.pt", weights_only=True)["optimizer"]["state"]
    out.update({f"opt.{k}.{n}": t for k, s in opt.items() for n, t in s.items()})
    return out


@dataclass
class Trial:
    kind: str
    trial: int
    kills: list[dict] = field(default_factory=list)  # {"after_s", "aimed", "result", "state"}
    ok: bool = False
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _train_state(run: Path) -> str:
    """What the run folder holds right after a kill (for the report)."""
    ck = run / "checkpoints"
    steps = sorted(p.name for p in ck.glob("step-*")) if ck.is_dir() else []
    tmp = list(ck.glob(".tmp-step-*")) if ck.is_dir() else []
    return (f"last {steps[-1] if steps else 'no checkpoint'}" + (", a checkpoint half-written" if tmp else "")
            + (", export present" if (run / "export" / "synth.json").is_file() else ""))


def _set_state(out: Path) -> str:
    done = len(list((out / ".synth" / "done").glob("*.json"))) if (out / ".synth" / "done").is_dir() else 0
    return f"{done} shards recorded, {len(list(out.rglob('*.png')))} PNGs on disk"


def kill_window(args: list[str], first, last) -> tuple[float, float]:
    """Run ``args`` uninterrupted and time it: (when ``first()`` became true, when ``last()`` did), in seconds
    from the start. Kills are drawn in that window: the work itself (training steps and checkpoints, shards),
    not the imports before it or the preview images after it."""
    t0, first_s, last_s = time.perf_counter(), None, None
    proc = start(args)
    while proc.poll() is None:
        now = time.perf_counter() - t0
        if first_s is None and first():
            first_s = now
        if last_s is None and last():
            last_s = now
        time.sleep(0.005)
    total = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"synth {' '.join(args[:2])} failed: {proc.stderr.read().strip().splitlines()[-1:]}")
    first_s = first_s if first_s is not None else 0.5 * total
    return 0.8 * first_s, max(last_s or total, first_s) + 0.2


def _kill_some(args: list[str], window: tuple[float, float], rng: random.Random, state, aim=None) -> list[dict]:
    """1-3 runs of ``args``, each SIGKILLed at a random moment of ``window`` (s; from start-up to the
    uninterrupted run's end) or at ``aim()`` for some; stop early if one finishes."""
    kills, reference_s = [], window[1]  # an aimed kill waits at most twice the window's end
    for k in range(rng.randint(1, 3)):
        aimed = aim is not None and rng.random() < 0.4
        delay = rng.uniform(*window)
        proc = start(args)
        result = kill_after(proc, reference_s * 2 if aimed else delay, aim if aimed else None)
        kills.append({"after_s": round(delay, 2) if not aimed else None, "aimed": "checkpoint write" if aimed else None,
                      "result": result, "state": state()})
        if result == "finished":
            break
    return kills


def soak_train(work: Path, trials: int, rng: random.Random) -> list[Trial]:
    args = lambda run: ["train", "ldm", "--run", str(run), *sets(TINY + TRAIN)]  # noqa: E731
    ck_ref = work / "train-ref" / "checkpoints"
    last_ck = ck_ref / f"step-{int(TRAIN[0].split('=')[1]):08d}"
    window = kill_window(args(work / "train-ref"), lambda: ck_ref.is_dir(), lambda: last_ck.is_dir())
    ref = final_state(work / "train-ref")
    out = []
    for i in range(trials):
        run, t = work / f"train-{i}", Trial("train", i)
        t0 = time.perf_counter()
        ck = run / "checkpoints"
        aim = lambda: ck.is_dir() and any(ck.glob(".tmp-step-*"))  # noqa: E731
        t.kills = _kill_some(args(run), window, rng, lambda: _train_state(run), aim)
        p = synth(args(run), check=False)
        if p.returncode != 0:
            t.problems.append(f"rerun failed: {p.stderr.strip().splitlines()[-1:]}")
        else:
            from synth.samplers.generator import load_generator
            from synth.trainers.checkpoints import checkpoint_problem, list_checkpoints

            got = final_state(run)
            if got.keys() != ref.keys() or not all(bool((got[k] == ref[k]).all()) for k in ref):
                t.problems.append("final checkpoint differs from the uninterrupted run")
            t.problems += [f"{c.name}: {checkpoint_problem(c)}" for _, c in list_checkpoints(run) if checkpoint_problem(c)]
            try:
                load_generator(run / "export")
            except Exception as e:
                t.problems.append(f"export does not load ({e})")
        t.ok, t.seconds = not t.problems, round(time.perf_counter() - t0, 1)
        out.append(t)
        print(f"train trial {i}: {'ok' if t.ok else t.problems} kills={[k['state'] for k in t.kills]}", flush=True)
    return out


def _soak_set(kind: str, work: Path, trials: int, rng: random.Random, args, n: int) -> list[Trial]:
    synth_dir = work / f"{kind}-ref" / ".synth"
    manifest = work / f"{kind}-ref" / "manifest.json"
    window = kill_window(args(work / f"{kind}-ref"), lambda: synth_dir.is_dir(), lambda: manifest.is_file())
    ref = set_digest(work / f"{kind}-ref")
    out = []
    for i in range(trials):
        o, t = work / f"{kind}-{i}", Trial(kind, i)
        t0 = time.perf_counter()
        t.kills = _kill_some(args(o), window, rng, lambda: _set_state(o) if o.is_dir() else "nothing written")
        p = synth(args(o), check=False)
        if p.returncode != 0:
            t.problems.append(f"rerun failed: {p.stderr.strip().splitlines()[-1:]}")
        else:
            if set_digest(o) != ref:
                t.problems.append("files differ from the uninterrupted run")
            t.problems += check_set(o, n)
        t.ok, t.seconds = not t.problems, round(time.perf_counter() - t0, 1)
        out.append(t)
        print(f"{kind} trial {i}: {'ok' if t.ok else t.problems} kills={[k['state'] for k in t.kills]}", flush=True)
    return out


def tiny_export(work: Path) -> Path:
    run = work / "ldm-export"
    if not (run / "export" / "synth.json").is_file():
        synth(["train", "ldm", "--run", str(run), *sets(TINY + ["train.steps=4", "train.checkpoint_every=4"])])
    return run / "export"


def soak_sample(work: Path, trials: int, rng: random.Random) -> list[Trial]:
    export, n = tiny_export(work), 480
    args = lambda o: ["sample", "--model", str(export), "--num-images", str(n), "--out", str(o), "--steps", "8",  # noqa: E731
                      "--shard-size", "16", "--batch-size", "8", "--quiet"]
    return _soak_set("sample", work, trials, rng, args, n)


def soak_translate(work: Path, trials: int, rng: random.Random) -> list[Trial]:
    import numpy as np

    from synth.data import phantom_domains

    data, inp = work / "dom3.npz", work / "input.npz"
    imgs, dom = phantom_domains(96, 16)
    np.savez(data, train_images=imgs, train_labels=dom[:, None], val_images=imgs[:24], val_labels=dom[:24, None],
             test_images=imgs[:24], test_labels=dom[:24, None])
    dim = imgs[dom == 1]
    n = len(dim) * 6
    np.savez(inp, test_images=np.concatenate([dim] * 6), test_labels=(np.arange(n) % 2)[:, None])
    run = work / "bridge"
    if not (run / "export" / "synth.json").is_file():
        synth(["train", "bridge", "--run", str(run), *sets(TINY + BRIDGE + [f"data.name={data}"])])
    args = lambda o: ["translate", "--model", str(run / "export"), "--input", str(inp), "--source", "dim",  # noqa: E731
                      "--target", "clean", "--tau", "0.5", "--steps", "4", "--out", str(o), "--shard-size", "8",
                      "--batch-size", "4", "--quiet"]
    return _soak_set("translate", work, trials, rng, args, n)


KINDS = {"train": soak_train, "sample": soak_sample, "translate": soak_translate}


def report(results: list[Trial], seconds: float) -> str:
    lines = ["# Fault-injection soak (SIGKILL at random moments)", "",
             f"`python benchmarks/fault_soak.py` on {os.cpu_count()} CPU cores, {seconds:.0f} s in all. Each trial: 1-3 SIGKILLs "
             "(random moment; for the trainer some aimed at a checkpoint being written), then the same command to the end, "
             "compared with one uninterrupted run.", "",
             "| kind | trials | kills | kills mid-checkpoint | failures | checks |", "|---|---|---|---|---|---|"]
    checks = {"train": "final weights + EMA + optimizer bit-identical; every checkpoint passes SHA-256; export loads",
              "sample": "files byte-identical; every PNG decodes; each index once in metadata",
              "translate": "files byte-identical; every PNG decodes; each index once in metadata"}
    for kind in KINDS:
        rs = [r for r in results if r.kind == kind]
        if not rs:
            continue
        kills = [k for r in rs for k in r.kills if k["result"] == "killed"]
        mid = sum("half-written" in k["state"] for k in kills)
        lines.append(f"| {kind} | {len(rs)} | {len(kills)} | {mid} | {sum(not r.ok for r in rs)} | {checks[kind]} |")
    lines += ["", "## Trials", "", "| kind | trial | what each kill left on disk | result |", "|---|---|---|---|"]
    for r in results:
        left = "; ".join(f"{'at ' + str(k['after_s']) + ' s' if k['after_s'] is not None else k['aimed']}: {k['state']}"
                         + (" (finished first)" if k["result"] == "finished" else "") for k in r.kills)
        lines.append(f"| {r.kind} | {r.trial} | {left} | {'ok' if r.ok else '; '.join(r.problems)} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--kinds", default="train,sample,translate")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--work", default=None, help="scratch folder (default: a temp folder, removed after)")
    a = ap.parse_args(argv)
    kinds = [k.strip() for k in a.kinds.split(",") if k.strip()]
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        ap.error(f"unknown kind {bad[0]}; choose from {', '.join(KINDS)}")
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="synth-soak-"))
    rng, t0, results = random.Random(a.seed), time.perf_counter(), []
    try:
        for k in kinds:
            results += KINDS[k](work, a.trials, rng)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    seconds = time.perf_counter() - t0
    (out / "fault_soak.md").write_text(report(results, seconds))
    (out / "fault_soak.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    failed = [r for r in results if not r.ok]
    print(f"{len(results)} trials, {len(failed)} failed; report in {out / 'fault_soak.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
