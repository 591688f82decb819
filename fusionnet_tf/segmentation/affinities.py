"""3D neurons from affinities: fragments, agglomeration, mutex watershed.

Affinities are (C, Z, Y, X) float32 in [0, 1], one channel per offset
``(dz, dy, dx)``: channel c at voxel p is the probability that p and
``p + offsets[c]`` belong to one object. The nearest-neighbour channels
((-1, 0, 0), (0, -1, 0), (0, 0, -1), or their positive twins) are required.

``segment_affinities(affs, offsets, params)`` runs one of two methods
(``AffinityParams.method``):

``"agglomeration"``
    1. boundary map = 1 - the mean (``boundary="min"``: the lowest) affinity
       of each voxel's nearest-neighbour edges (both sides along each axis;
       in-plane edges only for 2D fragments), smoothed by ``sigma``;
    2. fragments: seeds at distance-transform maxima (or regional minima) of
       the boundary map, flooded by scikit-image's watershed, per section
       (2D seeds and in-plane flooding, for thick sections) or in 3D, chosen by
       ``anisotropy``;
    3. a region adjacency graph over the fragments whose edges carry the
       affinities of the voxel pairs across the shared face (z faces the z
       affinity, y/x faces the y/x affinities), agglomerated by
       ``fusionnet_tf.segmentation.agglomeration`` (average linkage) while the
       mean (or a quantile) affinity across the face is above
       ``merge_threshold``. That code merges while a membrane-like value stays
       below a threshold, so it gets ``1 - affinity`` and ``1 - threshold``;
    4. segments below ``min_size`` voxels join their most affine neighbour.

``"mws"``
    The mutex watershed (Wolf et al. 2018, https://arxiv.org/abs/1904.12654)
    on every offset with ``mwatershed`` (a Rust extension, ``pip install
    mwatershed``) or, without it, ``mutex_watershed_python`` (small volumes
    only), then the same ``min_size`` merging.

Ids are numbered 1..K in the returned labels, which cover every voxel.
"""

import warnings

import numpy as np
from scipy import ndimage

from fusionnet_tf.segmentation.affinity_params import AffinityParams
from fusionnet_tf.segmentation.agglomeration import agglomerate_graph, graph_from_pairs
from fusionnet_tf.segmentation.params import ANISOTROPIC
from fusionnet_tf.segmentation.watershed import distance_seeds, relabel_consecutive, smooth

AXES = ("z", "y", "x")
PYTHON_MWS_VOXELS = 10**6  # above this, warn that the Python mutex watershed is slow


# --------------------------------------------------------------------------- #
# Nearest-neighbour edges
# --------------------------------------------------------------------------- #


def nearest_neighbour_channels(offsets, shape=None):
    """The channel holding each axis' nearest-neighbour affinity.

    Args:
        offsets: list of ``(dz, dy, dx)``.
        shape: optional (Z, Y, X); an axis of length 1 needs no channel.

    Returns:
        dict axis (0, 1, 2) -> ``(channel, step)`` with ``step`` -1 for an
        offset ``-e_axis`` (value stored at the later voxel of a pair) or +1
        (stored at the earlier voxel); axes without pairs are left out.

    Raises:
        ValueError: an axis with pairs but no nearest-neighbour offset.
    """
    found = {}
    for axis in range(3):
        if shape is not None and shape[axis] < 2:
            continue
        for step in (-1, 1):
            unit = tuple(step if a == axis else 0 for a in range(3))
            if unit in [tuple(o) for o in offsets]:
                found[axis] = ([tuple(o) for o in offsets].index(unit), step)
                break
        else:
            raise ValueError(f"affinities need a nearest-neighbour offset along {AXES[axis]} "
                             f"(e.g. {[-1 if a == axis else 0 for a in range(3)]}); "
                             f"received offsets {[list(o) for o in offsets]}")
    return found


def _pair_slices(axis):
    """Slices selecting the earlier and the later voxel of each pair along ``axis``."""
    first = [slice(None)] * 3
    second = [slice(None)] * 3
    first[axis], second[axis] = slice(None, -1), slice(1, None)
    return tuple(first), tuple(second)


def edge_affinities(affs, offsets, axis, channels=None):
    """Affinity of each voxel pair ``(p, p + e_axis)``.

    Args:
        affs: (C, Z, Y, X) float32.
        offsets: the C offsets.
        axis: 0, 1 or 2.
        channels: optional result of ``nearest_neighbour_channels``.

    Returns:
        float32 view of shape (Z, Y, X) shortened by one along ``axis``: entry
        ``q`` is the affinity between ``q`` and ``q + e_axis``.
    """
    channels = channels or nearest_neighbour_channels(offsets, affs.shape[1:])
    channel, step = channels[axis]
    first, second = _pair_slices(axis)
    return affs[channel][second if step == -1 else first]


