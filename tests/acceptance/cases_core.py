"""Acceptance cases: config files and overrides, data sets, training run folders."""
from __future__ import annotations

import argparse
import dataclasses
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tests.acceptance.harness import *  # noqa: F401,F403  (the case vocabulary: Case, helpers, checks)
from tests.acceptance.harness import BRIDGE, ROOT, TINY, Case, Ctx, _WentAhead  # noqa: F401

# ---------------------------------------------------------------------------
# The cases: config files and overrides


def cfg_case(cid: str, what: str, content: bytes | str, says: str, *,
             keys: tuple[str, ...] = ()) -> Case:
    """``synth train ldm --config d/cfg.yaml`` with the tiny overrides, except those of ``keys``."""
    def setup(ctx, d):
        write(d / "cfg.yaml", content)

    def action(ctx, d, s):
        extra = [] if "train.steps" in keys else ["train.steps=2"]
        return ["train", "ldm", "--config", str(d / "cfg.yaml"), "--run", str(d / "run"), *sets(tiny_without(*keys) + extra)]

    return Case(cid, "cli", what, setup, action, "error", says, check=nothing_written("run"))


def config_cases() -> list[Case]:
    cases = [
        Case("cfg-missing", "cli", "--config names a file that does not exist", nothing,
             lambda c, d, s: ["train", "ldm", "--config", str(d / "nope.yaml"), "--run", str(d / "run")],
             "error", r"not found"),
        Case("cfg-directory", "cli", "--config names a directory", nothing,
             lambda c, d, s: ["train", "ldm", "--config", str(d), "--run", str(d / "run")], "error", r"(?i)director"),
        Case("cfg-empty", "cli", "--config is an empty file (0 bytes); tiny --set overrides",
             lambda c, d: write(d / "cfg.yaml", b""),
             lambda c, d, s: ["train", "ldm", "--config", str(d / "cfg.yaml"), "--run", str(d / "run"),
                              *sets(TINY + ["train.steps=2", "train.checkpoint_every=2"])],
             "ok", r"exported to",
             check=lambda c, d, s, o: _resolved_config_is(d / "run", TINY + ["train.steps=2", "train.checkpoint_every=2"])),
        cfg_case("cfg-not-utf8", "config file in Latin-1 (byte 0xe9 in a comment)", b"# r\xe9sum\xe9\ntrain: {steps: 2}\n",
                 r"not UTF-8", keys=("train.steps",)),
        cfg_case("cfg-invalid-yaml", "config with an unclosed bracket", "train: {steps: [1, 2\n", r"not valid YAML",
                 keys=("train.steps",)),
        Case("cfg-python-tag", "cli", "config with a !!python/object/apply tag that would run a shell command",
             lambda c, d: write(d / "cfg.yaml", f"train: !!python/object/apply:os.system ['touch {d / 'pwned'}']\n"),
             lambda c, d, s: ["train", "ldm", "--config", str(d / "cfg.yaml"), "--run", str(d / "run"), *sets(TINY)],
             "error", r"not valid YAML|python", check=all_checks(no_file("pwned"), nothing_written("run"))),
        cfg_case("cfg-unknown-key", "config key misspelt (train.stpes)", "train: {stpes: 2}\n", r"did you mean 'train\.steps'"),
        cfg_case("cfg-wrong-type", "train.steps: ten (a word)", "train: {steps: ten}\n", r"train\.steps: expected an integer",
                 keys=("train.steps",)),
        cfg_case("cfg-nan-lr", "train.lr: .nan", "train: {lr: .nan}\n", r"train\.lr.*finite"),
        cfg_case("cfg-negative-lr", "train.lr: -1e-3", "train: {lr: -1.0e-3}\n", r"train\.lr must be > 0"),
        cfg_case("cfg-log-every-0", "train.log_every: 0 (would divide by zero)", "train: {log_every: 0}\n",
                 r"train\.log_every must be > 0", keys=("train.log_every",)),
        cfg_case("cfg-steps-0", "train.steps: 0", "train: {steps: 0}\n", r"train\.steps must be > 0", keys=("train.steps",)),
        cfg_case("cfg-duplicate-keys", "two train: sections (YAML keeps the last silently)",
                 "train: {steps: 2}\nmodel: {codec: pixel}\ntrain: {lr: 0.01}\n", r"duplicate key", keys=("train.steps",)),
        cfg_case("cfg-top-level-list", "config is a YAML list, not a mapping", "- train\n- steps: 2\n", r"mapping"),
        cfg_case("cfg-alias-bomb", "YAML alias bomb ('billion laughs', 9 levels)",
                 "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
                     f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
                 r"unknown config key"),
        cfg_case("cfg-bad-choice", "model.codec: latent (not pixel or vae)", "model: {codec: latent}\n",
                 r"model\.codec.*not one of"),
        cfg_case("cfg-tau-out-of-range", "sample.tau: 2", "sample: {tau: 2}\n", r"sample\.tau must be in \[0, 1\]"),
        Case("set-without-equals", "cli", "--set train.steps (no '=')", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), "--set", "train.steps"], "error",
             r"not of the form key=value", check=nothing_written("run")),
        Case("set-unknown-key", "cli", "--set train.stepz=3", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), *sets(TINY + ["train.stepz=3"])], "error",
             r"did you mean 'train\.steps'", check=nothing_written("run")),
        Case("set-empty-key", "cli", "--set =3", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), "--set", "=3"], "error", r"empty key"),
        Case("set-python-tag", "cli", "--set train.lr='!!python/object/apply:os.system [touch pwned]'", nothing,
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), *sets(TINY),
                              "--set", f"train.lr=!!python/object/apply:os.system ['touch {d / 'pwned'}']"],
             "error", r"train\.lr: expected a number", check=no_file("pwned")),
        set_case("set-norm-groups", "model.unet.norm_num_groups=5 (16 channels are not divisible by 5)",
                 ["model.unet.norm_num_groups=5"], r"norm_num_groups"),
        set_case("set-text-heads", "model.text.num_heads=3 (hidden_size 32 is not divisible by 3)",
                 ["model.text.num_heads=3"], r"num_heads"),
        set_case("set-text-max-length-1", "model.text.max_length=1 (no room for a prompt)", ["model.text.max_length=1"],
                 r"max_length"),
        set_case("set-fp16-on-cpu", "train.mixed_precision=fp16 on a CPU machine", ["train.mixed_precision=fp16"],
                 r"fp16 needs a CUDA GPU"),
        set_case("set-fewer-classes", "labels.classes=[normal] for 2-class data", ["labels.classes=[normal]"],
                 r"does not match"),
        set_case("set-extra-class", "labels.classes=[normal,pneumonia,covid]: 'covid' has no training image",
                 ["labels.classes=[normal,pneumonia,covid]"], r"covid"),
        set_case("set-prompt-template-field", "labels.prompt_template='x-ray {label} {view}'",
                 ["labels.prompt_template=x-ray {label} {view}"], r"prompt_template"),
        set_case("set-fraction-empties-class", "data.fraction=0.01 of 48 images", ["data.fraction=0.01"],
                 r"leaves class .* empty"),
        Case("api-config-nan", "api", "load_config(None, ['train.lr=nan'])", nothing,
             lambda c, d, s: __import__("synth.config", fromlist=["load_config"]).load_config(None, ["train.lr=nan"]),
             "error", r"train\.lr.*finite"),
    ]
    return cases


