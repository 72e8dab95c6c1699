"""LoRA vs full fine-tuning of a small Stable-Diffusion-shaped model (issue 18 item 4): trainable parameters,
peak memory and step time, side by side in one run (each mode in its own process, median of ``--repeats``).

    python benchmarks/lora_memory.py --out benchmarks/results/lora_memory

The model is SD-shaped (latent UNet with cross-attention in the three lower levels, a CLIP text encoder, a VAE),
about 1/20 of SD 1.5's UNet (42M parameters), built offline and saved as a diffusers folder, then fine-tuned with
``synth train ldm --set model.pretrained=<folder>`` (text encoder trained too), fully or with
``train.lora_rank=8 train.lora_text_encoder=true``.  Peak memory is the process's peak resident set (CPU) or the
peak allocated CUDA memory (GPU) during training.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODES = {"full": [], "lora": ["train.lora_rank=8", "train.lora_text_encoder=true"]}


def build_model(path: Path) -> None:
    """An SD-shaped diffusers folder: UNet [64, 128, 256, 256] with cross-attention 256, CLIP text encoder 256 x 4."""
    import torch
    from diffusers import DDPMScheduler, StableDiffusionPipeline

    from synth.models import build_text_encoder, build_tokenizer, build_unet, build_vae

    torch.manual_seed(0)
    tok = build_tokenizer(["chest x-ray", "normal", "pneumonia"], vocab_size=1000, model_max_length=32)
    pipe = StableDiffusionPipeline(
        vae=build_vae(1, [32, 64], 1, 4, 16, 64), text_encoder=build_text_encoder(len(tok), 256, 4, 4, 32),
        tokenizer=tok, unet=build_unet(16, 4, [64, 128, 256, 256], 2, 8, 256, 32, [False, True, True, True]),
        scheduler=DDPMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(path, safe_serialization=True)


def child(mode: str, model: str, run: str, steps: int) -> None:
    """One fine-tuning run in this process; prints a JSON line with its figures."""
    import resource

    import torch

    from synth.config import load_config
    from synth.trainers.ldm import train_ldm

    said = []
    cfg = load_config(None, ["data.name=phantom", "data.resolution=32", "data.phantom_items=64", f"model.pretrained={model}",
                             "model.codec=vae", "train.force=true", "train.text_lr=1e-5", "train.batch_size=8",
                             f"train.steps={steps}", "train.progress=false", "train.checkpoint_every=1000",
                             "train.ema_decay=0", "sample.per_class=1", "sample.steps=2", *MODES[mode]])
    t0 = time.perf_counter()
    train_ldm(cfg, run, log=said.append)
    wall = time.perf_counter() - t0
    lora = next((s for s in said if s.startswith("LoRA rank")), "")
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    print(json.dumps({"mode": mode, "wall_s": wall, "peak_bytes": peak, "lora_line": lora}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/results/lora_memory")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", nargs=4, metavar=("MODE", "MODEL", "RUN", "STEPS"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        return child(a.child[0], a.child[1], a.child[2], int(a.child[3]))
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    work = Path(tempfile.mkdtemp(prefix="lora-bench-"))
    build_model(work / "sd")
    n_unet = sum(p.numel() for p in UNet2DConditionModel.from_pretrained(work / "sd", subfolder="unet").parameters())
    n_text = sum(p.numel() for p in CLIPTextModel.from_pretrained(work / "sd", subfolder="text_encoder").parameters())
    runs: dict[str, list[dict]] = {m: [] for m in MODES}
    for r in range(a.repeats):
        for mode in MODES:  # interleaved: both modes see the same machine state
            out = subprocess.run([sys.executable, __file__, "--child", mode, str(work / "sd"), str(work / f"{mode}-{r}"),
                                  str(a.steps)], capture_output=True, text=True, check=True,
                                 env={**os.environ, "PYTHONPATH": str(ROOT)})
            runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    line = runs["lora"][0]["lora_line"]
    trainable = int(line.split(": ")[1].split(" trainable")[0].replace(",", ""))
    res = {"device": "cuda" if torch.cuda.is_available() else "cpu", "steps": a.steps, "repeats": a.repeats,
           "params_unet": n_unet, "params_text_encoder": n_text, "trainable_full": n_unet + n_text,
           "trainable_lora": trainable, "lora_share": trainable / (n_unet + n_text),
           **{f"{m}_peak_bytes_median": statistics.median(x["peak_bytes"] for x in runs[m]) for m in MODES},
           **{f"{m}_wall_s_median": statistics.median(x["wall_s"] for x in runs[m]) for m in MODES}, "runs": runs}
    res["peak_ratio_lora_over_full"] = res["lora_peak_bytes_median"] / res["full_peak_bytes_median"]
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=2))
    md = [f"# LoRA vs full fine-tuning (SD-shaped model, {res['device']})", "", "```", f"python benchmarks/lora_memory.py "
          f"--out {a.out} --steps {a.steps} --repeats {a.repeats}", "```", "",
          f"UNet {n_unet:,} + text encoder {n_text:,} parameters; batch 8 at 32 px (latent 4x16x16); {a.steps} steps; "
          f"median of {a.repeats} runs per mode, modes interleaved, each in its own process. Peak: resident set of "
          f"the process (CPU; includes Python, torch and the data) or peak allocated CUDA memory.", "",
          "| mode | trainable parameters | share | peak memory | wall s (incl. load/export) |", "|---|---|---|---|---|",
          f"| full fine-tuning (UNet + text encoder) | {n_unet + n_text:,} | 100% | "
          f"{res['full_peak_bytes_median'] / 2**20:.0f} MiB | {res['full_wall_s_median']:.1f} |",
          f"| LoRA rank 8 (UNet + text encoder) | {trainable:,} | {100 * res['lora_share']:.2f}% | "
          f"{res['lora_peak_bytes_median'] / 2**20:.0f} MiB | {res['lora_wall_s_median']:.1f} |", "",
          f"Target: trainable parameters <= 5% of full fine-tuning: {100 * res['lora_share']:.2f}% "
          f"({'met' if res['lora_share'] <= 0.05 else 'missed'}). Peak memory LoRA / full: "
          f"{res['peak_ratio_lora_over_full']:.2f}."]
    out.with_suffix(".md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
