"""Affinity segmentation on SNEMI3D: what agglomeration and mutex watershed can reach.

Builds affinities from the SNEMI3D ground truth (sections 60-74, a crop),
degrades them (Gaussian blur + noise), segments them with the agglomeration
and with the mutex watershed, and prints one JSON line per method: adapted
Rand error, VOI split/merge (whole volume, ground-truth id 0 excluded) and
voxels per second, wall clock and CPU time (one core: run it under
``taskset -c 0`` with ``OMP_NUM_THREADS=1``; on a shared host the CPU-time
figure is the fairer one).

With ``--pred`` it segments a predicted affinity file instead (``fusionnet
predict``'s output for the same ``--sections``; offsets from its metadata),
with the parameters of ``--params`` (e.g. the shipped
``fusionnet_tf/weights/fusionnet3d_snemi3d.segment.json``): the speed on real
affinities, which make more fragments and edges than degraded ground truth.

Examples:
    python benchmarks/bench_affinity_segment.py --crop 512 --blur 1.0 --noise 0.1
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/bench_affinity_segment.py \
        --pred aff60-74.h5 --crop 1024 --methods agglomeration --repeats 2 \
        --params fusionnet_tf/weights/fusionnet3d_snemi3d.segment.json
"""

import argparse
import json
import time

import numpy as np
from scipy import ndimage

DEFAULT_OFFSETS_3D = ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, -3, 0), (0, 0, -3),
                      (0, -9, 0), (0, 0, -9), (0, -27, 0), (0, 0, -27))


def affinities_from_labels(labels, offsets):
    """(C, Z, Y, X) float32: 1 where p and p + offset share a non-zero id (0 outside)."""
    affs = np.zeros((len(offsets),) + labels.shape, np.float32)
    for channel, offset in enumerate(offsets):
        here, there = [], []
        for size, step in zip(labels.shape, offset):
            start, stop = max(0, -step), min(size, size - step)
            here.append(slice(start, stop))
            there.append(slice(start + step, stop + step))
        a, b = labels[tuple(here)], labels[tuple(there)]
        affs[channel][tuple(here)] = (a == b) & (a != 0)
    return affs


def degrade(affs, blur, noise, seed=0):
    """Gaussian blur (in-plane sigma ``blur``) plus uniform noise of amplitude ``noise``."""
    rng = np.random.default_rng(seed)
    out = np.stack([ndimage.gaussian_filter(channel, (0, blur, blur)) if blur > 0 else channel
                    for channel in affs])
    out += rng.uniform(-noise, noise, out.shape).astype(np.float32)
    return np.clip(out, 0, 1).astype(np.float32)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", default="/work/shared/data/snemi3d-ac4/ac4-z00-74-labels.tif")
    parser.add_argument("--sections", default="60:75")
    parser.add_argument("--crop", type=int, default=512)
    parser.add_argument("--blur", type=float, default=1.0)
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--methods", default="agglomeration,mws")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--pred", default=None, metavar="AFF",
                        help="Predicted affinities of --sections (default: degraded ground truth).")
    parser.add_argument("--params", default=None, metavar="FILE",
                        help="Segmentation parameters to start from (default: AffinityParams()).")
    parser.add_argument("--repeats", type=int, default=1,
                        help="Runs per method; the fastest CPU time is reported (default: 1).")
    args = parser.parse_args()

    import tifffile

    from fusionnet_tf.metrics import volume_scores
    from fusionnet_tf.segmentation.affinities import segment_affinities
    from fusionnet_tf.segmentation.affinity_params import AffinityParams

    from fusionnet_tf.segmentation import load_params

    start, stop = (int(v) for v in args.sections.split(":"))
    labels = tifffile.imread(args.labels)[start:stop, :args.crop, :args.crop].astype(np.int64)
    if args.pred:
        from fusionnet_tf.data.affinity_io import read_affinities

        affs, offsets = read_affinities(args.pred)
        affs = np.asarray(affs)[:, :, :args.crop, :args.crop]
        if affs.shape[1:] != labels.shape:
            raise SystemExit(f"--pred {args.pred}: {affs.shape[1:]} voxels, "
                             f"--labels sections {args.sections} crop {args.crop}: {labels.shape}")
    else:
        offsets = DEFAULT_OFFSETS_3D
        affs = degrade(affinities_from_labels(labels, offsets), args.blur, args.noise)
    base = load_params(args.params, AffinityParams).to_dict() if args.params else {}
    overrides = {k: json.loads(v) if v[:1] not in "abcdefghijklmnopqrstuvwxyz" else v
                 for k, _, v in (item.partition("=") for item in args.set)}
    for method in args.methods.split(","):
        params = AffinityParams(**{**base, "method": method, **overrides})
        timings = []
        for _ in range(max(1, args.repeats)):
            began, cpu = time.perf_counter(), time.process_time()
            segments, max_id = segment_affinities(affs, offsets, params, args.backend)
            timings.append((time.process_time() - cpu, time.perf_counter() - began))
        cpu, seconds = min(timings)
        scores = volume_scores(labels, segments)
        print(json.dumps({"method": method, "shape": list(labels.shape), "pred": args.pred,
                          "blur": None if args.pred else args.blur,
                          "noise": None if args.pred else args.noise, "segments": int(max_id),
                          "backend": args.backend if method == "mws" else None,
                          "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                          "voxels_per_second": round(labels.size / seconds),
                          "voxels_per_cpu_second": round(labels.size / cpu),
                          **{k: round(v, 4) for k, v in scores.items()},
                          "params": params.to_dict()}))


if __name__ == "__main__":
    main()
