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

from samplers.generator import load_generator  # noqa: E402
from synth.config import load_config  # noqa: E402
from devdata import dev_data_overrides  # noqa: E402
from synth.data import load_split  # noqa: E402
from synth.io import labelled_grid, save_png  # noqa: E402
from synth.seeds import image_seed  # noqa: E402
from trainers.autoencoder import train_autoencoder  # noqa: E402
from trainers.classifier import accuracy, train_classifier  # noqa: E402
from trainers.ldm import train_ldm  # noqa: E402


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
    ap.add_argument("--classifier-steps", type=int, default=800)
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
    judge_file = run / "judge.safetensors"
    t0 = time.perf_counter()
    if judge_file.is_file():  # the judge is a function of the data and seed: train it once per run
        from safetensors.torch import load_file

        from synth.classifier import SmallCNN

        clf = SmallCNN(len(train.classes))
        clf.load_state_dict(load_file(str(judge_file)))
        clf.eval()
    else:
        from safetensors.torch import save_file

        clf = train_classifier(train.images, train.labels, len(train.classes), steps=args.classifier_steps, log=print)
        save_file(clf.state_dict(), str(judge_file))
    res["classifier"] = {"train_s": time.perf_counter() - t0, "steps": args.classifier_steps,
                         "real_test": accuracy(clf, test.images, test.labels), "n_test": len(test)}
    print("classifier on real test:", res["classifier"]["real_test"])

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
        fid = accuracy(clf, images, labels)
        res["label_fidelity"][key] = {**{gen.schema.classes[k]: v for k, v in fid["per_class"].items()},
                                      "overall": fid["overall"]}
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
    c = res["classifier"]["real_test"]
    lines += ["Judge: SmallCNN trained on the real training split "
              f"({res['classifier']['steps']} steps); accuracy on the real test split ({res['classifier']['n_test']} images): "
              f"{c['overall']:.3f} overall, " + ", ".join(f"{classes[int(k)]} {v:.3f}" for k, v in c["per_class"].items()) + ".", ""]
    gs = list(res["label_fidelity"])
    s0 = res["sampling"][gs[0]]
    lines += [f"Sampling: {s0['images']} images per guidance value, {s0['sampler']} {s0['steps']} steps; "
              + ", ".join(f"guidance {g}: {res['sampling'][g]['images_per_s']:.1f} images/s" for g in gs) + ".", "",
              "| class | " + " | ".join(f"label fidelity, guidance {g}" for g in gs) + " |",
              "|---|" + "---|" * len(gs)]
    for k in list(classes) + ["overall"]:
        lines.append(f"| {k} | " + " | ".join(f"{res['label_fidelity'][g][k]:.3f}" for g in gs) + " |")
    lines += ["", f"Samples (12 per class, one row per class, guidance {gs[0]}): `{name}-samples.png`; "
              f"real test images: `{name}-real.png`.", ""]
    path.write_text("\n".join(lines))


if __name__ == "__main__":
    main()
