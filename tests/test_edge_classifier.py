"""The learned edge classifier: features, labels, forest, merging, files, CLI, cross-validation."""

import json

import numpy as np
import pytest
import tifffile
from skimage.draw import line

from fusionnet_tf.cli import main
from fusionnet_tf.segmentation import SegmentParams, segment
from fusionnet_tf.segmentation.edge_classifier import (EdgeClassifier, build_graph,
                                                       cross_validate_edge_classifier,
                                                       load_edge_classifier, merge_greedy,
                                                       pack_forest, predict_packed,
                                                       train_edge_classifier)
from fusionnet_tf.segmentation.edge_features import (DROPPED, FEATURE_NAMES, KEEP, MERGE,
                                                     edge_boundaries, edge_labels,
                                                     fragment_majority, graph_features,
                                                     ground_truth_ids, region_statistics)
from fusionnet_tf.segmentation.tune import score_segmentation, tune

COLUMN = {name: index for index, name in enumerate(FEATURE_NAMES)}
# fragments of the synthetic slices: no smoothing, seeds where p < 0.1, small pieces absorbed
PARAMS = SegmentParams(sigma=0.0, seed_threshold=0.1, min_seed_size=4, min_size=10,
                       merge_threshold=0.0)
TREES = 25


# === Synthetic data ===

def voronoi_slice(rng, size=64, cells=10, false_lines=4):
    """A slice of Voronoi cells whose map fools every fixed boundary threshold.

    True walls are strong (0.9) or faint (0.5, 40% of them); some cells are
    cut by a false, dashed line (0.95, every 8th pixel 0.2): its mean (~0.85)
    and its quantiles from 0.25 up are above the faint walls', so a threshold
    on the mean or on those quantiles either keeps the false cuts or merges
    across faint walls, while the dashes' spread (std, min, q10) tells them
    apart.

    Returns:
        ``(membrane, labels)``: float32 (size, size) map and uint8 binary
        ground truth, 1 = membrane.
    """
    points = rng.uniform(0, size, (cells, 2))
    yy, xx = np.mgrid[:size, :size]
    ids = np.argmin((yy[..., None] - points[:, 0]) ** 2 + (xx[..., None] - points[:, 1]) ** 2,
                    axis=-1) + 1
    wall = np.zeros((size, size), bool)
    other = ids.copy()
    down, right = ids[:-1] != ids[1:], ids[:, :-1] != ids[:, 1:]
    wall[:-1] |= down
    wall[:, :-1] |= right
    other[:-1] = np.where(down, ids[1:], other[:-1])
    other[:, :-1] = np.where(right, ids[:, 1:], other[:, :-1])
    levels = np.where(rng.random((cells + 1, cells + 1)) < 0.4, 0.5, 0.9)
    levels = np.maximum(levels, levels.T)  # one level per pair of cells
    membrane = np.where(wall, levels[ids, other], 0.0)
    for _ in range(false_lines):
        cell = rng.integers(1, cells + 1)
        ys, xs = np.nonzero((ids == cell) & ~wall)
        if ys.size < 40:
            continue
        angle = rng.uniform(0, np.pi)
        dy, dx = size * np.sin(angle), size * np.cos(angle)
        rr, cc = line(int(ys.mean() - dy), int(xs.mean() - dx), int(ys.mean() + dy),
                      int(xs.mean() + dx))
        inside = (rr >= 0) & (rr < size) & (cc >= 0) & (cc < size)
        rr, cc = rr[inside], cc[inside]
        inside = (ids[rr, cc] == cell) & ~wall[rr, cc]
        rr, cc = rr[inside], cc[inside]
        dashes = np.where(np.arange(rr.size) % 8 == 7, 0.2, 0.95)
        membrane[rr, cc] = np.maximum(membrane[rr, cc], dashes)
    noise = np.abs(rng.normal(0, 0.03, membrane.shape))
    return np.clip(membrane + noise, 0, 1).astype(np.float32), wall.astype(np.uint8)


