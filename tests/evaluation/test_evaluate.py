"""`synth eval augment` / `synth eval fidelity`: the protocol end to end on tiny phantoms, resume, refusals."""
import dataclasses
import json

import pytest
import torch

from synth.config import ConfigError, load_config
from tests.conftest import TINY
from tests.trainers.test_ldm import cli
from synth.evaluation.arms import light_geometric
from synth.evaluation.real import check_subset, EvalError, real_splits
from synth.evaluation.protocol import plan_cells, read_results

BRIDGE = ["model.unet.attention_levels=[false,false]", "train.steps=6", "sample.sampler=euler", "sample.steps=3"]
EVAL = ["eval.fractions=[0.5,1.0]", "eval.classifier_seeds=2", "eval.generator_seeds=1", "eval.guidance=[1.5,1.0]",
        "eval.sweep_fraction=0.5", "eval.synthetic_n=24", "eval.classifier_steps=8", "eval.finetune_steps=4",
        "eval.eval_every=4", "eval.classifier_batch=16", "eval.feature_steps=10", "eval.workers=1",
        "eval.classifier_widths=[8,8,8]"]


def args(*extra):
    return [a for kv in (TINY + BRIDGE + EVAL + list(extra)) for a in ("--set", kv)]


def test_plan_has_every_arm_seed_and_the_full_data_reference():
    e = load_config(None, EVAL + ["eval.fractions=[0.5]", "eval.generator_seeds=2"]).eval
    cells = plan_cells(e)
    real = [c for c in cells if c.arm == "real"]
    assert {c.fraction for c in real} == {0.5, 1.0}  # the full-data reference is added when not asked for
    main = [c for c in cells if c.arm != "real" and c.guidance == 1.5]
    assert len(main) == 3 * 2 * 2  # mixed, synthetic, pretrain x 2 generators x 2 classifier seeds
    sweep = [c for c in cells if c.guidance == 1.0]
    assert {c.arm for c in sweep} == {"mixed", "synthetic"} and all(c.fraction == 0.5 for c in sweep)
    assert len({c.key() for c in cells}) == len(cells)


@pytest.mark.parametrize("bad, needle", [("eval.ratios=[1.5]", "eval.ratios: 1.5 is outside [0, 1]"),
                                         ("eval.fractions=[0]", "eval.fractions: 0.0 is outside (0, 1]"),
                                         ("eval.arms=[real,magic]", "'magic' is not one of"),
                                         ("data.fraction=1.2", "data.fraction must be in (0, 1]")])
def test_bad_settings_are_one_line_errors(bad, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, [bad])
    assert needle in str(e.value)


def test_geometric_augmentation_moves_but_never_mirrors():
    x = torch.full((64, 1, 16, 16), -1.0)
    x[:, :, 4:12, 2:5] = 1.0  # a bar on the left: a mirror would put it on the right
    y = light_geometric(x, torch.Generator().manual_seed(0), max_shift=2, max_rotate=10)
    left, right = y[..., :8].mean(), y[..., 8:].mean()
    assert left > right + 0.2 and not torch.equal(y, x)
    assert torch.equal(light_geometric(x, torch.Generator(), 0, 0), x)


def test_generator_trained_on_another_subset_is_refused():
    cfg = load_config(None, TINY)
    half, full = real_splits(cfg, 0.5), real_splits(cfg, 1.0)
    manifest = {"model": {"train_subset": half.subset}}
    check_subset(manifest, half, "set")  # the same subset passes
    with pytest.raises(EvalError, match="trained on another real subset.*data.fraction=1.0"):
        check_subset(manifest, full, "set")
    with pytest.raises(EvalError, match="records no training subset"):
        check_subset({"model": {}}, full, "set")


