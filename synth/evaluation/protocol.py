"""``synth eval augment``: does synthetic data help a classifier?  RoentGen's downstream protocol.

For each training fraction f of a real data set (stratified, fixed by ``data.seed``):

* the generator this config describes is trained on exactly that real subset, once per generator
  seed (its export records the subset's index hash; a mismatch is refused);
* each generator writes ``eval.synthetic_n`` class-balanced images per guidance value with the bulk
  sampler (a normal ``synth sample`` set: resumable, manifest, metadata);
* a small CNN is trained per arm and classifier seed — ``real`` (real subset only), ``mixed``
  (each batch ``ratio`` synthetic), ``synthetic`` (synthetic only), ``pretrain`` (synthetic, then
  real fine-tuning) — with light geometric augmentation (shifts, small rotations, never flips),
  early stopping on the real validation split, and AUROC/accuracy on the official test split.

``real`` at fraction 1.0 is the full-data reference: the *gap closed* by an arm at fraction f is
``(AUROC_arm - AUROC_real(f)) / (AUROC_real(1.0) - AUROC_real(f))``.  Every finished classifier is
one line of ``results.jsonl``, so running the command again resumes where it stopped.
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from synth import solvers
from synth.classifier import SmallCNN
from synth.config import Config, EvalConfig, config_to_dict
from synth.data import DataError, pool_kind
from synth.io import atomic_write_json
from synth.evaluation.arms import Pool, fit_classifier, light_geometric, run_arm, scores, single_thread  # noqa: F401
from synth.evaluation.real import EvalError, RealSplits, check_subset, real_splits, synthetic_tensors
from synth.evaluation.costs import generator_seconds, read_costs, record_cost
from synth.evaluation.fidelity import fidelity_of_sets
from synth.evaluation.pools import check_foundations, check_pool, pseudo_label


# ---------------------------------------------------------------------------
# Data: the classifier's real splits and the generator's synthetic sets


# ---------------------------------------------------------------------------
# Classifier training (one arm, one seed)


# ---------------------------------------------------------------------------
# The protocol


@dataclass(frozen=True)
class Cell:
    """One classifier to train: which fraction, arm, synthetic set, seed and recipe."""

    fraction: float
    arm: str
    ratio: float
    gen_seed: int | None
    guidance: float | None
    seed: int
    quality: float = 0.0  # the synthetic set's quality-filter threshold (0: unfiltered)
    recipe: str = "smallcnn"  # the classifier recipe (synth.evaluation.arms.Recipe)
    generator: str = "labelled"  # labelled: generator saw the labelled subset only; pool: + eval.unlabelled_pool

    def key(self) -> str:
        d = dataclasses.asdict(self)
        # defaults are left out, so cells of studies made before a field existed keep their keys
        for name, default in (("quality", 0.0), ("recipe", "smallcnn"), ("generator", "labelled")):
            if d[name] == default:
                del d[name]
        return json.dumps(d, sort_keys=True)


def arm_ratios(arm: str, e: EvalConfig, fraction: float | None = None) -> list[float]:
    """The ``Cell.ratio`` values of ``arm``: a batch share for mixed and pseudo, a pre-training length (x
    classifier_steps) for pretrain and duplicate; ``eval.syn_real_ratios`` r (synthetic:real images seen) maps to
    share r / (1 + r) and to r x finetune_steps pre-training steps.  The whole sweep runs at
    ``eval.sweep_fraction``, the first ratio at the other fractions."""
    r = list(e.syn_real_ratios)
    if r and fraction is not None and not math.isclose(fraction, e.sweep_fraction):
        r = r[:1]
    if arm in ("mixed", "pseudo"):
        return [round(x / (1 + x), 6) for x in r] if r else list(e.ratios)
    if arm in ("pretrain", "duplicate"):
        return [round(x * e.finetune_steps / e.classifier_steps, 6) for x in r] if r else [1.0]
    return [1.0]


def plan_cells(e: EvalConfig) -> list[Cell]:
    """Every classifier the protocol trains, in an order that finishes whole fractions first."""
    cells = []
    main_w = e.guidance[0]
    for f in e.fractions:
        # the rest of the split is empty at fraction 1: no pool to generate from or to pseudo-label
        no_pool = pool_kind(e.unlabelled_pool) == "rest" and f >= 1.0
        gens = [g for g in e.generators if not (no_pool and g == "pool")]  # none left: no synthetic arm at f
        for rc in e.recipes:
            for seed in range(e.classifier_seeds):
                if "real" in e.arms:
                    cells.append(Cell(f, "real", 0.0, None, None, seed, recipe=rc))
            for arm in ("duplicate", "pseudo"):  # no generator: the controls of the synthetic route
                if arm in e.arms and not (arm == "pseudo" and no_pool):
                    for r in arm_ratios(arm, e, f):
                        cells += [Cell(f, arm, r, None, None, seed, recipe=rc) for seed in range(e.classifier_seeds)]
            for w in e.guidance:
                arms = e.arms if w == main_w else (e.sweep_arms if math.isclose(f, e.sweep_fraction) else [])
                for arm in arms:
                    if arm in ("real", "duplicate", "pseudo"):
                        continue
                    for gk in gens:
                        for g in range(e.generator_seeds):
                            for r in arm_ratios(arm, e, f):
                                for seed in range(e.classifier_seeds):
                                    cells.append(Cell(f, arm, r, g, w, seed, e.quality_threshold, rc, gk))
    if 1.0 not in [float(f) for f in e.fractions] and "real" in e.arms:
        cells += [Cell(1.0, "real", 0.0, None, None, s, recipe=rc)
                  for rc in e.recipes for s in range(e.classifier_seeds)]  # the full-data reference
    return cells


def read_results(path: Path) -> dict[str, dict]:
    """results.jsonl -> {cell key: result}; a torn last line (a killed run) is ignored."""
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            out[row["key"]] = row
    return out


def append_result(path: Path, row: dict) -> None:
    """One line per finished classifier, flushed and fsynced (cheap next to a training run)."""
    import os

    with open(path, "a") as fh:
        fh.write(json.dumps(row, sort_keys=True) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def generator_cfg(cfg: Config, fraction: float, gen_seed: int, generator: str = "labelled") -> Config:
    """The generator's config for one fraction and seed: same labelled subset as the classifier; a ``pool``
    generator also trains on ``eval.unlabelled_pool`` under the null condition."""
    pool = cfg.eval.unlabelled_pool if generator == "pool" else "none"
    return dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, fraction=fraction, unlabelled=pool),
                               train=dataclasses.replace(cfg.train, seed=gen_seed))


def train_generator(cfg: Config, run: Path, log: Callable[[str], None]) -> Path:
    """Train (or resume, or just re-export) one generator; returns its export folder."""
    if cfg.eval.trainer == "bridge":
        from synth.trainers.bridge import train_bridge

        return train_bridge(cfg, run, log=log)
    from synth.trainers.ldm import train_ldm

    return train_ldm(cfg, run, log=log)


def sample_set(export: Path, out: Path, classes: list[str], cfg: Config, guidance: float, seed: int,
               device: str, log: Callable[[str], None]) -> Path:
    """Write (or finish) a class-balanced synthetic set, orchestrated as ``synth sample`` is."""
    from synth.labels import LabelSchema
    from synth.samplers.bulk import parse_label_spec
    from synth.samplers.generator import read_artifact
    from synth.samplers.orchestrate import sample_set as write_set

    schema = LabelSchema.from_json(read_artifact(str(export))["labels"])
    balanced = parse_label_spec(",".join(f"{c}=1" for c in schema.classes), schema, log=lambda m: None)
    sampler = solvers.for_flow(cfg.sample.sampler) if cfg.eval.trainer == "bridge" else cfg.sample.sampler
    write_set(export, out, cfg.eval.synthetic_n, labels=balanced, sampler=sampler,
              steps=cfg.sample.steps, guidance=guidance, seed=seed, batch_size=64, device=device, progress=False,
              log=log)
    return out


# Settings that decide a study's numbers.  Changing one under an existing --out would mix results made
# two ways, so it is refused; adding fractions, arms, guidance values or seeds only adds cells.
_FREE = {"data.cache_dir", "data.download", "data.on_error", "data.val_max_items", "data.fraction",
         "train.progress", "train.log_every", "train.checkpoint_every", "train.keep_checkpoints", "train.sample_every",
         "train.num_workers", "train.seed", "sample.per_class", "eval.fractions", "eval.ratios", "eval.arms",
         "eval.guidance", "eval.sweep_fraction", "eval.sweep_arms", "eval.classifier_seeds", "eval.generator_seeds",
         "eval.workers", "eval.quality_threshold", "eval.feature_steps", "eval.recipes", "eval.generators",
         "eval.syn_real_ratios"}


def _flat(d: dict, prefix: str = "") -> dict:
    """Dotted keys of a config dict, its nested sections (model.unet, model.text, ...) included, so a field added to
    a section by a newer version reads as absent from an older study, not as a change of the whole section."""
    out = {}
    for k, v in d.items():
        section = (not prefix and k in ("data", "labels", "model", "train", "sample", "eval")) or prefix == "model."
        if isinstance(v, dict) and section:
            out.update(_flat(v, prefix + k + "."))
        else:
            out[prefix + k] = v
    return out


def check_study_settings(out: Path, cfg: Config) -> None:
    """Record the study's settings on its first run; refuse to resume it with others (names the keys)."""
    path = out / "eval-config.json"
    new = _flat(config_to_dict(cfg))
    if not path.is_file():
        atomic_write_json(path, config_to_dict(cfg))
        return
    old = _flat(json.loads(path.read_text()))
    changed = [k for k in sorted(set(old) & set(new)) if k not in _FREE and old[k] != new[k]]
    if changed:
        raise EvalError(f"'{out}' holds a study made with other settings ("
                        + ", ".join(f"{k}: {old[k]!r} -> {new[k]!r}" for k in changed[:4])
                        + (", ..." if len(changed) > 4 else "") + "); use a new --out or the same settings")


