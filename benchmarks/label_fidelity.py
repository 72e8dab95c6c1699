"""Label fidelity of a class-conditional model trained on a CPU budget.

Trains (or resumes) the autoencoder stage when asked, then the diffusion model,
then a classifier on the REAL training split; samples N images per class and
reports the share that the classifier assigns to the requested class.

    python benchmarks/label_fidelity.py --config configs/pneumoniamnist-32.yaml --name pneumoniamnist-32
    python benchmarks/label_fidelity.py --config configs/kermany-64.yaml \
        --autoencoder-config configs/kermany-64-autoencoder.yaml --name kermany-64
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synth.samplers.generator import load_generator  # noqa: E402
from synth.config import load_config  # noqa: E402
from devdata import dev_data_overrides  # noqa: E402
from synth.data import load_split  # noqa: E402
from synth.io import labelled_grid, save_png  # noqa: E402
from synth.seeds import image_seed  # noqa: E402
from synth.trainers.autoencoder import train_autoencoder  # noqa: E402
from synth.trainers.classifier import accuracy  # noqa: E402
from synth.trainers.ldm import codec_judge, train_ldm  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--autoencoder-config", default=None)
    ap.add_argument("--name", required=True)
    ap.add_argument("--runs", default="runs/bench")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--n", type=int, default=500, help="samples per class")
    ap.add_argument("--guidance", type=float, nargs="+", default=None, help="one or more guidance values")
    ap.add_argument("--chunk", type=int, default=32, help="images per network call while sampling")
    ap.add_argument("--steps", type=int, default=None, help="sampler steps")
    ap.add_argument("--judges", type=int, default=3, help="judges (the ceiling gate's, its seeds) to read labels with")
    ap.add_argument("--batch", type=int, default=250)
    args = ap.parse_args()
    out_dir = ROOT / "benchmarks" / "results"
    runs = Path(args.runs)
    res: dict = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.processor() or platform.machine()}, "
                 f"{torch.get_num_threads()} torch threads", "torch": torch.__version__}

    overrides = list(args.overrides)
    if args.autoencoder_config:
        ae_cfg = load_config(args.autoencoder_config)
        ae_cfg = load_config(args.autoencoder_config, dev_data_overrides(ae_cfg.data.name))
        ae_run = runs / f"{args.name}-autoencoder"
        t0 = time.perf_counter()
        train_autoencoder(ae_cfg, ae_run)
        res["autoencoder"] = {"wall_s": time.perf_counter() - t0, "steps": ae_cfg.train.steps,
                              **json.loads((ae_run / "export" / "metrics.json").read_text())}
        overrides.append(f"model.autoencoder={ae_run}")
    cfg = load_config(args.config, overrides)
    cfg = load_config(args.config, dev_data_overrides(cfg.data.name) + list(overrides))
    run = runs / args.name
    t0 = time.perf_counter()
    export = train_ldm(cfg, run)
    res["ldm"] = {"wall_s": time.perf_counter() - t0, "steps": cfg.train.steps, "batch_size": cfg.train.batch_size,
                  "note": "wall_s covers only what ran in this invocation (a resumed or finished run counts less)"}
    scalars = [json.loads(l) for l in (run / "logs" / "scalars.jsonl").read_text().splitlines() if l.strip()]
    res["ldm"]["final_loss"] = scalars[-1].get("loss") if scalars else None

    train = load_split(cfg.data, "train", cfg.labels.classes or None)
    test = load_split(dataclasses.replace(cfg.data, val_max_items=None), "test", cfg.labels.classes or None)
    val = load_split(dataclasses.replace(cfg.data, val_max_items=None), "val", cfg.labels.classes or None)
    t0 = time.perf_counter()
    # the ceiling gate's judges (cached in the run; trained here if the gate was off): fidelity and the codec
    # ceiling are read by the same instrument, and several of them because one judge is not enough
    judges = [codec_judge(train, cfg.train.seed, run, print, index=j, steps=cfg.train.judge_steps)
              for j in range(args.judges)]
    res["classifier"] = {"train_s": time.perf_counter() - t0, "steps": cfg.train.judge_steps, "judges": args.judges,
                         "real_val": [accuracy(j, val.images, val.labels) for j in judges], "n_val": len(val),
                         "real_test": [accuracy(j, test.images, test.labels) for j in judges], "n_test": len(test)}
    print("judges on real val:", [r["per_class"] for r in res["classifier"]["real_val"]])

    gen = load_generator(export).optimize(chunk_size=args.chunk)
    steps = args.steps or cfg.sample.steps
    res["sampling"], res["label_fidelity"] = {}, {}
    grid = None
    for guidance in args.guidance or [cfg.sample.guidance]:
        images, labels = [], []
        t0 = time.perf_counter()
        for k in range(gen.schema.num_classes):
            for lo in range(0, args.n, args.batch):
                n = min(args.batch, args.n - lo)
                conds = [gen.schema.condition(k)] * n
                seeds = [image_seed(1234, k * 1_000_000 + lo + j) for j in range(n)]
                b = gen.sample(conds, seeds, steps=steps, guidance=guidance, sampler=cfg.sample.sampler)
                images.append(b.images)
                labels += [k] * n
        images, labels = torch.cat(images), torch.tensor(labels)
        dt = time.perf_counter() - t0
        key = f"{guidance:g}"
        res["sampling"][key] = {"wall_s": dt, "images": len(images), "sampler": cfg.sample.sampler, "steps": steps,
                                "guidance": guidance, "images_per_s": len(images) / dt}
        fids = [accuracy(j, images, labels) for j in judges]
        res["label_fidelity"][key] = {**{gen.schema.classes[k]: sum(f["per_class"][k] for f in fids) / len(fids)
                                         for k in fids[0]["per_class"]},
                                      "overall": sum(f["overall"] for f in fids) / len(fids)}
        res["label_fidelity_min"] = res.get("label_fidelity_min", {})
        res["label_fidelity_min"][key] = {gen.schema.classes[k]: min(f["per_class"][k] for f in fids)
                                          for k in fids[0]["per_class"]}
        print(f"label fidelity at guidance {guidance:g}:", res["label_fidelity"][key], flush=True)
        if grid is None:  # the grid shows the first guidance value
            grid = (images, labels)
    images, labels = grid

    per = 12
    pick = torch.cat([torch.nonzero(labels == k)[:per, 0] for k in range(gen.schema.num_classes)])
    classes = list(gen.schema.classes)
    save_png(out_dir / f"{args.name}-samples.png",
             labelled_grid(images[pick], per, classes, f"{args.name}: synthetic, one row per requested class"))
    real_pick = torch.cat([torch.nonzero(test.labels == k)[:per, 0] for k in range(gen.schema.num_classes)])
    save_png(out_dir / f"{args.name}-real.png",
             labelled_grid(test.images[real_pick], per, classes, f"{args.name}: real test images, one row per class"))
    (out_dir / f"{args.name}.json").write_text(json.dumps(res, indent=2) + "\n")
    write_markdown(out_dir / f"{args.name}.md", args.name, res, cfg, gen.schema.classes)


def write_markdown(path: Path, name: str, res: dict, cfg, classes) -> None:
    lines = [f"# Label fidelity: {name}", "", f"Command: `{res['command']}`", "",
             f"Machine: {res['machine']}, torch {res['torch']}.", ""]
    if "autoencoder" in res:
        a = res["autoencoder"]
        lines += [f"Autoencoder stage: {a['steps']} steps, {a['wall_s'] / 60:.1f} min this invocation; "
                  f"validation PSNR {a['psnr']:.2f} dB, SSIM {a['ssim']:.4f}.", ""]
    l = res["ldm"]
    lines += [f"Diffusion training budget: {l['steps']} steps x batch {l['batch_size']} "
              f"({cfg.data.resolution}px, {cfg.model.codec} codec), {l['wall_s'] / 60:.1f} CPU-minutes wall-clock this "
              f"invocation; final loss {l['final_loss']}.", ""]
    c = res["classifier"]

    def accs(key: str) -> str:
        return "; ".join(", ".join(f"{classes[int(k)]} {v:.3f}" for k, v in r["per_class"].items()) for r in c[key])

    lines += [f"Judges: {c['judges']} SmallCNNs trained on the real training split ({c['steps']} steps each, the "
              "diffusion stage's ceiling-gate judges and seeds). Their accuracy on the real validation split "
              f"({c['n_val']} images): {accs('real_val')}; on the real test split ({c['n_test']} images): "
              f"{accs('real_test')}. Label fidelity = the judges' mean share of samples read as the requested class "
              "[lowest judge].", ""]
    gs = list(res["label_fidelity"])
    s0 = res["sampling"][gs[0]]
    lines += [f"Sampling: {s0['images']} images per guidance value, {s0['sampler']} {s0['steps']} steps; "
              + ", ".join(f"guidance {g}: {res['sampling'][g]['images_per_s']:.1f} images/s" for g in gs) + ".", "",
              "| class | " + " | ".join(f"label fidelity, guidance {g}" for g in gs) + " |",
              "|---|" + "---|" * len(gs)]
    for k in list(classes) + ["overall"]:
        low = res.get("label_fidelity_min", {})
        lines.append(f"| {k} | " + " | ".join(f"{res['label_fidelity'][g][k]:.3f}"
                                              + (f" [{low[g][k]:.3f}]" if k in low.get(g, {}) else "") for g in gs) + " |")
    lines += ["", f"Samples (12 per class, one row per class, guidance {gs[0]}): `{name}-samples.png`; "
              f"real test images: `{name}-real.png`.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
