"""Acceptance cases: sampling, translation, augmentation and evaluation."""
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
from tests.acceptance.cases_core import _copy_run, _truncate  # noqa: F401

# ---------------------------------------------------------------------------
# synth sample


def _pickle_bomb(d: Path) -> bytes:
    import pickle

    class Bomb:
        def __reduce__(self):
            return (os.system, (f"touch {d / 'pwned'}",))
    return pickle.dumps(Bomb())


def _export_with_pickle(c: Ctx, d: Path) -> None:
    e = copy_export(c, d)
    write(e / "unet" / "diffusion_pytorch_model.bin", _pickle_bomb(d))


def _flip_last_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-1] ^= 0x01
    p.write_bytes(bytes(data))


def _hold_lock(c: Ctx, d: Path):
    import synth.samplers.bulk as bulk

    (d / "out").mkdir()
    lock = getattr(bulk, "output_lock", None) or getattr(bulk, "OutputLock")  # the lock's API is being reworked
    return lock(d / "out")


def _same_images_as_set6(n: int):
    def check(c, d, s, out):
        problems = []
        want = {p.relative_to(c.set6).as_posix(): p.read_bytes() for p in pngs(c.set6) if int(p.stem) < n}
        got = {p.relative_to(d / "out").as_posix(): p.read_bytes() for p in pngs(d / "out")}
        if got != want:
            problems.append(f"images differ from a fresh {n}-image set ({sorted(got)} vs {sorted(want)})")
        m = json.loads((d / "out" / "manifest.json").read_text())
        if m["n_done"] != n or len(rows(d / "out")) != n:
            problems.append(f"manifest n_done {m['n_done']}, {len(rows(d / 'out'))} metadata rows; expected {n}")
        return problems
    return check


def _torn_record(c: Ctx, d: Path) -> dict:
    out = copy_set(c, d, "out")
    rec = out / ".synth" / "done" / "shard-00000.json"
    _truncate(rec, 0.4)
    return {"files": {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*")
                      if p.is_file() and ".synth" not in p.parts}}


def _check_torn(c, d, s, out):
    from synth.samplers.bulk import read_done

    o = d / "out"
    got = {p.relative_to(o).as_posix(): p.read_bytes() for p in o.rglob("*") if p.is_file() and ".synth" not in p.parts}
    problems = []
    if {k: v for k, v in got.items() if k.endswith(".png")} != {k: v for k, v in s["files"].items() if k.endswith(".png")}:
        problems.append("the redone shard's images differ from the originals")
    if read_done(o, 0) is None:
        problems.append("the torn done record was not rewritten")
    return problems


def _user_file_in_shard(c: Ctx, d: Path) -> None:
    out = copy_set(c, d, "out")
    write(out / "shard-00000" / "my-annotations.csv", "index,reader\n0,A\n")


def _shard_symlink(c: Ctx, d: Path) -> None:
    out = copy_set(c, d, "out")
    image_folder(d / "patients")
    shutil.rmtree(out / "shard-00001")
    os.symlink(d / "patients" / "normal", out / "shard-00001")