def check_generator_data(cfg: Config) -> None:
    """A study's generators may see only the classifier's real images: a shared project codec must say so."""
    if cfg.model.codec != "pixel" and cfg.model.autoencoder and not cfg.model.pretrained:
        meta = Path(cfg.model.autoencoder) / "export" / "metrics.json"
        meta = meta if meta.is_file() else Path(cfg.model.autoencoder) / "metrics.json"
        rec = json.loads(meta.read_text()).get("train_subset") if meta.is_file() else None
        if rec is None or any(f != rec.get("fraction") for f in cfg.eval.fractions):
            seen = "unrecorded real data" if rec is None else f"data.fraction={rec.get('fraction')}"
            raise EvalError(f"model.autoencoder '{cfg.model.autoencoder}' is one codec (trained on {seen}) shared by "
                            f"every fraction: the low-data generators would see real images their classifier does not; "
                            f"evaluate a pixel-space generator (model.codec=pixel) or one fraction per codec")


def fmt_g(x: float) -> str:
    return f"{x:g}"


def _sampled(set_dir: Path) -> int:
    """Images a study's set folder already holds by its manifest (0 when absent or damaged: the sampler then
    resumes it, re-checking every file against its done records)."""
    from synth.augment import AugmentError, read_set_manifest

    try:
        return int(read_set_manifest(set_dir).get("n_done", 0)) if (set_dir / "manifest.json").is_file() else 0
    except (AugmentError, TypeError, ValueError):
        return 0


