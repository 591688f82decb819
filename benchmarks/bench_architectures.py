"""Parameters, GFLOP per slice and training-step time of several architectures, side by side.

For each model spec (``architecture:base_filters[:fc_filters]``) it reports
the parameter count, the analytic forward GFLOP of one tile
(``fusionnet_tf.inference.optimize.conv_flops``: 2 x multiply-adds of every
convolution) and the median seconds of a ``train_on_batch`` step (Adam,
BCE + Dice, BatchNormalization on the fused kernel as ``fusionnet train``
runs it). Steps are interleaved (one step of each model per round), so load
from other processes on a shared machine affects all models alike; compare
the ratios (``step_ratio_to_first``) rather than the absolute seconds.

The last line printed is one JSON object: ``{"models": [{...}, ...], ...settings}``.

Example:
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/bench_architectures.py \
        --models fusionnet:16 unet:16 fcn8s:24:256 --tile 512 --steps 5
"""

import argparse
import json
import os
import statistics
import time


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["fusionnet:16", "unet:16", "fcn8s:24:256"],
                        help="architecture:base_filters[:fc_filters] (default: fusionnet:16 "
                             "unet:16 fcn8s:24:256).")
    parser.add_argument("--depth", type=int, default=4,
                        help="Depth of FusionNet/U-Net (default: 4).")
    parser.add_argument("--tile", type=int, default=512, help="Tile side (default: 512).")
    parser.add_argument("--batch", type=int, default=1, help="Batch size (default: 1).")
    parser.add_argument("--steps", type=int, default=5, help="Timed steps per model (default: 5).")
    parser.add_argument("--warmup", type=int, default=2,
                        help="Untimed steps per model (default: 2).")
    return parser.parse_args()


def parse_spec(spec):
    """``"fcn8s:24:256"`` -> ``("fcn8s", 24, 256)``; fc_filters None when absent."""
    parts = spec.split(":")
    if len(parts) not in (2, 3):
        raise SystemExit(f"--models: expected architecture:base[:fc]; received {spec!r}")
    return parts[0], int(parts[1]), int(parts[2]) if len(parts) == 3 else None


def build(spec, args):
    import keras

    from fusionnet_tf.models import build_model
    from fusionnet_tf.training.fused_batchnorm import use_fused_batchnorm
    from fusionnet_tf.training.losses import get_loss

    architecture, base, fc = parse_spec(spec)
    keras.utils.set_random_seed(0)
    model = build_model(architecture, base_filters=base, depth=args.depth, fc_filters=fc,
                        input_shape=(args.tile, args.tile, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss("bce_dice"))
    use_fused_batchnorm(model)
    return model


def main():
    args = parse_args()
    import numpy as np
    import keras
    import tensorflow as tf

    from fusionnet_tf.inference.optimize import conv_flops

    models = {spec: build(spec, args) for spec in args.models}
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.tile, args.tile, 1), dtype=np.float32)
    y = (rng.random((args.batch, args.tile, args.tile, 1)) < 0.22).astype(np.float32)
    durations = {spec: [] for spec in models}
    for step in range(args.warmup + args.steps):
        for spec, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            if step >= args.warmup:
                durations[spec].append(time.perf_counter() - start)

    rows = []
    for spec, model in models.items():
        rows.append({
            "model": spec, "name": model.name, "parameters": int(model.count_params()),
            "gflop_per_tile": round(conv_flops(model, args.tile, args.tile) / 1e9, 2),
            "step_s_median": round(statistics.median(durations[spec]), 3),
            "step_s_min": round(min(durations[spec]), 3),
        })
    for row in rows:
        row["step_ratio_to_first"] = round(row["step_s_median"] / rows[0]["step_s_median"], 3)
    print(json.dumps({
        "models": rows, "tile": args.tile, "batch": args.batch, "timed_steps": args.steps,
        "load_average_1min": round(os.getloadavg()[0], 2), "tensorflow": tf.__version__,
        "keras": keras.__version__, "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
    }))


if __name__ == "__main__":
    main()