def boundary_map(affs, offsets, axes=(0, 1, 2), statistic="mean"):
    """``1 - mean`` (or ``1 - min``) affinity of each voxel's nearest-neighbour edges.

    Every voxel takes the edges to both neighbours along each axis in
    ``axes`` (edges that leave the volume are left out), so the map is
    symmetric across a boundary.

    Args:
        affs: (C, Z, Y, X) float32 in [0, 1].
        offsets: the C offsets.
        axes: axes whose edges count (``(1, 2)`` for in-plane only).
        statistic: ``"mean"`` or ``"min"`` of the edges' affinities.

    Returns:
        (Z, Y, X) float32 in [0, 1] (1 = boundary). A voxel without any edge
        (a 1x1x1 volume) gets 1.
    """
    shape = affs.shape[1:]
    channels = nearest_neighbour_channels(offsets, shape)
    lowest = np.ones(shape, np.float32)
    total = np.zeros(shape, np.float32)
    count = np.zeros(shape, np.float32)
    for axis in axes:
        if axis not in channels:
            continue
        edges = edge_affinities(affs, offsets, axis, channels)
        for side in _pair_slices(axis):
            if statistic == "min":
                np.minimum(lowest[side], edges, out=lowest[side])
            else:
                total[side] += edges
                count[side] += 1
    if statistic == "min":
        return 1.0 - lowest
    mean = np.divide(total, count, out=np.zeros(shape, np.float32), where=count > 0)
    return 1.0 - mean


# --------------------------------------------------------------------------- #
# Fragments
# --------------------------------------------------------------------------- #


def fragments_in_2d(params):
    """True when fragments are made per section (``fragments``/``anisotropy``)."""
    if params.fragments == "auto":
        return params.anisotropy >= ANISOTROPIC
    return params.fragments == "2d"


def _minima_seeds(boundary, threshold, footprint):
    """Regional minima of ``boundary`` below ``threshold``, labelled by ``footprint``."""
    low = ndimage.minimum_filter(boundary, footprint=footprint, mode="nearest")
    marker = (boundary <= low) & (boundary < threshold)
    seeds, count = ndimage.label(marker, structure=footprint)
    return seeds.astype(np.int64), int(count)


def _seeds(boundary, params, sampling):
    """Seeds of one 2D section or one 3D volume: ``(labels int64, count)``."""
    if params.seed_method == "minima":
        footprint = ndimage.generate_binary_structure(boundary.ndim, 1)
        return _minima_seeds(boundary, params.seed_threshold, footprint)
    seeds, count = distance_seeds(boundary, params.seed_threshold, params.seed_distance,
                                  sampling)
    return seeds.astype(np.int64), count


def first_voxels(seeds, count):
    """Flat index (C order) of the first voxel of each seed id 1..count: int64 (count + 1,).

    Entry 0 is -1. ``ndimage.label`` numbers seeds in this order, so the
    result is increasing for its labels.
    """
    first = np.full(count + 1, -1, np.int64)
    flat = np.flatnonzero(seeds)
    ids, where = np.unique(seeds.ravel()[flat], return_index=True)
    first[ids] = flat[where]
    return first


def fragments(affs, offsets, params=None, return_seeds=False):
    """Over-segmentation: watershed on ``1 - mean nearest-neighbour affinity``.

    Fragment ids follow their seeds' first voxels in raster (C) order over
    the whole array (in 2D mode: section by section, then raster order in the
    section), the order ``ndimage.label`` numbers seeds in. Block-wise runs
    (``segmentation.blockwise.graph``) number the fragments of a volume by
    the same rule, so that both agglomerate the same graph.

    Args:
        affs: (C, Z, Y, X) float32 affinities in [0, 1].
        offsets: the C offsets.
        params: ``AffinityParams`` (``fragments``, ``anisotropy``, ``sigma``,
            ``seed_method``, ``seed_threshold``, ``seed_distance``).
        return_seeds: also return where each fragment's seed starts.

    Returns:
        ``(labels, count)``: int64 (Z, Y, X) fragment ids 1..count covering
        every voxel. In 2D mode every fragment lies in one section (and every
        section has at least one fragment). With ``return_seeds``,
        ``(labels, count, seeds)``: ``seeds`` int64 (count + 1,), the flat
        index into (Z, Y, X) of each fragment's seed's first voxel (increasing
        with the id; entry 0 is -1).
    """
    labels, count, seeds = _fragments_and_seeds(affs, offsets, params or AffinityParams())
    return (labels, count, seeds) if return_seeds else (labels, count)


