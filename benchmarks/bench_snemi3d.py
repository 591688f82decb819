"""SNEMI3D neurons in 3D: four pipelines scored on sections 60-74 (issue 22's goal).

Prints one JSON line. Every pipeline is scored over the whole (Z, Y, X) test
volume, SNEMI3D sections 60-74 (no model was trained on them), with
``fusionnet_tf.metrics.volume_scores`` (ground-truth id 0 not counted):

- ``a_isbi_linked``: the shipped ISBI 2012 model, ``segment --mode 3d``
  (2D segments linked across sections, anisotropy 5);
- ``b_snemi2d_linked``: a 2D FusionNet trained on SNEMI3D boundaries, the same
  linking (only with ``--model2d``; else "not run: no model");
- ``c_affinities_agglomeration``: the 3D affinity FusionNet (``--model3d``,
  default the shipped ``snemi3d`` if present) + agglomeration;
- ``d_affinities_mws``: the same affinities + mutex watershed;

with voxels/s for prediction and for segmentation, and (``--flops``, on by
default) the 3D network's fraction of this CPU's measured conv peak (goal
>= 0.6): ``--peak-rounds`` network calls on one tile of the test volume, each
between two calls of the peak probe (``probes.make_peak_probe``, Conv3D 64
channels, in the network's compute type) in this process
(``probes.sandwiched``); ``peak_fraction`` is the median over the calls on
wall time, ``peak_fraction_cpu`` on CPU time (steady under other processes'
load). The 3D network runs on ``--engine3d`` (default auto: frozen in
float32, ``autotune.untimed_variant``).

Each pipeline is also scored against the ground truth's connected pieces inside
60-74 (``vs_components``, ``metrics.ground_truth_components``): AC4's ids are
those of the whole 100-section volume, so a neuron whose branches join only
outside 60-74 is one id in pieces no segmentation of 60-74 can join.
``ground_truth_floor`` is what a perfect segmentation of 60-74 (those pieces)
scores against the raw ids.

Parameters of (c) and (d), the honest protocol: ``--tune-on 40-59`` predicts
TRAINING sections 40-59 (same crop) with the 3D model, tunes
agglomeration and mutex watershed there (``tune_affinities``) and applies the
result to 60-74; nothing is ever tuned on 60-74. Else ``--params FILE`` (a
``tune-segment`` file), else the parameters shipped with the model, else the
``AffinityParams`` defaults. The record says which.

Example (a half-trained checkpoint, on a 512 x 512 crop):
    python benchmarks/bench_snemi3d.py --model3d /tmp/aff.keras --crop 512 --tune-on 40-59
"""

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/probes.py

DATA = Path("/work/shared/data/snemi3d-ac4")
TEST_SECTIONS = "60-74"
ANISOTROPY = 5.0  # 30 nm sections / 6 nm pixels


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", default=str(DATA / "ac4-z00-74-raw.tif"))
    parser.add_argument("--labels", default=str(DATA / "ac4-z00-74-labels.tif"))
    parser.add_argument("--crop", type=int, default=None,
                        help="Use y/x 0..CROP-1 only, for speed (default: the whole 1024).")
    parser.add_argument("--tta", type=int, default=1, help="Test-time augmentation (default: 1).")
    parser.add_argument("--model2d", default=None,
                        help="2D FusionNet trained on SNEMI3D boundaries, for (b).")
    parser.add_argument("--params2d", default=None,
                        help="SegmentParams file for (b) (default: the shipped ISBI ones, "
                             "anisotropy 5).")
    parser.add_argument("--model3d", default=None,
                        help="3D affinity model (.keras, offsets in MODEL.offsets.json) "
                             "(default: the shipped snemi3d model if present).")
    parser.add_argument("--params", default=None,
                        help="AffinityParams file (tune-segment on training sections) for (c), "
                             "(d) (default: the model's shipped ones, else the defaults).")
    parser.add_argument("--tune-on", default=None, metavar="SECTIONS",
                        help="Tune (c) and (d) on these TRAINING sections, e.g. 40-59 (never "
                             "60-74), and use the result on 60-74.")
    parser.add_argument("--tune-gt", choices=("components", "ids"), default="components",
                        help="Tune against the connected pieces of the ground-truth ids "
                             "inside the tuning sections, or the raw ids (default: %(default)s).")
    parser.add_argument("--tune-budget", type=int, default=20,
                        help="Settings tried per method with --tune-on (default: 20).")
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--tile-z", type=int, default=16)
    parser.add_argument("--engine", default="plain", help="Engine of the 2D models.")
    parser.add_argument("--engine3d", default="auto",
                        help="Engine of the 3D model (default: auto, frozen in float32).")
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--no-flops", dest="flops", action="store_false",
                        help="Skip the conv-peak measurement (default: measure it).")
    parser.add_argument("--peak-rounds", type=int, default=5,
                        help="Network calls timed between peak probes (default: 5).")
    parser.add_argument("--skip", default="",
                        help="Comma-separated pipelines to skip, e.g. a (for speed).")
    return parser.parse_args(argv)