def sample_cases() -> list[Case]:
    S = lambda n, *x: (lambda c, d, s: c.sample_args(d / "out", n, *x))  # noqa: E731
    refused = nothing_written()
    return [
        Case("sample-n-0", "cli", "--n 0", nothing, S(0), "error", r"--n must be a positive", check=refused),
        Case("sample-n-negative", "cli", "--n -3", nothing, S(-3), "error", r"--n must be a positive", check=refused),
        Case("sample-steps-0", "cli", "--steps 0", nothing, lambda c, d, s: c.sample_args(d / "out", 4) + ["--steps", "0"],
             "error", r"must be positive", check=refused),
        Case("sample-unknown-sampler", "cli", "--sampler dpm++", nothing, S(4, "--sampler", "dpm++"), "error",
             r"unknown sampler 'dpm\+\+'", check=refused),
        Case("sample-labels-unknown", "cli", "--labels normal=0.5,covid=0.5 (no such class)", nothing,
             S(4, "--labels", "normal=0.5,covid=0.5"), "error", r"covid", check=refused),
        Case("sample-labels-nan", "cli", "--labels normal=nan,pneumonia=1", nothing,
             S(4, "--labels", "normal=nan,pneumonia=1"), "error", r"finite", check=refused),
        Case("sample-labels-overflow", "cli", "--labels normal=1e308,pneumonia=1e308 (sum overflows)", nothing,
             S(4, "--labels", "normal=1e308,pneumonia=1e308"), "error", r"too large", check=refused),
        Case("sample-labels-empty", "cli", "--labels '' (an unset shell variable)", nothing, S(4, "--labels", ""),
             "error", r"(?i)empty|label", check=refused),
        Case("sample-labels-commas", "cli", "--labels ',' (nothing between the commas)", nothing, S(4, "--labels", ","),
             "error", r"empty label spec", check=refused),
        Case("sample-labels-unnormalised", "cli", "--labels normal=2,pneumonia=2 (sum 4)", nothing,
             S(4, "--labels", "normal=2,pneumonia=2"), "ok", r"note: label weights sum to 4",
             check=expect_set(4, labels={"normal", "pneumonia"})),
        Case("sample-labels-zero", "cli", "--labels normal=0", nothing, S(4, "--labels", "normal=0"), "error",
             r"sum to 0", check=refused),
        Case("sample-labels-negative", "cli", "--labels normal=-1,pneumonia=2", nothing,
             S(4, "--labels", "normal=-1,pneumonia=2"), "error", r">= 0", check=refused),
        Case("sample-prompts-directory", "cli", "--prompts names a directory", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4, "--prompts", str(d)), "error", r"prompts file", check=refused),
        Case("sample-labels-and-prompts", "cli", "--labels and --prompts together",
             lambda c, d: write(d / "p.txt", "normal\n"), lambda c, d, s: c.sample_args(d / "out", 4, "--labels", "normal",
                                                                                       "--prompts", str(d / "p.txt")),
             "error", r"either --labels or --prompts", check=refused),
        Case("sample-prompts-not-utf8", "cli", "--prompts file in Latin-1", lambda c, d: write(d / "p.txt", b"pneumonie l\xe9g\xe8re\n"),
             lambda c, d, s: c.sample_args(d / "out", 4, "--prompts", str(d / "p.txt")), "error", r"not UTF-8", check=refused),
        Case("sample-prompts-empty", "cli", "--prompts file with only comments", lambda c, d: write(d / "p.txt", "# todo\n\n"),
             lambda c, d, s: c.sample_args(d / "out", 4, "--prompts", str(d / "p.txt")), "error", r"no prompts", check=refused),
        Case("sample-device-gpu0", "cli", "--device gpu0", nothing, S(4, "--device", "gpu0"), "error",
             r"not a device name", check=refused),
        Case("sample-device-cuda", "cli", "--device cuda on a CPU-only build", nothing, S(4, "--device", "cuda"),
             "error", r"--device cuda", check=refused),
        Case("sample-batch-size-0", "cli", "--batch-size 0", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4) + ["--batch-size", "0"],
             "error", r"--batch-size must be a positive", check=refused),
        Case("sample-shard-size-0", "cli", "--shard-size 0", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4) + ["--shard-size", "0"], "error", r"shard-size", check=refused),
        Case("sample-chunk-size-negative", "cli", "--chunk-size -1", nothing, S(4, "--chunk-size", "-1"), "error",
             r"chunk_size|chunk-size", check=refused),
        Case("sample-guidance-nan", "cli", "--guidance nan", nothing, S(4, "--guidance", "nan"), "error",
             r"(?i)guidance", check=refused),
        Case("sample-guidance-inf", "cli", "--guidance inf", nothing, S(4, "--guidance", "inf"), "error",
             r"(?i)guidance", check=refused),
        Case("sample-pickle-refused", "cli",
             "--model folder also holds unet/diffusion_pytorch_model.bin (a pickle that runs a command)",
             _export_with_pickle, lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error",
             r"--allow-pickle", check=all_checks(no_file("pwned"), refused)),
        Case("sample-pickle-allowed", "cli", "the same folder with --allow-pickle", _export_with_pickle,
             lambda c, d, s: c.sample_args(d / "out", 4, "--allow-pickle", model=d / "export"), "ok",
             check=all_checks(no_file("pwned"), expect_set(4))),
        Case("sample-truncated-safetensors", "cli", "the export's unet safetensors cut in half",
             lambda c, d: _truncate(copy_export(c, d) / "unet" / "diffusion_pytorch_model.safetensors"),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error", r"diffusion_pytorch_model",
             check=refused),
        Case("sample-modified-weights", "cli", "one byte of the unet weights flipped (hash mismatch)",
             lambda c, d: _flip_last_byte(copy_export(c, d) / "unet" / "diffusion_pytorch_model.safetensors"),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error", r"SHA-256", check=refused),
        Case("sample-missing-synth-json", "cli", "the export's synth.json deleted",
             lambda c, d: (copy_export(c, d) / "synth.json").unlink(),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error", r"synth\.json|not a synth export",
             check=refused),
        Case("sample-synth-json-not-json", "cli", "synth.json replaced by a YAML text",
             lambda c, d: write(copy_export(c, d) / "synth.json", "kind: ldm\n"),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "export"), "error", r"not valid JSON", check=refused),
        Case("sample-model-is-file", "cli", "--model names the weights file", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4, model=c.ldm_export / "unet" / "diffusion_pytorch_model.safetensors"),
             "error", r"is a file", check=refused),
        Case("sample-model-missing", "cli", "--model names a folder that does not exist", nothing,
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "nope"), "error", r"does not exist", check=refused),
        Case("sample-model-user-folder", "cli", "--model names an ordinary folder of PNGs",
             lambda c, d: image_folder(d / "pics"), lambda c, d, s: c.sample_args(d / "out", 4, model=d / "pics"),
             "error", r"not a synth export", check=refused),
        Case("sample-model-unfinished-run", "cli", "--model names a run folder whose training has not finished (no export)",
             lambda c, d: shutil.rmtree(_copy_run(c, d) / "export"),
             lambda c, d, s: c.sample_args(d / "out", 4, model=d / "run"), "error", r"without an export", check=refused),
        Case("sample-seed-negative", "cli", "--seed -1 (seeds are [0, 2**63) everywhere, as in the config)", nothing,
             S(4, "--seed", "-1"), "error", r"--seed -1 is outside \[0, 2\*\*63\)", check=nothing_written("out")),
        Case("sample-out-is-file", "cli", "--out names an existing file", lambda c, d: write(d / "out", "my notes"),
             S(4), "error", r"(?i)file"),
        Case("sample-out-user-folder", "cli", "--out is a non-empty folder of the user's",
             lambda c, d: write(d / "out" / "patients.csv", "id\n1\n"), S(4), "error", r"not empty",
             check=lambda c, d, s, o: [] if sorted(p.name for p in (d / "out").iterdir()) == ["patients.csv"]
             else [f"wrote {sorted(p.name for p in (d / 'out').iterdir())}"]),
        Case("sample-out-user-folder-overwrite", "cli", "the same with --overwrite",
             lambda c, d: write(d / "out" / "patients.csv", "id\n1\n"), S(4, "--overwrite"), "error", r"not empty",
             check=lambda c, d, s, o: [] if sorted(p.name for p in (d / "out").iterdir()) == ["patients.csv"]
             else [f"wrote {sorted(p.name for p in (d / 'out').iterdir())}"]),
        Case("sample-other-settings", "cli", "the same --out again with another --guidance (no --overwrite)",
             lambda c, d: copy_set(c, d, "out"), S(6, "--guidance", "3"), "error", r"differs in: .*guidance"),
        Case("sample-overwrite-user-file", "cli", "--overwrite on a set whose shard folder holds the user's my-annotations.csv",
             _user_file_in_shard, S(6, "--overwrite", "--guidance", "3"), "error", r"my-annotations\.csv.*nothing was deleted"),
        Case("sample-overwrite-shard-symlink", "cli", "--overwrite on a set whose shard-00001 is a symlink to a patient folder",
             _shard_symlink, S(6, "--overwrite", "--guidance", "3"), "error", r"shard-00001"),
        Case("sample-smaller-n", "cli", "--n 3 into a 6-image set", lambda c, d: copy_set(c, d, "out"), S(3), "error",
             r"--shrink"),
        Case("sample-shrink", "cli", "--n 3 --shrink into a 6-image set", lambda c, d: copy_set(c, d, "out"), S(3, "--shrink"),
             "ok", r"--shrink: deleted 3 images", check=_same_images_as_set6(3),
             replaced=("out/shard-00000/0000000[3-9].png", "out/shard-00001/*", "out/.synth/*", "out/metadata.jsonl", "out/README.md",
                       "out/manifest.json")),
        Case("sample-torn-done-record", "cli", "a shard's done record cut short (power loss), same command again",
             _torn_record, S(6), "ok", check=_check_torn, replaced=("out/.synth/*",)),
        Case("sample-concurrent", "cli", "a second synth sample into a folder another run holds (OutputLock)",
             _hold_lock, S(4), "error", r"being written by|in use by", check=refused, teardown=lambda lock: lock.release()),
    ]


