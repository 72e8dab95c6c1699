"""The ``synth`` command line (click). The only module that imports trainers and samplers."""
from __future__ import annotations

import errno
import sys
from pathlib import Path

from synth import solvers
from synth.threads import set_wait_policy

set_wait_policy()  # before anything imports torch: libgomp reads its wait policy once, when it loads

import click  # noqa: E402

from synth.config import load_config, read_yaml  # noqa: E402

PRESETS = Path(__file__).parent / "presets"
from synth.evaluation.text import DEFAULT_ATTRIBUTES, DEFAULT_SWAPS  # noqa: E402

T_DEFAULTS = (DEFAULT_ATTRIBUTES, DEFAULT_SWAPS)


def _user_errors():
    """What the CLI turns into ``error: <message>`` and exit code 2: every error synth raises for the user."""
    from synth.errors import SynthError

    return (SynthError,)


# Faults of the machine, not of synth or the input: a full disk or quota, a read-only or vanished mount, no permission.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


# Faults of a path the user typed: each gets its own fix.
PATH_ERRNOS = {errno.ENAMETOOLONG: "a name in it is too long (most file systems allow 255 bytes per folder or file "
                                   "name); choose a shorter path",
               errno.ENOTDIR: "a part of it is a file, not a folder; choose another path",
               errno.EISDIR: "it is a folder where a file is expected; choose a file path",
               errno.ELOOP: "it loops through symbolic links; resolve the links or choose another path"}


def path_error_line(e: OSError) -> str:
    """One line for an OSError caused by the path itself (too long, not a folder, a link loop)."""
    where = f" '{e.filename}'" if e.filename else ""
    return f"cannot use the path{where}: {PATH_ERRNOS[e.errno]}"


def _run(fn, *args, **kwargs):
    """Call ``fn``; user errors become one-line messages with exit code 2."""
    import torch

    from synth.devices import oom_message

    errors = _user_errors()
    try:
        return fn(*args, **kwargs)
    except errors as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    except torch.OutOfMemoryError:
        click.echo(f"error: {oom_message('--batch-size (or --chunk-size)')}", err=True)
        sys.exit(2)
    except OSError as e:
        if e.errno in PATH_ERRNOS:
            click.echo(f"error: {path_error_line(e)}", err=True)
            sys.exit(2)
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f" '{e.filename}'" if e.filename else ""
        click.echo(f"error: cannot write or read{where} ({e.strerror}); free space or fix the permissions, then run "
                   f"the same command again (finished work is kept)", err=True)
        sys.exit(2)


def _config(config: str | None, overrides: tuple[str, ...]):
    return _run(load_config, config, overrides)


def _train_config(config: str | None, overrides: tuple[str, ...], run_dir: str | None):
    """The config of a training command.  ``--run`` alone on a run folder synth made resumes it with its own
    ``config.yaml`` (the command an unfinished run's error message gives); anything else builds it as given."""
    saved = Path(run_dir) / "config.yaml" if run_dir else None
    if config is None and not overrides and saved is not None and saved.is_file() and (saved.parent / "run.json").is_file():
        click.echo(f"note: resuming '{run_dir}' with its own config.yaml (pass --config or --set to give another)", err=True)
        return _config(str(saved), ())
    return _config(config, overrides)


@click.group()
@click.version_option(package_name="synth")
@click.option("--threads", default=None, metavar="N",
              help="CPU threads per process (default: OMP_NUM_THREADS if set, else the cores available divided by "
                   "the processes on this machine). A CPU sample set records it; env SYNTH_THREADS.")
def main(threads):
    """synth: labelled synthetic medical images."""
    import os

    from synth import threads as cpu
    from synth.quiet import install

    install()
    try:  # directly, not through _run: its error list imports every trainer and sampler, at every start
        choice = cpu.choose_threads(threads)
    except cpu.ThreadsError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)
    cpu.apply(choice)
    if os.environ.get("RANK", "0") == "0":
        click.echo(choice.line(), err=True)


@main.group()
def train():
    """Train a model stage (running the same command again resumes)."""


