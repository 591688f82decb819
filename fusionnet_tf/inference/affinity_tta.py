"""Test-time augmentation for 3D affinity predictions (pure NumPy).

Transforms of a (Z, Y, X) volume: transform ``t`` (0-15) applies the in-plane
dihedral transform ``t % 8`` of ``fusionnet_tf.dihedral`` on the (Y, X) axes,
then, for ``t >= 8``, flips Z. ``TTA_TRANSFORMS_3D`` says which transforms each
``tta`` value averages: 1 (none), 2 (identity and z-flip), 4 (the in-plane
mirrorings of 2D TTA), 8 (all in-plane rotations and flips), 16 (those times
the z-flip).

Why affinities need more than the inverse transform: the network predicts, on
the transformed image, channel ``c`` = the affinity between voxel ``q`` and
``q + o_c``. Mapped back by the inverse transform (whose linear part is
``L``), that is the affinity of the original pair ``(p, p + L o_c)``. So

- if ``L o_c == o_d``, it is channel ``d`` at ``p`` (a channel permutation;
  e.g. a 90-degree rotation turns y offsets into x offsets);
- if ``L o_c == -o_d`` (a flip along an axis the offset has a component on),
  it is the pair ``(p - o_d, p)``, i.e. channel ``d`` at ``p - o_d``: the
  value for channel ``d`` at voxel ``p`` is read at ``p + o_d`` (with the
  negative-offset convention, the neighbour one offset over). Voxels for which
  ``p + o_d`` lies outside the tile get no value from that transform; they are
  averaged over the transforms that give one (the identity always does), not
  filled in. Such pairs leave the tile; pairs leaving the volume are masked
  out of training anyway.

A transform is allowed only if the offsets are closed under it: every mapped
offset ``L o_c`` must be an offset or the reverse of one (e.g. (0, -3, 0)
without (0, 0, -3) forbids 90-degree rotations).
"""

import numpy as np

# tta -> transform indices t (t % 8 = in-plane dihedral transform, t >= 8 = also flip Z)
from fusionnet_tf.checks import check_choice
from fusionnet_tf.choices import TTA_TRANSFORMS_3D, TTA_VALUES_3D  # noqa: F401 (re-exported)
from fusionnet_tf.dihedral import dihedral_np, inverse_dihedral_np


def transform_name(t):
    """Readable name of transform ``t``, e.g. ``"rot90"``, ``"rot180+flipX+flipZ"``."""
    k = int(t) % 8
    parts = [f"rot{90 * (k % 4)}"] if k % 4 else []
    parts += ["flipX"] if k >= 4 else []
    parts += ["flipZ"] if t >= 8 else []
    return "+".join(parts) or "identity"


def transform_np(x, t, axes=(-4, -3, -2)):
    """Apply transform ``t`` (0-15) to ``x`` over its (Z, Y, X) ``axes``.

    Args:
        x: array, e.g. (B, Z, Y, X, 1) with the default ``axes``.
        t: int in 0..15.
        axes: the (Z, Y, X) axes.

    Returns:
        Array; Y and X swap for odd in-plane quarter turns.
    """
    y = dihedral_np(x, int(t) % 8, axes=axes[1:])
    return np.flip(y, axis=axes[0]) if t >= 8 else y


def inverse_transform_np(x, t, axes=(-4, -3, -2)):
    """Undo ``transform_np(., t, axes)``."""
    if t >= 8:
        x = np.flip(x, axis=axes[0])
    return inverse_dihedral_np(x, int(t) % 8, axes=axes[1:])


def mapped_offset(offset, t):
    """``L offset``: where the inverse of transform ``t`` takes an offset (dz, dy, dx).

    Found by moving a single voxel with ``inverse_transform_np``, so it uses
    exactly the array operations that map the predictions back.

    Returns:
        tuple of 3 ints.
    """
    offset = tuple(int(v) for v in offset)
    radius = max(abs(v) for v in offset)
    side = 2 * radius + 1
    cube = np.zeros((side, side, side), np.uint8)
    cube[tuple(radius + v for v in offset)] = 1
    moved = np.argwhere(inverse_transform_np(cube, t, axes=(0, 1, 2)))[0]
    return tuple(int(v) - radius for v in moved)


