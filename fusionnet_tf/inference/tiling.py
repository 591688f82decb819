"""Pure NumPy geometry of overlap-tile prediction, in 2D and N-D.

2D tiles are square (``tile`` x ``tile``); N-D tiles (3D models) have one
side per axis (``(tz, ty, tx)``), with overlap and alignment per axis. Along
each axis the tile origins are spaced evenly from 0 to ``size - tile``, so the first tile starts at the image
border and the last one ends exactly at the other border, and neighbouring
tiles overlap by at least ``overlap`` pixels. Interior origins can be snapped
to multiples of ``align`` (``2**depth`` for a network with ``depth`` pooling
levels), so those tiles see the pooling grid the whole image would see; the
last tile along an axis ends exactly at the border, so it shares that grid
only when the image size is a multiple of ``align``.

Overlapping tiles are blended with a smooth weight map that is largest at the
tile centre (Gaussian or cosine window; in N-D the outer product of one 1D
window per axis). Zero weights are clamped to the
smallest positive weight so that the summed weights can never be zero.

Nothing here imports TensorFlow; ``tests/test_tiling.py`` tests it alone.
"""

import dataclasses
import functools
import itertools
import math

import numpy as np

from fusionnet_tf.checks import check_choice, check_int
from fusionnet_tf.choices import BLENDINGS  # noqa: F401 (re-exported)


def check_tile_args(tile, overlap, align=1):
    """Validate tile size, overlap and alignment.

    Args:
        tile: int. Tile side in pixels; a multiple of ``align``.
        overlap: int. Minimum overlap of neighbouring tiles, in
            ``[0, tile - align]``.
        align: int. Tile origins (except the last) are multiples of it.

    Returns:
        ``(tile, overlap, align)`` as Python ints.

    Raises:
        ValueError: naming the bad argument and its value.
    """
    tile = check_int("tile", tile, 1)
    overlap = check_int("overlap", overlap, 0)
    align = check_int("align", align, 1)
    if tile % align:
        raise ValueError(
            f"`tile` must be a multiple of {align} (2**depth of the model); received tile={tile}"
        )
    if overlap > tile - align:
        raise ValueError(
            f"`overlap` must be at most tile - {align} = {tile - align} so that tiles "
            f"advance; received overlap={overlap} with tile={tile}"
        )
    return tile, overlap, align