# ---------------------------------------------------------------------------
# synth translate


def translate_cases() -> list[Case]:
    T = lambda *x, **kw: (lambda c, d, s: c.translate_args(d / "out", *x, **kw))  # noqa: E731
    refused = nothing_written()

    def two_channel(c, d):
        imgs, labels = phantom_arrays(4)
        npz(d / "in.npz", test_images=__import__("numpy").stack([imgs, imgs], -1), test_labels=labels)

    def big(c, d):
        import numpy as np

        from synth.data import phantom_domains

        imgs, dom = phantom_domains(96, 32)
        npz(d / "in.npz", test_images=imgs[dom == 1][:4], test_labels=np.zeros((4, 1), np.int64))

    return [
        Case("tr-unknown-domain", "cli", "--source ct (not a domain of the model)", nothing, T(source="ct"), "error",
             r"unknown domain 'ct'", check=refused),
        Case("tr-tau-out-of-range", "cli", "--tau 1.5", nothing, T("--tau", "1.5"), "error", r"--tau must be in \[0, 1\]",
             check=refused),
        Case("tr-tau-nan", "cli", "--tau nan", nothing, T("--tau", "nan"), "error", r"--tau", check=refused),
        Case("tr-guidance-nan", "cli", "--guidance nan", nothing, T("--guidance", "nan"), "error", r"(?i)guidance",
             check=refused),
        Case("tr-steps-0", "cli", "--steps 0", nothing, lambda c, d, s: c.translate_args(d / "out") + ["--steps", "0"],
             "error", r"must be positive", check=refused),
        Case("tr-ldm-export", "cli", "--model is an LDM export, not a bridge", nothing,
             lambda c, d, s: c.translate_args(d / "out", model=c.ldm_export), "error", r"not a bridge", check=refused),
        Case("tr-input-missing", "cli", "--input names a missing file", nothing, T(inp=Path("/no/such/input.npz")),
             "error", r"does not exist", check=refused),
        Case("tr-input-2-channel", "cli", "--input npz of 2-channel images", two_channel,
             lambda c, d, s: c.translate_args(d / "out", inp=d / "in.npz"), "error", r"shape|channel", check=refused),
        Case("tr-input-32px", "cli", "--input of 32x32 images for a 16x16 model (resized, as documented)", big,
             lambda c, d, s: c.translate_args(d / "out", inp=d / "in.npz"), "ok", check=expect_set(4)),
        Case("tr-same-domain", "cli", "--source dim --target dim", nothing, T(target="dim"), "ok",
             r"note: source and target are both 'dim'", check=expect_set(6)),
        Case("tr-split-missing", "cli", "--split val on an npz that has only a test split", nothing, T("--split", "val"),
             "error", r"val", check=refused),
        Case("tr-flat-folder", "cli", "--input a flat folder of PNGs (no class sub-folders)",
             lambda c, d: [write(d / "scans" / f"{i}.png", png_bytes(grey(i))) for i in range(3)],
             lambda c, d, s: c.translate_args(d / "out", inp=d / "scans"), "error", r"class sub-folders", check=refused),
        Case("api-translate-3-channel", "api", "BridgeGenerator.translate() of RGB (3-channel) images", nothing,
             lambda c, d, s: _bridge(c).translate(__import__("torch").zeros(2, 3, 16, 16, dtype=__import__("torch").uint8),
                                                  "dim", "clean"), "error", r"1-channel"),
        Case("api-translate-tau", "api", "BridgeGenerator.translate(..., tau=1.5)", nothing,
             lambda c, d, s: _bridge(c).translate(__import__("torch").zeros(2, 1, 16, 16, dtype=__import__("torch").uint8),
                                                  "dim", "clean", tau=1.5), "error", r"tau must be in \[0, 1\]"),
        Case("api-translate-unknown-domain", "api", "BridgeGenerator.translate(x, 'ct', 'clean')", nothing,
             lambda c, d, s: _bridge(c).translate(__import__("torch").zeros(2, 1, 16, 16, dtype=__import__("torch").uint8),
                                                  "ct", "clean"), "error", r"unknown domain 'ct'"),
        Case("api-load-generator-missing", "api", "load_generator('runs/typo/export')", nothing,
             lambda c, d, s: __import__("synth.samplers.generator", fromlist=["load_generator"]).load_generator(d / "typo"),
             "error", r"does not exist"),
    ]


