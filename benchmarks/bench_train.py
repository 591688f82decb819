"""Training-step throughput of FusionNet on CPU (a benchmark, not a test).

Times ``train_on_batch`` (or ``fit`` with ``--fit``) after warm-up on random
512x512 tiles and prints, as its LAST line, one JSON object:

    {"train_tiles_per_s": ..., "train_gflops": ..., "conv_peak_gflops": ...,
     "peak_fraction": ..., "keras_bn_tiles_per_s": ..., "speedup_vs_keras_bn": ...,
     ...settings...}

``train_gflops`` counts a training step as 3x the forward FLOPs (forward +
2x for the backward pass), with the forward FLOPs summed analytically over
the convolutions (2 * multiply-adds; BN, ReLU, pooling and adds ignored).
``conv_peak_gflops`` is the machine's forward 3x3 convolution rate
(``tf.nn.conv2d``, 64 -> 64 channels, 512 x 512), measured in bursts between
the training steps, so that ``peak_fraction`` compares like with like on a
shared machine.

Variants (``--variant``, and ``--compare`` for the ones timed side by side
with steps interleaved):

- ``fused_bn``: ``build_fusionnet`` with every BatchNormalization computing
  with TensorFlow's fused kernel
  (``fusionnet_tf.training.fused_batchnorm.use_fused_batchnorm``): what
  ``fusionnet train`` runs (config ``fused_batchnorm: true``);
- ``keras_bn``: Keras's own BatchNormalization computation;
- ``no_bn``: normalization "none" (an upper bound: what BN costs at all).

Example:
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/bench_train.py --base-filters 16 --tile 512
"""

import argparse
import json
import os
import statistics
import time


VARIANTS = ("fused_bn", "keras_bn", "no_bn")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--architecture", default="fusionnet", choices=("fusionnet", "unet"),
                        help="Model (default: fusionnet).")
    parser.add_argument("--base-filters", type=int, default=16, help="Default: 16.")
    parser.add_argument("--depth", type=int, default=4, help="Default: 4.")
    parser.add_argument("--tile", type=int, default=512, help="Tile side (default: 512).")
    parser.add_argument("--batch", type=int, default=1, help="Batch size (default: 1).")
    parser.add_argument("--steps", type=int, default=10, help="Timed steps (default: 10).")
    parser.add_argument("--warmup", type=int, default=3, help="Untimed steps (default: 3).")
    parser.add_argument("--precision", default="float32",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"),
                        help="Default: float32.")
    parser.add_argument("--jit", action="store_true", help="jit_compile=True (default: off).")
    parser.add_argument("--variant", default="fused_bn", choices=VARIANTS,
                        help="Model-level variant, see the module docstring (default: fused_bn, "
                             "what fusionnet train runs).")
    parser.add_argument("--compare", default="keras_bn",
                        help="Comma-separated variants timed side by side, steps interleaved "
                             "(train_on_batch only), or 'none' (default: keras_bn).")
    parser.add_argument("--fit", action="store_true",
                        help="Time model.fit on a tf.data pipeline instead of train_on_batch.")
    parser.add_argument("--steps-per-execution", type=int, default=1,
                        help="Keras steps_per_execution (default: 1).")
    parser.add_argument("--intra", type=int, default=0,
                        help="intra-op threads, 0 = TensorFlow default (default: 0).")
    parser.add_argument("--inter", type=int, default=0,
                        help="inter-op threads, 0 = TensorFlow default (default: 0).")
    parser.add_argument("--loss", default="bce", help="Loss name (default: bce).")
    return parser.parse_args()


def forward_flops(model):
    """Forward FLOPs of one sample: 2 * multiply-adds of every (transposed) conv."""
    from keras import layers

    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2DTranspose):
            _, h, w, c_in = layer.input.shape
            kh, kw = layer.kernel_size
            total += 2 * h * w * kh * kw * c_in * layer.filters
        elif isinstance(layer, layers.Conv2D):
            _, h, w, _ = layer.output.shape
            kh, kw = layer.kernel_size
            c_in = layer.input.shape[-1]
            total += 2 * h * w * kh * kw * c_in * layer.filters
    return total


def build(args, variant):
    from fusionnet_tf.models import build_model

    kwargs = dict(base_filters=args.base_filters, depth=args.depth,
                  input_shape=(args.tile, args.tile, 1))
    if variant == "no_bn":
        kwargs["normalization"] = "none"
    model = build_model(args.architecture, **kwargs)
    if variant == "fused_bn":
        from fusionnet_tf.training.fused_batchnorm import use_fused_batchnorm

        use_fused_batchnorm(model)
    return model


