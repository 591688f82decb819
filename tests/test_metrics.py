"""ISBI 2012 metrics against hand-computed cases, plus Dice and IoU."""

import numpy as np
import pytest

from fusionnet_tf import metrics


def cross_labels(size=9):
    """GT membrane cross: row and column 4 of a 9x9 slice -> four 4x4 cells of 16 px."""
    labels = np.zeros((size, size), np.uint8)
    labels[size // 2, :] = 1
    labels[:, size // 2] = 1
    return labels


# === Proposal segmentation and border thinning ===

def test_growth_takes_the_largest_label_pass_by_pass():
    # components [1 0 0 0 2]; pass 1: [1 1 0 2 2]; pass 2: the middle sees 1 and 2 -> 2
    labels = metrics.segment_proposal(np.array([[1, 0, 0, 0, 1]], bool))
    np.testing.assert_array_equal(labels, [[1, 1, 2, 2, 2]])


def test_components_are_four_connected_in_raster_order():
    interior = np.array([[1, 0, 1],
                         [0, 1, 0],
                         [1, 0, 0]], bool)
    labels = metrics.segment_proposal(interior)
    # four diagonal-only neighbours -> four components 1..4 in raster order; each boundary
    # pixel takes the largest label of its 3x3 neighbourhood
    np.testing.assert_array_equal(labels, [[1, 3, 2],
                                           [4, 3, 3],
                                           [4, 4, 3]])


def test_no_interior_is_one_segment_and_terminates():
    labels = metrics.segment_proposal(np.zeros((5, 7), bool))
    assert labels.shape == (5, 7) and np.all(labels == 0)
    scores = metrics.isbi_scores(np.ones((1, 9, 9)), cross_labels()[None])
    assert scores["v_rand"] == pytest.approx(0.4)  # every threshold: one segment vs four


def test_ground_truth_segments():
    segments = metrics.segment_ground_truth(cross_labels())
    assert segments.max() == 4
    assert np.all(segments[cross_labels() == 1] == 0)
    assert sorted(np.bincount(segments.ravel())[1:]) == [16, 16, 16, 16]


# === Scores ===

def test_perfect_prediction_scores_one():
    labels = np.stack([cross_labels(), np.pad(cross_labels()[:7, :7], 1)])
    scores = metrics.isbi_scores(labels.astype(np.float32), labels)
    assert scores["v_rand"] == 1.0 and scores["v_info"] == 1.0
    assert scores["pixel_error"] == 0.0
    assert scores["v_rand_threshold"] == 0.0  # best over t, lowest on ties


def diagonal_labels(size=16):
    """GT membrane: the 1-pixel-wide main diagonal of a size x size slice.

    The two triangles either side touch only at corners (e.g. (0, 1) and (1, 0)),
    so they are two 4-connected segments but one 8-connected segment.
    """
    return np.eye(size, dtype=np.uint8)


def test_diagonal_membrane_separates_four_connected_segments():
    labels = diagonal_labels()
    segments = metrics.segment_ground_truth(labels)
    assert segments.max() == 2
    assert sorted(np.bincount(segments.ravel())[1:]) == [120, 120]
    # a perfect prediction is perfect only if GT and proposal are both 4-connected
    scores = metrics.isbi_scores(labels.astype(np.float32)[None], labels[None])
    assert scores["v_rand"] == 1.0 and scores["v_info"] == 1.0


def test_one_segment_against_four_equal_segments():
    # p_i1 = 1/4: V_rand = 2 * 4/16 / (4/16 + 1) = 0.4; I = 0 so V_info = 0
    scores = metrics.isbi_scores(np.zeros((9, 9), np.float32), cross_labels())
    assert scores["v_rand"] == pytest.approx(0.4, abs=1e-12)
    assert scores["v_info"] == pytest.approx(0.0, abs=1e-12)
    # every interior-predicted membrane pixel is wrong: 17 of 81
    assert scores["pixel_error"] == pytest.approx(17 / 81)


def test_thinning_removes_proposal_boundaries():
    labels = np.zeros((12, 10), np.uint8)
    labels[6, :] = 1  # GT: two segments of 60 px separated by one membrane row
    prediction = np.zeros((12, 10), np.float32)
    prediction[4:9, :] = 1.0  # proposal: a boundary band 5 rows thick around it
    scores = metrics.isbi_scores(prediction, labels)
    assert scores["v_rand"] == 1.0 and scores["v_info"] == 1.0
    # without thinning the 40 GT-interior pixels in the band would form a third segment
    gt = metrics.segment_ground_truth(labels)
    unthinned, _ = metrics.segmentation_scores(gt, (prediction < 0.5) * (1 + (np.arange(12) > 6))[:, None])
    assert unthinned < 0.9


def test_pooling_over_slices_differs_from_averaging():
    # slice 0: perfect (4 cells of 16 px); slice 1: one proposal segment over 4 GT cells.
    labels = np.stack([cross_labels(), cross_labels()])
    prediction = np.stack([cross_labels(), np.zeros((9, 9), np.uint8)]).astype(np.float32)
    scores = metrics.isbi_scores(prediction, labels)
    # pooled: sum n^2 = 8*256, sum s^2 = 8*256, sum t^2 = 4*256 + 64^2 -> V_rand = 4/7
    assert scores["v_rand"] == pytest.approx(4 / 7, abs=1e-12)
    # H(S) = log 8, H(T) = 4/8 log 8 + 1/2 log 2 = 2 log 2, I = 2 log 2 -> V_info = 4/5
    assert scores["v_info"] == pytest.approx(0.8, abs=1e-12)
    per_slice = [metrics.isbi_scores(p, l) for p, l in zip(prediction, labels)]
    assert np.mean([s["v_rand"] for s in per_slice]) == pytest.approx(0.7)
    assert np.mean([s["v_info"] for s in per_slice]) == pytest.approx(0.5)


def test_best_threshold_is_reported():
    labels = np.zeros((9, 9), np.uint8)
    labels[4, :] = 1
    prediction = np.where(labels == 1, 0.35, 0.0)  # interior prob 0.65 on the membrane row
    scores = metrics.isbi_scores(prediction, labels)
    # t <= 0.6 merges both halves (V_rand = 2*2*36^2 / (2*36^2 + 72^2) = 2/3); t >= 0.7 splits them
    assert scores["v_rand"] == 1.0 and scores["v_rand_threshold"] == 0.7
    assert scores["pixel_error"] == 0.0 and scores["pixel_error_threshold"] == 0.7
    low = metrics.isbi_scores(prediction, labels, thresholds=(0.5,))
    assert low["v_rand"] == pytest.approx(2 / 3)


def test_scores_agree_with_scikit_image_tables():
    """Contingency from scikit-image, scores by the formulas, against ours.

    (skimage's ``adapted_rand_error`` counts pairs without self-pairs,
    sum n_ij (n_ij - 1), so it differs from the ISBI definition by design.)
    """
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(3)
    gt = rng.integers(0, 6, (40, 50))  # 0 = not counted
    proposal = rng.integers(1, 9, (40, 50))
    v_rand, v_info = metrics.segmentation_scores(gt, proposal)
    table = skimage_metrics.contingency_table(gt, proposal, ignore_labels=(0,)).toarray()
    p = table / table.sum()
    s, t = p.sum(axis=1), p.sum(axis=0)
    assert v_rand == pytest.approx(2 * (p**2).sum() / ((s**2).sum() + (t**2).sum()), abs=1e-12)
    # V_info from scikit-image's conditional entropies on the counted pixels
    counted = gt > 0
    # returns (H(image1 | image0), H(image0 | image1)) in bits
    h_prop_given, h_gt_given = np.log(2) * skimage_metrics.variation_of_information(
        gt[counted], proposal[counted])
    h_gt = -(s[s > 0] * np.log(s[s > 0])).sum()
    h_prop = -(t[t > 0] * np.log(t[t > 0])).sum()
    mutual = h_gt - h_gt_given
    assert mutual == pytest.approx(h_prop - h_prop_given)
    assert v_info == pytest.approx(2 * mutual / (h_gt + h_prop), abs=1e-10)


@pytest.mark.parametrize("prediction,labels,match", [
    (np.zeros((2, 9, 9)), np.zeros((1, 9, 9)), "shape"),
    (np.full((9, 9), 1.5), cross_labels(), r"\[0, 1\]"),
    (np.full((9, 9), np.nan), cross_labels(), r"\[0, 1\]"),
    (np.zeros((9, 9)), cross_labels() * 255, "binary"),
    (np.zeros((9, 9)), np.ones((9, 9), np.uint8), "no cell-interior"),
])
def test_bad_inputs(prediction, labels, match):
    with pytest.raises(ValueError, match=match):
        metrics.isbi_scores(prediction, labels)


# === Dice and IoU ===

def test_dice_and_iou_hand_computed():
    prediction = np.array([0.9, 0.8, 0.2, 0.1, 0.7])
    target = np.array([1, 1, 1, 0, 0])
    # predicted {0, 1, 4}, true {0, 1, 2}: intersection 2, sizes 3 + 3, union 4
    assert metrics.dice(prediction, target) == pytest.approx(2 * 2 / 6)
    assert metrics.iou(prediction, target) == pytest.approx(2 / 4)
    assert metrics.dice(np.zeros(4), np.zeros(4)) == 1.0
    assert metrics.iou(np.zeros(4), np.zeros(4)) == 1.0
    assert metrics.dice(prediction, target, threshold=0.75) == pytest.approx(2 * 2 / 5)
    with pytest.raises(ValueError, match="target.shape"):
        metrics.dice(np.zeros(3), np.zeros(4))


def test_fast_growth_equals_repeated_maximum_filter():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for density in (0.02, 0.3, 0.7):
        interior = ndimage.binary_opening(rng.random((60, 70)) < density) | (rng.random((60, 70)) < 0.005)
        labels, count = ndimage.label(interior)
        if count == 0:
            continue
        reference = labels.copy()
        while (reference == 0).any():
            reference = np.where(reference == 0, ndimage.maximum_filter(reference, 3, mode="constant"),
                                 reference)
        np.testing.assert_array_equal(metrics.segment_proposal(interior), reference)
