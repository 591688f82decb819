"""Pure block geometry for block-wise volume prediction (NumPy only).

A volume ``(Z, Y, X)`` is cut into output *blocks* of ``(block_z, block_y,
block_x)`` voxels; the last block along each axis may be smaller. Each 2D slice
is predicted on the Predictor's GLOBAL tile grid (``Predictor.tile_origins``),
and a block is computed from exactly the global tiles that overlap it. So a
voxel receives the same tiles, weights and predictions whichever block it falls
in, and block borders are invisible by construction. The input *region* a
block reads is the union of those tiles: the block plus a halo of at least one
tile minus the step, derived here from the grid rather than from ``overlap``.

Coordinates: tile origins are in the coordinates of the slice after the
Predictor's reflect padding (which only happens for slices smaller than a
tile); ``pad_before`` converts between padded and original coordinates.
"""

import dataclasses
import itertools

import numpy as np


@dataclasses.dataclass(frozen=True)
class Block:
    """One output block: half-open voxel ranges and its grid index.

    Attributes:
        index: ``(iz, iy, ix)`` position in the block grid.
        z, y, x: ``(start, stop)`` half-open ranges in volume coordinates.
    """

    index: tuple
    z: tuple
    y: tuple
    x: tuple

    @property
    def shape(self):
        """``(depth, height, width)`` of the block in voxels."""
        return (self.z[1] - self.z[0], self.y[1] - self.y[0], self.x[1] - self.x[0])

    @property
    def size(self):
        """Number of voxels in the block."""
        return int(np.prod(self.shape))

    @property
    def name(self):
        """Stable text id, e.g. ``"0.2.1"``; used for done-markers and task keys."""
        return ".".join(str(i) for i in self.index)


def check_block_shape(block_shape):
    """Validate ``(block_z, block_y, block_x)``; returns it as a tuple of ints.

    Raises:
        ValueError: if it is not three positive integers.
    """
    try:
        values = tuple(int(v) for v in block_shape)
    except (TypeError, ValueError):
        raise ValueError(f"`block_shape` must be three positive integers (Z, Y, X); "
                         f"received block_shape={block_shape!r}") from None
    if len(values) != 3 or min(values) < 1 or values != tuple(block_shape):
        raise ValueError(f"`block_shape` must be three positive integers (Z, Y, X); "
                         f"received block_shape={block_shape!r}")
    return values


def _axis_ranges(size, step):
    """Half-open ``(start, stop)`` ranges of length ``step`` covering ``[0, size)``."""
    return [(start, min(start + step, size)) for start in range(0, size, step)]


def block_grid(volume_shape, block_shape):
    """All blocks of a volume, in C order of their index.

    Args:
        volume_shape: ``(Z, Y, X)`` ints.
        block_shape: ``(block_z, block_y, block_x)`` positive ints.

    Returns:
        list of ``Block``; they tile the volume exactly (no gaps, no overlap).

    Raises:
        ValueError: for a bad ``block_shape`` or a volume shape that is not 3D.

    Example:
    >>> [b.y for b in block_grid((1, 300, 100), (1, 128, 128))]
    [(0, 128), (128, 256), (256, 300)]
    """
    block_shape = check_block_shape(block_shape)
    if len(volume_shape) != 3 or min(volume_shape) < 1:
        raise ValueError(f"`volume_shape` must be (Z, Y, X) with positive sizes; "
                         f"received volume_shape={tuple(volume_shape)!r}")
    per_axis = [_axis_ranges(int(n), b) for n, b in zip(volume_shape, block_shape)]
    blocks = []
    for (iz, z), (iy, y), (ix, x) in itertools.product(*(list(enumerate(r)) for r in per_axis)):
        blocks.append(Block(index=(iz, iy, ix), z=z, y=y, x=x))
    return blocks


def tiles_for_block(origins, tile_size, y_range, x_range, pad_before=(0, 0)):
    """Global tiles that overlap a block's (y, x) extent.

    Args:
        origins: sequence of ``(y, x)`` tile origins in padded coordinates (the
            Predictor's ``tile_origins(height, width)``).
        tile_size: int, the square tile side T.
        y_range, x_range: ``(start, stop)`` of the block in original coordinates.
        pad_before: ``(pad_y, pad_x)`` reflect padding the Predictor adds before
            row/column 0 (0 unless the slice is smaller than a tile).

    Returns:
        list of ``(y, x)`` origins (padded coordinates), in the order given.
    """
    y0, y1 = y_range[0] + pad_before[0], y_range[1] + pad_before[0]
    x0, x1 = x_range[0] + pad_before[1], x_range[1] + pad_before[1]
    return [(int(oy), int(ox)) for oy, ox in origins
            if oy < y1 and oy + tile_size > y0 and ox < x1 and ox + tile_size > x0]


def tiles_region(tiles, tile_size):
    """Bounding box ``((y0, y1), (x0, x1))`` of a non-empty list of tiles (padded coords)."""
    if not tiles:
        raise ValueError("`tiles` is empty: no tile overlaps the block")
    ys = [oy for oy, _ in tiles]
    xs = [ox for _, ox in tiles]
    return (min(ys), max(ys) + tile_size), (min(xs), max(xs) + tile_size)


def halo(origins, tile_size, volume_shape, block_shape, pad_before=(0, 0)):
    """Largest distance by which a block's input region extends past the block.

    Computed per axis from the grid (tile origins form a (y, x) product), for
    reporting and to check that the halo is at least one tile minus the step.

    Args:
        origins: ``(y, x)`` tile origins (padded coordinates).
        tile_size: int T.
        volume_shape: ``(Z, Y, X)``.
        block_shape: ``(block_z, block_y, block_x)``.
        pad_before: ``(pad_y, pad_x)``, see ``tiles_for_block``.

    Returns:
        ``(halo_y, halo_x)`` in voxels.
    """
    result = []
    for axis in (0, 1):
        starts = sorted({int(origin[axis]) for origin in origins})
        size, block, pad = volume_shape[axis + 1], block_shape[axis + 1], pad_before[axis]
        worst = 0
        for b0, b1 in _axis_ranges(int(size), int(block)):
            used = [s for s in starts if s < b1 + pad and s + tile_size > b0 + pad]
            worst = max(worst, b0 + pad - used[0], used[-1] + tile_size - b1 - pad)
        result.append(worst)
    return tuple(result)