def _fragments_and_seeds(affs, offsets, params):
    """``fragments(..., return_seeds=True)``."""
    from skimage.segmentation import watershed

    in_2d = fragments_in_2d(params)
    sampling = (params.anisotropy, 1.0, 1.0)
    boundary = boundary_map(affs, offsets, (1, 2) if in_2d else (0, 1, 2), params.boundary)
    if in_2d:  # 2D seeds and in-plane flooding, section by section (faster than a 3D flood)
        labels = np.empty(boundary.shape, np.int64)
        firsts = [np.full(1, -1, np.int64)]
        count = 0
        for z, section in enumerate(boundary):
            section = smooth(section, params.sigma)
            seeds, found = _seeds(section, params, None)
            if found == 0:  # a section without seeds is one fragment
                seeds.flat[int(np.argmin(section))] = found = 1
            labels[z] = watershed(section, markers=seeds, connectivity=1) + count
            firsts.append(first_voxels(seeds, found)[1:] + z * section.size)
            count += found
        return labels, count, np.concatenate(firsts)
    boundary = smooth(boundary, params.sigma, sampling)
    seeds, count = _seeds(boundary, params, sampling)
    if count == 0:
        return np.ones(boundary.shape, np.int64), 1, np.array([-1, 0], np.int64)
    labels = watershed(boundary, markers=seeds, connectivity=1)
    return labels.astype(np.int64), count, first_voxels(seeds, count)


# --------------------------------------------------------------------------- #
# Region adjacency graph on affinities, agglomeration
# --------------------------------------------------------------------------- #


def affinity_face_pairs(labels, affs, offsets):
    """Voxel pairs across fragment faces with ``1 - affinity`` as their value.

    Args:
        labels: (Z, Y, X) int fragment ids.
        affs, offsets: nearest-neighbour affinities as in ``boundary_map``.

    Returns:
        ``(low, high, value)``: int64 ids (low < high) and float32
        ``1 - affinity`` of each pair of 6-neighbours in different fragments;
        z pairs carry the z affinity, y/x pairs the y/x affinities.
    """
    channels = nearest_neighbour_channels(offsets, labels.shape)
    parts = [affinity_face_pairs_along(labels, affs, offsets, axis, channels)
             for axis in sorted(channels)]
    if not parts:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    lows, highs, values = zip(*parts)
    return np.concatenate(lows), np.concatenate(highs), np.concatenate(values)


def affinity_face_pairs_along(labels, affs, offsets, axis, channels=None):
    """``affinity_face_pairs`` for the pairs ``(p, p + e_axis)`` along one axis.

    Args:
        labels: (Z, Y, X) int fragment ids.
        affs, offsets: (C, Z, Y, X) affinities and their offsets.
        axis: 0, 1 or 2.
        channels: optional ``nearest_neighbour_channels`` result.

    Returns:
        ``(low, high, value)`` as ``affinity_face_pairs``, in raster order of
        the pairs' first voxels; empty if ``labels`` has one voxel along
        ``axis``.
    """
    channels = channels or nearest_neighbour_channels(offsets, labels.shape)
    if axis not in channels:
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0, np.float32)
    first, second = _pair_slices(axis)
    a, b = labels[first], labels[second]
    crossing = a != b
    a, b = a[crossing], b[crossing]
    value = 1.0 - edge_affinities(affs, offsets, axis, channels)[crossing]
    return (np.minimum(a, b).astype(np.int64), np.maximum(a, b).astype(np.int64),
            value.astype(np.float32))


def affinity_graph(low, high, value, span, params):
    """Region adjacency graph of face pairs (``graph_from_pairs``), with histograms if needed.

    Args:
        low, high, value: ``affinity_face_pairs`` output.
        span: int greater than every id.
        params: ``AffinityParams``; ``merge_statistic="quantile"`` adds
            the per-edge histograms.

    Returns:
        dict as ``agglomeration.graph_from_pairs``.
    """
    return graph_from_pairs(low, high, value, span,
                            histogram=params.merge_statistic == "quantile")


def agglomerate_affinities(labels, count, affs, offsets, params=None):
    """Merge fragments while the affinity across their face is above the threshold.

    Args:
        labels: (Z, Y, X) int fragment ids 1..count.
        count: int, the largest id.
        affs, offsets: (C, Z, Y, X) float32 affinities and their offsets.
        params: ``AffinityParams`` (``merge_threshold``, ``merge_statistic``,
            ``merge_quantile``, ``min_size``).

    Returns:
        int array (count + 1,) mapping each fragment id to its merged id
        (apply with ``mapping[labels]``).
    """
    params = params or AffinityParams()
    graph = affinity_graph(*affinity_face_pairs(labels, affs, offsets), count + 1, params)
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    return agglomerate_affinity_graph(graph, count, sizes, params)


