"""Cost of writing a segmentation as OME-Zarr with its pyramid vs as a plain zarr array.

A synthetic uint32 segmentation (Z, Y, X) (default 64 x 2048 x 2048: cells of ~40 px
with 1-px boundaries of id 0 between them, a new set of ids every 4 slices) is made
block-wise on Dask and written from a local cluster of ``--workers`` processes, in
arms that alternate within each of ``--repeats`` rounds:

- ``plain``: one zarr v3 array, chunks (1, 1024, 1024), by ``dask.array.store``
  (zarr-python; its default codecs: bytes + zstd level 0);
- ``ome_mode`` / ``ome_nearest``: ``io.ome_zarr.write_ome_zarr`` (NGFF 0.5, or
  ``--ngff-version``) with labels downsampled by mode / nearest: level 0 under
  ``OUT.ome.zarr/0`` block by block, each block's coarser levels from the block in
  memory while the blocks align with the factors, the remaining levels (automatic,
  down to <= 256 px) from the last of those, then the metadata; the same codecs;
- ``plain_chunk_writer``: the plain array again, written by the same block writer
  as OME-Zarr's level 0 (``io.zarr_chunks``, no pyramid): shows how much of the
  difference is the writer rather than the pyramid.

The segmentation is made once and kept in the workers' memory, so only the writes
are timed. Prints one JSON line: per arm the median (and min) seconds and the median
CPU seconds (workers + this process, user + system: steadier than seconds on a
shared machine), the overhead of each OME arm (median seconds / plain median - 1;
goal <= 0.20) and the same ratio of CPU seconds, the level shapes, the bytes on disk,
other processes' CPU share and the CPU. The goal is a benchmark, not a test.

    python benchmarks/bench_ome_zarr.py [--shape 64,2048,2048] [--workers 2] [--repeats 5]
"""

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from hostinfo import cpu_description, foreign_cpu_meter  # noqa: E402


def synthetic_block(block_info=None):
    """One block of the segmentation: cell ids on a jittered grid, 0 on the boundaries."""
    import numpy as np

    location = block_info[None]["array-location"]
    z0, z1 = location[0]
    y0, y1 = location[1]
    x0, x1 = location[2]
    zz, yy, xx = np.meshgrid(np.arange(z0, z1), np.arange(y0, y1), np.arange(x0, x1),
                             indexing="ij")
    wobble = (7 * np.sin(yy / 23.0 + zz) + 7 * np.cos(xx / 19.0)).astype(np.int64)
    cy, cx = (yy + wobble) // 40, (xx - wobble) // 40
    ids = (zz // 4) * 10_000 + cy * 100 + cx + 1
    edge = ((yy + wobble) % 40 == 0) | ((xx - wobble) % 40 == 0)
    return np.where(edge, 0, ids).astype(np.uint32)


def segmentation(shape, chunks):
    import dask.array as da

    return da.map_blocks(synthetic_block, dtype="uint32", chunks=da.core.normalize_chunks(
        chunks, shape))


def disk_bytes(path):
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def write_plain(path, data, chunks, client):
    import dask.array as da
    import zarr

    target = zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks,
                             dtype="uint32", fill_value=0, zarr_format=3)
    da.store(data, target, lock=False, scheduler=client.get)


def write_ome(path, data, chunks, client, version, method):
    """``io.ome_zarr.write_ome_zarr``: level 0 block by block, each block's coarser levels
    from memory, the rest (z halving under one-slice blocks) from the last of those."""
    from fusionnet_tf.io import ome_zarr

    plan = ome_zarr.OutputPlan("labels", version, (30.0, 6.0, 6.0), command="bench",
                               label_method=method)
    ome_zarr.write_ome_zarr(path, data, plan, chunks=chunks, scheduler=client.scheduler.address)


def level_shapes(path):
    """The shapes of an OME-Zarr output's levels, from its metadata."""
    from fusionnet_tf.io import ome_zarr

    return [tuple(ome_zarr.read_ome_zarr(path, level).array.shape)
            for level in range(len(ome_zarr.read_multiscale(path).datasets))]


