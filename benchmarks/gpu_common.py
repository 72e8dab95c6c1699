"""What the GPU check's sections share: model sizes (full or --tiny), the device, peak memory, a timed training run."""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")



def sizes(tiny: bool) -> dict:
    if tiny:
        return {"pixel_steps": 6, "latent_steps": 4, "sd_steps": 3, "sd_res": 64, "sd_batch": 2, "plain_steps": 3,
                "bulk_n": 48, "bulk_batch": 16, "bulk_steps": 3, "det_n": 4, "sampler_batch": 2, "sampler_steps": 3,
                "sampler_repeats": 2, "compile": False, "set_size": 10_000, "res": 16, "latent_res": 32, "ae_steps": 4,
                "judge_steps": 20}
    return {"pixel_steps": 400, "latent_steps": 200, "sd_steps": 12, "sd_res": 512, "sd_batch": 8, "plain_steps": 12,
            "bulk_n": 8192, "bulk_batch": 1024, "bulk_steps": 20, "det_n": 16, "sampler_batch": 16, "sampler_steps": 25,
            "sampler_repeats": 3, "compile": True, "set_size": 10_000, "res": 32, "latent_res": 64, "ae_steps": 200,
            "judge_steps": 400}


def sd_shapes(tiny: bool) -> dict:
    """Stable Diffusion 1.5's shapes (or a tiny copy): UNet 860M, VAE 84M (1 channel), CLIP 12 x 768."""
    if tiny:
        return {"unet": dict(blocks=[32, 64], layers=1, head_dim=8, cross=64, groups=32, attn=[False, True]),
                "vae": dict(blocks=[32, 32], layers=1, groups=32), "text": dict(hidden=64, layers=2, heads=2)}
    return {"unet": dict(blocks=[320, 640, 1280, 1280], layers=2, head_dim=8, cross=768, groups=32,
                         attn=[True, True, True, False]),
            "vae": dict(blocks=[128, 256, 512, 512], layers=2, groups=32), "text": dict(hidden=768, layers=12, heads=12)}


def device_info() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "cpu": platform.processor() or platform.machine(),
            "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_GiB"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
    try:
        import diffusers

        info["diffusers"] = diffusers.__version__
    except ImportError:
        pass
    return info


def reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float | None:
    if not torch.cuda.is_available():
        return None
    torch.cuda.synchronize()
    return round(torch.cuda.max_memory_allocated() / 2**30, 2)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def train_rate(cfg, run: Path) -> dict:
    """Train with ``train_ldm``; steady-state rate from its own log (first step excluded)."""
    from synth.trainers.ldm import train_ldm

    reset_peak()
    t0 = time.perf_counter()
    train_ldm(cfg, run, log=lambda *a: None)
    wall = time.perf_counter() - t0
    rows = [json.loads(line) for line in (run / "logs" / "scalars.jsonl").read_text().splitlines()]
    sps = rows[-1]["samples_per_s"]
    gb = cfg.train.batch_size * cfg.train.grad_accum
    return {"steps": cfg.train.steps, "batch": gb, "samples_per_s": round(sps, 1), "steps_per_s": round(sps / gb, 2),
            "wall_s_incl_setup_export": round(wall, 1), "peak_GiB": peak_gib()}


def precision() -> str:
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"
