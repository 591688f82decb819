"""fusionnet export-precomputed: layers read back with cloud-volume, multi-resolution meshes
(own decoder from the spec and cloud-volume), one skeleton per id, bad input."""

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
    # a 1-voxel line of 3 at an odd y into the third x block: LOD 1 and 2 (every 2nd / 4th
    # voxel in y) miss it there, so that node's coarse fragments are empty
    labels[3, 11, 70:130] = 3
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


# ---------------------------------------------------------------- multi-resolution meshes
# Read back with a decoder written here from Neuroglancer's spec (meshes.md), independent of
# fusionnet_tf.volumes.multires_mesh, and with cloud-volume's reader.

def read_manifest(path):
    """The fields of a ``<id>.index`` manifest, parsed from the spec."""
    data = path.read_bytes()
    head = np.frombuffer(data, "<f4", 6)
    lods = int(np.frombuffer(data, "<u4", 1, 24)[0])
    at = 28
    scales = np.frombuffer(data, "<f4", lods, at)
    at += 4 * lods
    offsets = np.frombuffer(data, "<f4", 3 * lods, at).reshape(lods, 3)
    at += 12 * lods
    counts = np.frombuffer(data, "<u4", lods, at)
    at += 4 * lods
    positions, sizes = [], []
    for count in counts:
        positions.append(np.frombuffer(data, "<u4", 3 * count, at).reshape(3, count).T)
        at += 12 * count
        sizes.append(np.frombuffer(data, "<u4", count, at))
        at += 4 * count
    assert at == len(data), "manifest has trailing bytes"
    return {"chunk_shape": head[:3].astype(float), "grid_origin": head[3:].astype(float),
            "lod_scales": scales, "vertex_offsets": offsets.astype(float),
            "positions": positions, "sizes": sizes}


def read_fragments(mesh_dir, label):
    """``{lod: [(position xyz, quantized (n, 3) vertices, faces)]}`` of one id."""
    import DracoPy

    manifest = read_manifest(mesh_dir / f"{label}.index")
    data = (mesh_dir / str(label)).read_bytes()
    assert sum(int(s.sum()) for s in manifest["sizes"]) == len(data)
    fragments, at = {}, 0
    for lod, (positions, sizes) in enumerate(zip(manifest["positions"], manifest["sizes"])):
        fragments[lod] = []
        for position, size in zip(positions, sizes):
            chunk, at = data[at:at + int(size)], at + int(size)
            if size == 0:
                fragments[lod].append((position, np.zeros((0, 3)), np.zeros((0, 3), int)))
                continue
            mesh = DracoPy.decode(chunk)
            fragments[lod].append((position, np.asarray(mesh.points, float),
                                   np.asarray(mesh.faces, int)))
    return manifest, fragments


def lod_mesh(mesh_dir, label, lod, info):
    """All fragments of one LOD as one mesh in nm: ``(vertices (n, 3) x y z, faces)``."""
    manifest, fragments = read_fragments(mesh_dir, label)
    bits = info["vertex_quantization_bits"]
    scale = np.array(info["transform"]).reshape(3, 4)[:, :3].diagonal()
    vertices, faces, count = [], [], 0
    for position, quantized, part in fragments[lod]:
        stored = (manifest["grid_origin"] + manifest["vertex_offsets"][lod]
                  + manifest["chunk_shape"] * 2 ** lod
                  * (position + quantized / (2 ** bits - 1)))
        vertices.append(stored * scale)
        faces.append(part + count)
        count += len(quantized)
    return np.concatenate(vertices), np.concatenate(faces)


def mesh_info(out):
    return json.loads((out / "segmentation" / "mesh" / "info").read_text())


def test_mesh_info_is_multilod_draco(exported):
    out, _, _ = exported
    info = mesh_info(out)
    assert info["@type"] == "neuroglancer_multilod_draco"
    assert info["vertex_quantization_bits"] in (10, 16) and info["lod_scale_multiplier"] > 0
    transform = np.array(info["transform"], float).reshape(3, 4)  # row-major 3 x 4
    np.testing.assert_allclose(transform[:, :3], np.diag(VOXEL_ZYX[::-1]))
    seg_info = json.loads((out / "segmentation" / "info").read_text())
    assert seg_info["mesh"] == "mesh"


def test_every_id_above_the_size_has_a_manifest_and_nothing_else(exported):
    out, labels, _ = exported
    names = {p.name for p in (out / "segmentation" / "mesh").iterdir()}
    big = label_ids(labels, MIN_VOXELS)
    assert big == {3, 7, 12}
    assert names == {"info"} | {str(i) for i in big} | {f"{i}.index" for i in big}
    assert not (out / "mesh-pieces").exists()


