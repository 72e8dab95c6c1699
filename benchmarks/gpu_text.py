"""gpu_check section 10: the paths of issues 16-18 on the device.

A caption-conditioned FLOW model (path x text conditioner) trained on half of a captioned set with the
other half as an unlabelled pool (null prompt, ``train.unlabelled_share``), translated between two
captions on the device, then ``synth eval text --device`` (judges, the small CLIP, generated images,
swaps, the probe) on it.  Captioned phantoms: CT bright / MR dark, head a disc / thorax two lobes.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

from gpu_common import peak_gib, precision, reset_peak, sync
from synth.data.phantoms import captioned_manifest, captioned_phantom

ROOT = Path(__file__).resolve().parents[1]


def section_text_pool(tmp: Path, sz: dict) -> dict:
    from synth.config import load_config
    from synth.devices import resolve_device
    from synth.evaluation.text_run import evaluate_text
    from synth.samplers.generator import load_generator
    from synth.trainers.ldm import train_ldm

    tiny = sz["res"] <= 16
    data = captioned_manifest(tmp / "captioned", sz["res"], 72 if tiny else 1024)
    steps = sz["pixel_steps"]
    cfg = load_config(ROOT / "configs" / "pneumoniamnist-32.yaml", [
        f"data.name={data}", "data.cache_dir=null", f"data.resolution={sz['res']}", "data.fraction=0.5",
        "data.unlabelled=rest", "train.unlabelled_share=0.3", "train.path=flow", "train.text_lr=0.0001",
        "labels.caption_template={type}, {plane}: {prompt}", f"train.steps={steps}", "train.progress=false",
        "train.checkpoint_every=100000", f"train.log_every={steps}", f"train.mixed_precision={precision()}",
        "sample.per_class=2", "sample.steps=2", "sample.sampler=euler"])
    reset_peak()
    t0 = time.perf_counter()
    export = train_ldm(cfg, tmp / "textflow", log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp / "textflow" / "logs" / "scalars.jsonl").read_text().splitlines()]
    meta = json.loads((Path(export) / "synth.json").read_text())
    train = {"steps": steps, "samples_per_s": round(rows[-1]["samples_per_s"], 1),
             "wall_s": round(time.perf_counter() - t0, 1), "peak_GiB": peak_gib(),
             "labelled / unlabelled seen": f"{meta['train_subset'].get('n')} / {meta['train_subset']['unlabelled']['n']}"}
    dev = str(resolve_device(None))
    gen = load_generator(export, device=dev)
    x = torch.from_numpy(np.stack([captioned_phantom("CT", "Head", sz["res"], np.random.default_rng(i))
                                   for i in range(sz["bulk_batch"])]))[:, None]
    gen.translate(x, "CT of the head", "MRI of the brain", tau=0.5, steps=sz["bulk_steps"])  # warm-up
    sync()
    t0 = time.perf_counter()
    y = gen.translate(x, "CT of the head", "MRI of the brain", tau=0.5, steps=sz["bulk_steps"])
    sync()
    translate = {"images": len(x), "img_s": round(len(x) / (time.perf_counter() - t0), 1),
                 "mean grey in / out": f"{x.float().mean():.1f} / {y.float().mean():.1f}"}
    reset_peak()
    t0 = time.perf_counter()
    rep = evaluate_text([str(tmp / "textflow")], str(data), tmp / "eval-text", seeds=2, k=4, steps=sz["bulk_steps"],
                        judge_steps=sz["judge_steps"], clip_steps=sz["judge_steps"], device=dev, log=lambda *a: None)
    m = rep["models"]["textflow"]
    ev = {"wall_s": round(time.perf_counter() - t0, 1), "peak_GiB": peak_gib(), "test captions": rep["test_n"],
          "type / location accuracy": f"{m['attributes']['type']['accuracy']:.2f} / "
                                      f"{m['attributes']['location']['accuracy']:.2f}",
          "R-precision": round(m["clip"]["r_precision"], 3)}
    return {"text flow + pool training": train, "text flow translation": translate, "eval text on the device": ev}
