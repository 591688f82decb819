"""Neuron segmentation from membrane maps: watershed, agglomeration, modes, tuning."""

import json

import numpy as np
import pytest

from fusionnet_tf.segmentation import (SegmentParams, agglomerate, default_params, load_params,
                                       region_adjacency, relabel_consecutive, save_params,
                                       seeded_watershed, segment)
from fusionnet_tf.segmentation.tune import SEARCH_SPACE, format_rows, tune

# no smoothing, no merging, no size filter: the watershed alone
PLAIN = SegmentParams(sigma=0.0, seed_threshold=0.1, min_seed_size=0, merge_threshold=0.0,
                      min_size=0)


def two_cells(size=32, gap=0, gap_value=0.3):
    """(H, W) float32 map: one vertical membrane (p = 1) at columns 15-16, optional gap."""
    membrane = np.zeros((size, size), np.float32)
    membrane[:, 15:17] = 1.0
    if gap:
        start = size // 2 - gap // 2
        membrane[start:start + gap, 15:17] = gap_value
    return membrane


def partition_equal(a, b):
    """True if two label images are the same partition (equal up to renaming ids)."""
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return (len(np.unique(pairs[0])) == pairs.shape[1]
            and len(np.unique(pairs[1])) == pairs.shape[1])


# === Seeded watershed ===

def test_two_cells_separated_by_a_membrane_give_two_segments():
    labels, max_id = segment(two_cells()[None], PLAIN)
    assert max_id == 2
    assert labels.shape == (1, 32, 32) and labels.dtype == np.uint32
    left, right = labels[0, :, :15], labels[0, :, 17:]
    assert np.unique(left).size == 1 and np.unique(right).size == 1
    assert left[0, 0] != right[0, 0]
    assert labels.min() == 1  # every pixel has a segment


def test_membrane_with_a_gap_is_still_split_where_thresholding_merges():
    from scipy import ndimage

    membrane = two_cells(gap=4, gap_value=0.3)
    _, thresholded = ndimage.label(membrane < 0.5)
    assert thresholded == 1  # plain thresholding merges both cells through the gap
    labels, max_id = segment(membrane, PLAIN)
    assert max_id == 2
    assert labels[0, 0] != labels[0, -1] and labels[-1, 0] != labels[-1, -1]


def test_agglomeration_merges_weak_internal_boundary_and_keeps_strong_one():
    membrane = two_cells()
    membrane[15:17, :15] = 0.3  # weak horizontal line splitting the left cell
    split = segment(membrane, PLAIN)[1]
    assert split == 3  # the watershed over-segments the left cell
    params = PLAIN.replace(merge_threshold=0.5)
    labels, max_id = segment(membrane, params)
    assert max_id == 2
    assert labels[0, 0] == labels[-1, 0]  # weak boundary merged
    assert labels[0, 0] != labels[0, -1]  # strong membrane kept


def test_agglomeration_order_uses_the_boundary_statistic():
    membrane = two_cells()
    membrane[15:17, :15] = 0.3
    # the weak boundary's mean is a little above 0.3 (it ends in the strong membrane): a
    # threshold below 0.3 merges nothing, one between weak and strong merges only the weak one
    assert segment(membrane, PLAIN.replace(merge_threshold=0.29))[1] == 3
    assert segment(membrane, PLAIN.replace(merge_threshold=0.5))[1] == 2
    assert segment(membrane, PLAIN.replace(merge_threshold=1.0))[1] == 2  # strictly below
    assert segment(two_cells(), PLAIN.replace(merge_threshold=1.0))[1] == 2


def test_quantile_statistic_ignores_a_short_weak_stretch():
    membrane = two_cells(gap=6, gap_value=0.05)  # a 6-px hole in a 32-px membrane
    seeds_apart = PLAIN.replace(seed_threshold=0.02, sigma=0.0)
    by_mean = segment(membrane, seeds_apart.replace(merge_threshold=0.85))[1]
    by_median = segment(membrane, seeds_apart.replace(merge_threshold=0.85,
                                                      merge_statistic="quantile",
                                                      merge_quantile=0.5))[1]
    assert by_mean == 1  # mean boundary ~0.82 < 0.85: merged through the hole
    assert by_median == 2  # median boundary = 1.0: kept


