"""Hostile and damaged model folders: pickle weights, changed or truncated safetensors, unreadable or
malformed synth.json, missing parts, newer formats, wrong paths.  Each is one ArtifactError line naming
the file and the fix (and ``error: ...``, exit 2, no traceback at the CLI)."""
import json
import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from synth.samplers.generator import ArtifactError, load_generator, read_artifact
from tests.conftest import tiny_cfg
from tests.samplers.test_bulk import base_args, cli

UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture
def export(tiny_export, tmp_path, one_thread):
    """A private copy of the tiny LDM's run folder; returns its export folder (tests damage it)."""
    shutil.copytree(tiny_export.parent, tmp_path / "run", ignore=shutil.ignore_patterns("checkpoints", "logs"))
    return tmp_path / "run" / "export"


@pytest.fixture(scope="module")
def bridge_export(tmp_path_factory):
    """An untrained tiny pixel bridge, exported (loading does not care how well it was trained)."""
    from synth.codecs import PixelCodec
    from synth.models import build_flow_unet
    from tests.trainers.test_bridge import BRIDGE, DOMAINS
    from synth.trainers.export import export_bridge

    torch.manual_seed(0)
    cfg = tiny_cfg(*BRIDGE)
    unet = build_flow_unet(16, 1, [16, 32], 1, 8, 8, [False, False], len(DOMAINS))
    d = tmp_path_factory.mktemp("bridge-safety")
    return export_bridge(d / "export", unet, PixelCodec(), DOMAINS, cfg)