def check_offsets(offsets, channels=None):
    """Validate a list of (dz, dy, dx) offsets; return it as a tuple of int tuples.

    Args:
        offsets: sequence of 3-int sequences, none all zero, no duplicates.
        channels: int or None. The model's output channels, which must match.

    Raises:
        ValueError: one line naming the bad value.
    """
    try:
        result = tuple(tuple(int(v) for v in o) for o in offsets)
    except (TypeError, ValueError):
        raise ValueError(f"`offsets` must be a list of (dz, dy, dx) int triples; received "
                         f"{offsets!r}") from None
    if not result or any(len(o) != 3 for o in result) or any(o == (0, 0, 0) for o in result):
        raise ValueError(f"`offsets` must be a non-empty list of non-zero (dz, dy, dx) int "
                         f"triples; received {offsets!r}")
    if len(set(result)) != len(result):
        raise ValueError(f"`offsets` holds duplicates; received {[list(o) for o in result]}")
    if channels is not None and len(result) != int(channels):
        raise ValueError(f"{len(result)} offsets do not match the model's {channels} output "
                         f"channels; received offsets={[list(o) for o in result]}")
    return result


def channel_map(offsets, t):
    """For each channel ``d``: the channel ``c`` of the transformed prediction and a shift flag.

    Args:
        offsets: tuple of (dz, dy, dx) int tuples (``check_offsets``).
        t: transform index 0..15.

    Returns:
        list of ``(c, reversed)`` per channel ``d``: the value of channel ``d``
        at ``p`` is the inverse-transformed channel ``c`` at ``p`` (reversed
        False, ``L o_c == o_d``) or at ``p + o_d`` (reversed True,
        ``L o_c == -o_d``).

    Raises:
        ValueError: the offsets are not closed under transform ``t``.
    """
    mapped = {}
    for c, offset in enumerate(offsets):
        target = mapped_offset(offset, t)
        reverse = tuple(-v for v in target)
        if target not in offsets and reverse not in offsets:
            raise ValueError(
                f"the offsets are not closed under TTA transform {transform_name(t)}: "
                f"{list(offset)} maps to {list(target)}, which is neither an offset nor the "
                "reverse of one; use a smaller --tta (e.g. 4 or 2) or add that offset")
        mapped[target] = c
    result = []
    for offset in offsets:
        if offset in mapped:
            result.append((mapped[offset], False))
        else:
            result.append((mapped[tuple(-v for v in offset)], True))
    return result


def check_tta_offsets(offsets, tta):
    """Raise ValueError unless ``tta`` is a 3D TTA value and ``offsets`` are closed under it."""
    check_choice("tta", tta, TTA_VALUES_3D, "for a 3D model")
    for t in TTA_TRANSFORMS_3D[tta]:
        channel_map(offsets, t)


def _shift_slices(shape, offset):
    """``(dst, src)`` slices with ``a[dst] = b[src]`` meaning ``a[p] = b[p + offset]``."""
    dst, src = [], []
    for n, s in zip(shape, offset):
        dst.append(slice(max(0, -s), min(n, n - s)))
        src.append(slice(max(0, s), min(n, n + s)))
    return tuple(dst), tuple(src)


def merge_affinity_tta(outputs, transforms, offsets):
    """Average affinity predictions of transformed tiles in the original frame.

    Args:
        outputs: sequence of (B, Z, Y, X, C) float32 network outputs, one per
            transform, each predicted on ``transform_np(tiles, t)``.
        transforms: the transform indices, in the order of ``outputs``.
        offsets: tuple of (dz, dy, dx) int tuples, C of them.

    Returns:
        (B, Z, Y, X, C) float32: per channel and voxel, the mean over the
        transforms that give a value there (see the module docstring).
    """
    total = count = None
    for output, t in zip(outputs, transforms):
        back = inverse_transform_np(np.asarray(output, np.float32), t)
        if total is None:
            total = np.zeros(back.shape, np.float32)
            count = np.zeros(back.shape[1:], np.float32)
        spatial = back.shape[1:4]
        for d, (c, reversed_) in enumerate(channel_map(offsets, t)):
            if not reversed_:
                total[..., d] += back[..., c]
                count[..., d] += 1
                continue
            dst, src = _shift_slices(spatial, offsets[d])
            total[(slice(None),) + dst + (d,)] += back[(slice(None),) + src + (c,)]
            count[dst + (d,)] += 1
    return total / count


__all__ = ["TTA_TRANSFORMS_3D", "TTA_VALUES_3D", "transform_np", "inverse_transform_np",
           "mapped_offset", "channel_map", "check_offsets", "check_tta_offsets",
           "merge_affinity_tta", "transform_name"]