def _bridge(c: Ctx):
    from synth.samplers.generator import load_generator

    return c._once("bridge_gen", lambda: load_generator(c.bridge_export))


# ---------------------------------------------------------------------------
# synth.augment


def _edit_metadata(c: Ctx, d: Path, edit: Callable[[list[str]], list[str]]) -> Path:
    s = copy_set(c, d)
    lines = (s / "metadata.jsonl").read_text().splitlines()
    write(s / "metadata.jsonl", "\n".join(edit(lines)) + "\n")
    return s


def _row_with(lines: list[str], k: int, **change) -> list[str]:
    row = json.loads(lines[k])
    for key, v in change.items():
        if v is None:
            row.pop(key, None)
        else:
            row[key] = v
    return lines[:k] + [json.dumps(row)] + lines[k + 1:]


class _Real:
    """A tiny real data set with .classes and .targets (torchvision style)."""

    def __init__(self, n: int = 8, classes=("normal", "pneumonia")):
        import torch

        self.classes = list(classes)
        self.targets = [i % len(classes) for i in range(n)]
        self.x = torch.zeros(n, 1, 16, 16)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.x[i], self.targets[i]


def augment_cases() -> list[Case]:
    def Set(**kw):
        return lambda c, d, s: __import__("synth.augment", fromlist=["SyntheticSet"]).SyntheticSet(d / "set", **kw)

    def mix(**kw):
        def action(c, d, s):
            from synth.augment import mix as mix_

            return mix_(_Real(), d / "set", **kw)
        return action

    def symlink_out(c, d):
        s = copy_set(c, d)
        write(d / "outside" / "secret.png", png_bytes(grey(7)))
        p = s / rows(s)[0]["file_name"]
        p.unlink()
        os.symlink(d / "outside" / "secret.png", p)

    def missing_image(c, d):
        s = copy_set(c, d)
        (s / rows(s)[2]["file_name"]).unlink()

    def incomplete(c, d):
        s = copy_set(c, d)
        m = json.loads((s / "manifest.json").read_text())
        m["n_requested"] = 10
        write(s / "manifest.json", json.dumps(m))

    return [
        Case("aug-dotdot", "api", "SyntheticSet on a set whose metadata.jsonl names ../../etc/passwd",
             lambda c, d: _edit_metadata(c, d, lambda ls: _row_with(ls, 1, file_name="../../etc/passwd")), Set(),
             "error", r"\.\.|outside"),
        Case("aug-absolute", "api", "metadata.jsonl row with file_name /etc/passwd",
             lambda c, d: _edit_metadata(c, d, lambda ls: _row_with(ls, 0, file_name="/etc/passwd")), Set(), "error",
             r"(?i)absolute|outside|relative"),
        Case("aug-non-object", "api", "metadata.jsonl with a line that is a JSON list",
             lambda c, d: _edit_metadata(c, d, lambda ls: ls[:2] + ['["shard-00000/00000002.png", "normal"]'] + ls[3:]),
             Set(), "error", r"not a JSON object"),
        Case("aug-not-json", "api", "metadata.jsonl with a half-written last line",
             lambda c, d: _edit_metadata(c, d, lambda ls: ls[:-1] + [ls[-1][:20]]), Set(), "error", r"not JSON"),
        Case("aug-missing-file-name", "api", "metadata.jsonl row without file_name",
             lambda c, d: _edit_metadata(c, d, lambda ls: _row_with(ls, 3, file_name=None)), Set(), "error", r"file_name"),
        Case("aug-file-name-number", "api", "metadata.jsonl row with file_name 3 (a number)",
             lambda c, d: _edit_metadata(c, d, lambda ls: _row_with(ls, 3, file_name=3)), Set(), "error", r"file_name"),
        Case("aug-symlink-out", "api", "an image of the set replaced by a symlink to a file outside it", symlink_out,
             Set(), "error", r"(?i)symlink|outside"),
        Case("aug-missing-image", "api", "one PNG of the set deleted, then set[2]", missing_image,
             lambda c, d, s: __import__("synth.augment", fromlist=["SyntheticSet"]).SyntheticSet(d / "set")[2], "error",
             r"missing"),
        Case("aug-incomplete-set", "api", "SyntheticSet on a set whose manifest asks for more than it holds", incomplete,
             Set(), "error", r"incomplete"),
        Case("aug-not-a-set", "api", "SyntheticSet on an ordinary image folder", lambda c, d: image_folder(d / "set"), Set(),
             "error", r"not a synth set"),
        Case("aug-mix-fraction-1.5", "api", "mix(real, set, fraction=1.5)", lambda c, d: copy_set(c, d), mix(fraction=1.5),
             "error", r"outside \[0, 1\]"),
        Case("aug-mix-fraction-nan", "api", "mix(real, set, fraction=float('nan'))", lambda c, d: copy_set(c, d),
             mix(fraction=float("nan")), "error", r"\[0, 1\]"),
        Case("aug-label-map-unknown", "api", "mix(..., label_map={'covid': 'pneumonia'}) (no such synthetic class)",
             lambda c, d: copy_set(c, d), mix(fraction=0.3, label_map={"covid": "pneumonia"}), "error", r"covid"),
        Case("aug-label-map-unknown-target", "api", "mix(..., label_map={'pneumonia': 'bacterial'}) (no such real class)",
             lambda c, d: copy_set(c, d), mix(fraction=0.3, label_map={"pneumonia": "bacterial"}), "error", r"bacterial"),
        Case("aug-classes-mismatch", "api", "mix() of a set labelled normal/pneumonia into real classes cat/dog",
             lambda c, d: copy_set(c, d),
             lambda c, d, s: __import__("synth.augment", fromlist=["mix"]).mix(_Real(classes=("cat", "dog")), d / "set"),
             "error", r"match no real class"),
        Case("aug-mix-ok", "api", "mix(real, set, fraction=0.5) with classes in another case/spelling (Normal, PNEUMONIA)",
             lambda c, d: copy_set(c, d),
             lambda c, d, s: __import__("synth.augment", fromlist=["mix"]).mix(_Real(classes=("Normal", "PNEUMONIA")),
                                                                               d / "set", fraction=0.5), "ok",
             check=lambda c, d, s, o: _check_mix(o.value)),
        Case("aug-quality-without-filter", "api", "SyntheticSet(set, quality='keep') before any quality_filter",
             lambda c, d: copy_set(c, d), Set(quality="keep"), "error", r"quality_filter"),
        Case("aug-batch-sampler-too-many", "api", "MixedBatchSampler(ds, 4, synthetic_per_batch=5)",
             lambda c, d: copy_set(c, d),
             lambda c, d, s: __import__("synth.augment", fromlist=["MixedBatchSampler"]).MixedBatchSampler(
                 mix(fraction=0.5)(c, d, s), 4, synthetic_per_batch=5), "error", r"synthetic_per_batch"),
        Case("aug-online-n-0", "api", "OnlineSynthetic(generator, n=0)", nothing,
             lambda c, d, s: __import__("synth.augment", fromlist=["OnlineSynthetic"]).OnlineSynthetic(_ldm(c), 0),
             "error", r"positive"),
    ]


