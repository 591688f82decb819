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

``--cv`` (issue 23) is the honest figure over all 25 labelled slices, with
out-of-fold maps: fold k's model (``--runs``, default
``/work/runs/isbi_cv/fold{k}``, its ``latest.keras``; trained on the other
slices, validated on the slices its ``config.yaml`` names as ``val_slices``,
5k..5k+4) predicts its held-out slices with 8-way TTA; the 25 out-of-fold maps
are pooled and ``fusionnet tune-segment --cv K`` runs on them (the same folds).
It prints, per fold and pooled, the best-threshold V_rand / V_info of the map,
the held-out segmentation scores of the recipe and of the learned edge
classifier (``cross_validate_edge_classifier`` on the same folds: trained on
the other folds' slices, fragments from the untuned ``SegmentParams()``
defaults so that no slice's labels choose them), and whether the goals hold
(segmentation V_rand >= 0.988 and V_info >= 0.992 pooled, segmentation >=
threshold + 0.003 in every fold):

    python benchmarks/bench_segment.py --cv [--runs '/work/runs/isbi_cv/fold{k}'] [--folds 5]
        [--budget 60] [--oof oof.tif] [--out DIR] [--edge-trees 100]
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
                        help="Tuning budget per fold with --cross-validate / --cv (default: 60).")
    parser.add_argument("--cv", action="store_true",
                        help="Out-of-fold maps of all labelled slices from the fold runs, "
                             "then tune-segment --cv on them (see the module docstring).")
    parser.add_argument("--runs", default="/work/runs/isbi_cv/fold{k}",
                        help="--cv: fold run folders, {k} = fold (default: %(default)s).")
    parser.add_argument("--checkpoint", default="latest.keras",
                        help="--cv: model file in each run folder (default: %(default)s).")
    parser.add_argument("--folds", type=int, default=5, help="--cv: folds (default: 5).")
    parser.add_argument("--oof", default=None,
                        help="--cv: out-of-fold map file; reused if it exists, else written.")
    parser.add_argument("--out", default="bench_segment_cv",
                        help="--cv: folder for the maps and the tuned params.json "
                             "(default: %(default)s).")
    parser.add_argument("--crop", type=int, default=None,
                        help="--cv: use only the top-left CROP x CROP pixels (quick checks).")
    parser.add_argument("--edge-trees", type=int, default=100,
                        help="--cv: trees of the edge classifier (default: %(default)s).")
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


def fold_slices(run, k, folds):
    """The held-out slices of fold run ``run``: its config's ``val_slices``, else 5k..5k+4."""
    import yaml

    from fusionnet_tf.checks import parse_slices

    config = os.path.join(run, "config.yaml")
    if os.path.isfile(config):
        with open(config) as handle:
            spec = (yaml.safe_load(handle).get("data") or {}).get("val_slices")
        if spec is not None:
            return parse_slices(spec, 30, key=f"{config}: data.val_slices")
    per_fold = 25 // folds
    return list(range(k * per_fold, (k + 1) * per_fold))


