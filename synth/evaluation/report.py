"""Summaries, statistics, tables and the chart of ``synth eval augment``."""
from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

from synth.config import Config, EvalConfig
from synth.evaluation.partial import partial_lines
from synth.evaluation.targets import pool_targets, targets, value_text, welch_p
from synth.io import atomic_save_with, atomic_write_json, atomic_write_text

ARM_NAMES = {"real": "(a) real only", "mixed": "(b) real + synthetic", "synthetic": "(c) synthetic only",
             "pretrain": "(d) synthetic pre-train, real fine-tune",
             "duplicate": "(e) duplicate-real control: real pre-train, real fine-tune",
             "pseudo": "(f) real + pseudo-labelled pool"}


def arm_name(g: dict) -> str:
    """The arm's name with the generator it used (a pool generator also saw the unlabelled pool)."""
    return ARM_NAMES[g["arm"]] + (" [pool generator]" if g.get("generator") == "pool" else "")


def _mean_std(xs: list[float]) -> tuple[float, float]:
    return (statistics.fmean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0) if xs else (math.nan, math.nan)


def per_seed(rows: list[dict]) -> list[float]:
    """AUROC per classifier seed, averaged over generator seeds: the test's samples are the seeds, not
    seeds x generators (two generators drawn once are not 2x the evidence)."""
    by: dict[int, list[float]] = {}
    for r in rows:
        by.setdefault(r["seed"], []).append(r["auroc"])
    return [statistics.fmean(v) for _, v in sorted(by.items())]


def group_label(row: dict) -> tuple:
    return (row["fraction"], row["arm"], row["ratio"], row["guidance"], row.get("recipe", "smallcnn"),
            row.get("generator", "labelled"))


def control_of(arm: str) -> str:
    """The count-matched control an arm is tested against: the duplicate-real arm for synthetic pre-training (as
    many images and steps, the extra ones real images repeated); real only for the arms whose classifiers take
    exactly real-only's steps and batch (drawing from the real subset repeated to any count is the real arm)."""
    return "duplicate" if arm == "pretrain" else "real"


def _order(key: tuple) -> tuple:
    f, arm, ratio, w, recipe, gen = key
    return (f, recipe, gen == "pool", list(ARM_NAMES).index(arm), ratio, w or 0)