def set_case(cid: str, what: str, overrides: list[str], says: str) -> Case:
    """``synth train ldm`` (tiny, 2 steps) with hostile ``--set`` overrides."""
    return Case(cid, "cli", what, nothing,
                lambda c, d, s: ["train", "ldm", "--run", str(d / "run"),
                                 *sets(TINY + ["train.steps=2", "train.checkpoint_every=2", *overrides])],
                "error", says, check=lambda c, d, s, o: ["trained and exported anyway"] if (d / "run" / "export").exists() else [])


def _resolved_config_is(run: Path, overrides: list[str]) -> list[str]:
    import yaml

    from synth.config import config_to_dict, load_config

    got = yaml.safe_load((run / "config.yaml").read_text())
    want = config_to_dict(load_config(None, overrides))
    return [] if got == want else ["the resolved config differs from defaults + overrides"]


# ---------------------------------------------------------------------------
# Data sets


def train_on(name_fn: Callable[[Path], Path], *extra: str):
    """Action: ``synth train ldm`` (tiny, 2 steps) on the data set ``name_fn(d)``."""
    return lambda c, d, s: ["train", "ldm", "--run", str(d / "run"),
                            *sets(TINY + ["train.steps=2", "train.checkpoint_every=2", f"data.name={name_fn(d)}", *extra])]