def _ldm(c: Ctx):
    from synth.samplers.generator import load_generator

    return c._once("ldm_gen", lambda: load_generator(c.ldm_export))


def _check_mix(ds) -> list[str]:
    items = [ds[i] for i in range(len(ds))]
    syn = [it for it in items if it[2]]
    if len(ds) != 16 or len(syn) != 8:
        return [f"{len(ds)} items ({len(syn)} synthetic), expected 16 (8 synthetic)"]
    if {int(it[1]) for it in syn} - {0, 1}:
        return ["synthetic labels outside the real classes"]
    return []


# ---------------------------------------------------------------------------
# synth eval


def _guard_eval():
    """Stop ``synth eval augment`` at its first generator training (the study would take hours): return the undo."""
    import synth.evaluation.protocol as ev

    orig = ev.train_generator

    def stop(cfg, run, log):
        raise _WentAhead(f"started the protocol: training generator {Path(run).name} with eval defaults "
                         f"({len(ev.plan_cells(cfg.eval))} classifiers planned)")

    ev.train_generator = stop
    return lambda: setattr(ev, "train_generator", orig)


def _eval_augment(cfg_text: str | None, *extra: str):
    def setup(c, d):
        if cfg_text is not None:
            write(d / "cfg.yaml", cfg_text)
        return _guard_eval()

    def action(c, d, s):
        return ["eval", "augment", *(["--config", str(d / "cfg.yaml")] if cfg_text is not None else []),
                "--out", str(d / "study"), *extra]

    return setup, action