def test_protocol_end_to_end_resumes_and_reports(tmp_path):
    out = tmp_path / "study"
    p = cli("eval", "augment", "--out", str(out), "--report", str(tmp_path / "report"), *args(), timeout=600)
    rows = read_results(out / "results.jsonl")
    assert len(rows) == len(plan_cells(load_config(None, EVAL).eval))
    assert all(0.0 <= r["auroc"] <= 1.0 and r["cpu_s"] >= 0 for r in rows.values())
    manifest = json.loads((out / "synthetic" / "f0.5-g0-w1.5" / "manifest.json").read_text())
    assert manifest["model"]["train_subset"]["fraction"] == 0.5  # the generator saw the classifier's half
    # a generator's cost is what its export records over every call that trained it; a set's, CPU and wall
    trained = json.loads((out / "generators" / "f0.5-s0" / "export" / "synth.json").read_text())["training"]
    costs = json.loads((out / "costs.json").read_text())
    assert costs["f0.5-s0"] == {"generator_s": trained["wall_s"], "generator_cpu_s": trained["cpu_s"]}
    assert trained["cpu_s"] > 0 and trained["steps"] > 0 and trained["device"] == "cpu"
    assert costs["f0.5-g0-w1.5"]["sample_cpu_s"] > 0 and costs["f0.5-g0-w1.5"]["sample_s"] > 0
    assert "- compute: " in (out / "generators" / "f0.5-s0" / "export" / "README.md").read_text()
    md = (tmp_path / "report.md").read_text()
    assert "| training CPU s | training wall s | sampling CPU s | sampling wall s |" in md
    assert "(a) real only" in md and "(d) synthetic pre-train" in md and "## Targets" in md
    assert "privacy (baseline)" in md and "| f0.5-g0-w1 |" in md and "1 then 0" in md
    assert (tmp_path / "report.png").stat().st_size > 10_000 and (out / "fidelity" / "f0.5-g0-w1.5" / "fidelity.json").is_file()
    assert "fraction 0.5:" in p.stdout
    again = cli("eval", "augment", "--out", str(out), *args(), timeout=600)
    assert f"{len(rows)} already done" in again.stdout + again.stderr
    assert read_results(out / "results.jsonl") == rows
    # a partial report of a study grown by one fraction: what is done, nothing trained or sampled
    part = cli("eval", "augment", "--partial", "--out", str(out), "--report", str(tmp_path / "partial"),
               *args("eval.fractions=[0.25,0.5,1.0]"), timeout=300)
    md = (tmp_path / "partial.md").read_text()
    assert f"**Partial report**: {len(rows)} of " in md and "still to run: 0.25)" in md and "fraction 0.5:" in part.stdout
    assert not (out / "generators" / "f0.25-s0").exists() and read_results(out / "results.jsonl") == rows
    assert (out / "augment-partial.md").is_file() and "Partial" not in (out / "augment.md").read_text()
    empty = cli("eval", "augment", "--partial", "--out", str(tmp_path / "none"), *args(), check=False)
    assert empty.returncode == 2 and "holds no finished classifier" in empty.stderr.strip().splitlines()[-1]

    changed = cli("eval", "augment", "--out", str(out), *args("eval.classifier_steps=9"), check=False)
    assert changed.returncode == 2 and "eval.classifier_steps: 8 -> 9" in changed.stderr

    filtered = cli("eval", "augment", "--out", str(out), *args("eval.quality_threshold=0.01", "eval.guidance=[1.5]"),
                   timeout=600)
    assert "quality filter on f0.5-g0-w1.5" in filtered.stdout + filtered.stderr
    decisions = [json.loads(x) for x in (out / "synthetic" / "f0.5-g0-w1.5" / "quality.jsonl").read_text().splitlines()]
    assert len(decisions) == 24 and {"confidence", "kept"} <= set(decisions[0])
    assert (out / "filters" / "f0.5.safetensors").is_file()
    assert any(r["quality"] == 0.01 for r in read_results(out / "results.jsonl").values())

    fid = cli("eval", "fidelity", "--set", str(out / "synthetic" / "f0.5-g0-w1.5"), "--data", "phantom",
              "--features", str(out / "features.safetensors"), "--set-config", "data.phantom_items=64",
              "--out", str(tmp_path / "fid"))
    assert "label fidelity" in fid.stdout and (tmp_path / "fid" / "closest-pairs.png").is_file()


def test_eval_bad_inputs_are_one_line(tmp_path):
    (tmp_path / "half-written" / "shard-00000").mkdir(parents=True)
    p = cli("eval", "fidelity", "--set", str(tmp_path / "half-written"), "--data", "phantom", check=False)
    assert p.returncode == 2 and "still being written" in p.stderr and "Traceback" not in p.stderr
    p = cli("eval", "augment", "--out", str(tmp_path / "x"), *args("eval.ratios=[2]"), check=False)
    assert p.returncode == 2 and "eval.ratios" in p.stderr and "Traceback" not in p.stderr
    p = cli("eval", "augment", "--out", str(tmp_path / "x"), *args("eval.fractions=[0.001]", "eval.guidance=[1.5]"), check=False)
    assert p.returncode == 2 and "leaves class" in p.stderr and "Traceback" not in p.stderr