def load_split_of(name_fn: Callable[[Path], Path], *extra: str, split: str = "train"):
    def action(c, d, s):
        from synth.data import load_split

        return load_split(data_cfg(name_fn(d), *extra), split)
    return action


def _corrupt_png_folder(d: Path) -> None:
    image_folder(d / "data")
    good = (d / "data" / "normal" / "img0.png").read_bytes()
    write(d / "data" / "normal" / "img1.png", good[: len(good) // 2])  # cut short: no IEND, CRC fails


def _symlink_manifest(d: Path) -> None:
    write(d / "outside" / "secret.png", png_bytes(grey(99)))
    image_folder(d / "data")
    os.symlink(d / "outside" / "secret.png", d / "data" / "normal" / "link.png")
    rows_ = [f"{c}/img{i}.png,{c}" for c in ("normal", "pneumonia") for i in range(4)] + ["normal/link.png,normal"]
    write(d / "data" / "train.csv", "file_name,label\n" + "\n".join(rows_) + "\n")


def _la_folder(d: Path):
    import numpy as np
    from PIL import Image

    import io

    for k, c in enumerate(("normal", "pneumonia")):
        for i in range(4):
            la = np.stack([grey(10 * k + i), np.full((16, 16), 128 + i, np.uint8)], axis=-1)
            buf = io.BytesIO()
            Image.fromarray(la, mode="LA").save(buf, format="PNG")
            write(d / "data" / c / f"img{i}.png", buf.getvalue())


def _rgb_stack(n: int):
    import numpy as np

    return np.random.default_rng(5).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8)


def _colour_folder(d: Path, alpha: bool, classes=("normal", "pneumonia")):
    import io

    import numpy as np
    from PIL import Image

    imgs = _rgb_stack(8)
    for k, c in enumerate(classes):
        for i in range(4):
            a = imgs[4 * k + i]
            a = np.dstack([a, np.full((16, 16), 200, np.uint8)]) if alpha else a
            buf = io.BytesIO()
            Image.fromarray(a, mode="RGBA" if alpha else "RGB").save(buf, format="PNG")
            write(d / "data" / c / f"col{i}.png", buf.getvalue())


def _check_rgba(c, d, s, out):
    got = out.value
    if tuple(got.images.shape) != (8, 3, 16, 16):
        return [f"images have shape {tuple(got.images.shape)}, expected (8, 3, 16, 16)"]
    if not any("alpha channel was dropped" in n for n in got.notes):
        return ["no note that the alpha channel was dropped"]
    return []


def data_cases() -> list[Case]:
    import numpy as np

    imgs, labels = phantom_arrays()
    return [
        Case("data-npz-no-labels", "cli", "npz with train_images but no train_labels",
             lambda c, d: npz(d / "x.npz", train_images=imgs), train_on(lambda d: d / "x.npz"), "error",
             r"no 'train_labels'", check=nothing_written("run")),
        Case("data-npz-label-count", "cli", "npz with 16 images but 10 labels",
             lambda c, d: npz(d / "x.npz", train_images=imgs, train_labels=labels[:10]), train_on(lambda d: d / "x.npz"),
             "error", r"(?i)label", check=nothing_written("run")),
        Case("data-npz-1d-images", "api", "npz whose images are flat vectors (16, 256)",
             lambda c, d: npz(d / "x.npz", train_images=imgs.reshape(16, 256), train_labels=labels),
             load_split_of(lambda d: d / "x.npz"), "error", r"shape"),
        Case("data-npz-2-channel", "api", "npz whose images have 2 channels (N, H, W, 2)",
             lambda c, d: npz(d / "x.npz", train_images=np.stack([imgs, imgs], -1), train_labels=labels),
             load_split_of(lambda d: d / "x.npz"), "error", r"shape|channel"),
        Case("data-npz-negative-labels", "cli", "npz (all 3 splits) whose labels use -1 for 'unlabelled'",
             lambda c, d: npz(d / "x.npz", **{f"{sp}_{k}": v for sp in ("train", "val", "test")
                                               for k, v in (("images", imgs), ("labels", labels - 1))}),
             train_on(lambda d: d / "x.npz"),
             "error", r"(?i)label", check=nothing_written("run")),
        Case("data-npz-not-a-zip", "cli", "a text file named data.npz",
             lambda c, d: write(d / "x.npz", "not a zip\n"), train_on(lambda d: d / "x.npz"), "error", r"cannot read"),
        Case("data-csv-no-label", "cli", "CSV manifest without a label column",
             lambda c, d: (image_folder(d / "data"), write(d / "data" / "m.csv", "file_name\nnormal/img0.png\n")),
             train_on(lambda d: d / "data" / "m.csv"), "error", r"no 'label' column"),
        Case("data-csv-dotdot", "cli", "manifest row ../outside/secret.png",
             lambda c, d: (write(d / "outside" / "secret.png", png_bytes(grey(1))), image_folder(d / "data"),
                           write(d / "data" / "m.csv", "file_name,label\nnormal/img0.png,normal\n../outside/secret.png,pneumonia\n")),
             train_on(lambda d: d / "data" / "m.csv"), "error", r"\.\.|outside"),
        Case("data-csv-absolute", "api", "manifest row with an absolute path (/etc/hostname)",
             lambda c, d: (image_folder(d / "data"),
                           write(d / "data" / "m.csv", "file_name,label\nnormal/img0.png,normal\n/etc/hostname,pneumonia\n")),
             load_split_of(lambda d: d / "data" / "m.csv"), "error", r"(?i)absolute|relative"),
        Case("data-csv-symlink-out", "api", "manifest row names a symlink pointing out of the data folder",
             lambda c, d: _symlink_manifest(d), load_split_of(lambda d: d / "data" / "train.csv"), "error",
             r"(?i)symlink|outside|points"),
        Case("data-empty-folder", "cli", "data.name is an empty folder",
             lambda c, d: (d / "data").mkdir(), train_on(lambda d: d / "data"), "error", r"no images"),
        Case("data-flat-folder", "api", "images directly in the folder, no class sub-folders",
             lambda c, d: [write(d / "data" / f"{i}.png", png_bytes(grey(i))) for i in range(4)],
             load_split_of(lambda d: d / "data"), "error", r"class sub-folders"),
        Case("data-folder-non-image", "api", "class folders also hold notes.txt and a .DS_Store",
             lambda c, d: (image_folder(d / "data", 5), write(d / "data" / "normal" / "notes.txt", "reader 2 disagrees\n"),
                           write(d / "data" / "pneumonia" / ".DS_Store", b"\0\1\2")),
             load_split_of(lambda d: d / "data"), "ok",
             check=lambda c, d, s, o: [] if len(o.value) + len(load_split_of(lambda d: d / "data", split="val")(c, d, s)) == 10
             else [f"{len(o.value)} train images, expected the 10 PNGs minus the val carve"]),
        Case("data-corrupt-png", "cli", "one PNG in a class folder is cut in half",
             lambda c, d: _corrupt_png_folder(d), train_on(lambda d: d / "data"), "error", r"img1\.png",
             check=nothing_written("run")),
        Case("data-corrupt-png-skip", "api", "the same corrupt PNG with data.on_error=skip",
             lambda c, d: _corrupt_png_folder(d),
             lambda c, d, s: __import__("synth.data", fromlist=["load_image_folder"]).load_image_folder(
                 d / "data", "train", 16, "skip", None), "ok",
             check=lambda c, d, s, o: [] if (len(o.value), o.value.skipped) == (7, 1)
             else [f"{len(o.value)} images, {o.value.skipped} skipped; expected 7 and 1"]),
        Case("data-2-channel-png", "api", "grey+alpha (LA) PNGs, 2 channels", lambda c, d: _la_folder(d),
             lambda c, d, s: __import__("synth.data", fromlist=["load_image_folder"]).load_image_folder(
                 d / "data", "train", 16, "raise", None), "error", r"2-channel image"),
        Case("data-rgba-png", "api", "RGBA PNGs (colour + alpha)", lambda c, d: _colour_folder(d, alpha=True),
             lambda c, d, s: __import__("synth.data", fromlist=["load_image_folder"]).load_image_folder(
                 d / "data", "train", 16, "raise", None), "ok", check=_check_rgba),
        Case("data-mixed-grey-colour", "api", "a folder mixing grey and colour images (data.channels: auto)",
             lambda c, d: (image_folder(d / "data"), _colour_folder(d, alpha=False, classes=("pneumonia",))),
             lambda c, d, s: __import__("synth.data", fromlist=["load_image_folder"]).load_image_folder(
                 d / "data", "train", 16, "raise", None), "error", r"mixes grey and colour images \(grey: .*colour: "),
        Case("data-colour-npz", "api", "an RGB MedMNIST-style npz (N, 16, 16, 3): must stay colour",
             lambda c, d: npz(d / "rgb.npz", train_images=_rgb_stack(8), train_labels=(__import__("numpy").arange(8) % 2)[:, None]),
             lambda c, d, s: __import__("synth.data", fromlist=["load_npz"]).load_npz(d / "rgb.npz", "train", 16, None),
             "ok", check=lambda c, d, s, o: [] if o.value.images.shape[1] == 3 else ["colour came out grey"]),
        Case("data-missing-path", "cli", "data.name=/no/such/data.npz", nothing, train_on(lambda d: d / "nope.npz"),
             "error", r"does not exist"),
        Case("data-jsonl-non-object", "api", "JSONL manifest with a line that is a list",
             lambda c, d: (image_folder(d / "data"),
                           write(d / "data" / "m.jsonl", '{"file_name": "normal/img0.png", "label": "normal"}\n["x", 1]\n')),
             load_split_of(lambda d: d / "data" / "m.jsonl"), "error", r"not a JSON object"),
    ]


# ---------------------------------------------------------------------------
# Training run folders


def _copy_run(ctx: Ctx, d: Path) -> Path:
    return Path(shutil.copytree(ctx.ldm_run, d / "run", symlinks=True))


def _truncate(p: Path, keep: float = 0.5) -> None:
    data = p.read_bytes()
    p.write_bytes(data[: int(len(data) * keep)])


def _damage_latest(ctx: Ctx, d: Path) -> dict:
    run = _copy_run(ctx, d)
    from synth.trainers.checkpoints import latest_checkpoint

    step, ck = latest_checkpoint(run)
    _truncate(ck / "unet.safetensors")
    return {"step": step, "unet": hashlib.sha256((ck / "unet.safetensors").read_bytes()).hexdigest(), "ck": ck.name}


def _check_quarantined(ctx, d, s, out):
    from synth.samplers.generator import load_generator

    problems = []
    q = d / "run" / "checkpoints" / f"corrupt-{s['ck']}"
    if not q.is_dir() or hashlib.sha256((q / "unet.safetensors").read_bytes()).hexdigest() != s["unet"]:
        problems.append(f"the damaged checkpoint was not kept as {q.name}")
    if not (d / "run" / "checkpoints" / s["ck"] / "state.json").is_file():
        problems.append("training did not complete (no new final checkpoint)")
    load_generator(d / "run" / "export")
    return problems


def _user_folder(d: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        write(d / "run" / rel, text)


def train_cases() -> list[Case]:
    tiny2 = lambda c, d, s, *x: ["train", "ldm", "--run", str(d / "run"),  # noqa: E731
                                 *sets(TINY + ["train.steps=2", "train.checkpoint_every=2", *x])]
    return [
        Case("train-user-export-folder", "cli", "--run names a folder holding the user's own export/ (no synth.json)",
             lambda c, d: _user_folder(d, {"export/report.docx": "my report", "export/figures/fig1.txt": "fig"}),
             tiny2, "error", r"refusing to replace export|not empty .*holds no synth run"),
        Case("train-user-config-in-run", "cli", "--run . in a project folder holding the user's own config.yaml",
             lambda c, d: _user_folder(d, {"config.yaml": "# my hand-written notes\ntrain: {steps: 2}\n"}),
             tiny2, "error", r"config\.yaml|not.*synth"),
        Case("train-user-samples-in-run", "cli", "--run folder holding the user's own samples/final.png",
             lambda c, d: write(d / "run" / "samples" / "final.png", png_bytes(grey(5))),
             tiny2, "error", r"samples"),
        Case("train-user-checkpoint-folder", "cli",
             "--run folder whose checkpoints/step-00000002/ is the user's (no state.json)",
             lambda c, d: _user_folder(d, {"checkpoints/step-00000002/notes.txt": "mine"}),
             tiny2, "error", r"refusing to replace|not empty .*holds no synth run"),
        Case("train-damaged-run-json", "cli", "run.json of the run folder cut in half",
             lambda c, d: _truncate(_copy_run(c, d) / "run.json"), lambda c, d, s: c.ldm_args(d / "run"), "error",
             r"run\.json"),
        Case("train-other-stage", "cli", "synth train bridge --run <an ldm run folder>",
             lambda c, d: _copy_run(c, d), lambda c, d, s: ["train", "bridge", "--run", str(d / "run"), *sets(TINY + SHARED_LDM)],
             "error", r"holds a 'ldm' run"),
        Case("train-changed-model", "cli", "resume with another UNet width",
             lambda c, d: _copy_run(c, d), lambda c, d, s: c.ldm_args(d / "run", "model.unet.block_out_channels=[8,32]"),
             "error", r"model\.unet\.block_out_channels"),
        Case("train-truncated-checkpoint", "cli", "the latest checkpoint's unet.safetensors cut in half, same command again",
             _damage_latest, lambda c, d, s: c.ldm_args(d / "run"), "ok", r"damaged.*skipped", check=_check_quarantined,
             replaced=("run/checkpoints/*", "run/export/*", "run/samples/*", "run/logs/*", "run/run.json",
                       "run/config.yaml")),
        Case("train-run-is-file", "cli", "--run names an existing file", lambda c, d: write(d / "run", "a file"),
             lambda c, d, s: ["train", "ldm", "--run", str(d / "run"), *sets(TINY)], "error", r"(?i)file"),
        Case("train-critic-too-small", "cli", "autoencoder with a patch critic on 4 px images",
             lambda c, d: None, lambda c, d, s: ["train", "autoencoder", "--run", str(d / "ae"),
                                                 *sets(TINY + ["data.resolution=4", "model.vae.block_out_channels=[16,32]",
                                                               "train.adversarial_weight=0.1"])],
             "error", r"at least 8 px for its patch critic"),
        Case("train-critic-appears", "cli", "resume an autoencoder run with train.adversarial_weight switched on",
             lambda c, d: must_succeed(["train", "autoencoder", "--run", str(d / "ae"), *sets(TINY + ["train.steps=2"])]),
             lambda c, d, s: ["train", "autoencoder", "--run", str(d / "ae"),
                              *sets(TINY + ["train.steps=4", "train.adversarial_weight=0.1"])],
             "error", r"written without a patch critic"),
        Case("train-zero-judges", "cli", "train.ceiling_judges=0 with the ceiling gate on",
             lambda c, d: None, lambda c, d, s: ["train", "ldm", "--run", str(d / "run"),
                                                 *sets(TINY + ["train.ceiling_gate=0.5", "train.ceiling_judges=0"])],
             "error", r"train\.ceiling_judges"),
    ]