class Protocol:
    """State of one ``synth eval augment`` run folder: generators, synthetic sets, results."""

    def __init__(self, cfg: Config, out: Path, device: str = "cpu", log: Callable[[str], None] = print):
        self.cfg, self.e, self.out, self.device, self.log = cfg, cfg.eval, Path(out), device, log
        self.results_file = self.out / "results.jsonl"
        self._splits: dict[float, RealSplits] = {}
        self._pools: dict[tuple, Pool] = {}
        self._judges: dict[float, SmallCNN] = {}

    def splits(self, f: float) -> RealSplits:
        if f not in self._splits:
            self._splits[f] = real_splits(self.cfg, f)
        return self._splits[f]

    def set_dir(self, f: float, g: int, w: float, generator: str = "labelled") -> Path:
        return self.out / "synthetic" / f"f{fmt_g(f)}-g{g}-w{fmt_g(w)}{'-pool' if generator == 'pool' else ''}"

    def gen_run(self, f: float, g: int, generator: str = "labelled") -> Path:
        return self.out / "generators" / f"f{fmt_g(f)}-s{g}{'-pool' if generator == 'pool' else ''}"

    def unlabelled(self, f: float):
        """The study's unlabelled pool at fraction ``f`` (``eval.unlabelled_pool``; rest: outside f's subset)."""
        from synth.data import load_pool

        key = ("unlabelled", f)
        if key not in self._pools:
            data = dataclasses.replace(self.cfg.data, fraction=f, unlabelled=self.e.unlabelled_pool)
            self._pools[key] = load_pool(data, self.splits(f).train)
        return self._pools[key]

    def cell_pool(self, c: Cell) -> Pool | None:
        """The images a cell draws on beside the real subset: none, a synthetic set, or the pseudo-labelled pool."""
        if c.arm in ("real", "duplicate"):
            return None
        if c.arm == "pseudo":
            return self.pseudo(c.fraction, c.recipe)
        return self.pool(c.fraction, c.gen_seed, c.guidance, c.generator)

    def pseudo(self, f: float, recipe: str) -> Pool:
        """The pseudo-labelling baseline's pool: a classifier of ``recipe`` trained on the labelled subset labels
        the unlabelled pool; images it labels with confidence >= ``eval.pseudo_threshold`` are kept."""
        key = ("pseudo", f, recipe)
        if key not in self._pools:
            self._pools[key] = pseudo_label(self.splits(f), self.unlabelled(f), self.e, recipe,
                                            self.out / "pseudo" / f"f{fmt_g(f)}-{recipe}.json", self.log)
        return self._pools[key]

    def pool(self, f: float, g: int, w: float, generator: str = "labelled") -> Pool:
        """The synthetic images of generator (f, g) at guidance w: trained, sampled and checked on demand."""
        key = (f, g, w, generator)
        if key not in self._pools:
            splits = self.splits(f)
            d = self.set_dir(f, g, w, generator)
            if _sampled(d) < self.e.synthetic_n:
                t0 = time.perf_counter()
                export = train_generator(generator_cfg(self.cfg, f, g, generator), self.gen_run(f, g, generator),
                                         self.log)
                spent = generator_seconds(export)
                record_cost(self.out, self.gen_run(f, g, generator).name, spent, add=False)
                self.log(f"generator f={f:g} seed {g}: ready ({time.perf_counter() - t0:.0f}s in this call"
                         + (f"; {spent['generator_cpu_s']:.0f} CPU s over all calls)" if spent else ")"))
                fresh = _sampled(d) == 0  # else this call only finishes it: its seconds add to the earlier ones
                t0, c0 = time.perf_counter(), time.process_time()
                sample_set(export, d, splits.train.classes, self.cfg, w, seed=1000 + g, device=self.device, log=self.log)
                t_sample, c_sample = time.perf_counter() - t0, time.process_time() - c0
                self.log(f"sampled {self.e.synthetic_n} images at guidance {w:g} into {d} ({t_sample:.0f}s)")
                record_cost(self.out, d.name, {"sample_s": t_sample, "sample_cpu_s": c_sample}, add=not fresh)
            from synth.augment import read_set_manifest

            manifest = read_set_manifest(d)
            check_subset(manifest, splits, str(d))  # before reading any image
            check_pool(manifest, self.unlabelled(f).record if generator == "pool" else None, str(d))
            check_foundations(manifest, splits.subset, self.unlabelled(f).record if generator == "pool" else None,
                              str(d))
            quality = None
            if self.e.quality_threshold > 0:
                self.filter_set(f, d)
                quality = "keep"
            images, labels, _ = synthetic_tensors(d, splits.train.classes, quality)
            counts = torch.bincount(labels, minlength=len(splits.train.classes)).tolist()
            if quality and min(counts) == 0:
                empty = splits.train.classes[counts.index(0)]
                raise EvalError(f"the quality filter (eval.quality_threshold={self.e.quality_threshold}) kept no "
                                f"'{empty}' image of {d.name}; lower the threshold or improve the generator")
            self._pools[key] = Pool(images, labels)
        return self._pools[key]

    def filter_set(self, f: float, d: Path) -> dict:
        """Keep the synthetic images that a classifier trained on the SAME real subset recognises surely.

        The judge sees only the classifier's real images (a full-data judge would leak the data the
        study pretends not to have); it is saved under ``filters/`` and its decisions in the set.
        """
        from synth.augment import quality_filter
        from synth.classifier import save_classifier

        if f not in self._judges:
            splits = self.splits(f)
            with single_thread():
                judge, best = fit_classifier(Pool(splits.train.images, splits.train.labels), None, 0.0, splits.val,
                                             len(splits.train.classes), self.e, seed=10_007,
                                             steps=self.e.classifier_steps, lr=self.e.classifier_lr)
            path = self.out / "filters" / f"f{fmt_g(f)}.safetensors"
            judge.weights_sha256 = save_classifier(judge, path, splits.train.classes,
                                                   {"fraction": f, "subset": splits.subset, **best})
            self._judges[f] = judge
        summary = quality_filter(d, self._judges[f], threshold=self.e.quality_threshold,
                                 classes=self.splits(f).train.classes)
        self.log(f"quality filter on {d.name}: {summary}")
        return summary

    def run(self) -> list[dict]:
        """Train every planned classifier not yet in results.jsonl; returns all results.

        Generators and synthetic sets are made first, one fraction at a time (they use every core);
        then that fraction's classifiers run on ``eval.workers`` single-threaded processes, because
        small CNNs use two threads badly and two processes well.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        check_generator_data(self.cfg)
        check_study_settings(self.out, self.cfg)
        done = read_results(self.results_file)
        cells = plan_cells(self.e)
        todo = [c for c in cells if c.key() not in done]
        self.log(f"augmentation protocol: {len(cells)} classifiers, {len(cells) - len(todo)} already done")
        if pool_kind(self.e.unlabelled_pool) == "rest" and any(f >= 1.0 for f in self.e.fractions):
            self.log("note: at fraction 1 the rest of the training split is empty: no pool generator and no "
                     "pseudo-labelling arm there" + ("" if "labelled" in self.e.generators else
                                                     ", and no synthetic arm (eval.generators has no 'labelled')"))
        n_done = 0
        for f in sorted({c.fraction for c in todo}):
            batch = [c for c in todo if c.fraction == f]
            jobs = [(c, self.splits(f), self.cell_pool(c)) for c in batch]
            for c, res in run_cells(jobs, self.e, self.e.workers):
                row = {"key": c.key(), **dataclasses.asdict(c), **res, "n_real": len(self.splits(f).train),
                       "n_val": len(self.splits(f).val)}
                if self.cell_pool(c) is not None:
                    row["n_synthetic"] = len(self.cell_pool(c).labels)
                append_result(self.results_file, row)
                done[c.key()] = row
                n_done += 1
                self.log(f"[{n_done}/{len(todo)}] f={c.fraction:g} {c.arm} {c.recipe}"
                         + (f" ratio {c.ratio:g}" if c.arm != "real" else "")
                         + (f" gen {c.gen_seed}{'-pool' if c.generator == 'pool' else ''} w {c.guidance:g}"
                            if c.gen_seed is not None else "")
                         + f" seed {c.seed}: AUROC {res['auroc']:.4f} acc {res['accuracy']:.3f} ({res['cpu_s']:.0f} CPU s)")
        return [done[c.key()] for c in cells]


def _one_thread() -> None:
    torch.set_num_threads(1)


def _run_cell(job: tuple, e: EvalConfig) -> tuple[Cell, dict]:
    c, splits, syn = job
    return c, run_arm(c.arm, splits, syn, c.ratio, e, c.seed, c.recipe)


def run_cells(jobs: list[tuple], e: EvalConfig, workers: int):
    """Yield (cell, result) as classifiers finish; ``workers`` > 1 uses spawned single-thread processes."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            yield _run_cell(job, e)
        return
    import concurrent.futures as cf
    import functools
    import multiprocessing as mp

    with cf.ProcessPoolExecutor(max_workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=_one_thread) as ex:
        futures = [ex.submit(functools.partial(_run_cell, e=e), job) for job in jobs]
        for fut in cf.as_completed(futures):
            yield fut.result()