def test_small_segments_merge_into_weakest_neighbour():
    membrane = two_cells()
    membrane[4:6, 7:15] = 0.6  # weaker lines cut a sliver off the left cell, next to the
    membrane[0:4, 7] = 0.6     # strong membrane: it touches both cells
    labels, count, smoothed = seeded_watershed(membrane, PLAIN)
    sizes = np.bincount(labels.ravel())
    assert count == 3 and sizes[1:].min() < 50
    merged = segment(membrane, PLAIN.replace(min_size=50))
    assert merged[1] == 2
    assert merged[0][0, 10] == merged[0][20, 0]  # the sliver joins its own side (0.6 < 1.0)
    assert merged[0][0, 10] != merged[0][0, -1]


def test_region_adjacency_statistics_by_hand():
    labels = np.array([[1, 1, 2],
                       [1, 3, 2]])
    membrane = np.array([[0.0, 0.2, 0.4],
                         [0.1, 0.6, 0.8]], np.float32)
    graph = region_adjacency(labels, membrane, histogram=True)
    edges = {(u, v): (n, t) for u, v, n, t in zip(graph["u"], graph["v"], graph["length"],
                                                   graph["total"])}
    # 1-2: (0,1)-(0,2) max(0.2, 0.4); 1-3: (1,0)-(1,1) 0.6 and (0,1)-(1,1) 0.6;
    # 2-3: (1,1)-(1,2) 0.8
    assert set(edges) == {(1, 2), (1, 3), (2, 3)}
    assert edges[(1, 2)][0] == 1 and edges[(1, 2)][1] == pytest.approx(0.4)
    assert edges[(1, 3)][0] == 2 and edges[(1, 3)][1] == pytest.approx(1.2)
    assert edges[(2, 3)][0] == 1 and edges[(2, 3)][1] == pytest.approx(0.8)
    assert graph["hist"].sum() == 4


def test_average_linkage_updates_merged_boundaries():
    # 1 | 2 | 3 in a row: 1-2 boundary 0.1, 2-3 boundary 0.5, 1-3 not adjacent.
    labels = np.array([[1, 2, 3]] * 3)
    membrane = np.array([[0.0, 0.1, 0.5]] * 3, np.float32)
    mapping = agglomerate(labels, 3, membrane, threshold=0.45)
    merged = mapping[labels]
    assert merged[0, 0] == merged[0, 1] != merged[0, 2]


def test_3d_mode_links_slices_and_2d_mode_does_not():
    stack = np.stack([two_cells(), two_cells()])
    labels_2d, max_2d = segment(stack, PLAIN, mode="2d")
    labels_3d, max_3d = segment(stack, PLAIN, mode="3d")
    assert max_2d == 4 and max_3d == 2
    assert labels_3d[0, 0, 0] == labels_3d[1, 0, 0]
    assert labels_2d[0, 0, 0] != labels_2d[1, 0, 0]
    assert np.unique(labels_2d[1]).min() > labels_2d[0].max()  # ids unique over the stack


def shifted_sections():
    """Two sections: membrane at columns 15-16, then at columns 5-6 (cells shift)."""
    lower = np.zeros((32, 32), np.float32)
    lower[:, 5:7] = 1.0
    return np.stack([two_cells(), lower])


