#!/bin/bash
# The issue-17 study (synthetic data with an unlabelled pool), every stage in the order it was run, for both data
# sets.  Each stage resumes its study folder (results.jsonl, generators, sets), so this script can be stopped at
# any point and run again; a stage whose cells are all done only rewrites its report.
#
#   MEDMNIST=/path/to/medmnist bash benchmarks/augment_pool_study.sh [pneumonia|pneumonia-sweep|pneumonia-10|breast|breast-low|all]
#
# About 2 CPU-hours per PneumoniaMNIST stage and per BreastMNIST stage on 2 cores; pause it (kill -STOP) while
# anything else needs the cores, since two 2-thread jobs on 2 cores slow each other many-fold.  Stages run before
# raw results were kept (PneumoniaMNIST 1-3, BreastMNIST 1) have only their reports in benchmarks/results: on a
# new machine they run again from the start (and rewrite their report).
set -euo pipefail
cd "$(dirname "$0")/.."
MEDMNIST=${MEDMNIST:?set MEDMNIST to the folder holding pneumoniamnist.npz and breastmnist.npz}
WHICH=${1:-all}
SYNTH=${SYNTH:-synth}
COMMON=(--config configs/pneumoniamnist-28-flow.yaml --set "data.cache_dir=$MEDMNIST" --set "eval.guidance=[1.5]"
        --set eval.unlabelled_pool=rest --set "eval.generators=[labelled,pool]" --set "eval.recipes=[smallcnn,resnet]"
        --set "eval.arms=[real,mixed,synthetic,pretrain,duplicate,pseudo]" --set eval.workers=2
        --set train.progress=false)

# A study's raw results (one row per classifier, the costs, the teachers, the fidelity reports and its settings) are
# kept beside its report in benchmarks/results/<report>-raw/ after every stage: runs/ does not outlive a machine, and a
# study folder seeded from them resumes with the cells still to run (the generators those need are retrained:
# training is deterministic per seed).
seed_raw() {  # out raw: start an absent study folder from its kept raw results
  if [ ! -f "$1/results.jsonl" ] && [ -f "$2/results.jsonl" ]; then mkdir -p "$1"; cp -r "$2"/. "$1"/; fi
}
keep_raw() {  # out raw: copy a study folder's raw results (small JSON files) into the repository
  local out=$1 raw=$2 f rel
  mkdir -p "$raw"
  if [ -f "$raw/results.jsonl" ] && [ "$(wc -l < "$raw/results.jsonl")" -gt "$(cat "$out/results.jsonl" 2>/dev/null | wc -l)" ]; then
    echo "keep_raw: $raw holds more results than $out; not replacing them (seed $out from them: move $out away)" >&2
    return 1
  fi
  for f in "$out"/results.jsonl "$out"/costs.json "$out"/eval-config.json "$out"/pseudo/*.json "$out"/fidelity/*/fidelity.json; do
    [ -f "$f" ] || continue
    rel=${f#"$out"/}
    mkdir -p "$raw/$(dirname "$rel")" && cp "$f" "$raw/$rel"
  done
}

stage() {  # out report settings...: run (or resume) one stage from and into its kept raw results
  local out=$1 report=$2 rc=0
  shift 2
  seed_raw "$out" "$report-raw"
  trap 'keep_raw "$out" "$report-raw"; exit 130' INT TERM  # a stopped stage keeps what it finished
  $SYNTH --threads 2 eval augment "${COMMON[@]}" --out "$out" --report "$report" "$@" || rc=$?
  trap - INT TERM
  keep_raw "$out" "$report-raw"
  return $rc
}

pneumonia() {  # stages 1-3, in benchmarks/results/augment-pool-pneumoniamnist.md
  local P=(runs/pool-pneumoniamnist benchmarks/results/augment-pool-pneumoniamnist --set eval.sweep_fraction=0.05)
  stage "${P[@]}" --set "eval.syn_real_ratios=[1]" --set "eval.fractions=[0.05,1.0]"
  stage "${P[@]}" --set "eval.syn_real_ratios=[1]" --set "eval.fractions=[0.01,0.05]"
  stage "${P[@]}" --set "eval.syn_real_ratios=[1]" --set "eval.fractions=[0.01,0.05,1.0]"
}

pneumonia_sweep() {  # 4: the synthetic:real sweep at 5% (real only at 100% comes along as the gap's reference)
  stage runs/pool-pneumoniamnist-sweep benchmarks/results/augment-pool-pneumoniamnist-sweep \
    --set eval.sweep_fraction=0.05 --set "eval.syn_real_ratios=[1,0.25,0.5,2]" --set "eval.fractions=[0.05]"
}

pneumonia_10() {  # 5: the 10% fraction
  stage runs/pool-pneumoniamnist-10 benchmarks/results/augment-pool-pneumoniamnist-10 \
    --set eval.sweep_fraction=0.05 --set "eval.syn_real_ratios=[1]" --set "eval.fractions=[0.1]"
}

breast() {  # 546 training images: 1000 generator steps, feature net 600 steps
  local B=(--set data.name=breastmnist --set train.steps=1000 --set eval.feature_steps=600
           --set eval.sweep_fraction=0.1 --set "eval.syn_real_ratios=[1]")
  # 1: 10% and 100%, in augment-pool-breastmnist.md (made before raw results were kept: its folder is gone)
  [ "${1:-}" = low ] || stage runs/pool-breastmnist benchmarks/results/augment-pool-breastmnist "${B[@]}" \
    --set "eval.fractions=[0.1,1.0]"
  # 2: 1% and 5%, a folder and report of their own (the same settings)
  stage runs/pool-breastmnist-low benchmarks/results/augment-pool-breastmnist-low "${B[@]}" \
    --set "eval.fractions=[0.01,0.05]"
}

case "$WHICH" in
  pneumonia) pneumonia ;;
  pneumonia-sweep) pneumonia_sweep ;;
  pneumonia-10) pneumonia_10 ;;
  breast) breast ;;
  breast-low) breast low ;;
  all) pneumonia; pneumonia_sweep; pneumonia_10; breast ;;
  *) echo "usage: MEDMNIST=DIR bash $0 [pneumonia|pneumonia-sweep|pneumonia-10|breast|breast-low|all]" >&2; exit 2 ;;
esac
