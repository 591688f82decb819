"""Pass 1 of ``segment_volume``: segment each block with its halo, keep its inner labels.

Each block is segmented together with a halo (``segment_region``: the
membrane path or the affinity path, by the run's segmentation kind). Ids
inside the block become 1..k ("inner" ids), halo-only ids k+1.. . The inner
labels are written as one uint32 chunk of the work array, the labels of each
face slab are saved for pass 2, then the block's done-marker.
"""

import json
import time

import numpy as np

from fusionnet_tf.io.outputs import atomic_path
from fusionnet_tf.segmentation.blockwise.affinities import (fragment_affinity_region,
                                                            read_affinity_region,
                                                            segment_affinity_region)
from fusionnet_tf.segmentation.blockwise.geometry import (block_faces, extended_region,
                                                          face_key, face_slab, inner_selection)
from fusionnet_tf.segmentation.blockwise.job import AFFINITIES
from fusionnet_tf.segmentation.blockwise.membrane import (read_membrane_region,
                                                          segment_membrane_region)
from fusionnet_tf.segmentation.blockwise.store import write_block
from fusionnet_tf.volumes import storage
from fusionnet_tf.volumes.executors import worker_name


def segment_region(data, params, kind, offsets=None):
    """Labels 1..K of a region, by the segmentation ``kind`` of the run.

    Args:
        data: (z, y, x) float32 membrane map, or (C, z, y, x) affinities for
            ``kind == "affinities"``.
        params: ``SegmentParams`` or ``AffinityParams``.
        kind: ``"2d"``, ``"linked"``, ``"3d"`` or ``"affinities"``
            (``job.segmentation_kind``).
        offsets: C ``(dz, dy, dx)`` of the affinities, else None.

    Returns:
        int labels of the region's (z, y, x) shape; ids unique over sections.
    """
    if kind == AFFINITIES:
        return segment_affinity_region(data, offsets, params)
    return segment_membrane_region(data, params, kind)


def inner_first(labels, inner):
    """Renumber ``labels`` so ids inside ``inner`` are 1..k and halo-only ids k+1...

    Args:
        labels: int labels (>= 0) of the extended region.
        inner: selection of the block inside it.

    Returns:
        ``(local, k)``: uint32 labels of ``labels``' shape and k, the number of
        ids that occur inside the block (numbered in increasing old-id order).
    """
    table, count = inner_first_table(labels, inner)
    return table[labels].astype(np.uint32), count


def inner_first_table(labels, inner):
    """``inner_first``'s renumbering: ``(table, k)``, new id ``table[old]`` (0 for absent ids)."""
    table = np.zeros(int(labels.max()) + 1, np.int64)
    present = np.bincount(labels.ravel(), minlength=table.size) > 0
    in_block = np.bincount(labels[inner].ravel(), minlength=table.size) > 0
    halo_only = present & ~in_block
    count = int(in_block.sum())
    table[in_block] = np.arange(1, count + 1)
    table[halo_only] = np.arange(count + 1, count + 1 + int(halo_only.sum()))
    return table, count


def inner_seeds(seeds, table, count, region, volume_shape):
    """Where the seeds of a block's inner fragments start, as flat indices into the volume.

    Args:
        seeds: int64 (K + 1,) flat index into the region of each fragment's
            seed's first voxel (``fragment_affinity_region``).
        table, count: ``inner_first_table`` of the region's fragments.
        region: the extended region, 3 ``(start, stop)``.
        volume_shape: ``(Z, Y, X)``.

    Returns:
        int64 (count + 1,): entry ``i`` for inner id ``i`` (entry 0 is -1).
    """
    shape = tuple(stop - start for start, stop in region)
    old = np.flatnonzero((table >= 1) & (table <= count))
    where = np.unravel_index(seeds[old], shape)
    result = np.full(count + 1, -1, np.int64)
    result[table[old]] = np.ravel_multi_index(
        tuple(w + start for w, (start, _) in zip(where, region)), volume_shape)
    return result


def read_region(job, region):
    """The input of ``region`` (3 ``(start, stop)``): membrane map or affinities."""
    if job.kind == AFFINITIES:
        return read_affinity_region(job.input_spec, region)
    return read_membrane_region(job.input_spec, region)


def watershed_task(job, block, hook=None):
    """Pass 1 for one block: segment block + halo, save face slabs and inner labels, mark.

    With global agglomeration (``job.global_graph``) the block's labels are
    fragments, and the face file also holds ``seeds`` (``inner_seeds``).

    Returns:
        dict: ``index``, ``worker``, ``count`` (inner ids), ``seconds``,
        ``cpu_seconds`` (CPU time of this process), ``skipped`` (already done).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    info = {"index": block.index, "worker": worker_name(), "voxels": block.size}
    if storage.is_done(job.local_labels, block):
        return {**info, "skipped": True, "count": read_count(job, block), "seconds": 0.0,
                "cpu_seconds": 0.0}
    region = extended_region(block, job.halo, job.volume_shape)
    inner = inner_selection(block, region)
    if job.global_graph:  # fragments only; blockwise.graph agglomerates the volume's graph
        labels, seeds = fragment_affinity_region(read_region(job, region), job.offsets,
                                                 job.params)
    else:
        labels = segment_region(read_region(job, region), job.params, job.kind, job.offsets)
    table, count = inner_first_table(labels, inner)
    local = table[labels].astype(np.uint32)
    slabs = {face_key(axis, side): local[face_slab(block, axis, side, width, region)]
             for axis, side, width in block_faces(block, job)}
    if job.global_graph:
        slabs["seeds"] = inner_seeds(seeds, table, count, region, job.volume_shape)
    job.faces_file(block).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(job.faces_file(block)) as tmp:
        np.savez(tmp, count=np.int64(count), **slabs)
    write_block(job.local_labels, block, local[inner], hook, "watershed")
    seconds = time.perf_counter() - start
    storage.mark_done(job.local_labels, block, {"count": count, "worker": info["worker"],
                                                "seconds": round(seconds, 3)})
    return {**info, "skipped": False, "count": count, "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu_start}


def read_count(job, block):
    """The number of inner ids of a block finished in pass 1 (from its done-marker)."""
    return int(json.loads(storage.done_marker(job.local_labels, block).read_text())["count"])
