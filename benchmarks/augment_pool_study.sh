#!/bin/bash
# The issue-17 study (synthetic data with an unlabelled pool), every stage in the order it was run, for both data
# sets.  Each stage resumes its study folder (results.jsonl, generators, sets), so this script can be stopped at
# any point and run again; a stage whose cells are all done only rewrites its report.
#
#   MEDMNIST=/path/to/medmnist bash benchmarks/augment_pool_study.sh [pneumonia|breast|all]
#
# About 2 CPU-hours per PneumoniaMNIST stage and per BreastMNIST stage on 2 cores; pause it (kill -STOP) while
# anything else needs the cores, since two 2-thread jobs on 2 cores slow each other many-fold.
set -euo pipefail
cd "$(dirname "$0")/.."
MEDMNIST=${MEDMNIST:?set MEDMNIST to the folder holding pneumoniamnist.npz and breastmnist.npz}
WHICH=${1:-all}
SYNTH=${SYNTH:-synth}
COMMON=(--config configs/pneumoniamnist-28-flow.yaml --set "data.cache_dir=$MEDMNIST" --set eval.guidance=[1.5]
        --set eval.unlabelled_pool=rest --set eval.generators=[labelled,pool] --set eval.recipes=[smallcnn,resnet]
        --set eval.arms=[real,mixed,synthetic,pretrain,duplicate,pseudo] --set eval.workers=2
        --set train.progress=false)

pneumonia() {  # stage 1-3 are in benchmarks/results/augment-pool-pneumoniamnist.md; 4 and 5 are not run yet
  local P=(--set eval.sweep_fraction=0.05 --out runs/pool-pneumoniamnist)
  $SYNTH --threads 2 eval augment "${COMMON[@]}" "${P[@]}" --set eval.syn_real_ratios=[1] --set eval.fractions=[0.05,1.0]
  $SYNTH --threads 2 eval augment "${COMMON[@]}" "${P[@]}" --set eval.syn_real_ratios=[1] --set eval.fractions=[0.01,0.05]
  $SYNTH --threads 2 eval augment "${COMMON[@]}" "${P[@]}" --set eval.syn_real_ratios=[1] \
    --set eval.fractions=[0.01,0.05,1.0] --report benchmarks/results/augment-pool-pneumoniamnist
  # 4: the synthetic:real sweep at 5% (the first ratio, 1, keeps the cells already done)
  $SYNTH --threads 2 eval augment "${COMMON[@]}" "${P[@]}" --set eval.syn_real_ratios=[1,0.25,0.5,2] \
    --set eval.fractions=[0.01,0.05,1.0] --report benchmarks/results/augment-pool-pneumoniamnist
  # 5: the 10% fraction
  $SYNTH --threads 2 eval augment "${COMMON[@]}" "${P[@]}" --set eval.syn_real_ratios=[1,0.25,0.5,2] \
    --set eval.fractions=[0.01,0.05,0.1,1.0] --report benchmarks/results/augment-pool-pneumoniamnist
}

breast() {  # 546 training images: 1000 generator steps, feature net 600 steps; stage 1 is in augment-pool-breastmnist.md
  local B=(--set data.name=breastmnist --set train.steps=1000 --set eval.feature_steps=600
           --set eval.sweep_fraction=0.1 --set eval.syn_real_ratios=[1] --out runs/pool-breastmnist)
  $SYNTH --threads 2 eval augment "${COMMON[@]}" "${B[@]}" --set eval.fractions=[0.1,1.0] \
    --report benchmarks/results/augment-pool-breastmnist
  $SYNTH --threads 2 eval augment "${COMMON[@]}" "${B[@]}" --set eval.fractions=[0.01,0.05,0.1,1.0] \
    --report benchmarks/results/augment-pool-breastmnist
}

case "$WHICH" in
  pneumonia) pneumonia ;;
  breast) breast ;;
  all) pneumonia; breast ;;
  *) echo "usage: MEDMNIST=DIR bash $0 [pneumonia|breast|all]" >&2; exit 2 ;;
esac
