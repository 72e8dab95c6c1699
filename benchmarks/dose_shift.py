"""The dose-shift benchmark: unpaired domain translation with a known ground truth.

    python benchmarks/dose_shift.py data    --kermany ../shared/data/kermany-cxr-224   # builds runs/dose-shift/data.npz
    python benchmarks/dose_shift.py train   # autoencoder, latent bridge, pixel bridge, latent LDM (SDEdit baseline)
    python benchmarks/dose_shift.py eval    # tables + plots into benchmarks/results/dose-shift*

Domains are simulated acquisition settings of the SAME chest X-ray (Kermany 2018, at
64x64), from a documented physical model (:func:`render`):

  1. the displayed image I in [0, 1] is read as attenuation: line integral mu = K * I;
  2. photons: n ~ Poisson(N0 * exp(-mu)), N0 = photons per pixel at the dose;
  3. log transform back: I' = -ln(max(n, 0.5) / N0) / K;
  4. detector blur: Gaussian with sigma = BLUR px;
  5. display: contrast/gamma change I'' = clip(I', 0, 1) ** GAMMA.

  full_dose      N0 = 20000, blur 0.0 px, gamma 1.00
  low_dose       N0 =   800, blur 0.6 px, gamma 0.85
  very_low_dose  N0 =   200, blur 1.0 px, gamma 0.70

Training is unpaired: every training image is rendered in exactly ONE domain (a seeded
third each).  Every test image is rendered in all three (each with its own noise), so
the translation of test image i into domain d is compared with test image i rendered
in d.  Labels (NORMAL / PNEUMONIA) travel with the images.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DOMAINS = ("full_dose", "low_dose", "very_low_dose")
PHYSICS = {"full_dose": (20000.0, 0.0, 1.0), "low_dose": (800.0, 0.6, 0.85), "very_low_dose": (200.0, 1.0, 0.70)}
K = 3.0
RES = 64
WORK = ROOT / "runs" / "dose-shift"
RESULTS = ROOT / "benchmarks" / "results"


# ---------------------------------------------------------------------------
# The physical model


def gaussian_blur(img: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of (H, W) float, reflect padding; identity for sigma <= 0."""
    if sigma <= 0:
        return img
    r = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-r, r + 1)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    k /= k.sum()
    pad = np.pad(img, r, mode="reflect")
    tmp = np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 1, pad)
    return np.apply_along_axis(lambda v: np.convolve(v, k, mode="valid"), 0, tmp)


def render(img: np.ndarray, domain: str, rng: np.random.Generator) -> np.ndarray:
    """uint8 (H, W) full-quality image -> uint8 (H, W) as acquired in ``domain`` (see module docstring)."""
    n0, blur, gamma = PHYSICS[domain]
    mu = K * img.astype(np.float64) / 255.0
    counts = rng.poisson(n0 * np.exp(-mu))
    est = -np.log(np.maximum(counts, 0.5) / n0) / K
    est = gaussian_blur(est, blur)
    out = np.clip(est, 0, 1) ** gamma
    return np.round(out * 255).astype(np.uint8)