def compiled_model(args, variant):
    import keras

    from fusionnet_tf.training.losses import get_loss

    keras.utils.set_random_seed(0)
    model = build(args, variant)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss(args.loss),
                  jit_compile=args.jit, steps_per_execution=args.steps_per_execution)
    return model


def time_fit(model, x, y, args):
    """Per-step seconds of ``model.fit`` on a repeated in-memory batch."""
    import keras
    import tensorflow as tf

    durations = []
    dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)

    class Timer(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            self.start = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            durations.append((time.perf_counter() - self.start) / args.steps_per_execution)

    total = args.warmup + args.steps
    model.fit(dataset, steps_per_epoch=total // args.steps_per_execution, epochs=1,
              callbacks=[Timer()], verbose=0)
    return durations[args.warmup // args.steps_per_execution:]


def time_interleaved(models, x, y, args, probe):
    """Per-step seconds of ``train_on_batch`` for each model, steps interleaved.

    One round runs one step of every model and one conv-probe burst, so
    machine load affects all of them alike.

    Returns:
        ``({name: [seconds, ...]}, [probe seconds, ...])``.
    """
    durations = {name: [] for name in models}
    probe_times = []
    for step in range(args.warmup + args.steps):
        for name, model in models.items():
            start = time.perf_counter()
            model.train_on_batch(x, y)
            if step >= args.warmup:
                durations[name].append(time.perf_counter() - start)
        if step >= args.warmup:
            start = time.perf_counter()
            probe()
            probe_times.append(time.perf_counter() - start)
    return durations, probe_times


def main():
    args = parse_args()
    import numpy as np
    import tensorflow as tf
    import keras

    from fusionnet_tf.training.strategy import configure_threads, set_precision
    from probes import make_conv_probe  # benchmarks/probes.py

    configure_threads(args.intra, args.inter)
    set_precision(args.precision)
    compare = [] if args.compare == "none" else [v for v in args.compare.split(",") if v]
    unknown = sorted(set(compare) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"--compare: unknown variant(s) {unknown}; choose from {VARIANTS}")
    names = [args.variant] + [v for v in compare if v != args.variant]
    models = {name: compiled_model(args, name) for name in names}
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.tile, args.tile, 1), dtype=np.float32)
    y = (rng.random((args.batch, args.tile, args.tile, 1)) < 0.22).astype(np.float32)

    probe, probe_flops = make_conv_probe(calls=8)
    if args.fit:
        durations = {args.variant: time_fit(models[args.variant], x, y, args)}
        probe_times = [min(timed(probe) for _ in range(3))]
    else:
        durations, probe_times = time_interleaved(models, x, y, args, probe)

    flops = forward_flops(models[args.variant])
    conv_peak = probe_flops / min(probe_times) / 1e9

    def summary(name):
        step_s = statistics.median(durations[name])
        return args.batch / step_s, step_s, statistics.fmean(durations[name])

    tiles_per_s, step_s, mean_s = summary(args.variant)
    result = {
        "train_tiles_per_s": round(tiles_per_s, 3),
        "train_gflops": round(3 * flops * tiles_per_s / 1e9, 2),
        "conv_peak_gflops": round(conv_peak, 2),
        "peak_fraction": round(3 * flops * tiles_per_s / 1e9 / conv_peak, 3),
        "forward_gflop_per_tile": round(flops / 1e9, 2),
        "step_ms_median": round(1000 * step_s, 1),
        "step_ms_mean": round(1000 * mean_s, 1),
    }
    for name in durations:
        if name != args.variant:
            other = summary(name)[0]
            result[f"{name}_tiles_per_s"] = round(other, 3)
            result[f"speedup_vs_{name}"] = round(tiles_per_s / other, 3)
    result.update({
        "architecture": args.architecture, "base_filters": args.base_filters,
        "depth": args.depth, "tile": args.tile, "batch": args.batch,
        "precision": args.precision, "jit_compile": args.jit, "variant": args.variant,
        "fit": args.fit, "steps_per_execution": args.steps_per_execution,
        "intra_op_threads": args.intra, "inter_op_threads": args.inter,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "timed_steps": len(durations[args.variant]), "load_average_1min": round(os.getloadavg()[0], 2),
        "tensorflow": tf.__version__, "keras": keras.__version__,
        "date": time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()),
    })
    print(json.dumps(result))


def timed(function):
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
