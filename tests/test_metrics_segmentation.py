"""Segmentation metrics of label images: hand-computed tables, ISBI threshold path, scikit-image."""

import json

import numpy as np
import pytest
from scipy import ndimage

from fusionnet_tf import metrics

LOG2_3 = np.log2(3)
KEYS = {"v_rand", "v_info", "adapted_rand_error", "voi_split", "voi_merge", "cremi_score"}


def h2(*probabilities):
    """Entropy in bits of a distribution given as probabilities."""
    p = np.asarray(probabilities, float)
    return float(-(p * np.log2(p)).sum())


def voronoi_membrane(rng, shape, cells):
    """(N, H, W) uint8 GT, 1 = membrane: 1-px borders of a random Voronoi partition per slice."""
    not_seed = np.ones(shape, bool)
    for z in range(shape[0]):
        not_seed[z, rng.integers(0, shape[1], cells), rng.integers(0, shape[2], cells)] = False
    # nearest seed within the slice (huge z spacing keeps slices apart)
    _, (_, ys, xs) = ndimage.distance_transform_edt(not_seed, sampling=(1e6, 1, 1), return_indices=True)
    owner = ys * shape[2] + xs
    membrane = np.zeros(shape, bool)
    membrane[:, 1:, :] |= owner[:, 1:, :] != owner[:, :-1, :]
    membrane[:, :, 1:] |= owner[:, :, 1:] != owner[:, :, :-1]
    return membrane.astype(np.uint8)


# === Hand-computed contingency tables ===

def test_two_by_three_table_by_hand():
    # Row 0 is counted: GT A = 6 px, B = 4 px. Row 1 is GT 0 (ignored) under a
    # proposal segment 4 that is nowhere else; counting it would add a row and a column.
    gt = np.array([[1, 1, 1, 1, 1, 1, 2, 2, 2, 2],
                   [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]])
    seg = np.array([[1, 1, 1, 1, 2, 2, 2, 3, 3, 3],
                    [4, 4, 4, 4, 4, 4, 4, 4, 4, 3]], np.uint32)
    #        x  y  z
    #   A  [ 4  2  0 ]  s = (6, 4), t = (4, 3, 3), N = 10
    #   B  [ 0  1  3 ]
    # sum n^2 = 16 + 4 + 1 + 9 = 30, sum s^2 = 52, sum t^2 = 34
    # precision = 30/34, recall = 30/52, F = 2*30/(52 + 34) = 30/43 -> ARAND = 13/43
    # split = H(P|G) = 0.6 h(2/3, 1/3) + 0.4 h(1/4, 3/4)
    #       = 0.6 (log2 3 - 2/3) + 0.4 (2 - 3/4 log2 3) = 0.3 log2 3 + 0.4 bits
    # merge = H(G|P) = 0.3 h(2/3, 1/3) = 0.3 log2 3 - 0.2 bits (only column y is mixed)
    report = metrics.segmentation_scores_report(gt, seg, ground_truth="segments")
    assert set(report) == KEYS
    assert report["adapted_rand_error"] == pytest.approx(13 / 43, abs=1e-12)
    assert report["v_rand"] == pytest.approx(30 / 43, abs=1e-12)
    assert report["voi_split"] == pytest.approx(0.3 * LOG2_3 + 0.4, abs=1e-12)
    assert report["voi_merge"] == pytest.approx(0.3 * LOG2_3 - 0.2, abs=1e-12)
    assert report["cremi_score"] == pytest.approx(np.sqrt((0.6 * LOG2_3 + 0.2) * 13 / 43), abs=1e-12)
    # V_info = 2 I / (H(G) + H(P)), I = H(P) - H(P|G); ratio, so any log base
    h_gt, h_prop = h2(0.6, 0.4), h2(0.4, 0.3, 0.3)
    mutual = h_prop - (0.3 * LOG2_3 + 0.4)
    assert report["v_info"] == pytest.approx(2 * mutual / (h_gt + h_prop), abs=1e-12)


