"""Block-wise segmentation (``segment_volume`` / ``fusionnet segment-volume``).

Synthetic membrane maps: random Voronoi cells whose borders are drawn as
2-pixel membranes, the seed points jittered a little from slice to slice so
that cells continue through z. Most runs are in-process (``workers=0``).
"""

import json

import numpy as np
import pytest
from scipy import ndimage
from skimage.segmentation import find_boundaries

from fusionnet_tf.cli import main
from fusionnet_tf.metrics import segmentation_scores_report
from fusionnet_tf.segmentation import SegmentParams, segment
from fusionnet_tf.segmentation.blockwise import match_slabs, seam_splits, segment_volume
from fusionnet_tf.volumes import BlockFailures

zarr = pytest.importorskip("zarr")

PARAMS = SegmentParams(sigma=1.0, merge_threshold=0.3, min_size=20, anisotropy=2.0)
SHAPE = (4, 96, 96)
CUT_BLOCKS = (2, 40, 40)  # cut through cells in-plane and between slices 1 and 2
HALO = 16


def voronoi_membranes(shape=SHAPE, cells=30, seed=0, jitter=1.0):
    """(Z, Y, X) float32 membrane map in [0, 1]: Voronoi cells, 2-px membranes."""
    rng = np.random.default_rng(seed)
    depth, height, width = shape
    points = rng.uniform(0, [height, width], size=(cells, 2))
    stack = np.empty(shape, np.float32)
    for z in range(depth):
        moved = np.clip(points + rng.normal(0, jitter, points.shape), 0,
                        [height - 1, width - 1]).astype(int)
        not_seed = np.ones((height, width), bool)
        ids = np.zeros((height, width), np.int32)
        not_seed[moved[:, 0], moved[:, 1]] = False
        ids[moved[:, 0], moved[:, 1]] = np.arange(1, cells + 1)
        _, (near_y, near_x) = ndimage.distance_transform_edt(not_seed, return_indices=True)
        edges = find_boundaries(ids[near_y, near_x], mode="thick")
        membrane = np.where(edges, 0.95, 0.03) + rng.normal(0, 0.03, (height, width))
        stack[z] = np.clip(ndimage.gaussian_filter(membrane, 0.5), 0, 1)
    return stack


def write_zarr(path, array, chunks=(1, 48, 48)):
    store = zarr.open_array(str(path), mode="w", shape=array.shape, dtype=array.dtype,
                            chunks=chunks)
    store[...] = array
    return str(path)


def read(path):
    return zarr.open_array(str(path), mode="r")[...]


def adapted_rand(reference, labels):
    return segmentation_scores_report(reference, labels, ground_truth="segments",
                                      mode="3d")["adapted_rand_error"]


def same_partition(a, b):
    """True if ``a`` and ``b`` are equal up to renaming the ids (a bijection)."""
    pairs = np.unique(np.stack([np.ravel(a), np.ravel(b)]).astype(np.int64), axis=1)
    return pairs.shape[1] == np.unique(a).size == np.unique(b).size


@pytest.fixture(scope="module")
def membrane():
    return voronoi_membranes()


@pytest.fixture
def pred(tmp_path, membrane):
    return write_zarr(tmp_path / "pred.zarr", membrane)


def run(pred, out, mode="2d", block_shape=CUT_BLOCKS, halo=HALO, params=PARAMS, **kwargs):
    summary = segment_volume(pred, str(out), params, mode, block_shape=block_shape, halo=halo,
                             progress=False, **kwargs)
    return read(out), summary


# ------------------------------------------------------------------ agreement with in-memory

@pytest.mark.parametrize("block_z", [1, 3])
def test_2d_whole_slice_blocks_equal_in_memory_as_a_partition(tmp_path, membrane, pred,
                                                              block_z):
    reference, max_id = segment(membrane, PARAMS, mode="2d")
    labels, summary = run(pred, tmp_path / "out.zarr", block_shape=(block_z, 96, 96))
    assert labels.dtype == np.uint64
    assert same_partition(reference, labels)
    assert summary["segments"] == max_id == labels.max()
    assert sorted(np.unique(labels)) == list(range(1, max_id + 1))  # consecutive ids
    assert summary["faces"] == 0


def test_2d_blocks_cutting_cells_match_in_memory_without_seams(tmp_path, membrane, pred):
    reference, max_id = segment(membrane, PARAMS, mode="2d")
    labels, summary = run(pred, tmp_path / "out.zarr")
    assert summary["joins"] > 0
    assert adapted_rand(reference, labels) <= 0.01
    assert seam_splits(reference, labels, CUT_BLOCKS) == []
    assert sorted(np.unique(labels)) == list(range(1, labels.max() + 1))
    # slices stay separate in 2d mode, like in-memory segmentation
    assert not set(np.unique(labels[1])) & set(np.unique(labels[2]))