def partial_report(cfg: Config, out: str | Path, *, log: Callable[[str], None] = print,
                   report: str | Path | None = None) -> dict:
    """The report of the classifiers a study has finished so far, training and sampling nothing (the study may
    still be running in another process): ``out/augment-partial.{md,json,png}`` (and ``report``).  Fidelity is
    left out (it would train the study's feature net beside it); groups with fewer seeds than planned say so."""
    from synth.evaluation.report import summarise, write_report

    out = Path(out)
    if not (out / "results.jsonl").is_file():
        raise EvalError(f"'{out}' holds no finished classifier (no results.jsonl); run the study first, or pass "
                        f"the --out of a study that has started")
    check_study_settings(out, cfg)
    cells = plan_cells(cfg.eval)
    done = read_results(out / "results.jsonl")
    rows = [done[c.key()] for c in cells if c.key() in done]
    if not rows:
        raise EvalError(f"none of the {len(cells)} classifiers these settings plan has finished in '{out}'; "
                        f"wait for the study, or pass the settings it runs with")
    summary = summarise(rows, cfg.eval)
    summary.update(fidelity={}, costs=read_costs(out), n_val=rows[0].get("n_val"),
                   pseudo={q.stem: json.loads(q.read_text()) for q in sorted((out / "pseudo").glob("*.json"))},
                   partial={"done": len(rows), "planned": len(cells),
                            "missing_fractions": sorted({c.fraction for c in cells if c.key() not in done})})
    paths = write_report(summary, cfg, out / "augment-partial")
    if report:
        paths += write_report(summary, cfg, Path(report))
    log(f"partial report: {len(rows)} of {len(cells)} classifiers; wrote " + ", ".join(str(p) for p in paths))
    return summary