def agglomerate_affinity_graph(graph, count, sizes, params):
    """``agglomerate_affinities`` on a ready graph of fragment faces.

    Block-wise runs build the graph of a whole volume from blocks
    (``segmentation.blockwise.graph``) and agglomerate it here.

    Args:
        graph: dict from ``affinity_graph`` (values ``1 - affinity``).
        count: int, the largest fragment id.
        sizes: int (count + 1,) voxels per fragment.
        params: ``AffinityParams``.

    Returns:
        int array (count + 1,): the merged id of each fragment.
    """
    # agglomeration merges while a boundary value stays below a threshold: 1 - affinity,
    # and the affinity quantile q is the (1 - q) quantile of 1 - affinity
    return agglomerate_graph(graph, count, sizes, 1.0 - params.merge_threshold,
                             params.min_size, params.merge_statistic,
                             1.0 - params.merge_quantile)


# --------------------------------------------------------------------------- #
# Mutex watershed
# --------------------------------------------------------------------------- #


def mws_weights(affs, offsets, params):
    """Signed edge weights for the mutex watershed: ``affinity - bias`` (float64).

    Nearest-neighbour channels use ``params.mws_bias``, long-range ones
    ``params.mws_long_range_bias``; positive = attractive, negative = mutex.
    """
    biases = np.array([params.mws_bias if sum(abs(v) for v in o) == 1 else
                       params.mws_long_range_bias for o in offsets], np.float64)
    return affs.astype(np.float64) - biases[:, None, None, None]


def mws_strides(offsets, stride):
    """Per-offset strides: 1 for nearest neighbours, ``(1, stride, stride)`` otherwise."""
    return [[1, 1, 1] if sum(abs(v) for v in o) == 1 else [1, stride, stride] for o in offsets]


def mutex_watershed(affs, offsets, params=None, backend="auto"):
    """Mutex watershed on every offset, then ``min_size`` merging.

    Args:
        affs: (C, Z, Y, X) float32 affinities in [0, 1].
        offsets: the C offsets.
        params: ``AffinityParams`` (``mws_bias``, ``mws_long_range_bias``,
            ``mws_stride``, ``min_size``).
        backend: ``"mwatershed"``, ``"python"`` (``mutex_watershed_python``)
            or ``"auto"`` (mwatershed if installed).

    Returns:
        ``(labels, count)``: int64 (Z, Y, X) ids 1..count covering every voxel.

    Raises:
        ImportError: ``backend="mwatershed"`` without the package.
    """
    params = params or AffinityParams()
    weights = mws_weights(affs, offsets, params)
    strides = mws_strides(offsets, params.mws_stride)
    if backend == "auto":
        try:
            import mwatershed  # noqa: F401

            backend = "mwatershed"
        except ImportError:
            backend = "python"
            if affs[0].size > PYTHON_MWS_VOXELS:
                warnings.warn(f"mwatershed is not installed: the pure-Python mutex watershed "
                              f"runs at ~0.1 M voxels/s on {affs[0].size} voxels; pip install "
                              f"'fusionnet-tf[mws]' for the fast one", stacklevel=2)
    if backend == "mwatershed":
        labels = _mwatershed(weights, offsets, strides)
    elif backend == "python":
        labels = mutex_watershed_python(weights, offsets, strides)
    else:
        raise ValueError(f"`backend` must be 'auto', 'mwatershed' or 'python'; "
                         f"received {backend!r}")
    labels, count = relabel_consecutive(labels)
    labels = labels.astype(np.int64)
    if params.min_size > 1:
        mapping = agglomerate_affinities(labels, count, affs, offsets,
                                         params.replace(merge_threshold=1.0))
        labels, count = relabel_consecutive(mapping[labels])
    return labels.astype(np.int64), count


def _mwatershed(weights, offsets, strides):
    """``mwatershed.agglom`` with its quirks handled.

    Offsets longer than the volume (which make it panic) are left out, and
    the voxels it leaves unmerged (label 0) get one id each.
    """
    import mwatershed

    shape = weights.shape[1:]
    keep = [c for c, o in enumerate(offsets) if all(abs(d) < n for d, n in zip(o, shape))]
    labels = mwatershed.agglom(np.ascontiguousarray(weights[keep]),
                               [list(offsets[c]) for c in keep],
                               strides=[strides[c] for c in keep]).astype(np.int64)
    alone = labels == 0
    labels[alone] = labels.max() + 1 + np.arange(int(alone.sum()))
    return labels


