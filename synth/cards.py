"""Cards: a ``README.md`` with YAML front matter (the Hugging Face convention) beside every export and
every sample set, saying what the thing is, what it was made from, what it is for and what it is not.

A card has two parts. Everything above :data:`MEASURED` is rewritten from the export's ``synth.json`` or
the set's ``manifest.json`` whenever they are written; everything below it is kept, and ``synth eval``
appends its numbers there (:func:`append_measurement`), so an evaluation is never lost to a resume.
Only safe YAML is written (``yaml.safe_dump``), and the front matter holds no ``configs`` or
``dataset_info`` keys, so ``datasets.load_dataset("imagefolder", data_dir=set)`` reads a set as before.
"""
from __future__ import annotations

import json
from pathlib import Path

import yaml

from synth.io import atomic_write_text

CARD = "README.md"
MEASURED = "<!-- synth: measurements below are appended by synth eval and kept when this card is rewritten -->"
INTENDED_USE = ("Research on synthetic training data for medical image classifiers (augmentation, pre-training, "
                "domain translation studies). Not for diagnosis, treatment or any clinical decision, and not a "
                "substitute for real patient data in validation or testing.")


def _front_matter(data: dict) -> str:
    return "---\n" + yaml.safe_dump(data, sort_keys=False, allow_unicode=True) + "---\n"


