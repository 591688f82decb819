"""Checking block-wise results against in-memory segmentation: seams along block faces."""

import numpy as np


def seam_splits(reference, labels, block_shape):
    """Segments split *only* along block faces: the seams block-wise work can cause.

    A pair of ids ``(u, v)`` of ``labels`` is a seam split when some two
    neighbouring voxels on either side of a block face have the same
    ``reference`` id but labels ``u`` and ``v``, and ``u`` and ``v`` never
    touch inside a block (no two neighbouring voxels of one block carry
    ``u`` and ``v``). If ``u`` and ``v`` also touch inside a block, the
    reference cell is split there anyway (a segmentation difference, counted
    by the adapted Rand error), not by the block border.

    Args:
        reference: (Z, Y, X) int labels, e.g. in-memory ``segment``.
        labels: (Z, Y, X) int labels of the same shape, e.g. ``segment_volume``.
        block_shape: ``(block_z, block_y, block_x)`` of ``labels``' blocks.

    Returns:
        sorted list of ``(u, v, voxel_pairs)`` with ``u < v``: the seam splits
        and how many neighbouring voxel pairs across faces show each.
    """
    reference, labels = np.asarray(reference), np.asarray(labels).astype(np.int64)
    across, inside = {}, set()
    for axis in range(3):
        first = [slice(None)] * 3
        second = [slice(None)] * 3
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        u, v = labels[tuple(first)], labels[tuple(second)]
        same = reference[tuple(first)] == reference[tuple(second)]
        # the pair (i, i + 1) along ``axis`` straddles a face when i + 1 is a block start
        shape = [1, 1, 1]
        shape[axis] = labels.shape[axis] - 1
        on_face = ((np.arange(1, labels.shape[axis]) % block_shape[axis]) == 0).reshape(shape)
        differ = u != v
        low, high = np.minimum(u, v), np.maximum(u, v)
        inside.update(zip(low[differ & ~on_face].tolist(), high[differ & ~on_face].tolist()))
        split = differ & on_face & same
        for pair in zip(low[split].tolist(), high[split].tolist()):
            across[pair] = across.get(pair, 0) + 1
    return sorted((u, v, count) for (u, v), count in across.items() if (u, v) not in inside)