POOL = ["eval.fractions=[0.5]", "eval.sweep_fraction=0.5", "eval.guidance=[1.5]", "eval.unlabelled_pool=rest", "eval.generators=[labelled,pool]",
        "eval.recipes=[smallcnn,resnet]", "eval.syn_real_ratios=[0.5,2]",
        "eval.arms=[real,mixed,synthetic,pretrain,duplicate,pseudo]", "eval.pseudo_threshold=0.5"]


def test_pool_plan_has_controls_recipes_and_ratio_sweeps():
    e = load_config(None, EVAL + POOL).eval
    cells = plan_cells(e)
    assert {c.recipe for c in cells} == {"smallcnn", "resnet"}
    assert {c.generator for c in cells if c.gen_seed is not None} == {"labelled", "pool"}
    mixed = sorted({c.ratio for c in cells if c.arm == "mixed"})
    assert mixed == [round(0.5 / 1.5, 6), round(2 / 3, 6)]  # syn:real 0.5 and 2 as batch shares
    dup = sorted({c.ratio for c in cells if c.arm == "duplicate"})
    assert dup == sorted({c.ratio for c in cells if c.arm == "pretrain"}) == [0.25, 1.0]  # r x finetune / classifier steps
    assert all(c.gen_seed is None for c in cells if c.arm in ("duplicate", "pseudo"))
    old = plan_cells(load_config(None, EVAL).eval)[0]
    assert "recipe" not in old.key() and "generator" not in old.key()  # studies made before keep their keys
    with pytest.raises(ConfigError, match="eval.generators has 'pool' but eval.unlabelled_pool is none"):
        load_config(None, ["eval.generators=[pool]"])
    with pytest.raises(ConfigError, match="'pseudo'.*eval.unlabelled_pool is none"):
        load_config(None, ["eval.arms=[real,pseudo]"])
    with pytest.raises(ConfigError, match="eval.recipes: 'vit' is not one of smallcnn, resnet"):
        load_config(None, ["eval.recipes=[vit]"])


def test_pool_study_end_to_end(tmp_path):
    """Pool generators, the duplicate-real control, pseudo-labelling and both recipes, then the pool report."""
    from synth.evaluation.pools import check_pool

    out = tmp_path / "study"
    cli("eval", "augment", "--out", str(out), "--report", str(tmp_path / "pool"), *args(*POOL), timeout=900)
    rows = read_results(out / "results.jsonl")
    assert len(rows) == len(plan_cells(load_config(None, EVAL + POOL).eval))
    pooled = json.loads((out / "synthetic" / "f0.5-g0-w1.5-pool" / "manifest.json").read_text())["model"]["train_subset"]
    plain = json.loads((out / "synthetic" / "f0.5-g0-w1.5" / "manifest.json").read_text())["model"]["train_subset"]
    assert pooled["unlabelled"]["n"] == 32 and pooled["unlabelled"]["kind"] == "rest" and "unlabelled" not in plain
    teacher = json.loads((out / "pseudo" / "f0.5-smallcnn.json").read_text())
    assert teacher["n_pool"] == 32 and 0 < teacher["n_kept"] <= 32 and 0 <= teacher["pseudo_label_accuracy"] <= 1
    md = (tmp_path / "pool.md").read_text()
    for needle in ("(e) duplicate-real control", "(f) real + pseudo-labelled pool", "[pool generator]", "| resnet |",
                   "vs best pseudo-labelling", "recipes agree", "p vs control", "labelled subset AND the pool"):
        assert needle in md, needle
    summary = json.loads((tmp_path / "pool.json").read_text())
    pre = [g for g in summary["groups"] if g["arm"] == "pretrain"]
    assert pre and all(g["control"] == "duplicate" for g in pre)
    fid = json.loads((out / "fidelity" / "f0.5-g0-w1.5-pool" / "fidelity.json").read_text())
    assert fid["memorisation_reference"] == "labelled subset + unlabelled pool" and fid["counts"]["train"] == 64
    # provenance: a labelled-only arm refuses a pool generator's set, and the reverse
    with pytest.raises(EvalError, match="also trained on an unlabelled pool"):
        check_pool({"model": {"train_subset": pooled}}, None, "set")
    with pytest.raises(EvalError, match="saw no pool, not the study's eval.unlabelled_pool"):
        check_pool({"model": {"train_subset": plain}}, pooled["unlabelled"], "set")