def _kept_measurements(path: Path) -> str:
    """The part of an existing card below :data:`MEASURED` (with the marker), or just the marker."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return MEASURED + "\n"
    i = text.find(MEASURED)
    return text[i:] if i >= 0 else MEASURED + "\n"


def _subset_lines(sub: dict | None) -> list[str]:
    if not sub:
        return ["- training data: not recorded (exported before synth recorded it)"]
    lines = [f"- data: `{sub.get('data')}` (fraction {sub.get('fraction')}, seed {sub.get('seed')}, "
             f"{sub.get('n')} of {sub.get('n_source')} training images; subset hash `{sub.get('indices_sha256')}`)"]
    if sub.get("counts_per_class"):
        lines.append("- images per class: " + ", ".join(f"{k} {v}" for k, v in sub["counts_per_class"].items()))
    if sub.get("unlabelled"):
        lines.append(f"- unlabelled pool: {json.dumps(sub['unlabelled'])}")
    return lines


def _compute_lines(rec: dict | None) -> list[str]:
    """The card's compute line from an export's ``training`` record (older exports have none)."""
    if not rec or rec.get("cpu_s") is None:
        return []
    since = f" since step {rec['from_step']} (earlier steps were not counted)" if rec.get("from_step") else ""
    return [f"- compute: {rec['cpu_s']:.0f} CPU s over all processes ({rec['wall_s']:.0f} s wall) for "
            f"{rec.get('steps')} steps on {_processes(rec)}, summed over every resume{since}"]


def _processes(rec: dict) -> str:
    """"1 cpu process", "4 cuda processes"."""
    n = int(rec.get("processes", 1))
    return f"{n} {rec.get('device', '?')} process{'es' if n != 1 else ''}"


def model_card(meta: dict) -> str:
    """The card of an export, from its ``synth.json`` (``meta``)."""
    labels = meta.get("labels") or {}
    classes = list(labels.get("classes") or [])
    cfg = meta.get("config") or {}
    train = cfg.get("train") or {}
    kind = meta.get("kind", "ldm")
    flow = meta.get("family") == "flow" or kind == "bridge"
    what = ("flow-matching bridge (classes are domains)" if kind == "bridge" else
            "text-conditioned flow model (sample it with synth: diffusers' StableDiffusionPipeline integrates a "
            "diffusion schedule, not this flow)" if flow else "diffusion model")
    front = {"library_name": "diffusers", "license": "other",
             "tags": ["synth", "synthetic-data", "medical-imaging", "research-only",
                      "flow-matching" if flow else "latent-diffusion"],
             "pipeline_tag": "unconditional-image-generation" if kind == "bridge" else "text-to-image",
             "synth": {"model_id": meta.get("model_id"), "kind": kind, "family": meta.get("family", "diffusion"),
                       "conditioner": meta.get("conditioner"), "codec": meta.get("codec"),
                       "resolution": meta.get("resolution"), "channels": meta.get("channels"), "classes": classes,
                       "weights_sha256": meta.get("weights_sha256"), "train_subset": meta.get("train_subset")}}
    body = [f"# {meta.get('model_id')}", "",
            f"A synth {what} "
            f"making {meta.get('resolution')} px {'colour' if meta.get('channels') == 3 else 'grey'} images of "
            f"{len(classes)} classes: {', '.join(classes)}. Every image it makes carries its provenance "
            f"(`synth inspect FILE`).", "",
            "## Intended use", "", INTENDED_USE, "",
            "## Training data", "", *_subset_lines(meta.get("train_subset")), "",
            "## Training", "",
            f"- steps {train.get('steps')}, batch {train.get('batch_size')}, lr {train.get('lr')}, seed {train.get('seed')}, "
            f"codec `{meta.get('codec')}`; the full resolved configuration is `config.yaml` beside this card",
            f"- default sampling: {json.dumps(meta.get('default_sampling'))}", *_compute_lines(meta.get("training")), "",
            "## Limitations", "",
            "- It can only reproduce what its training images show: rare findings, other scanners, sites, ages and "
            "populations are not represented beyond them.",
            "- Label fidelity and the codec ceiling are measured on the training data's own validation split; "
            "images of another site may be judged differently.",
            "- A generator may memorise training images: check `synth eval fidelity` (memorisation and privacy) "
            "before sharing images it made.", "",
            "## Measurements", "",
            "Label fidelity, FID/KID and privacy of sets sampled from this model are appended below by "
            "`synth eval`.", ""]
    return _front_matter(front) + "\n" + "\n".join(body) + "\n"


def codec_card(metrics: dict) -> str:
    """The card of an autoencoder export, from its ``metrics.json``."""
    front = {"library_name": "diffusers", "license": "other",
             "tags": ["synth", "autoencoder", "medical-imaging", "research-only"],
             "synth": {"kind": "autoencoder", "weights_sha256": metrics.get("weights_sha256"),
                       "psnr_db": metrics.get("psnr"), "ssim": metrics.get("ssim"),
                       "train_subset": metrics.get("train_subset")}}
    body = ["# synth autoencoder (codec)", "",
            "The image codec of a synth latent model: `vae/` loads with `diffusers.AutoencoderKL.from_pretrained`.", "",
            "## Intended use", "", INTENDED_USE, "",
            "## Training data", "", *_subset_lines(metrics.get("train_subset")), *_compute_lines(metrics.get("training")),
            "", "## Quality on the validation split", "",
            f"- PSNR {metrics.get('psnr')} dB, SSIM {metrics.get('ssim')} after {metrics.get('step')} steps; the codec "
            "ceiling (judges on reconstructions) is printed by the latent run's gate.", "",
            "## Limitations", "",
            "- Reconstructions lose fine detail a reader may need; never use them for diagnosis.", ""]
    return _front_matter(front) + "\n" + "\n".join(body) + "\n"


def dataset_card(manifest: dict) -> str:
    """The card of a sample set, from its ``manifest.json``."""
    model = manifest.get("model") or {}
    settings = manifest.get("settings") or {}
    n = manifest.get("n_done") or manifest.get("n") or 0
    translated = settings.get("task") == "translate"
    front = {"license": "other", "tags": ["synthetic", "synth", "medical-imaging", "research-only"]
             + (["translated"] if translated else []),
             "task_categories": ["image-classification"], "pretty_name": f"synth set of {n} synthetic images",
             "synth": {"synthetic": True, "images": n, "counts_per_label": manifest.get("counts_per_label"),
                       "model_id": model.get("model_id"), "weights_sha256": model.get("weights_sha256")}}
    body = [f"# Synthetic images ({n})", "",
            "**Every image in this folder is synthetic**: made by synth, not acquired from a patient. Each PNG says "
            "so in its own metadata (`synth inspect FILE`).", "",
            "## Generator", "", f"- model: `{model.get('path')}` (`{model.get('model_id')}`, weights "
            f"`{str(model.get('weights_sha256'))[:16]}`)", *_subset_lines(model.get("train_subset")), "",
            "## Settings", "", f"```json\n{json.dumps(settings, indent=1, sort_keys=True)}\n```", "",
            "## Counts", "", *[f"- {k}: {v}" for k, v in (manifest.get("counts_per_label") or {}).items()], "",
            "## Licence and use", "", INTENDED_USE + " The generator's training data licence applies to these "
            "images too; check it before sharing them.", ""]
    return _front_matter(front) + "\n" + "\n".join(body) + "\n"


def is_synth_card(path: Path) -> bool:
    """Whether ``path`` is a card synth wrote (it holds the measurements marker): a user's own README is not."""
    try:
        return MEASURED in path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False


def write_card(folder: str | Path, text: str) -> Path | None:
    """Write ``folder/README.md`` atomically, keeping the measurements an earlier card held; a README.md that
    is not synth's card is left alone (returns None)."""
    path = Path(folder) / CARD
    if path.exists() and not is_synth_card(path):
        return None
    atomic_write_text(path, text + "\n" + _kept_measurements(path))
    return path


def append_measurement(folder: str | Path, title: str, lines: list[str]) -> Path | None:
    """Put a section (``### title`` + ``lines``) below the card's measurements marker, replacing an earlier
    section of the same title (a rerun updates, never duplicates); None without a synth card."""
    path = Path(folder) / CARD
    if not path.is_file() or not is_synth_card(path):
        return None
    text = path.read_text(encoding="utf-8")
    head = f"\n\n### {title}\n\n"
    i = text.find(head)
    if i >= 0:
        j = text.find("\n\n### ", i + len(head))
        text = text[:i] + (text[j:] if j >= 0 else "\n")
    atomic_write_text(path, text.rstrip("\n") + head + "\n".join(lines) + "\n")
    return path
