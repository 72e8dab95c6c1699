"""The report of ``synth eval text``: markdown with the issue's targets, JSON, and a titled grid of test captions
printed beside their real image and the generated ones."""
from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import torch

# targets at 64 px on 2 CPU cores (issue 18): attribute fidelity, R-precision@1, swaps
ATTRIBUTE_TARGETS = {"type": 0.90, "location": 0.70, "plane": 0.60}
R_PRECISION_TARGET = 0.30
SWAP_TARGETS = {"type": 0.80, "location": 0.60}


def _f(x, spec: str = ".3f") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else format(x, spec)


def _cell(text: str) -> str:
    """Text for a markdown table cell: a swap's 'CT|MR' must not split the cell."""
    return str(text).replace("|", "\\|")


def _met(x, target: float) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return "met" if x >= target else "missed"


def targets(report: dict) -> list[dict]:
    """Each target of the issue with every model's value and whether it was met."""
    rows = []
    for tag, m in report["models"].items():
        for name, t in ATTRIBUTE_TARGETS.items():
            if name in m["attributes"]:
                v = m["attributes"][name]["accuracy"]
                rows.append({"model": tag, "target": f"attribute fidelity, {name} >= {t:.0%}", "value": v,
                             "met": _met(v, t)})
        v = m["clip"]["r_precision"]
        rows.append({"model": tag, "target": f"R-precision@1 among {report['k']} >= {R_PRECISION_TARGET}", "value": v,
                     "met": _met(v, R_PRECISION_TARGET)})
        for key, s in m["swaps"].items():
            name = key.split(":")[0]
            if name in SWAP_TARGETS:
                rows.append({"model": tag, "target": f"swap {key} follows >= {SWAP_TARGETS[name]:.0%}",
                             "value": s["accuracy"], "met": _met(s["accuracy"], SWAP_TARGETS[name])})
        p = m["probe"]
        if p.get("text_lr") and p.get("after") is not None and p.get("before") is not None:  # a frozen encoder cannot learn
            diff, se = p["after"] - p["before"], p.get("se")
            met = "met" if diff > 0 else "missed"
            if diff > 0 and se and diff < 2 * se:  # both probes read the same captions: within noise is no gain shown
                met = f"met, but within 2 standard errors ({se:.3f})"
            rows.append({"model": tag, "target": "text-encoder probe after > before", "value": diff, "met": met})
    return rows


def markdown(report: dict, command: str | None = None) -> str:
    """The report as markdown: judges and their ceilings, then per model every measure and the targets."""
    tags = list(report["models"])
    lines = ["# Do generated images follow their text? (`synth eval text`)", "",
             f"Data: `{report['data']}` at {report['resolution']} px: {report['train_n']} training images (judges, "
             f"text judge, probe) and {report['test_n']} test captions. Every generated image comes from a test "
             f"row's caption through the model's caption template, with a per-(row, seed) seed.", ""]
    if command:
        lines += ["Command:", "", "```", command, "```", ""]
    lines += ["## Models", "", "| model | family, codec | caption template | text windows x tokens | steps x batch | lr / "
              "text_lr | sampling |", "|---|---|---|---|---|---|---|"]
    for t, m in report["models"].items():
        tr, sp = m.get("training") or {}, m["sampling"]
        lines.append(f"| {t} | {tr.get('path')}, {tr.get('codec')}{', from ' + str(tr['pretrained']) if tr.get('pretrained') else ''} "
                     f"| `{_cell(tr.get('caption_template'))}` | {m['windows']} x {m['max_length']} | {tr.get('steps')} x "
                     f"{tr.get('batch_size')} | {tr.get('lr')} / {tr.get('text_lr')} | {sp['sampler']}, {sp['steps']} "
                     f"steps, guidance {sp['guidance']}, {sp['seeds']} seed(s) per caption |")
    lines += ["", f"Judges and the text judge read images at {report.get('judge_resolution', report['resolution'])} px "
              f"(area-averaged); their ceilings are measured on the same view.", "",
              "## Attribute fidelity (judges trained on the real training images)", "",
              "| attribute | judge classes | real test images (ceiling) | majority class | "
              + " | ".join(f"{t} (share of ceiling)" for t in tags) + " |",
              "|---|---|---|---|" + "---|" * len(tags)]
    for name, j in report["judges"].items():
        cells = [f"{_f(m['attributes'][name]['accuracy'])} ({_f(m['attributes'][name]['share_of_ceiling'], '.0%')})"
                 for m in report["models"].values()]
        lines.append(f"| {name} | {', '.join(j['classes'])} | {_f(j['ceiling'])} (n {j['n']}) | {_f(j['majority'])} | "
                     + " | ".join(cells) + " |")
    real = report["clip_real"]
    lines += ["", "## Image-text agreement (a small CLIP trained on the training split's captions)", "",
              f"| | R-precision@1 among {report['k']} (chance {1 / report['k']:.2f}) | similarity to own caption |",
              "|---|---|---|", f"| real test images (ceiling) | {_f(real['r_precision'])} | {_f(real['similarity'])} |"]
    for t, m in report["models"].items():
        lines.append(f"| {t} | {_f(m['clip']['r_precision'])} | {_f(m['clip']['similarity'])} |")
    lines += ["", "## Compositional swaps (same seed, one attribute swapped in the columns and the caption's words)", "",
              "Follows: the share judged as the new value, averaged over both directions (a generator that ignores "
              "the text scores 0.5); strict: judged as asked both before and after the swap.", "",
              "| swap | " + " | ".join(f"{t}: follows / strict / as asked before the swap (per direction)" for t in tags)
              + " |", "|---|" + "---|" * len(tags)]
    for key in report["swaps"]:
        cells = [f"{_f(m['swaps'][key]['accuracy'])} / {_f(m['swaps'][key].get('strict'))} / "
                 f"{_f(m['swaps'][key].get('unswapped_follow'))} "
                 f"({', '.join(f'{d} {_f(v)}' for d, v in m['swaps'][key].get('directions', {}).items())}), "
                 f"n {m['swaps'][key]['n']}{'' if m['swaps'][key].get('both_directions', True) else ', ONE direction only'}"
                 for m in report["models"].values()]
        lines.append(f"| {_cell(key)} | " + " | ".join(cells) + " |")
    lines += ["", "## The text encoder's knowledge (linear probe of pooled caption embeddings for the class)", "",
              "Fitted on the training split's distinct captions, scored on the validation and test splits' distinct "
              "captions that never occur in training (free text, no template, first window); ± one binomial "
              "standard error.", "",
              "| model | text windows x tokens | text_lr | probe before | probe after | majority class | held-out "
              "captions | before is |", "|---|---|---|---|---|---|---|---|"]
    for t, m in report["models"].items():
        p = m["probe"]
        lines.append(f"| {t} | {m['windows']} x {m['max_length']} | {p['text_lr']} | {_f(p['before'])} | "
                     f"{_f(p['after'])}{' ± ' + _f(p['se']) if p.get('se') is not None else ''} | {_f(p.get('majority'))} | {p.get('n', 'n/a')} | {_cell(p['before_is'])} |")
    if report.get("paired"):
        pr = report["paired"]
        measures = list(dict.fromkeys(m for d in pr["models"].values() for m in d))
        lines += ["", f"## Paired differences against {pr['versus']} (same test captions, same seeds)", "",
                  "Each cell: the model's value minus " + pr["versus"] + "'s, with a 95% bootstrap interval over test "
                  "captions (an interval that holds 0 is no measured difference); n: images both models made. Swaps: the "
                  "per-image share judged as the new value, on rows where both models' prompts changed.", "",
                  "| model | " + " | ".join(_cell(m) for m in measures) + " |", "|---|" + "---|" * len(measures)]
        for t, d in pr["models"].items():
            lines.append(f"| {t} | " + " | ".join(f"{_f(d[m]['delta'], '+.3f')} [{_f(d[m]['lo'], '+.3f')}, "
                                                   f"{_f(d[m]['hi'], '+.3f')}] (n {d[m]['n']})" if m in d else "n/a"
                                                   for m in measures) + " |")
    lines += ["", "## Targets", "", "| model | target | value | |", "|---|---|---|---|"]
    lines += [f"| {r['model']} | {_cell(r['target'])} | {_f(r['value'])} | {r['met']} |" for r in targets(report)]
    return "\n".join(lines) + "\n"