_opts = [
    click.option("--config", "-c", type=click.Path(dir_okay=False), default=None, help="YAML preset (configs/)."),
    click.option("--run", "--run-dir", "run_dir", type=click.Path(file_okay=False), default=None,
                 help="Run folder (default runs/<stage>-<preset>). Under torchrun use --run-dir (torchrun claims --run)."),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. train.lr=1e-4."),
]


def _with_opts(f):
    for o in reversed(_opts):
        f = o(f)
    return f


def _default_run(stage: str, config: str | None) -> str:
    return str(Path("runs") / f"{stage}-{Path(config).stem if config else 'default'}")


# The options every set-writing command (sample, translate) takes, in one place.
_SET_OPTIONS = [
    click.option("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available, per local rank)."),
    click.option("--overwrite", is_flag=True, help="Replace a set made by another model or other settings."),
    click.option("--shrink", is_flag=True,
                 help="Allow a smaller --n than the folder already holds: the images past it are deleted."),
    click.option("--allow-pickle", is_flag=True,
                 help="Accept a model folder that also holds pickle weights (*.bin, *.pt, *.ckpt ...), which can run "
                      "code when loaded; synth still loads only the safetensors weights."),
    click.option("--quiet", is_flag=True, help="No progress bar."),
]


def _set_options(f):
    for o in reversed(_SET_OPTIONS):
        f = o(f)
    return f


@train.command("autoencoder")
@_with_opts
def train_autoencoder_cmd(config, run_dir, overrides):
    """Train or fine-tune the autoencoder (grey or colour, as the data); reports validation PSNR/SSIM."""
    from synth.trainers.autoencoder import train_autoencoder

    cfg = _train_config(config, overrides, run_dir)
    _run(train_autoencoder, cfg, run_dir or _default_run("autoencoder", config))


@train.command("ldm")
@_with_opts
def train_ldm_cmd(config, run_dir, overrides):
    """Train or fine-tune the text/label-conditioned diffusion model; exports to <run>/export."""
    from synth.trainers.ldm import train_ldm

    cfg = _train_config(config, overrides, run_dir)
    _run(train_ldm, cfg, run_dir or _default_run("ldm", config))


@train.command("bridge")
@_with_opts
def train_bridge_cmd(config, run_dir, overrides):
    """Train the flow-matching bridge (one model, the class is the domain); exports to <run>/export."""
    from synth.trainers.bridge import train_bridge

    cfg = _train_config(config, overrides, run_dir)
    _run(train_bridge, cfg, run_dir or _default_run("bridge", config))


@main.command()
@click.option("--model", "model", required=True, type=click.Path(), help="Export folder (<run>/export) or its run folder.")
@click.option("--n", "--num-images", "n", required=True, type=int,
              help="Number of images in the set (raise it to extend a set). Under torchrun use --num-images "
                   "(torchrun's own parser claims --n).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--labels", default=None, help='Label weights, e.g. "normal=0.5,pneumonia=0.5" (default: uniform).')
@click.option("--prompts", "prompts_file", default=None, type=click.Path(), help="File with one prompt or label per line, or a CSV/JSONL manifest whose 'prompt' (caption), 'label' and other "
                   "columns make each image's condition and go into its metadata.")
@click.option("--negative-prompt", default="", help="Text guidance steers away from (text models; needs --guidance > 1).")
@click.option("--prompts-split", default="all", show_default=True, type=click.Choice(["all", "train", "val", "test"]),
              help="With a --prompts manifest (.csv/.jsonl): only its rows of this split.")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance w (1 = none); default: the model's.")
