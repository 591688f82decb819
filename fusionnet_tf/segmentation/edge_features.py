"""Edge features and training labels for the learned edge classifier.

The region adjacency graph of a watershed over-segmentation (the recipe's
``seeded_watershed`` fragments) has one edge per pair of touching fragments.
An edge's boundary is the set of 4-connected pixel pairs that straddle it,
each with the value ``max(p[a], p[b])`` (the recipe's boundary value,
``agglomeration.boundary_pairs``). ``edge_features`` turns the sorted
boundary values of each edge, plus the sizes and mean membrane probability of
its two regions, into one row of ``FEATURE_NAMES``; the same function serves
the initial graph (all edges at once) and the merge loop (the few edges a
merge changed), so training and inference see identical features.

Training labels (``edge_labels``) follow the usual rule of learned
agglomeration (gala: Nunez-Iglesias et al. 2013,
https://doi.org/10.1371/journal.pone.0071715; the learned edge weights of
multicut pipelines: Beier et al. 2017, https://doi.org/10.1038/nmeth.4151):
every fragment takes the ground-truth id that covers most of its pixels
(ground-truth 0, boundary or background, ignored), and an edge is "merge"
when both fragments take the same id. Fragments that lie mostly on
ground-truth boundary have no meaningful id; their edges are dropped.

Everything is vectorised NumPy (sorting and ``np.bincount``), no loop over
pixels or edges.
"""

import numpy as np

from fusionnet_tf.segmentation.agglomeration import boundary_pairs

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)

FEATURE_NAMES = (
    "mean", "std", "min", "max",
    "q10", "q25", "q50", "q75", "q90",
    "log_length", "log_size_min", "log_size_max",
    "log_length_per_sqrt_size_min",
    "region_mean_min", "region_mean_max", "contrast",
)

# labels of ``edge_labels``
KEEP, MERGE, DROPPED = 0, 1, -1

# a fragment with more than this share of ground-truth-0 pixels is "mostly boundary"
MAX_BOUNDARY_SHARE = 0.5


def edge_boundaries(fragments, membrane):
    """The region adjacency graph with every edge's boundary values, sorted.

    Args:
        fragments: (H, W) int labels 1..count covering every pixel.
        membrane: (H, W) float membrane probability in [0, 1].

    Returns:
        dict with ``u``, ``v``: int64 (E,) edge ends, ``u < v``, in increasing
        order of ``(u, v)``; ``values``: float32 (P,) the boundary values of
        all edges, edge by edge, each edge's in increasing order;
        ``offsets``: int64 (E + 1,), edge ``e``'s values are
        ``values[offsets[e]:offsets[e + 1]]`` (its length is the number of
        boundary pixel pairs).
    """
    low, high, value = boundary_pairs(fragments, membrane)
    span = int(fragments.max()) + 1 if fragments.size else 1
    keys = low * span + high
    order = np.lexsort((value, keys))  # by edge, then by value within each edge
    keys, value = keys[order], value[order]
    starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if keys.size else \
        np.zeros(0, np.int64)
    offsets = np.r_[starts, keys.size].astype(np.int64)
    edge_keys = keys[starts]
    return {"u": edge_keys // span, "v": edge_keys % span, "values": value.astype(np.float32),
            "offsets": offsets}


def region_statistics(fragments, membrane, count):
    """Pixels and summed membrane probability per fragment.

    Args:
        fragments: (H, W) int labels 0..count.
        membrane: (H, W) float membrane probability.
        count: int, the largest id.

    Returns:
        ``(sizes, mass)``: int64 and float64 arrays (count + 1,).
    """
    flat = fragments.ravel()
    sizes = np.bincount(flat, minlength=count + 1).astype(np.int64)
    mass = np.bincount(flat, weights=np.asarray(membrane, np.float64).ravel(),
                       minlength=count + 1)
    return sizes, mass