def grid_png(path: Path, captions: list[str], real: torch.Tensor, generated: dict[str, torch.Tensor],
             title: str) -> None:
    """One row per caption: the caption (wrapped), its real image, then each model's images of it.

    captions (R,); real uint8 (R, C, H, W); generated {model: uint8 (R, S, C, H, W)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from synth.io import atomic_save_with

    cols = [("real", real[:, None])] + [(t, g) for t, g in generated.items()]
    n_img = sum(g.shape[1] for _, g in cols)
    fig, axes = plt.subplots(len(captions), 1 + n_img, figsize=(3.2 + 1.3 * n_img, 1.5 * len(captions) + 0.8),
                             gridspec_kw={"width_ratios": [2.6] + [1] * n_img}, squeeze=False)
    for r, cap in enumerate(captions):
        ax = axes[r][0]
        ax.axis("off")
        ax.text(0, 0.5, "\n".join(textwrap.wrap(cap, 42)[:6]), fontsize=6.5, va="center", ha="left",
                transform=ax.transAxes)
        c = 1
        for name, g in cols:
            for s in range(g.shape[1]):
                img = g[r, s].permute(1, 2, 0).numpy()
                a = axes[r][c]
                a.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=255)
                a.set_xticks([]), a.set_yticks([])
                if r == 0:
                    a.set_title(name if g.shape[1] == 1 else f"{name}\nseed {s}", fontsize=7)
                c += 1
    axes[0][0].set_title("test caption", fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    atomic_save_with(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def _no_nan(x):
    """``x`` with every NaN float as None: strict JSON that any reader parses."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x


def write_text_report(report: dict, base: Path, grid: dict | None = None, command: str | None = None) -> list[Path]:
    """``base``.md, ``base``.json and (with ``grid``: grid_png's arguments) ``base``.png."""
    from synth.io import atomic_write_text

    base.parent.mkdir(parents=True, exist_ok=True)
    md, js = base.with_suffix(".md"), base.with_suffix(".json")
    text = markdown(report, command)
    written = [md, js]
    if grid is not None:
        png = base.with_suffix(".png")
        grid_png(png, **grid)
        text += f"\n![test captions: real and generated images]({png.name})\n"
        written.append(png)
    atomic_write_text(md, text)
    atomic_write_text(js, json.dumps(_no_nan({**report, "targets": targets(report), "command": command}), indent=1,
                                     default=str, allow_nan=False) + "\n")
    return written