@click.option("--steps", type=int, default=None, help="Solver steps; default: the model's.")
@click.option("--sampler", default=None, help=f"{solvers.help_text()} (default: the model's).")
@click.option("--batch-size", default="auto", show_default=True,
              help="Images per network call, or 'auto': 64 on CPU; on a GPU the largest power of two that fits "
                   "70% of free memory (a resumed set reuses the batch size it was started with).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["imagefolder", "webdataset"]), default="imagefolder", show_default=True)
@click.option("--shard-size", type=int, default=1000, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--compile/--no-compile", "compile_", default=None,
              help="torch.compile the UNet; default: automatic (on a GPU for sets whose work amortises the "
                   "warm-up, see synth.samplers.generator.should_compile).")
@click.option("--channels-last", is_flag=True, help="channels_last memory format.")
@click.option("--chunk-size", type=int, default=0, show_default=True,
              help="Run the network on chunks of this many images (cache-sized on CPU, e.g. 16); 0: whole batch.")
@click.option("--attention", type=click.Choice(["sdpa", "xformers"]), default="sdpa", show_default=True)
@_set_options
def sample(model, n, out, labels, prompts_file, negative_prompt, prompts_split, guidance, steps, sampler, batch_size, seed, fmt,
           shard_size, dtype, compile_, channels_last, chunk_size, attention, device, overwrite, shrink, allow_pickle,
           quiet):
    """Sample N labelled images to DIR, resumably; split across processes under torchrun."""
    from synth.samplers.orchestrate import sample_set

    def go():
        res = sample_set(model, out, n, labels=labels, prompts_file=prompts_file, guidance=guidance, steps=steps,
                         sampler=sampler, batch_size=batch_size, seed=seed, fmt=fmt, shard_size=shard_size, dtype=dtype,
                         compile=compile_, channels_last=channels_last, chunk_size=chunk_size, attention=attention,
                         device=device, overwrite=overwrite, shrink=shrink, allow_pickle=allow_pickle,
                         progress=not quiet, log=lambda m: click.echo(m, err=True), negative_prompt=negative_prompt,
                         prompts_split=prompts_split)
        if res.manifest:
            click.echo(f"{res.manifest['n_done']} images in {out} ({res.generated} new, {res.images_per_s:.1f} images/s); "
                       f"counts {res.manifest['counts_per_label']}")

    _run(go)


@main.command()
@click.option("--model", "model", required=True, type=click.Path(), help="A flow export: a bridge (<run>/export of 'synth train bridge') or a caption-conditioned flow model.")
@click.option("--input", "input_", required=True, type=click.Path(), help="Images to translate: a folder, .npz or CSV/JSONL manifest.")
@click.option("--source", required=True, help="The input's domain (one of the model's domains), or its caption.")
@click.option("--target", required=True, help="The domain (or caption) to translate into.")
@click.option("--tau", type=float, default=None, help="1 keeps the input, 0 is full inversion; default: the model's.")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
@click.option("--split", default="all", show_default=True, type=click.Choice(["all", "train", "val", "test"]),
              help="Which split of the input to translate.")
@click.option("--guidance", type=float, default=None, help="Classifier-free guidance w (1 = none); default: the model's.")
@click.option("--steps", type=int, default=None, help="Solver steps for a full path; a leg gets its share.")
@click.option("--sampler", default=None, help=f"{solvers.help_text()} (default: the model's).")
@click.option("--batch-size", default="auto", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--format", "fmt", type=click.Choice(["imagefolder", "webdataset"]), default="imagefolder", show_default=True)
@click.option("--shard-size", type=int, default=1000, show_default=True)
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True)
@click.option("--chunk-size", type=int, default=0, show_default=True)
@_set_options
def translate(model, input_, source, target, tau, out, split, guidance, steps, sampler, batch_size, seed, fmt, shard_size,
              dtype, chunk_size, device, overwrite, shrink, allow_pickle, quiet):
    """Translate every image of INPUT from SOURCE to TARGET (domains, or captions), resumably, labels kept."""
    from synth.samplers.orchestrate import translate_set

    def go():
        res = translate_set(model, input_, source, target, out, tau=tau, split=split, guidance=guidance, steps=steps,
                            sampler=sampler, batch_size=batch_size, seed=seed, fmt=fmt, shard_size=shard_size,
                            dtype=dtype, chunk_size=chunk_size, device=device, overwrite=overwrite, shrink=shrink,
                            allow_pickle=allow_pickle, progress=not quiet, log=lambda m: click.echo(m, err=True))
        if res.manifest:
            click.echo(f"{res.manifest['n_done']} translated images in {out} ({res.generated} new, "
                       f"{res.images_per_s:.1f} images/s); labels {res.manifest['counts_per_label']}")

    _run(go)


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def demo(out, overrides):
    """First run: a small class-conditional model on PneumoniaMNIST (phantom if absent), judged and drawn."""
    import time

    from synth.data import DataError, load_split
    from synth.trainers.demo import run_demo

    t0 = time.perf_counter()
    cfg = _config(str(PRESETS / "demo.yaml"), overrides)
    try:
        load_split(cfg.data, "train")
    except DataError as e:
        click.echo(f"note: {e}\nnote: falling back to the built-in phantom data set", err=True)
        cfg = _config(str(PRESETS / "demo.yaml"), overrides + ("data.name=phantom",))
    res = _run(run_demo, cfg, out, t_start=t0)
    fid = ", ".join(f"{k} {v:.0%}" for k, v in res["label_fidelity"].items())
    click.echo(f"\ndone in {res['seconds']:.0f} s. Label fidelity (a classifier trained on the real images agrees with "
               f"the requested class; it scores {res['judge_test_accuracy']:.0%} on real test images): {fid}\n"
               f"grid (per class: real test images left, synthetic right): {res['grid']}\nmodel: {res['export']}\n\n"
               f"next:\n  synth sample --model {res['export']} --n 1000 --out runs/demo-synthetic   # a labelled set\n"
               f"  synth eval augment --config configs/pneumoniamnist-28-flow.yaml --out runs/eval   # does it help a classifier?")


@main.group("eval")
def eval_():
    """Measure synthetic data: fidelity and privacy of a set, usefulness for a classifier."""


@eval_.command("augment")
@click.option("--config", "-c", type=click.Path(dir_okay=False), default=None,
              help="Generator preset with an eval: section (e.g. configs/pneumoniamnist-28-flow.yaml).")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Study folder (running again resumes).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. eval.fractions=[0.1].")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Also write the report to REPORT.md/.json/.png (e.g. benchmarks/results/augment-pneumoniamnist).")
