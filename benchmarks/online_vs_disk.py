"""Cost per image: generating in the training loop (OnlineSynthetic) vs reading a synth set from disk.

    python benchmarks/online_vs_disk.py                        # built-in random-weight models, < 60 s on 2 CPU cores
    python benchmarks/online_vs_disk.py --model runs/pneu/export --n 256 --device cuda

For each model: write an n-image set once with the bulk engine (``run_bulk``, the path of
``synth sample``; timed, as the one-off cost), then, interleaved over ``--repeats``
repeats, one epoch of ``DataLoader(OnlineSynthetic(gen, n), batch_size=B)`` (one
generator call per batch) and one epoch of ``DataLoader(SyntheticSet(set), batch_size=B)``
over the same n images; medians.  Without ``--model`` two random-weight LDMs are built
(speed does not depend on the weights): ``tiny`` (28 px, ~0.2M-parameter UNet without attention, 5 steps,
128 images) and ``demo`` (the ``synth demo`` network: 32 px, 1.7M-parameter UNet, 20 steps,
8 images).  Results -> benchmarks/results/online_vs_disk.md (command at the top).
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import torch  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

from synth.augment import OnlineSynthetic, SyntheticSet  # noqa: E402

# name -> (config overrides, images, steps): "demo" is the `synth demo` preset's network
BUILT_IN = {
    "tiny": (["data.resolution=28", "model.unet.block_out_channels=[16,32]", "model.unet.attention_levels=[false,false]",
              "model.unet.norm_num_groups=8", "model.unet.attention_head_dim=8", "model.text.hidden_size=32",
              "model.text.num_layers=1", "model.text.num_heads=2", "model.text.max_length=12"], 128, 5),
    "demo": (["data.resolution=32"], 8, 20),
}


def build_export(name: str, out: Path) -> Path:
    """A random-weight pixel LDM of a built-in architecture, exported like a trained one."""
    from synth.codecs import PixelCodec
    from synth.config import load_config
    from synth.labels import LabelSchema
    from synth.models import build_noise_scheduler, build_text_encoder, build_tokenizer, unet_from_config
    from synth.trainers.export import export_ldm

    preset = ROOT / "synth" / "presets" / "demo.yaml"
    cfg = load_config(preset, ["data.name=phantom", *BUILT_IN[name][0]])
    torch.manual_seed(0)
    schema = LabelSchema(["normal", "pneumonia"], prompt_template=cfg.labels.prompt_template)
    t = cfg.model.text
    tok = build_tokenizer([schema.prompt_for(k) for k in range(2)], t.vocab_size, t.max_length)
    te = build_text_encoder(len(tok), t.hidden_size, t.num_layers, t.num_heads, t.max_length)
    unet = unet_from_config(cfg.model, cfg.data.resolution, 1, cross_attention_dim=t.hidden_size)
    sched = build_noise_scheduler(cfg.train.num_train_timesteps, cfg.train.beta_schedule, cfg.train.prediction_type)
    return export_ldm(out / name, unet, te, tok, PixelCodec(), schema, cfg, sched, t.max_length)


def epoch_seconds(ds, batch_size: int, workers: int) -> float:
    t0 = time.perf_counter()
    for _ in DataLoader(ds, batch_size=batch_size, num_workers=workers):
        pass
    return time.perf_counter() - t0


def measure(export: Path, n: int, steps: int, batch: int, repeats: int, device: str, workers: int, tmp: Path) -> dict:
    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.samplers.generator import load_generator

    gen = load_generator(export, device=device)
    params = sum(p.numel() for p in gen.unet.parameters())
    spec = parse_label_spec(",".join(gen.schema.classes), gen.schema, log=lambda m: None)
    out = tmp / f"set-{export.name}"
    req = BulkRequest(model=str(export), out=str(out), n=n, spec=spec, steps=steps, batch_size=batch,
                      shard_size=max(batch, 1000 // batch * batch))
    t0 = time.perf_counter()
    run_bulk(req, gen, device=device, progress=False, log=lambda m: None)
    write_s = time.perf_counter() - t0
    online = OnlineSynthetic(gen, n, labels={c: 1.0 for c in gen.schema.classes}, steps=steps)
    disk = SyntheticSet(out)
    online.__getitems__(range(2))  # warm-up: text embeddings cached, kernels chosen
    t_on, t_disk = [], []
    for _ in range(repeats):  # interleaved: a loaded machine drifts
        t_on.append(epoch_seconds(online, batch, 0))  # the model lives in the main process
        t_disk.append(epoch_seconds(disk, batch, workers))
    on, dk = statistics.median(t_on) / n, statistics.median(t_disk) / n
    return {"model": export.name, "params": params, "res": gen.resolution, "n": n, "steps": steps, "batch": batch,
            "online_ms": on * 1e3, "disk_ms": dk * 1e3, "ratio": on / dk, "write_ms": write_s / n * 1e3,
            "online_runs": t_on, "disk_runs": t_disk}


def report(rows: list[dict], args, command: str, load: tuple) -> str:
    lines = ["# Online generation vs reading from disk", "", f"Command: `{command}`", "",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, load average {load[0]:.1f} at start"
             f"{' (shared with other jobs)' if load[0] > (os.cpu_count() or 1) else ''}, torch {torch.__version__} with {torch.get_num_threads()} thread(s), device {args.device}; "
             f"DataLoader batch {args.batch_size}, disk read with num_workers={args.workers}, online with num_workers=0; "
             f"median of {args.repeats} interleaved epochs.", "",
             "| model | UNet params | px | steps | images | online ms/image | disk ms/image | online / disk | "
             "write once (run_bulk) ms/image |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['params'] / 1e6:.2f}M | {r['res']} | {r['steps']} | {r['n']} | "
                     f"{r['online_ms']:.2f} | {r['disk_ms']:.3f} | {r['ratio']:.0f}x | {r['write_ms']:.2f} |")
    lines += ["", "Online cost is the generator's (steps x network evaluations, with guidance); reading a set is PNG "
              "decoding plus a DataLoader step, independent of the model. Generating online pays the model cost every "
              "epoch; a set pays it once (`write once`) and then costs `disk` per image per epoch, so a set wins after "
              "about one epoch. Online generation is worth it only for fresh images every epoch (`epoch_fresh=True`) "
              "or when disk space is the limit.", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="An export folder; default: the built-in tiny and demo architectures.")
    ap.add_argument("--n", type=int, default=None, help="Images per epoch (default: 128 tiny, 8 demo, 64 --model).")
    ap.add_argument("--steps", type=int, default=None, help="Sampler steps (default: 5 tiny, 20 demo/--model).")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers for the disk read.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: on a shared 2-core machine a second thread only waits at barriers).")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "online_vs_disk.md"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    command = "python benchmarks/online_vs_disk.py " + " ".join(sys.argv[1:])
    load = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        if args.model:
            exports = [(Path(args.model), args.n or 64, args.steps or 20)]
        else:
            exports = [(build_export(k, tmp), args.n or n, args.steps or s) for k, (_, n, s) in BUILT_IN.items()]
        for export, n, steps in exports:
            rows.append(measure(export, n, steps, args.batch_size, args.repeats, args.device, args.workers, tmp))
            r = rows[-1]
            print(f"{r['model']}: online {r['online_ms']:.2f} ms/image, disk {r['disk_ms']:.3f} ms/image "
                  f"({r['ratio']:.0f}x), write once {r['write_ms']:.2f} ms/image", flush=True)
    text = report(rows, args, command.strip(), load)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