def test_3d_thick_sections_link_by_overlap_and_isotropic_floods_in_3d():
    stack = shifted_sections()
    linked, linked_count = segment(stack, PLAIN, mode="3d")  # anisotropy 12.5: link sections
    # each cell's watershed takes one membrane column: the right cells overlap with
    # IoU 16/26 = 0.62: one id; the left cells 6/16 = 0.38: two ids
    assert linked_count == 3
    assert linked[0, 0, -1] == linked[1, 0, -1] and linked[0, 0, 0] != linked[1, 0, 0]
    np.testing.assert_array_equal(linked[0] == linked[0, 0, 0], segment(stack, PLAIN)[0][0] ==
                                  segment(stack, PLAIN)[0][0, 0, 0])
    stricter = segment(stack, PLAIN.replace(z_link_overlap=0.7), mode="3d")[1]
    assert stricter == 4
    # isotropic voxels: one 3D watershed, whose 6-connected seeds join all four cells
    assert segment(stack, PLAIN.replace(anisotropy=1.0), mode="3d")[1] == 1


def test_3d_anisotropy_scales_smoothing_along_z():
    from fusionnet_tf.segmentation.watershed import smooth

    stack = np.zeros((5, 9, 9), np.float32)
    stack[2, 4, 4] = 1.0
    iso = smooth(stack, 1.0, sampling=(1.0, 1.0, 1.0))
    aniso = smooth(stack, 1.0, sampling=(10.0, 1.0, 1.0))
    assert iso[1, 4, 4] > 0.01 and aniso[1, 4, 4] < 1e-6  # z barely smoothed at 10x


def test_keep_boundaries_sets_membrane_to_zero_only_on_request():
    membrane = two_cells()
    labels, _ = segment(membrane, PLAIN, keep_boundaries=True)
    assert np.all(labels[:, 15:17] == 0) and np.all(labels[:, :15] > 0)
    assert segment(membrane, PLAIN)[0].min() == 1


def test_distance_seeds_split_touching_blobs():
    yy, xx = np.mgrid[:40, :60]
    interior = ((yy - 20) ** 2 + (xx - 18) ** 2 < 144) | ((yy - 20) ** 2 + (xx - 38) ** 2 < 144)
    membrane = np.where(interior, 0.0, 1.0).astype(np.float32)  # two discs joined by a neck
    threshold_seeds = segment(membrane, PLAIN.replace(seed_threshold=0.5))[1]
    distance = segment(membrane, PLAIN.replace(seed_method="distance", seed_threshold=0.5,
                                               seed_distance=8.0))[1]
    assert threshold_seeds == 1 and distance == 2


def test_relabel_consecutive_keeps_zero_and_order():
    labels = np.array([[7, 7, 0], [3, 9, 0]])
    relabelled, count = relabel_consecutive(labels)
    assert count == 3
    np.testing.assert_array_equal(relabelled, [[2, 2, 0], [1, 3, 0]])
    sparse, count = relabel_consecutive(np.array([5, 10**12, 5]))
    assert count == 2 and sparse.tolist() == [1, 2, 1]


@pytest.mark.parametrize("bad, message", [
    (np.full((4, 4), 1.5, np.float32), r"\[0, 1\]"),
    (np.full((4, 4), np.nan, np.float32), "NaN"),
    (np.ones((4, 4), np.uint8), "float"),
    (np.ones((2, 2, 2, 2), np.float32), "shape"),
])
def test_bad_membrane_maps_are_refused(bad, message):
    with pytest.raises(ValueError, match=message):
        segment(bad)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="mode"):
        segment(two_cells(), mode="4d")


# === Parameters ===

def test_params_validate_and_round_trip(tmp_path):
    with pytest.raises(ValueError, match="seed_threshold"):
        SegmentParams(seed_threshold=1.5)
    with pytest.raises(ValueError, match="merge_statistic"):
        SegmentParams(merge_statistic="max")
    with pytest.raises(ValueError, match="min_size"):
        SegmentParams(min_size=-1)
    params = SegmentParams(merge_threshold=0.6, min_size=12)
    save_params(tmp_path / "p.json", params, extra={"v_rand": 0.9})
    assert load_params(tmp_path / "p.json") == params
    assert json.loads((tmp_path / "p.json").read_text())["v_rand"] == 0.9


