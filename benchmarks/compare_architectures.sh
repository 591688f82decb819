#!/bin/bash
# Usage (from the repository root, with the package installed): [RUNS=dir] [BUDGET=seconds] bash benchmarks/compare_architectures.sh
# Issue 15: FusionNet b16 / U-Net b16 / FCN-8s b24-fc256, same data, augmentation, loss,
# 5000-step cosine schedule and an equal wall-clock budget, back to back on this machine.
export TF_CPP_MIN_LOG_LEVEL=2
RUNS=${RUNS:-runs/compare}
mkdir -p "$RUNS"
BUDGET=${BUDGET:-660}
COMMON="--set steps_per_epoch=100 --set epochs=50 --set isbi_eval_every=0"
run() { name=$1; shift
  start=$(date +%s)
  timeout $BUDGET fusionnet train "$@" $COMMON --set output_dir=${RUNS}/$name > ${RUNS}/$name.train.log 2>&1
  echo "$name trained $(( $(date +%s) - start )) s; load $(cut -d' ' -f1-3 /proc/loadavg)" >> ${RUNS}/summary.txt
}
python -c "import tifffile as t; t.imwrite('$RUNS/val-volume.tif', t.imread('../shared/data/isbi2012/train-volume.tif')[20:25]); t.imwrite('$RUNS/val-labels.tif', t.imread('../shared/data/isbi2012/train-labels.tif')[20:25])"
run fusionnet --config training/configs/isbi2012.yaml
run unet --config training/configs/isbi2012.yaml --set model.architecture=unet
run fcn8s --config training/configs/isbi2012_fcn8s.yaml
for name in fusionnet unet fcn8s; do
  fusionnet predict "$RUNS"/val-volume.tif -o ${RUNS}/$name.pred.tif --model ${RUNS}/$name/latest.keras --tta 8 --quiet >> ${RUNS}/$name.eval.log 2>&1
  echo "$name $(wc -l < ${RUNS}/$name/log.csv) log lines $(fusionnet evaluate --labels "$RUNS"/val-labels.tif --pred ${RUNS}/$name.pred.tif --json)" >> ${RUNS}/summary.txt
done
echo done >> ${RUNS}/summary.txt
