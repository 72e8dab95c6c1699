"""Refusals whose advice the harness follows: a fix that reproduces the error (or another one) is a bug.

``FOLLOW[case_id](ctx, d, state, args)`` does what the case's one-line error told the user to do:
for a CLI case it returns the corrected ``synth`` arguments (``args``: the refused ones), for an API
case it makes the corrected call.  :func:`tests.acceptance.harness.run_case` runs it after judging the refusal; it
must then succeed, otherwise the verdict is ``MISLEADING``.  Each entry quotes the advice it follows.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np

from tests.acceptance.harness import data_cfg, image_folder, npz, write


def set_value(args: list[str], key: str, value: str) -> list[str]:
    """``args`` with ``--set key=value`` replacing every ``--set key=...`` (appended when absent)."""
    out, i = [], 0
    while i < len(args):
        if args[i] == "--set" and i + 1 < len(args) and args[i + 1].split("=", 1)[0] == key:
            i += 2
            continue
        out.append(args[i])
        i += 1
    return out + ["--set", f"{key}={value}"]


def option(args: list[str], name: str, value: str | None = None) -> list[str]:
    """``args`` with ``name value`` (or the flag ``name``) replacing the first ``name`` or appended."""
    if name in args:
        i = args.index(name)
        return args[:i] + [name] + ([value] if value is not None else []) + args[i + (2 if value is not None else 1):]
    return args + [name] + ([value] if value is not None else [])


def sets_(key: str, value: str) -> Callable:
    return lambda c, d, s, args: set_value(args, key, value)


def opt(name: str, value: str | None = None) -> Callable:
    return lambda c, d, s, args: option(args, name, value)


# --- advice that means editing the input -------------------------------------------------------------


def _fix_unknown_key(c, d, s, args):
    """"unknown config key 'train.stpes'; did you mean 'train.steps'?" """
    write(d / "cfg.yaml", "train: {steps: 2}\n")
    return args


def _rerun_training(c, d, s, args):
    """"run 'synth train ldm --run <case>/run' again to finish it, then pass <case>/run/export" (as written: no
    --set; the run folder's own config must carry it)."""
    from tests.acceptance.harness import invoke

    out = invoke(["train", "ldm", "--run", str(d / "run")])
    if out.exit_code != 0:
        raise RuntimeError(f"the advised 'synth train ldm --run' failed: {out.error or out.tb}")
    return option(args, "--model", str(d / "run" / "export"))


def _move_user_file_away(c, d, s, args):
    """"... also holds files synth did not make (e.g. 'shard-00000/my-annotations.csv'); move them away" """
    shutil.move(str(d / "out" / "shard-00000" / "my-annotations.csv"), str(d / "my-annotations.csv"))
    return args


def _merge_case_folders(c, d, s, args):
    """"class folders 'Normal' and 'normal' ... differ only in case; merge them into one folder" """
    from synth.data import load_split

    for p in (d / "data" / "Normal").iterdir():
        shutil.move(str(p), str(d / "data" / "normal" / f"merged-{p.name}"))
    (d / "data" / "Normal").rmdir()
    return load_split(data_cfg(d / "data"), "test")


def _round_labels(c, d, s, args):
    """"holds non-integer labels (row 0: 0.7); ... threshold or round them yourself" """
    from synth.data import load_npz

    with np.load(d / "x.npz") as z:
        arrays = dict(z)
    arrays["test_labels"] = np.round(arrays["test_labels"]).astype(np.int64)
    npz(d / "x.npz", **arrays)
    return load_npz(d / "x.npz", "test", 16, None)


def _add_images(c, d, s, args):
    """"every class has a single image ...; add images (2 or more per class) or a val/ folder" """
    from tests.acceptance.harness import sets, tiny_without

    image_folder(d / "data", 3)
    return args + sets(tiny_without("data.name", "data.resolution") + ["train.steps=2", "train.checkpoint_every=2"]
                       + [f"data.name={d / 'data'}"])


def _save_as_grey(c, d, s, args):
    """"a 2-channel image (grey + alpha?) ...; save it as grey (L) or RGB" """
    from PIL import Image

    from synth.data import load_image_folder

    for p in (d / "data").rglob("*.png"):
        Image.open(p).convert("L").save(p)
    return load_image_folder(d / "data", "train", 16, "raise", None)


def _channels_3(c, d, s, args):
    """"the data mixes grey and colour images ...; set data.channels=3 to keep colour" """
    from synth.data import load_split

    return load_split(data_cfg(d / "data", "data.channels=3"), "train")


def _skip_unreadable(c, d, s, args):
    """"cannot read image '.../notes.bmp' ...; fix or remove it, or set data.on_error=skip" """
    from synth.data import load_split

    return load_split(data_cfg(d / "data", "data.on_error=skip"), "test")


def _label_map_to_real(c, d, s, args):
    """"synthetic labels ['normal', 'pneumonia'] match no real class ...; pass label_map={...} (a real class name,
    or None to drop it)" """
    from tests.acceptance.cases_sets import _Real
    from synth.augment import mix

    return mix(_Real(classes=("cat", "dog")), d / "set", label_map={"normal": "cat", "pneumonia": "dog"})


def _label_map_known(c, d, s, args):
    """"label_map names 'covid', which is not a label of the synthetic set; set labels: normal, pneumonia" """
    from tests.acceptance.cases_sets import _Real
    from synth.augment import mix

    return mix(_Real(), d / "set", fraction=0.3, label_map={"pneumonia": "pneumonia"})


def _quality_filter_first(c, d, s, args):
    """"set has no quality decisions (quality.jsonl); run synth.augment.quality_filter(set, classifier, threshold=0.5)
    first" """
    import torch

    from synth.augment import SyntheticSet, quality_filter

    torch.manual_seed(0)
    judge = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(1, 2))
    quality_filter(d / "set", judge, threshold=0.5, classes=["normal", "pneumonia"])
    return SyntheticSet(d / "set", quality="keep")


