"""
Title: Whole-slice inference throughput of FusionNet on this machine
Description: Times 512x512 whole-slice prediction (``fusionnet_tf.inference.Predictor``,
one tile per slice) for FusionNet at base 16 and 64 in float32 and
``mixed_bfloat16`` (base 64 also compiled with XLA, ``jit_compile=True``), the
machine's sustained 3x3 convolution rate measured side by side
(``tf.nn.conv2d``, 64 -> 64 channels, 512x512), the cost of 8-way test-time
augmentation and, with ``--torch-python``, the same network in PyTorch
(``benchmarks/torch_reference.py``) timed between the same rounds.

Run: ``python benchmarks/bench_inference.py [--torch-python /path/to/venv/bin/python]``
(about 2-5 minutes on 2 cores). The last line printed is one JSON object:
``slices_per_s_base16``, ``slices_per_s_base64``, ``gflops_base64``,
``conv_peak_gflops``, ``peak_fraction``, ``tta8_cost``, the bfloat16 and XLA
figures, the PyTorch figures when measured (plus context).

Timings are the best of ``--repeats`` runs. The convolution probe runs as many
back-to-back 64 -> 64 convolutions as one base-64 pass has FLOPs (43), and
alternates with the base-64 runs, so that load from other processes affects
both alike.
Weights are random (speed does not depend on them); the image is an ISBI 2012
test slice shipped with the package.
"""

import argparse
import json
import os
import platform
import subprocess
import time
from datetime import datetime, timezone

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fusionnet_tf.data import normalize, read_stack  # noqa: E402
from fusionnet_tf.inference import Predictor  # noqa: E402
from fusionnet_tf.inference.optimize import conv_flops  # noqa: E402
from fusionnet_tf.models import build_fusionnet  # noqa: E402
from probes import make_conv_probe  # noqa: E402  (benchmarks/probes.py)

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


def test_slice():
    """One 512x512 EM slice normalized to [0, 1] (random if the example is missing)."""
    if os.path.exists(EXAMPLE):
        return normalize(read_stack(EXAMPLE)[:1], mode="slice")[0]
    return np.random.default_rng(0).random((SIDE, SIDE), dtype=np.float32)


def slice_predictor(base_filters, tta=1, batch_size=1):
    model = build_fusionnet(base_filters=base_filters, depth=4)
    return model, Predictor(model, tile_shape=SIDE, overlap=64, tta=tta, batch_size=batch_size)


def torch_seconds(python, variant, base_filters=64):
    """Seconds per slice of ``torch_reference.py --variant`` run by ``python`` (one timed call).

    Returns:
        ``(seconds, "torch VERSION, N threads")``.
    """
    script = os.path.join(os.path.dirname(__file__), "torch_reference.py")
    done = subprocess.run([python, script, "--variant", variant, "--base-filters", str(base_filters)],
                          check=True, capture_output=True, text=True)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    return report["seconds_per_slice"], f"{report['torch']}, {report['threads']} threads"