@click.option("--device", default="cpu", show_default=True, help="Device for generators and sampling.")
@click.option("--partial", is_flag=True, default=False,
              help="Only report the classifiers finished so far (trains and samples nothing; the study may still be "
                   "running): OUT/augment-partial.md and --report.")
def eval_augment(config, out, overrides, report, device, partial):
    """RoentGen's downstream protocol: real only vs real + synthetic vs synthetic only vs pre-training, per training fraction."""
    from synth.evaluation.protocol import evaluate_augment, partial_report
    from synth.evaluation.targets import value_text

    cfg = _config(config, overrides)
    has_eval = (config is not None and "eval" in _run(read_yaml, config)) or any(o.startswith("eval.") for o in overrides)
    if not has_eval:
        click.echo(f"error: {'--config ' + repr(config) if config else 'no --config'} has no eval: section, so nothing says "
                   f"which study to run (it trains many generators and classifiers); start from "
                   f"configs/pneumoniamnist-28-flow.yaml or pass eval.* settings with --set", err=True)
        sys.exit(2)
    if partial:
        summary = _run(partial_report, cfg, out, report=report, log=lambda m: click.echo(m, err=True))
    else:
        summary = _run(evaluate_augment, cfg, out, device=device, report=report)
    for t in summary["targets"]:
        who = f" {t['recipe']}" if t.get("recipe") else ""
        click.echo(f"fraction {t['fraction']:g}{who}: {t['target']}: {value_text(t)} -> {'met' if t['met'] else 'MISSED'}")


@eval_.command("fidelity")
@click.option("--set", "set_dir", type=click.Path(file_okay=False, exists=False), required=True,
              help="A folder written by synth sample / synth translate (imagefolder).")
@click.option("--data", required=True, help="The real data set: a MedMNIST name or a path (as data.name).")
@click.option("--resolution", type=int, default=None, help="Default: the set's image size.")
@click.option("--fraction", type=float, default=None,
              help="The real training subset the generator saw (memorisation is measured against it); "
                   "default: what the set's manifest records, else 1.0.")
@click.option("--features", type=click.Path(dir_okay=False), default=None,
              help="Feature extractor / judge file (trained on the full real training split once, then reused). "
                   "Default: <out>/features-<data>-<resolution>[-rgb].safetensors with --out, else beside the set folder")
