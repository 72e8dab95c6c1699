"""Every path a user runs on a GPU, in one command, with numbers.

    python benchmarks/gpu_check.py                  # on a GPU machine: < 8 min on one H100/H200
    python benchmarks/gpu_check.py --tiny --out DIR # the same code on CPU with tiny models (CI runs it)

Writes ``<out>/gpu_check.md`` (a markdown table per section) and ``gpu_check.json``
(default out: benchmarks/results/). Sections:

1. pixel training: the 1.7M PneumoniaMNIST-32 model, batch 32 (target on a GPU: >= 50 steps/s)
2. latent training: the Kermany-64 UNet on a 64 px autoencoder
3. Stable-Diffusion-1.5-size fine-tune at 512 px (860M UNet, 12x768 text encoder trained with
   its own LR), bf16, batch 8, with and without gradient checkpointing
4. the same step in a loop written the way diffusers' train_text_to_image.py does it (ratio)
5. bulk sampling end to end (`run_bulk`: PNGs, metadata, manifest) vs the generator in memory
6. determinism: the same images at batch 1 vs batch 16; a resumed bulk set vs an uninterrupted one
7. the sampler vs StableDiffusionPipeline at SD-1.5 size, fp16, 25 steps, guidance 2.5, batch 16,
   same noise; compiled, with the warm-up charged to a 10,000-image set
8. the bridge: pixel training rate, and `synth translate`'s engine end to end vs in memory
9. the autoencoder with its perceptual term and patch critic (the Kermany-64 recipe), then a latent
   run's codec gate: its feature net and three ceiling judges trained on the device
10. a caption-conditioned flow model trained with an unlabelled pool, translated between captions, and
   `synth eval text --device` on it (judges, CLIP, generated images, swaps, probe): benchmarks/gpu_text.py

Models have random weights: speed and memory do not depend on what they learned. Each
section runs on its own; a failure is recorded with its one-line reason and the others go on
(``--tiny`` exits non-zero when any section failed, so CI catches rot).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from synth.config import load_config  # noqa: E402

sys.path.insert(0, str(ROOT / "benchmarks"))
from gpu_common import device_info, peak_gib, precision, reset_peak, sizes, sync  # noqa: E402
from gpu_text import section_text_pool  # noqa: E402
from gpu_train import (build_sd_folder, section_autoencoder, section_latent, section_pixel,  # noqa: E402
                       section_sd_finetune)


# ---------------------------------------------------------------------------
# Sizes: the real run and the CPU stand-in share every line of code below


# ---------------------------------------------------------------------------
# 1-2. Training throughput through the real trainer


# ---------------------------------------------------------------------------
# 3-4. Stable-Diffusion-1.5-size fine-tune, ours vs the diffusers-example loop


# ---------------------------------------------------------------------------
# 5-6. Bulk sampling end to end vs in memory; determinism


def section_bulk(tmp: Path, sz: dict) -> dict:
    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.samplers.generator import load_generator
    from synth.devices import resolve_device
    from synth.seeds import image_seed

    export = tmp / "pixel" / "export"
    dev = str(resolve_device(None))
    dtype = torch.bfloat16 if precision() == "bf16" else torch.float32
    gen = load_generator(export, device=dev, dtype=dtype)
    spec = parse_label_spec(",".join(gen.schema.classes), gen.schema, log=lambda m: None)
    n, b, steps = sz["bulk_n"], sz["bulk_batch"], sz["bulk_steps"]
    from synth.samplers.bulk import condition_for

    conds = [condition_for(i, spec, gen.schema) for i in range(n)]
    seeds = [image_seed(0, i) for i in range(n)]
    gen.sample(conds[:b], seeds[:b], steps=steps, guidance=2.5)  # warm-up
    sync()
    t0 = time.perf_counter()
    for lo in range(0, n, b):
        gen.sample(conds[lo:lo + b], seeds[lo:lo + b], steps=steps, guidance=2.5)
    sync()
    mem_rate = n / (time.perf_counter() - t0)
    req = BulkRequest(model=str(export), out=str(tmp / "bulk"), n=n, spec=spec, steps=steps, guidance=2.5, batch_size=b,
                      shard_size=max(b, 1000 // b * b), dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    t0 = time.perf_counter()
    run_bulk(req, gen, device=dev, progress=False, log=lambda m: None)
    e2e = n / (time.perf_counter() - t0)
    return {"images": n, "batch": b, "steps": steps, "dtype": str(dtype).replace("torch.", ""),
            "in_memory_img_s": round(mem_rate, 1), "end_to_end_img_s": round(e2e, 1),
            "ratio": round(e2e / mem_rate, 2), "target": ">= 0.9"}


def section_determinism(tmp: Path, sz: dict) -> dict:
    """Same images at batch 1 vs batch n; a bulk set resumed after losing a shard vs the whole set."""
    import hashlib

    from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk
    from synth.samplers.generator import load_generator
    from synth.devices import resolve_device

    dev = str(resolve_device(None))
    gen = load_generator(tmp / "pixel" / "export", device=dev)
    n = sz["det_n"]
    conds = [gen.schema.condition(i % 2) for i in range(n)]
    seeds = list(range(n))
    together = gen.sample(conds, seeds, steps=sz["bulk_steps"], guidance=2.5).images
    alone = torch.cat([gen.sample(conds[i:i + 1], seeds[i:i + 1], steps=sz["bulk_steps"], guidance=2.5).images
                       for i in range(n)])
    diff = (together.int() - alone.int()).abs()
    spec = parse_label_spec(",".join(gen.schema.classes), gen.schema, log=lambda m: None)
    b = max(2, n // 4)

    def bulk(out: Path) -> dict:
        req = BulkRequest(model=str(tmp / "pixel" / "export"), out=str(out), n=2 * n, spec=spec, steps=sz["bulk_steps"],
                          guidance=2.5, batch_size=b, shard_size=2 * b)
        run_bulk(req, gen, device=dev, progress=False, log=lambda m: None)
        return {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(out.rglob("*.png"))}

    whole = bulk(tmp / "det-a")
    bulk(tmp / "det-b")
    shutil.rmtree(tmp / "det-b" / "shard-00001", ignore_errors=True)  # a lost shard: done-record now lies
    for rec in (tmp / "det-b" / ".synth" / "done").glob("shard-00001*"):
        rec.unlink()
    resumed = bulk(tmp / "det-b")
    return {"images": n, "batch_1_vs_batch_n_max_grey_levels": int(diff.max()),
            "batch_1_vs_batch_n_pixels_differing": f"{float((diff > 0).float().mean()) * 100:.2f}%",
            "bulk_resumed_equals_uninterrupted": whole == resumed}


# ---------------------------------------------------------------------------
# 7. Sampler vs StableDiffusionPipeline at SD-1.5 size


def section_sampler(tmp: Path, sz: dict, tiny: bool) -> dict:
    from diffusers import StableDiffusionPipeline

    from synth.samplers.generator import LDMGenerator
    from synth.devices import resolve_device
    from synth.labels import LabelSchema
    from synth.trainers.export import export_ldm
    from synth.codecs import VAECodec
    from synth.models import build_noise_scheduler

    dev = resolve_device(None)
    dtype = torch.float16 if dev.type == "cuda" else torch.float32
    res = sz["sd_res"]
    sd = tmp / "sd15" if (tmp / "sd15").is_dir() else build_sd_folder(tmp / "sd15", tiny, res)
    pipe0 = StableDiffusionPipeline.from_pretrained(sd, safety_checker=None, use_safetensors=True)
    cfg = load_config(None, [f"data.resolution={res}", "model.codec=vae", "sample.steps=25", "sample.guidance=2.5"])
    export = export_ldm(tmp / "sd15-export", pipe0.unet, pipe0.text_encoder, pipe0.tokenizer, VAECodec(pipe0.vae),
                        LabelSchema(["normal", "pneumonia"]), cfg, build_noise_scheduler(1000, "scaled_linear", "epsilon"), 77)
    del pipe0
    pipe = StableDiffusionPipeline.from_pretrained(export, safety_checker=None, torch_dtype=dtype, use_safetensors=True).to(dev)
    pipe.set_progress_bar_config(disable=True)
    gen = LDMGenerator.from_export(export, device=dev, dtype=dtype)
    b, steps, w = sz["sampler_batch"], sz["sampler_steps"], 2.5
    conds = [gen.schema.condition(i % 2) for i in range(b)]
    seeds = list(range(b))
    noise = gen.initial_noise(seeds)

    def run_pipe():
        out = pipe([c.prompt or gen.schema.prompt_for(c.label) for c in conds], height=res, width=res,
                   num_inference_steps=steps, guidance_scale=w, latents=noise.clone().to(dev, dtype), output_type="pt").images
        return (out.float().mean(1, keepdim=True) * 255).round().to(torch.uint8).cpu()

    def run_ours(g):
        return g.sample(conds, seeds, steps=steps, guidance=w, sampler="dpmpp_2m").images

    agree = int((run_pipe().int() - run_ours(gen).int()).abs().max())
    variants = {"StableDiffusionPipeline": run_pipe, "ours": lambda: run_ours(gen)}
    warmup = None
    if sz["compile"]:
        gen_c = LDMGenerator.from_export(export, device=dev, dtype=dtype).optimize(compile=True, chunk_size=None)
        sync()
        t0 = time.perf_counter()
        run_ours(gen_c)
        sync()
        warmup = time.perf_counter() - t0
        variants["ours compiled"] = lambda: run_ours(gen_c)
    times = {k: [] for k in variants}
    for _ in range(sz["sampler_repeats"]):
        for k, fn in variants.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[k].append(time.perf_counter() - t0)
    ips = {k: b / statistics.median(v) for k, v in times.items()}
    row = {"resolution": res, "batch": b, "steps": steps, "guidance": w, "dtype": str(dtype).replace("torch.", ""),
           "max_grey_levels_vs_pipeline": agree, **{f"{k} img/s": round(v, 2) for k, v in ips.items()},
           "ours / pipeline": round(ips["ours"] / ips["StableDiffusionPipeline"], 2)}
    if warmup is not None:
        n = sz["set_size"]
        effective = n / (warmup + n / ips["ours compiled"])
        row.update({"compile warm-up s": round(warmup, 1), f"compiled incl. warm-up over {n} images img/s": round(effective, 2),
                    "compiled (incl. warm-up) / pipeline": round(effective / ips["StableDiffusionPipeline"], 2),
                    "target": ">= 1.5x pipeline"})
    return row


# ---------------------------------------------------------------------------
# 8. The bridge: training and bulk translation


def three_domain_npz(path: Path, res: int, n: int = 1536, n_test: int = 256) -> Path:
    """Phantoms rendered in three 'acquisition domains' (plain, dim, inverted), unpaired."""
    import numpy as np

    from synth.data import phantom_domains

    # The test split may be larger than the train split (the GPU run translates 2048 images from 1536).
    imgs, dom = phantom_domains(max(n, n_test), res)
    np.savez(path, train_images=imgs[:n], train_labels=dom[:n, None], val_images=imgs[:64], val_labels=dom[:64, None],
             test_images=imgs[:n_test], test_labels=(np.arange(n_test) % 2)[:, None])
    return path


def section_bridge(tmp: Path, sz: dict) -> dict:
    from synth.samplers.bridge import BridgeGenerator
    from synth.samplers.bulk import run_bulk
    from synth.samplers.translate import TranslateJob, TranslateRequest, input_fingerprint, load_input
    from synth.devices import resolve_device
    from synth.trainers.bridge import train_bridge

    data = three_domain_npz(tmp / "dom3.npz", sz["res"], *((96, 32) if sz["bulk_n"] < 1000 else (1536, 2048)))
    cfg = load_config(ROOT / "configs" / "dose-shift-64-bridge-pixel.yaml", [
        f"data.name={data}", f"data.resolution={sz['res']}", "labels.domains=[plain,dim,inverted]",
        f"train.steps={sz['pixel_steps']}", "train.progress=false", "train.checkpoint_every=100000",
        f"train.log_every={sz['pixel_steps']}", f"train.mixed_precision={precision()}", "sample.per_class=2",
        "sample.steps=2"])
    reset_peak()
    t0 = time.perf_counter()
    export = train_bridge(cfg, tmp / "bridge", log=lambda *a: None)
    rows = [json.loads(line) for line in (tmp / "bridge" / "logs" / "scalars.jsonl").read_text().splitlines()]
    train = {"steps": cfg.train.steps, "samples_per_s": round(rows[-1]["samples_per_s"], 1),
             "steps_per_s": round(rows[-1]["samples_per_s"] / cfg.train.batch_size, 2),
             "wall_s": round(time.perf_counter() - t0, 1), "peak_GiB": peak_gib()}
    dev = str(resolve_device(None))
    gen = BridgeGenerator.from_export(export, device=dev)
    inp = load_input(str(data), sz["res"], "test")
    n, b = len(inp), sz["bulk_batch"]
    gen.translate(inp.images[:b], "dim", "plain", tau=0.5, steps=sz["bulk_steps"])  # warm-up
    sync()
    t0 = time.perf_counter()
    for lo in range(0, n, b):
        gen.translate(inp.images[lo:lo + b], "dim", "plain", tau=0.5, steps=sz["bulk_steps"])
    sync()
    mem = n / (time.perf_counter() - t0)
    req = TranslateRequest(model=str(export), out=str(tmp / "translated"), n=n, spec=None, sampler="euler",
                           steps=sz["bulk_steps"], guidance=1.5, batch_size=b, shard_size=max(b, 256 // b * b),
                           input=str(data), source="dim", target="plain", tau=0.5, split="test",
                           input_hash=input_fingerprint(inp))
    t0 = time.perf_counter()
    run_bulk(req, gen, device=dev, progress=False, log=lambda m: None, job=TranslateJob(req, inp, gen))
    e2e = n / (time.perf_counter() - t0)
    return {"bridge training (pixel)": train,
            "translation": {"images": n, "batch": b, "tau": 0.5, "in_memory_img_s": round(mem, 1),
                            "end_to_end_img_s": round(e2e, 1), "ratio": round(e2e / mem, 2)}}


# ---------------------------------------------------------------------------
# Report


def to_markdown(results: dict, args, info: dict) -> str:
    lines = ["# GPU check", "", f"Command: `python benchmarks/gpu_check.py{' --tiny' if args.tiny else ''}`", "",
             "Machine: " + ", ".join(f"{k} {v}" for k, v in info.items()), ""]
    for name, res in results.items():
        lines += [f"## {name}", ""]
        if "error" in res:
            lines += [f"FAILED: {res['error']}", ""]
            continue
        nested = {k: v for k, v in res.items() if isinstance(v, dict)}
        flat = {k: v for k, v in res.items() if not isinstance(v, dict)}
        if nested:
            keys = sorted({kk for v in nested.values() for kk in v})
            lines += ["| variant | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
            lines += [f"| {k} | " + " | ".join(str(v.get(kk, "")) for kk in keys) + " |" for k, v in nested.items()]
            lines.append("")
        if flat:
            lines += ["| measure | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in flat.items()] + [""]
    return "\n".join(lines) + "\n"


def write_report(args, results: dict, t_all: float) -> None:
    """Write ``gpu_check.json`` and ``gpu_check.md`` for the sections finished so far."""
    info = {**device_info(), "total_s": round(time.perf_counter() - t_all, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps({"info": info, "results": results}, indent=2) + "\n")
    (args.out / "gpu_check.md").write_text(to_markdown(results, args, info))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tiny", action="store_true", help="tiny models on CPU: checks the code paths, not the speed")
    ap.add_argument("--out", type=Path, default=None,
                    help="where gpu_check.md/.json go (default: benchmarks/results; with --tiny runs/gpu-check-tiny, "
                         "so a CPU check never overwrites the committed GPU table)")
    ap.add_argument("--only", nargs="*", default=None, help="run only these sections (by number, e.g. 1 5)")
    args = ap.parse_args(argv)
    if args.out is None:
        args.out = ROOT / ("runs/gpu-check-tiny" if args.tiny else "benchmarks/results")
    sz = sizes(args.tiny)
    tmp = Path(tempfile.mkdtemp(prefix="synth-gpu-check-"))
    sections = [
        ("1. pixel training (1.7M UNet, batch 32)", lambda: section_pixel(tmp, sz)),
        ("2. latent training (Kermany-64 UNet on a 64 px autoencoder)", lambda: section_latent(tmp, sz)),
        ("3-4. SD-1.5-size fine-tune with text encoder, vs diffusers-style loop",
         lambda: section_sd_finetune(tmp, sz, args.tiny)),
        ("5. bulk sampling end to end vs in memory (1.7M model)", lambda: section_bulk(tmp, sz)),
        ("6. determinism", lambda: section_determinism(tmp, sz)),
        ("7. sampler vs StableDiffusionPipeline at SD-1.5 size", lambda: section_sampler(tmp, sz, args.tiny)),
        ("8. bridge training and bulk translation", lambda: section_bridge(tmp, sz)),
        ("9. autoencoder (perceptual + patch critic) and the codec gate", lambda: section_autoencoder(tmp, sz)),
        ("10. text flow with an unlabelled pool, translation, eval text", lambda: section_text_pool(tmp, sz)),
    ]
    results, failed = {}, 0
    t_all = time.perf_counter()
    for name, fn in sections:
        if args.only and name.split(".")[0].split("-")[0] not in args.only:
            continue
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # recorded; the other sections still run
            traceback.print_exc()
            res = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
            failed += 1
        res = {**res, "section_s": round(time.perf_counter() - t0, 1)} if "error" not in res else res
        results[name] = res
        print(f"[{time.perf_counter() - t_all:.0f}s] {name}: {json.dumps(res)}", flush=True)
        # Written after every section: a run stopped at a time limit still leaves what it measured.
        write_report(args, results, t_all)
    write_report(args, results, t_all)
    print(f"wrote {args.out / 'gpu_check.md'}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
