"""What the whole Kermany chain costs at a resolution, measured stage by stage and extrapolated.

    python benchmarks/stage_costs.py --autoencoder-config configs/kermany-128-autoencoder.yaml \
        --config configs/kermany-128.yaml --name kermany-128

For a chain too long for the machine at hand (the 128 px targets of issue 9 on 2 CPU cores), this times a few
steady-state steps of every stage with the presets' real models, data and batch sizes, and multiplies by the
presets' step counts: autoencoder (with the preset's perceptual / adversarial terms), its perceptual feature
net, the ceiling judges, latent encoding, diffusion training and sampling. Writes
``benchmarks/results/<name>-stage-costs.md`` and ``.json``. Nothing is trained to the end; the numbers are
rates, so a machine with a GPU can be planned from its own run of this script.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devdata import dev_data_overrides  # noqa: E402
from synth.config import load_config  # noqa: E402
from synth.data import load_split  # noqa: E402


def loop_rate(run: Path) -> float:
    """Steady-state steps/s from a run's log (the loop excludes its first step)."""
    rows = [json.loads(line) for line in (run / "logs" / "scalars.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if "samples_per_s" in r][-1]["samples_per_s"]


def classifier_step_s(train, steps: tuple[int, int] = (5, 25)) -> float:
    """Seconds per SmallCNN step (the judges' and feature net's trainer) on the device the trainers use:
    difference of two short runs."""
    from synth.trainers.classifier import train_classifier

    device = "cuda" if torch.cuda.is_available() else "cpu"
    train_classifier(train.images, train.labels, len(train.classes), steps=2, device=device)  # warm-up, untimed
    times = []
    for n in steps:
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        train_classifier(train.images, train.labels, len(train.classes), steps=n, device=device)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    per_step = (times[1] - times[0]) / (steps[1] - steps[0])
    if per_step <= 0:
        raise SystemExit(f"classifier timing came out at {per_step:.4f} s/step (noise); run again on a quiet machine")
    return per_step


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--autoencoder-config", required=True)
    ap.add_argument("--config", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--ae-steps", type=int, default=8, help="autoencoder steps to time")
    ap.add_argument("--ldm-steps", type=int, default=12, help="diffusion steps to time")
    ap.add_argument("--sample-n", type=int, default=32, help="images to sample for the rate")
    ap.add_argument("--fidelity-n", type=int, default=1000, help="images the label-fidelity benchmark samples")
    a = ap.parse_args(argv)
    from synth.trainers.autoencoder import train_autoencoder
    from synth.trainers.ldm import train_ldm

    ae_base = load_config(a.autoencoder_config)
    ae_full = load_config(a.autoencoder_config, dev_data_overrides(ae_base.data.name))
    tmp = Path(tempfile.mkdtemp(prefix="synth-stage-costs-"))
    t0 = time.perf_counter()
    train = load_split(ae_full.data, "train", ae_full.labels.classes or None)
    load_s = time.perf_counter() - t0
    res: dict = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads", "torch": torch.__version__,
                 "resolution": ae_full.data.resolution, "train_images": len(train), "data_load_s": round(load_s, 1)}

    cls_s = classifier_step_s(train)
    res["classifier_step_s"] = cls_s
    # the autoencoder with the preset's terms; its feature net is timed above (same trainer), so a short one here
    ae_cfg = load_config(a.autoencoder_config, dev_data_overrides(ae_base.data.name) + [
        f"train.steps={a.ae_steps}", "train.progress=false", "train.checkpoint_every=100000", f"train.log_every={a.ae_steps}",
        "train.perceptual_steps=2", "train.adversarial_start=0"])  # critic on from step 0: a slight over-estimate
    train_autoencoder(ae_cfg, tmp / "ae", log=lambda *m: None)
    ae_step_s = ae_full.train.batch_size / loop_rate(tmp / "ae")
    res["autoencoder_step_s"] = ae_step_s

    base = load_config(a.config)
    ldm_cfg = load_config(a.config, dev_data_overrides(base.data.name) + [
        f"model.autoencoder={tmp / 'ae'}", "train.force=true", "train.ceiling_gate=0", f"train.steps={a.ldm_steps}",
        "train.progress=false", "train.checkpoint_every=100000", f"train.log_every={a.ldm_steps}", "sample.per_class=1",
        "sample.steps=2"])
    t0 = time.perf_counter()
    export = train_ldm(ldm_cfg, tmp / "ldm", log=lambda *m: None)
    ldm_wall = time.perf_counter() - t0
    ldm_step_s = base.train.batch_size / loop_rate(tmp / "ldm")
    res["ldm_step_s"] = ldm_step_s
    res["ldm_setup_s"] = round(ldm_wall - a.ldm_steps * ldm_step_s, 1)  # latent encoding of the training split, export

    from synth.samplers.generator import load_generator

    gen = load_generator(export)
    conds = [gen.schema.condition(k % gen.schema.num_classes) for k in range(a.sample_n)]
    gen.sample(conds[:2], list(range(2)), steps=base.sample.steps, guidance=base.sample.guidance)  # warm-up
    t0 = time.perf_counter()
    gen.sample(conds, list(range(a.sample_n)), steps=base.sample.steps, guidance=base.sample.guidance,
               sampler=base.sample.sampler)
    res["sample_images_per_s"] = a.sample_n / (time.perf_counter() - t0)

    judges, cfgt = base.train.ceiling_judges, base.train
    plan = [("load and resize the training split", load_s),
            (f"perceptual feature net ({ae_full.train.perceptual_steps} steps)",
             ae_full.train.perceptual_steps * cls_s if ae_full.train.perceptual_weight > 0 else 0.0),
            (f"autoencoder ({ae_full.train.steps} steps x batch {ae_full.train.batch_size})", ae_full.train.steps * ae_step_s),
            (f"ceiling judges ({judges} x {cfgt.judge_steps} steps)", judges * cfgt.judge_steps * cls_s),
            ("latent encoding and export", max(0.0, res["ldm_setup_s"])),
            (f"diffusion ({cfgt.steps} steps x batch {cfgt.batch_size})", cfgt.steps * ldm_step_s),
            (f"label-fidelity sampling ({a.fidelity_n} images, {base.sample.sampler} {base.sample.steps} steps)",
             a.fidelity_n / res["sample_images_per_s"])]
    res["plan"] = [{"stage": s, "seconds": round(v, 1)} for s, v in plan]
    total = sum(v for _, v in plan)
    res["total_min"] = round(total / 60, 1)
    cmd = "python benchmarks/stage_costs.py " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [f"# Stage costs: {a.name}", "", f"Command: `{cmd}`", "",
             f"Machine: {res['machine']}, torch {res['torch']}. {res['resolution']} px, {len(train)} training images. "
             "Rates from short steady-state runs of each stage with the presets' models and batch sizes, multiplied by "
             "the presets' step counts.", "",
             f"Per step: autoencoder {ae_step_s:.2f} s, SmallCNN (feature net, judges) {cls_s:.3f} s, diffusion "
             f"{ldm_step_s:.2f} s; sampling {res['sample_images_per_s']:.1f} images/s.", "",
             "| stage | estimated time on this machine |", "|---|---|"]
    lines += [f"| {s} | {v / 60:.1f} min |" for s, v in plan]
    lines += [f"| **total** | **{total / 60:.0f} min** |", ""]
    out = ROOT / "benchmarks" / "results" / f"{a.name}-stage-costs"
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": cmd, **res}, indent=2) + "\n")
    print("\n".join(lines))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
