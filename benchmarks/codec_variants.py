"""Autoencoder variants side by side: validation PSNR, SSIM and the codec ceiling of label fidelity per class.

    python benchmarks/codec_variants.py --config configs/kermany-64-autoencoder.yaml \
        --variant preset --variant no-critic:train.adversarial_weight=0 [--append]

Each variant trains an autoencoder (same data and seed; its own ``--set`` overrides) into
``runs/bench/codec-<name>``; the judges of the diffusion stage's ceiling gate (``--judges`` classifiers of the
real training split, the gate's seeds and steps, cached in ``runs/bench/codec-<name>-judges``) then score the
real validation images and their reconstructions. The codec ceiling of a class is the judges' mean accuracy on
the reconstructions (the lowest judge's alongside): the most label fidelity a latent diffusion model on this
codec can reach (see benchmarks/results/kermany-64.md), and what ``train.ceiling_gate`` gates.
Writes ``benchmarks/results/<name>-codec-variants.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from devdata import dev_data_overrides  # noqa: E402
from synth.codecs import load_autoencoder  # noqa: E402
from synth.config import load_config  # noqa: E402
from synth.data import load_split  # noqa: E402
from synth.metrics import reconstruction_metrics  # noqa: E402
from synth.trainers.autoencoder import train_autoencoder  # noqa: E402
from synth.trainers.ldm import codec_ceiling, codec_judge, judged_ceiling, reconstruct  # noqa: E402


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name[:key=value,key=value]`` -> (name, overrides)."""
    name, _, rest = text.partition(":")
    return name, [kv for kv in rest.split(",") if kv]


def train_seconds(run: Path, train) -> float:
    """Wall-clock seconds spent training ``run`` over every call, kept in ``<run>/bench-seconds.json``: a call
    adds its time when it moved the run forward (fresh, resumed after a crash, or extended), so a rerun that only
    reloads a finished run reports the training, not the reload."""
    from synth.trainers.checkpoints import latest_checkpoint

    record = run / "bench-seconds.json"
    before = latest_checkpoint(run)
    t0 = time.perf_counter()
    train()
    seconds = time.perf_counter() - t0
    total = json.loads(record.read_text())["seconds"] if record.is_file() else 0.0
    after = latest_checkpoint(run)
    if after is not None and (before is None or after[0] > before[0]):
        total += seconds
        record.write_text(json.dumps({"seconds": round(total, 1), "step": after[0]}) + "\n")
    return total


def recipe(cfg) -> dict:
    """What a variant trained with, whatever the preset said at the time (overrides are relative to it)."""
    t = cfg.train
    return {"steps": t.steps, "latent_channels": cfg.model.vae.latent_channels, "perceptual_weight": t.perceptual_weight,
            "adversarial_weight": t.adversarial_weight, "adversarial_start": t.adversarial_start}


def earlier_rows(path: Path, names: set[str]) -> tuple[list[dict], list[str], dict]:
    """Rows, commands and set-up of an earlier report (``--append``), without the variants about to be rerun."""
    if not path.is_file():
        return [], [], {}
    old = json.loads(path.read_text())
    rows = [r for r in old.get("rows", []) if r["variant"] not in names]
    for r in rows:  # JSON turned the class indices into strings
        for key in ("real", "ceiling", "ceiling_min"):
            r[key] = {int(k): v for k, v in r[key].items()}
    cmds = old.get("commands") or ([old["command"]] if "command" in old else [])
    return rows, cmds, old.get("setup", {})