def test_three_by_three_table_pooled_per_slice_and_3d():
    # slice 0: GT [1 1 2 2], proposal one segment; slice 1: GT one cell, proposal halves.
    gt = np.array([[[1, 1, 2, 2]], [[1, 1, 1, 1]]])
    seg = np.array([[[1, 1, 1, 1]], [[1, 1, 2, 2]]], np.int64)
    # 2d: ids unique per slice ->  rows (0:1, 0:2, 1:1), columns (0:1, 1:1, 1:2)
    #   [[2 0 0], [2 0 0], [0 2 2]]  s = (2, 2, 4), t = (4, 2, 2), N = 8
    #   sum n^2 = 16, sum s^2 = sum t^2 = 24 -> F = 32/48, ARAND = 1/3
    #   split = 4/8 * 1 bit = 0.5 (slice-1 cell in halves); merge = 4/8 * 1 bit = 0.5
    report = metrics.segmentation_scores_report(gt, seg, ground_truth="segments")
    assert report["adapted_rand_error"] == pytest.approx(1 / 3, abs=1e-12)
    assert report["voi_split"] == pytest.approx(0.5, abs=1e-12)
    assert report["voi_merge"] == pytest.approx(0.5, abs=1e-12)
    assert report["cremi_score"] == pytest.approx(np.sqrt(1 / 3), abs=1e-12)
    # 3d: ids shared across slices -> rows (1, 2), columns (1, 2)
    #   [[4 2], [2 0]]  s = (6, 2), t = (6, 2): sum n^2 = 24, sum s^2 = sum t^2 = 40
    #   F = 48/80 -> ARAND = 0.4; split = 6/8 h(2/3, 1/3) = merge
    report = metrics.segmentation_scores_report(gt, seg, ground_truth="segments", mode="3d")
    assert report["adapted_rand_error"] == pytest.approx(0.4, abs=1e-12)
    assert report["voi_split"] == pytest.approx(0.75 * h2(2 / 3, 1 / 3), abs=1e-12)
    assert report["voi_merge"] == pytest.approx(0.75 * h2(2 / 3, 1 / 3), abs=1e-12)
    # keep-boundaries zeros are thinned per slice in 3d too: [1 0 1 1] -> [1 1 1 1], [1 1 0 2] -> [1 1 2 2]
    with_zeros = np.array([[[1, 0, 1, 1]], [[1, 1, 0, 2]]], np.uint8)
    assert metrics.segmentation_scores_report(gt, with_zeros, ground_truth="segments", mode="3d") == report


def test_diagonal_membrane_ground_truth():
    labels = np.eye(6, dtype=np.uint8)  # 1-px diagonal membrane: two 4-connected triangles of 15 px
    upper = np.triu(np.ones((6, 6), bool), 1)
    # keep-boundaries proposal: the two triangles with 0 on the diagonal -> thinned, perfect
    seg = np.where(upper, 7, 3).astype(np.uint16)
    seg[labels == 1] = 0
    report = metrics.segmentation_scores_report(labels, seg)
    assert report == {"v_rand": 1.0, "v_info": 1.0, "adapted_rand_error": 0.0,
                      "voi_split": 0.0, "voi_merge": 0.0, "cremi_score": 0.0}
    # one segment over both triangles: sum n^2 = 2*15^2 = sum s^2, sum t^2 = 30^2
    #   F = 900/1350 -> ARAND = 1/3; merge = 1 bit, split = 0
    report = metrics.segmentation_scores_report(labels, np.ones((6, 6), np.int32))
    assert report["adapted_rand_error"] == pytest.approx(1 / 3, abs=1e-12)
    assert report["voi_merge"] == pytest.approx(1.0, abs=1e-12)
    assert report["voi_split"] == 0.0
    assert report["v_info"] == pytest.approx(0.0, abs=1e-12)
    assert report["cremi_score"] == pytest.approx(np.sqrt(1 / 3), abs=1e-12)


def test_perfect_segmentation_with_arbitrary_ids_scores_perfect():
    labels = np.zeros((2, 9, 9), np.uint8)
    labels[:, 4, :] = 1
    labels[0, :, 4] = 1  # slice 0: four cells; slice 1: two cells
    gt_segments = np.stack([metrics.segment_ground_truth(s) for s in labels])
    # the same partition under large, shuffled uint64 ids, cells reused across slices
    ids = np.array([0, 2**40 + 5, 17, 2**63 + 1, 3], np.uint64)
    seg = ids[gt_segments]
    seg[labels == 1] = ids[1]  # membrane pixels are not counted, whatever their id
    report = metrics.segmentation_scores_report(labels, seg)
    assert report == {"v_rand": 1.0, "v_info": 1.0, "adapted_rand_error": 0.0,
                      "voi_split": 0.0, "voi_merge": 0.0, "cremi_score": 0.0}
    json.dumps(report)  # plain floats, as `fusionnet evaluate --json` prints them


def test_all_zero_proposal_slice_is_one_segment():
    labels = np.zeros((9, 9), np.uint8)
    labels[4, :] = 1  # two cells of 36 px
    report = metrics.segmentation_scores_report(labels, np.zeros((9, 9), np.uint8))
    assert report["voi_merge"] == pytest.approx(1.0) and report["voi_split"] == 0.0


# === The ISBI threshold path ===