def strided_bbox_nm(labels, label, factor):
    """Bounding box (x y z, nm) of the voxels of ``label`` after taking every ``factor``-th."""
    sampled = labels[::factor[0], ::factor[1], ::factor[2]]
    z, y, x = np.nonzero(sampled == label)
    step = np.array(factor[::-1], float)
    size = np.array(VOXEL_ZYX[::-1], float)
    low = np.array([x.min(), y.min(), z.min()]) * step * size
    high = (np.array([x.max(), y.max(), z.max()]) + 1) * step * size
    return low, high


# LOD k of the test volume (30 x 6 x 4 nm): y and x sampled every 2**k-th voxel, z every voxel
LOD_FACTORS = [(1, 1, 1), (1, 2, 2), (1, 4, 4)]


def test_each_lod_spans_the_voxels_it_samples(exported):
    """LOD 0 spans the id's voxels exactly; LOD k the bounding box of every 2**k-th voxel."""
    out, labels, _ = exported
    info = mesh_info(out)
    for label in label_ids(labels, MIN_VOXELS):
        for lod, factor in enumerate(LOD_FACTORS):
            vertices, faces = lod_mesh(out / "segmentation" / "mesh", label, lod, info)
            assert len(faces), (label, lod)
            low, high = strided_bbox_nm(labels, label, factor)
            np.testing.assert_allclose(vertices.min(axis=0), low, atol=0.02,
                                       err_msg=f"id {label} lod {lod}")
            np.testing.assert_allclose(vertices.max(axis=0), high, atol=0.02,
                                       err_msg=f"id {label} lod {lod}")


def test_vertices_decode_onto_the_marching_cubes_lattice(exported):
    """Marching cubes puts vertices on a half-voxel lattice (voxel faces and centres); after
    quantization to the node's box they must come back within half a quantization step."""
    out, labels, _ = exported
    mesh_dir = out / "segmentation" / "mesh"
    steps = 2 ** mesh_info(out)["vertex_quantization_bits"] - 1
    for label in label_ids(labels, MIN_VOXELS):
        manifest, fragments = read_fragments(mesh_dir, label)
        for lod, parts in fragments.items():
            node = manifest["chunk_shape"] * 2 ** lod
            for position, quantized, _ in parts:
                stored = (manifest["grid_origin"] + manifest["vertex_offsets"][lod]
                          + node * (position + quantized / steps))  # voxels
                error = np.abs(stored * 2 - np.round(stored * 2)) / 2
                assert (error <= node / steps / 2 + 1e-6).all(), (label, lod)


def test_cloud_volume_reads_the_meshes_inside_the_bounding_boxes(exported):
    out, labels, _ = exported
    segmentation = layer(out / "segmentation")
    size_xyz = np.array(VOXEL_ZYX[::-1], float)
    for label in label_ids(labels, MIN_VOXELS):
        mesh = segmentation.mesh.get(label, lod=0)
        mesh = mesh[label] if isinstance(mesh, dict) else mesh
        z, y, x = np.nonzero(labels == label)
        low = np.array([x.min(), y.min(), z.min()]) * size_xyz
        high = (np.array([x.max(), y.max(), z.max()]) + 1) * size_xyz
        np.testing.assert_allclose(mesh.vertices.min(axis=0), low, atol=0.05, err_msg=str(label))
        np.testing.assert_allclose(mesh.vertices.max(axis=0), high, atol=0.05,
                                   err_msg=str(label))


def test_coarser_lods_have_fewer_triangles(exported):
    out, labels, _ = exported
    for label in label_ids(labels, MIN_VOXELS):
        _, fragments = read_fragments(out / "segmentation" / "mesh", label)
        triangles = [sum(len(f) for _, _, f in fragments[lod]) for lod in sorted(fragments)]
        assert len(triangles) == 3 and triangles[0] > triangles[1] > triangles[2] > 0, \
            (label, triangles)


def z_order_code(position):
    code = 0
    for bit in range(16):
        for axis in range(3):
            code |= ((int(position[axis]) >> bit) & 1) << (3 * bit + axis)
    return code