def summarise(rows: list[dict], e: EvalConfig) -> dict:
    """Per (fraction, arm, ratio, guidance, recipe, generator): AUROC/accuracy mean and std over all seeds, Welch
    p vs real only and vs the count-matched control, gap closed towards full data, CPU time; plus the targets."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(group_label(r), []).append(r)
    real = {(f, rc): [r["auroc"] for r in rs] for (f, arm, _, _, rc, _), rs in groups.items() if arm == "real"}
    dup = {(f, rc, ratio): per_seed(rs) for (f, arm, ratio, _, rc, _), rs in groups.items() if arm == "duplicate"}
    recipes = sorted({k[1] for k in real})
    full_by = {rc: statistics.fmean(real[(1.0, rc)]) for rc in recipes if (1.0, rc) in real}
    real_sd = {k: statistics.stdev(v) if len(v) > 1 else 0.0 for k, v in real.items()}
    out = []
    for key, rs in sorted(groups.items(), key=lambda kv: _order(kv[0])):
        f, arm, ratio, w, rc, gen = key
        au = [r["auroc"] for r in rs]
        m, s = _mean_std(au)
        am, asd = _mean_std([r["accuracy"] for r in rs])
        base = statistics.fmean(real[(f, rc)]) if (f, rc) in real else math.nan
        full = full_by.get(rc, math.nan)
        gap = full - base
        # the gap is a difference of two noisy means: below 2 standard errors its ratio means nothing
        se_gap = (math.sqrt(real_sd[(f, rc)] ** 2 / max(1, len(real[(f, rc)])) +
                            real_sd[(1.0, rc)] ** 2 / max(1, len(real[(1.0, rc)])))
                  if (f, rc) in real and (1.0, rc) in real else math.nan)
        control = control_of(arm)
        ctrl = dup.get((f, rc, ratio)) if control == "duplicate" else real.get((f, rc))
        out.append({
            "fraction": f, "arm": arm, "ratio": ratio, "guidance": w, "recipe": rc, "generator": gen, "n": len(rs),
            "syn_real": syn_real_of(arm, ratio, e),
            "n_generators": len({r["gen_seed"] for r in rs}), "n_real": rs[0]["n_real"],
            "auroc_mean": m, "auroc_std": s, "accuracy_mean": am, "accuracy_std": asd,
            "delta_vs_real": m - base,
            "p_vs_real": welch_p(per_seed(rs), real.get((f, rc), [])) if arm != "real" else math.nan,
            "control": control if arm not in ("real", "duplicate") else None,
            "delta_vs_control": (m - statistics.fmean(ctrl)) if ctrl and arm not in ("real", "duplicate") else math.nan,
            "p_vs_control": welch_p(per_seed(rs), ctrl) if ctrl and arm not in ("real", "duplicate") else math.nan,
            "gap": gap, "gap_resolved": bool(gap > 2 * se_gap) if not math.isnan(se_gap) else False,
            "gap_closed": (m - base) / gap if arm != "real" and gap > 1e-9 else math.nan,
            "n_val": rs[0].get("n_val"), "n_synthetic": statistics.fmean(r.get("n_synthetic", 0) for r in rs),
            "cpu_s_mean": statistics.fmean(r["cpu_s"] for r in rs), "cpu_s_total": sum(r["cpu_s"] for r in rs),
            "per_seed": per_seed(rs),
        })
    per_set: dict[str, dict] = {}
    for r in rows:
        if r["arm"] in ("synthetic", "mixed") and r.get("gen_seed") is not None and r.get("recipe", "smallcnn") == e.recipes[0]:
            name = f"f{r['fraction']:g}-g{r['gen_seed']}-w{r['guidance']:g}" + ("-pool" if r.get("generator") == "pool" else "")
            per_set.setdefault(name, {}).setdefault(r["arm"], []).append(r["auroc"])
    per_set = {k: {a: statistics.fmean(v) for a, v in d.items()} for k, d in per_set.items()}
    full = full_by.get("smallcnn", next(iter(full_by.values()), math.nan))
    # the extended report whenever rows differ by more than the first report can show (recipe, syn:real ratio)
    pool_study = (any(g["generator"] == "pool" or g["arm"] in ("pseudo", "duplicate") for g in out)
                  or len({g["recipe"] for g in out}) > 1 or bool(e.syn_real_ratios))
    return {"groups": out, "full_data_auroc": full, "full_data_auroc_by_recipe": full_by,
            "targets": pool_targets(out, e) if pool_study else targets(out, e), "per_set": per_set,
            "pool_study": pool_study}


def syn_real_of(arm: str, ratio: float, e: EvalConfig) -> float | None:
    """Synthetic (or pseudo-labelled, or repeated) : real images a classifier of ``arm`` saw; None for real only."""
    if arm in ("mixed", "pseudo"):
        return ratio / (1 - ratio) if ratio < 1 else math.inf
    if arm in ("pretrain", "duplicate"):
        return ratio * e.classifier_steps / e.finetune_steps
    return math.inf if arm == "synthetic" else None


def _gap_cell(g: dict) -> str:
    """Gap closed as a percentage, in brackets when the gap itself is under two standard errors (noise)."""
    gc = _f(g["gap_closed"], ".0%")
    return f"({gc})" if g["arm"] != "real" and gc != "–" and not g.get("gap_resolved") else gc


def _cost_lines(costs: dict) -> list[str]:
    """The markdown table of seconds spent making each generator and set (none when nothing was made).  CPU
    seconds are the comparable price (classifiers and teachers are counted the same way; a paused or crowded
    run inflates only its wall seconds); studies made before synth counted them show wall seconds only."""
    if not costs:
        return []
    return (["", "## What the synthetic data cost (seconds)", "",
             "A generator's: its training loop, summed over every call that trained it (each to its last "
             "checkpoint; studies made before synth counted this timed the whole call that finished it, wall only); "
             "a set's: the calls that finished it.", "",
             "| generator or set | training CPU s | training wall s | sampling CPU s | sampling wall s |",
             "|---|---|---|---|---|"]
            + [f"| {name} | {_f(c.get('generator_cpu_s'), '.0f')} | {_f(c.get('generator_s'), '.0f')} | "
               f"{_f(c.get('sample_cpu_s'), '.0f')} | {_f(c.get('sample_s'), '.0f')} |"
               for name, c in sorted(costs.items())])


def _f(x, spec=".4f") -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _share(g: dict) -> str:
    return {"real": "0", "synthetic": "1", "pretrain": "1 then 0"}.get(g["arm"], f"{g['ratio']:g}")


def markdown(summary: dict, cfg: Config, command: str | None = None) -> str:
    """The results as a readable report: protocol, utility table, targets, costs, fidelity side by side."""
    if summary.get("pool_study"):
        return markdown_pool(summary, cfg, command)
    e = cfg.eval
    groups = summary["groups"]
    n_val = summary.get("n_val") or next((g["n_val"] for g in groups if g.get("n_val")), None)
    lines = [f"# Augmentation study: {cfg.data.name} at {cfg.data.resolution} px", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += partial_lines(summary)
    lines += [f"Protocol (RoentGen-style): classifier = SmallCNN widths {list(e.classifier_widths)}, "
              f"{e.classifier_steps} steps of batch {e.classifier_batch} (pre-train arm: {e.classifier_steps} synthetic "
              f"steps, then {e.finetune_steps} real fine-tuning steps at lr/4), shifts <= {e.max_shift} px and rotations "
              f"<= {e.max_rotate:g} deg (no flips), early stopping every {e.eval_every} steps on the FULL real validation "
              f"split ({n_val} images at every fraction, as the protocol asks: at small fractions this is more labelled "
              f"data than the training subset), scored on the official test split. {e.classifier_seeds} classifier "
              f"seeds x {e.generator_seeds} generator seeds for synthetic arms. Generator: `synth train {e.trainer}` "
              f"with this config, trained on exactly the classifier's real subset (checked by index hash), "
              f"{e.synthetic_n} class-balanced images per generator"
              + (f", quality-filtered at {e.quality_threshold:g} by a classifier trained on the same subset"
                 if e.quality_threshold > 0 else "")
              + f", {cfg.sample.sampler} {cfg.sample.steps} steps. Full-data reference AUROC (real only, fraction 1): "
              f"{_f(summary['full_data_auroc'])}.", "",
              "Δ: mean AUROC minus (a) at the same fraction. p: Welch t-test of the per-seed AUROCs (synthetic arms "
              "averaged over generator seeds first) against (a); uncorrected for the number of rows. Gap closed: "
              "Δ / (full-data AUROC - (a)); in brackets when that gap is under two standard errors (then the ratio is "
              "noise). CPU s: one classifier, single-threaded.", "",
              "| fraction | n real | arm | synthetic share | guidance | AUROC | accuracy | Δ AUROC | p | gap closed | CPU s |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        gc = _gap_cell(g)
        lines.append(f"| {g['fraction']:g} | {g['n_real']} | {ARM_NAMES[g['arm']]} | {_share(g)} | "
                     f"{_f(g['guidance'], 'g')} | {g['auroc_mean']:.4f} ± {g['auroc_std']:.4f} | "
                     f"{g['accuracy_mean']:.3f} ± {g['accuracy_std']:.3f} | {_f(g['delta_vs_real'], '+.4f')} | "
                     f"{_f(g['p_vs_real'], '.2g')} | {gc} | {g['cpu_s_mean']:.0f} |")
    lines += ["", "## Targets", "", "| fraction | target | best arm (chosen after the fact) | value | Δ AUROC, p | met |",
              "|---|---|---|---|---|---|"]
    for t in summary["targets"]:
        v = _f(t["value"], ".0%") if t["fraction"] < 1 else _f(t["value"], "+.4f")
        if t["fraction"] < 1 and not t.get("gap_resolved"):
            v += f" (gap {t['gap']:.4f} is within noise)"
        lines.append(f"| {t['fraction']:g} | {t['target']} | {ARM_NAMES[t['best_arm']]} (share {_share(t | {'arm': t['best_arm']})}) "
                     f"| {v} | {_f(t.get('delta'), '+.4f')}, p {_f(t.get('p'), '.2g')} | {'yes' if t['met'] else '**no**'} |")
    lines += _cost_lines(summary.get("costs") or {})
    fid = summary.get("fidelity") or {}
    if fid:
        lines += ["", "## Fidelity, privacy and utility side by side", "",
                  "Label fidelity: a classifier trained on the full real training split (the yardstick, also the FID/KID "
                  "feature extractor) agrees with the requested label. Diversity: mean MS-SSIM of same-class pairs (lower = "
                  "more diverse; real in brackets). FID/KID against the full real training split (real test images in "
                  "brackets: the floor). Memorisation: median distance to the nearest image of the generator's own "
                  "training subset, synthetic vs real test images. Privacy: share of synthetic images closer to a "
                  "training image than the 1% quantile of distances between distinct real images (real baseline in "
                  "brackets). Utility: mean AUROC of the arms that used the set.", "",
                  "| set | label fidelity per class | diversity (real) | FID (real) | KID | NN distance syn / real test | privacy (baseline) | AUROC (c) synthetic only | AUROC (b) mixed |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in sorted(fid.items()):
            lines.append(fidelity_row(name, r, summary.get("per_set", {}).get(name, {})))
    return "\n".join(lines) + "\n"


def _ratio(g: dict) -> str:
    r = g.get("syn_real")
    return "–" if r is None else ("only" if r == math.inf else f"{r:.3g}")


def markdown_pool(summary: dict, cfg: Config, command: str | None = None) -> str:
    """The report of a study with unlabelled pools, controls and two classifier recipes (issue 17)."""
    e = cfg.eval
    groups = summary["groups"]
    n_val = summary.get("n_val") or next((g["n_val"] for g in groups if g.get("n_val")), None)
    full = summary.get("full_data_auroc_by_recipe") or {}
    lines = [f"# Synthetic data with an unlabelled pool: {cfg.data.name} at {cfg.data.resolution} px", ""]
    if command:
        lines += ["```", command, "```", ""]
    lines += partial_lines(summary)
    lines += [
        f"Protocol: for each labelled fraction, generators (`synth train {e.trainer}`) are trained on exactly the "
        f"classifier's labelled subset (checked by index hash); **pool generators** also train on the unlabelled pool "
        f"`eval.unlabelled_pool={e.unlabelled_pool}` under the null condition (train.unlabelled_share="
        f"{cfg.train.unlabelled_share:g}; the pool is checked by content hash). Each generator writes {e.synthetic_n} "
        f"class-balanced images at guidance {e.guidance[0]:g}. Classifier recipes: "
        + ", ".join(f"`{r}`" for r in e.recipes)
        + f" (smallcnn: SmallCNN {list(e.classifier_widths)}, shifts <= {e.max_shift} px, rotations <= {e.max_rotate:g} "
        f"deg; resnet: a 0.08M-parameter ResNet (16, 32, 64; residual blocks, strided), shifts <= 3 px, rotations <= 15 deg, scale 0.9-1.1, brightness and "
        f"contrast jitter; never flips), {e.classifier_steps} steps of batch {e.classifier_batch}, early stopping on "
        f"the full real validation split ({n_val} images), scored on the official test split; "
        f"{e.classifier_seeds} classifier seeds x {e.generator_seeds} generator seeds.",
        "",
        "Arms: (a) real only; (b) each batch part synthetic; (c) synthetic only; (d) synthetic pre-training for "
        "ratio x finetune_steps steps, then real fine-tuning at lr/4; (e) the **duplicate-real control** of (d): the "
        "same schedule with the real subset in place of the synthetic images (as many images and steps; the extra ones "
        "real images repeated under the same augmentation); for (b) and (c) the count-matched control is (a) itself, "
        "since every arm takes the same steps of the same batch and drawing from the real subset repeated to any count "
        "is drawing from the real subset; (f) **pseudo-labelling**: a classifier of the same recipe trained on the "
        f"labelled subset labels the pool, images labelled with confidence >= {e.pseudo_threshold:g} are mixed in like "
        "(b). syn:real: synthetic (or pseudo-labelled, or repeated) images seen per real image.",
        "",
        "Δ: mean AUROC minus (a). p: Welch t-test of per-seed AUROCs (generator seeds averaged first); uncorrected "
        "for the number of rows. Control: (e) for (d), (a) otherwise. Gap closed: Δ / (full-data AUROC of the same "
        "recipe - (a)); in brackets when that gap is under two standard errors. CPU s: one classifier, one thread.",
        "",
        "Full-data reference (real only, fraction 1): " + (", ".join(f"{rc} {v:.4f}" for rc, v in sorted(full.items()))
                                                            or "not run yet, so no gap is closed") + ".",
        "",
        "| fraction | n real | recipe | arm | syn:real | AUROC | Δ vs (a) | p vs (a) | Δ vs control | p vs control | gap closed | CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        gc = _gap_cell(g)
        lines.append(f"| {g['fraction']:g} | {g['n_real']} | {g['recipe']} | {arm_name(g)} | {_ratio(g)} | "
                     f"{g['auroc_mean']:.4f} ± {g['auroc_std']:.4f} | {_f(g['delta_vs_real'], '+.4f')} | "
                     f"{_f(g['p_vs_real'], '.2g')} | {_f(g['delta_vs_control'], '+.4f')} | {_f(g['p_vs_control'], '.2g')} | "
                     f"{gc} | {g['cpu_s_mean']:.0f} |")
    lines += ["", "## Targets (best arm chosen after the fact; a claim only where both recipes agree)", "",
              "| fraction | recipe | target | best arm | value | vs control | vs best pseudo-labelling | met | recipes agree |",
              "|---|---|---|---|---|---|---|---|---|"]
    for t in summary["targets"]:
        b = t["best"]
        v = value_text(t)
        ps = "–"
        if "pseudo" in t:
            ps = (f"{_f(t['synthetic_minus_pseudo'], '+.4f')} (p {_f(t['p_synthetic_vs_pseudo'], '.2g')}; pseudo "
                  f"{t['pseudo']['auroc_mean']:.4f} at syn:real {_ratio(t['pseudo'])}, {t['pseudo']['cpu_s_mean']:.0f} "
                  f"CPU s per classifier)")
        lines.append(f"| {t['fraction']:g} | {t['recipe']} | {t['target']} | {arm_name(b)} (syn:real {_ratio(b)}) | {v} | "
                     f"{_f(b.get('delta_vs_control'), '+.4f')}, p {_f(b.get('p_vs_control'), '.2g')} | {ps} | "
                     f"{'yes' if t['met'] else '**no**'} | {'yes' if t.get('agree') else 'no'} |")
    lines += _cost_lines(summary.get("costs") or {})
    pseudo = summary.get("pseudo") or {}
    if pseudo:
        lines += ["", "## Pseudo-labelling teachers", "", "| teacher | pool | kept | kept per class | accuracy of kept labels (hidden truth) | teacher CPU s |",
                  "|---|---|---|---|---|---|"]
        for name, p in sorted(pseudo.items()):
            lines.append(f"| {name} | {p['n_pool']} | {p['n_kept']} | {p['kept_per_class']} | "
                         f"{_f(p.get('pseudo_label_accuracy'), '.3f')} | {p['teacher_cpu_s']:.0f} |")
    fid = summary.get("fidelity") or {}
    if fid:
        lines += ["", "## Fidelity, privacy and utility side by side", "",
                  "As in `synth eval augment`; for pool generators memorisation and privacy are measured against the "
                  "labelled subset AND the pool (what the generator saw) where the pool is the rest of the split; a "
                  "path pool's images are not included (see each set's memorisation_reference).", "",
                  "| set | label fidelity per class | diversity (real) | FID (real) | KID | NN distance syn / real test | privacy (baseline) | AUROC (c) synthetic only | AUROC (b) mixed |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, r in sorted(fid.items()):
            lines.append(fidelity_row(name, r, summary.get("per_set", {}).get(name, {})))
    return "\n".join(lines) + "\n"


def fidelity_row(name: str, r: dict, utility: dict | None = None) -> str:
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
    u = utility or {}
    return (f"| {name} | {lf_s} | {_f(div, '.3f')} ({_f(div_r, '.3f')}) | {_f(get('fid', 'fid'), '.2f')} "
            f"({_f(get('fid_real_test', 'fid'), '.2f')}) | "
            f"{_f(get('fid', 'kid_mean'), '.4f')} | {_f(get('memorisation', 'syn_median'), '.4f')} / "
            f"{_f(get('memorisation', 'real_median'), '.4f')} | {_f(get('privacy', 'score'), '.3f')} "
            f"({_f(get('privacy', 'real_rate'), '.3f')}) | {_f(u.get('synthetic'), '.4f')} | {_f(u.get('mixed'), '.4f')} |")


def _fraction_axes(ax, groups: list[dict], title: str, what: str, fontsize: int = 8) -> None:
    """Log-scaled training fractions on x (ticks at the studied ones), AUROC on y, title, grid and legend."""
    ax.set_xscale("log")
    fracs = sorted({g["fraction"] for g in groups})
    ax.set_xticks(fracs, [f"{f:g}" for f in fracs])
    ax.minorticks_off()
    ax.set_xlabel(f"{what} of the real training split (log scale)")
    ax.set_ylabel("test AUROC (mean ± std over classifier seeds)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=fontsize, loc="lower right")


def chart_pool(summary: dict, cfg: Config, path: Path) -> None:
    """One panel per classifier recipe: AUROC vs labelled fraction per arm and generator (mean ± std over seeds);
    for arms swept over syn:real ratios, the ratio with the best mean over fractions (named in the legend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [g for g in summary["groups"] if g["guidance"] in (None, cfg.eval.guidance[0])]
    recipes = sorted({g["recipe"] for g in groups})
    fig, axes = plt.subplots(1, len(recipes), figsize=(7.5 * len(recipes), 5), squeeze=False)
    for ax, rc in zip(axes[0], recipes):
        mine = [g for g in groups if g["recipe"] == rc]
        for arm, gen in sorted({(g["arm"], g["generator"]) for g in mine}, key=lambda k: (list(ARM_NAMES).index(k[0]), k[1])):
            series = [g for g in mine if g["arm"] == arm and g["generator"] == gen]
            ratios = sorted({g["ratio"] for g in series})
            best = max(ratios, key=lambda r: statistics.fmean(g["auroc_mean"] for g in series if g["ratio"] == r))
            gs = sorted([g for g in series if g["ratio"] == best], key=lambda g: g["fraction"])
            label = arm_name(gs[0]) + (f" (syn:real {_ratio(gs[0])})" if len(ratios) > 1 else "")
            ax.errorbar([g["fraction"] for g in gs], [g["auroc_mean"] for g in gs], yerr=[g["auroc_std"] for g in gs],
                        marker="o", capsize=3, label=label, ls="--" if arm in ("real", "duplicate", "pseudo") else "-")
        _fraction_axes(ax, mine, f"{cfg.data.name}, classifier recipe {rc}", "labelled fraction", fontsize=7)
    fig.tight_layout()
    atomic_save_with(path, lambda p: fig.savefig(p, dpi=120, format="png"))
    plt.close(fig)


def chart(summary: dict, cfg: Config, path: Path) -> None:
    """AUROC vs training fraction per arm (mean ± std), and the guidance sweep when there is one."""
    if summary.get("pool_study"):
        return chart_pool(summary, cfg, path)
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
    _fraction_axes(ax, groups, f"{cfg.data.name}: classifier AUROC by training arm (guidance {main_w:g})", "fraction")
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

    # the synth script, or python -m synth.cli
    by_synth = bool(sys.argv) and (Path(sys.argv[0]).name == "synth" or sys.argv[0].replace("\\", "/").endswith("synth/cli.py"))
    command = command or ("synth " + " ".join(sys.argv[1:]) if by_synth else None)
    base = Path(base)
    md, js, png = base.with_suffix(".md"), base.with_suffix(".json"), base.with_suffix(".png")
    atomic_write_text(md, markdown(summary, cfg, command))
    atomic_write_json(js, json.loads(json.dumps(summary, default=str)))
    chart(summary, cfg, png)
    return [md, js, png]