def sorted_quantiles(values, offsets, quantiles=QUANTILES):
    """Quantiles of each edge's sorted values, linear interpolation (``np.quantile``'s default).

    Args:
        values: float (P,) values, sorted within each edge.
        offsets: int64 (E + 1,) edge boundaries in ``values``; no edge is empty.
        quantiles: floats in [0, 1].

    Returns:
        float64 (E, len(quantiles)).
    """
    starts, lengths = offsets[:-1], np.diff(offsets)
    columns = []
    for q in quantiles:
        position = q * (lengths - 1)
        below = np.floor(position).astype(np.int64)
        above = np.minimum(below + 1, lengths - 1)
        weight = position - below
        columns.append(values[starts + below] * (1 - weight) + values[starts + above] * weight)
    return np.stack(columns, axis=1) if columns else np.zeros((len(starts), 0))


def edge_features(values, offsets, size_u, size_v, mean_u, mean_v):
    """One feature row per edge (``FEATURE_NAMES``).

    Args:
        values: float (P,) boundary values in [0, 1], edge by edge, sorted
            within each edge (``edge_boundaries``).
        offsets: int64 (E + 1,) edge ``e``'s values are
            ``values[offsets[e]:offsets[e + 1]]``; every edge has at least one.
        size_u, size_v: int (E,) pixels of the two regions of each edge.
        mean_u, mean_v: float (E,) mean membrane probability inside each of
            the two regions.

    Returns:
        float32 (E, 16) in the order of ``FEATURE_NAMES``: the boundary
        values' mean, standard deviation (population), min, max and
        quantiles 0.1 / 0.25 / 0.5 / 0.75 / 0.9; log of the boundary length
        (pixel pairs) and of the smaller and larger region's size;
        ``log(length / sqrt(smaller size))`` (how much of the smaller region's
        outline the boundary is); the smaller and larger of the two regions'
        mean membrane probability; and the contrast ``mean - larger region
        mean``.
    """
    values = np.asarray(values, np.float64)
    offsets = np.asarray(offsets, np.int64)
    lengths = np.diff(offsets)
    if lengths.size == 0:
        return np.zeros((0, len(FEATURE_NAMES)), np.float32)
    starts = offsets[:-1]
    total = np.add.reduceat(values, starts)
    squares = np.add.reduceat(values * values, starts)
    mean = total / lengths
    std = np.sqrt(np.maximum(squares / lengths - mean * mean, 0.0))
    low, high = values[starts], values[offsets[1:] - 1]
    quantiles = sorted_quantiles(values, offsets)
    size_min = np.minimum(size_u, size_v).astype(np.float64)
    size_max = np.maximum(size_u, size_v).astype(np.float64)
    region_min = np.minimum(mean_u, mean_v)
    region_max = np.maximum(mean_u, mean_v)
    columns = [mean, std, low, high, *quantiles.T, np.log(lengths), np.log(size_min),
               np.log(size_max), np.log(lengths / np.sqrt(size_min)), region_min, region_max,
               mean - region_max]
    return np.stack(columns, axis=1).astype(np.float32)


def region_edge_features(values, offsets, u, v, sizes, mass):
    """``edge_features`` of edges between regions, from per-region pixel counts and sums.

    Args:
        values, offsets: the edges' sorted boundary values (``edge_features``).
        u, v: int (E,) the two regions of each edge.
        sizes, mass: int64 / float64 arrays over region ids: pixels and summed
            membrane probability (``region_statistics``).

    Returns:
        float32 (E, 16).
    """
    means = mass / np.maximum(sizes, 1)
    return edge_features(values, offsets, sizes[u], sizes[v], means[u], means[v])


def graph_features(graph, sizes, mass):
    """``edge_features`` of every edge of ``edge_boundaries``'s graph.

    Args:
        graph: dict from ``edge_boundaries``.
        sizes, mass: arrays from ``region_statistics``.

    Returns:
        float32 (E, 16).
    """
    return region_edge_features(graph["values"], graph["offsets"], graph["u"], graph["v"], sizes,
                                mass)