def out_of_fold_maps(args, images):
    """(N, H, W) membrane maps of the labelled slices, each from the fold model that never saw it.

    Returns:
        ``(membrane, folds)``: the map (slices in index order) and the list of
        each fold's slice indices.
    """
    import numpy as np
    import tifffile

    from fusionnet_tf.inference import Predictor, load_model

    runs = [args.runs.format(k=k) for k in range(args.folds)]
    folds = [fold_slices(run, k, args.folds) for k, run in enumerate(runs)]
    order = sorted(i for fold in folds for i in fold)
    if order != list(range(len(order))):
        raise SystemExit(f"the folds' held-out slices {folds} are not 0..N-1 exactly once")
    if args.oof and os.path.isfile(args.oof):
        return tifffile.imread(args.oof).astype(np.float32), folds
    membrane = np.zeros((len(order),) + images.shape[1:], np.float32)
    for run, fold in zip(runs, folds):
        began = time.perf_counter()
        model = load_model(os.path.join(run, args.checkpoint))
        tile = min(512, images.shape[1])
        predictor = Predictor(model, tile_shape=tile, overlap=min(64, tile // 4), tta=args.tta,
                              progress=False)
        membrane[fold] = predictor.predict(images[fold])
        print(f"predicted slices {fold[0]}-{fold[-1]} with {run} "
              f"({time.perf_counter() - began:.0f} s)", flush=True)
    if args.oof:
        tifffile.imwrite(args.oof, membrane, photometric="minisblack")
    return membrane, folds


def edge_classifier_cv(membrane, labels, folds, trees=100):
    """Held-out scores of the learned edge classifier on ``folds`` (lists of slice indices).

    The folds must be the contiguous ones of ``make_folds`` (those of
    ``tune-segment --cv``), so all three methods are scored on the same slices.

    Returns:
        ``(report, seconds)``: ``cross_validate_edge_classifier``'s report
        and the wall time.
    """
    from fusionnet_tf.segmentation import SegmentParams
    from fusionnet_tf.segmentation.edge_classifier import cross_validate_edge_classifier
    from fusionnet_tf.segmentation.tune import make_folds

    if make_folds(len(membrane), len(folds)) != [list(fold) for fold in folds]:
        raise SystemExit(f"the model folds {folds} are not contiguous folds of the slices")
    began = time.perf_counter()
    report = cross_validate_edge_classifier(
        membrane, labels, folds=len(folds), params=SegmentParams(), trees=trees,
        callback=lambda row: print(f"edges fold {row['fold']}: held-out V_rand "
                                   f"{row['v_rand']:.4f}", flush=True))
    return report, time.perf_counter() - began


def run_cv(args):
    """``--cv``: out-of-fold maps, threshold scores and ``tune-segment --cv``; one JSON line."""
    import tifffile

    from fusionnet_tf.cli import main as fusionnet
    from fusionnet_tf.data import get_isbi2012_paths, normalize, read_labels, read_stack
    from fusionnet_tf.metrics import isbi_scores

    paths = get_isbi2012_paths(args.data)
    labels = read_labels(paths["train_labels"])
    images = normalize(read_stack(paths["train_images"]))
    if args.crop:
        labels, images = labels[:, :args.crop, :args.crop], images[:, :args.crop, :args.crop]
    os.makedirs(args.out, exist_ok=True)
    args.oof = args.oof or os.path.join(args.out, "oof_membrane.tif")
    membrane, folds = out_of_fold_maps(args, images)
    labels = labels[:len(membrane)]
    label_file = os.path.join(args.out, "labels.tif")
    tifffile.imwrite(label_file, (1 - labels) * 255, photometric="minisblack")  # ISBI convention
    params_file = os.path.join(args.out, "params.json")
    if os.path.exists(params_file):
        os.remove(params_file)
    began = time.perf_counter()
    code = fusionnet(["tune-segment", "--pred", args.oof, "--labels", label_file, "-o",
                      params_file, "--cv", str(args.folds), "--budget", str(args.budget)])
    if code:
        raise SystemExit(f"tune-segment --cv failed with exit code {code}")
    tune_seconds = time.perf_counter() - began
    with open(params_file) as handle:
        tuned = json.load(handle)
    edges, edge_seconds = edge_classifier_cv(membrane, labels, folds, args.edge_trees)
    per_fold = []
    for fold, held, edge in zip(folds, tuned["cv"]["folds"], edges["folds"]):
        if held["slices"] != fold:
            raise SystemExit(f"tune-segment's fold {held['slices']} is not the model fold {fold}")
        threshold = isbi_scores(membrane[fold], labels[fold])
        per_fold.append({
            "slices": f"{fold[0]}-{fold[-1]}",
            "threshold": {"v_rand": round(threshold["v_rand"], 5),
                          "v_info": round(threshold["v_info"], 5)},
            "segmentation": {"v_rand": round(held["v_rand"], 5),
                             "v_info": round(held["v_info"], 5)},
            "edges": {"v_rand": round(edge["v_rand"], 5), "v_info": round(edge["v_info"], 5)},
            "params": held["params"],
        })
    threshold = isbi_scores(membrane, labels)
    pooled = tuned["cv"]["pooled_held_out"]
    margins = [row["segmentation"]["v_rand"] - row["threshold"]["v_rand"] for row in per_fold]
    result = {
        "folds": per_fold,
        "pooled": {"threshold": {"v_rand": round(threshold["v_rand"], 5),
                                 "v_info": round(threshold["v_info"], 5)},
                   "segmentation": rounded(pooled),
                   "edges": rounded(edges["pooled_held_out"])},
        "goals": {"pooled_v_rand_0.988": pooled["v_rand"] >= 0.988,
                  "pooled_v_info_0.992": pooled["v_info"] >= 0.992,
                  "every_fold_seg_ge_threshold_plus_0.003": min(margins) >= 0.003,
                  "worst_fold_margin": round(min(margins), 5)},
        "chosen_params": tuned["params"], "chosen": tuned["cv"]["chosen"],
        "runs": args.runs, "checkpoint": args.checkpoint, "tta": args.tta,
        "budget_per_fold": args.budget, "tune_seconds": round(tune_seconds, 1),
        "edge_params": edges["params"], "edge_trees": args.edge_trees,
        "edge_cv_seconds": round(edge_seconds, 1),
        "crop": args.crop, "params_file": params_file,
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"), **cpu_flags(),
    }
    print(json.dumps(result))


def main():
    args = parse_args()
    if args.cv:
        return run_cv(args)
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