def voronoi_stack(slices, seed=0):
    """(N, 64, 64) maps and binary labels (``voronoi_slice``)."""
    rng = np.random.default_rng(seed)
    pairs = [voronoi_slice(rng) for _ in range(slices)]
    return np.stack([pair[0] for pair in pairs]), np.stack([pair[1] for pair in pairs])


@pytest.fixture(scope="module")
def stack():
    return voronoi_stack(12)


@pytest.fixture(scope="module")
def trained(stack):
    membrane, labels = stack
    return train_edge_classifier(membrane[:8], labels[:8], PARAMS, trees=TREES)


# === Features ===

def three_regions():
    """4 x 6 fragments: 1 on the left, 2 top right, 3 bottom right; a graded 2|3 boundary."""
    fragments = np.array([[1, 1, 2, 2, 2, 2],
                          [1, 1, 2, 2, 2, 2],
                          [1, 1, 3, 3, 3, 3],
                          [1, 1, 3, 3, 3, 3]])
    membrane = np.zeros((4, 6), np.float32)
    membrane[1, 2:] = [0.2, 0.4, 0.6, 0.8]  # region 2's bottom row
    membrane[3, 0] = 0.4                      # inside region 1, on no boundary
    return fragments, membrane


def test_features_of_a_hand_built_three_region_image():
    fragments, membrane = three_regions()
    graph = edge_boundaries(fragments, membrane)
    assert graph["u"].tolist() == [1, 1, 2] and graph["v"].tolist() == [2, 3, 3]
    # lengths: 1|2 and 1|3 two pixel pairs each (columns 1-2), 2|3 four (rows 1-2)
    assert np.diff(graph["offsets"]).tolist() == [2, 2, 4]
    sizes, mass = region_statistics(fragments, membrane, 3)
    assert sizes.tolist() == [0, 8, 8, 8]
    features = graph_features(graph, sizes, mass)
    assert features.shape == (3, len(FEATURE_NAMES)) and features.dtype == np.float32
    row = dict(zip(FEATURE_NAMES, features[2].tolist()))  # the 2|3 boundary: .2 .4 .6 .8
    expected = {"mean": 0.5, "std": np.sqrt(0.05), "min": 0.2, "max": 0.8,
                "q10": 0.26, "q25": 0.35, "q50": 0.5, "q75": 0.65, "q90": 0.74,
                "log_length": np.log(4), "log_size_min": np.log(8), "log_size_max": np.log(8),
                "log_length_per_sqrt_size_min": np.log(4 / np.sqrt(8)),
                "region_mean_min": 0.0, "region_mean_max": 0.25, "contrast": 0.25}
    assert row == pytest.approx(expected, abs=1e-6)
    # 1|2: pairs (0,1)-(0,2) and (1,1)-(1,2) -> max(p) = 0 and 0.2; region 1 holds 0.4 / 8
    row = dict(zip(FEATURE_NAMES, features[0].tolist()))
    assert (row["mean"], row["min"], row["max"]) == pytest.approx((0.1, 0.0, 0.2))
    assert (row["region_mean_min"], row["region_mean_max"]) == pytest.approx((0.05, 0.25))
    assert row["log_length"] == pytest.approx(np.log(2))


def test_features_of_unequal_regions_use_the_smaller_size():
    fragments = np.array([[1, 2, 2, 2, 2, 2]] * 3)  # 3 and 15 pixels, boundary of 3 pairs
    membrane = np.zeros(fragments.shape, np.float32)
    graph = edge_boundaries(fragments, membrane)
    features = graph_features(graph, *region_statistics(fragments, membrane, 2))
    row = dict(zip(FEATURE_NAMES, features[0].tolist()))
    assert row["log_size_min"] == pytest.approx(np.log(3))
    assert row["log_size_max"] == pytest.approx(np.log(15))
    assert row["log_length_per_sqrt_size_min"] == pytest.approx(np.log(3 / np.sqrt(3)))


