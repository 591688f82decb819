"""Per-tile latency of one model in every export runtime, side by side.

Runs the same (1, T, T, 1) float32 tiles (default T = 512) through Keras,
the reloaded SavedModel, LiteRT float32 / float16 / full-integer int8 and
ONNX Runtime (CPU), and reports the median latency of each in milliseconds,
plus each runtime's deviation from Keras on the same tiles.

The last line printed is one JSON object with the keys ``ms_keras``,
``ms_saved_model``, ``ms_litert_fp32``, ``ms_litert_fp16``, ``ms_litert_int8``
and ``ms_onnxruntime`` (and context: model size, tile, threads, parity).

Usage:
    python benchmarks/bench_export.py                        # FusionNet base 16, depth 4
    python benchmarks/bench_export.py --model run/best.keras --calibration-data \
        ../shared/data/isbi2012/train-volume.tif
"""

import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import time

import numpy as np


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None,
                        help="A .keras model (default: a randomly initialised FusionNet built "
                             "with --base-filters/--depth).")
    parser.add_argument("--base-filters", type=int, default=16,
                        help="Base filters of the built model (default: 16).")
    parser.add_argument("--depth", type=int, default=4,
                        help="Depth of the built model (default: 4).")
    parser.add_argument("--tile", type=int, default=512, help="Tile side (default: 512).")
    parser.add_argument("--repeats", type=int, default=5,
                        help="Timed runs per runtime after one warm-up (default: 5).")
    parser.add_argument("--calibration-data", default=None,
                        help="EM images for int8 calibration (default: synthetic membranes).")
    parser.add_argument("--calibration-tiles", type=int, default=8,
                        help="int8 calibration tiles (default: 8).")
    return parser.parse_args(argv)


def load_or_build(args):
    import keras

    from fusionnet_tf import build_fusionnet

    if args.model:
        return keras.saving.load_model(args.model, compile=False), args.model
    keras.utils.set_random_seed(0)
    model = build_fusionnet(base_filters=args.base_filters, depth=args.depth)
    return model, (f"build_fusionnet(base_filters={args.base_filters}, depth={args.depth}), "
                   "random init")


def input_tiles(args):
    """(count, T, T) normalized tiles: EM crops if given, else synthetic membranes."""
    from fusionnet_tf.export.calibration import representative_tiles, synthetic_membranes

    if args.calibration_data:
        from fusionnet_tf.data import normalize, read_stack

        images = normalize(read_stack(args.calibration_data), mode="slice")
    else:
        images = synthetic_membranes(4, args.tile, cells=60, seed=0)[0]
    return representative_tiles(images, args.tile, args.calibration_tiles + 1, seed=1)


def time_ms(fn, tile, repeats):
    """Median wall time of ``fn(tile)`` in ms after one warm-up call; and the output."""
    output = np.asarray(fn(tile))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn(tile)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), output


def log(message):
    print(f"[bench_export] {message}", file=sys.stderr, flush=True)


def main(argv=None):
    args = parse_args(argv)
    import tensorflow as tf

    from fusionnet_tf.export.litert import convert_tflite
    from fusionnet_tf.export.onnx import export_onnx
    from fusionnet_tf.inference.backends.litert_runner import LiteRTRunner
    from fusionnet_tf.inference.backends.onnx_runner import OnnxRunner
    from fusionnet_tf.export.saved_model import export_plain_saved_model

    model, source = load_or_build(args)
    tiles = input_tiles(args)
    tile = tiles[:1, ..., None]
    calibration = tiles[1:]
    threads = os.cpu_count()
    results, outputs = {}, {}
    keras_fn = tf.function(lambda x: model(x, training=False))
    log("keras")
    results["ms_keras"], reference = time_ms(lambda x: keras_fn(x).numpy(), tile, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        saved = export_plain_saved_model(model, os.path.join(tmp, "saved_model"))
        serving = tf.saved_model.load(str(saved)).signatures["serving_default"]
        log("saved_model")
        results["ms_saved_model"], outputs["saved_model"] = time_ms(
            lambda x: serving(image=tf.constant(x))["membrane_probability"].numpy(), tile,
            args.repeats)
        litert = (("litert_fp32", "none"), ("litert_fp16", "fp16"), ("litert_int8", "int8"))
        for key, quant in litert:
            log(f"{key}: converting")
            runner = LiteRTRunner(convert_tflite(saved, quant, calibration), num_threads=threads)
            log(key)
            results[f"ms_{key}"], outputs[key] = time_ms(runner, tile, args.repeats)
        log("onnxruntime: exporting")
        runner = OnnxRunner(export_onnx(model, tmp, "bench"))
        log("onnxruntime")
        results["ms_onnxruntime"], outputs["onnxruntime"] = time_ms(runner, tile, args.repeats)
    parity = {f"max_abs_diff_{k}": float(np.abs(v - reference).max()) for k, v in outputs.items()}
    membrane = reference > 0.5
    int8 = outputs["litert_int8"] > 0.5
    denominator = membrane.sum() + int8.sum()
    parity["dice_litert_int8"] = (float(2 * (membrane & int8).sum() / denominator)
                                  if denominator else 1.0)
    summary = {k: round(v, 1) for k, v in results.items()}
    summary.update(parity)
    summary.update({"tile": args.tile, "model": source, "parameters": int(model.count_params()),
                    "repeats": args.repeats, "cpu_count": threads,
                    "tensorflow": tf.__version__,
                    "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(
                        timespec="seconds")})
    for key, value in results.items():
        print(f"{key:>18}: {value:10.1f} ms")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