def test_ratio_sweep_runs_at_the_sweep_fraction_and_no_pool_arms_at_full_data():
    e = load_config(None, EVAL + POOL + ["eval.fractions=[0.25,0.5,1.0]"]).eval
    cells = plan_cells(e)
    assert len({c.ratio for c in cells if c.arm == "mixed" and c.fraction == 0.5}) == 2
    assert len({c.ratio for c in cells if c.arm == "mixed" and c.fraction == 0.25}) == 1
    full = [c for c in cells if c.fraction == 1.0]
    assert full and not [c for c in full if c.arm == "pseudo" or c.generator == "pool"]  # the rest is empty there


def test_a_fine_tuned_generator_answers_for_its_foundation():
    from synth.evaluation.pools import check_foundations

    mine = {"indices_sha256": "aaaa", "n": 10}
    pool = {"kind": "rest", "n": 90, "sha256": "pppp", "source": "x"}

    def made(foundation):
        return {"model": {"train_subset": {"indices_sha256": "aaaa", "foundation": foundation}}}

    check_foundations(made({"path": "f", "train_subset": {"indices_sha256": "aaaa"}}), mine, None, "s")
    with pytest.raises(EvalError, match=r"saw another labelled subset \(100 images, fraction 1.0\)"):
        check_foundations(made({"path": "f", "train_subset": {"indices_sha256": "bbbb", "n": 100, "fraction": 1.0}}),
                          mine, None, "s")
    only_pool = {"path": "f", "train_subset": {"indices_sha256": "bbbb", "unlabelled": {**pool, "share": 1.0}}}
    check_foundations(made(only_pool), mine, pool, "s")  # saw no label, and the study's pool: fine for a pool arm
    with pytest.raises(EvalError, match=r"trained on an unlabelled pool .* that this arm does not declare"):
        check_foundations(made(only_pool), mine, None, "s")
    deep = {"path": "g", "train_subset": {"indices_sha256": "aaaa", "foundation": {"path": "h", "train_subset": {
        "indices_sha256": "cccc", "n": 5, "fraction": 0.5}}}}
    with pytest.raises(EvalError, match=r"fine-tuned from 'h'"):
        check_foundations(made(deep), mine, None, "s")
    with pytest.raises(ConfigError, match=r"eval.unlabelled_pool is none, rest or a path"):
        load_config(None, ["eval.unlabelled_pool=source"])


def test_a_study_resumes_after_a_section_gains_a_field(tmp_path):
    """A newer version adds model.text.windows: an older study's settings must still match (issue 17 found it)."""
    from synth.config import config_to_dict
    from synth.evaluation.protocol import check_study_settings
    from synth.io import atomic_write_json

    cfg = load_config(None, EVAL)
    old = config_to_dict(cfg)
    del old["model"]["text"]["windows"]
    atomic_write_json(tmp_path / "eval-config.json", old)
    check_study_settings(tmp_path, cfg)  # no refusal
    with pytest.raises(EvalError, match=r"model.text.hidden_size: 64 -> 32"):
        check_study_settings(tmp_path, load_config(None, EVAL + ["model.text.hidden_size=32"]))


def test_pool_targets_judge_beating_real_and_closing_the_gap_separately():
    """Below full data a pool arm is judged twice: beats real only AND its control (p < 0.05 each), and closes
    >= 100% of the gap; recipes agree per target, so one recipe missing one target blocks only that claim."""
    from synth.evaluation.targets import pool_targets

    def group(recipe, arm, gen, auroc, d_real, p_real, d_ctrl, p_ctrl, gap):
        return {"fraction": 0.1, "recipe": recipe, "arm": arm, "generator": gen, "guidance": 1.5, "auroc_mean": auroc,
                "delta_vs_real": d_real, "p_vs_real": p_real, "delta_vs_control": d_ctrl, "p_vs_control": p_ctrl,
                "gap_closed": gap, "per_seed": [auroc - 0.01, auroc + 0.01]}

    groups = [group("resnet", "mixed", "pool", 0.86, 0.029, 0.015, 0.029, 0.015, 0.4),
              group("smallcnn", "mixed", "pool", 0.82, 0.004, 0.81, 0.004, 0.81, 0.1),
              group("smallcnn", "pretrain", "labelled", 0.90, 0.08, 0.001, 0.08, 0.001, 1.2)]  # not a pool arm
    e = load_config(None, EVAL + POOL).eval
    rows = {(t["recipe"], t["unit"]): t for t in pool_targets(groups, e)}
    assert rows["resnet", "auroc"]["met"] and not rows["smallcnn", "auroc"]["met"]
    assert not rows["resnet", "auroc"]["agree"] and rows["resnet", "gap"]["agree"]  # both miss the gap target
    assert rows["smallcnn", "auroc"]["best"]["arm"] == "mixed" and rows["resnet", "auroc"]["value"] == 0.029


