"""
Title: Block-wise volume prediction vs in-memory prediction
Description: voxels/s of ``predict_volume`` on a local Dask cluster with 1 and 2
workers, next to ``Predictor.predict`` on the same data held in memory.

A synthetic uint8 volume is written to a zarr store; a FusionNet of modest width
(random weights: speed does not depend on them) is saved as ``.keras``. Each
Dask cluster first runs a small warm-up volume so that every worker has
imported TensorFlow and loaded the model (its once-per-worker cost), then the
timed run predicts the whole volume into a fresh output. In-memory timing
covers normalization plus ``Predictor.predict`` after one warm-up call. The
last line printed is one JSON object; ``overhead_*`` is the fraction of
in-memory throughput lost (goal: < 0.15). Each setting runs ``--repeats``
times and keeps the best, which damps the noise of a shared machine.

    python benchmarks/bench_volume.py [--depth-z 8] [--size 1024] [--block 1024] [--repeats 2]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

TILE, OVERLAP, BATCH = 512, 64, 4


# ----------------------------------------------------------------- data and model

def synthetic_volume(depth, size, seed=0):
    """uint8 (depth, size, size) with membrane-like ridges and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    slices = []
    for z in range(depth):
        ridges = np.abs(np.sin(yy / (9 + z)) * np.cos(xx / 13)) + 0.2 * rng.random((size, size))
        slices.append((255 * ridges / ridges.max()).astype(np.uint8))
    return np.stack(slices)


def write_inputs(folder, volume, base_filters):
    """Save the volume as zarr and a FusionNet as .keras; return their paths."""
    import zarr

    from fusionnet_tf import build_fusionnet

    spec = str(folder / "volume.zarr")
    array = zarr.open_array(spec, mode="w", shape=volume.shape, dtype=volume.dtype,
                            chunks=(1, 512, 512))
    array[:] = volume
    model_path = folder / "model.keras"
    build_fusionnet(base_filters=base_filters, depth=4).save(model_path)
    return spec, model_path


# ----------------------------------------------------------------- timings

def time_in_memory(volume, model_path, repeats):
    """(best voxels/s, prediction) of normalize + Predictor.predict on the whole volume."""
    from fusionnet_tf.data.normalize import normalize
    from fusionnet_tf.inference import Predictor, load_model

    predictor = Predictor(load_model(model_path), tile_shape=TILE, overlap=OVERLAP,
                          batch_size=BATCH, tta=1)
    predictor.predict(normalize(volume[:1, :TILE, :TILE]))  # warm-up (graph tracing)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        prediction = predictor.predict(normalize(volume))
        best = max(best, volume.size / (time.perf_counter() - start))
    return best, prediction


def time_blockwise(folder, spec, model_path, workers, block, warmup_spec, repeats):
    """(best voxels/s, output array, tile ratio) of predict_volume on a warm local cluster."""
    import logging

    import distributed
    import zarr

    from fusionnet_tf.volumes import predict_volume

    threads = max(1, (os.cpu_count() or 1) // workers)
    options = dict(block_shape=(1, block, block), tile_shape=TILE, overlap=OVERLAP,
                   batch_size=BATCH, tta=1, tf_threads=threads)
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        address = cluster.scheduler_address
        # warm-up: one block per worker imports TF and loads the model into the cache
        predict_volume(warmup_spec, folder / f"warmup{workers}.zarr", model_path,
                       scheduler=address, **options)
        best = 0.0
        for repeat in range(repeats):
            output = folder / f"blockwise{workers}_{repeat}.zarr"
            summary = predict_volume(spec, output, model_path, scheduler=address, **options)
            best = max(best, summary["voxels_per_s"])
            print(f"  {workers} worker(s): {summary['blocks_computed']} blocks, "
                  f"{summary['seconds']:.1f} s, per worker {summary['blocks_per_worker']}, "
                  f"tile ratio {summary['tile_ratio']:.2f}")
    return best, zarr.open_array(str(output), mode="r")[:], summary["tile_ratio"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--depth-z", type=int, default=8, help="Slices (default: 8).")
    parser.add_argument("--size", type=int, default=1024, help="Slice side (default: 1024).")
    parser.add_argument("--block", type=int, default=1024, help="Block side (default: 1024).")
    parser.add_argument("--base-filters", type=int, default=8,
                        help="FusionNet base filters (default: 8).")
    parser.add_argument("--repeats", type=int, default=2,
                        help="Timed runs per setting; the best is kept (default: 2).")
    args = parser.parse_args()

    volume = synthetic_volume(args.depth_z, args.size)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        spec, model_path = write_inputs(folder, volume, args.base_filters)
        warmup = folder / "warmup.zarr"
        import zarr

        small = zarr.open_array(str(warmup), mode="w", shape=(4, TILE, TILE), dtype="uint8")
        small[:] = volume[:4, :TILE, :TILE]

        print(f"volume {volume.shape} uint8, FusionNet base {args.base_filters} depth 4, "
              f"tile {TILE}, overlap {OVERLAP}, block {args.block}, {os.cpu_count()} CPUs")
        in_memory, reference = time_in_memory(volume, model_path, args.repeats)
        print(f"  in memory: {in_memory:,.0f} voxels/s")
        one, out1, ratio = time_blockwise(folder, spec, model_path, 1, args.block,
                                          str(warmup), args.repeats)
        two, out2, _ = time_blockwise(folder, spec, model_path, 2, args.block, str(warmup),
                                      args.repeats)
    result = {
        "voxels_per_s_1worker": round(one),
        "voxels_per_s_2workers": round(two),
        "voxels_per_s_in_memory": round(in_memory),
        "overhead_1worker": round(1 - one / in_memory, 3),
        "overhead_2workers": round(1 - two / in_memory, 3),
        "max_abs_diff_1worker": float(np.abs(out1 - reference).max()),
        "max_abs_diff_2workers": float(np.abs(out2 - reference).max()),
        "tile_ratio": round(ratio, 3),
        "volume": list(volume.shape), "block": args.block, "tile": TILE, "overlap": OVERLAP,
        "base_filters": args.base_filters, "repeats": args.repeats, "cpus": os.cpu_count(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