def test_quantiles_and_spread_match_numpy_on_random_fragments():
    rng = np.random.default_rng(3)
    fragments = (rng.integers(0, 3, (24, 24)) + 3 * (np.arange(24) // 8)[:, None]) + 1
    membrane = rng.random((24, 24)).astype(np.float32)
    graph = edge_boundaries(fragments, membrane)
    features = graph_features(graph, *region_statistics(fragments, membrane,
                                                        int(fragments.max())))
    for edge in range(len(graph["u"])):
        values = graph["values"][graph["offsets"][edge]:graph["offsets"][edge + 1]]
        assert np.all(np.diff(values) >= 0)  # sorted within the edge
        expected = [values.mean(), values.std(), values.min(), values.max(),
                    *np.quantile(values, [0.1, 0.25, 0.5, 0.75, 0.9])]
        np.testing.assert_allclose(features[edge, :9], expected, rtol=1e-5, atol=1e-6)


# === Training labels ===

def test_training_labels_use_the_majority_nonzero_ground_truth_id():
    fragments = np.array([[1, 1, 1, 1, 1, 2, 2, 2, 2, 2],
                          [3, 3, 3, 3, 3, 4, 4, 4, 4, 4]])
    gt = np.array([[5, 5, 5, 0, 9, 5, 5, 0, 0, 9],   # 1: 5 (60%), 2: 5 (40%), 0 is 40%
                   [7, 7, 0, 0, 0, 0, 0, 0, 0, 7]])  # 3: 7 but 60% boundary, 4: mostly 0
    majority, valid = fragment_majority(fragments, gt, 4)
    assert majority.tolist() == [0, 5, 5, 7, 7]
    assert valid.tolist() == [False, True, True, False, False]
    labels = edge_labels(np.array([1, 1, 2, 3]), np.array([2, 3, 4, 4]), majority, valid)
    assert labels.tolist() == [MERGE, DROPPED, DROPPED, DROPPED]
    gt[0, 5:] = [9, 9, 9, 0, 5]  # fragment 2 now belongs to cell 9
    majority, valid = fragment_majority(fragments, gt, 4)
    assert majority[2] == 9 and valid[2]
    assert edge_labels(np.array([1]), np.array([2]), majority, valid).tolist() == [KEEP]


def test_training_labels_break_ties_towards_the_smaller_id():
    fragments = np.ones((1, 4), np.int64)
    majority, valid = fragment_majority(fragments, np.array([[8, 3, 8, 3]]), 1)
    assert majority.tolist() == [0, 3] and valid[1]


def test_ground_truth_ids_are_the_interior_components_of_membrane_labels():
    labels = np.zeros((1, 3, 5), np.uint8)
    labels[0, :, 2] = 1
    ids = ground_truth_ids(labels)
    assert ids.tolist() == [[[1, 1, 0, 2, 2]] * 3]
    assert ground_truth_ids(ids, "segments").tolist() == ids.tolist()


# === The packed forest and the merge loop ===

def test_packed_forest_predicts_what_scikit_learn_predicts():
    from sklearn.ensemble import RandomForestClassifier

    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, len(FEATURE_NAMES))).astype(np.float32)
    targets = (features[:, 0] + features[:, 1] * features[:, 2] > 0).astype(np.int8)
    forest = RandomForestClassifier(n_estimators=15, max_depth=8, random_state=0)
    forest.fit(features, targets)
    packed = pack_forest(forest)
    rows = rng.normal(size=(200, len(FEATURE_NAMES)))
    np.testing.assert_allclose(predict_packed(packed, rows), forest.predict_proba(rows)[:, 1],
                               atol=1e-12)
    assert predict_packed(packed, rows[:0]).shape == (0,)


def row_of_three():
    """2 x 6 fragments 1 | 2 | 3 (4 pixels each); boundary 1|2 at 0.1, 2|3 at 0.5."""
    fragments = np.repeat(np.repeat(np.array([[1, 2, 3]]), 2, axis=0), 2, axis=1)
    membrane = np.zeros((2, 6), np.float32)
    membrane[:, 2] = 0.1
    membrane[:, 4] = 0.5
    return fragments, membrane


