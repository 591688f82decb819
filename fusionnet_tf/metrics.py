"""Segmentation scores: the ISBI 2012 challenge metrics plus Dice and IoU.

The ISBI 2012 scores follow Arganda-Carreras et al. (2015), "Crowdsourcing the
creation of image segmentation algorithms for connectomics", Front.
Neuroanat. 9:142, https://doi.org/10.3389/fnana.2015.00142, and the sweep of
the official Fiji evaluation script:

1. At each threshold t in 0.0, 0.1, ..., 1.0 the proposal's cell-interior
   pixels (interior probability = 1 - membrane probability > t) are split into
   2D 4-connected components, numbered in raster order (``scipy.ndimage.label``).
2. Border thinning: the remaining boundary pixels are absorbed by repeated
   3x3 growth; each pass gives every still-unlabelled pixel the largest label
   in its 3x3 neighbourhood, until no pixel is unlabelled. (With no interior
   pixel at all, the whole slice is one segment.)
3. Ground-truth segments are the 4-connected components of ground-truth
   interior; only ground-truth interior pixels are counted.
4. The contingency table ``n_ij`` (ground-truth segment i, proposal segment j)
   is pooled over all slices, with labels made unique per slice.
5. With ``p_ij = n_ij / N``, ``s_i = sum_j p_ij`` and ``t_j = sum_i p_ij``:
   ``V_rand = 2 sum p_ij^2 / (sum s_i^2 + sum t_j^2)`` and
   ``V_info = 2 I(S;T) / (H(S) + H(T))``. Both are in [0, 1], 1 = perfect.
6. The reported score is the best over t (the lowest such t on ties).

Pixel error is the fraction of pixels whose thresholded interior map
(interior probability > t) disagrees with the ground-truth interior, at the
best t of the same sweep.

Everything here is NumPy/SciPy and stateless.
"""

import numpy as np
from scipy import ndimage

from fusionnet_tf.checks import check_choice

THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(11))


# === Segmentations ===

def segment_proposal(interior):
    """Proposal segments of one slice: 4-connected components plus border thinning.

    Args:
        interior: (H, W) bool array, True = cell interior.

    Returns:
        (H, W) int32 label image with no zero left (unless ``interior`` is
        all False, in which case the whole slice is the single segment 0).
        Labels of the components are those of ``scipy.ndimage.label``;
        boundary pixels take the largest label in their 3x3 neighbourhood,
        pass after pass.

    Example:
    >>> segment_proposal(np.array([[1, 0, 0, 0, 1]], bool))
    array([[1, 1, 2, 2, 2]], dtype=int32)
    """
    labels, count = ndimage.label(interior)
    labels = labels.astype(np.int32)
    if count == 0:
        return labels
    return absorb_boundaries(labels)


