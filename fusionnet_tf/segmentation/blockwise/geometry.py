"""Where blocks, halos and face slabs lie (pure index arithmetic on ``Block`` ranges).

The block grid itself is ``fusionnet_tf.volumes.geometry.block_grid``. Here:
the halo read around each block, the extended region it spans, the faces two
blocks share and the slab around each face that both blocks label.
"""

import math

import numpy as np

from fusionnet_tf.segmentation.blockwise.job import KINDS_3D

DEFAULT_HALO = 64
# z halo of the kinds segmented in 3D: the in-plane halo over the anisotropy, at least
# this many slices
MIN_HALO_Z = 2
# face slabs are this many voxels deep on each side of the face, where both blocks' labels
# have most context; on ISBI maps depths 1, 2 and 8 gave the same result, and thin slabs
# keep the face files small
MATCH_WIDTH = 2


def resolve_halo(halo, kind, anisotropy):
    """``(z, y, x)`` halo from an int (in-plane) or a 3-tuple.

    An int ``h`` gives ``(max(MIN_HALO_Z, ceil(h / anisotropy)), h, h)`` for
    the kinds segmented in 3D (``"3d"``, ``"affinities"``; see
    ``job.segmentation_kind``). Sections are segmented on their own otherwise,
    so the z halo is 0 for ``"2d"`` and ``"linked"``.

    Raises:
        ValueError: negative values, an in-plane halo < 1, or a z halo < 1 for
            a kind segmented in 3D (blocks could not be matched across their
            faces).
    """
    in_3d = kind in KINDS_3D
    if isinstance(halo, (int, np.integer)) and not isinstance(halo, bool):
        h = int(halo)
        hz = max(MIN_HALO_Z, math.ceil(h / anisotropy)) if in_3d else 0
        values = (hz, h, h)
    else:
        try:
            values = tuple(int(v) for v in halo)
        except (TypeError, ValueError):
            values = ()
        if len(values) != 3 or values != tuple(halo):
            raise ValueError(f"`halo` must be an int or three ints (Z, Y, X); received "
                             f"halo={halo!r}")
    if min(values[1:]) < 1 or values[0] < 0 or (in_3d and values[0] < 1):
        raise ValueError(f"`halo` must be >= 1 voxel in-plane (and along z in 3d mode) so that "
                         f"blocks can be matched across their faces; received halo={halo!r}")
    return values if in_3d else (0,) + values[1:]


def extended_region(block, halo, volume_shape):
    """The block grown by ``halo`` on each side, clipped to the volume: 3 ``(start, stop)``."""
    ranges = (block.z, block.y, block.x)
    return tuple((max(0, start - h), min(size, stop + h))
                 for (start, stop), h, size in zip(ranges, halo, volume_shape))


def inner_selection(block, region):
    """Selection of ``block`` inside its extended region ``region`` (local coords)."""
    return tuple(slice(start - r0, stop - r0)
                 for (start, stop), (r0, _) in zip((block.z, block.y, block.x), region))


def block_faces(block, job):
    """Faces of ``block`` that need matching: list of ``(axis, side, width)``.

    ``side`` is +1 for the face at the block's end along ``axis`` (shared
    with the next block), -1 for its start. ``width`` is the slab depth on
    each side of the face: ``min(MATCH_WIDTH, halo, this block's size, the
    neighbour's)``.
    z faces are matched only for the kinds segmented in 3D (``KINDS_3D``);
    otherwise sections are segmented on their own.
    """
    ranges = (block.z, block.y, block.x)
    faces = []
    for axis in ((0, 1, 2) if job.kind in KINDS_3D else (1, 2)):
        start, stop = ranges[axis]
        size, step = job.volume_shape[axis], job.block_shape[axis]
        for side, neighbour in ((-1, (start - step, start)), (1, (stop, min(stop + step, size)))):
            if neighbour[0] < 0 or neighbour[0] >= size:
                continue
            width = min(MATCH_WIDTH, job.halo[axis], stop - start, neighbour[1] - neighbour[0])
            faces.append((axis, side, width))
    return faces


def face_slab(block, axis, side, width, region):
    """Selection of a face slab inside the extended region ``region`` (local coords)."""
    ranges = (block.z, block.y, block.x)
    selection = []
    for current, ((start, stop), (r0, _)) in enumerate(zip(ranges, region)):
        if current == axis:
            face = stop if side > 0 else start
            selection.append(slice(face - width - r0, face + width - r0))
        else:
            selection.append(slice(start - r0, stop - r0))
    return tuple(selection)


def face_key(axis, side):
    """The name of a face slab in a block's face file, e.g. ``"1+"``."""
    return f"{axis}{'+' if side > 0 else '-'}"


def neighbour_pairs(blocks, job):
    """``(a, b, axis)`` for every pair of blocks sharing a face to match (a before b)."""
    by_index = {block.index: number for number, block in enumerate(blocks)}
    pairs = []
    for number, block in enumerate(blocks):
        for axis, side, _ in block_faces(block, job):
            if side < 0:
                continue
            index = list(block.index)
            index[axis] += 1
            pairs.append((number, by_index[tuple(index)], axis))
    return pairs