def test_merging_rescores_every_edge_of_the_merged_region():
    """2|3 scores high only once a region of 8 pixels touches it: after 1 and 2 merge."""
    fragments, membrane = row_of_three()
    state = build_graph(fragments, 3, membrane)
    calls = []

    def score(edges):
        features = state.features(edges)
        calls.append(features)
        big = features[:, COLUMN["log_size_max"]] >= np.log(8) - 1e-6
        return np.where(features[:, COLUMN["mean"]] < 0.3, 0.9, np.where(big, 0.8, 0.1))

    assert merge_greedy(state, score, threshold=0.5) == 2
    assert len(set(state.roots()[1:].tolist())) == 1
    assert calls[0][:, COLUMN["mean"]].tolist() == pytest.approx([0.1, 0.5])
    # the rescored 12|3 edge: the merged region has 8 pixels, its neighbour 4
    assert calls[1][0, COLUMN["log_size_max"]] == pytest.approx(np.log(8))
    assert calls[1][0, COLUMN["log_size_min"]] == pytest.approx(np.log(4))


def test_merging_takes_the_most_confident_pair_first_and_stops_below_the_threshold():
    fragments, membrane = row_of_three()
    state = build_graph(fragments, 3, membrane)

    def score(edges):
        if len(edges) == 2:
            return np.array([0.6, 0.7])  # 1|2, 2|3: 2|3 is the more confident
        return np.array([0.4])  # the merged region's edge to 1: below the threshold

    assert merge_greedy(state, score, threshold=0.5) == 1
    roots = state.roots()
    assert roots[2] == roots[3] != roots[1]


