"""
Title: Meshing speed of export-precomputed (zmesh), in voxels per second per core
Description: Meshes every id of a segmentation block by block exactly as
``fusionnet export-precomputed --mesh`` does (``precomputed.mesh_block``: the
block plus one voxel of border, marching cubes, one fragment file per id),
in this process on one thread, and reports voxels/s of CPU time (= per core)
and of wall time. Goal (issue 25): >= 1 M voxels/s per core.

Data: the SNEMI3D AC4 ground-truth ids (``--data``, its
``ac4-z00-74-labels.tif``, 6 x 6 x 30 nm), cropped to ``--crop Z,Y,X``; or a
synthetic volume of Voronoi cells with ``--synthetic``.

Run: ``python benchmarks/bench_mesh.py [--data ../shared/data/snemi3d-ac4] [--crop 32,512,512]``.
The last line printed is one JSON object.
"""

import argparse
import json
import os
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hostinfo import cpu_description, foreign_cpu_meter  # noqa: E402

DEFAULT_DATA = os.environ.get("SNEMI3D_DIR", "../shared/data/snemi3d-ac4")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=DEFAULT_DATA,
                        help=f"SNEMI3D AC4 folder (default: $SNEMI3D_DIR or {DEFAULT_DATA})")
    parser.add_argument("--crop", default="32,512,512",
                        help="Crop Z,Y,X from the volume's corner (default: 32,512,512).")
    parser.add_argument("--block", default="32,256,256",
                        help="Block Z,Y,X as export-precomputed's --block-z/--block "
                             "(default: 32,256,256).")
    parser.add_argument("--voxel-size", default="30,6,6", help="z,y,x nm (default: 30,6,6).")
    parser.add_argument("--synthetic", action="store_true",
                        help="Voronoi cells instead of SNEMI3D ids.")
    parser.add_argument("--repeats", type=int, default=2, help="Timed passes (default: 2).")
    return parser.parse_args()


def voronoi_labels(shape, cells=400, seed=0):
    """``shape`` uint32 volume of ``cells`` Voronoi cells (anisotropic, like EM neurites)."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    seeds = np.zeros(shape, np.uint32)
    points = tuple(rng.integers(0, s, cells) for s in shape)
    seeds[points] = np.arange(1, cells + 1, dtype=np.uint32)
    _, index = ndimage.distance_transform_edt(seeds == 0, sampling=(5, 1, 1),
                                              return_indices=True)
    return seeds[tuple(index)]


def load_labels(args, shape):
    if args.synthetic:
        return voronoi_labels(shape), "synthetic Voronoi"
    import tifffile

    path = Path(args.data) / "ac4-z00-74-labels.tif"
    labels = tifffile.imread(path)[:shape[0], :shape[1], :shape[2]]
    return np.ascontiguousarray(labels.astype(np.uint32)), f"SNEMI3D {path.name}"


def main():
    args = parse_args()
    from fusionnet_tf.volumes.precomputed import block_grid_zyx, mesh_block

    shape = tuple(int(v) for v in args.crop.split(","))
    block = tuple(int(v) for v in args.block.split(","))
    voxel_size = tuple(float(v) for v in args.voxel_size.split(","))
    labels, source = load_labels(args, shape)
    shape = labels.shape
    ids = np.unique(labels)
    keep = {int(i) for i in ids if i}
    blocks = block_grid_zyx(shape, block)
    foreign = foreign_cpu_meter()
    walls, cpus, fragments = [], [], 0
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            wall, cpu = time.perf_counter(), time.process_time()
            fragments = sum(len(mesh_block(labels, b, shape, voxel_size, keep, folder))
                            for b in blocks)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    voxels = int(np.prod(shape))
    result = {
        "benchmark": "mesh", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source, "shape": list(shape), "block": list(block), "ids": len(keep),
        "fragments": fragments, "voxels": voxels,
        "cpu_s": round(min(cpus), 3), "wall_s": round(min(walls), 3),
        "voxels_per_s_per_core": round(voxels / min(cpus)),
        "voxels_per_s_wall": round(voxels / min(walls)),
        "goal_voxels_per_s_per_core": 1_000_000,
        "meets_goal": voxels / min(cpus) >= 1_000_000,
        "foreign_cpu_load": round(foreign(), 2), "cpu": cpu_description(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
