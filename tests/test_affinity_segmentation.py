"""3D neurons from hand-built affinities: agglomeration and mutex watershed, CLI end to end."""

import json

import numpy as np
import pytest
import tifffile

from fusionnet_tf.cli import main
from fusionnet_tf.data.affinity_io import write_affinities
from fusionnet_tf.segmentation.affinities import (agglomerate_affinities, boundary_map,
                                                  fragments, mutex_watershed, segment_affinities)
from fusionnet_tf.segmentation.affinity_params import AffinityParams

NN = [(-1, 0, 0), (0, -1, 0), (0, 0, -1)]
LONG = NN + [(-2, 0, 0), (0, -3, 0), (0, 0, -3)]


def affinities_from_labels(labels, offsets):
    """Channel c at p: 1 where p and p + offsets[c] share a non-zero id (0 outside)."""
    affs = np.zeros((len(offsets),) + labels.shape, np.float32)
    for channel, offset in enumerate(offsets):
        here = tuple(slice(max(0, -d), min(n, n - d)) for n, d in zip(labels.shape, offset))
        there = tuple(slice(s.start + d, s.stop + d) for s, d in zip(here, offset))
        a, b = labels[here], labels[there]
        affs[channel][here] = (a == b) & (a != 0)
    return affs


def set_crossing(affs, offsets, axis, cut, value):
    """Give every pair that crosses the plane ``axis`` between cut-1 and cut the value."""
    for channel, offset in enumerate(offsets):
        step = offset[axis]
        if step == 0:
            continue
        index = np.arange(affs.shape[1 + axis])
        partner = index + step
        crossing = ((index < cut) & (partner >= cut)) | ((index >= cut) & (partner < cut))
        crossing &= (partner >= 0) & (partner < affs.shape[1 + axis])
        shape = [1, 1, 1]
        shape[axis] = -1
        affs[channel] = np.where(crossing.reshape(shape), value, affs[channel])
    return affs


def two_cubes(axis, offsets=NN, shape=(6, 12, 12)):
    """Two boxes touching across the mid plane of ``axis``; their affinity across it is 0."""
    labels = np.ones(shape, np.int64)
    cut = shape[axis] // 2
    index = [slice(None)] * 3
    index[axis] = slice(cut, None)
    labels[tuple(index)] = 2
    return labels, affinities_from_labels(labels, offsets), cut


