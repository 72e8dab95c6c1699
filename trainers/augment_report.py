"""Summaries, statistics, tables and the chart of ``synth eval augment``."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from synth.config import Config, EvalConfig
from synth.io import atomic_save_with, atomic_write_json, atomic_write_text

ARM_NAMES = {"real": "(a) real only", "mixed": "(b) real + synthetic", "synthetic": "(c) synthetic only",
             "pretrain": "(d) synthetic pre-train, real fine-tune"}


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (math.nan, math.nan)


def welch_p(a: list[float], b: list[float]) -> float:
    """Two-sided Welch t-test p-value (unequal variances); nan when either side has < 2 values."""
    if len(a) < 2 or len(b) < 2:
        return math.nan
    from scipy.stats import ttest_ind

    import warnings

    if statistics.pstdev(a) == 0 and statistics.pstdev(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    with warnings.catch_warnings():  # near-identical samples: scipy warns about precision, the p-value is still right
        warnings.simplefilter("ignore", RuntimeWarning)
        return float(ttest_ind(a, b, equal_var=False).pvalue)


def group_label(row: dict) -> tuple:
    return (row["fraction"], row["arm"], row["ratio"], row["guidance"])


def summarise(rows: list[dict], e: EvalConfig) -> dict:
    """Per (fraction, arm, ratio, guidance): AUROC/accuracy mean and std over all seeds, Welch p vs real,
    gap closed towards full data, CPU time; plus the targets of the protocol."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(group_label(r), []).append(r)
    real = {f: [r["auroc"] for r in rs] for (f, arm, _, _), rs in groups.items() if arm == "real"}
    full = statistics.fmean(real[1.0]) if 1.0 in real else math.nan
    out = []
    for (f, arm, ratio, w), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], list(ARM_NAMES).index(kv[0][1]),
                                                                        kv[0][2], kv[0][3] or 0)):
        au = [r["auroc"] for r in rs]
        m, s = _mean_std(au)
        am, asd = _mean_std([r["accuracy"] for r in rs])
        base = statistics.fmean(real[f]) if f in real else math.nan
        gap = full - base
        out.append({
            "fraction": f, "arm": arm, "ratio": ratio, "guidance": w, "n": len(rs),
            "n_generators": len({r["gen_seed"] for r in rs}), "n_real": rs[0]["n_real"],
            "auroc_mean": m, "auroc_std": s, "accuracy_mean": am, "accuracy_std": asd,
            "delta_vs_real": m - base, "p_vs_real": welch_p(au, real.get(f, [])) if arm != "real" else math.nan,
            "gap_closed": (m - base) / gap if arm != "real" and gap > 1e-9 else math.nan,
            "cpu_s_mean": statistics.fmean(r["cpu_s"] for r in rs), "cpu_s_total": sum(r["cpu_s"] for r in rs),
        })
    return {"groups": out, "full_data_auroc": full, "targets": targets(out, e)}


def targets(groups: list[dict], e: EvalConfig) -> list[dict]:
    """The issue's targets: gap closed >= 50% at fractions 0.05 and 0.1; >= -0.005 AUROC at 1.0."""
    res = []
    main_w = e.guidance[0]
    for f in sorted({g["fraction"] for g in groups}):
        arms = [g for g in groups if g["fraction"] == f and g["arm"] != "real" and g["guidance"] == main_w]
        if not arms:
            continue
        best = max(arms, key=lambda g: g["auroc_mean"])
        if f >= 1.0:
            res.append({"fraction": f, "target": "best synthetic arm >= real - 0.005 AUROC",
                        "best_arm": best["arm"], "ratio": best["ratio"], "value": best["delta_vs_real"],
                        "met": best["delta_vs_real"] >= -0.005})
        else:
            res.append({"fraction": f, "target": "best synthetic arm closes >= 50% of the gap to full data",
                        "best_arm": best["arm"], "ratio": best["ratio"], "value": best["gap_closed"],
                        "met": bool(best["gap_closed"] >= 0.5)})
    return res


