"""Neurons from membrane maps: seeded watershed, then agglomeration.

``segment(membrane, params, mode)`` turns a membrane probability map (what
``fusionnet predict`` writes) into a label image in which every cell has its
own id:

1. smooth the map (``params.sigma``) and place seeds in low-probability
   regions or at distance-transform maxima;
2. flood the smoothed map from the seeds (scikit-image watershed), so every
   pixel gets a segment;
3. merge neighbours across weak boundaries (average linkage on the region
   adjacency graph) up to ``params.merge_threshold``, then merge segments
   smaller than ``params.min_size`` into their best neighbour;
4. number the segments 1..K (unique over the whole stack).

``mode="2d"`` segments each slice on its own (serial-section EM with thick
sections, such as ISBI 2012). ``mode="3d"`` gives each cell one id through
the stack: for near-isotropic voxels (``params.anisotropy`` below 3, e.g.
FIB-SEM) the stack is segmented as one 6-connected volume with z scaled by
the anisotropy; for thick sections each section is segmented in 2D and the
segments of neighbouring sections are linked when their footprints overlap
(intersection over union >= ``params.z_link_overlap``), since a 3D flood
would leak between cells that shift from one section to the next.

Like elf's watershed functions, each entry point returns ``(labels, max_id)``
so that callers can offset ids when they combine slices or blocks.
"""

import sys

import numpy as np

from fusionnet_tf.checks import check_choice

from fusionnet_tf.segmentation.agglomeration import agglomerate
from fusionnet_tf.segmentation.params import ANISOTROPIC, MODES, SegmentParams
from fusionnet_tf.segmentation.watershed import relabel_consecutive, seeded_watershed

BOUNDARY_THRESHOLD = 0.5


def check_membrane(membrane, name="membrane"):
    """Validate a membrane probability map and return it as float32.

    Args:
        membrane: (H, W) or (N, H, W) float array in [0, 1].
        name: how error messages call it (e.g. the file name).

    Returns:
        float32 ndarray of the same shape.

    Raises:
        ValueError: integer or bool dtype, wrong number of dimensions, empty,
            NaN/inf or values outside [0, 1], naming ``name``.
    """
    membrane = np.asarray(membrane)
    if not np.issubdtype(membrane.dtype, np.floating):
        raise ValueError(f"{name}: a membrane probability map must be float in [0, 1]; "
                         f"received dtype {membrane.dtype} (write it with fusionnet predict's "
                         f"default --dtype float32)")
    if membrane.ndim not in (2, 3) or 0 in membrane.shape:
        raise ValueError(f"{name}: expected an (N, H, W) or (H, W) map; received shape "
                         f"{membrane.shape}")
    if not np.all(np.isfinite(membrane)):
        raise ValueError(f"{name}: the membrane probability map contains NaN or inf")
    low, high = float(membrane.min()), float(membrane.max())
    if low < 0 or high > 1:
        raise ValueError(f"{name}: membrane probabilities must be in [0, 1]; received values in "
                         f"[{low:g}, {high:g}]")
    return membrane.astype(np.float32, copy=False)


def segment_array(membrane, params, sampling=None, progress=False, classifier=None):
    """Segment one 2D slice or one 3D volume as a whole.

    Args:
        membrane: (H, W) or (Z, H, W) float32 membrane probability in [0, 1]
            (not validated: see ``check_membrane``).
        params: ``SegmentParams``.
        sampling: per-axis voxel size for 3D input, or None.
        progress: bool; a progress bar over sections (thick-section 3D only).
        classifier: None for the recipe's agglomeration, or an
            ``edge_classifier.EdgeClassifier`` whose ``agglomerate`` merges
            the fragments instead (2D slices).

    Returns:
        ``(labels, max_id)``: int32 (int64 if needed) labels 1..max_id that
        cover every pixel.
    """
    if membrane.ndim == 3 and sampling is not None and sampling[0] >= ANISOTROPIC:
        labels, _ = stack_slices(membrane, params, progress=progress)
        linked = link_sections(labels, params.z_link_overlap)
        return linked, int(linked.max())
    labels, count, smoothed = seeded_watershed(membrane, params, sampling)
    if classifier is not None:
        labels = classifier.agglomerate(labels, count, membrane, smoothed, params.min_size)[labels]
    elif params.merge_threshold > 0 or params.min_size > 1:
        mapping = agglomerate(labels, count, smoothed, params.merge_threshold, params.min_size,
                              params.merge_statistic, params.merge_quantile)
        labels = mapping[labels]
    return relabel_consecutive(labels)


