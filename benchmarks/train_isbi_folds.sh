#!/usr/bin/env bash
# Train the five ISBI 2012 fold models of issue 23: fold k validates on slices 5k..5k+4 and
# trains on the other 20, so every labelled slice has a model that never saw it. Resumable:
# a killed run resumes from its folder, and a finished fold (its DONE file) is skipped.
# Then: python benchmarks/bench_segment.py --cv --runs "$OUT/fold{k}" --data "$DATA"
#
#   DATA=../shared/data/isbi2012 OUT=runs/isbi_cv EPOCHS=8 STEPS=150 bash benchmarks/train_isbi_folds.sh
#
# FOLDS picks and orders the folds (default "0 1 2 3 4"); EXTRA adds config overrides, e.g. the
# base-32 arm of the width comparison:
#   OUT=runs/isbi_cv32 STEPS=... FOLDS="4 0 1 2 3" EXTRA="--set model.base_filters=32" bash ...
set -euo pipefail
DATA=${DATA:-../shared/data/isbi2012}
OUT=${OUT:-runs/isbi_cv}
EPOCHS=${EPOCHS:-8}
STEPS=${STEPS:-150}
PRECISION=${PRECISION:-mixed_bfloat16}
FOLDS=${FOLDS:-0 1 2 3 4}
read -r -a extra <<< "${EXTRA:-}"
for k in $FOLDS; do
  run="$OUT/fold$k"
  [ -f "$run/DONE" ] && continue
  lo=$((5 * k)); hi=$((5 * k + 4))
  if [ "$k" -eq 0 ]; then train="5-24"
  elif [ "$k" -eq 4 ]; then train="0-19"
  else train="0-$((lo - 1)),$((hi + 1))-24"; fi
  fusionnet train --config training/configs/isbi2012.yaml \
    --set data.train_images="$DATA/train-volume.tif" --set data.train_labels="$DATA/train-labels.tif" \
    --set data.train_slices="$train" --set data.val_slices="$lo-$hi" \
    --set epochs="$EPOCHS" --set steps_per_epoch="$STEPS" --set precision="$PRECISION" \
    --set isbi_eval_every="$EPOCHS" --set tensorboard=false --set output_dir="$run" \
    "${extra[@]}"
  mkdir -p "$run" && touch "$run/DONE"
done