def _seed_in_range(c, d, s, args):
    """"seed 18446744073709551616 is outside [0, 2**63) ...; use a whole number in that range" """
    from synth.samplers.generator import load_generator
    from synth.labels import Condition

    return load_generator(c.ldm_export).sample([Condition(label=0)], [2 ** 63 - 1], steps=2)


def _rewrite_cfg(text: str) -> Callable:
    """The config file rewritten as the message says (UTF-8, one section, a mapping), same command."""
    return lambda c, d, s, args: (write(d / "cfg.yaml", text), args)[1]


def _into_class_folders(folder: str, then: Callable) -> Callable:
    """"images ... are not in class sub-folders; use <class>/<image>": move them into one class folder."""
    def fix(c, d, s, args):
        root = d / folder
        for p in sorted(root.glob("*.png")):
            cls = "normal" if int(p.stem) % 2 == 0 else "pneumonia"
            (root / cls).mkdir(exist_ok=True)
            shutil.move(str(p), str(root / cls / p.name))
        return then(c, d, s, args)
    return fix


def _add_label_column(c, d, s, args):
    """"manifest ... has no 'label' column ...; add a 'label' column holding each image's class" """
    write(d / "data" / "m.csv", "file_name,label\n" + "".join(f"{cls}/img{i}.png,{cls}\n"
                                                          for cls in ("normal", "pneumonia") for i in range(4)))
    return args


def _utf8_prompts(c, d, s, args):
    """"prompts file ... is not UTF-8 text ...; save it as UTF-8" """
    (d / "p.txt").write_text((d / "p.txt").read_bytes().decode("latin-1"), encoding="utf-8")
    return args


def _load_folder(c, d, s, args):
    from synth.data import load_split

    return load_split(data_cfg(d / "data"), "train")