def absorb_boundaries(labels):
    """Give every 0 pixel the largest label of its 3x3 neighbourhood, pass after pass.

    Equivalent to repeating ``labels = where(labels == 0,
    maximum_filter(labels, 3, mode="constant"), labels)`` until no 0 is left,
    but each pass only visits the pixels that are still unlabelled.

    Args:
        labels: (H, W) int label image with at least one nonzero pixel.

    Returns:
        (H, W) int32 label image without zeros.
    """
    height, width = labels.shape
    padded = np.zeros((height + 2, width + 2), np.int32)  # zero border = mode="constant"
    padded[1:-1, 1:-1] = labels
    flat = padded.ravel()
    ys, xs = np.nonzero(labels == 0)
    todo = (ys + 1) * (width + 2) + (xs + 1)
    offsets = np.array([dy * (width + 2) + dx for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    while todo.size:
        grown = flat[todo[:, None] + offsets].max(axis=1)  # from the previous pass only
        if not grown.any():
            break  # nothing labelled to grow from (cannot happen with a nonzero label)
        flat[todo] = grown
        todo = todo[grown == 0]
    return padded[1:-1, 1:-1].copy()


def segment_ground_truth(membrane):
    """Ground-truth segments of one slice: 4-connected components of interior.

    Args:
        membrane: (H, W) array in {0, 1}, 1 = membrane.

    Returns:
        (H, W) int32 labels, 0 on membrane, 1..K on the K interior components.
    """
    labels, _ = ndimage.label(np.asarray(membrane) == 0)
    return labels.astype(np.int32)


# === Contingency tables and scores ===

def slice_contingency(gt_segments, proposal_segments):
    """Contingency counts of one slice, restricted to ground-truth interior.

    Args:
        gt_segments: (H, W) int labels, 0 = not counted (membrane).
        proposal_segments: (H, W) int labels (0 is an ordinary segment here).

    Returns:
        Tuple ``(joint, gt_sizes, proposal_sizes)`` of int64 1D arrays: the
        nonzero counts ``n_ij``, the row sums and the column sums. Counts of
        different slices can be concatenated, which pools them with labels
        unique per slice.
    """
    counted = gt_segments > 0
    gt = gt_segments[counted].astype(np.int64)
    proposal = proposal_segments[counted].astype(np.int64)
    if gt.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    codes = gt * (int(proposal.max()) + 1) + proposal
    joint = np.unique(codes, return_counts=True)[1]
    gt_sizes = np.bincount(gt)
    proposal_sizes = np.bincount(proposal)
    return joint, gt_sizes[gt_sizes > 0], proposal_sizes[proposal_sizes > 0]


def _entropy(counts, total):
    p = counts / total
    return float(-(p * np.log(p)).sum())


def scores_from_counts(joint, gt_sizes, proposal_sizes):
    """V_rand and V_info from (pooled) contingency counts.

    Args:
        joint: 1D int array of nonzero ``n_ij``.
        gt_sizes: 1D int array of row sums (ground-truth segment sizes).
        proposal_sizes: 1D int array of column sums.

    Returns:
        ``(v_rand, v_info)`` floats in [0, 1]. V_info is 1 when both
        partitions are a single segment (both entropies zero).

    Raises:
        ValueError: if no pixel is counted.
    """
    joint = np.asarray(joint, np.float64)
    gt_sizes = np.asarray(gt_sizes, np.float64)
    proposal_sizes = np.asarray(proposal_sizes, np.float64)
    total = joint.sum()
    if total == 0:
        raise ValueError("the ground truth has no cell-interior pixel; V_rand/V_info are undefined")
    v_rand = 2 * (joint**2).sum() / ((gt_sizes**2).sum() + (proposal_sizes**2).sum())
    h_gt = _entropy(gt_sizes, total)
    h_proposal = _entropy(proposal_sizes, total)
    mutual = h_gt + h_proposal - _entropy(joint, total)
    v_info = 1.0 if h_gt + h_proposal == 0 else 2 * mutual / (h_gt + h_proposal)
    return float(v_rand), float(min(max(v_info, 0.0), 1.0))


def segmentation_scores(gt_segments, proposal_segments):
    """Pooled V_rand and V_info of two label stacks (no thresholding).

    Args:
        gt_segments: (N, H, W) or (H, W) int labels, 0 = not counted.
        proposal_segments: same shape, int labels.

    Returns:
        ``(v_rand, v_info)``.
    """
    gt_segments = np.asarray(gt_segments)
    proposal_segments = np.asarray(proposal_segments)
    _check_same_shape(gt_segments, proposal_segments, "gt_segments", "proposal_segments")
    counts = [slice_contingency(g, p)
              for g, p in zip(_as_stack(gt_segments), _as_stack(proposal_segments))]
    return scores_from_counts(*(np.concatenate(parts) for parts in zip(*counts)))


# === ISBI 2012 ===

def _as_stack(array):
    return array[None] if array.ndim == 2 else array


def _check_same_shape(a, b, name_a, name_b):
    if a.shape != b.shape or a.ndim not in (2, 3):
        raise ValueError(
            f"`{name_a}` and `{name_b}` must have the same (N, H, W) or (H, W) shape; "
            f"received {name_a}.shape={a.shape} and {name_b}.shape={b.shape}"
        )


def _check_isbi_inputs(membrane_prob, labels):
    membrane_prob = np.asarray(membrane_prob, np.float64)
    labels = np.asarray(labels)
    _check_same_shape(membrane_prob, labels, "membrane_prob", "labels")
    if not np.all(np.isfinite(membrane_prob)):
        raise ValueError("`membrane_prob` must be finite and in [0, 1]; received NaN or inf values")
    if membrane_prob.min() < 0 or membrane_prob.max() > 1:
        raise ValueError(
            "`membrane_prob` must be finite and in [0, 1]; received values in "
            f"[{membrane_prob.min()}, {membrane_prob.max()}]"
        )
    _check_binary_labels(labels)
    return _as_stack(membrane_prob), _as_stack(labels).astype(np.uint8)


def _check_binary_labels(labels):
    values = np.unique(labels)
    if not set(values.tolist()) <= {0, 1}:
        raise ValueError(
            f"`labels` must be binary (1 = membrane, 0 = interior); received values {values[:10]}"
        )


def isbi_scores(membrane_prob, labels, thresholds=THRESHOLDS):
    """ISBI 2012 V_rand, V_info and pixel error, best over a threshold sweep.

    Args:
        membrane_prob: (N, H, W) or (H, W) float array in [0, 1], 1 = membrane.
        labels: same shape, values in {0, 1}, 1 = membrane.
        thresholds: interior-probability thresholds to sweep. Defaults to
            0.0, 0.1, ..., 1.0 as in the official Fiji script.

    Returns:
        dict with ``v_rand``, ``v_info``, ``pixel_error`` (floats) and the
        thresholds that reached them: ``v_rand_threshold``,
        ``v_info_threshold``, ``pixel_error_threshold``.

    Raises:
        ValueError: if shapes differ, probabilities leave [0, 1], labels are
            not binary or the ground truth has no interior pixel.

    Example:
    >>> labels = np.zeros((1, 9, 9), np.uint8); labels[:, 4, :] = 1
    >>> isbi_scores(labels.astype("float32"), labels)["v_rand"]  # perfect
    1.0
    """
    membrane_prob, labels = _check_isbi_inputs(membrane_prob, labels)
    gt_segments = [segment_ground_truth(slice_labels) for slice_labels in labels]
    gt_interior = labels == 0
    interior_prob = 1.0 - membrane_prob
    rows = []
    for threshold in thresholds:
        interior = interior_prob > threshold
        counts = [slice_contingency(g, segment_proposal(i)) for g, i in zip(gt_segments, interior)]
        v_rand, v_info = scores_from_counts(*(np.concatenate(parts) for parts in zip(*counts)))
        pixel_error = float(np.mean(interior != gt_interior))
        rows.append((float(threshold), v_rand, v_info, pixel_error))
    best_rand = max(rows, key=lambda row: row[1])
    best_info = max(rows, key=lambda row: row[2])
    best_pixel = min(rows, key=lambda row: row[3])
    return {
        "v_rand": best_rand[1],
        "v_info": best_info[2],
        "pixel_error": best_pixel[3],
        "v_rand_threshold": best_rand[0],
        "v_info_threshold": best_info[0],
        "pixel_error_threshold": best_pixel[0],
    }


# === Label images: V_rand, V_info, adapted Rand error, VOI, CREMI score ===

GROUND_TRUTH_KINDS = ("membrane", "segments")
MODES = ("2d", "3d")


def segmentation_scores_report(labels, segments, *, ground_truth="membrane", mode="2d"):
    """All segmentation scores of a label image against ground truth, as one dict.

    The ground truth is either ISBI-style binary membrane labels
    (``ground_truth="membrane"``, the default: 1 = membrane; its segments are
    the 4-connected components of interior in each slice, membrane is not
    counted) or a label image (``ground_truth="segments"``: one id per cell,
    0 = not counted). Only pixels in a ground-truth segment are counted
    ("foreground"); the proposal is never masked. Proposal label 0 marks
    boundary pixels (``--keep-boundaries``); they are absorbed slice by slice
    by the ISBI border thinning (``absorb_boundaries``: each takes the largest
    id of its 3x3 neighbourhood, pass after pass; ids are compared in their
    numeric order). A slice that is all 0 is one segment.

    ``mode="2d"`` (ISBI, serial-section EM): one contingency table per slice,
    pooled over slices with ids unique per slice, so an id that spans slices
    counts as one segment per slice. ``mode="3d"``: one table over the whole
    volume, ids shared across slices; needs ``ground_truth="segments"``.

    With ``n_ij`` the pooled counts and ``s_i`` / ``t_j`` the ground-truth /
    proposal segment sizes:

    - ``v_rand``, ``v_info``: the ISBI 2012 scores (``scores_from_counts``).
    - ``adapted_rand_error``: SNEMI3D/CREMI, ``1 - 2 P R / (P + R)`` with
      precision ``P = sum n_ij^2 / sum t_j^2`` and recall
      ``R = sum n_ij^2 / sum s_i^2`` (pixel pairs including self-pairs, as the
      SNEMI3D/CREMI scripts do; ``skimage.metrics.adapted_rand_error`` drops
      self-pairs, ``n (n - 1)``, and differs by O(1 / segment size); the
      CREMI script gives proposal 0 its own rule, moot here as 0 is thinned
      first). So this is exactly ``1 - v_rand``.
    - ``voi_split = H(proposal | ground truth)`` (over-segmentation) and
      ``voi_merge = H(ground truth | proposal)`` (under-segmentation), in bits
      (log base 2, as CREMI and scikit-image).
    - ``cremi_score = sqrt((voi_split + voi_merge) * adapted_rand_error)``.

    Args:
        labels: (N, H, W) or (H, W) ground truth: binary in {0, 1} with
            1 = membrane, or a non-negative integer label image (see
            ``ground_truth``).
        segments: the proposal, same shape, non-negative integer label image
            (any integer dtype, e.g. uint32/uint64 ids).
        ground_truth: ``"membrane"`` or ``"segments"``. Defaults to
            ``"membrane"``.
        mode: ``"2d"`` or ``"3d"``. Defaults to ``"2d"``.

    Returns:
        dict with exactly the float keys ``v_rand``, ``v_info`` (in [0, 1],
        1 = perfect), ``adapted_rand_error`` (in [0, 1], 0 = perfect),
        ``voi_split``, ``voi_merge`` (bits, >= 0, 0 = perfect) and
        ``cremi_score`` (>= 0, 0 = perfect).

    Raises:
        ValueError: naming the argument, if ``segments`` (or label ground
            truth) is not a non-negative integer array, shapes differ,
            membrane labels are not binary, ``ground_truth``/``mode`` are
            unknown, or the ground truth has no counted pixel.

    Example:
    >>> gt = np.zeros((7, 7), np.uint8); gt[3, :] = 1  # two cells
    >>> seg = np.ones((7, 7), np.uint32)                # one segment
    >>> report = segmentation_scores_report(gt, seg)
    >>> report["voi_merge"], report["voi_split"], round(report["adapted_rand_error"], 4)
    (1.0, 0.0, 0.3333)
    """
    return scores_report_from_counts(
        *segmentation_counts(labels, segments, ground_truth=ground_truth, mode=mode))


def segmentation_counts(labels, segments, *, ground_truth="membrane", mode="2d"):
    """Pooled contingency counts of a label image (see ``segmentation_scores_report``).

    Args:
        labels, segments, ground_truth, mode: as in ``segmentation_scores_report``.

    Returns:
        ``(joint, gt_sizes, proposal_sizes)`` int64 1D arrays, as
        ``slice_contingency``, pooled over slices in ``"2d"`` mode.
    """
    gt, proposal = _check_label_inputs(labels, segments, ground_truth, mode)
    if mode == "3d":
        gt_segments = _dense_labels(gt)
        proposal = _dense_labels(proposal)
        thinned = np.stack([_thin_boundaries(proposal_slice) for proposal_slice in proposal])
        return slice_contingency(gt_segments, thinned)
    counts = []
    for gt_slice, proposal_slice in zip(gt, proposal):
        if ground_truth == "membrane":
            gt_segments = segment_ground_truth(gt_slice)
        else:
            gt_segments = _dense_labels(gt_slice)
        thinned = _thin_boundaries(_dense_labels(proposal_slice))
        counts.append(slice_contingency(gt_segments, thinned))
    return tuple(np.concatenate(parts) for parts in zip(*counts))


def adapted_rand_error_from_counts(joint, gt_sizes, proposal_sizes):
    """SNEMI3D/CREMI adapted Rand error: 1 - Rand F-score on ground-truth foreground.

    Args:
        joint, gt_sizes, proposal_sizes: contingency counts as returned by
            ``slice_contingency`` (ground-truth label 0 already left out).

    Returns:
        float in [0, 1], 0 = perfect. Precision ``sum n_ij^2 / sum t_j^2``
        (pairs in one proposal segment that share a ground-truth segment),
        recall ``sum n_ij^2 / sum s_i^2``.
    """
    precision, recall = rand_precision_recall_from_counts(joint, gt_sizes, proposal_sizes)
    return float(1.0 - 2.0 * precision * recall / (precision + recall))


def rand_precision_recall_from_counts(joint, gt_sizes, proposal_sizes):
    """Rand precision ``sum n_ij^2 / sum t_j^2`` and recall ``sum n_ij^2 / sum s_i^2``.

    Args:
        joint, gt_sizes, proposal_sizes: contingency counts as returned by
            ``slice_contingency`` (ground-truth label 0 already left out).

    Returns:
        ``(precision, recall)`` floats in (0, 1]; low precision = merges, low
        recall = splits.
    """
    joint2 = float((np.asarray(joint, np.float64) ** 2).sum())
    if joint2 == 0:
        raise ValueError("the ground truth has no counted pixel; the adapted Rand error is undefined")
    precision = joint2 / float((np.asarray(proposal_sizes, np.float64) ** 2).sum())
    recall = joint2 / float((np.asarray(gt_sizes, np.float64) ** 2).sum())
    return float(precision), float(recall)


def ground_truth_components(labels):
    """Ground-truth ids split into their connected pieces inside this volume.

    A volume cut out of a larger labelled one (SNEMI3D sections 60-74 of AC4,
    a crop) keeps the ids of the whole: a neuron whose branches join only
    outside the cut-out is one id in several pieces, which no segmentation of
    the cut-out can join. Scored against the raw ids, each such piece counts
    as a split. Relabelled here, each face-connected piece (6-connectivity in
    3D, 4 in 2D; diagonal contact does not join) of each id gets its own id.

    Args:
        labels: (Z, Y, X) or (Y, X) non-negative integer ids; 0 stays 0.

    Returns:
        int64 array of the same shape: 0 where ``labels`` is 0, else 1..K.

    Example:
    >>> ground_truth_components(np.array([[1, 1, 0, 1], [2, 0, 0, 1]])).tolist()
    [[1, 1, 0, 2], [3, 0, 0, 2]]
    """
    from skimage.measure import label

    labels = np.asarray(labels)
    _check_integer_labels(labels, "labels")
    return label(labels, background=0, connectivity=1).astype(np.int64)


def volume_scores(labels, segments):
    """Whole-volume 3D scores of a segmentation against ground-truth ids (SNEMI3D, CREMI).

    One contingency table over the whole (Z, Y, X) volume, ids shared across
    sections; voxels whose ground-truth id is 0 are not counted (as the
    SNEMI3D and CREMI scripts do); proposal 0 is thinned slice by slice as in
    ``segmentation_scores_report``.

    Args:
        labels: (Z, Y, X) non-negative integer ground-truth ids, 0 = not counted.
        segments: (Z, Y, X) non-negative integer ids of the same shape.

    Returns:
        dict of floats: ``adapted_rand_error`` (0 = perfect), ``rand_precision``,
        ``rand_recall``, ``voi_split``, ``voi_merge`` (bits) and
        ``cremi_score = sqrt((voi_split + voi_merge) * adapted_rand_error)``.

    Raises:
        ValueError: shapes differ, not integer ids, or no counted voxel.

    Example:
    >>> gt = np.array([[[1, 1, 2, 2]]]); seg = np.array([[[5, 5, 5, 5]]])
    >>> volume_scores(gt, seg)["voi_merge"]
    1.0
    """
    counts = segmentation_counts(labels, segments, ground_truth="segments", mode="3d")
    precision, recall = rand_precision_recall_from_counts(*counts)
    adapted_rand = float(1.0 - 2.0 * precision * recall / (precision + recall))
    voi_split, voi_merge = voi_from_counts(*counts)
    return {
        "adapted_rand_error": adapted_rand,
        "rand_precision": precision,
        "rand_recall": recall,
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "cremi_score": float(np.sqrt((voi_split + voi_merge) * adapted_rand)),
    }


def voi_from_counts(joint, gt_sizes, proposal_sizes):
    """Variation of information split and merge, in bits.

    Args:
        joint, gt_sizes, proposal_sizes: contingency counts as returned by
            ``slice_contingency``.

    Returns:
        ``(voi_split, voi_merge)``: ``H(proposal | ground truth)`` (a
        ground-truth segment spread over several proposal segments) and
        ``H(ground truth | proposal)`` (a proposal segment covering several
        ground-truth segments), log base 2, each >= 0.
    """
    total = float(np.sum(joint))
    if total == 0:
        raise ValueError("the ground truth has no counted pixel; VOI is undefined")
    h_joint = _entropy(np.asarray(joint, np.float64), total) / np.log(2)
    h_gt = _entropy(np.asarray(gt_sizes, np.float64), total) / np.log(2)
    h_proposal = _entropy(np.asarray(proposal_sizes, np.float64), total) / np.log(2)
    return float(max(h_joint - h_gt, 0.0)), float(max(h_joint - h_proposal, 0.0))


def scores_report_from_counts(joint, gt_sizes, proposal_sizes):
    """The six scores of ``segmentation_scores_report`` from contingency counts."""
    v_rand, v_info = scores_from_counts(joint, gt_sizes, proposal_sizes)
    adapted_rand = adapted_rand_error_from_counts(joint, gt_sizes, proposal_sizes)
    voi_split, voi_merge = voi_from_counts(joint, gt_sizes, proposal_sizes)
    return {
        "v_rand": v_rand,
        "v_info": v_info,
        "adapted_rand_error": adapted_rand,
        "voi_split": voi_split,
        "voi_merge": voi_merge,
        "cremi_score": float(np.sqrt((voi_split + voi_merge) * adapted_rand)),
    }


def _thin_boundaries(proposal_slice):
    """ISBI border thinning of proposal label 0 in one (H, W) slice of small ids."""
    if proposal_slice.all() or not proposal_slice.any():
        return proposal_slice
    return absorb_boundaries(proposal_slice)


def _dense_labels(labels):
    """Ids renumbered to 0..K in their numeric order; 0 stays 0 and only 0 maps to 0.

    Keeps the partition and the order of ids (which the border thinning uses)
    while making any id range (uint64, large sparse ids) safe for bincount.
    Ids already below the pixel count are kept as they are (no sort needed).
    """
    if labels.size == 0 or int(labels.max()) < labels.size:
        return labels.astype(np.int64)
    values, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.reshape(labels.shape).astype(np.int64)
    return inverse if values[0] == 0 else inverse + 1


def _check_integer_labels(array, name):
    if not np.issubdtype(array.dtype, np.integer):
        raise ValueError(
            f"`{name}` must be an integer label image (one id per segment); "
            f"received dtype {array.dtype}"
        )
    if array.size and array.min() < 0:
        raise ValueError(f"`{name}` must hold non-negative ids; received minimum {array.min()}")


def _check_label_inputs(labels, segments, ground_truth, mode):
    check_choice("ground_truth", ground_truth, GROUND_TRUTH_KINDS)
    check_choice("mode", mode, MODES)
    if mode == "3d" and ground_truth == "membrane":
        raise ValueError(
            "`mode`='3d' needs ground-truth segment ids (`ground_truth`='segments'); "
            "membrane labels only define segments per slice"
        )
    labels = np.asarray(labels)
    segments = np.asarray(segments)
    _check_same_shape(labels, segments, "labels", "segments")
    _check_integer_labels(segments, "segments")
    if ground_truth == "membrane":
        _check_binary_labels(labels)
    else:
        _check_integer_labels(labels, "labels")
    return _as_stack(labels), _as_stack(segments)


# === Pixel-wise overlap ===

def _binary_pair(prediction, target, threshold):
    prediction = np.asarray(prediction)
    target = np.asarray(target)
    if prediction.shape != target.shape:
        raise ValueError(
            "`prediction` and `target` must have the same shape; received "
            f"prediction.shape={prediction.shape} and target.shape={target.shape}"
        )
    return prediction > threshold, target > 0.5


def dice(prediction, target, threshold=0.5):
    """Dice coefficient of the foreground (e.g. membrane) class.

    Args:
        prediction: array of probabilities or {0, 1}; foreground where
            ``prediction > threshold``.
        target: array of the same shape in {0, 1}.
        threshold: float. Defaults to 0.5.

    Returns:
        float in [0, 1]; 1.0 when both are empty.

    Example:
    >>> dice(np.array([0.9, 0.2]), np.array([1, 1]))
    0.6666666666666666
    """
    pred, true = _binary_pair(prediction, target, threshold)
    denominator = pred.sum() + true.sum()
    return 1.0 if denominator == 0 else float(2 * np.logical_and(pred, true).sum() / denominator)


def iou(prediction, target, threshold=0.5):
    """Intersection over union (Jaccard index) of the foreground class.

    Args:
        prediction, target, threshold: see ``dice``.

    Returns:
        float in [0, 1]; 1.0 when both are empty.
    """
    pred, true = _binary_pair(prediction, target, threshold)
    union = np.logical_or(pred, true).sum()
    return 1.0 if union == 0 else float(np.logical_and(pred, true).sum() / union)