def build_data(kermany: Path, out: Path, seed: int = 0) -> dict:
    """Write ``out`` (MedMNIST-style npz, labels = domain) plus ``test-gt.npz`` (every domain per test image)."""
    from synth.config import DataConfig
    from synth.data import load_split

    cfg = DataConfig(name=str(kermany), resolution=RES, val_fraction=0.1, val_max_items=None, seed=seed)
    splits = {s: load_split(cfg, s, ["NORMAL", "PNEUMONIA"]) for s in ("train", "val", "test")}
    rng = np.random.default_rng(seed)
    arrays = {}
    for split in ("train", "val"):
        s = splits[split]
        dom = rng.permutation(np.arange(len(s)) % len(DOMAINS))  # each image in exactly one domain
        imgs = np.stack([render(s.images[i, 0].numpy(), DOMAINS[d], rng) for i, d in enumerate(dom)])
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = imgs, dom[:, None]
        arrays[f"{split}_pathology"] = s.labels.numpy()
    test = splits["test"]
    gt = np.stack([np.stack([render(test.images[i, 0].numpy(), d, rng) for d in DOMAINS]) for i in range(len(test))])
    arrays["test_images"], arrays["test_labels"] = gt[:, 0], np.zeros((len(test), 1), np.int64)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **arrays)
    np.savez_compressed(out.parent / "test-gt.npz", images=gt, pathology=test.labels.numpy(), domains=np.array(DOMAINS))
    for d_i, d in enumerate(DOMAINS):  # translation inputs: one folder per source domain, labelled by pathology
        np.savez_compressed(out.parent / f"test-{d}.npz", test_images=gt[:, d_i], test_labels=test.labels.numpy()[:, None])
    info = {"train": len(splits["train"]), "val": len(splits["val"]), "test": len(test),
            "train_per_domain": np.bincount(arrays["train_labels"][:, 0]).tolist()}
    (out.parent / "data.json").write_text(json.dumps(info, indent=2))
    return info


# ---------------------------------------------------------------------------
# Training arms (each a `synth` command; CPU time of the child measured)


def cpu_of_children() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def synth(*args: str) -> dict:
    """Run ``synth ARGS`` (resumes if interrupted); returns wall and CPU seconds."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    c0, t0 = cpu_of_children(), time.perf_counter()
    subprocess.run([sys.executable, "-m", "synth.cli", *args], check=True, env=env, cwd=ROOT)
    return {"wall_s": round(time.perf_counter() - t0, 1), "cpu_s": round(cpu_of_children() - c0, 1)}


ARMS = {
    "autoencoder": ["train", "autoencoder", "--config", "configs/dose-shift-64-autoencoder.yaml"],
    "bridge-latent": ["train", "bridge", "--config", "configs/dose-shift-64-bridge.yaml"],
    "bridge-pixel": ["train", "bridge", "--config", "configs/dose-shift-64-bridge-pixel.yaml"],
    "ldm-latent": ["train", "ldm", "--config", "configs/dose-shift-64-ldm.yaml"],
}


def train_arms(names: list[str]) -> dict:
    data = WORK / "data.npz"
    times_file = WORK / "train-times.json"
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    for name in names:
        args = ARMS[name] + ["--run", str(WORK / name), "--set", f"data.name={data}", "--set", "train.progress=false"]
        if name != "autoencoder" and "pixel" not in name:
            args += ["--set", f"model.autoencoder={WORK / 'autoencoder'}"]
        print(f"== {name}: synth {' '.join(args)}", flush=True)
        t = synth(*args)
        times[name] = {"command": "synth " + " ".join(args), **{k: v + times.get(name, {}).get(k, 0) for k, v in t.items()}}
        times_file.write_text(json.dumps(times, indent=2))
    return times


# ---------------------------------------------------------------------------
# Evaluation

DIRECTIONS = (("low_dose", "full_dose"), ("very_low_dose", "full_dose"))


class Features(torch.nn.Module):
    """The realism feature extractor for torchmetrics: a SmallCNN trained by this script to tell
    the three doses apart on the training renderings (uint8 (N, 1, H, W) -> (N, 128))."""

    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn.eval()
        self.num_features = cnn.widths[-1]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from synth.io import to_float

        if x.shape[1] != 1:  # torchmetrics probes with a 3-channel dummy
            x = x[:, :1]
        return self.cnn.features(to_float(x)).double()


def dose_classifier(train_images: torch.Tensor, train_domains: torch.Tensor):
    from synth.trainers.classifier import train_classifier

    return train_classifier(train_images, train_domains, len(DOMAINS), steps=600, batch_size=64, seed=0)


def realism(features: Features, real: torch.Tensor, fake: torch.Tensor) -> dict:
    """KID (mean, std over subsets) and FID with torchmetrics on the project's features."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    kid = KernelInceptionDistance(feature=features, subsets=50, subset_size=min(200, len(real), len(fake)), normalize=False)
    fid = FrechetInceptionDistance(feature=features, normalize=False)
    for m in (kid, fid):
        m.update(real, real=True)
        m.update(fake, real=False)
    k_mean, k_std = kid.compute()
    return {"kid": float(k_mean), "kid_std": float(k_std), "fid": float(fid.compute())}