TINY_YAML = ("data: {name: phantom, resolution: 16, phantom_items: 48}\n"
             "model: {unet: {block_out_channels: [16, 32], attention_levels: [false, false], norm_num_groups: 8}}\n"
             "train: {steps: 20, batch_size: 8}\n")


def eval_cases() -> list[Case]:
    no_eval = _eval_augment(TINY_YAML)
    no_cfg = _eval_augment(None)
    frac0 = _eval_augment(TINY_YAML + "eval: {fractions: [0.0, 1.0]}\n")
    frac15 = _eval_augment(TINY_YAML, "--set", "eval.fractions=[0.1,1.5]")

    def one_image(c, d):
        must_succeed(c.sample_args(d / "set1", 1))

    return [
        Case("eval-augment-no-eval-section", "cli", "synth eval augment --config <a training preset without an eval: section>",
             *no_eval, "error", r"eval", teardown=lambda undo: undo()),
        Case("eval-augment-no-config", "cli", "synth eval augment --out study (no --config at all)", *no_cfg, "error",
             r"--config|eval", teardown=lambda undo: undo()),
        Case("eval-augment-fraction-0", "cli", "eval.fractions: [0.0, 1.0]", *frac0, "error", r"eval\.fractions: 0\.0",
             teardown=lambda undo: undo()),
        Case("eval-augment-fraction-1.5", "cli", "--set eval.fractions=[0.1,1.5]", *frac15, "error",
             r"eval\.fractions: 1\.5", teardown=lambda undo: undo()),
        Case("eval-augment-unknown-arm", "cli", "--set eval.arms=[real,bogus]",
             *_eval_augment(TINY_YAML, "--set", "eval.arms=[real,bogus]"),
             "error", r"bogus", teardown=lambda undo: undo()),
        Case("eval-fidelity-fraction", "cli", "synth eval fidelity --fraction 1.5", lambda c, d: copy_set(c, d),
             lambda c, d, s: ["eval", "fidelity", "--set", str(d / "set"), "--data", "phantom", "--fraction", "1.5"],
             "error", r"fraction"),
        Case("eval-fidelity-missing-set", "cli", "synth eval fidelity --set <missing folder>", nothing,
             lambda c, d, s: ["eval", "fidelity", "--set", str(d / "nope"), "--data", "phantom"], "error",
             r"does not exist"),
        Case("eval-fidelity-one-image", "cli", "synth eval fidelity on a 1-image set", one_image,
             lambda c, d, s: ["eval", "fidelity", "--set", str(d / "set1"), "--data", "phantom"], "error",
             r"at least 2"),
        Case("eval-fidelity-user-folder", "cli", "synth eval fidelity --set <an ordinary image folder>",
             lambda c, d: image_folder(d / "pics"),
             lambda c, d, s: ["eval", "fidelity", "--set", str(d / "pics"), "--data", "phantom"], "error",
             r"not a synth set"),
    ]


