"""fusionnet export-precomputed: layers read back with cloud-volume, meshes, skeletons, bad input."""

import json

import numpy as np
import pytest
import tifffile

pytest.importorskip("cloudvolume")
pytest.importorskip("zmesh")

from fusionnet_tf.cli import main  # noqa: E402
from fusionnet_tf.volumes.precomputed import MARKER  # noqa: E402

VOXEL_ZYX = (30, 6, 4)  # all different, so a swapped axis shows
MIN_VOXELS = 50


def synthetic_labels():
    """(20, 100, 130) uint16: two large cells across block borders, a small one, a single voxel."""
    labels = np.zeros((20, 100, 130), np.uint16)
    labels[2:18, 10:70, 5:70] = 3
    labels[5:20, 50:100, 80:130] = 7
    labels[16:19, 70:74, 10:14] = 9  # 48 voxels: below MIN_VOXELS, no mesh
    labels[0, 0, 0] = 1000
    yy, xx = np.mgrid[:100, :130]
    disc = (yy - 80) ** 2 + (xx - 40) ** 2 < 12 ** 2
    labels[3:12][:, disc] = 12  # a cylinder: a curved surface
    return labels


@pytest.fixture(scope="session")
def volumes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("precomputed")
    labels = synthetic_labels()
    image = np.random.default_rng(0).integers(0, 256, labels.shape, dtype=np.uint8)
    tifffile.imwrite(folder / "labels.tif", labels)
    tifffile.imwrite(folder / "image.tif", image)
    return folder, labels, image


@pytest.fixture(scope="session")
def exported(volumes):
    """Exported with blocks of (16, 64, 64): 2 x 2 x 3 blocks, meshes and skeletons."""
    folder, labels, image = volumes
    out = folder / "ng"
    code = main(["export-precomputed", str(folder / "labels.tif"), str(out), "--image",
                 str(folder / "image.tif"), "--mesh", "--skeleton", "--voxel-size",
                 ",".join(map(str, VOXEL_ZYX)), "--min-voxels", str(MIN_VOXELS), "--block", "64",
                 "--block-z", "16", "--workers", "2"])
    assert code == 0
    return out, labels, image


def layer(path):
    from cloudvolume import CloudVolume

    return CloudVolume(path.absolute().as_uri(), progress=False)


def label_ids(labels, min_voxels=1):
    ids, counts = np.unique(labels, return_counts=True)
    return {int(i) for i, n in zip(ids, counts) if i and n >= min_voxels}


def test_segmentation_reads_back_equal_to_the_labels(exported):
    out, labels, _ = exported
    segmentation = layer(out / "segmentation")
    assert segmentation.info["type"] == "segmentation"
    assert list(segmentation.resolution) == list(VOXEL_ZYX[::-1])  # (x, y, z)
    data = np.asarray(segmentation[:, :, :])[..., 0]
    assert data.shape == labels.shape[::-1]
    np.testing.assert_array_equal(data.transpose(), labels)


def test_image_layer_reads_back_equal(exported):
    out, _, image = exported
    raw = layer(out / "image")
    assert raw.info["type"] == "image" and raw.dtype == np.uint8
    np.testing.assert_array_equal(np.asarray(raw[:, :, :])[..., 0].transpose(), image)


def test_every_id_above_the_size_has_a_mesh_spanning_its_voxels(exported):
    out, labels, _ = exported
    segmentation = layer(out / "segmentation")
    big = label_ids(labels, MIN_VOXELS)
    assert big == {3, 7, 12}
    size_xyz = np.array(VOXEL_ZYX[::-1], float)
    for label in big:
        mesh = segmentation.mesh.get(label)
        mesh = mesh[label] if isinstance(mesh, dict) else mesh
        assert len(mesh.faces) > 0, label
        z, y, x = np.nonzero(labels == label)
        low = np.array([x.min(), y.min(), z.min()]) * size_xyz
        high = (np.array([x.max(), y.max(), z.max()]) + 1) * size_xyz
        np.testing.assert_allclose(mesh.vertices.min(axis=0), low, atol=1e-3, err_msg=str(label))
        np.testing.assert_allclose(mesh.vertices.max(axis=0), high, atol=1e-3,
                                   err_msg=str(label))


def test_meshes_of_blocks_meet_without_gaps(exported):
    """Fragments of a cell cut by block borders close into one watertight surface."""
    out, labels, _ = exported
    mesh = layer(out / "segmentation").mesh.get(3)
    mesh = mesh[3] if isinstance(mesh, dict) else mesh
    manifest = json.loads((out / "segmentation" / "mesh" / "3:0").read_text())
    assert len(manifest["fragments"]) == 8  # the box spans 2 blocks along each axis
    mesh = mesh.consolidate()
    edges = np.sort(np.concatenate([mesh.faces[:, [0, 1]], mesh.faces[:, [1, 2]],
                                    mesh.faces[:, [2, 0]]]), axis=1)
    _, uses = np.unique(edges, axis=0, return_counts=True)
    assert (uses == 2).all()  # every edge shared by exactly two triangles: no holes