def evaluate_augment(cfg: Config, out: str | Path, *, device: str = "cpu", log: Callable[[str], None] = print,
                     report: str | Path | None = None) -> dict:
    """Run (or resume) the whole protocol and write ``augment.{md,json,png}`` into ``out`` (and ``report``)."""
    from synth.evaluation.report import summarise, write_report

    out = Path(out)
    p = Protocol(cfg, out, device, log)
    try:
        rows = p.run()
    except DataError as e:
        raise EvalError(str(e)) from None
    summary = summarise(rows, cfg.eval)
    planned = sorted({p.set_dir(c.fraction, c.gen_seed, c.guidance, c.generator) for c in plan_cells(cfg.eval)
                      if c.gen_seed is not None})
    summary["fidelity"] = fidelity_of_sets(cfg, out, planned, log)
    summary["costs"] = read_costs(out)
    summary["pseudo"] = {q.stem: json.loads(q.read_text()) for q in sorted((out / "pseudo").glob("*.json"))}
    summary["n_val"] = len(p.splits(max(cfg.eval.fractions)).val)
    paths = write_report(summary, cfg, out / "augment")
    if report:
        write_report(summary, cfg, Path(report))
    log("wrote " + ", ".join(str(p) for p in paths))
    return summary


__all__ = ["evaluate_augment", "partial_report", "EvalError", "Protocol", "plan_cells", "run_arm", "real_splits", "check_subset",
           "light_geometric", "scores"]