def read_sections(args, sections):
    """(raw float32 normalized per slice, labels int64) of ``sections`` in the crop."""
    import tifffile

    from fusionnet_tf.cli.slices import select_slices
    from fusionnet_tf.data import normalize

    crop = (slice(None), slice(args.crop), slice(args.crop))
    raw = select_slices(tifffile.imread(args.raw), sections)[crop]
    labels = select_slices(tifffile.imread(args.labels), sections)[crop].astype("int64")
    return normalize(raw, mode="slice"), labels


def rounded(scores):
    return {key: round(value, 4) for key, value in scores.items()}


def scored(labels, segments, seconds):
    """Scores against the raw ids and, under ``vs_components``, against their connected pieces."""
    from fusionnet_tf.metrics import ground_truth_components, volume_scores

    scores = rounded(volume_scores(labels, segments))
    pieces = rounded(volume_scores(ground_truth_components(labels), segments))
    return dict(scores, vs_components=pieces,
                segment_voxels_per_second=round(labels.size / seconds))


def ground_truth_floor(labels):
    """Scores of a perfect segmentation of the cut-out (its connected pieces) against the raw ids."""
    from fusionnet_tf.metrics import ground_truth_components, volume_scores

    return rounded(volume_scores(labels, ground_truth_components(labels)))


def timed(function, *args, **kwargs):
    began = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - began


def linked_pipeline(model, params, args, raw, labels):
    """2D membranes + ``segment(mode="3d")`` linking: scores and rates."""
    from fusionnet_tf.inference import Predictor
    from fusionnet_tf.segmentation import segment

    predictor = Predictor(model, tile_shape=512, overlap=64, tta=args.tta, engine=args.engine,
                          precision=args.precision, progress=False)
    membrane, predict_s = timed(predictor.predict, raw)
    (segments, count), segment_s = timed(segment, membrane, params, mode="3d")
    return dict(scored(labels, segments, segment_s), segments=int(count),
                predict_voxels_per_second=round(raw.size / predict_s),
                params=params.to_dict())


def affinity_predictor(model, path, args):
    from fusionnet_tf.inference import Predictor
    from fusionnet_tf.inference.predictor import read_model_offsets

    overlap_z = args.tile_z // 4
    return Predictor(model, tile_shape=(args.tile_z, args.tile_size, args.tile_size),
                     overlap=(overlap_z, 32, 32), tta=args.tta, engine=args.engine3d,
                     precision=args.precision, offsets=read_model_offsets(path), progress=False)


def affinity_params(args, model3d, predictor):
    """``{method: (AffinityParams, how they were chosen)}`` for (c) and (d)."""
    from fusionnet_tf.cli.affinity_segment import shipped_params
    from fusionnet_tf.segmentation import load_params
    from fusionnet_tf.segmentation.affinity_params import AffinityParams
    from fusionnet_tf.segmentation.affinity_tune import tune_affinities

    chosen = {}
    if args.tune_on:
        from fusionnet_tf.metrics import ground_truth_components

        raw, labels = read_sections(args, args.tune_on)
        labels = ground_truth_components(labels) if args.tune_gt == "components" else labels
        affs = predictor.predict(raw)
    for method in ("agglomeration", "mws"):
        if args.tune_on:
            best, rows = tune_affinities(affs, predictor.offsets, labels,
                                         budget=args.tune_budget,
                                         start=AffinityParams(method=method))
            top = min(row["adapted_rand_error"] for row in rows)
            chosen[method] = (best, f"tuned on training sections {args.tune_on} "
                                    f"against their {args.tune_gt} "
                                    f"({len(rows)} settings, adapted Rand {top:.4f} there)")
        elif args.params:
            chosen[method] = (load_params(args.params, AffinityParams).replace(method=method),
                              f"--params {args.params}")
        else:
            shipped = shipped_params(model3d)
            chosen[method] = ((shipped or AffinityParams()).replace(method=method),
                              "shipped with the model" if shipped else "AffinityParams defaults")
    return chosen


