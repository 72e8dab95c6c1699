"""Hostile-input cases of issue 17: unlabelled pools, fine-tuning a synth export (foundation, then adaptation) and
the pool-aware evaluation.  Collected by :func:`tests.acceptance.cases.all_cases`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.acceptance.harness import BRIDGE, TINY, Case, nothing, sets


def _bridge_args(c, d: Path, *extra: str) -> list[str]:
    return ["train", "bridge", "--run", str(d / "run"), *sets(TINY + BRIDGE + [f"data.name={c.dom3}", "train.steps=2",
                                                                          *extra])]


def _leaky_pool(c, d: Path) -> Path:
    """A pool that holds three images of the data's test split (a copy-paste of the wrong folder)."""
    z = np.load(c.dom3)
    p = d / "pool.npz"
    np.savez(p, train_images=np.concatenate([255 - z["train_images"][:8], z["test_images"][:3]]))
    return p


def _colour_pool(c, d: Path) -> Path:
    (d / "pool").mkdir(parents=True, exist_ok=True)
    for i in range(3):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(d / "pool" / f"{i}.png")
    return d / "pool"


def _fine_tune(c, d: Path, *extra: str) -> list[str]:
    return _bridge_args(c, d, f"model.pretrained={c.bridge_export}", *extra)


def _pool_differs(c, d: Path, s):
    from synth.evaluation.protocol import check_pool

    mine = {"kind": "rest", "source": "pneumoniamnist", "n": 4473, "sha256": "4023a2f4d07ce31c"}
    theirs = {"kind": "path", "source": "/data/other-hospital", "n": 9000, "sha256": "0123456789abcdef"}
    return check_pool({"model": {"train_subset": {"unlabelled": theirs}}}, mine, "synthetic/f0.05-g0-w1.5-pool")


def pool_cases() -> list[Case]:
    return [
        Case("pool-share-above-1", "cli", "train.unlabelled_share=1.5 (a share of each batch)",
             nothing, lambda c, d, s: _bridge_args(c, d, "data.unlabelled=rest", "data.fraction=0.5",
                                                   "train.unlabelled_share=1.5"),
             "error", r"train\.unlabelled_share must be in \[0, 1\]"),
        Case("pool-share-negative", "cli", "train.unlabelled_share=-0.1",
             nothing, lambda c, d, s: _bridge_args(c, d, "data.unlabelled=rest", "train.unlabelled_share=-0.1"),
             "error", r"train\.unlabelled_share must be in \[0, 1\]"),
        Case("pool-missing", "cli", "data.unlabelled names a folder that does not exist",
             nothing, lambda c, d, s: _bridge_args(c, d, f"data.unlabelled={d / 'no-such-pool'}"),
             "error", r"data\.unlabelled '.*no-such-pool' does not exist"),
        Case("pool-overlaps-test", "cli", "an unlabelled pool holding three test-split images",
             _leaky_pool, lambda c, d, s: _bridge_args(c, d, f"data.unlabelled={s}"),
             "error", r"shares 3 image\(s\) with the test split .*pool image 8 = test image 0"),
        Case("pool-colour-vs-grey", "cli", "a pool of colour images for grey labelled images",
             _colour_pool, lambda c, d, s: _bridge_args(c, d, f"data.unlabelled={s}"),
             "error", r"holds colour images but the labelled ones are grey"),
        Case("pool-rest-at-full-data", "cli", "data.unlabelled=rest with data.fraction=1 (no rest)",
             nothing, lambda c, d, s: _bridge_args(c, d, "data.unlabelled=rest"),
             "error", r"no images are left for the pool; lower data\.fraction"),
        Case("pretrained-other-resolution", "cli", "fine-tune a 16 px bridge export at data.resolution=32",
             nothing, lambda c, d, s: _fine_tune(c, d, "data.resolution=32"),
             "error", r"was trained at 16 px but data\.resolution=32; set data\.resolution=16"),
        Case("pretrained-other-codec", "cli", "fine-tune a pixel-space bridge export with model.codec=vae",
             nothing, lambda c, d, s: _fine_tune(c, d, "model.codec=vae"),
             "error", r"works in the pixel codec's space but model\.codec=vae; set model\.codec=pixel"),
        Case("pretrained-renamed-classes", "cli", "fine-tune with labels.domains renaming the export's three domains",
             nothing, lambda c, d, s: _fine_tune(c, d, "labels.domains=[a,b,c]"),
             "error", r"as many under other names.*model\.class_init=fresh"),
        Case("pretrained-other-family", "cli", "synth train bridge with model.pretrained = an LDM export",
             nothing, lambda c, d, s: _bridge_args(c, d, f"model.pretrained={c.ldm_export}"),
             "error", r"is an export of 'synth train ldm'; 'synth train bridge' fine-tunes bridge exports"),
        Case("eval-pool-differs", "api", "a pool generator's set whose recorded pool is not the study's",
             nothing, _pool_differs, "error", r"not the study's eval\.unlabelled_pool"),
        Case("eval-pseudo-without-pool", "cli", "eval.arms with pseudo-labelling but no eval.unlabelled_pool",
             nothing, lambda c, d, s: ["eval", "augment", "--out", str(d / "study"),
                                       *sets(TINY + ["eval.arms=[real,pseudo]"])],
             "error", r"'pseudo'.*eval\.unlabelled_pool is none; set eval\.unlabelled_pool=rest"),
    ]
