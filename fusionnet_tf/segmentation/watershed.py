"""Seeded watershed on a membrane probability map (2D slice or 3D volume).

Seeds come from low-probability regions (``seed_method="threshold"``) or from
maxima of the distance transform of the thresholded interior
(``"distance"``, the distance-transform watershed of elf/plantseg, Beier et
al. 2017, https://doi.org/10.1038/nmeth.4151). The (optionally smoothed)
membrane map is then flooded from the seeds with scikit-image's watershed, so
every pixel ends up in a segment. SciPy does the smoothing and distance
transforms, scikit-image the flooding: the module adds only the recipe.

All functions take 2D ``(H, W)`` or 3D ``(Z, H, W)`` arrays; in 3D,
``sampling`` gives the voxel size per axis (e.g. ``(12.5, 1, 1)`` for ISBI's
50 nm sections at 4 nm pixels) and neighbourhoods are 6-connected.
"""

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed


def smooth(membrane, sigma, sampling=None):
    """Gaussian-smoothed membrane map.

    Args:
        membrane: (H, W) or (Z, H, W) float32 membrane probability in [0, 1].
        sigma: float >= 0, in-plane pixels; 0 returns the input unchanged.
        sampling: per-axis voxel size or None (isotropic); sigma along an
            axis is ``sigma / sampling[axis]``.

    Returns:
        float32 array of the input's shape.
    """
    if sigma <= 0:
        return np.asarray(membrane, np.float32)
    sigmas = sigma if sampling is None else tuple(sigma / s for s in sampling)
    return ndimage.gaussian_filter(np.asarray(membrane, np.float32), sigmas, mode="reflect")


def threshold_seeds(membrane, threshold, min_size=0):
    """Seeds = connected regions (4-/6-connected) where ``membrane < threshold``.

    Args:
        membrane: (H, W) or (Z, H, W) float membrane map.
        threshold: float; pixels below it may seed.
        min_size: int; components with fewer pixels are dropped.

    Returns:
        ``(seeds, count)``: int32 labels 1..count (0 = no seed) and count.
    """
    seeds, _ = ndimage.label(membrane < threshold)
    return _drop_small(seeds, min_size)


def distance_seeds(membrane, threshold, min_distance, sampling=None):
    """Seeds = maxima of the distance transform of ``membrane < threshold``.

    The distance map (in in-plane pixels, scaled by ``sampling`` along z) is
    smoothed with sigma ``min_distance / 4`` so that one cell gives one
    maximum; maxima closer than ``min_distance`` are suppressed. Each seed is
    one pixel (or the connected plateau of a maximum).

    Args:
        membrane: (H, W) or (Z, H, W) float membrane map.
        threshold: float; the interior is ``membrane < threshold``.
        min_distance: float >= 0, pixels.
        sampling: per-axis voxel size or None.

    Returns:
        ``(seeds, count)`` as ``threshold_seeds``.
    """
    interior = membrane < threshold
    distance = ndimage.distance_transform_edt(interior, sampling=sampling).astype(np.float32)
    if min_distance > 0:
        distance = smooth(distance, min_distance / 4.0, sampling)
    footprint_radius = max(1, int(round(min_distance)))
    peaks = peak_local_max(distance, min_distance=footprint_radius, labels=interior.astype(np.int32),
                           exclude_border=False)
    marker = np.zeros(membrane.shape, bool)
    marker[tuple(peaks.T)] = True
    seeds, count = ndimage.label(marker)
    return seeds.astype(np.int32), int(count)


def _drop_small(seeds, min_size):
    """Remove components smaller than ``min_size`` and number the rest 1..K."""
    seeds = seeds.astype(np.int32)
    if min_size > 1 and seeds.max() > 0:
        sizes = np.bincount(seeds.ravel())
        small = sizes < min_size
        small[0] = False
        seeds[small[seeds]] = 0
    return relabel_consecutive(seeds)


def relabel_consecutive(labels):
    """Renumber the nonzero labels 1..K in increasing order of their ids; 0 stays 0.

    Args:
        labels: int array of any shape with non-negative ids.

    Returns:
        ``(relabelled, K)``: int32 array (int64 if K does not fit) and K.
    """
    labels = np.asarray(labels)
    flat = labels.ravel()
    if flat.size and int(flat.max()) <= 4 * flat.size:  # ids are dense: a lookup table
        present = np.bincount(flat) > 0
        present[0] = False
        table = np.cumsum(present)
        table[0] = 0
        count = int(table[-1])
        new_flat = table[flat]
    else:
        ids, new_flat = np.unique(flat, return_inverse=True)
        has_zero = bool(ids.size) and ids[0] == 0
        count = int(ids.size - has_zero)
        new_flat = new_flat + (0 if has_zero else 1)
    dtype = np.int32 if count < 2**31 - 1 else np.int64
    return new_flat.astype(dtype).reshape(labels.shape), count


def seeded_watershed(membrane, params, sampling=None):
    """Over-segmentation: seeds flooded on the smoothed membrane map.

    Args:
        membrane: (H, W) or (Z, H, W) float32 membrane probability in [0, 1].
        params: ``SegmentParams`` (``sigma``, ``seed_method``,
            ``seed_threshold``, ``seed_distance``, ``min_seed_size``).
        sampling: per-axis voxel size (3D) or None.

    Returns:
        ``(labels, count)``: int32 labels 1..count covering every pixel, and
        ``smoothed``, the map that was flooded (float32), as a tuple
        ``(labels, count, smoothed)``. An image without any seed is one
        segment.
    """
    smoothed = smooth(membrane, params.sigma, sampling)
    if params.seed_method == "distance":
        seeds, count = distance_seeds(smoothed, params.seed_threshold, params.seed_distance,
                                      sampling)
    else:
        seeds, count = threshold_seeds(smoothed, params.seed_threshold, params.min_seed_size)
    if count == 0:
        return np.ones(membrane.shape, np.int32), 1, smoothed
    labels = watershed(smoothed, markers=seeds, connectivity=1)
    return labels.astype(np.int32), count, smoothed
