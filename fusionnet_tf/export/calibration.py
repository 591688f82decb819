"""Calibration tiles for int8 quantization, and a synthetic EM-like generator.

Full-integer int8 needs a representative dataset: tiles drawn from real EM
slices (``representative_tiles``). ``synthetic_membranes`` draws structured
membrane-like images (Voronoi cells with dark boundaries) for tests and
benchmarks when no EM data is at hand.
"""

import numpy as np


def representative_tiles(images, tile_size, count=32, seed=0):
    """Random ``tile_size`` crops from normalized slices.

    Args:
        images: (N, H, W) or (H, W) float32 in [0, 1] (per-slice normalized),
            H and W >= ``tile_size``.
        tile_size: int. Crop side.
        count: int. Number of crops. Defaults to 32.
        seed: int. Random seed. Defaults to 0.

    Returns:
        (count, tile_size, tile_size) float32 array.

    Raises:
        ValueError: if the slices are smaller than ``tile_size`` or ``images``
            is not 2D/3D.
    """
    images = np.asarray(images, np.float32)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3:
        raise ValueError(f"`images` must be (N, H, W) or (H, W); received shape {images.shape}")
    n, height, width = images.shape
    if height < tile_size or width < tile_size:
        raise ValueError(f"calibration slices of {height}x{width} are smaller than "
                         f"tile_size={tile_size}")
    rng = np.random.default_rng(seed)
    tiles = np.empty((count, tile_size, tile_size), np.float32)
    for i in range(count):
        k = rng.integers(n)
        y = rng.integers(height - tile_size + 1)
        x = rng.integers(width - tile_size + 1)
        tiles[i] = images[k, y:y + tile_size, x:x + tile_size]
    return tiles


def _blur(image, passes=2):
    """Cheap separable [1, 2, 1] / 4 blur with reflect borders."""
    for _ in range(passes):
        for axis in (0, 1):
            padded = np.pad(image, [(1, 1) if a == axis else (0, 0) for a in (0, 1)],
                            mode="reflect")
            lo = np.take(padded, range(0, image.shape[axis]), axis=axis)
            mid = np.take(padded, range(1, image.shape[axis] + 1), axis=axis)
            hi = np.take(padded, range(2, image.shape[axis] + 2), axis=axis)
            image = (lo + 2 * mid + hi) / 4
    return image


def synthetic_membranes(count, size, cells=12, width=1.5, seed=0):
    """Synthetic EM-like slices: bright textured cells with dark membranes.

    Membranes are the Voronoi boundaries of ``cells`` random seeds (pixels
    whose nearest and second-nearest seeds are within ``width`` pixels).

    Args:
        count: int. Number of slices.
        size: int. Side of each square slice.
        cells: int. Voronoi seeds per slice. Defaults to 12.
        width: float. Membrane half-width in pixels. Defaults to 1.5.
        seed: int. Random seed.

    Returns:
        ``(images, labels)``: (count, size, size) float32 in [0, 1] (already
        per-slice min-max normalized) and (count, size, size) uint8 {0, 1},
        1 = membrane.

    Example:
    >>> images, labels = synthetic_membranes(4, 64)
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = np.empty((count, size, size), np.float32)
    labels = np.empty((count, size, size), np.uint8)
    for i in range(count):
        points = rng.uniform(0, size, (cells, 2)).astype(np.float32)
        distance = np.sqrt((yy[..., None] - points[:, 0]) ** 2
                           + (xx[..., None] - points[:, 1]) ** 2)
        nearest = np.sort(distance, axis=-1)[..., :2]
        membrane = (nearest[..., 1] - nearest[..., 0]) < 2 * width
        brightness = rng.uniform(0.55, 0.9, cells)[np.argmin(distance, axis=-1)]
        image = np.where(membrane, 0.15, brightness) + rng.normal(0, 0.06, (size, size))
        image = _blur(image, passes=1)
        image = (image - image.min()) / max(image.max() - image.min(), 1e-6)
        images[i] = image.astype(np.float32)
        labels[i] = membrane
    return images, labels