def cut_cube(axis, value, offsets=NN, shape=(6, 12, 12)):
    """One box whose pairs across the mid plane of ``axis`` have affinity ``value``."""
    affs = affinities_from_labels(np.ones(shape, np.int64), offsets)
    return set_crossing(affs, offsets, axis, shape[axis] // 2, value)


def n_segments(labels):
    return len(np.unique(labels))


def same_partition(a, b):
    pairs = np.unique(np.stack([a.ravel(), b.ravel()]), axis=1)
    return pairs.shape[1] == len(np.unique(a)) == len(np.unique(b))


PARAMS = AffinityParams(merge_threshold=0.6, min_size=0, seed_threshold=0.1)


@pytest.mark.parametrize("fragments_mode", ["2d", "3d"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_two_touching_cubes_with_low_affinity_stay_two(axis, fragments_mode):
    labels, affs, _ = two_cubes(axis)
    segments, max_id = segment_affinities(affs, NN, PARAMS.replace(fragments=fragments_mode))
    assert max_id == 2
    assert same_partition(segments, labels)


@pytest.mark.parametrize("fragments_mode", ["2d", "3d"])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_cube_cut_by_a_weak_face_becomes_one(axis, fragments_mode):
    affs = cut_cube(axis, 0.7)  # weak-ish, but above the 0.6 threshold
    segments, max_id = segment_affinities(affs, NN, PARAMS.replace(fragments=fragments_mode))
    assert max_id == 1


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_agglomeration_threshold_on_hand_made_fragments(axis):
    """Two fragments (the halves): merged iff the face affinity is above the threshold."""
    labels, _, cut = two_cubes(axis)
    for value, merged in ((0.7, True), (0.5, False), (0.65, True), (0.55, False)):
        affs = cut_cube(axis, value)
        mapping = agglomerate_affinities(labels, 2, affs, NN, PARAMS)
        assert (mapping[1] == mapping[2]) == merged, (axis, value)


def test_each_face_uses_its_own_axis_affinity():
    """A z face is judged by the z affinity only: low z, high y/x across it stays two."""
    labels, _, cut = two_cubes(0)
    affs = np.ones((3,) + labels.shape, np.float32)
    affs[0, cut] = 0.1  # z affinity between sections cut-1 and cut
    mapping = agglomerate_affinities(labels, 2, affs, NN, PARAMS)
    assert mapping[1] != mapping[2]
    labels, _, cut = two_cubes(2)
    affs = np.ones((3,) + labels.shape, np.float32)
    affs[2, :, :, cut] = 0.1  # x affinity across the x face; z and y stay 1
    mapping = agglomerate_affinities(labels, 2, affs, NN, PARAMS)
    assert mapping[1] != mapping[2]


def test_quantile_statistic_and_positive_offsets():
    """Quantile merging, and offsets (+1, 0, 0)... read from the earlier voxel."""
    labels, _, cut = two_cubes(2)
    positive = [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    affs = np.ones((3,) + labels.shape, np.float32)
    affs[2, :, :, cut - 1] = 0.2
    quantile = PARAMS.replace(merge_statistic="quantile", merge_quantile=0.5)
    assert agglomerate_affinities(labels, 2, affs, positive, quantile)[2] != 1
    affs[2, :, :, cut - 1] = 0.9
    assert agglomerate_affinities(labels, 2, affs, positive, quantile)[2] == 1


def test_small_segments_join_their_most_affine_neighbour():
    labels = np.ones((2, 8, 8), np.int64)
    labels[:, :, 4:] = 2
    labels[:, 0:2, 0:2] = 3  # 8 voxels, attached to 1 with affinity 0.4, to nothing else
    affs = affinities_from_labels(labels, NN)
    affs[1][np.roll(labels == 3, 1, axis=1) & (labels == 1)] = 0.4
    mapping = agglomerate_affinities(labels, 3, affs, NN, PARAMS.replace(min_size=10))
    assert mapping[3] == mapping[1] and mapping[1] != mapping[2]


def test_boundary_map_is_symmetric_and_2d_fragments_stay_in_their_section():
    labels, affs, cut = two_cubes(2)
    boundary = boundary_map(affs, NN, axes=(1, 2))
    np.testing.assert_allclose(boundary[:, 3:9, cut - 1], boundary[:, 3:9, cut])
    assert boundary[:, 3:9, cut].min() > 0 and boundary[:, 3:9, 2].max() == 0
    low = boundary_map(affs, NN, axes=(1, 2), statistic="min")
    assert low[:, 3:9, cut].min() == 1
    frags, count = fragments(np.ones((3, 4, 6, 6), np.float32), NN,
                             AffinityParams(fragments="2d", sigma=0.0))
    assert count == 4 and all(len(np.unique(section)) == 1 for section in frags)
    assert len(np.unique(frags)) == 4


def test_missing_nearest_neighbour_offset_is_refused():
    with pytest.raises(ValueError, match="nearest-neighbour offset along z"):
        segment_affinities(np.ones((2, 3, 4, 4), np.float32), [(0, -1, 0), (0, 0, -1)])


# --- mutex watershed ---

BACKENDS = ["python", pytest.param("mwatershed", marks=pytest.mark.skipif(
    __import__("importlib").util.find_spec("mwatershed") is None, reason="mwatershed missing"))]
MWS = AffinityParams(method="mws", min_size=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_mutex_watershed_agrees_on_the_cube_cases(axis, backend):
    labels, affs, _ = two_cubes(axis, LONG)
    segments, count = mutex_watershed(affs, LONG, MWS, backend)
    assert count == 2 and same_partition(segments, labels)
    segments, count = mutex_watershed(cut_cube(axis, 0.7, LONG), LONG, MWS, backend)
    assert count == 1


@pytest.mark.parametrize("shape", [(1, 1, 12), (1, 8, 8), (4, 10, 10)])
def test_python_mutex_watershed_equals_mwatershed_on_random_affinities(shape):
    """Same partition (no ties: uniform weights), strides included, offsets longer than Z."""
    pytest.importorskip("mwatershed")
    rng = np.random.default_rng(0)
    affs = rng.uniform(0, 1, (len(LONG),) + shape).astype(np.float32)
    for params in (MWS, MWS.replace(mws_long_range_bias=0.8, mws_stride=2)):
        ours, _ = mutex_watershed(affs, LONG, params, "python")
        theirs, count = mutex_watershed(affs, LONG, params, "mwatershed")
        assert same_partition(ours, theirs) and 1 < count < ours.size
        assert theirs.min() == 1  # voxels mwatershed leaves alone (0) get their own ids


# --- CLI ---

def run_cli(argv, capsys):
    code = main([str(arg) for arg in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.mark.parametrize("method", ["agglomeration", "mws"])
@pytest.mark.parametrize("name", ["aff.h5", "aff.zarr", "aff.tif"])
def test_cli_segment_on_an_affinity_file(tmp_path, capsys, name, method):
    labels, affs, _ = two_cubes(1, LONG)
    write_affinities(tmp_path / name, affs, LONG)
    out = tmp_path / "seg.tif"
    code, _, err = run_cli(["segment", tmp_path / name, "-o", out, "--method", method,
                            "--set", "min_size=0"], capsys)
    assert code == 0, err
    written = tifffile.imread(out)
    assert written.shape == labels.shape and same_partition(written, labels)
    assert json.loads(tifffile.TiffFile(out).pages[0].description)["method"] == method


def test_cli_segment_affinity_bad_input(tmp_path, capsys):
    labels, affs, _ = two_cubes(1)
    write_affinities(tmp_path / "aff.tif", affs, NN)
    tifffile.imwrite(tmp_path / "pred.tif", np.zeros((2, 8, 8), np.float32))
    cases = [
        (["segment", tmp_path / "pred.tif", "-o", tmp_path / "x.tif", "--method", "mws"],
         "--method applies to affinity files"),
        (["segment", tmp_path / "aff.tif", "-o", tmp_path / "x.tif", "--keep-boundaries"],
         "--keep-boundaries applies to membrane maps"),
        (["segment", tmp_path / "aff.tif", "-o", tmp_path / "x.tif", "--set", "bogus=1"],
         "unknown segmentation parameter"),
    ]
    for argv, message in cases:
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.tif").exists()


def test_cli_tune_segment_on_an_affinity_file(tmp_path, capsys):
    labels, affs, _ = two_cubes(2, LONG)
    write_affinities(tmp_path / "aff.h5", affs, LONG)
    tifffile.imwrite(tmp_path / "ids.tif", labels.astype(np.uint16))
    code, out, err = run_cli(["tune-segment", "--pred", tmp_path / "aff.h5", "--labels",
                              tmp_path / "ids.tif", "-o", tmp_path / "p.json", "--budget", "3",
                              "--method", "mws"], capsys)
    assert code == 0, err
    document = json.loads((tmp_path / "p.json").read_text())
    assert document["params"]["method"] == "mws" and document["adapted_rand_error"] == 0.0
    code, _, err = run_cli(["segment", tmp_path / "aff.h5", "-o", tmp_path / "s.h5",
                            "--params", tmp_path / "p.json"], capsys)
    assert code == 0, err


@pytest.mark.parametrize("fragments_mode, plane", [("2d", (1, 2)), ("3d", (0, 2))])
def test_a_diagonal_wall_keeps_two_cells_apart(fragments_mode, plane):
    """Flooding is 4-/6-connected: it cannot slip through a one-voxel diagonal wall."""
    shape = (16, 16, 16)
    grid = np.indices(shape)
    a, b = grid[plane[0]], grid[plane[1]]
    labels = np.where(a < b, 1, 2)
    labels[a == b] = 0  # the wall: affinity 0 to everything
    affs = affinities_from_labels(labels, NN)
    params = PARAMS.replace(fragments=fragments_mode, anisotropy=1.0, seed_distance=1.0,
                            merge_threshold=0.5)
    segments, _ = segment_affinities(affs, NN, params)
    inside = labels > 0
    assert same_partition(segments[inside], labels[inside])


def test_auto_fragments_follow_the_anisotropy():
    """Thick sections (anisotropy >= 3): one fragment per section; near-isotropic: one in 3D."""
    affs = np.ones((3, 3, 6, 6), np.float32)
    _, count = fragments(affs, NN, AffinityParams(anisotropy=5.0, sigma=0.0))
    assert count == 3
    _, count = fragments(affs, NN, AffinityParams(anisotropy=1.0, sigma=0.0))
    assert count == 1


def test_affinity_quantile_of_a_two_valued_face():
    """Half the face at 0.9, half at 0.2: the 0.75 quantile (0.9) merges, the 0.25 (0.2) not."""
    labels, _, cut = two_cubes(2)
    affs = np.ones((3,) + labels.shape, np.float32)
    affs[2, :, :6, cut] = 0.9
    affs[2, :, 6:, cut] = 0.2
    for quantile, merged in ((0.75, True), (0.25, False)):
        params = PARAMS.replace(merge_statistic="quantile", merge_quantile=quantile)
        assert (agglomerate_affinities(labels, 2, affs, NN, params)[2] == 1) == merged


def test_cli_tune_segment_gt_components_scores_the_pieces_of_a_cut_out(tmp_path, capsys):
    """Two cubes with one ground-truth id (joined outside the cut-out): only their pieces fit."""
    labels, affs, cut = two_cubes(2, LONG)
    write_affinities(tmp_path / "aff.h5", affs, LONG)
    joined = np.ones_like(labels)  # both cubes one id ...
    joined[:, :, cut] = 0  # ... apart from each other in the volume: a boundary between them
    assert len(np.unique(labels[labels > 0])) == 2
    tifffile.imwrite(tmp_path / "ids.tif", joined.astype(np.uint16))
    errors = {}
    for extra in ([], ["--gt-components"]):
        code, _, err = run_cli(["tune-segment", "--pred", tmp_path / "aff.h5", "--labels",
                                tmp_path / "ids.tif", "-o", tmp_path / "p.json", "--budget", "3",
                                "--method", "mws"] + extra, capsys)
        assert code == 0, err
        document = json.loads((tmp_path / "p.json").read_text())
        errors[document["ground_truth"]] = document["adapted_rand_error"]
        (tmp_path / "p.json").unlink()
    # the cubes stay two segments (affinity 0 between them), of 6x12x6 = 432 and 6x12x5 = 360
    # voxels (plane x = 6 is the boundary); against the one raw id: precision 1, recall
    # (432^2 + 360^2) / 792^2, ARE = 1 - 2 R / (1 + R) (hand-computed, 0.3297)
    recall = (432 ** 2 + 360 ** 2) / 792 ** 2
    assert errors["components"] == 0.0, errors
    assert errors["ids"] == pytest.approx(1 - 2 * recall / (1 + recall), abs=1e-9), errors
