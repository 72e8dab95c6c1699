"""Provenance inside every synthetic file: an image that leaves its folder still says it is synthetic.

A PNG written by ``synth sample`` or ``synth translate`` carries PNG text chunks (tEXt, or iTXt for text
beyond Latin-1):

* ``Software``: ``synth <version>``;
* ``Description``: one human sentence ("Synthetic image made by synth ...; not a patient image");
* ``synth:synthetic``: ``true``;
* ``synth:provenance``: JSON with the generator (model id, weights SHA-256), the image's seed, class and
  prompt, guidance, sampler and steps; for a translation also ``translated: true``, the input's hash, its
  row number and the source and target domains.

Webdataset samples carry the same JSON fields in their ``<index>.json``. ``synth inspect`` reads them
back (:func:`inspect_path`). The chunks depend only on the image's settings, never on time or machine,
so identical settings still give identical bytes.
"""
from __future__ import annotations

import json
from pathlib import Path

from synth.errors import SynthError

SYNTHETIC_KEY = "synth:synthetic"
PROVENANCE_KEY = "synth:provenance"
# row fields that say how an image was made (file_name and index only say where it is)
ROW_FIELDS = ("label", "label_id", "prompt", "seed", "sampler", "steps", "guidance", "source_index", "source_domain",
              "target_domain", "tau")


def version() -> str:
    from synth import __version__

    return __version__


def base_provenance(identity: dict) -> dict:
    """The fields every image of a set shares, from the set's identity (model, weights, task, input)."""
    base = {"synthetic": True, "generator": "synth", "synth_version": version(),
            "model_id": identity.get("model_id"), "weights_sha256": identity.get("weights_sha256")}
    if identity.get("task") == "translate":
        base.update({"translated": True, "input_sha256": identity.get("input_sha256")})
    return base


def image_provenance(base: dict, row: dict) -> dict:
    """One image's provenance: the set's fields and the row's (seed, class, prompt, settings)."""
    return {**base, **{k: row[k] for k in ROW_FIELDS if k in row}}


def description(prov: dict) -> str:
    """The human sentence for the PNG ``Description`` chunk."""
    what = (f"Translated image (synthetic) made by synth {prov['synth_version']} from input row "
            f"{prov.get('source_index')} ({prov.get('source_domain')} -> {prov.get('target_domain')})"
            if prov.get("translated") else f"Synthetic image made by synth {prov['synth_version']}")
    label = f", class '{prov['label']}'" if prov.get("label") is not None else ""
    return f"{what}{label}, seed {prov.get('seed')}; not a patient image"


def png_text(prov: dict) -> dict[str, str]:
    """The PNG text chunks for one image, keyword -> text."""
    return {"Software": f"synth {prov['synth_version']}", "Description": description(prov), SYNTHETIC_KEY: "true",
            PROVENANCE_KEY: json.dumps(prov, sort_keys=True, ensure_ascii=False)}


def pnginfo(prov: dict):
    """A ``PIL.PngImagePlugin.PngInfo`` holding :func:`png_text` (iTXt where Latin-1 cannot hold the text)."""
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, text in png_text(prov).items():
        try:
            text.encode("latin-1")
            info.add_text(key, text)
        except UnicodeEncodeError:
            info.add_itxt(key, text)
    return info


def read_png_provenance(path: str | Path) -> dict | None:
    """The provenance JSON of a PNG written by synth, or None when the file carries none."""
    from PIL import Image

    with Image.open(path) as im:
        text = getattr(im, "text", None) or {}
    raw = text.get(PROVENANCE_KEY)
    if raw is None:
        return {"synthetic": True} if text.get(SYNTHETIC_KEY) == "true" else None
    try:
        prov = json.loads(raw)
    except json.JSONDecodeError:
        prov = None
    return prov if isinstance(prov, dict) else {"synthetic": True, "damaged_provenance": str(raw)[:200]}


class InspectError(SynthError, ValueError):
    """A path ``synth inspect`` cannot read."""


def _prov_lines(prov: dict, indent: str = "  ") -> list[str]:
    return [f"{indent}{k}: {json.dumps(v, ensure_ascii=False) if isinstance(v, (dict, list)) else v}"
            for k, v in sorted(prov.items())]