def test_features_after_merges_equal_features_computed_from_scratch():
    rng = np.random.default_rng(1)
    membrane = rng.random((64, 64)).astype(np.float32)
    fragments = (np.arange(64)[:, None] // 8) * 8 + np.arange(64)[None, :] // 8 + 1  # 8 x 8
    count = 64
    state = build_graph(fragments, count, membrane)
    calls = []

    def score(edges):  # random merges for the first 12 calls, then none
        calls.append(len(edges))
        return rng.random(len(edges)) if len(calls) <= 12 else np.zeros(len(edges))

    assert merge_greedy(state, score, threshold=0.9) >= 10
    mapping = state.roots()
    merged = mapping[fragments]
    fresh = edge_boundaries(merged, membrane)
    expected = graph_features(fresh, *region_statistics(merged, membrane, count))
    live = {tuple(sorted(state.ends[edge])): edge for edge in range(len(state.ends))
            if state.stamp[edge] >= 0}
    assert sorted(live) == list(zip(fresh["u"].tolist(), fresh["v"].tolist()))
    assert len(live) >= 3
    np.testing.assert_allclose(state.features([live[key] for key in sorted(live)]), expected,
                               rtol=1e-5, atol=1e-6)


def constant_classifier(p_merge, params=PARAMS):
    """An ``EdgeClassifier`` whose one tree is one leaf: p(merge) = ``p_merge`` for every edge."""
    packed = {"feature": np.zeros(1, np.int32), "threshold": np.full(1, np.inf),
              "left": np.zeros(1, np.int64), "right": np.zeros(1, np.int64),
              "leaf_p": np.full(1, p_merge), "roots": np.zeros(1, np.int64), "depth": 0}
    return EdgeClassifier(packed, params)


def test_small_segments_are_absorbed_as_in_the_recipe_after_the_classifier():
    """A 2-pixel fragment between two 8-pixel ones joins its weakest-boundary neighbour."""
    from fusionnet_tf.segmentation.agglomeration import agglomerate

    fragments = np.array([[1, 1, 1, 1, 2, 3, 3, 3, 3]] * 2)
    smoothed = np.zeros(fragments.shape, np.float32)
    smoothed[:, 4] = 0.2   # the 1|2 boundary (max of the two sides) is 0.2, 2|3 is 0.6
    smoothed[:, 5] = 0.6
    never = constant_classifier(0.0)
    mapping = never.agglomerate(fragments, 3, smoothed, smoothed, min_size=3)
    assert mapping.tolist() == [0, 1, 1, 3]
    assert mapping.tolist() == agglomerate(fragments, 3, smoothed, 0, 3).tolist()
    assert never.agglomerate(fragments, 3, smoothed, smoothed, min_size=0).tolist() == [0, 1, 2, 3]
    always = constant_classifier(1.0)
    assert len(set(always.agglomerate(fragments, 3, smoothed, smoothed)[1:].tolist())) == 1


# === Learning ===

def test_the_classifier_beats_the_tuned_threshold_recipe_held_out(stack, trained):
    membrane, labels = stack
    space = {"merge_threshold": (0.0, 0.3, 0.4, 0.55, 0.7, 0.8, 0.9, 0.97),
             "merge_statistic": ("mean", "quantile"),
             "merge_quantile": (0.1, 0.25, 0.5, 0.75)}
    recipe, _ = tune(membrane[:8], labels[:8], budget=40, start=PARAMS, space=space)
    recipe_v_rand, _ = score_segmentation(labels[8:], segment(membrane[8:], recipe)[0])
    edges, _ = trained.segment(membrane[8:])
    edges_v_rand, _ = score_segmentation(labels[8:], edges)
    unmerged_v_rand, _ = score_segmentation(labels[8:], segment(membrane[8:], PARAMS)[0])
    assert edges_v_rand > 0.99
    assert edges_v_rand > recipe_v_rand + 0.02
    assert edges_v_rand > unmerged_v_rand + 0.03
    assert trained.info["examples"] > 0 and 0 < trained.info["merge_share"] < 1


def test_the_classifier_ranks_false_cuts_above_faint_walls(stack, trained):
    """On held-out slices, initial edges labelled merge score higher than those labelled keep."""
    from fusionnet_tf.segmentation.edge_classifier import training_examples

    membrane, labels = stack
    gt = ground_truth_ids(labels)
    features, targets = zip(*[training_examples(membrane[i], gt[i], PARAMS)
                              for i in range(8, 12)])
    features, targets = np.concatenate(features), np.concatenate(targets)
    p = trained.predict(features)
    assert np.mean((p >= 0.5) == (targets == MERGE)) > 0.95


def test_training_refuses_slices_without_both_kinds_of_edges():
    membrane = np.zeros((1, 16, 16), np.float32)
    membrane[0, :, 8] = 1.0
    labels = (membrane > 0.5).astype(np.uint8)  # every boundary is true: nothing to merge
    with pytest.raises(ValueError, match="none of which is a merge edge"):
        train_edge_classifier(membrane, labels, PARAMS, trees=2)
    with pytest.raises(ValueError, match="shape"):
        train_edge_classifier(membrane, labels[:, :8], PARAMS, trees=2)


def test_segment_refuses_the_classifier_in_3d(trained):
    with pytest.raises(ValueError, match="2D slices"):
        segment(np.zeros((2, 8, 8), np.float32), PARAMS, mode="3d", classifier=trained)


# === Files ===

def test_save_and_load_round_trip(tmp_path, stack, trained):
    path = trained.save(tmp_path / "edges.npz")
    loaded = load_edge_classifier(path)
    assert loaded.params == trained.params and loaded.threshold == trained.threshold
    assert loaded.info == json.loads(json.dumps(trained.info))
    rows = np.random.default_rng(0).random((50, len(FEATURE_NAMES)))
    np.testing.assert_array_equal(loaded.predict(rows), trained.predict(rows))
    np.testing.assert_array_equal(loaded.segment(stack[0][8:])[0], trained.segment(stack[0][8:])[0])
    with np.load(path, allow_pickle=False) as data:
        header = json.loads(bytes(data["header"]).decode())
    assert header["format"] == "fusionnet-edge-classifier" and header["format_version"] == 1
    assert header["feature_names"] == list(FEATURE_NAMES) and "fusionnet_tf" in header
    assert [p.name for p in tmp_path.iterdir()] == ["edges.npz"]  # no temporary file left


def rewrite_header(source, target, **changes):
    with np.load(source, allow_pickle=False) as data:
        arrays = {key: data[key] for key in data.files}
    header = dict(json.loads(bytes(arrays["header"]).decode()), **changes)
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    np.savez(target, **arrays)


def test_load_refuses_other_files_with_one_line_naming_them(tmp_path, trained):
    good = trained.save(tmp_path / "edges.npz")
    tifffile.imwrite(tmp_path / "map.tif", np.zeros((4, 4), np.float32))
    (tmp_path / "params.json").write_text("{}")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    np.save(tmp_path / "array.npy", np.zeros(3))
    for name in ("map.tif", "params.json", "other.npz", "array.npy"):
        with pytest.raises(ValueError, match="not a fusionnet edge classifier file") as caught:
            load_edge_classifier(tmp_path / name)
        assert name in str(caught.value) and "\n" not in str(caught.value)
    rewrite_header(good, tmp_path / "newer.npz", format_version=2)
    with pytest.raises(ValueError, match="format version 2"):
        load_edge_classifier(tmp_path / "newer.npz")
    rewrite_header(good, tmp_path / "old_features.npz", feature_names=["mean"])
    with pytest.raises(ValueError, match="retrain"):
        load_edge_classifier(tmp_path / "old_features.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_edge_classifier(tmp_path / "missing.npz")


def test_a_threshold_outside_zero_one_is_refused(trained):
    with pytest.raises(ValueError, match="threshold"):
        trained.with_threshold(1.5)
    assert isinstance(trained.with_threshold(None), EdgeClassifier)


# === Cross-validation ===

def test_cross_validation_scores_each_fold_with_a_classifier_that_never_saw_it(stack):
    membrane, labels = stack[0][:6], stack[1][:6]
    report = cross_validate_edge_classifier(membrane, labels, folds=3, params=PARAMS,
                                            trees=TREES)
    assert [row["slices"] for row in report["folds"]] == [[0, 1], [2, 3], [4, 5]]
    alone = train_edge_classifier(membrane[2:], labels[2:], PARAMS, trees=TREES)
    v_rand, v_info = score_segmentation(labels[:2], alone.segment(membrane[:2])[0])
    assert report["folds"][0]["v_rand"] == pytest.approx(v_rand)
    assert report["folds"][0]["v_info"] == pytest.approx(v_info)
    pooled = np.concatenate([train_edge_classifier(np.delete(membrane, row["slices"], 0),
                                                   np.delete(labels, row["slices"], 0), PARAMS,
                                                   trees=TREES).segment(membrane[row["slices"]])[0]
                             for row in report["folds"]])
    assert report["pooled_held_out"]["v_rand"] == pytest.approx(
        score_segmentation(labels, pooled)[0])


# === Command line ===

def run_cli(argv, capsys):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture()
def files(tmp_path, stack):
    membrane, labels = stack
    tifffile.imwrite(tmp_path / "pred.tif", membrane, photometric="minisblack")
    tifffile.imwrite(tmp_path / "labels.tif", ((1 - labels) * 255).astype(np.uint8),
                     photometric="minisblack")  # ISBI convention: 0 = membrane
    (tmp_path / "params.json").write_text(json.dumps({"params": PARAMS.to_dict()}))
    return tmp_path


def test_cli_train_edges_then_segment_method_edges(files, stack, capsys):
    code, _, err = run_cli(["train-edges", "--pred", files / "pred.tif", "--labels",
                            files / "labels.tif", "--slices", "0-7", "-o", files / "edges.npz",
                            "--params", files / "params.json", "--trees", TREES, "--quiet"],
                           capsys)
    assert code == 0, err
    assert "wrote" in err and "8 slice(s)" in err
    classifier = load_edge_classifier(files / "edges.npz")
    assert classifier.params == PARAMS and classifier.info["slice_spec"] == "0-7"
    library = train_edge_classifier(stack[0][:8], stack[1][:8], PARAMS, trees=TREES)
    rows = np.random.default_rng(0).random((30, len(FEATURE_NAMES)))
    np.testing.assert_array_equal(classifier.predict(rows), library.predict(rows))

    code, _, err = run_cli(["segment", files / "pred.tif", "-o", files / "seg.tif", "--slices",
                            "8-11", "--method", "edges", "--classifier", files / "edges.npz",
                            "--quiet"], capsys)
    assert code == 0, err
    written = tifffile.imread(files / "seg.tif")
    expected, max_id = library.segment(stack[0][8:])
    np.testing.assert_array_equal(written, expected)
    assert f"{max_id} segments" in err
    metadata = json.loads(tifffile.TiffFile(files / "seg.tif").pages[0].description)
    assert metadata["method"] == "edges" and metadata["params"] == PARAMS.to_dict()

    code, _, err = run_cli(["segment", files / "pred.tif", "-o", files / "never.tif",
                            "--slices", "8-11", "--method", "edges", "--classifier",
                            files / "edges.npz", "--merge-probability", "0.0", "--set",
                            "min_size=0", "--quiet"], capsys)
    assert code == 0, err
    merged = tifffile.imread(files / "never.tif")  # p(merge) >= 0 everywhere: all merge
    assert [len(np.unique(labels)) for labels in merged] == [1, 1, 1, 1]


def test_cli_train_edges_cv_prints_held_out_scores_per_fold(files, stack, capsys):
    code, out, err = run_cli(["train-edges", "--pred", files / "pred.tif", "--labels",
                              files / "labels.tif", "--slices", "0-5", "-o",
                              files / "edges.npz", "--params", files / "params.json",
                              "--trees", TREES, "--cv", "3", "--quiet"], capsys)
    assert code == 0, err
    report = cross_validate_edge_classifier(stack[0][:6], stack[1][:6], folds=3, params=PARAMS,
                                            trees=TREES)
    lines = out.strip().splitlines()
    assert len(lines) == 5  # header, 3 folds, pooled
    for line_text, row in zip(lines[1:4], report["folds"]):
        span = f"{row['slices'][0]}-{row['slices'][-1]}"
        assert line_text.split()[:4] == [str(row["fold"]), span, f"{row['v_rand']:.4f}",
                                         f"{row['v_info']:.4f}"]
    pooled = report["pooled_held_out"]
    assert lines[4] == (f"pooled held-out: V_rand {pooled['v_rand']:.4f}, "
                        f"V_info {pooled['v_info']:.4f}")
    saved = load_edge_classifier(files / "edges.npz").info
    assert saved["cv"]["k"] == 3 and saved["slices"] == 6  # trained on all six slices
    assert saved["cv"]["pooled_held_out"]["v_rand"] == pytest.approx(pooled["v_rand"])


@pytest.mark.parametrize("argv, message", [
    (["segment", "{root}/pred.tif", "-o", "{root}/x.tif", "--method", "edges", "--classifier",
      "{root}/missing.npz"], "--classifier file not found"),
    (["segment", "{root}/pred.tif", "-o", "{root}/x.tif", "--method", "edges", "--classifier",
      "{root}/labels.tif"], "not a fusionnet edge classifier file"),
    (["segment", "{root}/pred.tif", "-o", "{root}/x.tif", "--method", "edges"],
     "--method edges needs --classifier"),
    (["segment", "{root}/pred.tif", "-o", "{root}/x.tif", "--classifier", "{root}/e.npz"],
     "--classifier applies to --method edges"),
    (["segment", "{root}/pred.tif", "-o", "{root}/x.tif", "--method", "edges", "--classifier",
      "{root}/e.npz", "--mode", "3d"], "--mode 3d is not supported"),
    (["segment", "{root}/pred.tif", "-o", "{root}/x.tif", "--method", "mws"],
     "--method applies to affinity files"),
    (["train-edges", "--pred", "{root}/pred.tif", "--labels", "{root}/short.tif", "-o",
      "{root}/x.npz"], "has shape"),
    (["train-edges", "--pred", "{root}/pred.tif", "--labels", "{root}/labels.tif", "-o",
      "{root}/x.pkl"], "written as a .npz file"),
    (["train-edges", "--pred", "{root}/pred.tif", "--labels", "{root}/labels.tif", "-o",
      "{root}/x.npz", "--cv", "20"], "more folds than"),
    (["train-edges", "--pred", "{root}/pred.tif", "--labels", "{root}/labels.tif", "-o",
      "{root}/x.npz", "--cv", "1"], "--cv must be >= 2"),
])
def test_cli_bad_input_exits_2_with_one_line(files, capsys, argv, message):
    tifffile.imwrite(files / "short.tif", np.full((12, 32, 32), 255, np.uint8),
                     photometric="minisblack")
    code, _, err = run_cli([arg.format(root=files) for arg in argv], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (files / "x.tif").exists() and not (files / "x.npz").exists()
