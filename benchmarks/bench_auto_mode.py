"""
Title: What the Predictor's defaults cost: tiles per network call, and the auto engine
Description: Two measurements, each side by side in one run (the rounds alternate,
so load from other processes affects all variants alike):

1. Per-tile cost of FusionNet (random weights, ``--base``, default 16) with 1
   or 4 tiles per network call, at 64, 128 and 512 px tiles (plus the call
   size the default ``batch_size=None`` picks). It decides ``CALL_PIXELS`` in
   ``fusionnet_tf/inference/predictor.py``.
2. The auto engine on one 512x512 slice without TTA, at base 16 and 64: the
   variant it chooses when it times (``Predictor.resolve_engine()``, an empty
   cache), the time per call of each variant, how long the timing took, and
   the wall time of ``predict`` of the slice with an empty cache (one call:
   too short to time, it runs plain), with the cached choice and with
   ``engine="plain"``.

Run: ``python benchmarks/bench_auto_mode.py [--rounds 3] [--bases 16,64]``
(about 3 minutes on 2 cores). The last line printed is one JSON object.
"""

import argparse
import json
import os
import platform
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from fusionnet_tf.inference import Predictor, autotune  # noqa: E402
from fusionnet_tf.inference.predictor import KerasFunction  # noqa: E402
from fusionnet_tf.models import build_fusionnet  # noqa: E402

SIDE = 512


# === 1. Tiles per call ===

def per_tile_ms(network, tiles, per_call):
    """Milliseconds per tile running ``tiles`` (n, T, T, 1) ``per_call`` at a time."""
    start = time.perf_counter()
    for first in range(0, len(tiles), per_call):
        network(tiles[first:first + per_call])
    return 1000 * (time.perf_counter() - start) / len(tiles)


def call_sizes(base, tile_sides, rounds):
    """``{"<T>px": {"1": ms, "4": ms, "default(k)": ms}}``: best of ``rounds`` per tile."""
    model = build_fusionnet(base_filters=base)
    rng = np.random.default_rng(0)
    plans = {}
    for side in tile_sides:
        default = Predictor(lambda b: b, tile_shape=side, overlap=side // 4, tta=1).inputs_per_call()
        sizes = sorted({1, 4, default})
        count = max(8, (SIDE // side) ** 2) if side < SIDE else 4
        count = -(-count // max(sizes)) * max(sizes)  # whole calls for every size
        network = KerasFunction(model, side)
        tiles = rng.random((count, side, side, 1), dtype=np.float32)
        for size in sizes:
            network(tiles[:size])  # trace and pick kernels for this batch size
        plans[side] = (network, tiles, sizes, default)
    times = {}
    for _ in range(rounds):
        for side, (network, tiles, sizes, default) in plans.items():
            for size in sizes:
                key = f"{side}px_{size}_per_call" + ("_default" if size == default else "")
                times.setdefault(key, []).append(per_tile_ms(network, tiles, size))
    return {key: {"ms_per_tile_best": round(min(v), 2), "rounds": [round(x, 2) for x in v]}
            for key, v in times.items()}


# === 2. The auto engine ===

def wall(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def auto_engine(base, image):
    """The auto engine's choice for one 512 px slice at ``base``, with an empty cache."""
    model = build_fusionnet(base_filters=base)
    with tempfile.TemporaryDirectory() as cache:
        os.environ[autotune.CACHE_ENV] = cache
        timed = Predictor(model, tile_shape=SIDE, tta=1)
        seconds = wall(lambda: timed.resolve_engine())  # calls=None: always times
        timings = timed.network.timings
        result = {"choice": timed.network.variant.label, "timing_s": round(seconds, 2),
                  "s_per_call": {k: round(v["batch_s"], 3) for k, v in timings.items()},
                  "setup_s": {k: round(v["setup_s"], 2) for k, v in timings.items()}}
        cached = Predictor(model, tile_shape=SIDE, tta=1)
        result["predict_cached_s"] = round(wall(lambda: cached.predict(image)), 2)
        result["cached_run_chose"] = cached.network.variant.label
    with tempfile.TemporaryDirectory() as cache:
        os.environ[autotune.CACHE_ENV] = cache
        fresh = Predictor(model, tile_shape=SIDE, tta=1)
        result["predict_first_run_s"] = round(wall(lambda: fresh.predict(image)), 2)
        result["first_run_chose"] = fresh.network.variant.label
    plain = Predictor(model, tile_shape=SIDE, tta=1, engine="plain")
    result["predict_plain_s"] = round(wall(lambda: plain.predict(image)), 2)
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="Rounds of part 1 (default: 3).")
    parser.add_argument("--base", type=int, default=16,
                        help="Base filters of part 1 (default: 16).")
    parser.add_argument("--bases", default="16,64",
                        help="Bases of part 2, '' to skip it (default: 16,64).")
    parser.add_argument("--skip-calls", action="store_true", help="Skip part 1.")
    args = parser.parse_args()
    name, flags = autotune.cpu_info()
    report = {"cpu": name, "cores": os.cpu_count(), "python": platform.python_version(),
              "amx_bf16": "amx_bf16" in flags, "avx512_bf16": "avx512_bf16" in flags,
              "bf16_candidate": autotune.has_bf16_matrix_units()}
    if not args.skip_calls:
        report["tiles_per_call"] = call_sizes(args.base, (64, 128, SIDE), args.rounds)
        print(json.dumps(report["tiles_per_call"]), flush=True)
    image = np.random.default_rng(1).random((SIDE, SIDE)).astype(np.float32)
    for base in (int(b) for b in args.bases.split(",") if b):
        report[f"auto_base{base}"] = auto_engine(base, image)
        print(json.dumps(report[f"auto_base{base}"]), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