def test_manifest_octree_is_valid(exported):
    """Z-curve order, every fragment's parent exists, blocks are the LOD 0 cells, and no
    triangle of a LOD > 0 fragment crosses its node's 2 x 2 x 2 partition."""
    out, labels, _ = exported
    mesh_dir = out / "segmentation" / "mesh"
    info = mesh_info(out)
    middle = (2 ** info["vertex_quantization_bits"] - 1) // 2 + 1  # Neuroglancer's split
    for label in label_ids(labels, MIN_VOXELS):
        manifest, fragments = read_fragments(mesh_dir, label)
        np.testing.assert_allclose(manifest["chunk_shape"], [64, 64, 16])  # the blocks (x y z)
        assert (np.diff(manifest["lod_scales"]) > 0).all()
        for lod, positions in enumerate(manifest["positions"]):
            codes = [z_order_code(p) for p in positions]
            assert codes == sorted(codes) and len(set(codes)) == len(codes), (label, lod)
            if lod + 1 < len(manifest["positions"]):
                parents = {tuple(p) for p in manifest["positions"][lod + 1]}
                assert {tuple(p // 2) for p in positions} <= parents, (label, lod)
        for lod in range(1, len(fragments)):
            for _, quantized, faces in fragments[lod]:
                if len(faces):
                    corners = quantized[faces]  # (m, 3 corners, 3 axes)
                    low = (corners <= middle).all(axis=1)
                    high = (corners >= middle).all(axis=1)
                    assert (low | high).all(), (label, lod)


def test_id_across_blocks_has_one_fragment_per_block(exported):
    """Id 3: a box over 2 x 2 x 2 blocks and a thin line into a third x block, which
    only LOD 0 resolves; LOD 1 still lists that block's node (empty), LOD 2 is the root."""
    out, _, _ = exported
    manifest = read_manifest(out / "segmentation" / "mesh" / "3.index")
    assert [len(p) for p in manifest["positions"]] == [9, 2, 1]
    lod1 = dict(zip(map(tuple, manifest["positions"][1]), manifest["sizes"][1]))
    assert lod1[(1, 0, 0)] == 0 and lod1[(0, 0, 0)] > 0


@pytest.mark.parametrize("lod", [0, 1, 2])
def test_fragments_of_blocks_meet_without_gaps(exported, lod):
    """The fragments of a cell cut by block faces close into one watertight surface."""
    out, _, _ = exported
    vertices, faces = lod_mesh(out / "segmentation" / "mesh", 3, lod, mesh_info(out))
    size = np.array(VOXEL_ZYX[::-1], float)
    lattice = np.round(vertices / size * 2).astype(np.int64)  # marching cubes: half voxels
    _, merged = np.unique(lattice, axis=0, return_inverse=True)
    faces = merged.reshape(-1)[faces]
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]),
                    axis=1)
    _, uses = np.unique(edges, axis=0, return_counts=True)
    assert (uses == 2).all()  # every edge shared by exactly two triangles: no holes


# ---------------------------------------------------------------- skeletons

def test_one_skeleton_file_per_id(exported):
    out, labels, _ = exported
    names = {p.name for p in (out / "segmentation" / "skeletons").iterdir()}
    assert names == {"info"} | {str(i) for i in label_ids(labels, MIN_VOXELS)}


def test_skeleton_of_an_id_across_blocks_is_one_connected_skeleton(exported):
    out, labels, _ = exported
    segmentation = layer(out / "segmentation")
    for label in (3, 7):  # 3 spans 2 x 2 x 2 blocks, 7 spans 1 x 2 x 2
        skeleton = segmentation.skeleton.get(label)
        assert len(skeleton.components()) == 1, label


def test_skeleton_reaches_every_block_of_its_id(exported):
    """The joined skeleton has vertices in every block that holds >= 100 voxels of the id."""
    out, labels, _ = exported
    segmentation = layer(out / "segmentation")
    block_zyx = np.array([16, 64, 64])
    for label in label_ids(labels, MIN_VOXELS):
        voxels = np.argwhere(labels == label) // block_zyx
        blocks, counts = np.unique(voxels, axis=0, return_counts=True)
        needed = {tuple(b) for b, n in zip(blocks, counts) if n >= 100}
        vertices = segmentation.skeleton.get(label).vertices / np.array(VOXEL_ZYX[::-1], float)
        reached = {tuple(b) for b in (np.floor(vertices[:, ::-1]).astype(int) // block_zyx)}
        assert needed <= reached, (label, needed - reached)


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
    if case == "mesh lods":
        return [labels, str(out), "--mesh", "--mesh-lods", "0"], out
    if case == "missing labels":
        return [str(folder / "nope.tif"), str(out)], out
    if case == "foreign folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
        return [labels, str(out)], out
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["float labels", "voxel size 2 numbers", "voxel size negative",
                                  "image shape", "block", "mesh lods", "missing labels",
                                  "foreign folder"])
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