def compute_steps(size, tile, overlap, align=1):
    """Origins of the tiles along one axis of length ``size``.

    The origins run from 0 to ``size - tile`` (the last tile ends at the
    border), consecutive origins differ by at most ``tile - overlap``, and all
    origins but the last are multiples of ``align``. The fewest tiles that
    satisfy this are used, spaced as evenly as the alignment allows.

    Args:
        size: int >= tile. Length of the (padded) axis.
        tile: int. Tile length.
        overlap: int. Minimum overlap between neighbours.
        align: int. Alignment of the origins (1 = none).

    Returns:
        Sorted list of int origins; ``[0]`` when ``size == tile``.

    Raises:
        ValueError: if ``size < tile`` (pad first, see ``padded_shape``) or the
            tile arguments are invalid.

    Example:
    >>> compute_steps(100, 32, 8)
    [0, 22, 45, 68]
    """
    tile, overlap, align = check_tile_args(tile, overlap, align)
    size = check_int("size", size, 1)
    if size < tile:
        raise ValueError(f"`size` must be >= tile={tile}; received size={size} (pad first)")
    last = size - tile
    if last == 0:
        return [0]
    max_step = tile - overlap
    count = math.ceil(last / max_step) + 1
    while True:
        ideal = np.linspace(0, last, count)
        origins = sorted({int(v) // align * align for v in ideal[:-1]} | {last})
        if max(np.diff(origins)) <= max_step:
            return origins
        count += 1


def tile_origins(height, width, tile, overlap, align=1):
    """Top-left corners of all tiles covering a (padded) ``height x width`` image.

    Args:
        height: int >= tile.
        width: int >= tile.
        tile, overlap, align: see ``compute_steps``.

    Returns:
        List of ``(y, x)`` int tuples in raster order (y outer, x inner).

    Example:
    >>> tile_origins(64, 96, 64, 16)
    [(0, 0), (0, 32)]
    """
    return tile_origins_nd((height, width), tile, overlap, align)


def per_axis(name, value, ndim):
    """``value`` as a tuple of ``ndim`` ints: an int is repeated, a sequence must have ``ndim``.

    Raises:
        ValueError: a sequence of another length, naming ``name``.
    """
    if isinstance(value, (tuple, list)):
        if len(value) != ndim:
            raise ValueError(f"`{name}` must be an int or {ndim} ints; received {name}={value!r}")
        return tuple(value)
    return (value,) * ndim


def tile_origins_nd(shape, tile, overlap, align=1):
    """Origins of all tiles covering a (padded) array of ``shape``, any number of axes.

    The grid is the product of ``compute_steps`` along each axis.

    Args:
        shape: sequence of ints, each >= the tile side along that axis.
        tile, overlap, align: an int (every axis) or one int per axis; see
            ``compute_steps``.

    Returns:
        List of int tuples (one coordinate per axis) in C order (last axis fastest).

    Example:
    >>> tile_origins_nd((8, 64, 96), (8, 64, 64), (0, 16, 16))
    [(0, 0, 0), (0, 0, 32)]
    """
    grid = TileGrid.of(shape, tile, overlap, align)
    if grid.padded_shape != grid.shape:
        raise ValueError(f"`shape` must be at least the tile {grid.tile} along each axis; "
                         f"received shape {grid.shape} (pad first)")
    return grid.origins


@dataclasses.dataclass(frozen=True)
class TileGrid:
    """The overlap-tile geometry of one image: its padding and where its tiles go.

    A value object: ``Predictor`` cuts images along it and block-wise volume
    prediction plans its calls with it, so both place the same tiles. Along
    each axis an image shorter than the tile is padded at the end to the tile
    (``pad_to_tile``); on the padded image the origins run from 0 to
    ``padded - tile`` (``compute_steps``).

    Attributes:
        shape: tuple of ints. Image shape before padding, (H, W) or (Z, Y, X).
        tile: tuple of ints. Tile side per axis.
        overlap: tuple of ints. Minimum overlap of neighbours per axis, in
            ``[0, tile - align]``.
        align: tuple of ints. Origins but the last along an axis are multiples of it.

    Example:
    >>> grid = TileGrid.of((512, 512), 256, 32, align=16)
    >>> grid.steps, len(grid)
    (((0, 128, 256), (0, 128, 256)), 9)
    """

    shape: tuple
    tile: tuple
    overlap: tuple
    align: tuple

    @classmethod
    def of(cls, shape, tile, overlap, align=1):
        """Validated grid; ``tile``, ``overlap`` and ``align`` are ints or one per axis.

        Raises:
            ValueError: a bad size, tile, overlap or alignment, naming it.
        """
        ndim = len(shape)
        shape = tuple(check_int("shape", n, 1) for n in shape)
        sides = [check_tile_args(t, o, a) for t, o, a in zip(
            per_axis("tile", tile, ndim), per_axis("overlap", overlap, ndim),
            per_axis("align", align, ndim))]
        return cls(shape, *(tuple(side[i] for side in sides) for i in range(3)))

    @property
    def padded_shape(self):
        """Shape after padding: ``max(size, tile)`` per axis."""
        return padded_shape_nd(self.shape, self.tile)

    @property
    def padding(self):
        """``((0, after), ...)`` per axis: the ``np.pad`` widths of ``pad_to_tile``."""
        return tuple((0, p - n) for n, p in zip(self.shape, self.padded_shape))

    @functools.cached_property
    def steps(self):
        """Tile origins along each axis: a tuple of int tuples."""
        return tuple(tuple(compute_steps(size, t, o, a)) for size, t, o, a in
                     zip(self.padded_shape, self.tile, self.overlap, self.align))

    @property
    def strides(self):
        """Distances between consecutive origins along each axis (empty for one tile)."""
        return tuple(tuple(b - a for a, b in zip(s, s[1:])) for s in self.steps)

    @property
    def counts(self):
        """Tiles along each axis."""
        return tuple(len(s) for s in self.steps)

    @property
    def origins(self):
        """All origins in C order (last axis fastest): a list of int tuples."""
        return [tuple(origin) for origin in itertools.product(*self.steps)]

    def __len__(self):
        return math.prod(self.counts)

    def window(self, origin):
        """The slices of the tile at ``origin``, one per axis."""
        return tuple(slice(o, o + t) for o, t in zip(origin, self.tile))


def padded_shape(height, width, tile):
    """Shape after reflect padding an image smaller than a tile.

    Images are padded at the bottom and right only, up to ``tile`` along each
    axis that is shorter; longer axes are unchanged.

    Returns:
        ``(max(height, tile), max(width, tile))``.
    """
    return padded_shape_nd((height, width), tile)


def padded_shape_nd(shape, tile):
    """``shape`` with every axis shorter than the tile grown to it (int or one per axis)."""
    return tuple(max(int(n), int(t)) for n, t in zip(shape, per_axis("tile", tile, len(shape))))


def pad_to_tile(image, tile):
    """Reflect-pad an array at the end of each axis to at least the tile size.

    Args:
        image: (H, W) array, or any N-D array with a per-axis ``tile``.
        tile: int (every axis) or one int per axis.

    Returns:
        Array of shape ``padded_shape_nd(image.shape, tile)`` and the same
        dtype; ``image`` itself when no padding is needed. The leading block
        of ``image.shape`` equals ``image``. Reflect padding, or edge padding
        (repeat the last row/section) when any axis has a single element.
    """
    padded = padded_shape_nd(image.shape, tile)
    if padded == tuple(image.shape):
        return image
    mode = "reflect" if min(image.shape) > 1 else "edge"
    return np.pad(image, [(0, p - n) for n, p in zip(image.shape, padded)], mode=mode)


def _clamp_zeros(weights):
    weights = np.asarray(weights, np.float32)  # clamp after the cast: float32 underflows
    positive = weights[weights > 0]
    weights = np.where(weights > 0, weights, positive.min()).astype(np.float32)
    weights.setflags(write=False)
    return weights


def _gaussian_axis(tile, sigma_scale=0.125):
    centre = (tile - 1) / 2
    sigma = sigma_scale * tile
    return np.exp(-0.5 * ((np.arange(tile) - centre) / sigma) ** 2)


def _cosine_axis(tile):
    return 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(tile) + 0.5) / tile)