def test_unknown_parameter_key_names_it_and_the_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"seed_threshold": 0.1, "watershed_level": 3}))
    with pytest.raises(ValueError, match=r"watershed_level.*|p\.json"):
        load_params(path)
    try:
        load_params(path)
    except ValueError as exc:
        assert "watershed_level" in str(exc) and "p.json" in str(exc)


def test_shipped_params_load():
    params = default_params()
    assert isinstance(params, SegmentParams)


# === Tuning ===

def test_tuner_improves_on_a_bad_start_and_respects_the_budget():
    rng = np.random.default_rng(0)
    stack = np.stack([two_cells(gap=4, gap_value=0.3) for _ in range(2)])
    stack = np.clip(stack + rng.normal(0, 0.02, stack.shape), 0, 1).astype(np.float32)
    labels = (np.stack([two_cells() for _ in range(2)]) > 0.5).astype(np.uint8)
    bad = PLAIN.replace(seed_threshold=0.5)  # seeds leak through the gap: one segment
    space = {"seed_threshold": (0.05, 0.1, 0.2, 0.5), "sigma": (0.0, 1.0)}
    best, rows = tune(stack, labels, budget=6, start=bad, space=space, seed=1)
    assert len(rows) <= 6
    assert rows[0]["params"]["seed_threshold"] == 0.5  # the start is scored first
    assert rows[0]["v_rand"] < 0.9
    assert max(row["v_rand"] for row in rows) == pytest.approx(1.0)
    assert best.seed_threshold in (0.05, 0.1, 0.2)
    table = format_rows(rows)
    assert "V_rand" in table and f"{len(rows)} settings tried" in table


def test_tuner_checks_its_arguments():
    stack = two_cells()[None]
    labels = (stack > 0.5).astype(np.uint8)
    with pytest.raises(ValueError, match="budget"):
        tune(stack, labels, budget=0)
    with pytest.raises(ValueError, match="unknown"):
        tune(stack, labels, budget=2, space={"bogus": (1, 2)})
    assert set(SEARCH_SPACE) <= set(SegmentParams().to_dict())


def test_one_pixel_diagonal_membrane_separates_cells():
    membrane = np.zeros((24, 24), np.float32)
    membrane[np.arange(24), np.arange(24)] = 1.0  # 8-connected line: 4-connected seeds stop
    labels, max_id = segment(membrane, PLAIN)
    assert max_id == 2
    assert labels[0, -1] != labels[-1, 0]


def test_flooding_does_not_cross_a_diagonal_membrane():
    membrane = np.full((24, 24), 0.05, np.float32)
    membrane[np.triu_indices(24, 1)] = 0.0  # side A: all seed
    membrane[np.arange(24), np.arange(24)] = 1.0
    membrane[-3:, :2] = 0.0  # side B: a small seed in its corner
    labels, max_id = segment(membrane, PLAIN.replace(seed_threshold=0.01))
    below = labels[np.tril_indices(24, -1)]
    assert max_id == 2 and np.unique(below).size == 1 and below[0] != labels[0, -1]


def test_merged_boundaries_are_length_weighted_averages():
    # 1 touches 2 along 2 pixel pairs (boundary 0), 3 along 1 pair (0.2); 2 touches 3 along
    # 3 pairs (0.6). After 1 and 2 merge, their boundary with 3 is (0.2 + 3 * 0.6) / 4 = 0.5.
    labels = np.array([[1, 1, 3],
                       [2, 2, 3],
                       [2, 2, 3],
                       [2, 2, 3]])
    membrane = np.zeros(labels.shape, np.float32)
    membrane[0, 2], membrane[1:, 2] = 0.2, 0.6
    kept = agglomerate(labels, 3, membrane, threshold=0.45)[labels]
    assert kept[0, 0] == kept[1, 0] != kept[0, 2]
    merged = agglomerate(labels, 3, membrane, threshold=0.55)[labels]
    assert np.unique(merged).size == 1


