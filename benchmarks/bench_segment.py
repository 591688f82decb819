"""
Title: Neuron segmentation on ISBI 2012: scores against thresholding, and speed
Description: Predicts the held-out ISBI 2012 training slices 20-24 with a
model (default: the shipped reference FusionNet, 8-way TTA), then reports:
the best-threshold ISBI V_rand / V_info of the probability map
(``isbi_scores``), the scores of ``fusionnet segment``'s default
segmentation (``segment`` with ``default_params()``, scored by
``segmentation_scores_report``) and the seconds per 512x512 slice for
segmenting on one core (wall and CPU time; the process is pinned to one core
after prediction). With ``--cross-validate`` it also tunes on slices 20-22
and scores on 23-24, and the other way round, which is the honest estimate:
the shipped parameters were tuned on all of 20-24.

Run: ``python benchmarks/bench_segment.py --data ../shared/data/isbi2012 [--cross-validate]``.
The last line printed is one JSON object.
"""

import argparse
import json
import os
import time
from datetime import datetime, timezone

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = os.environ.get("ISBI2012_DIR", "../shared/data/isbi2012")
SLICES = slice(20, 25)


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"ISBI 2012 folder (default: $ISBI2012_DIR or {DEFAULT_DATA})")
    parser.add_argument("--model", default=None,
                        help="A .keras file (default: the shipped pretrained model).")
    parser.add_argument("--pred", default=None,
                        help="A saved membrane map of slices 20-24 (skips prediction).")
    parser.add_argument("--tta", type=int, choices=(1, 4, 8), default=8,
                        help="Test-time augmentation (default: 8, as fusionnet predict).")
    parser.add_argument("--repeats", type=int, default=3,
                        help="Timed segmentation passes over the 5 slices (default: 3).")
    parser.add_argument("--cross-validate", action="store_true",
                        help="Also tune on 20-22 / score 23-24 and the reverse.")
    parser.add_argument("--budget", type=int, default=60,
                        help="Tuning budget per fold with --cross-validate (default: 60).")
    return parser.parse_args()


def cpu_flags():
    """The CPU model and the flags that matter for these figures."""
    text = open("/proc/cpuinfo").read()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines()
                  if line.startswith("model name")), "unknown")
    flags = sorted({flag for flag in text.split() if flag.startswith(("avx512", "amx"))})
    return {"cpu": model, "flags": flags, "cores": os.cpu_count()}


def predict(args, images):
    from fusionnet_tf.inference import Predictor, load_model
    from fusionnet_tf.pretrained import load_pretrained

    model = load_model(args.model) if args.model else load_pretrained()
    return Predictor(model, tile_shape=512, tta=args.tta, progress=False).predict(images)


def time_segmentation(membrane, params, repeats):
    """Seconds per slice (wall, CPU) of ``segment`` over ``repeats`` passes, best pass."""
    from fusionnet_tf.segmentation import segment

    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        segment(membrane, params)
        walls.append((time.perf_counter() - wall) / len(membrane))
        cpus.append((time.process_time() - cpu) / len(membrane))
    return min(walls), min(cpus)


def rounded(scores):
    return {key: round(value, 5) for key, value in scores.items()}


def cross_validate(membrane, labels, budget):
    """Tune on one part of the slices, segment the other part (two folds).

    Returns per-fold scores and ``pooled``: the scores of all five slices,
    each segmented with the parameters tuned on the other fold (so no slice is
    scored with parameters tuned on it).
    """
    import numpy as np

    from fusionnet_tf.metrics import segmentation_scores_report
    from fusionnet_tf.segmentation import default_params, segment
    from fusionnet_tf.segmentation.tune import tune

    folds, held_out = {}, np.zeros(membrane.shape, np.uint64)
    for name, tuned_on, scored_on in (("tune20-22_score23-24", slice(0, 3), slice(3, 5)),
                                      ("tune23-24_score20-22", slice(3, 5), slice(0, 3))):
        best, _ = tune(membrane[tuned_on], labels[tuned_on], budget=budget,
                       start=default_params())
        segments, _ = segment(membrane[scored_on], best)
        held_out[scored_on] = segments
        folds[name] = {"params": best.to_dict(),
                       **rounded(segmentation_scores_report(labels[scored_on], segments))}
        print(name, folds[name], flush=True)
    folds["pooled"] = rounded(segmentation_scores_report(labels, held_out))
    return folds


def main():
    args = parse_args()
    from fusionnet_tf.data import get_isbi2012_paths, normalize, read_labels, read_stack
    from fusionnet_tf.metrics import isbi_scores, segmentation_scores_report
    from fusionnet_tf.segmentation import default_params, segment
    from fusionnet_tf.segmentation.io import read_membrane

    paths = get_isbi2012_paths(args.data)
    labels = read_labels(paths["train_labels"])[SLICES]
    if args.pred:
        membrane = read_membrane(args.pred)
    else:
        membrane = predict(args, normalize(read_stack(paths["train_images"])[SLICES]))
    thresholded = isbi_scores(membrane, labels)
    print("threshold sweep", thresholded, flush=True)

    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core from here on
    params = default_params()
    segments, max_id = segment(membrane, params)
    scores = segmentation_scores_report(labels, segments)
    wall, cpu = time_segmentation(membrane, params, args.repeats)
    result = {
        "threshold": {"v_rand": round(thresholded["v_rand"], 5),
                      "v_info": round(thresholded["v_info"], 5),
                      "v_rand_threshold": thresholded["v_rand_threshold"],
                      "v_info_threshold": thresholded["v_info_threshold"]},
        "segmentation": {**rounded(scores), "segments": max_id, "params": params.to_dict()},
        "segment_3d": rounded(segmentation_scores_report(labels,
                                                         segment(membrane, params, "3d")[0])),
        "seconds_per_slice_one_core": round(wall, 4),
        "cpu_seconds_per_slice": round(cpu, 4),
        "slices_per_second_one_core": round(1 / wall, 2),
        "tta": args.tta, "model": args.model or "pretrained", "slices": "20-24",
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"), **cpu_flags(),
    }
    print("segmentation", result["segmentation"], flush=True)
    if args.cross_validate:
        result["cross_validation"] = cross_validate(membrane, labels, args.budget)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