def _tar_provenance(path: Path) -> tuple[int, dict | None]:
    """(samples in a webdataset shard, the first sample's provenance or None)."""
    import tarfile

    n, first = 0, None
    with tarfile.open(path) as tar:
        for member in tar:
            if member.name.endswith(".json"):
                n += 1
                if first is None:
                    f = tar.extractfile(member)
                    meta = json.loads(f.read()) if f else None
                    first = meta.get("provenance") if isinstance(meta, dict) else None
    return n, first


def inspect_path(path: str | Path) -> dict:
    """See :func:`_inspect`; a damaged file (cut PNG, not a tar, broken JSON) is a one-line InspectError."""
    import tarfile

    try:
        return _inspect(path)
    except (OSError, tarfile.TarError, ValueError, AttributeError) as e:
        if isinstance(e, InspectError):
            raise
        raise InspectError(f"cannot read '{path}' ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                           f"it is damaged or not what its name says") from None


def _inspect(path: str | Path) -> dict:
    """What ``synth inspect`` reports about a PNG, a webdataset shard or a folder, as a JSON-able dict.

    ``{"path", "kind": "png" | "tar" | "set" | "folder", "synthetic": bool | None, ...}``: for a PNG its
    provenance; for a shard its sample count and first provenance; for a set folder its manifest summary
    and its first image's provenance; for another folder how many of its PNGs carry synth provenance.
    """
    p = Path(path)
    if not p.exists():
        raise InspectError(f"'{p}' does not exist; pass a PNG, a webdataset .tar or a folder")
    if p.is_file() and p.suffix.lower() == ".png":
        try:
            prov = read_png_provenance(p)
        except OSError as e:
            raise InspectError(f"'{p}' is not a readable PNG ({e}); pass a PNG written by synth") from None
        return {"path": str(p), "kind": "png", "synthetic": bool(prov and prov.get("synthetic")), "provenance": prov}
    if p.is_file() and p.suffix.lower() == ".tar":
        n, prov = _tar_provenance(p)
        return {"path": str(p), "kind": "tar", "samples": n, "synthetic": bool(prov and prov.get("synthetic")),
                "provenance": prov}
    if p.is_dir():
        pngs = sorted(p.rglob("*.png"))
        tars = sorted(p.glob("shard-*.tar"))
        first = next((read_png_provenance(f) for f in pngs[:1]), None) if pngs else (_tar_provenance(tars[0])[1] if tars else None)
        manifest = p / "manifest.json"
        if manifest.is_file():
            m = json.loads(manifest.read_text(encoding="utf-8"))
            return {"path": str(p), "kind": "set", "synthetic": True, "images": m.get("n_done"),
                    "counts_per_label": m.get("counts_per_label"), "model": m.get("model"),
                    "settings": m.get("settings"), "first_image_provenance": first}
        marked = sum(1 for f in pngs if read_png_provenance(f))
        return {"path": str(p), "kind": "folder", "png_files": len(pngs), "synthetic_png_files": marked,
                "synthetic": (marked > 0) if pngs else None}
    raise InspectError(f"'{p}' is not a PNG, a webdataset .tar or a folder; synth inspect reads those")


def inspect_lines(report: dict) -> list[str]:
    """The human-readable lines of :func:`inspect_path`'s report."""
    head = report["path"]
    kind = report["kind"]
    if kind == "png":
        if not report["synthetic"]:
            return [f"{head}: no synth provenance (not made by synth, or its metadata was stripped)"]
        return [f"{head}: SYNTHETIC image (made by synth; not a patient image)"] + _prov_lines(report["provenance"])
    if kind == "tar":
        lines = [f"{head}: webdataset shard, {report['samples']} samples, "
                 + ("SYNTHETIC (made by synth)" if report["synthetic"] else "no synth provenance")]
        return lines + (_prov_lines(report["provenance"]) if report["provenance"] else [])
    if kind == "set":
        model = report.get("model") or {}
        lines = [f"{head}: SYNTHETIC set made by synth: {report['images']} images",
                 f"  model: {model.get('path')} (weights {str(model.get('weights_sha256'))[:16]})",
                 f"  counts per label: {json.dumps(report.get('counts_per_label'), ensure_ascii=False)}",
                 f"  settings: {json.dumps(report.get('settings'), sort_keys=True, ensure_ascii=False)}"]
        if report.get("first_image_provenance"):
            lines += ["  first image:"] + _prov_lines(report["first_image_provenance"], "    ")
        return lines
    return [f"{head}: folder, {report['synthetic_png_files']} of {report['png_files']} PNG files carry synth provenance"]