@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_thresholded_components_match_the_isbi_threshold_path(threshold):
    rng = np.random.default_rng(7)
    labels = voronoi_membrane(rng, (3, 48, 48), cells=12)
    blurred = ndimage.gaussian_filter(labels.astype(float), (0, 1, 1))
    membrane_prob = np.clip(2 * blurred + 0.3 * rng.random(labels.shape), 0, 1)  # V_rand 0.84-0.99
    isbi = metrics.isbi_scores(membrane_prob, labels, thresholds=(threshold,))
    interior = (1.0 - membrane_prob) > threshold
    thinned = np.stack([metrics.segment_proposal(s) for s in interior])
    components = np.stack([ndimage.label(s)[0] for s in interior])  # 0 = boundary, as --keep-boundaries
    assert (components == 0).any() and len(np.unique(components)) > 10
    # the same ids under an order-preserving map to large uint64 ids (thinning keeps the largest id)
    remapped = np.where(components > 0, components.astype(np.uint64) * 1000 + 2**40, 0).astype(np.uint64)
    for seg in (thinned, components, remapped):
        report = metrics.segmentation_scores_report(labels, seg)
        assert report["v_rand"] == pytest.approx(isbi["v_rand"], abs=1e-12)
        assert report["v_info"] == pytest.approx(isbi["v_info"], abs=1e-12)
        assert report["adapted_rand_error"] == pytest.approx(1.0 - isbi["v_rand"], abs=1e-12)
    unthinned = metrics.segmentation_scores(
        np.stack([metrics.segment_ground_truth(s) for s in labels]), components)[0]
    assert unthinned != pytest.approx(isbi["v_rand"], abs=1e-6)  # the thinning matters here


# === scikit-image ===

def test_agrees_with_scikit_image():
    skimage_metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(5)
    # two slices of blocky partitions (segments of ~100-300 px), ids unique per slice
    gt = np.kron(rng.integers(0, 5, (2, 6, 6)), np.ones((1, 10, 10), np.int64))  # 0 = ignored
    gt = np.where(gt > 0, gt + 10 * np.arange(2)[:, None, None], 0)
    seg = np.kron(rng.integers(1, 6, (2, 4, 4)), np.ones((1, 15, 15), np.int64))
    seg = seg + 10 * np.arange(2)[:, None, None]
    report = metrics.segmentation_scores_report(gt, seg, ground_truth="segments")

    # VOI: scikit-image returns (H(test | true), H(true | test)) in bits = (split, merge)
    split, merge = skimage_metrics.variation_of_information(gt, seg, ignore_labels=[0])
    assert report["voi_split"] == pytest.approx(split, abs=1e-12)
    assert report["voi_merge"] == pytest.approx(merge, abs=1e-12)

    # Adapted Rand error: scikit-image's table (GT 0 ignored), SNEMI3D/CREMI formula with
    # self-pairs; skimage's own value drops self-pairs (n (n - 1)) and is only close.
    table = skimage_metrics.contingency_table(gt, seg, ignore_labels=[0]).toarray()
    n2, s2, t2 = (table**2).sum(), (table.sum(1) ** 2).sum(), (table.sum(0) ** 2).sum()
    assert report["adapted_rand_error"] == pytest.approx(1 - 2 * n2 / (s2 + t2), abs=1e-12)
    skimage_are, _, _ = skimage_metrics.adapted_rand_error(gt, seg)
    total = table.sum()
    assert skimage_are == pytest.approx(1 - 2 * (n2 - total) / (s2 + t2 - 2 * total), abs=1e-12)
    assert report["adapted_rand_error"] == pytest.approx(skimage_are, abs=5e-3)


# === Bad input ===

def cells():
    labels = np.zeros((9, 9), np.uint8)
    labels[4, :] = 1
    return labels


@pytest.mark.parametrize("labels,segments,kwargs,match", [
    (cells(), np.ones((9, 9), np.float32), {}, r"`segments` must be an integer label image.*float32"),
    (cells(), np.ones((9, 9), bool), {}, r"`segments` must be an integer.*bool"),
    (cells(), -np.ones((9, 9), np.int32), {}, r"`segments` must hold non-negative ids.*-1"),
    (cells(), np.ones((9, 8), np.int32), {}, r"segments.shape=\(9, 8\)"),
    (cells() * 255, np.ones((9, 9), np.int32), {}, r"`labels` must be binary"),
    (cells().astype(float), np.ones((9, 9), np.int32), {"ground_truth": "segments"},
     r"`labels` must be an integer label image"),
    (cells(), np.ones((9, 9), np.int32), {"ground_truth": "binary"}, r"`ground_truth`.*'binary'"),
    (cells(), np.ones((9, 9), np.int32), {"mode": "2.5d"}, r"`mode`.*'2.5d'"),
    (cells()[None], np.ones((1, 9, 9), np.int32), {"mode": "3d"}, r"ground_truth`='segments'"),
    (np.ones((9, 9), np.uint8), np.ones((9, 9), np.int32), {}, r"no cell-interior"),
])
def test_bad_inputs(labels, segments, kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.segmentation_scores_report(labels, segments, **kwargs)