FOLLOW: dict[str, Callable[[Any, Path, Any, list[str] | None], Any]] = {
    # config and training
    "cfg-unknown-key": _fix_unknown_key,                                    # did you mean 'train.steps'?
    "set-unknown-key": lambda c, d, s, a: [x.replace("train.stepz=3", "train.steps=3") for x in a],
    "set-norm-groups": sets_("model.unet.norm_num_groups", "8"),           # change one of them
    "set-text-heads": sets_("model.text.num_heads", "4"),                  # change one of them
    "set-fp16-on-cpu": sets_("train.mixed_precision", "bf16"),             # use bf16 or no on CPU
    "set-fewer-classes": sets_("labels.classes", "[normal,pneumonia]"),    # fix labels.classes
    "set-extra-class": sets_("labels.classes", "[normal,pneumonia]"),      # remove it from labels.classes
    "set-prompt-template-field": sets_("labels.prompt_template", "x-ray {label}"),  # '{label}' its only field
    "set-fraction-empties-class": sets_("data.fraction", "0.0417"),        # use data.fraction >= 0.0417
    "cfg-bad-choice": lambda c, d, s, a: (write(d / "cfg.yaml", "model: {codec: pixel}\n"), a)[1],  # one of pixel, vae
    "train-critic-too-small": sets_("train.adversarial_weight", "0"),      # set train.adversarial_weight=0
    "train-critic-appears": sets_("train.adversarial_weight", "0"),        # keep it 0
    "train-changed-model": sets_("model.unet.block_out_channels", "[16,32]"),  # restore it
    "b-one-image-per-class": _add_images,
    "b-resolution-odd-autoencoder": sets_("data.resolution", "8"),        # e.g. data.resolution=8
    "b-resolution-odd-unet": sets_("data.resolution", "16"),              # use data.resolution=16                                  # add images (2 or more per class)
    # data
    "data-corrupt-png": sets_("data.on_error", "skip"),                    # or set data.on_error=skip
    "b-text-named-bmp": _skip_unreadable,                                  # or set data.on_error=skip
    "data-mixed-grey-colour": _channels_3,                                 # set data.channels=3
    "data-2-channel-png": _save_as_grey,                                   # save it as grey (L) or RGB
    "b-class-case-collision": _merge_case_folders,                         # merge them into one folder
    "b-npz-float-labels": _round_labels,                                   # round them yourself
    # sampling and translation
    "sample-labels-unknown": opt("--labels", "normal"),                    # known labels: normal, pneumonia
    "sample-unknown-sampler": opt("--sampler", "dpmpp_2m"),                # choose one of ...
    "sample-device-gpu0": opt("--device", "cpu"),                          # use cpu, cuda or cuda:N
    "sample-device-cuda": opt("--device", "cpu"),                          # use --device cpu
    "sample-pickle-refused": opt("--allow-pickle"),                        # or pass --allow-pickle
    "sample-model-unfinished-run": _rerun_training,                        # run 'synth train ldm --run' again
    "train-damaged-run-json": lambda c, d, s, a: option(a, "--run", str(d / "fresh-run")),  # or a new --run folder
    "sample-seed-negative": opt("--seed", "0"),                            # a whole number in that range
    "sample-other-settings": opt("--overwrite"),                           # or pass --overwrite
    "sample-smaller-n": opt("--n", "6"),                                   # pass --n 6 to resume or extend it
    "sample-overwrite-user-file": _move_user_file_away,                    # move them away
    "b-resume-other-threads": lambda c, d, s, a: option(a, "--threads", "1"),  # synth --threads 1
    "b-seed-2-64": _seed_in_range,                                         # a whole number in that range
    "tr-unknown-domain": opt("--source", "dim"),                           # this model's domains: clean, dim, ...
    "tr-split-missing": opt("--split", "test"),                            # it holds ['test_images', ...]
    # more: the file or folder fixed as the message says, or the value it names
    "cfg-not-utf8": _rewrite_cfg("# resume\ntrain: {steps: 2}\n"),           # save it as UTF-8
    "cfg-duplicate-keys": _rewrite_cfg("train: {steps: 2, lr: 0.01}\nmodel: {codec: pixel}\n"),  # merge their values
    "cfg-top-level-list": _rewrite_cfg("train: {steps: 2}\n"),             # a mapping at the top level
    "data-csv-no-label": _add_label_column,                                # add a 'label' column
    "data-flat-folder": _into_class_folders("data", _load_folder),         # use <class>/<image>
    "tr-flat-folder": _into_class_folders("scans", lambda c, d, s, a: a),  # use <class>/<image>
    "sample-labels-empty": opt("--labels", "normal=0.5,pneumonia=0.5"),    # use e.g. 'normal=0.5,pneumonia=0.5'
    "sample-labels-zero": opt("--labels", "normal=1"),                     # give one label a positive weight
    "sample-prompts-not-utf8": _utf8_prompts,                              # save it as UTF-8
    "sample-out-user-folder": lambda c, d, s, a: option(a, "--out", str(d / "new-out")),  # a new or empty --out
    "sample-model-missing": lambda c, d, s, a: option(a, "--model", str(c.ldm_export)),  # the export folder of a run
    "sample-model-is-file": lambda c, d, s, a: option(a, "--model", str(c.ldm_export)),  # the export folder of a run
    "tr-tau-out-of-range": opt("--tau", "0.5"),                            # --tau must be in [0, 1]
    "tr-ldm-export": lambda c, d, s, a: option(a, "--model", str(c.bridge_export)),  # an export of synth train bridge
    "b-threads-zero": lambda c, d, s, a: option(a, "--threads", "1"),      # --threads must be >= 1
    "b-out-name-too-long": lambda c, d, s, a: option(a, "--out", str(d / "out")),  # choose a shorter path
    # augmentation
    "aug-classes-mismatch": _label_map_to_real,                            # pass label_map={...}
    "aug-label-map-unknown": _label_map_known,                             # set labels: normal, pneumonia
    "aug-quality-without-filter": _quality_filter_first,                   # run quality_filter(...) first
    # fine-tuning a synth export (issue 17)
    "pretrained-other-resolution": sets_("data.resolution", "16"),         # set data.resolution=16
    "pretrained-other-codec": sets_("model.codec", "pixel"),               # set model.codec=pixel
    "pretrained-renamed-classes": sets_("model.class_init", "fresh"),      # or set model.class_init=fresh
    # prompts and captions typed on the command line (one rule: synth.messages.prompt_problem)
    "text-negative-prompt-two-lines": opt("--negative-prompt", "blurry, cropped"),  # shorten it (one line)
    "text-translate-caption-two-lines": opt("--target", "a chest x-ray with pneumonia"),  # pass the caption
}
