"""
Title: Block-wise segmentation (segment-volume) vs in-memory segmentation
Description: seconds of ``segment_volume`` on a local Dask cluster of 2 workers
next to in-memory ``segment`` on the same membrane volume, and the adapted Rand
error between the two label volumes.

The volume is built from real predictions: the shipped model (TTA 1) on the
three shipped ISBI 2012 test slices, or a membrane map given with ``--pred``
(e.g. slices 20-24 predicted with TTA 8), mirrored 2 x 2 in-plane and
reflected along z up to ``--depth-z`` slices (default 8 x 1024 x 1024). It is
written to a zarr store chunked (1, 512, 512). The Dask cluster is started and
warmed up (a small run, so workers have imported SciPy/scikit-image) before
the timed run; the cluster start is not timed. Segmentation uses the shipped
tuned parameters. The last line printed is one JSON object; ``seam_splits``
counts segments split only along block faces (must be 0). Wall times on a
shared machine are noisy (with Linux autogroup scheduling, all processes of
one session share one CPU share, so 2 workers may not run faster than 1), so
the CPU seconds of in-memory segmentation and of the block-wise watershed pass
(summed over workers) are reported too.

    python benchmarks/bench_segment_volume.py [--pred membranes.tif] [--mode 2d]
        [--depth-z 8] [--block 512] [--block-z 4] [--halo 64] [--workers 2]
"""

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

EXAMPLE = Path(__file__).resolve().parent.parent / "fusionnet_tf" / "examples" / \
    "isbi2012_test_slices_0-2.tif"


# ----------------------------------------------------------------- data

def membrane_slices(pred):
    """(N, 512, 512) float32 membrane map: read ``pred``, or predict the shipped slices."""
    if pred:
        from fusionnet_tf.segmentation.io import read_membrane

        return read_membrane(pred)
    from fusionnet_tf import Predictor, load_pretrained
    from fusionnet_tf.data import normalize, read_stack

    predictor = Predictor(load_pretrained(), tta=1, progress=False)
    return predictor.predict(normalize(read_stack(str(EXAMPLE)))).astype(np.float32)


def mirrored_volume(slices, depth):
    """Tile (N, H, W) into (depth, 2H, 2W) by mirroring in-plane and reflecting along z."""
    top = np.concatenate([slices, slices[:, :, ::-1]], axis=2)
    plane = np.concatenate([top, top[:, ::-1, :]], axis=1)
    period = list(range(len(plane))) + list(range(len(plane) - 2, 0, -1)) or [0]
    return np.ascontiguousarray(plane[[period[z % len(period)] for z in range(depth)]])


def write_zarr(path, volume):
    import zarr

    array = zarr.open_array(str(path), mode="w", shape=volume.shape, dtype=volume.dtype,
                            chunks=(1, 512, 512))
    array[...] = volume
    return str(path)


# ----------------------------------------------------------------- timing

def time_in_memory(volume, params, mode):
    from fusionnet_tf.segmentation import segment

    start, cpu_start = time.perf_counter(), time.process_time()
    labels, _ = segment(volume, params, mode=mode)
    return labels, time.perf_counter() - start, time.process_time() - cpu_start


def time_blockwise(spec, folder, params, mode, block_shape, halo, workers):
    """Warm up a local cluster, then time ``segment_volume`` on it; (labels, seconds, summary)."""
    import logging

    import distributed
    import zarr

    from fusionnet_tf.segmentation.blockwise import segment_volume

    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=None, silence_logs=logging.ERROR) as cluster:
        warm = write_zarr(folder / "warm.zarr", np.zeros((workers, 64, 64), np.float32))
        segment_volume(warm, str(folder / "warm_out.zarr"), params, mode,
                       block_shape=(1, 64, 64), halo=8, scheduler=cluster.scheduler_address,
                       progress=False)
        start = time.perf_counter()
        summary = segment_volume(spec, str(folder / "labels.zarr"), params, mode,
                                 block_shape=block_shape, halo=halo,
                                 scheduler=cluster.scheduler_address, progress=False)
        seconds = time.perf_counter() - start
    return zarr.open_array(str(folder / "labels.zarr"), mode="r")[...], seconds, summary


# ----------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pred", default=None,
                        help="Membrane map to tile (default: predict the shipped test slices).")
    parser.add_argument("--mode", choices=("2d", "3d"), default="2d", help="Default: 2d.")
    parser.add_argument("--depth-z", type=int, default=8, help="Slices (default: 8).")
    parser.add_argument("--block", type=int, default=512, help="Block side (default: 512).")
    parser.add_argument("--block-z", type=int, default=4, help="Block depth (default: 4).")
    parser.add_argument("--halo", type=int, default=64, help="Halo (default: 64).")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers (default: 2).")
    args = parser.parse_args()

    from fusionnet_tf.metrics import segmentation_scores_report
    from fusionnet_tf.segmentation import default_params
    from fusionnet_tf.segmentation.blockwise import seam_splits

    params = default_params()
    volume = mirrored_volume(membrane_slices(args.pred), args.depth_z)
    block_shape = (args.block_z, args.block, args.block)
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        spec = write_zarr(folder / "membranes.zarr", volume)
        blockwise, blockwise_s, summary = time_blockwise(spec, folder, params, args.mode,
                                                         block_shape, args.halo, args.workers)
    reference, in_memory_s, in_memory_cpu_s = time_in_memory(volume, params, args.mode)
    scores = segmentation_scores_report(reference, blockwise, ground_truth="segments",
                                        mode="3d")
    result = {
        "source": args.pred or f"{EXAMPLE.name} (shipped model, TTA 1)",
        "volume": list(volume.shape), "mode": args.mode, "block": list(block_shape),
        "halo": list(summary["halo"]), "workers": args.workers, "cpu_count": os.cpu_count(),
        "in_memory_s": round(in_memory_s, 2), "blockwise_s": round(blockwise_s, 2),
        "speedup": round(in_memory_s / blockwise_s, 3),
        "in_memory_cpu_s": round(in_memory_cpu_s, 2),
        "blockwise_watershed_cpu_s": round(summary["watershed_cpu_seconds"], 2),
        "segments_in_memory": int(reference.max()), "segments_blockwise": summary["segments"],
        "adapted_rand_error": scores["adapted_rand_error"],
        "voi_split": scores["voi_split"], "voi_merge": scores["voi_merge"],
        "seam_splits": len(seam_splits(reference, blockwise, block_shape)),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