def _f(x, spec=".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def markdown(summary: dict, cfg: Config, command: str | None = None) -> str:
    """The results as a readable report: protocol, utility table, targets, fidelity side by side."""
    e = cfg.eval
    lines = [f"# Augmentation study: {cfg.data.name} at {cfg.data.resolution} px", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += [f"Protocol (RoentGen-style): classifier = SmallCNN widths {list(e.classifier_widths)}, "
              f"{e.classifier_steps} steps of batch {e.classifier_batch} (pre-train arm: + {e.finetune_steps} real "
              f"fine-tuning steps), shifts <= {e.max_shift} px and rotations <= {e.max_rotate:g} deg (no flips), "
              f"early stopping on the real validation split (every {e.eval_every} steps), scored on the official "
              f"test split. {e.classifier_seeds} classifier seeds x {e.generator_seeds} generator seeds for synthetic "
              f"arms. Generator: `synth train {e.trainer}` with this config, trained on exactly the classifier's real "
              f"subset (checked by index hash), {e.synthetic_n} class-balanced images per generator, "
              f"{cfg.sample.sampler} {cfg.sample.steps} steps. Full-data reference AUROC: "
              f"{_f(summary['full_data_auroc'])}. p: Welch t-test against (a) at the same fraction. "
              f"Gap closed: (arm - real) / (full data - real).", "",
              "| fraction | n real | arm | synthetic share | guidance | AUROC | accuracy | Δ AUROC | p | gap closed | CPU s / classifier |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in summary["groups"]:
        lines.append(f"| {g['fraction']:g} | {g['n_real']} | {ARM_NAMES[g['arm']]} | "
                     f"{_f(g['ratio'], 'g') if g['arm'] == 'mixed' else ('1' if g['arm'] != 'real' else '0')} | "
                     f"{_f(g['guidance'], 'g')} | {g['auroc_mean']:.4f} ± {g['auroc_std']:.4f} | "
                     f"{g['accuracy_mean']:.3f} ± {g['accuracy_std']:.3f} | {_f(g['delta_vs_real'], '+.4f')} | "
                     f"{_f(g['p_vs_real'], '.2g')} | {_f(g['gap_closed'], '.0%')} | {g['cpu_s_mean']:.0f} |")
    lines += ["", "## Targets", "", "| fraction | target | best arm | value | met |", "|---|---|---|---|---|"]
    for t in summary["targets"]:
        v = _f(t["value"], ".0%") if t["fraction"] < 1 else _f(t["value"], "+.4f")
        lines.append(f"| {t['fraction']:g} | {t['target']} | {ARM_NAMES[t['best_arm']]} (share {t['ratio']:g}) | {v} | "
                     f"{'yes' if t['met'] else '**no**'} |")
    fid = summary.get("fidelity") or {}
    if fid:
        lines += ["", "## Fidelity, privacy and utility side by side", "",
                  "Label fidelity: a classifier trained on the full real training split (the yardstick, also the FID/KID "
                  "feature extractor) agrees with the requested label. Diversity: mean MS-SSIM of same-class pairs (lower = "
                  "more diverse; real in brackets). Memorisation: median distance to the nearest training image of the "
                  "generator's own subset, synthetic vs real test images. Privacy: share of synthetic images closer to a "
                  "training image than a threshold calibrated on distinct real images (real baseline in brackets).", "",
                  "| set | label fidelity per class | diversity (real) | FID | KID | NN distance syn / real test | privacy score (baseline) |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in sorted(fid.items()):
            lines.append(fidelity_row(name, r))
    return "\n".join(lines) + "\n"


def fidelity_row(name: str, r: dict) -> str:
    """One markdown row from a fidelity report; tolerant of missing fields."""
    def get(*path, default=math.nan):
        cur = r
        for p in path:
            if not isinstance(cur, dict) or p not in cur:
                return default
            cur = cur[p]
        return cur

    lf = get("label_fidelity", "per_class", default={})
    lf_s = ", ".join(f"{k}: {v:.2f}" for k, v in lf.items()) if isinstance(lf, dict) else "–"
    div = get("diversity", "synthetic_mean")
    div_r = get("diversity", "real_mean")
    return (f"| {name} | {lf_s} | {_f(div, '.3f')} ({_f(div_r, '.3f')}) | {_f(get('fid', 'fid'), '.2f')} | "
            f"{_f(get('fid', 'kid_mean'), '.4f')} | {_f(get('memorisation', 'syn_median'), '.3f')} / "
            f"{_f(get('memorisation', 'real_median'), '.3f')} | {_f(get('privacy', 'score'), '.3f')} "
            f"({_f(get('privacy', 'real_rate'), '.3f')}) |")


def chart(summary: dict, cfg: Config, path: Path) -> None:
    """AUROC vs training fraction per arm (mean ± std), and the guidance sweep when there is one."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = cfg.eval
    groups = summary["groups"]
    sweep = [g for g in groups if g["fraction"] == e.sweep_fraction and g["arm"] in e.sweep_arms]
    has_sweep = len({g["guidance"] for g in sweep}) > 1
    fig, axes = plt.subplots(1, 2 if has_sweep else 1, figsize=(12 if has_sweep else 7, 4.6), squeeze=False)
    ax = axes[0][0]
    main_w = e.guidance[0]
    series: dict[str, list[dict]] = {}
    for g in groups:
        if g["arm"] == "real" or g["guidance"] == main_w:
            name = ARM_NAMES[g["arm"]] + (f" (share {g['ratio']:g})" if g["arm"] == "mixed" else "")
            series.setdefault(name, []).append(g)
    for name, gs in series.items():
        gs = sorted(gs, key=lambda g: g["fraction"])
        ax.errorbar([g["fraction"] for g in gs], [g["auroc_mean"] for g in gs], yerr=[g["auroc_std"] for g in gs],
                    marker="o", capsize=3, label=name)
    ax.set_xscale("log")
    fracs = sorted({g["fraction"] for g in groups})
    ax.set_xticks(fracs, [f"{f:g}" for f in fracs])
    ax.minorticks_off()
    ax.set_xlabel("fraction of the real training split (log scale)")
    ax.set_ylabel("test AUROC (mean ± std over seeds)")
    ax.set_title(f"{cfg.data.name}: classifier AUROC by training arm (guidance {main_w:g})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    if has_sweep:
        ax2 = axes[0][1]
        for arm in sorted({g["arm"] for g in sweep}):
            for ratio in sorted({g["ratio"] for g in sweep if g["arm"] == arm}):
                gs = sorted([g for g in sweep if g["arm"] == arm and g["ratio"] == ratio], key=lambda g: g["guidance"])
                ax2.errorbar([g["guidance"] for g in gs], [g["auroc_mean"] for g in gs],
                             yerr=[g["auroc_std"] for g in gs], marker="o", capsize=3,
                             label=ARM_NAMES[arm] + (f" (share {ratio:g})" if arm == "mixed" else ""))
        base = [g for g in groups if g["fraction"] == e.sweep_fraction and g["arm"] == "real"]
        if base:
            ax2.axhline(base[0]["auroc_mean"], color="grey", ls="--", label="(a) real only")
        if not math.isnan(summary["full_data_auroc"]):
            ax2.axhline(summary["full_data_auroc"], color="black", ls=":", label="real, full training split")
        ax2.set_xlabel("guidance w")
        ax2.set_ylabel("test AUROC")
        ax2.set_title(f"guidance sweep at fraction {e.sweep_fraction:g}")
        ax2.grid(alpha=0.3)
        ax2.legend(fontsize=8)
    fig.tight_layout()
    atomic_save_with(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


def write_report(summary: dict, cfg: Config, base: Path, command: str | None = None) -> list[Path]:
    """``base``.md, .json and .png, written atomically."""
    import sys

    command = command or "synth " + " ".join(sys.argv[1:]) if sys.argv and sys.argv[0].endswith("synth") else command
    base = Path(base)
    md, js, png = base.with_suffix(".md"), base.with_suffix(".json"), base.with_suffix(".png")
    atomic_write_text(md, markdown(summary, cfg, command))
    atomic_write_json(js, json.loads(json.dumps(summary, default=str)))
    chart(summary, cfg, png)
    return [md, js, png]