def render(name: str, cmds: list[str], setup: dict, rows: list[dict], classes: list[str]) -> str:
    """The markdown report: commands, how it was measured, one row per variant with its full recipe."""
    lines = [f"# Autoencoder variants: {name}", "", "Commands (overrides are relative to the preset when each ran; the "
             "table gives every row's full recipe):", ""] + [f"    {c}" for c in cmds] + ["",
             f"Machine: {setup['machine']}. Same data and seed for every variant; budget {setup['batch']} images x the "
             "steps in the table; train s includes the perceptual feature net. Judges: the ceiling gate's "
             f"{setup['judges']} SmallCNNs trained on the real training split ({setup['n_train']} images, "
             f"{setup['judge_steps']} steps; trained once, cached in runs/bench); validation: {setup['n_val']} images. "
             "Codec ceiling = a judge's accuracy on reconstructed validation images of the class: mean over judges "
             "[lowest judge] (the judges' mean accuracy on the real images alongside).", "",
             "| variant | steps | latent channels | perceptual | adversarial (from step) | train s | PSNR dB | SSIM | "
             + " | ".join(f"{c} ceiling [min] (real)" for c in classes) + " |",
             "|---|---|---|---|---|---|---|---|" + "---|" * len(classes)]
    for r in rows:
        cells = " | ".join(f"{r['ceiling'][k]:.3f} [{r['ceiling_min'][k]:.3f}] ({r['real'][k]:.3f})" for k in range(len(classes)))
        q = r["recipe"]
        adv = f"{q['adversarial_weight']:g} ({q['adversarial_start']})" if q["adversarial_weight"] else "-"
        lines.append(f"| {r['variant']} | {q['steps']} | {q['latent_channels']} | {q['perceptual_weight'] or '-'} | {adv} | "
                     f"{r['seconds']:.0f} | {r['psnr']:.2f} | {r['ssim']:.4f} | {cells} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", required=True)
    ap.add_argument("--steps", type=int, default=None, help="training steps of every variant (default: the preset's)")
    ap.add_argument("--variant", action="append", default=[], help="name[:key=value,...]; none with --append: "
                    "rewrite the report from its JSON")
    ap.add_argument("--name", default=None, help="report name (default: the config's stem)")
    ap.add_argument("--append", action="store_true", help="keep the report's other variants (rows of earlier runs)")
    ap.add_argument("--judges", type=int, default=3, help="judges (seeds) to score with: the ceiling depends on the judge")
    a = ap.parse_args(argv)
    if a.judges < 1:
        ap.error("--judges must be at least 1")
    if not a.variant and not a.append:
        ap.error("give at least one --variant (or --append alone to rewrite the report)")
    base = load_config(a.config, [])
    name = a.name or Path(a.config).stem
    out = ROOT / "benchmarks" / "results" / f"{name}-codec-variants"
    if not a.variant:  # rewrite the report from its JSON: nothing trained, no data read
        if not out.with_suffix(".json").is_file():
            ap.error(f"--append alone rewrites {out.with_suffix('.json')}, which does not exist")
        d = json.loads(out.with_suffix(".json").read_text())
        rows, cmds, setup = earlier_rows(out.with_suffix(".json"), set())
        out.with_suffix(".md").write_text(render(name, cmds, setup, rows, d["classes"]))
        print(out.with_suffix(".md").read_text())
        return 0
    common = dev_data_overrides(base.data.name) + ([f"train.steps={a.steps}"] if a.steps is not None else []) \
        + ["train.progress=false"]
    cfg = load_config(a.config, common)
    train, val = load_split(cfg.data, "train", cfg.labels.classes or None), load_split(cfg.data, "val", cfg.labels.classes or None)
    cache = ROOT / "runs" / "bench" / f"codec-{name}-judges"
    cache.mkdir(parents=True, exist_ok=True)
    judges = [codec_judge(train, cfg.train.seed, cache, print, index=j, steps=cfg.train.judge_steps)
              for j in range(a.judges)]
    setup = {"machine": f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
             "batch": cfg.train.batch_size, "judges": a.judges, "judge_steps": cfg.train.judge_steps,
             "n_train": len(train), "n_val": len(val)}
    rows, cmds, old_setup = earlier_rows(out.with_suffix(".json"), {parse_variant(t)[0] for t in a.variant}) \
        if a.append else ([], [], {})
    if rows and old_setup and old_setup != setup:
        ap.error(f"--append: the report was measured with {old_setup}, this run would use {setup}; "
                 "write it under another --name")
    for text in a.variant:
        vname, extra = parse_variant(text)
        vcfg = load_config(a.config, common + extra)
        run = ROOT / "runs" / "bench" / f"codec-{name}-{vname}"
        seconds = train_seconds(run, lambda: train_autoencoder(vcfg, run, log=lambda m: print(f"[{vname}] {m}", flush=True)))
        codec = load_autoencoder(run)
        codec.image_channels = val.channels
        rec = reconstruction_metrics(codec, val.images)
        recon = reconstruct(codec, val)
        c = judged_ceiling([codec_ceiling(codec, judge, val, rec=recon) for judge in judges])
        rows.append({"variant": vname, "overrides": extra, "recipe": recipe(vcfg), "seconds": round(seconds, 1), "psnr": rec["psnr"],
                     "ssim": rec["ssim"], "real": c["real"], "ceiling": c["reconstructed"],
                     "ceiling_min": c["reconstructed_min"], "ceiling_per_judge": c["per_judge"]})
        print(json.dumps(rows[-1]), flush=True)
    classes = list(val.classes)
    cmds.append("python benchmarks/codec_variants.py " + " ".join(sys.argv[1:] if argv is None else argv))
    out.with_suffix(".md").write_text(render(name, cmds, setup, rows, classes))
    out.with_suffix(".json").write_text(json.dumps({"commands": cmds, "setup": setup, "rows": rows, "classes": classes},
                                                   indent=2) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
