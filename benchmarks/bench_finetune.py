"""
Title: Fine-tuning the shipped ISBI 2012 model on SNEMI3D sections, against zero-shot and from scratch
Description: Issue 23's fine-tuning benchmark. Arms, all scored in 2D on SNEMI3D
AC4 sections 60-74 (never trained on):

- ``zero_shot``: the shipped ISBI 2012 model as it is;
- ``finetune_1`` / ``finetune_3`` / ``finetune_10``: ``fusionnet train --init
  isbi2012`` (fine-tuning defaults: learning rate 1e-4, 50 warm-up steps) on
  1, 3 and 10 labelled sections from 0-59 (evenly spread), ``--steps`` steps;
- ``scratch_10``: the same 10 sections and steps from a fresh model (the
  config's from-scratch learning rate 1e-3, warm-up min(200, steps / 10)).

Training uses ``training/configs/snemi3d_boundaries.yaml`` (instance labels
-> boundaries 3 px wide) with no validation data (sections 60-74 stay unseen;
``checkpoint_monitor: loss``), so each arm's model is its ``latest.keras``.
Run folders live in ``--out`` and resume when the benchmark is run again.

Scores per arm: the ISBI V_rand / V_info of the membrane map at the best
threshold over the pooled 15 sections (and per section at that threshold),
and of ``fusionnet segment``'s default segmentation (the shipped parameters),
pooled and per section. The ground truth for both is the same: boundaries of
width 1 from the instance ids (``instance_boundaries``), whose interior
components are the cells of each section. The learning curves are the runs'
``log.csv`` (loss per epoch of ``--steps-per-epoch`` steps).

Run: ``python benchmarks/bench_finetune.py --data ../shared/data/snemi3d-ac4 --steps 2000``
(``--crop 128 --steps 2 --steps-per-epoch 1 --tta 1`` checks that it works in a
minute). The last line printed is one JSON object.
"""

import argparse
import csv
import json
import os
import time
from datetime import datetime, timezone

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = os.environ.get("SNEMI3D_DIR", "../shared/data/snemi3d-ac4")
CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "training", "configs",
                      "snemi3d_boundaries.yaml")
TEST = list(range(60, 75))
# labelled training sections per arm: evenly spread over 0-59
SECTIONS = {1: [30], 3: [10, 30, 50], 10: list(range(3, 60, 6))}


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"SNEMI3D AC4 folder (default: $SNEMI3D_DIR or {DEFAULT_DATA})")
    parser.add_argument("--steps", type=int, default=2000,
                        help="Training steps per trained arm (default: 2000).")
    parser.add_argument("--steps-per-epoch", type=int, default=100,
                        help="Steps per epoch, i.e. per learning-curve point (default: 100).")
    parser.add_argument("--arms", default="zero_shot,finetune_1,finetune_3,finetune_10,scratch_10",
                        help="Comma-separated arms to run (default: all).")
    parser.add_argument("--out", default="bench_finetune_runs",
                        help="Folder of the arms' run folders (default: %(default)s).")
    parser.add_argument("--tta", type=int, choices=(1, 4, 8), default=8,
                        help="Test-time augmentation for scoring (default: 8).")
    parser.add_argument("--precision", default="mixed_bfloat16",
                        help="Training precision (default: mixed_bfloat16).")
    parser.add_argument("--crop", type=int, default=None,
                        help="Use only the top-left CROP x CROP pixels (quick checks; a "
                             "multiple of 16; also the training tile if smaller than 256).")
    return parser.parse_args()


def arm_config(args, arm, data):
    """The ``TrainConfig`` of a trained arm (``finetune_N`` or ``scratch_N``)."""
    from fusionnet_tf.training.config import load_config

    kind, count = arm.split("_")
    sections = SECTIONS[int(count)]
    epochs = max(1, round(args.steps / args.steps_per_epoch))
    tile = min(256, args.crop or 256)
    overrides = [
        f"data.train_images={data['images']}", f"data.train_labels={data['labels']}",
        f"data.train_slices={json.dumps(sections)}", "data.val_slices=null",
        f"data.tile_size={tile}", "checkpoint_monitor=loss", "isbi_eval_every=0",
        f"epochs={epochs}", f"steps_per_epoch={args.steps_per_epoch}",
        f"precision={args.precision}", f"output_dir={os.path.join(args.out, arm)}",
        "tensorboard=false",
    ]
    if kind == "finetune":
        overrides.append("model.init=isbi2012")  # fine-tuning defaults: lr 1e-4, warm-up 50
        overrides.append(f"optimizer.warmup_steps={min(50, max(1, args.steps // 10))}")
    else:
        overrides.append(f"optimizer.warmup_steps={min(200, max(1, args.steps // 10))}")
    return load_config(CONFIG, overrides)