def segment(membrane, params=None, mode="2d", keep_boundaries=False,
            boundary_threshold=BOUNDARY_THRESHOLD, progress=False, classifier=None):
    """Neuron label image from a membrane probability map.

    Args:
        membrane: (N, H, W) or (H, W) float membrane probability in [0, 1]
            (1 = membrane), e.g. the output of ``Predictor.predict``.
        params: ``SegmentParams`` or None for the defaults.
        mode: ``"2d"`` (each slice on its own; ids unique over the stack) or
            ``"3d"`` (one 6-connected volume). Defaults to ``"2d"``.
        keep_boundaries: bool; if True, pixels whose membrane probability is
            at least ``boundary_threshold`` get label 0 (boundary), otherwise
            every pixel belongs to a segment. Defaults to False.
        boundary_threshold: float, see ``keep_boundaries``. Defaults to 0.5.
        progress: bool; show a progress bar over slices on stderr. Defaults
            to False.
        classifier: None (the recipe: merge while the boundary statistic is
            below ``params.merge_threshold``) or an
            ``edge_classifier.EdgeClassifier`` that decides the merges
            (``mode="2d"`` only; ``params`` still gives the fragments and
            ``min_size``). Defaults to None.

    Returns:
        ``(labels, max_id)``: uint32 array of ``membrane``'s shape (uint64 if
        the ids do not fit) with ids 1..max_id, and max_id (int).

    Raises:
        ValueError: bad ``membrane`` (see ``check_membrane``) or ``mode``, or
            a ``classifier`` with ``mode="3d"``.

    Example:
    >>> membrane = np.zeros((1, 32, 32), np.float32); membrane[:, :, 15:17] = 1
    >>> labels, max_id = segment(membrane)
    >>> max_id
    2
    """
    params = params or SegmentParams()
    check_choice("mode", mode, MODES)
    if classifier is not None and mode != "2d":
        raise ValueError(f"the edge classifier segments 2D slices; received mode={mode!r} "
                         f"(use mode='2d')")
    membrane = check_membrane(membrane)
    stack = membrane[None] if membrane.ndim == 2 else membrane
    if mode == "3d":
        labels, max_id = segment_array(stack, params, sampling=(params.anisotropy, 1.0, 1.0),
                                       progress=progress)
    else:
        labels, max_id = stack_slices(stack, params, progress=progress, classifier=classifier)
    labels = labels.astype(label_dtype(max_id), copy=False)
    if keep_boundaries:
        labels[stack >= boundary_threshold] = 0
    return (labels[0] if membrane.ndim == 2 else labels), max_id


def stack_slices(stack, params, first_id=1, progress=False, classifier=None):
    """Segment each slice of an (N, H, W) stack on its own, ids offset slice by slice.

    Args:
        stack: (N, H, W) float32 membrane map.
        params: ``SegmentParams``.
        first_id: int, the id of the first segment of the first slice.
        progress: bool; a progress bar over slices on stderr.
        classifier: None or an ``EdgeClassifier`` (see ``segment_array``).

    Returns:
        ``(labels, max_id)``: int64 labels, ids ``first_id``..max_id, and
        max_id (``first_id - 1`` for an empty stack).
    """
    labels = np.empty(stack.shape, np.int64)
    offset = first_id - 1
    from tqdm import tqdm

    slices = tqdm(stack, desc="segment", unit="slice", disable=not progress or len(stack) < 2,
                  file=sys.stderr)
    for index, slice_map in enumerate(slices):
        slice_labels, count = segment_array(slice_map, params, classifier=classifier)
        labels[index] = slice_labels + offset
        offset += count
    return labels, offset


