"""Benchmark: augmented 512 x 512 training tiles per second from the ISBI 2012 stack.

Measures, side by side in one run:

- ``tiles_per_s``: ``fusionnet_tf.data.train_dataset`` with the full default
  augmentation (elastic deformation, dihedral, gamma/contrast/brightness,
  noise), image + label tiles;
- ``keras_elastic_tiles_per_s``: the same pipeline (same sampling, windows,
  dihedral and intensity jitter) with the deformation done by
  ``keras.ops.image.elastic_transform`` (its defaults alpha=20, sigma=5, which
  give a displacement of similar size) on the image + label window, then
  thresholding the label.

Besides wall-clock rates it prints CPU seconds per tile (process time; more
stable than wall time on a shared machine). The last line is one JSON object.

Usage:
    python benchmarks/bench_pipeline.py --data ../shared/data/isbi2012 [--batches 20]
"""

import argparse
import json
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_DATA = os.environ.get("ISBI2012_DIR", "../shared/data/isbi2012")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"ISBI 2012 folder (default: $ISBI2012_DIR or {DEFAULT_DATA})")
    parser.add_argument("--tile-size", type=int, default=512, help="tile side (default: 512)")
    parser.add_argument("--batch-size", type=int, default=8, help="tiles per batch (default: 8)")
    parser.add_argument("--batches", type=int, default=20, help="timed batches (default: 20)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (default: 3)")
    parser.add_argument("--keras-batches", type=int, default=4,
                        help="timed batches for the Keras variant, which is slow (default: 4)")
    parser.add_argument("--skip-keras", action="store_true", help="only time fusionnet_tf")
    return parser.parse_args()


def time_dataset(dataset, batches, warmup, batch_size):
    """Return (tiles per wall second, CPU seconds per tile) over ``batches`` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(batches):
        batch = next(iterator)
    batch[0].numpy()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tiles = batches * batch_size
    return tiles / wall, cpu / tiles


def keras_deform_fn(tile_size):
    """Deformation by keras.ops.image.elastic_transform on the (S, S, 2) window.

    The pipeline then applies the same dihedral (dihedral_tf) and intensity
    jitter as ours. Keras needs a Python int or SeedGenerator seed; an int
    gives every tile the same field (its behaviour in a tf.data map).
    """
    import keras
    import tensorflow as tf

    from fusionnet_tf.data.augment import AugmentConfig

    margin = AugmentConfig().margin

    def deform(window, seed):
        del seed
        side = tile_size + 2 * margin
        window = tf.ensure_shape(window, [side, side, 2])
        warped = keras.ops.image.elastic_transform(window, seed=1, fill_mode="reflect")
        tile = warped[margin:margin + tile_size, margin:margin + tile_size]
        return tf.concat([tile[..., :1], tf.cast(tile[..., 1:] >= 0.5, tf.float32)], axis=-1)

    return deform


def main():
    args = parse_args()
    from fusionnet_tf.data import get_isbi2012_paths, read_labels, read_stack
    from fusionnet_tf.data.augment import AugmentConfig
    from fusionnet_tf.data.pipeline import _build_train_dataset

    paths = get_isbi2012_paths(args.data)
    images = read_stack(paths["train_images"])[:20]
    labels = read_labels(paths["train_labels"])[:20]
    common = dict(images=images, labels=labels, tile_size=args.tile_size, batch_size=args.batch_size,
                  seed=0, normalization="slice", min_foreground=0.0, max_sampling_attempts=16)

    ours = _build_train_dataset(augment=AugmentConfig(), **common)
    rate, cpu = time_dataset(ours, args.batches, args.warmup, args.batch_size)
    print(f"fusionnet_tf.data : {rate:7.1f} tiles/s  {cpu * 1000:7.1f} CPU ms/tile")
    result = {"tiles_per_s": round(rate, 1), "cpu_ms_per_tile": round(cpu * 1000, 1)}

    if not args.skip_keras:
        keras_ds = _build_train_dataset(augment=AugmentConfig(), deform_fn=keras_deform_fn(args.tile_size),
                                        **common)
        k_rate, k_cpu = time_dataset(keras_ds, args.keras_batches, 1, args.batch_size)
        print(f"keras elastic     : {k_rate:7.1f} tiles/s  {k_cpu * 1000:7.1f} CPU ms/tile")
        result.update(keras_elastic_tiles_per_s=round(k_rate, 1),
                      keras_elastic_cpu_ms_per_tile=round(k_cpu * 1000, 1),
                      speedup=round(rate / k_rate, 1))

    result.update(tile_size=args.tile_size, batch_size=args.batch_size, cpus=os.cpu_count(),
                  load_average_1min=round(os.getloadavg()[0], 2),
                  date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
