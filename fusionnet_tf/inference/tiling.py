"""Pure NumPy geometry of overlap-tile prediction.

Tiles are square (``tile`` x ``tile``). Along each axis the tile origins are
spaced evenly from 0 to ``size - tile``, so the first tile starts at the image
border and the last one ends exactly at the other border, and neighbouring
tiles overlap by at least ``overlap`` pixels. Interior origins can be snapped
to multiples of ``align`` (``2**depth`` for a network with ``depth`` pooling
levels), so those tiles see the pooling grid the whole image would see; the
last tile along an axis ends exactly at the border, so it shares that grid
only when the image size is a multiple of ``align``.

Overlapping tiles are blended with a smooth weight map that is largest at the
tile centre (Gaussian or cosine window). Zero weights are clamped to the
smallest positive weight so that the summed weights can never be zero.

Nothing here imports TensorFlow; ``tests/test_tiling.py`` tests it alone.
"""

import functools
import math

import numpy as np

from fusionnet_tf.checks import check_int
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
    ys = compute_steps(height, tile, overlap, align)
    xs = compute_steps(width, tile, overlap, align)
    return [(y, x) for y in ys for x in xs]


def padded_shape(height, width, tile):
    """Shape after reflect padding an image smaller than a tile.

    Images are padded at the bottom and right only, up to ``tile`` along each
    axis that is shorter; longer axes are unchanged.

    Returns:
        ``(max(height, tile), max(width, tile))``.
    """
    return max(int(height), tile), max(int(width), tile)


def pad_to_tile(image, tile):
    """Reflect-pad a 2D image at the bottom/right to at least ``tile`` x ``tile``.

    Args:
        image: (H, W) array.
        tile: int.

    Returns:
        (max(H, tile), max(W, tile)) array of the same dtype; ``image`` itself
        when no padding is needed. The top-left (H, W) block equals ``image``.
    """
    height, width = image.shape
    pad_h, pad_w = padded_shape(height, width, tile)
    if (pad_h, pad_w) == (height, width):
        return image
    mode = "reflect" if min(height, width) > 1 else "edge"
    return np.pad(image, ((0, pad_h - height), (0, pad_w - width)), mode=mode)


def _clamp_zeros(weights):
    weights = np.asarray(weights, np.float32)  # clamp after the cast: float32 underflows
    positive = weights[weights > 0]
    weights = np.where(weights > 0, weights, positive.min()).astype(np.float32)
    weights.setflags(write=False)
    return weights


def gaussian_weights(tile, sigma_scale=0.125):
    """Gaussian blend weights, 1 at the centre, sigma = ``sigma_scale * tile``.

    Returns:
        Read-only (tile, tile) float32 array, strictly positive, max 1.
    """
    centre = (tile - 1) / 2
    sigma = sigma_scale * tile
    axis = np.exp(-0.5 * ((np.arange(tile) - centre) / sigma) ** 2)
    return _clamp_zeros(np.outer(axis, axis))


def cosine_weights(tile):
    """Separable raised-cosine (Hann) window sampled at pixel centres.

    Returns:
        Read-only (tile, tile) float32 array, strictly positive, max <= 1.
    """
    axis = 0.5 - 0.5 * np.cos(2 * np.pi * (np.arange(tile) + 0.5) / tile)
    return _clamp_zeros(np.outer(axis, axis))


@functools.lru_cache(maxsize=16)
def blend_weights(tile, blending="gaussian"):
    """Cached blend weight map for one tile.

    Args:
        tile: int. Tile side.
        blending: ``"gaussian"`` (sigma = tile / 8), ``"cosine"`` or
            ``"constant"`` (plain averaging).

    Returns:
        Read-only (tile, tile) float32 array, strictly positive.

    Raises:
        ValueError: for an unknown ``blending``.
    """
    tile = check_int("tile", tile, 1)
    if blending == "gaussian":
        return gaussian_weights(tile)
    if blending == "cosine":
        return cosine_weights(tile)
    if blending == "constant":
        return _clamp_zeros(np.ones((tile, tile)))
    raise ValueError(f"`blending` must be one of {BLENDINGS}; received blending={blending!r}")