@click.option("--set-config", "overrides", multiple=True, metavar="KEY=VALUE", help="Data config override, e.g. data.cache_dir=DIR.")
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Report folder (default: the set folder).")
def eval_fidelity(set_dir, data, resolution, fraction, features, overrides, out):
    """FID/KID, label fidelity, diversity, memorisation and privacy of a synthetic set against real data."""
    from synth.evaluation.fidelity_cli import fidelity_cli

    res = _run(fidelity_cli, set_dir, data, resolution, fraction, features, list(overrides), out)
    click.echo(res)


@eval_.command("text")
@click.option("--model", "models", multiple=True, required=True,
              help="A text model's export or run folder (synth train ldm); repeat to compare models on one footing.")
@click.option("--data", required=True, help="A manifest with captions, train and test rows and attribute columns.")
@click.option("--out", type=click.Path(file_okay=False), required=True,
              help="Work folder: judges, the text judge and generated images are cached there (running again reuses them).")
@click.option("--report", type=click.Path(dir_okay=False), default=None,
              help="Also write REPORT.md/.json/.png (e.g. benchmarks/results/medpix-text).")
@click.option("--attribute", "attributes", multiple=True, metavar="NAME[=COLUMN][:A|B|...]",
              help=f"A judged attribute (default: {' '.join(T_DEFAULTS[0])}).")
@click.option("--swap", "swaps", multiple=True, metavar="NAME:A|B",
              help=f"A compositional swap (default: {' '.join(T_DEFAULTS[1])}).")
@click.option("--seeds", type=int, default=2, show_default=True, help="Images per test caption.")
@click.option("--max-captions", type=int, default=None, help="Only N test captions (quicker): a seeded subset in which the classes take turns.")
@click.option("--k", type=int, default=10, show_default=True, help="R-precision: the caption ranked among K.")
@click.option("--steps", type=int, default=None, help="Sampling steps (default: the model's).")
@click.option("--guidance", type=float, default=None, help="Guidance (default: the model's).")
@click.option("--sampler", default=None, help="Sampler (default: the model's).")
@click.option("--judge-resolution", type=int, default=None,
              help="Judges and the text judge read images area-averaged to this size (default: the model's).")
@click.option("--judge-steps", type=int, default=600, show_default=True)
@click.option("--clip-steps", type=int, default=600, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True)
def eval_text(models, data, out, report, attributes, swaps, seeds, max_captions, k, steps, guidance, sampler,
              judge_resolution, judge_steps, clip_steps, seed, batch_size, device):
    """Do images follow their text? Attribute judges, a small CLIP, compositional swaps, a text-encoder probe."""
    from synth.evaluation.text_report import targets
    from synth.evaluation.text_run import evaluate_text

    for name, v in (("--seeds", seeds), ("--judge-steps", judge_steps), ("--clip-steps", clip_steps),
                    ("--batch-size", batch_size), ("--steps", steps)):
        if v is not None and v < 1:
            click.echo(f"error: {name} must be >= 1 (got {v})", err=True)
            sys.exit(2)
    if judge_resolution is not None and judge_resolution < 16:
        click.echo(f"error: --judge-resolution must be >= 16 (the judges' smallest input; got {judge_resolution})", err=True)
        sys.exit(2)
    import shlex

    command = "synth " + shlex.join(sys.argv[1:])
    summary = _run(evaluate_text, list(models), data, out, attributes=attributes or T_DEFAULTS[0],
                   swaps=swaps or T_DEFAULTS[1], seeds=seeds, max_rows=max_captions, steps=steps, guidance=guidance,
                   sampler=sampler, k=k, judge_steps=judge_steps, clip_steps=clip_steps, seed=seed, batch=batch_size,
                   device=device, judge_resolution=judge_resolution, report=report, command=command)
    for t in targets(summary):
        click.echo(f"{t['model']}: {t['target']}: {t['value']:.3f} -> {t['met']}")


@main.command("inspect")
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_cmd(path, as_json):
    """Say whether a PNG, a webdataset shard or a folder is synthetic, and how it was made."""
    import json

    from synth.provenance import inspect_lines, inspect_path

    report = _run(inspect_path, path)
    click.echo(json.dumps(report, indent=2, ensure_ascii=False) if as_json else "\n".join(inspect_lines(report)))


if __name__ == "__main__":
    main()
