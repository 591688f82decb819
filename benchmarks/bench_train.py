"""Training-step throughput of FusionNet on CPU (a benchmark, not a test).

Times ``train_on_batch`` (or ``fit`` with ``--fit``) after warm-up on random
512x512 tiles and prints, as its LAST line, one JSON object:

    {"train_tiles_per_s": ..., "train_gflops": ..., "forward_gflop_per_tile": ...,
     "step_ms_median": ..., ...settings...}

``train_gflops`` counts a training step as 3x the forward FLOPs (forward +
2x for the backward pass), with the forward FLOPs summed analytically over
the convolutions (2 * multiply-adds; BN, ReLU, pooling and adds ignored).

Variants (``--variant``) measure model-level changes without touching the
builders in ``fusionnet_tf/models``:

- ``default``: ``build_fusionnet`` as shipped;
- ``fused_bn``: every BatchNormalization replaced by one computing with
  TensorFlow's fused kernel (``tf.compat.v1.nn.fused_batch_norm``), same
  weights and maths;
- ``no_bn``: normalization "none" (an upper bound: what BN costs).

Example:
    TF_CPP_MIN_LOG_LEVEL=2 python benchmarks/bench_train.py --base-filters 16 --tile 512
"""

import argparse
import json
import os
import statistics
import time


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
    parser.add_argument("--variant", default="default", choices=("default", "fused_bn", "no_bn"),
                        help="Model-level variant, see the module docstring (default: default).")
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


def fused_bn_layer_class():
    """A BatchNormalization computing with TF's fused kernel (NHWC, axis -1)."""
    import keras
    import tensorflow as tf

    class FusedBatchNormalization(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            if inputs.dtype != tf.float32 or self.axis != [3] and self.axis != 3 \
                    and self.axis != -1 and self.axis != [-1]:
                return super().call(inputs, training=training, mask=mask)
            gamma = self.gamma if self.scale else tf.ones_like(self.moving_mean)
            beta = self.beta if self.center else tf.zeros_like(self.moving_mean)
            if training:
                y, mean, var = tf.compat.v1.nn.fused_batch_norm(
                    inputs, gamma, beta, epsilon=self.epsilon, is_training=True)
                # fused returns the Bessel-corrected variance; Keras keeps the biased one
                n = tf.cast(tf.reduce_prod(tf.shape(inputs)[:3]), tf.float32)
                var = var * (n - 1.0) / n
                m = self.momentum
                self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
                self.moving_variance.assign(self.moving_variance * m + var * (1.0 - m))
                return y
            y, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, gamma, beta, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=False)
            return y

    return FusedBatchNormalization


def build(args):
    import keras

    from fusionnet_tf.models import build_model

    kwargs = dict(base_filters=args.base_filters, depth=args.depth,
                  input_shape=(args.tile, args.tile, 1))
    if args.variant == "no_bn":
        kwargs["normalization"] = "none"
    model = build_model(args.architecture, **kwargs)
    if args.variant == "fused_bn":
        fused = fused_bn_layer_class()

        def swap(layer):
            if isinstance(layer, keras.layers.BatchNormalization):
                return fused.from_config(layer.get_config())
            return layer.__class__.from_config(layer.get_config())

        model = keras.models.clone_model(model, clone_function=swap)
    return model


def main():
    args = parse_args()
    import numpy as np
    import tensorflow as tf
    import keras

    from fusionnet_tf.training.losses import get_loss
    from fusionnet_tf.training.strategy import configure_threads, set_precision

    configure_threads(args.intra, args.inter)
    set_precision(args.precision)
    keras.utils.set_random_seed(0)
    model = build(args)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=get_loss(args.loss),
                  jit_compile=args.jit, steps_per_execution=args.steps_per_execution)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, args.tile, args.tile, 1), dtype=np.float32)
    y = (rng.random((args.batch, args.tile, args.tile, 1)) < 0.22).astype(np.float32)

    durations = []
    if args.fit:
        dataset = tf.data.Dataset.from_tensors((x, y)).repeat().prefetch(2)

        class Timer(keras.callbacks.Callback):
            def on_train_batch_begin(self, batch, logs=None):
                self.start = time.perf_counter()

            def on_train_batch_end(self, batch, logs=None):
                durations.append((time.perf_counter() - self.start) / args.steps_per_execution)

        total = args.warmup + args.steps
        model.fit(dataset, steps_per_epoch=total // args.steps_per_execution, epochs=1,
                  callbacks=[Timer()], verbose=0)
        durations = durations[args.warmup // args.steps_per_execution:]
    else:
        for step in range(args.warmup + args.steps):
            start = time.perf_counter()
            model.train_on_batch(x, y)
            if step >= args.warmup:
                durations.append(time.perf_counter() - start)

    step_s = statistics.median(durations)
    mean_s = statistics.fmean(durations)
    flops = forward_flops(model)
    tiles_per_s = args.batch / step_s
    result = {
        "train_tiles_per_s": round(tiles_per_s, 3),
        "train_gflops": round(3 * flops * tiles_per_s / 1e9, 2),
        "forward_gflop_per_tile": round(flops / 1e9, 2),
        "step_ms_median": round(1000 * step_s, 1),
        "step_ms_mean": round(1000 * mean_s, 1),
        "architecture": args.architecture, "base_filters": args.base_filters,
        "depth": args.depth, "tile": args.tile, "batch": args.batch,
        "precision": args.precision, "jit_compile": args.jit, "variant": args.variant,
        "fit": args.fit, "steps_per_execution": args.steps_per_execution,
        "intra_op_threads": args.intra, "inter_op_threads": args.inter,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "default"),
        "timed_steps": len(durations), "tensorflow": tf.__version__, "keras": keras.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
