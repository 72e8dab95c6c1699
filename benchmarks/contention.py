"""Speed on a shared machine: one training job alone, then two and four at once on the same cores.

    python benchmarks/contention.py                       # writes benchmarks/results/contention.{md,json}
    python benchmarks/contention.py --steps 20 --variants synth --out /tmp/c   # quick look

Each job is ``synth train bridge`` with the PneumoniaMNIST-28 flow preset (``--steps`` steps, no
checkpoint or export beyond the last), started as its own process so nothing is shared but the cores.
Variants are environments: ``spin-300000`` is GNU OpenMP's own default (what synth did before it chose a
wait policy), ``passive`` sleeps at once, ``synth`` is what the CLI now chooses by itself. Time is the
job's wall clock from start to exit, median over ``--repeats`` rounds (each round starts all k jobs
together). Targets (issue 19): two jobs at once take <= 2.3x one alone, and one alone is no slower than
GNU's default within noise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "spin-300000": {"GOMP_SPINCOUNT": "300000"},  # libgomp's default when no policy is set
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},
    "spin-10000": {"GOMP_SPINCOUNT": "10000"},
    "spin-1000": {"GOMP_SPINCOUNT": "1000"},
    "spin-100": {"GOMP_SPINCOUNT": "100"},
    "synth": {},  # the CLI's own choice (synth.threads.set_wait_policy)
}


def job_cmd(run: Path, data: str, steps: int) -> list[str]:
    return [sys.executable, "-m", "synth.cli", "train", "bridge", "--config", str(ROOT / "configs" / "pneumoniamnist-28-flow.yaml"),
            "--run", str(run), "--set", f"data.name={data}", "--set", f"train.steps={steps}",
            "--set", f"train.checkpoint_every={steps}", "--set", "train.progress=false", "--set", "train.log_every=1000",
            "--set", "data.download=false"]


def round_of(k: int, env_extra: dict, data: str, steps: int, tmp: Path) -> list[float]:
    """Start ``k`` jobs together; their wall-clock seconds each."""
    env = {key: v for key, v in os.environ.items() if key not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS",
                                                                  "SYNTH_THREADS")}
    env.update({"PYTHONPATH": str(ROOT), **env_extra})
    procs = []
    for i in range(k):
        run = Path(tempfile.mkdtemp(dir=tmp))
        procs.append((time.perf_counter(), subprocess.Popen(job_cmd(run, data, steps), env=env, cwd=ROOT,
                                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)))
    out = []
    for t0, p in procs:
        _, err = p.communicate()
        if p.returncode:
            raise SystemExit(f"a job failed: {err.decode()[-800:]}")
        out.append(time.perf_counter() - t0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(os.environ.get("SYNTH_DATA_DIR", ROOT.parent / "shared" / "data" / "medmnist"))
                                          / "pneumoniamnist.npz"))
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--jobs", type=int, nargs="*", default=[1, 2, 4])
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="synth-contention-"))
    from synth.threads import cores_available

    res: dict = {"machine": f"{platform.machine()}, {cores_available()} cores available, load average at start "
                            f"{os.getloadavg()[0]:.2f}", "steps": args.steps, "repeats": args.repeats, "variants": {}}
    # rounds interleave the variants, so a slow minute of the machine does not fall on one variant alone
    times: dict = {v: {k: [] for k in args.jobs} for v in args.variants}
    for r in range(args.repeats):
        for k in args.jobs:
            if k > 2 and r > 0:
                continue  # four at once: one round (they take long and vary little)
            for v in args.variants:
                t = round_of(k, VARIANTS[v], args.data, args.steps, tmp)
                times[v][k] += t
                print(f"round {r} variant {v} x{k}: {', '.join(f'{x:.1f}' for x in t)} s", flush=True)
    base = statistics.median(times["spin-300000"][1]) if "spin-300000" in times and 1 in args.jobs else None
    for v in args.variants:
        alone = statistics.median(times[v][1]) if 1 in args.jobs else None
        row = {f"x{k} median s": round(statistics.median(ts), 1) for k, ts in times[v].items() if ts}
        for k in args.jobs:
            if k > 1 and alone and times[v][k]:
                row[f"x{k} / alone"] = round(statistics.median(times[v][k]) / alone, 2)
        if base and alone:
            row["alone / GNU default alone"] = round(alone / base, 2)
        row["all s"] = {k: [round(x, 1) for x in ts] for k, ts in times[v].items()}
        res["variants"][v] = row
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "contention.json").write_text(json.dumps(res, indent=2) + "\n")
    cols = [c for c in next(iter(res["variants"].values())) if c != "all s"]
    lines = ["# Two and four jobs on the same cores", "",
             f"Command: `python benchmarks/contention.py {' '.join(argv or sys.argv[1:])}`".rstrip() + "",
             "", f"Machine: {res['machine']}; each job `synth train bridge` with configs/pneumoniamnist-28-flow.yaml, "
                 f"{args.steps} steps, started as its own process; median of {args.repeats} rounds (x4: one round).", "",
             "| variant | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {v} | " + " | ".join(str(row.get(c, "")) for c in cols) + " |" for v, row in res["variants"].items()]
    lines += ["", "Targets: x2 / alone <= 2.3; alone / GNU default alone ~ 1 (within noise).", ""]
    (args.out / "contention.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