def test_costs_replace_a_generator_add_a_finished_set_and_ignore_what_was_not_counted(tmp_path):
    from synth.evaluation.costs import generator_seconds, read_costs, record_cost

    record_cost(tmp_path, "f0.5-s0", {"generator_s": 10.0, "generator_cpu_s": 18.0}, add=False)
    record_cost(tmp_path, "f0.5-s0", {"generator_s": 12.0, "generator_cpu_s": 20.0}, add=False)  # export sums calls
    record_cost(tmp_path, "f0.5-g0-w1.5", {"sample_s": 3.0}, add=False)
    record_cost(tmp_path, "f0.5-g0-w1.5", {"sample_s": 2.0}, add=True)  # a later call finished the set
    record_cost(tmp_path, "f0.5-s1", {}, add=False)  # an export that recorded nothing: no row of dashes
    assert read_costs(tmp_path) == {"f0.5-s0": {"generator_s": 12.0, "generator_cpu_s": 20.0},
                                    "f0.5-g0-w1.5": {"sample_s": 5.0}}
    export = tmp_path / "export"
    export.mkdir()
    for training, want in [(None, {}), ({"steps": 8, "wall_s": 5.0, "cpu_s": 9.0, "from_step": 4}, {}),
                           ({"steps": 8, "wall_s": 5.0, "cpu_s": 9.0, "from_step": 0},
                            {"generator_s": 5.0, "generator_cpu_s": 9.0})]:
        (export / "synth.json").write_text(json.dumps({"kind": "bridge", **({"training": training} if training else {})}))
        assert generator_seconds(export) == want


def test_a_set_gone_from_this_machine_keeps_its_fidelity_report(tmp_path):
    """A study seeded from its kept raw results has no set folders for finished stages: their reports stand."""
    from synth.evaluation.fidelity import fidelity_of_sets

    cfg = load_config(None, EVAL)
    rec = {"cache_key": {"quality": cfg.eval.quality_threshold}, "label_fidelity": {"overall": 0.97}}
    (tmp_path / "fidelity" / "f0.5-g0-w1.5").mkdir(parents=True)
    (tmp_path / "fidelity" / "f0.5-g0-w1.5" / "fidelity.json").write_text(json.dumps(rec))
    got = fidelity_of_sets(cfg, tmp_path, [tmp_path / "synthetic" / "f0.5-g0-w1.5", tmp_path / "synthetic" / "f1-g0-w1.5"],
                           log=lambda m: None)
    assert got == {"f0.5-g0-w1.5": rec} and not (tmp_path / "features.safetensors").exists()


def test_a_pool_report_without_the_full_data_reference_says_so(tmp_path):
    """A partial study whose full-data classifiers have not run yet: no gap is closed, and the report says why."""
    from synth.evaluation.protocol import Cell
    from synth.evaluation.report import summarise, write_report

    cfg = load_config(None, EVAL + POOL + ["eval.fractions=[0.5]"])
    rows = []
    for seed in range(2):
        for arm, auroc in (("real", 0.70), ("duplicate", 0.71)):
            c = Cell(0.5, arm, 1.0 if arm == "duplicate" else 0.0, None, None, seed, recipe="smallcnn")
            rows.append({"key": c.key(), **dataclasses.asdict(c), "auroc": auroc + 0.01 * seed, "accuracy": 0.7,
                         "cpu_s": 1.0, "n_real": 8, "n_val": 4})
    summary = summarise(rows, cfg.eval)
    summary.update(fidelity={}, costs={}, pseudo={}, n_val=4, partial={"done": 4, "planned": 40, "missing_fractions": [1.0]})
    write_report(summary, cfg, tmp_path / "r", command="synth eval augment --partial")
    assert "Full-data reference (real only, fraction 1): not run yet, so no gap is closed." in (tmp_path / "r.md").read_text()
