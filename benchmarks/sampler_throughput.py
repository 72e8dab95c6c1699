"""Sampler throughput and efficiency, side by side in one run (issue: shared sampler).

    python benchmarks/sampler_throughput.py --tiny runs/bench/pneumoniamnist-32/export

1. Images/s of our sampler vs ``diffusers.StableDiffusionPipeline.__call__`` on the same
   exported model, scheduler (DPM-Solver++ 2M), steps, guidance, batch, precision and
   initial noise (images compared), for a tiny (trained, ~1.7M) and a mid-size (~15M,
   random weights: speed only) UNet; then the levers: channels_last, bf16, chunked
   batches, torch.compile.
2. Our defaults vs the pipeline's defaults (50 steps) at equal quality: KID on the
   features of a small classifier trained on the real data, with its standard error.
3. FLOP utilisation: UNet (+ decoder) FLOPs per image (torch.utils.flop_counter) x images/s
   over the measured peak of a large matmul of the same precision.
4. Bulk end-to-end (PNGs + manifest) vs in-memory sampling; peak RSS for N=1,000 vs N=20,000.
Interleaved repeats, medians; results -> benchmarks/results/sampler_throughput.{md,json}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from synth.samplers.bulk import BulkRequest, parse_label_spec, run_bulk  # noqa: E402
from synth.samplers.generator import LDMGenerator, load_generator  # noqa: E402
from synth.config import load_config  # noqa: E402
from synth.seeds import image_seed  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def median_time(fn, repeats: int) -> tuple[float, list[float]]:
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def build_mid_export(tmp: Path) -> Path:
    """A ~16M-parameter latent model (random weights) exported like a trained one."""
    from synth.codecs import VAECodec
    from synth.labels import LabelSchema
    from synth.models import build_noise_scheduler, build_text_encoder, build_tokenizer, unet_from_config, vae_from_config
    from synth.trainers.export import export_ldm

    cfg = load_config(None, ["data.resolution=64", "model.codec=vae", "model.unet.block_out_channels=[64,128,192]",
                             "model.unet.layers_per_block=2", "model.unet.cross_attention_dim=128",
                             "model.unet.norm_num_groups=32", "model.unet.attention_head_dim=32",
                             "model.text.hidden_size=128", "model.text.max_length=16"])
    torch.manual_seed(0)
    schema = LabelSchema(["normal", "pneumonia"])
    tok = build_tokenizer([schema.prompt_for(0), schema.prompt_for(1)], 600, 16)
    te = build_text_encoder(len(tok), 128, 2, 4, 16)
    vae = vae_from_config(cfg.model, 64)
    unet = unet_from_config(cfg.model, 16, 4, cross_attention_dim=128)
    sched = build_noise_scheduler(1000, "scaled_linear", "epsilon")
    return export_ldm(tmp / "mid", unet, te, tok, VAECodec(vae), schema, cfg, sched, 16)


def pipeline_images(pipe, gen: LDMGenerator, conds, noise, steps, guidance) -> torch.Tensor:
    """Run StableDiffusionPipeline with our initial noise -> uint8 (B, 1, H, W)."""
    res = gen.resolution
    if gen.codec.kind == "pixel":
        out = pipe([c.prompt for c in conds], height=res * 8, width=res * 8, num_inference_steps=steps,
                   guidance_scale=guidance, latents=noise.clone(), output_type="latent").images
        return ((out.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    out = pipe([c.prompt for c in conds], height=res, width=res, num_inference_steps=steps, guidance_scale=guidance,
               latents=noise.clone(), output_type="pt").images  # (B, 3, H, W) in [0, 1]
    return (out.float().mean(1, keepdim=True) * 255).round().to(torch.uint8)


def chunked(gen, conds, seeds, chunk, **kw):
    return torch.cat([gen.sample(conds[i:i + chunk], seeds[i:i + chunk], **kw).images for i in range(0, len(conds), chunk)])


def unet_flops(gen: LDMGenerator, batch: int, steps: int, guidance: float) -> float:
    """FLOPs per image: UNet calls (x2 with guidance) x steps + one decode."""
    from torch.utils.flop_counter import FlopCounterMode

    c, h, w = gen.codec.latent_shape(gen.resolution)
    p = next(gen.unet.parameters())
    x = torch.randn(batch, c, h, w, dtype=p.dtype)
    emb = gen.text_embeddings(["chest x-ray, normal"] * batch).to(p.dtype)
    with FlopCounterMode(display=False) as fc:
        with torch.no_grad():
            gen.unet(x, torch.full((batch,), 500.0), encoder_hidden_states=emb)
    per_call = fc.get_total_flops() / batch
    dec = 0.0
    if gen.codec.kind == "vae":
        with FlopCounterMode(display=False) as fc:
            with torch.no_grad():
                gen.codec.decode(x)
        dec = fc.get_total_flops() / batch
    return per_call * steps * (2 if guidance != 1.0 else 1) + dec


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t, _ = median_time(lambda: a @ b, repeats)
    return 2 * n**3 / t


def bench_model(name: str, export: Path, batch: int, steps: int, guidance: float, repeats: int, compile_: bool, log) -> dict:
    from diffusers import StableDiffusionPipeline

    gen = load_generator(export)
    pipe = StableDiffusionPipeline.from_pretrained(export, **({"vae": None} if gen.codec.kind == "pixel" else {}),
                                                   safety_checker=None, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    conds = [gen.schema.condition(i % 2) for i in range(batch)]
    seeds = [image_seed(0, i) for i in range(batch)]
    noise = gen.initial_noise(seeds)
    kw = dict(steps=steps, guidance=guidance, sampler="dpmpp_2m")
    ref = pipeline_images(pipe, gen, conds, noise, steps, guidance)
    ours = gen.sample(conds, seeds, **kw).images
    agree = int((ours.int() - ref.int()).abs().max())
    gen_bf16 = load_generator(export, dtype=torch.bfloat16)
    ours_bf16 = gen_bf16.sample(conds, seeds, **kw).images
    bf16_diff = {"max": int((ours_bf16.int() - ours.int()).abs().max()),
                 "mean": float((ours_bf16.float() - ours.float()).abs().mean())}
    gen_c16 = load_generator(export).optimize(chunk_size=16)
    gen_c8cl = load_generator(export).optimize(chunk_size=8, channels_last=True)
    gen_c16cl = load_generator(export).optimize(chunk_size=16, channels_last=True)
    gen_bf16_c16 = load_generator(export, dtype=torch.bfloat16).optimize(chunk_size=16)
    variants = {
        "pipeline fp32": lambda: pipeline_images(pipe, gen, conds, noise, steps, guidance),
        "ours fp32": lambda: gen.sample(conds, seeds, **kw),
        "ours fp32 chunks of 16": lambda: gen_c16.sample(conds, seeds, **kw),
        "ours fp32 chunks of 8 + channels_last": lambda: gen_c8cl.sample(conds, seeds, **kw),
        "ours fp32 chunks of 16 + channels_last": lambda: gen_c16cl.sample(conds, seeds, **kw),
        "ours bf16": lambda: gen_bf16.sample(conds, seeds, **kw),
        "ours bf16 chunks of 16": lambda: gen_bf16_c16.sample(conds, seeds, **kw),
    }
    if compile_:
        gen_c = load_generator(export).optimize(compile=True)
        t0 = time.perf_counter()
        gen_c.sample(conds, seeds, **kw)
        log(f"{name}: torch.compile warm-up {time.perf_counter() - t0:.0f}s")
        compiled = gen_c.sample(conds, seeds, **kw).images
        variants["ours fp32 compiled"] = lambda: gen_c.sample(conds, seeds, **kw)
    times: dict[str, list[float]] = {k: [] for k in variants}
    for r in range(repeats):  # interleaved
        for k, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
        log(f"{name} repeat {r + 1}: " + ", ".join(f"{k} {batch / v[-1]:.1f}/s" for k, v in times.items()))
    ips = {k: batch / statistics.median(v) for k, v in times.items()}
    flops = {"fp32": unet_flops(gen, batch, steps, guidance)}
    res = {"params_unet_M": sum(p.numel() for p in gen.unet.parameters()) / 1e6, "batch": batch, "steps": steps,
           "guidance": guidance, "codec": gen.codec.kind, "resolution": gen.resolution,
           "images_per_s": ips, "all_times_s": times, "pipeline_agreement_max_grey_levels": agree,
           "bf16_vs_fp32_grey_levels": bf16_diff, "flops_per_image": flops["fp32"]}
    if compile_:
        res["compiled_vs_eager_max_grey_levels"] = int((compiled.int() - ours.int()).abs().max())
    return res


def kid_defaults(export: Path, n: int, log) -> dict:
    """Pipeline defaults (50 steps) vs our defaults (20 steps, bf16), KID vs real test images."""
    from diffusers import StableDiffusionPipeline

    from synth.data import load_split
    from synth.metrics import classifier_features, kid
    from synth.trainers.classifier import train_classifier

    gen = load_generator(export)
    meta = json.loads((export / "synth.json").read_text())
    d = meta["config"]["data"]
    cfg = load_config(None, [f"data.name={d['name']}", f"data.resolution={gen.resolution}", "data.val_max_items=null"]
                      + ([f"data.cache_dir={d['cache_dir']}"] if d.get("cache_dir") else []))
    train, test = load_split(cfg.data, "train"), load_split(cfg.data, "test")
    judge = train_classifier(train.images, train.labels, len(train.classes), steps=600)
    real = classifier_features(judge, test.images)
    pipe = StableDiffusionPipeline.from_pretrained(export, vae=None, safety_checker=None, use_safetensors=True)
    pipe.set_progress_bar_config(disable=True)
    guidance = meta["default_sampling"]["guidance"]
    conds = [gen.schema.condition(int(test.labels[i % len(test)])) for i in range(n)]  # the test split's label mix
    seeds = [image_seed(99, i) for i in range(n)]
    out, t = {}, {}
    t0 = time.perf_counter()
    imgs = torch.cat([pipeline_images(pipe, gen, conds[i:i + 100], gen.initial_noise(seeds[i:i + 100]), 50, guidance)
                      for i in range(0, n, 100)])
    t["pipeline defaults (50 steps, fp32)"] = time.perf_counter() - t0
    out["pipeline defaults (50 steps, fp32)"] = imgs
    gen16 = load_generator(export, dtype=torch.bfloat16).optimize(chunk_size=16)
    for steps in (20, 10):
        key = f"ours ({steps} steps dpmpp_2m, bf16, chunks of 16)"
        t0 = time.perf_counter()
        out[key] = torch.cat([gen16.sample(conds[i:i + 100], seeds[i:i + 100], steps=steps, guidance=guidance).images
                              for i in range(0, n, 100)])
        t[key] = time.perf_counter() - t0
    res = {}
    for k, imgs in out.items():
        m, se = kid(real, classifier_features(judge, imgs), subsets=50, subset_size=min(200, n))
        res[k] = {"kid": m, "kid_se": se, "seconds": t[k], "images_per_s": n / t[k]}
        log(f"KID {k}: {m:.5f} +- {se:.5f}, {n / t[k]:.1f} images/s")
    tt = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(1))]
    m, se = kid(tt[: len(tt) // 2], tt[len(tt) // 2:], subsets=50, subset_size=min(200, len(tt) // 2))
    res["real vs real (floor)"] = {"kid": m, "kid_se": se}
    return res


def bulk_vs_memory(export: Path, n: int, batch: int, steps: int, tmp: Path, log) -> dict:
    gen = load_generator(export)
    spec = parse_label_spec(",".join(gen.schema.classes), gen.schema)
    conds_all = [gen.schema.condition(i % 2) for i in range(n)]
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        gen.sample(conds_all[i:i + batch], [image_seed(0, j) for j in range(i, min(n, i + batch))], steps=steps, guidance=1.5)
    mem_s = time.perf_counter() - t0
    req = BulkRequest(model=str(export), out=str(tmp / "bulk"), n=n, spec=spec, steps=steps, guidance=1.5, batch_size=batch)
    t0 = time.perf_counter()
    run_bulk(req, gen, progress=False)
    bulk_s = time.perf_counter() - t0
    log(f"bulk {n / bulk_s:.1f}/s vs in-memory {n / mem_s:.1f}/s")
    return {"n": n, "steps": steps, "batch": batch, "in_memory_images_per_s": n / mem_s,
            "bulk_images_per_s": n / bulk_s, "ratio": mem_s / bulk_s}


def peak_rss(export: Path, n: int, out: Path, steps: int) -> float:
    """Peak RSS (MiB) of a `synth sample` process making n images."""
    code = ("import resource,sys; from synth.cli import main; "
            "sys.argv=['synth','sample','--model',sys.argv[1],'--n',sys.argv[2],'--out',sys.argv[3],'--steps',sys.argv[4],"
            "'--quiet'];\ntry: main()\nexcept SystemExit: pass\n"
            "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    p = subprocess.run([sys.executable, "-c", code, str(export), str(n), str(out), str(steps)], capture_output=True,
                       text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    line = [l for l in p.stdout.splitlines() if l.startswith("MAXRSS")]
    if not line:
        raise RuntimeError(p.stderr[-2000:])
    return int(line[0].split()[1]) / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tiny", required=True, help="a trained small export (pixel space)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--kid-n", type=int, default=500)
    ap.add_argument("--bulk-n", type=int, default=400)
    ap.add_argument("--memory-n", type=int, nargs=2, default=[1000, 20000])
    ap.add_argument("--no-compile", action="store_true")
    args = ap.parse_args()
    log = lambda m: print(m, flush=True)  # noqa: E731
    tmp = Path(tempfile.mkdtemp(prefix="synth-sbench-"))
    res: dict = {"command": "python " + " ".join(sys.argv), "machine": f"{platform.machine()} (lscpu: AMD EPYC, avx512_bf16), "
                 f"{torch.get_num_threads()} torch threads", "torch": torch.__version__}
    res["peak_matmul_flops"] = {k: matmul_peak(v) for k, v in DTYPES.items()}
    log("peak matmul GFLOP/s: " + ", ".join(f"{k} {v / 1e9:.1f}" for k, v in res["peak_matmul_flops"].items()))
    tiny = Path(args.tiny)
    res["tiny"] = bench_model("tiny", tiny, 32, args.steps, 1.5, args.repeats, not args.no_compile, log)
    mid = build_mid_export(tmp)
    res["mid"] = bench_model("mid", mid, 16, args.steps, 1.5, args.repeats, False, log)  # compile: tiny only (CPU compile time)
    res["kid"] = kid_defaults(tiny, args.kid_n, log)
    res["bulk"] = bulk_vs_memory(tiny, args.bulk_n, 64, args.steps, tmp, log)
    res["memory_mib"] = {str(n): peak_rss(tiny, n, tmp / f"mem-{n}", 1) for n in args.memory_n}
    log(f"peak RSS: {res['memory_mib']}")
    out = ROOT / "benchmarks" / "results" / "sampler_throughput"
    out.with_suffix(".json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    write_markdown(out.with_suffix(".md"), res)
    print(out.with_suffix(".md").read_text())


def write_markdown(path: Path, res: dict) -> None:
    pk = res["peak_matmul_flops"]
    L = ["# Sampler throughput", "", f"Command: `{res['command']}`", "",
         f"Machine: {res['machine']}, torch {res['torch']}, CPU only (no GPU was lent to this task).", "",
         f"Measured matmul peak (2048^3, median of 5): fp32 {pk['fp32'] / 1e9:.1f} GFLOP/s, bf16 {pk['bf16'] / 1e9:.1f} GFLOP/s.", ""]
    for name in ("tiny", "mid"):
        r = res[name]
        base = r["images_per_s"]["pipeline fp32"]
        L += [f"## {name}: UNet {r['params_unet_M']:.1f}M params, {r['codec']} codec, {r['resolution']}px, batch {r['batch']}, "
              f"{r['steps']} steps DPM-Solver++(2M), guidance {r['guidance']}", "",
              f"Same initial noise: our images vs the pipeline's differ by at most {r['pipeline_agreement_max_grey_levels']} grey "
              f"level(s). bf16 vs fp32: max {r['bf16_vs_fp32_grey_levels']['max']}, mean "
              f"{r['bf16_vs_fp32_grey_levels']['mean']:.2f} grey levels."
              + (f" Compiled vs eager: max {r['compiled_vs_eager_max_grey_levels']} grey levels." if "compiled_vs_eager_max_grey_levels" in r else ""),
              "", "| variant | images/s (median) | vs pipeline | FLOP utilisation |", "|---|---|---|---|"]
        for k, v in r["images_per_s"].items():
            prec = "bf16" if "bf16" in k else "fp32"
            util = v * r["flops_per_image"] / pk[prec]
            L.append(f"| {k} | {v:.2f} | {v / base:.2f}x | {100 * util:.0f}% of {prec} matmul peak |")
        L += ["", f"FLOPs per image (UNet x steps x 2 for guidance{' + decoder' if r['codec'] == 'vae' else ''}): "
              f"{r['flops_per_image'] / 1e9:.2f} GFLOP.", ""]
    L += ["## Defaults at equal quality (tiny model)", "",
          "KID on the features of a small CNN trained on the real training split, generated vs real test images "
          "(test split's label mix), 50 subsets:", "", "| setting | KID | SE | images/s | speed-up |", "|---|---|---|---|---|"]
    k0 = res["kid"]["pipeline defaults (50 steps, fp32)"]["images_per_s"]
    for k, v in res["kid"].items():
        ips = v.get("images_per_s")
        L.append(f"| {k} | {v['kid']:.5f} | {v['kid_se']:.5f} | {'' if ips is None else f'{ips:.1f}'} | "
                 f"{'' if ips is None else f'{ips / k0:.2f}x'} |")
    b = res["bulk"]
    L += ["", "## Bulk end-to-end", "",
          f"{b['n']} images, {b['steps']} steps, batch {b['batch']}: in memory {b['in_memory_images_per_s']:.1f} images/s, "
          f"bulk to PNG shards + manifest {b['bulk_images_per_s']:.1f} images/s: ratio {b['ratio']:.2f}x.", "",
          "Peak RSS of `synth sample` (1 solver step, so the large N stays short; memory does not depend on steps): " +
          ", ".join(f"N={n}: {m:.0f} MiB" for n, m in res["memory_mib"].items()) + ".", ""]
    path.write_text("\n".join(L))


if __name__ == "__main__":
    main()