def structure(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    """SSIM and PSNR (data range 1) of uint8 (N, 1, H, W) against the ground-truth rendering."""
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    a, b = pred.double() / 255, gt.double() / 255
    return {"ssim": float(structural_similarity_index_measure(a, b, data_range=1.0)),
            "psnr": float(peak_signal_noise_ratio(a, b, data_range=1.0))}


def histogram_match(images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Map each image's grey-level CDF onto the pooled CDF of ``reference`` (the target domain)."""
    ref_cdf = np.cumsum(np.bincount(reference.numpy().ravel(), minlength=256)) / reference.numel()
    out = []
    for img in images.numpy():
        cdf = np.cumsum(np.bincount(img.ravel(), minlength=256)) / img.size
        lut = np.searchsorted(ref_cdf, cdf).clip(0, 255).astype(np.uint8)
        out.append(lut[img])
    return torch.from_numpy(np.stack(out))


@torch.no_grad()
def sdedit(gen, images: torch.Tensor, target_class: int, strength: float, steps: int, guidance: float,
           seeds: list[int]) -> torch.Tensor:
    """SDEdit (Meng et al. 2022) with the latent diffusion model: encode, noise to ``strength`` of the
    schedule, denoise under the target domain's prompt with DDIM (``steps`` evaluations)."""
    from synth import solvers
    from synth.paths.diffusion import diffusion_denoiser, sigmas_from_alphas
    from synth.io import to_float, to_uint8
    from synth.seeds import generator_for

    model_sigmas = sigmas_from_alphas(gen.alphas_cumprod)
    t0 = strength * (len(model_sigmas) - 1)
    ts = np.linspace(t0, 0, steps + 1)[:-1]
    sig = np.interp(ts, np.arange(len(model_sigmas)), model_sigmas.numpy())
    sigmas = torch.tensor(list(sig) + [0.0], dtype=torch.float64)
    x1 = gen.codec.encode(to_float(images)).float()
    noise = torch.stack([torch.randn(x1.shape[1:], generator=generator_for(s)) for s in seeds])
    x = x1 + float(sigmas[0]) * noise
    prompt = gen.schema.prompt_for(target_class)
    cond = gen.text_embeddings([prompt] * len(images))
    uncond = gen.text_embeddings([""] * len(images))

    def unet_fn(x_vp, t, c):
        return gen.unet(x_vp, t, encoder_hidden_states=c).sample.float()

    predict = diffusion_denoiser(unet_fn, gen.alphas_cumprod, gen.prediction_type)
    z = solvers.get("euler").fn(predict, x, sigmas, cond=cond, uncond=uncond, guidance=guidance)
    return to_uint8(gen.codec.decode(z).float())


def bridge_nfe(sampler: str, k: int) -> int:
    """Network evaluations of a translation with ``k`` steps per leg: the inversion leg never ends
    at sigma = 0, so a two-stage solver pays 2 per step there; the forward leg's last step pays 1."""
    from synth.solvers import model_evals

    forward = model_evals(sampler, k)
    return forward + (2 * k if forward == 2 * k - 1 else k)


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}


def evaluate(n: int, taus: list[float], steps: int, guidance: float = 1.5, batch: int = 64,
             pixel_taus: list[float] | None = None) -> dict:
    """Every arm, every direction: structure vs ground truth, realism vs real target images, CPU time."""
    import torch

    from synth.samplers.bridge import BridgeGenerator
    from synth.samplers.generator import LDMGenerator
    torch.manual_seed(0)
    t_eval = time.perf_counter()
    z = np.load(WORK / "test-gt.npz")
    gt = torch.from_numpy(z["images"][:n])  # (n, 3, H, W)
    tr = np.load(WORK / "data.npz")
    train_imgs, train_dom = torch.from_numpy(tr["train_images"])[:, None], torch.from_numpy(tr["train_labels"][:, 0])
    (cnn, t_cls) = timed(lambda: dose_classifier(train_imgs, train_dom))
    feats = Features(cnn)
    bridges = {name: BridgeGenerator.from_export(WORK / name / "export") for name in ("bridge-latent", "bridge-pixel")
               if (WORK / name / "export" / "synth.json").is_file()}
    ldm = LDMGenerator.from_export(WORK / "ldm-latent" / "export") if (WORK / "ldm-latent" / "export").is_dir() else None
    sampler = "midpoint"
    rows = []

    def run(fn):
        return torch.cat([fn(lo, min(n, lo + batch)) for lo in range(0, n, batch)])

    examples = {}
    for src, tgt in DIRECTIONS:
        s_i, t_i = DOMAINS.index(src), DOMAINS.index(tgt)
        x, y = gt[:, s_i:s_i + 1].contiguous(), gt[:, t_i:t_i + 1].contiguous()
        real_t = train_imgs[train_dom == t_i]
        arms = {"identity": (lambda: x, 0), "histogram matching": (lambda: histogram_match(x, real_t), 0)}
        for name, g in bridges.items():
            for tau in [0.0] + list(pixel_taus if name == "bridge-pixel" and pixel_taus else taus):
                nfe = bridge_nfe(sampler, max(1, round(steps * (1 - tau))))
                arms[f"{name} tau={tau:g}"] = (lambda g=g, tau=tau: run(lambda lo, hi: g.translate(
                    x[lo:hi], src, tgt, tau=tau, steps=steps, guidance=guidance, sampler=sampler)), nfe)
        if ldm is not None:
            for tau in taus:
                nfe = bridge_nfe(sampler, max(1, round(steps * (1 - tau))))  # the bridge's budget at this tau
                arms[f"SDEdit (LDM) tau={tau:g}"] = (lambda tau=tau, nfe=nfe: run(lambda lo, hi: sdedit(
                    ldm, x[lo:hi], t_i, 1 - tau, nfe, guidance, list(range(lo, hi)))), nfe)
        for arm, (fn, nfe) in arms.items():
            out, t = timed(fn)
            row = {"direction": f"{src} -> {tgt}", "arm": arm, "nfe": nfe, **structure(out, y), **realism(feats, real_t, out),
                   **{f"eval_{k}": v for k, v in t.items()}}
            rows.append(row)
            examples.setdefault(f"{src} -> {tgt}", {})[arm] = out[:6]
            print(json.dumps(row), flush=True)
        examples[f"{src} -> {tgt}"]["input"], examples[f"{src} -> {tgt}"]["ground truth"] = x[:6], y[:6]
    round_trip = {}
    val = torch.from_numpy(tr["val_images"])[:, None]
    val_dom = tr["val_labels"][:, 0]
    for name, g in bridges.items():
        for tau in (0.6,):
            vals = []
            for d_i, d in enumerate(DOMAINS):
                xs = val[torch.from_numpy(val_dom == d_i)][:32]
                vals.append(structure(g.translate(xs, d, d, tau=tau, steps=steps, guidance=guidance, sampler=sampler), xs)["ssim"])
            round_trip[f"{name} tau={tau:g}"] = round(float(np.mean(vals)), 4)
    res = {"rows": rows, "round_trip_ssim": round_trip, "classifier_train": t_cls, "n": n, "steps": steps,
           "guidance": guidance, "sampler": sampler}
    res["targets"] = check_targets(rows, taus, list(bridges))
    res["eval_wall_s"] = round(time.perf_counter() - t_eval, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "dose-shift.json").write_text(json.dumps(res, indent=2) + "\n")
    plot_sweep(rows, RESULTS / "dose-shift-sweep.png")
    plot_examples(examples, RESULTS / "dose-shift-examples.png")
    write_markdown(res)
    return res


def check_targets(rows: list[dict], taus: list[float], bridges: list[str]) -> dict:
    """The issue's targets, per direction and bridge."""
    out = {}
    by = {(r["direction"], r["arm"]): r for r in rows}
    for direction in sorted({r["direction"] for r in rows}):
        hm = by[(direction, "histogram matching")]
        for b in bridges:
            ts = [t for t in taus if (direction, f"{b} tau={t:g}") in by]
            sweep = [by[(direction, f"{b} tau={t:g}")] for t in ts]
            beats_hm = [t for t, r in zip(ts, sweep) if r["ssim"] > hm["ssim"] and r["kid"] < hm["kid"]]
            beats_sd = [t for t, r in zip(ts, sweep) if (direction, f"SDEdit (LDM) tau={t:g}") in by
                        and r["ssim"] > by[(direction, f"SDEdit (LDM) tau={t:g}")]["ssim"]
                        and r["kid"] < by[(direction, f"SDEdit (LDM) tau={t:g}")]["kid"]]
            ssims = [r["ssim"] for r in sweep]
            out[f"{direction} | {b}"] = {"beats histogram matching on SSIM and KID at tau": beats_hm,
                                         "beats SDEdit on SSIM and KID at equal NFE at tau": beats_sd,
                                         "SSIM monotone in tau": all(a <= b2 for a, b2 in zip(ssims, ssims[1:]))}
    return out


def plot_sweep(rows: list[dict], path: Path) -> None:
    """Structure (SSIM to ground truth) vs realism (KID to the target domain), one panel per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dirs = sorted({r["direction"] for r in rows})
    fig, axes = plt.subplots(1, len(dirs), figsize=(max(8.0, 5.2 * len(dirs)), 5.0), squeeze=False)
    for ax, d in zip(axes[0], dirs):
        rs = [r for r in rows if r["direction"] == d]
        for family, marker in (("bridge-latent", "o-"), ("bridge-pixel", "s-"), ("SDEdit (LDM)", "^--")):
            pts = sorted((float(r["arm"].split("tau=")[1]), r["kid"], r["ssim"]) for r in rs
                         if r["arm"].startswith(family + " tau=") and not r["arm"].endswith("tau=0"))
            if pts:
                ax.plot([p[1] for p in pts], [p[2] for p in pts], marker, label=family)
                for tau, k, s_ in pts:
                    ax.annotate(f"{tau:g}", (k, s_), fontsize=7, xytext=(3, 3), textcoords="offset points")
        for r in rs:
            if r["arm"] in ("identity", "histogram matching") or r["arm"].endswith("tau=0"):
                ax.plot(r["kid"], r["ssim"], "x", markersize=8, label=r["arm"])
        ax.set_xscale("symlog", linthresh=1e-3)
        ax.set_xlabel("KID to real target-domain images (lower = more realistic)")
        ax.set_ylabel("SSIM to the ground-truth rendering")
        ax.set_title(d)
        ax.legend(fontsize=7)
    fig.suptitle("Dose-shift benchmark: structure vs realism over tau\n(numbers on points = tau)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_examples(examples: dict, path: Path) -> None:
    """Rows: input, ground truth, baselines and translations; columns: test images; one block per direction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = []
    for d, arms in examples.items():
        keep = ["input", "ground truth", "identity", "histogram matching"] + \
               [a for a in arms if a.endswith(("tau=0", "tau=0.5")) and a not in ("input", "ground truth")]
        blocks += [(d, a, arms[a]) for a in keep if a in arms]
    fig, axes = plt.subplots(len(blocks), 1, figsize=(7, 1.25 * len(blocks)), squeeze=False)
    for ax, (d, a, imgs) in zip(axes[:, 0], blocks):
        ax.imshow(np.concatenate(list(imgs[:, 0].numpy()), 1), cmap="gray", vmin=0, vmax=255)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(a, rotation=0, ha="right", va="center", fontsize=7)
        ax.set_title(d if a == "input" else "", fontsize=8, loc="left")
    fig.suptitle("Dose-shift translations (6 test images per row)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_markdown(res: dict) -> None:
    times = json.loads((WORK / "train-times.json").read_text()) if (WORK / "train-times.json").is_file() else {}
    lines = ["# Dose-shift benchmark (bridge translation with a known ground truth)", "",
             "Commands:", "```", "python benchmarks/dose_shift.py data --kermany ../shared/data/kermany-cxr-224",
             "python benchmarks/dose_shift.py train", res.get("eval_command", f"python benchmarks/dose_shift.py eval --n {res['n']}"),
             "```", "",
             *( [f"Time: evaluation {res['eval_wall_s']} s wall-clock in all."] if "eval_wall_s" in res else []), "",
             f"Physical model and domains: see the docstring of benchmarks/dose_shift.py. Test images: {res['n']} per "
             f"direction; translation: {res['sampler']}, {res['steps']} steps for a full path, guidance {res['guidance']}.",
             "Realism: KID/FID (torchmetrics) on the pooled features of a SmallCNN trained here to classify the three "
             "doses on the training renderings (Inception weights cannot be downloaded here), against the real "
             "training images of the target domain. NFE: network evaluations per image (guided calls count once).", "",
             "## Training (CPU time on this 2-core machine)", "", "| arm | wall s | CPU s | command |", "|---|---|---|---|"]
    lines += [f"| {k} | {v.get('wall_s')} | {v.get('cpu_s')} | `{v.get('command')}` |" for k, v in times.items()]
    lines += ["", "## Results", ""]
    for d in sorted({r["direction"] for r in res["rows"]}):
        lines += [f"### {d}", "", "| arm | NFE | SSIM | PSNR dB | KID (± std over subsets) | FID | eval CPU s |",
                  "|---|---|---|---|---|---|---|"]
        for r in (r for r in res["rows"] if r["direction"] == d):
            lines.append(f"| {r['arm']} | {r['nfe']} | {r['ssim']:.4f} | {r['psnr']:.2f} | {r['kid']:.3f} "
                         f"± {r['kid_std']:.3f} | {r['fid']:.2f} | {r['eval_cpu_s']} |")
        lines.append("")
    lines += ["## Targets", "", "```", json.dumps(res["targets"], indent=2), "```", "",
              "Round trip (a domain to itself, validation images, SSIM to the input; target >= 0.9 at tau >= 0.6): "
              + ", ".join(f"{k}: {v}" for k, v in res["round_trip_ssim"].items()), "",
              "Plots: `dose-shift-sweep.png` (SSIM vs KID over tau), `dose-shift-examples.png` (translations)."]
    if res.get("reading"):
        lines += ["", "## Reading", ""] + [f"* {x}" for x in res["reading"]]
    (RESULTS / "dose-shift.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("data")
    d.add_argument("--kermany", type=Path, required=True, help="the Kermany 224 px folder (train/ and test/)")
    t = sub.add_parser("train")
    t.add_argument("arms", nargs="*", default=list(ARMS))
    e = sub.add_parser("eval")
    e.add_argument("--n", type=int, default=256, help="test images per direction")
    e.add_argument("--taus", type=float, nargs="+", default=[0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    e.add_argument("--steps", type=int, default=20)
    e.add_argument("--pixel-taus", type=float, nargs="+", default=[0.2, 0.5, 0.8],
                   help="taus for the pixel bridge (64 px pixel space costs ~10x the latent model per step)")
    args = ap.parse_args(argv)
    if args.cmd == "data":
        print(build_data(args.kermany, WORK / "data.npz"))
    elif args.cmd == "train":
        print(json.dumps(train_arms(args.arms), indent=2))
    else:
        res = evaluate(args.n, args.taus, args.steps, pixel_taus=args.pixel_taus)
        print(json.dumps(res["targets"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