# === Inclusive and exclusive bounds: "smaller than min_size", "IoU >= z_link_overlap" ===

def test_a_segment_of_exactly_min_size_is_kept():
    labels = np.array([[1, 1, 2, 2, 2]])
    membrane = np.zeros(labels.shape, np.float32)
    assert agglomerate(labels, 2, membrane, threshold=0.0, min_size=2)[labels].tolist() == \
        [[1, 1, 2, 2, 2]]  # 2 pixels are not smaller than 2
    merged = agglomerate(labels, 2, membrane, threshold=0.0, min_size=3)[labels]
    assert np.unique(merged).size == 1  # 2 pixels are smaller than 3


def test_small_segments_stop_absorbing_once_they_reach_min_size():
    # 1 and 2 (one pixel each) are below min_size=2; 1 joins 2, which then has exactly 2
    # pixels and stays apart from the large segment 3
    labels = np.array([[1, 2, 3, 3, 3, 3, 3, 3]])
    mapping = agglomerate(labels, 3, np.zeros(labels.shape, np.float32), threshold=0.0,
                          min_size=2)
    merged = mapping[labels][0]
    assert merged[0] == merged[1] != merged[2]


def test_seeds_of_exactly_min_seed_size_are_kept():
    from fusionnet_tf.segmentation.watershed import threshold_seeds

    membrane = np.ones((5, 9), np.float32)
    membrane[1, 1:4] = 0.0  # a 3-pixel seed
    membrane[3, 5:9] = 0.0  # a 4-pixel seed
    assert threshold_seeds(membrane, 0.5, min_size=3)[1] == 2
    seeds, count = threshold_seeds(membrane, 0.5, min_size=4)
    assert count == 1 and seeds[3, 5] == 1 and seeds[1, 1] == 0


def test_segment_keeps_a_sliver_of_exactly_min_size():
    membrane = two_cells()
    membrane[4:6, 7:15] = 0.6  # the sliver of test_small_segments_merge_into_weakest_neighbour
    membrane[0:4, 7] = 0.6
    labels, count, _ = seeded_watershed(membrane, PLAIN)
    sliver = int(np.bincount(labels.ravel())[1:].min())
    assert count == 3
    assert segment(membrane, PLAIN.replace(min_size=sliver))[1] == 3
    assert segment(membrane, PLAIN.replace(min_size=sliver + 1))[1] == 2


def test_sections_link_at_exactly_z_link_overlap():
    from fusionnet_tf.segmentation.segmenter import link_sections

    # 1 | 3 share 1 of 2 pixels (IoU 0.5); 2 | 4 share 2 of 3 (IoU 0.67)
    labels = np.array([[[1, 1, 2, 2]], [[3, 4, 4, 4]]])
    assert link_sections(labels, 0.5).tolist() == [[[1, 1, 2, 2]], [[1, 2, 2, 2]]]
    assert link_sections(labels, 0.6).max() == 3
    # the right cells of shifted_sections overlap with IoU 16 / 26 (see above)
    stack = shifted_sections()
    assert segment(stack, PLAIN.replace(z_link_overlap=16 / 26), mode="3d")[1] == 3
    assert segment(stack, PLAIN.replace(z_link_overlap=17 / 26), mode="3d")[1] == 4


def test_link_segments_counts_equal_iou_as_enough():
    from fusionnet_tf.segmentation.segmenter import link_segments

    sizes = np.array([0, 3, 3, 3, 5], np.int64)
    # 1 -> 2 share 2 of 4 pixels (IoU 0.5); 3 -> 4 share 2 of 6 (IoU 1/3)
    final, count = link_segments(4, sizes, np.array([1, 3]), np.array([2, 4]), np.array([2, 2]),
                                 0.5)
    assert count == 3 and final[1] == final[2] and final[3] != final[4]
    assert link_segments(4, sizes, np.array([1]), np.array([2]), np.array([2]), 0.51)[1] == 4