class Unpickled:
    """Unpickling this creates ``marker``: proof that a pickle file was loaded (it must never be)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def plant_pickle(folder: Path, name: str, marker: Path) -> Path:
    f = folder / name
    f.write_bytes(pickle.dumps(Unpickled(marker)))
    return f


def edit_meta(export: Path, **changes) -> None:
    meta = json.loads((export / "synth.json").read_text())
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    (export / "synth.json").write_text(json.dumps(meta))


def flip_last_byte(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[-1] ^= 0x01
    f.write_bytes(bytes(b))


# ---------------------------------------------------------------------------
# Pickle weights


@pytest.mark.parametrize("name", ["unet/diffusion_pytorch_model.bin", "text_encoder/pytorch_model.bin", "model.ckpt",
                                  "unet/weights.pt", "vae.pth", "extra.pkl"])
def test_pickle_weights_are_refused_and_never_loaded(export, tmp_path, name):
    marker = tmp_path / "pickle-ran"
    plant_pickle(export, name, marker)
    with pytest.raises(ArtifactError, match=rf"'{re.escape(str(export / name))}' holds pickle weights, which can run code when loaded; "
                                            rf"convert it to safetensors or delete it, or pass --allow-pickle"):
        load_generator(export)
    g = load_generator(export, allow_pickle=True)  # allowed: still loads the safetensors weights only
    assert g.sample([g.schema.condition(0)], [0], steps=2).images.shape == (1, 1, 16, 16)
    assert not marker.exists()


def test_bridge_pickle_refused_and_allowed(bridge_export, tmp_path):
    from synth.samplers.bridge import BridgeGenerator

    export = tmp_path / "export"
    shutil.copytree(bridge_export, export)
    plant_pickle(export, "unet/diffusion_pytorch_model.bin", tmp_path / "ran")
    with pytest.raises(ArtifactError, match="diffusion_pytorch_model.bin' holds pickle weights"):
        BridgeGenerator.from_export(export)
    g = load_generator(export, allow_pickle=True)
    assert g.kind == "bridge" and g.weights_sha256 == json.loads((export / "synth.json").read_text())["weights_sha256"]
    assert not (tmp_path / "ran").exists()


# ---------------------------------------------------------------------------
# Weights verified against synth.json


def test_export_records_per_file_hashes_and_loading_verifies_them(export):
    import hashlib

    meta = json.loads((export / "synth.json").read_text())
    assert set(meta["weights_files"]) == {UNET, "text_encoder/model.safetensors"}
    assert meta["weights_files"][UNET] == hashlib.sha256((export / UNET).read_bytes()).hexdigest()
    assert load_generator(export).weights_sha256 == meta["weights_sha256"]


def test_modified_weights_file_is_named(export):
    flip_last_byte(export / UNET)  # still a valid safetensors file: only the hash can tell
    with pytest.raises(ArtifactError, match=rf"'{re.escape(str(export / UNET))}' was modified or damaged after export .*"
                                            r"re-export the model .* or restore the file"):
        load_generator(export)


def test_modified_weights_of_an_export_recording_one_hash(export):
    edit_meta(export, weights_files=None)  # exports written before per-file hashes
    load_generator(export)
    flip_last_byte(export / "text_encoder" / "model.safetensors")
    with pytest.raises(ArtifactError, match=r"the weights in '.*' \(text_encoder/model.safetensors, unet/.*\) were "
                                            r"modified or damaged after export \(their SHA-256 differs from synth.json"):
        load_generator(export)


def test_added_weights_file_is_named(export):
    shutil.copy(export / UNET, export / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    with pytest.raises(ArtifactError, match=r"diffusion_pytorch_model.fp16.safetensors' was added after export"):
        load_generator(export)


def test_weights_changed_while_loading(export, monkeypatch):
    from diffusers import UNet2DConditionModel

    original = UNet2DConditionModel.from_pretrained.__func__

    def load_then_touch(cls, *a, **kw):
        out = original(cls, *a, **kw)
        st = (export / UNET).stat()
        os.utime(export / UNET, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        return out

    monkeypatch.setattr(UNet2DConditionModel, "from_pretrained", classmethod(load_then_touch))
    with pytest.raises(ArtifactError, match=rf"'{re.escape(str(export / UNET))}' changed while it was loaded"):
        load_generator(export)


def test_manifest_records_the_verified_hash(export, tmp_path):
    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.labels import LabelSchema

    g = load_generator(export)
    meta = read_artifact(export)
    spec = parse_label_spec("normal", LabelSchema.from_json(meta["labels"]))
    res = run_bulk(BulkRequest(model=str(export), out=str(tmp_path / "set"), n=2, spec=spec, steps=2), g, progress=False)
    assert res.manifest["model"]["weights_sha256"] == g.weights_sha256 == meta["weights_sha256"]


# ---------------------------------------------------------------------------
# Damaged safetensors files


@pytest.mark.parametrize("damage, message", [
    (lambda b: b[: len(b) // 2], r"is truncated \(\d+ bytes; its header needs \d+\)"),
    (lambda b: b"", r"is empty \(0 bytes\)"),
    (lambda b: b[:5], r"is truncated \(5 bytes, shorter than a safetensors header\)"),
    (lambda b: b"\xff" * 8 + b[8:], r"has a damaged header \(its first 8 bytes are not a safetensors header length\)"),
    (lambda b: b[:8] + b"#" * 16 + b[24:], r"has a damaged header \(not JSON\)"),
    (lambda b: b[:60], r"is truncated inside its header \(60 bytes; the header alone needs \d+\)"),
], ids=["half", "zero-bytes", "five-bytes", "garbage-length", "garbage-json", "cut-in-header"])
def test_damaged_safetensors_is_one_line(export, damage, message):
    f = export / UNET
    f.write_bytes(damage(f.read_bytes()))
    with pytest.raises(ArtifactError, match=rf"'{re.escape(str(f))}' {message}; re-export the model"):
        load_generator(export)


def test_damaged_bridge_weights(bridge_export, tmp_path):
    export = tmp_path / "export"
    shutil.copytree(bridge_export, export)
    f = export / UNET
    f.write_bytes(f.read_bytes()[:1000])
    with pytest.raises(ArtifactError, match=r"is truncated .*'synth train bridge'"):
        load_generator(export)


# ---------------------------------------------------------------------------
# Unreadable files


def test_unreadable_synth_json(export, monkeypatch):
    real = Path.read_bytes

    def deny(self):
        if self.name == "synth.json":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(ArtifactError, match=rf"cannot read '{re.escape(str(export / 'synth.json'))}': Permission denied; check its permissions"):
        read_artifact(export)


def test_unreadable_weights(export, monkeypatch):
    import builtins

    import synth.models

    def deny(path, *a, **kw):
        if str(path).endswith(".safetensors"):
            raise PermissionError(13, "Permission denied", str(path))
        return builtins.open(path, *a, **kw)

    monkeypatch.setattr(synth.models, "open", deny, raising=False)
    with pytest.raises(ArtifactError, match=r"cannot read '.*\.safetensors': Permission denied"):
        load_generator(export)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root reads any file")
def test_unreadable_folder_for_real(export):
    os.chmod(export, 0)
    try:
        with pytest.raises(ArtifactError, match="Permission denied"):
            load_generator(export)
    finally:
        os.chmod(export, 0o755)


# ---------------------------------------------------------------------------
# synth.json and the folder layout


@pytest.mark.parametrize("text, message", [
    ("{not json", r"synth.json' is not valid JSON \(Expecting property name"),
    ("", r"synth.json' is not valid JSON"),
    (b"\xff\xfe garbage", r"synth.json' is not valid JSON \(not UTF-8 text\)"),
    ("[1, 2]", r"synth.json' holds a JSON list, not an object"),
    ('"ldm"', r"synth.json' holds a JSON str, not an object"),
    ("[" * 100000 + "]" * 100000, r"synth.json' is not a synth.json \(JSON nested too deeply\)|synth.json' is not valid JSON"),
])
def test_synth_json_not_json_or_wrong_type(export, text, message):
    f = export / "synth.json"
    f.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ArtifactError, match=message + r".*re-export the model"):
        read_artifact(export)


@pytest.mark.parametrize("changes, message", [
    ({"resolution": "big"}, r"'resolution' is 'big', expected a positive integer"),
    ({"resolution": True}, r"'resolution' is True, expected a positive integer"),
    ({"labels": None}, r"'labels' is missing, expected a label schema"),
    ({"labels": ["a", "b"]}, r"'labels' is \['a', 'b'\], expected a label schema"),
    ({"labels": {"classes": []}}, r"'labels' is .*, expected a valid label schema \(label schema has no classes"),
    ({"labels": {"classes": ["a"], "colour": 1}}, r"'labels' is .*, expected a valid label schema \(.*colour"),
    ({"codec": "jpeg"}, r"'codec' is 'jpeg', expected 'pixel' or 'vae'"),
    ({"prediction_type": 3}, r"'prediction_type' is 3, expected"),
    ({"max_length": None}, r"'max_length' is missing"),
    ({"weights_sha256": None}, r"'weights_sha256' is missing, expected the 64-hex-digit SHA-256"),
    ({"weights_files": ["x"]}, r"'weights_files' is \['x'\], expected an object"),
    ({"default_sampling": "fast"}, r"'default_sampling' is 'fast', expected a JSON object"),
    ({"format_version": "1"}, r"'format_version' is '1', expected a positive integer"),
])
def test_synth_json_fields_of_wrong_type(export, changes, message):
    edit_meta(export, **changes)
    with pytest.raises(ArtifactError, match=rf"'{re.escape(str(export / 'synth.json'))}': {message}.*re-export the model"):
        read_artifact(export)


def test_newer_format_and_unknown_kind(export):
    edit_meta(export, format_version=2)
    with pytest.raises(ArtifactError, match=r"has format_version 2, newer than this synth reads \(1\); upgrade synth"):
        load_generator(export)
    edit_meta(export, format_version=1, kind="video")
    with pytest.raises(ArtifactError, match=r"holds a 'video' model, which this version cannot load; upgrade synth"):
        load_generator(export)


@pytest.mark.parametrize("remove, message", [
    ("labels.json", r"is incomplete: 'labels.json' is missing"),
    ("config.yaml", r"is incomplete: 'config.yaml' is missing"),
    ("unet", r"is incomplete: the 'unet' folder is missing"),
    (UNET, r"is incomplete: 'unet/diffusion_pytorch_model.safetensors' is missing"),
    ("unet/config.json", r"is incomplete: 'unet/config.json' is missing"),
    ("text_encoder", r"is incomplete: the 'text_encoder' folder is missing"),
    ("tokenizer", r"is incomplete: the 'tokenizer' folder is missing"),
    ("scheduler/scheduler_config.json", r"is incomplete: 'scheduler/scheduler_config.json' is missing"),
])
def test_missing_parts(export, remove, message):
    target = export / remove
    shutil.rmtree(target) if target.is_dir() else target.unlink()
    with pytest.raises(ArtifactError, match=message + r"; re-export the model \(run the same 'synth train ldm'"):
        load_generator(export)


def test_damaged_component_config_and_scheduler(export):
    (export / "scheduler" / "scheduler_config.json").write_text("{")
    with pytest.raises(ArtifactError, match=r"scheduler_config.json' is not a valid scheduler config"):
        load_generator(export)
    shutil.copy(export.parent / "config.yaml", export / "scheduler" / "scheduler_config.json")  # restore-ish: wrong file
    (export / "unet" / "config.json").write_text("{oops")
    with pytest.raises(ArtifactError, match=rf"cannot load '{re.escape(str(export / 'unet'))}': .*not a valid JSON file"):
        load_generator(export)


def test_wrong_paths(export, tmp_path):
    with pytest.raises(ArtifactError, match=r"is a file, not a model folder; pass its folder '.*export'"):
        read_artifact(export / "synth.json")
    with pytest.raises(ArtifactError, match=r"is a file, not a model folder; pass the export folder of a run"):
        read_artifact(export / "labels.json")
    (export / "synth.json").unlink()
    with pytest.raises(ArtifactError, match=r"export' has no synth.json: its export was interrupted or damaged; "
                                            r"run 'synth train ldm --run .*' again to re-export it"):
        read_artifact(export.parent)
    shutil.rmtree(export)
    with pytest.raises(ArtifactError, match=r"is a run folder of 'synth train ldm' without an export \(its training has not finished\); "
                                            r"run 'synth train ldm --run .*' again"):
        read_artifact(export.parent)
    ae = tmp_path / "ae" / "export"
    (ae / "vae").mkdir(parents=True)
    (ae / "metrics.json").write_text("{}")
    with pytest.raises(ArtifactError, match=r"holds an autoencoder export, not a generator; use it as model.autoencoder"):
        read_artifact(ae.parent)


def test_ldm_loader_refuses_a_bridge(bridge_export):
    from synth.samplers.generator import LDMGenerator

    with pytest.raises(ArtifactError, match=r"holds a 'bridge' model, not a text/label diffusion model"):
        LDMGenerator.from_export(bridge_export)


# ---------------------------------------------------------------------------
# The command line: one line, exit 2, nothing written; --allow-pickle


def test_cli_sample_refuses_pickle_and_damage_then_allows(export, tmp_path):
    plant_pickle(export, "unet/diffusion_pytorch_model.bin", tmp_path / "ran")
    p = cli(*base_args(export, tmp_path / "out", 2), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "diffusion_pytorch_model.bin' holds pickle weights" in last and "--allow-pickle" in last
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.png"))
    cli(*base_args(export, tmp_path / "out", 2, "--allow-pickle"))
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["model"]["weights_sha256"] == json.loads((export / "synth.json").read_text())["weights_sha256"]
    assert not (tmp_path / "ran").exists()
    f = export / UNET
    f.write_bytes(f.read_bytes()[:100])
    p = cli(*base_args(export, tmp_path / "out2", 2, "--allow-pickle"), check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert "is truncated" in p.stderr.strip().splitlines()[-1]


def test_cli_translate_refuses_pickle_then_allows(bridge_export, tmp_path):
    from synth.data import phantom_domains

    export = tmp_path / "export"
    shutil.copytree(bridge_export, export)
    plant_pickle(export, "unet/diffusion_pytorch_model.bin", tmp_path / "ran")
    imgs, _ = phantom_domains(4, 16)
    np.savez(tmp_path / "in.npz", test_images=imgs, test_labels=np.zeros((4, 1), dtype=np.int64))
    args = ["translate", "--model", str(export), "--input", str(tmp_path / "in.npz"), "--source", "dim", "--target", "clean",
            "--steps", "2", "--out", str(tmp_path / "out"), "--quiet"]
    p = cli(*args, check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "holds pickle weights" in p.stderr.strip().splitlines()[-1]
    cli(*args, "--allow-pickle")
    assert len(list((tmp_path / "out").rglob("*.png"))) == 4 and not (tmp_path / "ran").exists()
