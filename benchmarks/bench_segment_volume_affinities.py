"""
Title: Block-wise affinity segmentation (segment-volume) vs in-memory segment
Description: SNEMI3D ground-truth affinities, degraded, segmented in memory
(``segment_affinities``, what ``fusionnet segment AFF`` runs) and block-wise
(``segment_volume`` in this process, i.e. one worker); prints one JSON line
per (method, halo): adapted Rand error between the two label volumes, seam
splits (segments split only along block faces; must be 0), both errors
against the ground truth, wall and CPU seconds.

Affinities: SNEMI3D AC4 sections ``--sections`` (default 60-74), y/x crop
``--crop`` (default 512), ``data.affinities.affinity_targets`` with the
default 10 offsets, in-plane Gaussian blur ``--blur`` px plus uniform noise
``+-noise`` (seed 0), clipped to [0, 1]; written to a zarr store chunked like
``predict-volume``'s affinity output. Parameters: ``--params`` (a file, a
shipped model name, or ``defaults`` for ``AffinityParams()``; default
snemi3d's, the parameters shipped with the 3D model), the method set by
``--methods``.

    nice -n 10 python benchmarks/bench_segment_volume_affinities.py \\
        [--methods agglomeration,mws] [--halos 16,32,64] [--block 256 --block-z 15]
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

LABELS = "/work/shared/data/snemi3d-ac4/ac4-z00-74-labels.tif"


def degraded_affinities(labels, blur, noise, seed=0):
    """(C, Z, Y, X) float32: ground-truth affinities, blurred in-plane, plus uniform noise."""
    from fusionnet_tf.data.affinities import DEFAULT_OFFSETS_3D, affinity_targets

    affs, _ = affinity_targets(labels, DEFAULT_OFFSETS_3D)
    rng = np.random.default_rng(seed)
    if blur > 0:
        affs = np.stack([ndimage.gaussian_filter(c, (0, blur, blur)) for c in affs])
    affs += rng.uniform(-noise, noise, affs.shape).astype(np.float32)
    return np.clip(affs, 0, 1).astype(np.float32), DEFAULT_OFFSETS_3D


def timed(function, *args, **kwargs):
    wall, cpu = time.perf_counter(), time.process_time()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--labels", default=LABELS)
    parser.add_argument("--sections", default="60:75")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--blur", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--params", default="snemi3d")
    parser.add_argument("--methods", default="agglomeration,mws")
    parser.add_argument("--halos", default="64")
    parser.add_argument("--block", type=int, default=256)
    parser.add_argument("--block-z", type=int, default=15)
    args = parser.parse_args()

    import tifffile
    import zarr

    from fusionnet_tf.data.affinity_io import write_affinities
    from fusionnet_tf.metrics import volume_scores
    from fusionnet_tf.pretrained import is_model_name, pretrained_params_path
    from fusionnet_tf.segmentation import load_params
    from fusionnet_tf.segmentation.affinities import segment_affinities
    from fusionnet_tf.segmentation.affinity_params import AffinityParams
    from fusionnet_tf.segmentation.blockwise import seam_splits, segment_volume

    start, stop = (int(v) for v in args.sections.split(":"))
    truth = tifffile.imread(args.labels)[start:stop, :args.crop, :args.crop].astype(np.int64)
    affs, offsets = degraded_affinities(truth, args.blur, args.noise)
    if args.params == "defaults":
        base = AffinityParams()
    else:
        source = pretrained_params_path(args.params) if is_model_name(args.params) else \
            args.params
        base = load_params(source, AffinityParams)
    block = (args.block_z, args.block, args.block)
    with tempfile.TemporaryDirectory() as folder:
        spec = write_affinities(os.path.join(folder, "aff.zarr"), affs, offsets)
        for method in args.methods.split(","):
            params = base.replace(method=method)
            (memory, _), memory_wall, memory_cpu = timed(segment_affinities, affs, offsets, params)
            for halo in (int(h) for h in args.halos.split(",")):
                out = os.path.join(folder, f"seg-{method}-{halo}.zarr")
                summary, wall, cpu = timed(segment_volume, str(spec), out, params,
                                           block_shape=block, halo=halo, progress=False)
                labels = zarr.open_array(out, mode="r")[...]
                versus = volume_scores(memory.astype(np.int64), labels.astype(np.int64))
                print(json.dumps({
                    "method": method, "shape": list(truth.shape), "block": list(block),
                    "halo": list(summary["halo"]), "blur": args.blur, "noise": args.noise,
                    "are_vs_in_memory": round(versus["adapted_rand_error"], 5),
                    "seam_splits": len(seam_splits(memory, labels, block)),
                    "segments_in_memory": int(memory.max()),
                    "segments_blockwise": int(summary["segments"]),
                    "are_gt_in_memory": round(volume_scores(truth, memory)
                                              ["adapted_rand_error"], 4),
                    "are_gt_blockwise": round(volume_scores(truth, labels)
                                              ["adapted_rand_error"], 4),
                    "in_memory_wall_s": round(memory_wall, 2),
                    "in_memory_cpu_s": round(memory_cpu, 2),
                    "blockwise_wall_s": round(wall, 2), "blockwise_cpu_s": round(cpu, 2),
                    "params": params.to_dict()}), flush=True)


if __name__ == "__main__":
    main()
