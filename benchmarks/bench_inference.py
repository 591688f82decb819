"""
Title: Whole-slice inference throughput of FusionNet on this machine
Description: Times 512x512 whole-slice prediction (``fusionnet_tf.inference.Predictor``,
one tile per slice) for FusionNet at base 16 and 64, the machine's sustained
3x3 convolution rate measured side by side (``tf.nn.conv2d``, 64 -> 64
channels, 512x512), and the cost of 8-way test-time augmentation.

Run: ``python benchmarks/bench_inference.py`` (about 3-5 minutes on 2 cores).
The last line printed is one JSON object:
``slices_per_s_base16``, ``slices_per_s_base64``, ``gflops_base64``,
``conv_peak_gflops``, ``peak_fraction``, ``tta8_cost`` (plus context).

Timings are the best of ``--repeats`` runs, interleaving the convolution probe
with the base-64 runs, so that load from other processes affects both alike.
Weights are random (speed does not depend on them); the image is an ISBI 2012
test slice shipped with the package.
"""

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fusionnet_tf.data import normalize, read_stack  # noqa: E402
from fusionnet_tf.inference import Predictor  # noqa: E402
from fusionnet_tf.inference.optimize import conv_flops  # noqa: E402
from fusionnet_tf.models import build_fusionnet  # noqa: E402

SIDE = 512
EXAMPLE = os.path.join(os.path.dirname(__file__), "..", "fusionnet_tf", "examples",
                       "isbi2012_test_slices_0-2.tif")


# === Probes ===

def best_time(function, repeats):
    """Best wall time of ``repeats`` calls of ``function()`` (seconds)."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def make_conv_probe(channels=64, side=SIDE):
    """A traced 3x3 'SAME' conv, (1, side, side, channels) -> channels; returns (run, flops)."""
    x = tf.random.uniform((1, side, side, channels))
    kernel = tf.random.uniform((3, 3, channels, channels))
    conv = tf.function(lambda t: tf.nn.conv2d(t, kernel, 1, "SAME"))
    conv(x).numpy()
    flops = 2 * 9 * channels * channels * side * side
    return (lambda: conv(x).numpy()), flops


def test_slice():
    """One 512x512 EM slice normalized to [0, 1] (random if the example is missing)."""
    if os.path.exists(EXAMPLE):
        return normalize(read_stack(EXAMPLE)[:1], mode="slice")[0]
    return np.random.default_rng(0).random((SIDE, SIDE), dtype=np.float32)


def slice_predictor(base_filters, tta=1, batch_size=1):
    model = build_fusionnet(base_filters=base_filters, depth=4)
    return model, Predictor(model, tile_shape=SIDE, overlap=64, tta=tta, batch_size=batch_size)


# === Benchmark ===

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per setting (default: 3).")
    parser.add_argument("--tta-batch-size", type=int, default=8,
                        help="batch_size of the TTA x8 run (default: 8, all variants at once).")
    args = parser.parse_args()

    image = test_slice()
    conv, probe_flops = make_conv_probe()

    _, predictor16 = slice_predictor(16)
    predictor16.predict(image)  # trace
    seconds16 = best_time(lambda: predictor16.predict(image), args.repeats)
    print(f"base 16: {seconds16:.3f} s/slice", flush=True)

    model64, predictor64 = slice_predictor(64)
    flops64 = conv_flops(model64, SIDE, SIDE)
    predictor64.predict(image)
    seconds64, conv_seconds = [], []
    for _ in range(args.repeats):  # interleaved: both see the same machine load
        conv_seconds.append(best_time(conv, 3))
        seconds64.append(best_time(lambda: predictor64.predict(image), 1))
    seconds64, conv_seconds = min(seconds64), min(conv_seconds)
    peak = probe_flops / conv_seconds / 1e9
    achieved = flops64 / seconds64 / 1e9
    print(f"base 64: {seconds64:.3f} s/slice, {flops64 / 1e9:.1f} GFLOP -> {achieved:.1f} GFLOP/s; "
          f"conv probe {peak:.1f} GFLOP/s", flush=True)

    tta = Predictor(model64, tile_shape=SIDE, overlap=64, tta=8, batch_size=args.tta_batch_size)
    tta.predict(image)
    seconds_tta = best_time(lambda: tta.predict(image), max(1, args.repeats - 1))
    one_pass = best_time(lambda: predictor64.predict(image), 1)
    tta_cost = seconds_tta / min(seconds64, one_pass)
    print(f"base 64 TTA x8: {seconds_tta:.3f} s/slice = {tta_cost:.2f} x one pass", flush=True)

    result = {
        "slices_per_s_base16": round(1 / seconds16, 4),
        "slices_per_s_base64": round(1 / min(seconds64, one_pass), 4),
        "gflops_base64": round(flops64 / min(seconds64, one_pass) / 1e9, 2),
        "conv_peak_gflops": round(peak, 2),
        "peak_fraction": round(flops64 / min(seconds64, one_pass) / 1e9 / peak, 4),
        "tta8_cost": round(tta_cost, 3),
        "seconds_per_slice_base64": round(min(seconds64, one_pass), 3),
        "gflop_per_slice_base64": round(flops64 / 1e9, 2),
        "cpus": os.cpu_count(),
        "tensorflow": tf.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
