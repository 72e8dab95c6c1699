"""``synth demo`` / ``make demo``: the first run, in a few CPU minutes, with an honest result.

Trains the embedded class-conditional pixel flow-matching model (the bridge trainer, whose domains
are the classes) on PneumoniaMNIST, judges its samples with a classifier trained on the real training
images, and writes one labelled grid: per class, real test images on the left and synthetic ones on
the right.  Prints the label fidelity, the time it took and the next commands to run.
"""
from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Callable

import torch

from synth.config import Config
from synth.data import load_split
from synth.io import labelled_grid, save_png
from synth.labels import Condition
from synth.metrics import label_fidelity
from synth.seeds import image_seed


def _single_thread_judge(train, cfg: Config):
    """A small CNN on the real training split: the label-fidelity judge (a few seconds)."""
    from synth.trainers.classifier import train_classifier
    from synth.evaluation.arms import single_thread

    with single_thread():
        return train_classifier(train.images, train.labels, len(train.classes), steps=300, seed=cfg.train.seed)


def run_demo(cfg: Config, out: str | Path, log: Callable[[str], None] = print, t_start: float | None = None) -> dict:
    """Train, judge, draw; returns {export, grid, label_fidelity, seconds}."""
    from synth.samplers.generator import load_generator
    from synth.trainers.bridge import train_bridge

    t0 = t_start or time.perf_counter()
    out = Path(out)
    export = train_bridge(cfg, out, log=log)
    gen = load_generator(export)
    train = load_split(cfg.data, "train")
    test = load_split(dataclasses.replace(cfg.data, val_max_items=None), "test")
    judge = _single_thread_judge(train, cfg)

    n = 64  # per class, for the label fidelity
    classes = list(gen.domains)
    conds = [Condition(domain=k) for k in range(len(classes)) for _ in range(n)]
    seeds = [image_seed(cfg.sample.seed, i) for i in range(len(conds))]
    batch = gen.sample(conds, seeds, steps=cfg.sample.steps, guidance=cfg.sample.guidance, sampler=cfg.sample.sampler)
    labels = torch.tensor([c.domain for c in conds])
    fid = label_fidelity(judge, batch.images, labels, len(classes))
    real_acc = label_fidelity(judge, test.images, test.labels, len(classes))

    per = 6
    rows = []
    for k in range(len(classes)):
        real = test.images[test.labels == k][:per]
        syn = batch.images[labels == k][:per]
        rows += [real, syn]
    grid = labelled_grid(torch.cat(rows), 2 * per, classes,
                         f"{cfg.data.name}: left {per} real test images | right {per} synthetic "
                         f"({cfg.sample.sampler} {cfg.sample.steps} steps, guidance {cfg.sample.guidance:g})")
    path = out / "samples" / "demo.png"
    save_png(path, grid)
    return {"export": export, "grid": path, "label_fidelity": {classes[k]: v for k, v in fid["per_class"].items()},
            "judge_test_accuracy": real_acc["overall"], "seconds": time.perf_counter() - t0}