def write_plain_chunk_writer(path, data, chunks, client):
    """The plain array written by OME-Zarr's block writer (``io.zarr_chunks``), no pyramid."""
    import zarr

    from fusionnet_tf.io import ome_zarr

    zarr.open_array(str(path), mode="w", shape=data.shape, chunks=chunks, dtype="uint32",
                    fill_value=0, zarr_format=3)
    ome_zarr.store_blocks(data, path, scheduler=client.scheduler.address)


def cpu_seconds(client):
    """User + system CPU seconds so far of the workers and of this process."""
    import psutil

    def own():
        times = psutil.Process().cpu_times()
        return times.user + times.system

    return own() + sum(client.run(own).values())


ARMS = ("plain", "ome_mode", "ome_nearest", "plain_chunk_writer")


def run_arm(arm, scratch, data, chunks, client, version):
    """Write one arm into ``scratch``; returns the path written."""
    path = scratch / (f"{arm}.ome.zarr" if arm.startswith("ome") else f"{arm}.zarr")
    if arm == "plain":
        write_plain(path, data, chunks, client)
    elif arm == "plain_chunk_writer":
        write_plain_chunk_writer(path, data, chunks, client)
    else:
        write_ome(path, data, chunks, client, version, arm.split("_", 1)[1])
    return path


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,2048,2048", help="Z,Y,X (default 64,2048,2048)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ngff-version", default="0.5", choices=("0.4", "0.5"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch folder (default: a temp folder)")
    args = parser.parse_args(argv)
    import logging

    import distributed

    shape = tuple(int(v) for v in args.shape.split(","))
    chunks = (1, min(1024, shape[1]), min(1024, shape[2]))
    scratch = Path(tempfile.mkdtemp(prefix="bench_ome_zarr.", dir=args.dir))
    meter = foreign_cpu_meter()
    try:
        with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                      processes=True, dashboard_address=None,
                                      silence_logs=logging.ERROR) as cluster, \
                distributed.Client(cluster) as client:
            # made once, kept in the workers' memory: the timings are of the writes only
            data = client.persist(segmentation(shape, chunks))
            distributed.wait(data)
            seconds = {arm: [] for arm in ARMS}
            cpu = {arm: [] for arm in ARMS}
            shapes, sizes = None, {}
            for _ in range(args.repeats):  # the arms alternate; medians of each
                for arm in ARMS:
                    for name in scratch.iterdir():
                        shutil.rmtree(name, ignore_errors=True)
                    used = cpu_seconds(client)
                    start = time.perf_counter()
                    path = run_arm(arm, scratch, data, chunks, client, args.ngff_version)
                    seconds[arm].append(time.perf_counter() - start)
                    cpu[arm].append(cpu_seconds(client) - used)
                    shapes = level_shapes(path) if arm.startswith("ome") else shapes
                    sizes[arm] = disk_bytes(scratch)
        plain, plain_cpu = median(seconds["plain"]), median(cpu["plain"])
        result = {
            "benchmark": "ome_zarr_labels", "shape": list(shape), "dtype": "uint32",
            "chunks": list(chunks), "workers": args.workers, "ngff_version": args.ngff_version,
            "repeats": args.repeats,
            "seconds_median": {arm: round(median(v), 2) for arm, v in seconds.items()},
            "seconds_min": {arm: round(min(v), 2) for arm, v in seconds.items()},
            "cpu_seconds_median": {arm: round(median(v), 2) for arm, v in cpu.items()},
            "overhead": {arm: round(median(seconds[arm]) / plain - 1, 3) for arm in ARMS[1:]},
            "cpu_overhead": {arm: round(median(cpu[arm]) / plain_cpu - 1, 3)
                             for arm in ARMS[1:]},
            "goal_overhead": 0.20, "levels": [list(s) for s in shapes], "bytes": sizes,
            "foreign_cpu": round(meter(), 2), "cpu": cpu_description(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