def load_snemi(args):
    """Raw sections (uint8) and instance ids, cropped with ``--crop``, written where training reads them."""
    import numpy as np
    import tifffile

    raw = tifffile.imread(os.path.join(args.data, "ac4-z00-74-raw.tif"))
    ids = tifffile.imread(os.path.join(args.data, "ac4-z00-74-labels.tif"))
    files = {"images": os.path.join(args.data, "ac4-z00-74-raw.tif"),
             "labels": os.path.join(args.data, "ac4-z00-74-labels.tif")}
    if args.crop:
        raw, ids = raw[:, :args.crop, :args.crop], ids[:, :args.crop, :args.crop]
        os.makedirs(args.out, exist_ok=True)
        files = {"images": os.path.join(args.out, f"raw_crop{args.crop}.tif"),
                 "labels": os.path.join(args.out, f"ids_crop{args.crop}.tif")}
        tifffile.imwrite(files["images"], raw, photometric="minisblack")
        tifffile.imwrite(files["labels"], ids.astype(np.uint32), photometric="minisblack")
    return raw, ids, files


def train_arm(config):
    """Train (or resume) one arm; its model, seconds and learning curve."""
    from fusionnet_tf.training.run import train

    began = time.perf_counter()
    result = train(config, verbose=2)
    curve = []
    log = os.path.join(config.output_dir, "log.csv")
    if os.path.isfile(log):
        with open(log) as handle:
            curve = [round(float(row["loss"]), 5) for row in csv.DictReader(handle)]
    return result.model, round(time.perf_counter() - began, 1), curve


def score(model, raw, ids, tta):
    """Threshold and segmentation scores on the test sections, pooled and per section."""
    from fusionnet_tf.data import normalize
    from fusionnet_tf.data.labels import instance_boundaries
    from fusionnet_tf.inference import Predictor
    from fusionnet_tf.metrics import isbi_scores, segmentation_scores_report
    from fusionnet_tf.segmentation import default_params, segment

    images = normalize(raw[TEST])
    labels = instance_boundaries(ids[TEST], width=1)
    tile = min(512, images.shape[1])
    began = time.perf_counter()
    membrane = Predictor(model, tile_shape=tile, overlap=min(64, tile // 4), tta=tta,
                         progress=False).predict(images)
    predict_seconds = time.perf_counter() - began
    pooled = isbi_scores(membrane, labels)
    best = [pooled["v_rand_threshold"]]
    segments, _ = segment(membrane, default_params())
    per_section = []
    for index, section in enumerate(TEST):
        at = isbi_scores(membrane[index:index + 1], labels[index:index + 1], thresholds=best)
        seg = segmentation_scores_report(labels[index:index + 1], segments[index:index + 1])
        per_section.append({"section": section,
                            "threshold_v_rand": round(at["v_rand"], 5),
                            "threshold_v_info": round(at["v_info"], 5),
                            "segmentation_v_rand": round(seg["v_rand"], 5),
                            "segmentation_v_info": round(seg["v_info"], 5)})
    seg = segmentation_scores_report(labels, segments)
    return {"threshold": {"v_rand": round(pooled["v_rand"], 5),
                          "v_info": round(pooled["v_info"], 5),
                          "v_rand_threshold": pooled["v_rand_threshold"]},
            "segmentation": {"v_rand": round(seg["v_rand"], 5), "v_info": round(seg["v_info"], 5)},
            "per_section": per_section, "predict_seconds": round(predict_seconds, 1)}


def main():
    args = parse_args()
    from fusionnet_tf.pretrained import load_pretrained

    raw, ids, files = load_snemi(args)
    result = {"arms": {}}
    for arm in [name.strip() for name in args.arms.split(",") if name.strip()]:
        if arm == "zero_shot":
            entry = score(load_pretrained(), raw, ids, args.tta)
        else:
            config = arm_config(args, arm, files)
            model, seconds, curve = train_arm(config)
            entry = score(model, raw, ids, args.tta)
            entry.update(train_seconds_this_call=seconds, loss_per_epoch=curve,
                         sections=SECTIONS[int(arm.split("_")[1])],
                         learning_rate=config.optimizer.learning_rate,
                         warmup_steps=config.optimizer.warmup_steps,
                         steps=config.epochs * config.steps_per_epoch)
        result["arms"][arm] = entry
        print(arm, {key: entry[key] for key in ("threshold", "segmentation")}, flush=True)
    result.update(test_sections="60-74", tta=args.tta, crop=args.crop, steps=args.steps,
                  precision=args.precision,
                  date=datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