def link_sections(labels, min_overlap):
    """Give segments of neighbouring sections one id where their footprints overlap.

    Args:
        labels: (Z, H, W) int labels, ids unique over the stack (e.g. from
            ``stack_slices``), 0 = no segment.
        min_overlap: float in (0, 1]; segments ``a`` in section z and ``b`` in
            z + 1 are linked when ``|a & b| / |a | b| >= min_overlap``. From
            0.5 on, a segment links to at most one segment per neighbouring
            section.

    Returns:
        int64 labels of the same shape, ids 1..K numbered by the smallest id
        of each linked chain (0 stays 0).
    """
    labels = np.asarray(labels, np.int64)
    count = int(labels.max())
    sizes = np.bincount(labels.ravel(), minlength=count + 1)
    pairs = [np.unique(upper * (count + 1) + lower, return_counts=True)
             for upper, lower in zip(labels[:-1], labels[1:])]
    keys, overlap = (np.concatenate(parts) for parts in zip(*pairs)) if pairs else (
        np.zeros(0, np.int64), np.zeros(0, np.int64))
    upper, lower = keys // (count + 1), keys % (count + 1)
    real = (upper > 0) & (lower > 0)
    final, _ = link_segments(count, sizes, upper[real], lower[real], overlap[real], min_overlap)
    return final.astype(np.int64)[labels]


def link_segments(count, sizes, upper, lower, overlap, min_overlap):
    """Join segments of neighbouring sections whose footprints overlap enough.

    The rule of ``link_sections``, on pair counts (so block-wise runs can sum
    them over blocks first).

    Args:
        count: int, the number of segments (ids 1..count).
        sizes: int64 (count + 1,) pixels per segment.
        upper, lower, overlap: int64 arrays: segment ``upper`` in section z
            shares ``overlap`` pixels with segment ``lower`` in z + 1 (pairs
            may repeat; they are summed).
        min_overlap: float, ``SegmentParams.z_link_overlap``: pairs with
            intersection over union ``>= min_overlap`` are linked.

    Returns:
        ``(final, K)``: uint64 (count + 1,) final id per segment (0 -> 0),
        numbered 1..K by the smallest id of each chain, and K.
    """
    span = count + 1
    keys, inverse = np.unique(np.asarray(upper, np.int64) * span + np.asarray(lower, np.int64),
                              return_inverse=True)
    total = np.bincount(inverse.ravel(), weights=overlap, minlength=keys.size)
    a, b = keys // span, keys % span
    keep = total / (sizes[a] + sizes[b] - total) >= min_overlap
    final, linked = graph_components(span, a[keep], b[keep])
    final = final.astype(np.int64) - 1  # node 0 (no segment) is component 1: shift it out
    final[0] = 0
    return final.astype(np.uint64), linked - 1


def graph_components(nodes, rows, cols):
    """Connected components of an undirected graph, numbered 1..K by their first node.

    Args:
        nodes: int, number of nodes.
        rows, cols: int arrays of edge ends.

    Returns:
        ``(component_id, K)``: uint64 array (nodes,) and K.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(rows), np.int8), (rows, cols)), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    _, first = np.unique(component, return_index=True)
    order = np.empty(first.size, np.uint64)
    order[np.argsort(np.argsort(first))] = np.arange(1, first.size + 1, dtype=np.uint64)
    return order[component], int(first.size)


def label_dtype(max_id):
    """uint32 if ids up to ``max_id`` fit, else uint64."""
    return np.uint32 if max_id < 2**32 else np.uint64