def fragment_majority(fragments, gt_ids, count, max_boundary_share=MAX_BOUNDARY_SHARE):
    """The ground-truth id covering most of each fragment, and whether it counts.

    Args:
        fragments: (H, W) int labels 0..count.
        gt_ids: (H, W) non-negative int ground-truth instance ids, 0 =
            boundary or background (never a majority).
        count: int, the largest fragment id.
        max_boundary_share: float; a fragment with a larger share of
            ground-truth-0 pixels is "mostly boundary" and does not count.

    Returns:
        ``(majority, valid)``: int64 (count + 1,) the most frequent nonzero
        ground-truth id of each fragment (ties: the smallest id; 0 if it has
        none) and bool (count + 1,) True where the fragment has a majority
        and at most ``max_boundary_share`` of it is ground-truth 0.
    """
    frag = np.asarray(fragments, np.int64).ravel()
    gt = np.asarray(gt_ids, np.int64).ravel()
    sizes = np.bincount(frag, minlength=count + 1)
    boundary = np.bincount(frag[gt == 0], minlength=count + 1)
    inside = gt > 0
    span = int(gt.max()) + 1 if gt.size else 1
    keys, overlap = np.unique(frag[inside] * span + gt[inside], return_counts=True)
    owner, gt_of = keys // span, keys % span
    # per fragment, the largest overlap; ties -> smallest id: sort by (owner, -overlap, id)
    order = np.lexsort((gt_of, -overlap, owner))
    first = order[np.r_[True, owner[order][1:] != owner[order][:-1]]] if order.size else order
    majority = np.zeros(count + 1, np.int64)
    majority[owner[first]] = gt_of[first]
    valid = (majority > 0) & (boundary <= max_boundary_share * np.maximum(sizes, 1))
    return majority, valid


def edge_labels(u, v, majority, valid):
    """Training label of each edge from its fragments' majority ground-truth ids.

    Args:
        u, v: int (E,) edge ends.
        majority, valid: arrays from ``fragment_majority``.

    Returns:
        int8 (E,): ``MERGE`` (1) when both ends have the same majority id,
        ``KEEP`` (0) when they differ, ``DROPPED`` (-1) when either end is
        not ``valid`` (mostly boundary).

    Example:
    >>> edge_labels(np.array([1, 1]), np.array([2, 3]), np.array([0, 7, 7, 8]),
    ...             np.array([False, True, True, True]))
    array([1, 0], dtype=int8)
    """
    labels = np.where(majority[u] == majority[v], MERGE, KEEP).astype(np.int8)
    labels[~(valid[u] & valid[v])] = DROPPED
    return labels


def ground_truth_ids(labels, ground_truth="membrane"):
    """Instance ids of a ground-truth stack, as the ISBI scores see them.

    Args:
        labels: (N, H, W) or (H, W) ground truth: binary, 1 = membrane
            (``ground_truth="membrane"``: ids are the 4-connected components of
            interior per slice, as ``metrics.segment_ground_truth``), or a
            non-negative integer label image (``"segments"``, used as is).
        ground_truth: ``"membrane"`` or ``"segments"``.

    Returns:
        int64 array of ``labels``' shape, 0 = boundary / background.
    """
    from fusionnet_tf.checks import check_choice
    from fusionnet_tf.metrics import GROUND_TRUTH_KINDS, segment_ground_truth

    check_choice("ground_truth", ground_truth, GROUND_TRUTH_KINDS)
    labels = np.asarray(labels)
    if ground_truth == "segments":
        return labels.astype(np.int64)
    stack = labels[None] if labels.ndim == 2 else labels
    ids = np.stack([segment_ground_truth(slice_labels) for slice_labels in stack])
    return ids.astype(np.int64).reshape(labels.shape)