@pytest.mark.parametrize("block_shape, halo", [((2, 96, 96), (2, HALO, HALO)),
                                               (CUT_BLOCKS, HALO)])
def test_3d_ids_consistent_across_block_faces(tmp_path, membrane, pred, block_shape, halo):
    reference, _ = segment(membrane, PARAMS, mode="3d")
    labels, summary = run(pred, tmp_path / "out.zarr", mode="3d", block_shape=block_shape,
                          halo=halo)
    # an int halo is in-plane; along z it is max(2, halo / anisotropy) slices
    assert summary["halo"] == (halo if isinstance(halo, tuple) else (8, HALO, HALO))
    assert adapted_rand(reference, labels) <= 0.01
    assert seam_splits(reference, labels, block_shape) == []
    # cells crossing the z face between the blocks (slices 1 | 2) keep their id
    crossing = reference[1] == reference[2]
    assert crossing.mean() > 0.5
    assert np.mean(labels[1][crossing] == labels[2][crossing]) > 0.99


@pytest.mark.parametrize("block_shape", [CUT_BLOCKS, (1, 96, 40)])
def test_3d_thick_sections_are_linked_exactly_like_in_memory(tmp_path, membrane, pred,
                                                             block_shape):
    params = PARAMS.replace(anisotropy=12.5)  # thick sections: segmented, then linked by overlap
    reference, _ = segment(membrane, params, mode="3d")
    labels, summary = run(pred, tmp_path / "out.zarr", mode="3d", block_shape=block_shape,
                          params=params)
    assert same_partition(reference, labels)
    assert summary["halo"] == (0, HALO, HALO)
    assert np.mean(labels[1] == labels[2]) > 0.5  # cells continue across the z face


def test_small_halo_still_leaves_no_seam(tmp_path, membrane, pred):
    reference, _ = segment(membrane, PARAMS, mode="2d")
    labels, _ = run(pred, tmp_path / "out.zarr", halo=1)
    assert seam_splits(reference, labels, CUT_BLOCKS) == []


def test_seam_splits_finds_splits_only_along_block_faces():
    reference = np.ones((1, 4, 8), np.int64)
    at_face = np.ones((1, 4, 8), np.int64)
    at_face[..., 4:] = 2  # split exactly where blocks of width 4 meet
    assert seam_splits(reference, at_face, (1, 4, 4)) == [(1, 2, 4)]
    inside = at_face.copy()
    inside[0, 0, 3] = 2  # the two segments also touch inside a block
    assert seam_splits(reference, inside, (1, 4, 4)) == []
    two_cells = at_face.copy()  # different reference cells: not a split
    assert seam_splits(two_cells, at_face, (1, 4, 4)) == []


def test_match_slabs_joins_only_segments_both_blocks_see_crossing_the_face():
    # face slab (1, 4, 6) across axis 1: rows 0-1 are block A's side, rows 2-3 block B's
    crossing_a = np.ones((1, 4, 6), np.int64)  # A: its inner cell 1 continues into B
    crossing_b = np.full((1, 4, 6), 2, np.int64)  # B: its inner cell 2 continues into A
    ids_a, ids_b = match_slabs(crossing_a, crossing_b, 1, 2, axis=1)
    assert ids_a.tolist() == [1] and ids_b.tolist() == [2]
    # a membrane at the face: B sees A's cell as its halo-only id 7 and its own cell 2
    # below, but A's halo view wrongly floods B's cell from its cell 1 (a cut-off sliver)
    wrong_a = np.ones((1, 4, 6), np.int64)
    right_b = np.where(np.arange(4)[None, :, None] < 2, 7, 2) * np.ones((1, 4, 6), np.int64)
    ids_a, ids_b = match_slabs(wrong_a, right_b, 1, 2, axis=1)
    assert ids_a.size == 0 and ids_b.size == 0


# ------------------------------------------------------------------ resume

@pytest.mark.parametrize("failing_pass, failing_block", [("watershed", 5), ("relabel", 3)])
def test_fault_then_resume_gives_identical_output(tmp_path, pred, failing_pass, failing_block):
    expected, _ = run(pred, tmp_path / "clean.zarr")
    seen = []

    def fault(pass_name, block):
        if pass_name == failing_pass:
            seen.append(block.name)
            if len(seen) == failing_block:
                raise RuntimeError("simulated kill")

    out = tmp_path / "out.zarr"
    with pytest.raises(BlockFailures, match="1 of 18 blocks failed"):
        run(pred, out, block_hook=fault)
    labels, summary = run(pred, out)
    np.testing.assert_array_equal(labels, expected)
    if failing_pass == "watershed":
        assert summary["blocks_segmented"] == 1  # only the failed block is redone
    else:
        assert summary["blocks_segmented"] == 0 and summary["blocks_skipped"] == 17
    assert not (out / ".fusionnet-segment").exists()  # work files removed at the end
    _, again = run(pred, out)
    assert again["blocks_skipped"] == 18 and again["segments"] == labels.max()