def affinity_pipelines(model3d, args, raw, labels, result):
    """(c) and (d) on one prediction; the prediction's rate and conv throughput."""
    from fusionnet_tf.inference.optimize import conv_flops
    from fusionnet_tf.segmentation.affinities import segment_affinities

    model = load(model3d)
    predictor = affinity_predictor(model, model3d, args)
    predictor.predict(raw[:, :args.tile_size, :args.tile_size])  # trace the tile function
    affs, predict_s = timed(predictor.predict, raw)
    tile = predictor.tile_for(raw.shape)
    calls = len(predictor.tile_origins(*raw.shape)) * args.tta  # TTA variants per tile
    flops = conv_flops(model, tile[1], tile[2], depth=tile[0]) * calls
    result["prediction_3d"] = {
        "model": str(model3d), "tile": list(tile), "network_calls": calls,
        "engine": predictor.variant["engine"], "precision": predictor.variant["precision"],
        "voxels_per_second": round(raw.size / predict_s),
        "conv_gflop": round(flops / 1e9, 1), "gflops": round(flops / predict_s / 1e9, 2)}
    if args.flops:
        result["peak"] = network_peak_fraction(model, predictor, raw, args.peak_rounds)
    chosen = affinity_params(args, model3d, predictor)
    for key, method in (("c_affinities_agglomeration", "agglomeration"),
                        ("d_affinities_mws", "mws")):
        params, how = chosen[method]
        (segments, count), segment_s = timed(segment_affinities, affs, predictor.offsets, params)
        result[key] = dict(scored(labels, segments, segment_s), segments=int(count),
                           predict_voxels_per_second=round(raw.size / predict_s),
                           params=params.to_dict(), params_from=how)


def load(path):
    from fusionnet_tf.inference import load_model

    return load_model(path)


def network_peak_fraction(model, predictor, raw, rounds):
    """The 3D network's fraction of this CPU's conv peak, measured side by side.

    ``rounds`` calls of the predictor's network on the first tile of ``raw``
    (Z, Y, X), each between two calls of ``probes.make_peak_probe`` in the
    network's compute type (``probes.sandwiched``).
    """
    from probes import make_peak_probe, sandwiched

    from fusionnet_tf.inference import tiling
    from fusionnet_tf.inference.optimize import conv_flops

    tile = predictor.tile_for(raw.shape)
    batch = tiling.pad_to_tile(raw, tile)[:tile[0], :tile[1], :tile[2]][None, ..., None]
    flops = conv_flops(model, tile[1], tile[2], depth=tile[0])
    dtype = "bfloat16" if predictor.variant["precision"] == "mixed_bfloat16" else "float32"
    measured = sandwiched(lambda: predictor.network(batch), flops, make_peak_probe(dtype), rounds)
    return {"probe": f"conv3d 3x3x3 64ch 16x64x64 {dtype}", "tile": list(tile),
            "peak_fraction": measured["fraction"], "peak_fraction_cpu": measured["fraction_cpu"],
            "fractions": measured["fractions"], "network_gflops": measured["gflops"],
            "conv_peak_gflops": measured["probe_gflops"],
            "network_cpu_gflops": measured["cpu_gflops"],
            "conv_peak_cpu_gflops": measured["probe_cpu_gflops"]}


def main(argv=None):
    args = parse_args(argv)
    from fusionnet_tf.pretrained import REGISTRY, load_pretrained
    from fusionnet_tf.segmentation import default_params, load_params

    began = time.perf_counter()
    raw, labels = read_sections(args, TEST_SECTIONS)
    result = {"sections": TEST_SECTIONS, "shape": list(labels.shape), "tta": args.tta,
              "engine": args.engine, "precision": args.precision,
              "ground_truth_floor": ground_truth_floor(labels)}
    skip = set(filter(None, args.skip.split(",")))
    linking = default_params().replace(anisotropy=ANISOTROPY)
    if "a" not in skip:
        result["a_isbi_linked"] = linked_pipeline(load_pretrained(), linking, args, raw, labels)
    if args.model2d and "b" not in skip:
        params2d = (load_params(args.params2d).replace(anisotropy=ANISOTROPY)
                    if args.params2d else linking)
        result["b_snemi2d_linked"] = dict(
            linked_pipeline(load(args.model2d), params2d, args, raw, labels),
            model=args.model2d)
    elif "b" not in skip:
        result["b_snemi2d_linked"] = "not run: no model"
    shipped = REGISTRY["snemi3d"].weights_path
    model3d = args.model3d or (str(shipped) if shipped.is_file() else None)
    if model3d is None:
        for key in ("c_affinities_agglomeration", "d_affinities_mws"):
            result[key] = "not run: no model"
    else:
        affinity_pipelines(model3d, args, raw, labels, result)
        if args.flops:
            result["peak_fraction"] = result["peak"]["peak_fraction"]
            result["peak_fraction_cpu"] = result["peak"]["peak_fraction_cpu"]
    best = [value["adapted_rand_error"] for key, value in result.items()
            if isinstance(value, dict) and "adapted_rand_error" in value
            and key != "ground_truth_floor"]  # the floor is a perfect segmentation, not a pipeline
    result["best_adapted_rand_error"] = min(best) if best else None
    pieces = [value["vs_components"]["adapted_rand_error"] for value in result.values()
              if isinstance(value, dict) and "vs_components" in value]
    result["best_adapted_rand_error_vs_components"] = min(pieces) if pieces else None
    result["seconds"] = round(time.perf_counter() - began, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
