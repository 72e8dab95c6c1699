"""Finish a dose-shift evaluation from its logged rows (when `dose_shift.py eval` was stopped after
the first direction to fit a time budget): round trip, targets, tables, plots.

    python benchmarks/dose_shift_finish.py runs/dose-shift/eval.log
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import dose_shift as ds  # noqa: E402


def main(log: str, steps: int = 10, guidance: float = 1.5, sampler: str = "midpoint") -> None:
    from synth.samplers.bridge import BridgeGenerator

    rows = [json.loads(line) for line in Path(log).read_text().splitlines() if line.startswith("{")]
    done = {r["direction"] for r in rows if r["arm"].startswith("bridge-")}
    rows = [r for r in rows if r["direction"] in done]  # a direction cut short has no bridge rows
    bridges = {n: BridgeGenerator.from_export(ds.WORK / n / "export") for n in ("bridge-latent", "bridge-pixel")}
    z = np.load(ds.WORK / "test-gt.npz")
    gt = torch.from_numpy(z["images"][:6])
    examples = {}
    for src, tgt in sorted({tuple(r["direction"].split(" -> ")) for r in rows}):
        s_i, t_i = ds.DOMAINS.index(src), ds.DOMAINS.index(tgt)
        x, y = gt[:, s_i:s_i + 1].contiguous(), gt[:, t_i:t_i + 1].contiguous()
        tr = np.load(ds.WORK / "data.npz")
        real_t = torch.from_numpy(tr["train_images"])[:, None][torch.from_numpy(tr["train_labels"][:, 0] == t_i)]
        ex = {"input": x, "ground truth": y, "identity": x, "histogram matching": ds.histogram_match(x, real_t)}
        for n, g in bridges.items():
            for tau in (0.0, 0.5):
                ex[f"{n} tau={tau:g}"] = g.translate(x, src, tgt, tau=tau, steps=steps, guidance=guidance, sampler=sampler)
        examples[f"{src} -> {tgt}"] = ex
    tr = np.load(ds.WORK / "data.npz")
    val, val_dom = torch.from_numpy(tr["val_images"])[:, None], tr["val_labels"][:, 0]
    round_trip = {}
    for n, g in bridges.items():
        vals = []
        for d_i, d in enumerate(ds.DOMAINS):
            xs = val[torch.from_numpy(val_dom == d_i)][:32]
            vals.append(ds.structure(g.translate(xs, d, d, tau=0.6, steps=steps, guidance=guidance, sampler=sampler), xs)["ssim"])
        round_trip[f"{n} tau=0.6"] = round(float(np.mean(vals)), 4)
    taus = sorted({float(r["arm"].split("tau=")[1]) for r in rows if "tau=" in r["arm"]} - {0.0})
    res = {"rows": rows, "round_trip_ssim": round_trip, "n": 64, "steps": steps, "guidance": guidance, "sampler": sampler,
           "classifier_train": {"cpu_s": "see eval.log"}, "note": "evaluation stopped after the directions listed "
           "(time budget); rows are those logged by dose_shift.py eval"}
    res["targets"] = ds.check_targets(rows, taus, list(bridges))
    ds.RESULTS.mkdir(parents=True, exist_ok=True)
    (ds.RESULTS / "dose-shift.json").write_text(json.dumps(res, indent=2) + "\n")
    ds.plot_sweep(rows, ds.RESULTS / "dose-shift-sweep.png")
    ds.plot_examples(examples, ds.RESULTS / "dose-shift-examples.png")
    ds.write_markdown(res)
    print(json.dumps({"targets": res["targets"], "round_trip": round_trip}, indent=2))


if __name__ == "__main__":
    t0 = time.perf_counter()
    main(sys.argv[1])
    print(f"finished in {time.perf_counter() - t0:.0f}s")
