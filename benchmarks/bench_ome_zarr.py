"""Cost of writing a segmentation as OME-Zarr with its pyramid vs as a plain zarr array.

A synthetic uint32 segmentation (Z, Y, X) (default 64 x 2048 x 2048: cells of ~40 px
with 1-px boundaries of id 0 between them, a new set of ids every 4 slices) is made
block-wise on Dask and written from a local cluster of ``--workers`` processes:

- plain: one zarr v3 array, chunks (1, 1024, 1024);
- ome: ``io.ome_zarr.write_ome_zarr`` (NGFF 0.5, or ``--ngff-version``): level 0
  under ``OUT.ome.zarr/0`` block by block, each block's coarser levels by mode from
  the block in memory while the blocks align with the factors, the remaining
  levels (automatic, down to <= 256 px) from the last of those, then the metadata.

The segmentation is made once and kept in the workers' memory, so only the writes
are timed; plain and OME-Zarr alternate ``--repeats`` times and the best of each
counts. Prints one JSON line: the seconds of each, the overhead (ome / plain - 1; goal
<= 0.20), the level shapes, the bytes on disk and the CPU. The goal is a
benchmark, not a test.

    python benchmarks/bench_ome_zarr.py [--shape 64,2048,2048] [--workers 2]
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


def write_ome(path, data, chunks, client, version):
    """``io.ome_zarr.write_ome_zarr``: level 0 block by block, each block's coarser levels
    from memory, the rest (z halving under one-slice blocks) from the last of those."""
    from fusionnet_tf.io import ome_zarr

    plan = ome_zarr.OutputPlan("labels", version, (30.0, 6.0, 6.0), command="bench")
    ome_zarr.write_ome_zarr(path, data, plan, chunks=chunks, scheduler=client.scheduler.address)
    return [tuple(ome_zarr.read_ome_zarr(path, level).array.shape)
            for level in range(len(ome_zarr.read_multiscale(path).datasets))]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", default="64,2048,2048", help="Z,Y,X (default 64,2048,2048)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--ngff-version", default="0.5", choices=("0.4", "0.5"))
    parser.add_argument("--repeats", type=int, default=2)
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
            plain, ome = [], []
            for _ in range(args.repeats):  # alternating, the best of each
                for name in ("plain.zarr", "seg.ome.zarr"):
                    shutil.rmtree(scratch / name, ignore_errors=True)
                start = time.perf_counter()
                write_plain(scratch / "plain.zarr", data, chunks, client)
                plain.append(time.perf_counter() - start)
                start = time.perf_counter()
                shapes = write_ome(scratch / "seg.ome.zarr", data, chunks, client,
                                   args.ngff_version)
                ome.append(time.perf_counter() - start)
            plain, ome = min(plain), min(ome)
        result = {
            "benchmark": "ome_zarr_labels", "shape": list(shape), "dtype": "uint32",
            "chunks": list(chunks), "workers": args.workers, "ngff_version": args.ngff_version,
            "plain_s": round(plain, 2), "ome_zarr_s": round(ome, 2),
            "overhead": round(ome / plain - 1, 3), "goal_overhead": 0.20,
            "levels": [list(s) for s in shapes],
            "plain_bytes": disk_bytes(scratch / "plain.zarr"),
            "ome_zarr_bytes": disk_bytes(scratch / "seg.ome.zarr"),
            "foreign_cpu": round(meter(), 2), "cpu": cpu_description(),
            "date": time.strftime("%Y-%m-%d"),
        }
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