# === Benchmark ===

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3, help="Timed runs per setting (default: 3).")
    parser.add_argument("--tta-batch-size", type=int, default=4,
                        help="batch_size of the TTA x8 run (default: 4, as fusionnet predict).")
    parser.add_argument("--torch-python", default=None, metavar="PY",
                        help="Python of an environment with torch: also time "
                             "benchmarks/torch_reference.py (eager, BN-fused and bf16 autocast) "
                             "between the base-64 rounds (default: not run).")
    args = parser.parse_args()

    image = test_slice()

    model16, predictor16 = slice_predictor(16)
    bf16_16 = Predictor(model16, tile_shape=SIDE, overlap=64, batch_size=1, precision="mixed_bfloat16")
    predictor16.predict(image)  # trace
    bf16_16.predict(image)
    seconds16 = best_time(lambda: predictor16.predict(image), args.repeats)
    seconds16_bf16 = best_time(lambda: bf16_16.predict(image), args.repeats)
    print(f"base 16: {seconds16:.3f} s/slice, mixed_bfloat16 {seconds16_bf16:.3f}", flush=True)

    model64, predictor64 = slice_predictor(64)
    flops64 = conv_flops(model64, SIDE, SIDE)
    conv, probe_flops = make_conv_probe(calls=round(flops64 / (2 * 9 * 64 * 64 * SIDE * SIDE)))
    xla64 = Predictor(model64, tile_shape=SIDE, overlap=64, batch_size=1, jit_compile=True)
    bf16_64 = Predictor(model64, tile_shape=SIDE, overlap=64, batch_size=1, precision="mixed_bfloat16")
    for warm in (predictor64, xla64, bf16_64):  # trace / compile
        warm.predict(image)
    runs64, conv_runs, xla_runs, bf16_runs = [], [], [], []
    torch_runs = {"eager": [], "fused": [], "bf16": []}
    torch_version = None
    for _ in range(args.repeats):  # interleaved, equally long: all see the same machine load
        conv_runs.append(best_time(conv, 1))
        runs64.append(best_time(lambda: predictor64.predict(image), 1))
        xla_runs.append(best_time(lambda: xla64.predict(image), 1))
        bf16_runs.append(best_time(lambda: bf16_64.predict(image), 1))
        if args.torch_python:
            for variant, runs in torch_runs.items():
                seconds, torch_version = torch_seconds(args.torch_python, variant)
                runs.append(seconds)
    seconds64 = min(runs64)
    seconds_xla = min(xla_runs)
    seconds_bf16 = min(bf16_runs)
    peak = probe_flops / min(conv_runs) / 1e9
    achieved = flops64 / seconds64 / 1e9
    print(f"base 64: {seconds64:.3f} s/slice, {flops64 / 1e9:.1f} GFLOP -> {achieved:.1f} GFLOP/s; "
          f"conv probe {peak:.1f} GFLOP/s; XLA {seconds_xla:.3f} s/slice; "
          f"mixed_bfloat16 {seconds_bf16:.3f} s/slice", flush=True)
    if args.torch_python:
        print("PyTorch " + ", ".join(f"{variant} {min(runs):.3f}" for variant, runs in torch_runs.items())
              + " s/slice", flush=True)

    # same compiled network as the one-pass runs (no second trace), 8 variants per tile;
    # compared with the one-pass runs just before and just after it
    tta = Predictor(predictor64.network, tile_shape=SIDE, overlap=64, tta=8,
                    batch_size=args.tta_batch_size, align=16)
    seconds_tta = best_time(lambda: tta.predict(image), 1)
    neighbours = (runs64[-1] + best_time(lambda: predictor64.predict(image), 1)) / 2
    tta_cost = seconds_tta / neighbours
    print(f"base 64 TTA x8: {seconds_tta:.3f} s/slice = {tta_cost:.2f} x one pass", flush=True)

    result = {
        "slices_per_s_base16": round(1 / seconds16, 4),
        "slices_per_s_base64": round(1 / seconds64, 4),
        "gflops_base64": round(achieved, 2),
        "conv_peak_gflops": round(peak, 2),
        "peak_fraction": round(achieved / peak, 4),
        "tta8_cost": round(tta_cost, 3),
        "seconds_per_slice_base64": round(seconds64, 3),
        "slices_per_s_base64_xla": round(1 / seconds_xla, 4),
        "seconds_per_slice_base64_xla": round(seconds_xla, 3),
        "gflop_per_slice_base64": round(flops64 / 1e9, 2),
        "seconds_per_slice_base16_bf16": round(seconds16_bf16, 3),
        "slices_per_s_base64_bf16": round(1 / seconds_bf16, 4),
        "seconds_per_slice_base64_bf16": round(seconds_bf16, 3),
        "cpus": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "tensorflow": tf.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%MZ"),
    }
    if args.torch_python:
        for variant, runs in torch_runs.items():
            result[f"torch_{variant}_seconds_per_slice_base64"] = round(min(runs), 3)
        eager = min(torch_runs["eager"])
        result.update(
            speedup_vs_torch_eager=round(eager / seconds64, 3),
            speedup_vs_torch_fused=round(min(torch_runs["fused"]) / seconds64, 3),
            xla_speedup_vs_torch_fused=round(min(torch_runs["fused"]) / seconds_xla, 3),
            bf16_speedup_vs_torch_bf16=round(min(torch_runs["bf16"]) / seconds_bf16, 3),
            torch=torch_version)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