def test_resume_with_other_settings_is_refused(tmp_path, pred):
    out = tmp_path / "out.zarr"
    run(pred, out)
    with pytest.raises(ValueError, match="other settings"):
        run(pred, out, halo=8)
    labels, summary = run(pred, out, halo=8, overwrite=True)
    assert summary["blocks_skipped"] == 0 and labels.max() > 0


# ------------------------------------------------------------------ input formats and bad input

def test_uint8_hdf5_input_is_probability_times_255(tmp_path, membrane):
    import h5py

    as_uint8 = np.round(membrane * 255).astype(np.uint8)
    with h5py.File(tmp_path / "pred.h5", "w") as handle:
        handle["membrane"] = as_uint8
    reference, _ = segment(as_uint8.astype(np.float32) / 255, PARAMS, mode="2d")
    labels, _ = run(f"{tmp_path / 'pred.h5'}:/membrane", tmp_path / "out.zarr",
                    block_shape=(1, 96, 96))
    assert same_partition(reference, labels)


@pytest.mark.parametrize("corrupt, message", [
    (lambda m: m * 2.0, r"must be in \[0, 1\]"),
    (lambda m: np.where(np.arange(m.size).reshape(m.shape) == 5000, np.nan, m), "NaN"),
    (lambda m: (m * 100).astype(np.int16), "int16"),
])
def test_bad_maps_fail_before_any_output(tmp_path, membrane, corrupt, message):
    pred = write_zarr(tmp_path / "bad.zarr", corrupt(membrane).astype(corrupt(membrane).dtype))
    with pytest.raises(ValueError, match=message):
        run(pred, tmp_path / "out.zarr")
    assert not (tmp_path / "out.zarr").exists()


@pytest.mark.parametrize("options, message", [
    (dict(block_shape=(0, 40, 40)), "block_shape"),
    (dict(block_shape=(1, 40)), "block_shape"),
    (dict(halo=0), "halo"),
    (dict(mode="4d"), "mode"),
])
def test_bad_options_fail_before_any_output(tmp_path, pred, options, message):
    with pytest.raises(ValueError, match=message):
        run(pred, tmp_path / "out.zarr", **options)
    assert not (tmp_path / "out.zarr").exists()


# ------------------------------------------------------------------ CLI

def test_cli_round_trip_and_resume(tmp_path, pred, capsys):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"params": PARAMS.to_dict()}))
    out = tmp_path / "out.zarr"
    argv = ["segment-volume", pred, str(out), "--params", str(params), "--block", "40",
            "--block-z", "2", "--halo", str(HALO), "--workers", "0", "--quiet"]
    assert main(argv) == 0
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("segment-volume: 18 blocks (18 segmented, 0 already done)")
    expected, _ = run(pred, tmp_path / "library.zarr")
    np.testing.assert_array_equal(read(out), expected)
    assert main(argv) == 0
    assert "(0 segmented, 18 already done)" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--block", "0"], "--block must be a positive"),
    (["--block-z", "-1"], "--block-z must be a positive"),
    (["--halo", "0"], "halo"),
    (["--set", "min_size=-1"], "min_size"),
])
def test_cli_bad_options_exit_2_with_one_line(tmp_path, pred, capsys, extra, message):
    code = main(["segment-volume", pred, str(tmp_path / "out.zarr"), "--workers", "0",
                 "--quiet"] + extra)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "out.zarr").exists()


def test_cli_bad_inputs_exit_2_with_one_line(tmp_path, membrane, pred, capsys):
    cases = [
        (write_zarr(tmp_path / "high.zarr", membrane + 1), tmp_path / "o1.zarr", "[0, 1]"),
        (write_zarr(tmp_path / "labels.zarr", (membrane * 9).astype(np.uint32)),
         tmp_path / "o2.zarr", "uint32"),
        (pred, pred, "would overwrite INPUT"),
        (str(tmp_path / "missing.zarr"), tmp_path / "o3.zarr", "not found"),
        (pred, tmp_path / "no" / "o4.zarr", "output folder does not exist"),
    ]
    for source, out, message in cases:
        code = main(["segment-volume", source, str(out), "--workers", "0", "--quiet"])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1 and message in err, (source, err)
    assert not any((tmp_path / name).exists() for name in ("o1.zarr", "o2.zarr", "o3.zarr"))
    assert np.array_equal(read(pred), membrane)  # the input is untouched


# ------------------------------------------------------------------ Dask

@pytest.mark.e2e
@pytest.mark.large
def test_dask_cluster_of_two_workers_matches_in_process(tmp_path, pred, dask_cluster):
    expected, _ = run(pred, tmp_path / "local.zarr")
    labels, summary = run(pred, tmp_path / "dask.zarr", scheduler=dask_cluster.scheduler_address)
    np.testing.assert_array_equal(labels, expected)
    assert summary["executor"].startswith("dask")
    assert sum(summary["blocks_per_worker"].values()) == 18
