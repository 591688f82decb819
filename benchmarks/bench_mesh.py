"""
Title: Meshing speed of export-precomputed (zmesh), in voxels per second per core
Description: Meshes every id of a segmentation exactly as
``fusionnet export-precomputed --mesh`` does (``volumes.multires_mesh``: per
block, marching cubes at each level of detail with one voxel of border and
quantized pieces on disk; then per id, Draco encoding of every octree node,
the fragment file and its manifest), in this process on one thread, and
reports voxels/s of CPU time (= per core) and of wall time, with the split
between the block pass and the per-id pass. Goal (issue 25): >= 1 M voxels/s
per core.

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
    parser.add_argument("--lods", type=int, default=3, help="Levels of detail (default: 3).")
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


def mesh_once(labels, blocks, block, factors, keep, folder):
    """One full meshing pass into ``folder``; (block CPU s, id CPU s, wall s, stats)."""
    from fusionnet_tf.volumes.multires_mesh import mesh_block_lods, write_segment

    pieces, mesh_dir = Path(folder) / "pieces", Path(folder) / "mesh"
    pieces.mkdir()
    mesh_dir.mkdir()
    wall, cpu = time.perf_counter(), time.process_time()
    for b in blocks:
        mesh_block_lods(labels, b, labels.shape, block, factors, keep, pieces)
    cpu_blocks = time.process_time() - cpu
    fragments = [write_segment(pieces, int(p.name), mesh_dir, block, factors)
                 for p in sorted(pieces.iterdir())]
    cpu_ids = time.process_time() - cpu - cpu_blocks
    wall = time.perf_counter() - wall
    stats = {"meshes": len(fragments),
             "fragments_per_lod": [int(v) for v in np.sum(fragments, axis=0)],
             "triangles_per_lod": triangles_per_lod(pieces, len(factors)),
             "mesh_mb": round(sum(f.stat().st_size for f in mesh_dir.iterdir()) / 1e6, 1)}
    return cpu_blocks, cpu_ids, wall, stats


def triangles_per_lod(pieces, lods):
    """Triangles of each LOD, counted in the block pass's piece files (not timed)."""
    counts = [0] * lods
    for path in Path(pieces).glob("*/*.npz"):
        with np.load(path) as arrays:
            for name in arrays.files:
                if name.startswith("f_"):
                    counts[int(name.split("_")[1])] += len(arrays[name])
    return counts


def main():
    args = parse_args()
    from fusionnet_tf.volumes.multires_mesh import lod_factors
    from fusionnet_tf.volumes.precomputed import block_grid_zyx

    shape = tuple(int(v) for v in args.crop.split(","))
    block = tuple(int(v) for v in args.block.split(","))
    voxel_size = tuple(float(v) for v in args.voxel_size.split(","))
    labels, source = load_labels(args, shape)
    shape = labels.shape
    keep = {int(i) for i in np.unique(labels) if i}
    blocks = block_grid_zyx(shape, block)
    factors = lod_factors(shape, voxel_size, args.lods)
    foreign = foreign_cpu_meter()
    runs = []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as folder:
            runs.append(mesh_once(labels, blocks, block, factors, keep, folder))
    best = min(runs, key=lambda run: run[0] + run[1])
    cpu = best[0] + best[1]
    wall = min(run[2] for run in runs)
    voxels = int(np.prod(shape))
    result = {
        "benchmark": "mesh", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": source, "shape": list(shape), "block": list(block), "ids": len(keep),
        "lod_factors_zyx": [list(f) for f in factors], **best[3], "voxels": voxels,
        "cpu_s": round(cpu, 3), "cpu_blocks_s": round(best[0], 3),
        "cpu_ids_s": round(best[1], 3), "wall_s": round(wall, 3),
        "voxels_per_s_per_core": round(voxels / cpu),
        "voxels_per_s_wall": round(voxels / wall),
        "goal_voxels_per_s_per_core": 1_000_000,
        "meets_goal": voxels / cpu >= 1_000_000,
        "foreign_cpu_load": round(foreign(), 2), "cpu": cpu_description(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
