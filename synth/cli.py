"""The ``synth`` command line (click). The only module that imports trainers and samplers."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from synth.config import ConfigError, load_config

PRESETS = Path(__file__).parent / "presets"


def _user_errors():
    from samplers.generator import ArtifactError
    from synth.data import DataError
    from synth.labels import LabelError
    from trainers.common import TrainingError

    return (ConfigError, DataError, LabelError, TrainingError, ArtifactError)


def _run(fn, *args, **kwargs):
    """Call ``fn``; user errors become one-line messages with exit code 2."""
    errors = _user_errors()
    try:
        return fn(*args, **kwargs)
    except errors as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(2)


def _config(config: str | None, overrides: tuple[str, ...]):
    return _run(load_config, config, overrides)


@click.group()
@click.version_option(package_name="synth")
def main():
    """synth: labelled synthetic medical images."""


@main.group()
def train():
    """Train a model stage (running the same command again resumes)."""


_opts = [
    click.option("--config", "-c", type=click.Path(dir_okay=False), default=None, help="YAML preset (configs/)."),
    click.option("--run", "run_dir", type=click.Path(file_okay=False), default=None, help="Run folder (default runs/<stage>-<preset>)."),
    click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key, e.g. train.lr=1e-4."),
]


def _with_opts(f):
    for o in reversed(_opts):
        f = o(f)
    return f


def _default_run(stage: str, config: str | None) -> str:
    return str(Path("runs") / f"{stage}-{Path(config).stem if config else 'default'}")


@train.command("autoencoder")
@_with_opts
def train_autoencoder_cmd(config, run_dir, overrides):
    """Train or fine-tune the 1-channel autoencoder; reports validation PSNR/SSIM."""
    from trainers.autoencoder import train_autoencoder

    cfg = _config(config, overrides)
    _run(train_autoencoder, cfg, run_dir or _default_run("autoencoder", config))


@train.command("ldm")
@_with_opts
def train_ldm_cmd(config, run_dir, overrides):
    """Train or fine-tune the text/label-conditioned diffusion model; exports to <run>/export."""
    from trainers.ldm import train_ldm

    cfg = _config(config, overrides)
    _run(train_ldm, cfg, run_dir or _default_run("ldm", config))


@main.command()
@click.option("--out", type=click.Path(file_okay=False), default="runs/demo", show_default=True)
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE")
def demo(out, overrides):
    """Main job on the embedded default: a small model on PneumoniaMNIST (phantom if absent), grid per class."""
    from synth.data import DataError, load_split
    from trainers.ldm import train_ldm

    cfg = _config(str(PRESETS / "demo.yaml"), overrides)
    try:
        load_split(cfg.data, "train")
    except DataError as e:
        click.echo(f"note: {e}\nnote: falling back to the built-in phantom data set", err=True)
        cfg = _config(str(PRESETS / "demo.yaml"), overrides + ("data.name=phantom", "labels.prompt_template=chest x-ray phantom, {label}"))
    export = _run(train_ldm, cfg, out)
    click.echo(f"grid of samples per class: {Path(out) / 'samples' / 'final.png'}\nmodel: {export}")


if __name__ == "__main__":
    main()