def _offset_edges(shape, offset, stride):
    """Flat indices ``(u, v)`` of voxels ``p`` (on the stride grid) and ``p + offset`` inside."""
    index = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    source = []
    target = []
    for size, step, every in zip(shape, offset, stride):
        start, stop = max(0, -step), min(size, size - step)
        source.append(slice(start, stop, every))
        target.append(slice(start + step, stop + step, every))
    return index[tuple(source)], index[tuple(target)], tuple(source)


def mutex_watershed_python(weights, offsets, strides=None):
    """Reference mutex watershed in NumPy and Python (small volumes only).

    Edges are taken in order of decreasing ``|weight|``: a positive edge joins
    the clusters of its voxels unless a mutex edge lies between them; a
    negative edge adds a mutex between them (Wolf et al. 2018, Algorithm 1).

    Args:
        weights: (C, Z, Y, X) float signed weights (``mws_weights``).
        offsets: the C offsets.
        strides: optional per-offset strides (``mws_strides``).

    Returns:
        int64 (Z, Y, X) cluster ids (not consecutive).
    """
    shape = weights.shape[1:]
    strides = strides or [[1, 1, 1]] * len(offsets)
    us, vs, ws = [], [], []
    for channel, (offset, stride) in enumerate(zip(offsets, strides)):
        u, v, source = _offset_edges(shape, tuple(offset), tuple(stride))
        us.append(u.ravel())
        vs.append(v.ravel())
        ws.append(weights[channel][source].ravel())
    u, v, w = np.concatenate(us), np.concatenate(vs), np.concatenate(ws)
    order = np.argsort(-np.abs(w), kind="stable")
    parent = list(range(int(np.prod(shape))))
    mutex = {}

    def find(node):
        root = node
        while parent[root] != root:
            root = parent[root]
        while parent[node] != root:
            parent[node], node = root, parent[node]
        return root

    for a, b, attractive in zip(u[order].tolist(), v[order].tolist(), (w[order] > 0).tolist()):
        a, b = find(a), find(b)
        if a == b:
            continue
        mutex_a = mutex.get(a, ())
        if not attractive:
            mutex.setdefault(a, set()).add(b)
            mutex.setdefault(b, set()).add(a)
            continue
        if b in mutex_a:
            continue
        if len(mutex_a) < len(mutex.get(b, ())):  # merge the smaller mutex set
            a, b = b, a
        parent[b] = a
        mutex_b = mutex.pop(b, None)
        if mutex_b:
            mutex.setdefault(a, set()).update(mutex_b)
            for other in mutex_b:
                partners = mutex[other]
                partners.discard(b)
                partners.add(a)
    roots = np.array([find(node) for node in range(len(parent))], np.int64)
    return roots.reshape(shape) + 1


# --------------------------------------------------------------------------- #
# Entry point
# --------------------------------------------------------------------------- #


def segment_affinities(affs, offsets, params=None, backend="auto"):
    """3D neuron labels from affinities (see the module docstring).

    Args:
        affs: (C, Z, Y, X) float affinities in [0, 1].
        offsets: the C offsets ``(dz, dy, dx)``.
        params: ``AffinityParams`` or None for the defaults.
        backend: mutex watershed backend (``mutex_watershed``).

    Returns:
        ``(labels, max_id)``: uint32 (uint64 if needed) (Z, Y, X) ids
        1..max_id covering every voxel, and max_id.

    Raises:
        ValueError: bad affinities or offsets (``check_affinities``), or no
            nearest-neighbour offset along an axis with pairs.

    Example:
    >>> affs = np.ones((3, 2, 4, 4), np.float32)
    >>> segment_affinities(affs, [(-1, 0, 0), (0, -1, 0), (0, 0, -1)])[1]
    1
    """
    from fusionnet_tf.data.affinity_io import check_affinities
    from fusionnet_tf.segmentation.segmenter import label_dtype

    params = params or AffinityParams()
    affs, offsets = check_affinities(affs, offsets)
    if params.method == "mws":
        labels, count = mutex_watershed(affs, offsets, params, backend)
    else:
        labels, count = fragments(affs, offsets, params)
        if params.merge_threshold < 1 or params.min_size > 1:
            mapping = agglomerate_affinities(labels, count, affs, offsets, params)
            labels, count = relabel_consecutive(mapping[labels])
    return labels.astype(label_dtype(count)), count
