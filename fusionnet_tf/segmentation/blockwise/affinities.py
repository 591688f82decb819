"""The affinity path of block-wise segmentation: open, check, read and segment affinities.

Affinities are ``(C, Z, Y, X)`` float32 in [0, 1] with ``"kind":
"affinities"`` and ``"offsets"`` metadata (``data.affinity_io``). Blocks
(segmentation kind ``"affinities"``) are read with a halo in z, y and x. With
the mutex watershed they are segmented by ``segment_affinities``, the
function of in-memory ``fusionnet segment``, and their ids stitched across
faces like those of ``3d`` mode; with agglomeration they are cut into its
fragments (``fragment_affinity_region``), agglomerated as one graph of the
volume by ``graph``. Reading and checking affinity input lives in this module.
"""

import numpy as np

from fusionnet_tf.data.readers import close_stack
from fusionnet_tf.volumes.executors import run_tasks


def open_affinity_input(input_spec):
    """``(shape (Z, Y, X), dtype, name, offsets)`` of an affinity file (``data.affinity_io``).

    Raises:
        As ``data.affinity_io.open_affinities`` (e.g. no offsets, or offsets
        not matching the channels).
    """
    from fusionnet_tf.data.affinity_io import open_affinities

    affs, offsets, name = open_affinities(input_spec)
    shape, dtype = tuple(int(n) for n in affs.shape[1:]), np.dtype(affs.dtype)
    close_stack(affs)
    return shape, dtype, name, tuple(offsets)


def affinity_range_task(input_spec, block):
    """Pass 0 task: ``(block, lowest, highest)`` affinity of ``block`` over all channels.

    NaN anywhere in the block makes both NaN.
    """
    from fusionnet_tf.data.affinity_io import open_affinities

    affs, _, _ = open_affinities(input_spec)
    try:
        data = np.asarray(affs[(slice(None), slice(*block.z), slice(*block.y),
                                slice(*block.x))])
    finally:
        close_stack(affs)
    if not np.isfinite(data).all():
        return block, np.nan, np.nan
    return block, float(data.min()), float(data.max())


def check_affinity_volume(input_spec, name, blocks, executor, progress=False):
    """Pass 0 for affinities: refuse NaN/inf or values outside [0, 1] (per-block extremes).

    Raises:
        ValueError: naming the input and the values found (the wording of
            ``data.affinity_io.check_affinities``).
    """
    results, failures = run_tasks(executor, affinity_range_task,
                                  [(input_spec, block) for block in blocks], progress,
                                  "segment-volume: check")
    if failures:
        raise failures[0][1]
    lows = np.array([result[1] for _, result in results], np.float64)
    highs = np.array([result[2] for _, result in results], np.float64)
    if not (np.isfinite(lows).all() and np.isfinite(highs).all()):
        raise ValueError(f"{name}: the affinities contain NaN or inf")
    if lows.min() < 0 or highs.max() > 1:
        raise ValueError(f"{name}: affinities must be in [0, 1]; received values in "
                         f"[{lows.min():g}, {highs.max():g}]")


def read_affinity_region(input_spec, region):
    """Read a region of an affinity file: (C, z, y, x) float32, every channel."""
    from fusionnet_tf.data.affinity_io import open_affinities

    affs, _, _ = open_affinities(input_spec)
    try:
        return np.asarray(affs[(slice(None),) + tuple(slice(*r) for r in region)], np.float32)
    finally:
        close_stack(affs)


def segment_affinity_region(affs, offsets, params):
    """Labels 1..K of a (C, z, y, x) float32 affinity region, as in-memory ``fusionnet segment``.

    Args:
        affs: (C, z, y, x) float32 affinities in [0, 1].
        offsets: C ``(dz, dy, dx)``.
        params: ``AffinityParams`` (agglomeration or mutex watershed).
    """
    from fusionnet_tf.segmentation.affinities import segment_affinities

    labels, _ = segment_affinities(affs, offsets, params)
    return labels


def fragment_affinity_region(affs, offsets, params):
    """Fragments of a (C, z, y, x) affinity region and where their seeds start.

    The fragments of in-memory agglomeration (``affinities.fragments``), for
    runs that agglomerate one graph of the whole volume
    (``job.agglomerates_globally``).

    Returns:
        ``(labels, seeds)``: int64 (z, y, x) fragment ids 1..K and int64
        (K + 1,) flat index into the region of each fragment's seed's first
        voxel (entry 0 is -1).
    """
    from fusionnet_tf.segmentation.affinities import fragments

    labels, _, seeds = fragments(affs, offsets, params, return_seeds=True)
    return labels, seeds
