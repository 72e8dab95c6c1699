"""Hostile-input cases of issue 17: unlabelled pools, fine-tuning a synth export (foundation, then adaptation) and
the pool-aware evaluation.  Collected by :func:`tests.acceptance.cases.all_cases`."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.acceptance.harness import BRIDGE, TINY, Case, nothing, sets, write


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
    from synth.evaluation.pools import check_pool

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
        Case("eval-partial-nothing-done", "cli", "eval augment --partial on a study that has not started",
             nothing, lambda c, d, s: ["eval", "augment", "--partial", "--out", str(d / "study"),
                                       *sets(TINY + ["eval.arms=[real]"])],
             "error", r"holds no finished classifier \(no results\.jsonl\); run the study first"),
    ]


def _captions(c, d: Path, long: bool = False) -> Path:
    """A tiny manifest of captioned phantoms (one caption of 10,000 characters when ``long``)."""
    import json

    from tests.acceptance.harness import grey, png_bytes, write

    rows = []
    for i in range(8):
        write(d / f"{i}.png", png_bytes(grey(i)))
        text = ("opacity " * 1250) if (long and i == 0) else f"A  small opacity {i}."
        rows.append({"file_name": f"{i}.png", "label": "a" if i % 2 else "b", "prompt": text, "type": "CT",
                     "split": "val" if i >= 6 else "train"})
    return write(d / "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))


def _text_flow(c, d: Path) -> Path:
    """A caption-conditioned flow model (the tiny text model on the flow path), trained for one step: its export."""
    from tests.acceptance.harness import must_succeed

    must_succeed(["train", "ldm", "--run", str(d / "tf"), *sets(TINY + ["train.path=flow", "train.steps=1"])])
    return d / "tf" / "export"


def text_cases() -> list[Case]:
    """Issue 18's bad inputs on captions, LoRA and sampling with text."""
    ldm = lambda c, d, s, *x: ["train", "ldm", "--run", str(d / "run"),  # noqa: E731
                               *sets(TINY + [f"data.name={s}", "train.steps=1", *x])]
    return [
        Case("text-template-missing-column", "cli", "labels.caption_template names a column the manifest lacks",
             _captions, lambda c, d, s: ldm(c, d, s, "labels.caption_template={plane}: {prompt}"),
             "error", r"names the column \{plane\}, which .* does not have \(it has: label, prompt, type\)"),
        Case("text-caption-10000-chars", "cli", "a caption of 10,000 characters",
             lambda c, d: _captions(c, d, long=True), lambda c, d, s: ldm(c, d, s), "ok",
             r"1 of \d+ distinct prompts are longer than the text encoder's window", replaced=("run/*", "run/**/*")),
        Case("text-lora-rank-0", "cli", "train.lora_rank=0", _captions,
             lambda c, d, s: ldm(c, d, s, "train.lora_rank=0"), "error", r"train\.lora_rank must be > 0"),
        Case("text-lora-no-attention", "cli", "LoRA on a UNet without attention layers", _captions,
             lambda c, d, s: ldm(c, d, s, "train.lora_rank=4", "model.unet.attention_levels=[false,false]"),
             "error", r"no attention layers to adapt"),
        Case("text-negative-prompt-bridge", "cli", "--negative-prompt with a class-only (bridge) model", nothing,
             lambda c, d, s: ["sample", "--model", str(c.bridge_export), "--n", "2", "--out", str(d / "out"),
                              "--negative-prompt", "noise", "--quiet"],
             "error", r"--negative-prompt needs a text-conditioned model"),
        Case("text-negative-prompt-two-lines", "cli", "--negative-prompt holding a line break", nothing,
             lambda c, d, s: ["sample", "--model", str(c.ldm_export), "--n", "2", "--out", str(d / "out"),
                              "--negative-prompt", "blurry\ncropped", "--quiet"],
             "error", r"--negative-prompt must be one line .* holds a line break"),
        Case("text-translate-caption-two-lines", "cli", "synth translate --target a caption holding a line break",
             _text_flow, lambda c, d, s: c.translate_args(d / "out", model=s, source="a chest x-ray",
                                                           target="a chest x-ray\nwith pneumonia"),
             "error", r"--target must be one line of text \(a caption\) .* holds a line break"),
        Case("text-prompts-manifest-columns", "cli", "--prompts manifest without the column the model's template names",
             lambda c, d: write(d / "p.jsonl", '{"prompt": "a mass"}\n'),
             _prompts_mismatch,
             "error", r"names the column \{type\}"),
    ]