def _sides(tile):
    """Tile sides: an int is a square 2D tile, a sequence gives one side per axis."""
    return tuple(tile) if isinstance(tile, (tuple, list)) else (tile, tile)


def _outer(axes):
    """Outer product of 1D windows: an array with one axis per window (float64)."""
    return functools.reduce(np.multiply.outer, axes)


def gaussian_weights(tile, sigma_scale=0.125):
    """Gaussian blend weights, 1 at the centre, sigma = ``sigma_scale * tile`` per axis.

    Args:
        tile: int (a square (tile, tile) map) or one int per axis.

    Returns:
        Read-only float32 array of the tile's shape, strictly positive, max 1.
    """
    return _clamp_zeros(_outer([_gaussian_axis(t, sigma_scale) for t in _sides(tile)]))


def cosine_weights(tile):
    """Separable raised-cosine (Hann) window sampled at pixel centres.

    Args:
        tile: int (a square (tile, tile) map) or one int per axis.

    Returns:
        Read-only float32 array of the tile's shape, strictly positive, max <= 1.
    """
    return _clamp_zeros(_outer([_cosine_axis(t) for t in _sides(tile)]))


@functools.lru_cache(maxsize=16)
def blend_weights(tile, blending="gaussian"):
    """Cached blend weight map for one tile.

    Args:
        tile: int (a square 2D tile) or a tuple of ints, one per axis (e.g.
            ``(tz, ty, tx)``): the map is the outer product of one 1D window
            per axis.
        blending: ``"gaussian"`` (sigma = side / 8 per axis), ``"cosine"`` or
            ``"constant"`` (plain averaging).

    Returns:
        Read-only float32 array of shape (tile, tile) or ``tile``, strictly positive.

    Raises:
        ValueError: for an unknown ``blending``.
    """
    sides = tuple(check_int("tile", t, 1) for t in _sides(tile))
    check_choice("blending", blending, BLENDINGS)
    if blending == "gaussian":
        return gaussian_weights(sides)
    if blending == "cosine":
        return cosine_weights(sides)
    return _clamp_zeros(np.ones(sides))  # "constant"
