"""Affinity targets from 3D instance labels, and instance-label readers.

Conventions (shared with inference and agglomeration, issue 22):

- an offset is ``(dz, dy, dx)``; affinity channel ``c`` at voxel ``p`` is 1
  iff ``labels[p] == labels[p + offsets[c]]`` and ``labels[p] != 0``, else 0;
- the mask channel ``c`` at ``p`` is 1 iff ``p + offsets[c]`` lies inside
  the volume (pairs leaving the volume are left out of the loss);
- NumPy arrays are (C, Z, Y, X) float32; the TensorFlow version used inside
  ``tf.data`` returns channels-last (Z, Y, X, C), the Keras layout.

Example:
>>> labels = read_instance_labels("ac4-z00-74-labels.tif")   # (75, 1024, 1024) uint16
>>> affs, mask = affinity_targets(labels[:8, :64, :64])        # (10, 8, 64, 64) float32 each
"""

import numpy as np

DEFAULT_OFFSETS_3D = ((-1, 0, 0), (0, -1, 0), (0, 0, -1), (-2, 0, 0), (0, -3, 0), (0, 0, -3),
                      (0, -9, 0), (0, 0, -9), (0, -27, 0), (0, 0, -27))
DEFAULT_OFFSETS_2D = tuple(offset for offset in DEFAULT_OFFSETS_3D if offset[0] == 0)


def check_offsets(offsets, name="offsets"):
    """Return ``offsets`` as a tuple of (dz, dy, dx) int tuples.

    Raises:
        ValueError: empty, not triples of ints, or a (0, 0, 0) offset.
    """
    try:
        result = tuple(tuple(int(v) for v in offset) for offset in offsets)
        ok = all(len(offset) == 3 for offset in result) and all(
            float(v) == int(v) for offset in offsets for v in offset)
    except (TypeError, ValueError):
        ok = False
    if not ok or not result:
        raise ValueError(f"`{name}` must be a non-empty list of (dz, dy, dx) integer triples; "
                         f"received {name}={offsets!r}")
    if (0, 0, 0) in result:
        raise ValueError(f"`{name}` must not contain (0, 0, 0); received {name}={offsets!r}")
    return result


def _pair_slices(offset, shape):
    """(slices of p, slices of p + offset) over the voxels whose neighbour is inside."""
    here, there = [], []
    for d, n in zip(offset, shape):
        lo, hi = max(0, -d), min(n, n - d)
        if hi <= lo:
            return None
        here.append(slice(lo, hi))
        there.append(slice(lo + d, hi + d))
    return tuple(here), tuple(there)


def affinity_mask(shape, offsets=DEFAULT_OFFSETS_3D):
    """The mask of ``affinity_targets`` for a (Z, Y, X) ``shape``: (C, Z, Y, X) float32."""
    offsets = check_offsets(offsets)
    mask = np.zeros((len(offsets), *shape), np.float32)
    for c, offset in enumerate(offsets):
        pair = _pair_slices(offset, shape)
        if pair is not None:
            mask[(c, *pair[0])] = 1.0
    return mask


def affinity_targets(labels, offsets=DEFAULT_OFFSETS_3D):
    """Affinity targets and loss mask of an instance-label volume.

    Args:
        labels: integer array (Z, Y, X) of instance ids (any integer dtype;
            0 = boundary / unlabelled, affinity 0 to everything). A 2D (Y, X)
            array is taken as one section.
        offsets: sequence of (dz, dy, dx) int triples. Defaults to
            ``DEFAULT_OFFSETS_3D``.

    Returns:
        ``(affs, mask)``, both float32 (C, Z, Y, X): ``affs[c, p] = 1`` iff
        ``labels[p] == labels[p + offsets[c]] != 0``; ``mask[c, p] = 1`` iff
        ``p + offsets[c]`` is inside the volume (affs is 0 where mask is 0).

    Raises:
        ValueError: non-integer labels, not 2D/3D, bad offsets.
    """
    labels = np.asarray(labels)
    if labels.ndim == 2:
        labels = labels[None]
    if labels.ndim != 3 or labels.dtype.kind not in "ui":
        raise ValueError("`labels` must be an integer (Z, Y, X) volume of instance ids; received "
                         f"an array of shape {labels.shape} and dtype {labels.dtype}")
    offsets = check_offsets(offsets)
    affs = np.zeros((len(offsets), *labels.shape), np.float32)
    for c, offset in enumerate(offsets):
        pair = _pair_slices(offset, labels.shape)
        if pair is None:
            continue
        here, there = labels[pair[0]], labels[pair[1]]
        affs[(c, *pair[0])] = (here == there) & (here != 0)
    return affs, affinity_mask(labels.shape, offsets)


def affinity_targets_tf(labels, offsets=DEFAULT_OFFSETS_3D):
    """``affinity_targets`` in TensorFlow ops, channels last (for ``tf.data`` maps).

    Args:
        labels: int32/int64 tensor (Z, Y, X) with a static shape.
        offsets: sequence of (dz, dy, dx) int triples.

    Returns:
        ``(affs, mask)``: float32 tensors (Z, Y, X, C), equal to
        ``np.moveaxis(affinity_targets(labels, offsets)[i], 0, -1)``.
    """
    import tensorflow as tf

    offsets = check_offsets(offsets)
    shape = tuple(labels.shape.as_list())
    if len(shape) != 3 or None in shape:
        raise ValueError(f"`labels` must have a static (Z, Y, X) shape; received {labels.shape}")
    channels = []
    for offset in offsets:
        pair = _pair_slices(offset, shape)
        if pair is None:
            channels.append(tf.zeros(shape, tf.float32))
            continue
        here, there = labels[pair[0]], labels[pair[1]]
        same = tf.cast(tf.logical_and(tf.equal(here, there), tf.not_equal(here, 0)), tf.float32)
        padding = [[s.start, n - s.stop] for s, n in zip(pair[0], shape)]
        channels.append(tf.pad(same, padding))
    mask = np.moveaxis(affinity_mask(shape, offsets), 0, -1)
    return tf.stack(channels, axis=-1), tf.constant(mask)


# ---------------------------------------------------------------- readers


def read_instance_labels(spec):
    """Read a 3D instance-label volume, ids kept as stored (no binarization).

    Args:
        spec: a ``.tif`` stack, ``file.h5:/key``, ``volume.zarr`` or
            ``volume.zarr:/key``, a folder of slices, or an ndarray.

    Returns:
        np.ndarray (Z, Y, X) of an integer dtype (uint8/16/32/64, int*), as stored.

    Raises:
        FileNotFoundError: missing file.
        ValueError: float or boolean ids, not 2D/3D, unknown format.
    """
    from fusionnet_tf.data.readers import read_stack

    labels = read_stack(spec)
    if labels.dtype.kind not in "ui":
        raise ValueError(f"{spec if not isinstance(spec, np.ndarray) else 'labels'}: instance "
                         f"labels must have an integer dtype; received {labels.dtype}")
    return labels