def _eval_text_setup(c, d: Path) -> tuple[Path, Path]:
    """A captioned manifest with train and test rows (two labels, CT and MR) and a text model trained on it
    for one step: (manifest, export)."""
    import json

    from tests.acceptance.harness import grey, must_succeed, png_bytes, write

    rows = []
    for i in range(40):
        write(d / "data" / f"{i}.png", png_bytes(grey(i)))
        kind = ("CT", "MR")[i % 2]
        rows.append({"file_name": f"{i}.png", "label": "a" if (i // 2) % 2 else "b", "type": kind,
                     "prompt": f"{kind} with a small opacity, case {i}.", "split": "test" if i >= 30 else "train"})
    man = write(d / "data" / "m.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    must_succeed(["train", "ldm", "--run", str(d / "tm"), *sets(TINY + [f"data.name={man}", "train.steps=1",
                                                                       "labels.caption_template={type}: {prompt}"])])
    return man, d / "tm" / "export"


def _eval_text(c, d: Path, s, *extra: str, model: Path | None = None) -> list[str]:
    man, export = s
    return ["eval", "text", "--model", str(model or export), "--data", str(man), "--out", str(d / "eval"),
            "--attribute", "type", "--attribute", "location=label", "--swap", "type:CT|MR", "--judge-steps", "2",
            "--clip-steps", "2", "--steps", "1", "--k", "4", *extra]


def eval_text_cases() -> list[Case]:
    """Issue 18 item 6's bad requests to ``synth eval text``: each one line, before any judge is trained."""
    return [
        Case("text-eval-bridge-model", "cli", "synth eval text on a class-only (bridge) model", _eval_text_setup,
             lambda c, d, s: _eval_text(c, d, s, model=c.bridge_export), "error",
             r"holds a 'bridge' model .* synth eval text measures text-conditioned models"),
        Case("text-eval-swap-unknown-value", "cli", "--swap location:a|zzz (zzz is no label of the data)",
             _eval_text_setup, lambda c, d, s: _eval_text(c, d, s, "--swap", "location:a|zzz"), "error",
             r"'zzz' is not a value the judge of location knows \(a, b\)"),
        Case("text-eval-k-too-large", "cli", "R-precision among --k 50 with 10 test captions", _eval_text_setup,
             lambda c, d, s: _eval_text(c, d, s, "--k", "50"), "error",
             r"R-precision among 50 needs 49 captions that differ"),
        Case("text-eval-unknown-sampler", "cli", "--sampler euler_maruyama", _eval_text_setup,
             lambda c, d, s: _eval_text(c, d, s, "--sampler", "euler_maruyama"), "error",
             r"--sampler 'euler_maruyama' is unknown; choose one of"),
        Case("text-eval-gpu-name", "cli", "--device gpu0", _eval_text_setup,
             lambda c, d, s: _eval_text(c, d, s, "--device", "gpu0"), "error",
             r"--device 'gpu0' is not a device name; use cpu, cuda or cuda:N"),
        Case("text-eval-steps-0", "cli", "--steps 0", _eval_text_setup,
             lambda c, d, s: _eval_text(c, d, s, "--steps", "0"), "error", r"--steps must be >= 1 \(got 0\)"),
    ]


def _prompts_mismatch(c, d: Path, s) -> list[str]:
    """A text model whose caption template names {type}, sampled with a prompts manifest that has no type column."""
    from tests.acceptance.harness import must_succeed

    man = _captions(c, d / "data")
    must_succeed(["train", "ldm", "--run", str(d / "tm"), *sets(TINY + [f"data.name={man}", "train.steps=1",
                                                                       "labels.caption_template={type}: {prompt}"])])
    return ["sample", "--model", str(d / "tm" / "export"), "--n", "2", "--out", str(d / "out"), "--prompts", str(s),
            "--quiet"]