def test_small_ids_get_no_mesh(exported):
    out, labels, _ = exported
    mesh_dir = out / "segmentation" / "mesh"
    manifests = {int(p.name.split(":")[0]) for p in mesh_dir.iterdir() if p.name.endswith(":0")}
    assert manifests == label_ids(labels, MIN_VOXELS)


def test_skeletons_lie_inside_their_cells(exported):
    out, labels, _ = exported
    segmentation = layer(out / "segmentation")
    size_xyz = np.array(VOXEL_ZYX[::-1], float)
    for label in label_ids(labels, MIN_VOXELS):
        skeleton = segmentation.skeleton.get(label)
        assert len(skeleton.vertices) > 1 and len(skeleton.edges) > 0, label
        voxels = np.floor(skeleton.vertices / size_xyz).astype(int)  # (x, y, z) voxel indices
        assert (labels[voxels[:, 2], voxels[:, 1], voxels[:, 0]] == label).all(), label


def test_marker_records_the_run(exported):
    out, _, _ = exported
    record = json.loads((out / MARKER).read_text())
    assert record["command"] == "export-precomputed"
    assert record["summary"]["meshes"] == 3 and record["summary"]["ids"] == 5


def test_zarr_input_and_rerun_replace_the_earlier_output(volumes, tmp_path):
    zarr = pytest.importorskip("zarr")
    _, labels, _ = volumes
    store = tmp_path / "labels.zarr"
    array = zarr.open_array(str(store), mode="w", shape=labels.shape, chunks=(8, 32, 32),
                            dtype="uint64")
    array[:] = labels
    out = tmp_path / "ng"
    for _ in range(2):  # the second run replaces the first one's output
        assert main(["export-precomputed", str(store), str(out), "--block", "64",
                     "--block-z", "16"]) == 0
    data = np.asarray(layer(out / "segmentation")[:, :, :])[..., 0].transpose()
    assert layer(out / "segmentation").dtype == np.uint64
    np.testing.assert_array_equal(data, labels)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.zarr", "ng"]


def bad_case(folder, case):
    """(argv, output folder) of one bad-input case."""
    out = folder / "out"
    labels, image = str(folder / "labels.tif"), str(folder / "image.tif")
    if case == "float labels":
        tifffile.imwrite(folder / "float.tif", np.zeros((2, 8, 8), np.float32))
        return [str(folder / "float.tif"), str(out)], out
    if case == "voxel size 2 numbers":
        return [labels, str(out), "--voxel-size", "30,6"], out
    if case == "voxel size negative":
        return [labels, str(out), "--voxel-size", "30,-6,6"], out
    if case == "image shape":
        tifffile.imwrite(folder / "small.tif", np.zeros((2, 8, 8), np.uint8))
        return [labels, str(out), "--image", str(folder / "small.tif")], out
    if case == "block":
        return [labels, str(out), "--block", "100"], out
    if case == "missing labels":
        return [str(folder / "nope.tif"), str(out)], out
    if case == "foreign folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        return [labels, str(out)], out
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["float labels", "voxel size 2 numbers", "voxel size negative",
                                  "image shape", "block", "missing labels", "foreign folder"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(volumes, tmp_path, capsys, case):
    folder, _, _ = volumes
    for name in ("labels.tif", "image.tif"):
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    argv, out = bad_case(tmp_path, case)
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["export-precomputed"] + argv) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("fusionnet export-precomputed: error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no temporary folder left
    if case == "foreign folder":
        assert [p.name for p in out.iterdir()] == ["notes.txt"]
    else:
        assert not out.exists()


def test_voxel_size_defaults_to_the_ome_zarr_metadata(volumes, tmp_path):
    """Without --voxel-size an OME-Zarr LABELS gives it (converted to nm); --voxel-size wins."""
    pytest.importorskip("ome_zarr")
    from fusionnet_tf.io import ome_zarr

    _, labels, _ = volumes
    small = labels[:16, :64, :64]
    path = tmp_path / "neurons.ome.zarr"
    plan = ome_zarr.OutputPlan("labels", "0.5", (0.03, 0.006, 0.004), unit="micrometer",
                               levels=1)
    ome_zarr.write_ome_zarr(path, small, plan)
    for extra, expected_xyz in (([], [4, 6, 30]), (["--voxel-size", "40,8,8"], [8, 8, 40])):
        out = tmp_path / f"ng{len(extra)}"
        assert main(["export-precomputed", str(path), str(out), "--block", "64",
                     "--block-z", "16"] + extra) == 0
        info = json.loads((out / "segmentation" / "info").read_text())
        np.testing.assert_allclose(info["scales"][0]["resolution"], expected_xyz)
        assert layer(out / "segmentation").resolution.tolist() == pytest.approx(expected_xyz)
