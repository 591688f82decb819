"""Neuroglancer precomputed export: image and segmentation layers, meshes and skeletons.

``export_precomputed(labels, out_dir, image=..., voxel_size=..., mesh=True)``
writes a folder Neuroglancer opens as ``precomputed://`` (served over HTTP):

    OUT_DIR/
      fusionnet-precomputed.json     what wrote it (the output guard's marker)
      image/                         precomputed image layer (with ``image``)
      segmentation/                  precomputed segmentation layer
        info                         uint32/uint64 ids, compressed_segmentation
        mesh/                        multi-resolution meshes: ``info``, ``ID.index``
                                     manifests, ``ID`` Draco fragments per LOD
        skeletons/                   precomputed skeletons (with ``skeleton``)

Axes: the volumes here are ``(Z, Y, X)`` arrays and ``voxel_size`` is
``(z, y, x)``; precomputed stores ``(x, y, z)``, so arrays are transposed and
the resolution reversed on the way out. Mesh and skeleton vertices are in
physical units (voxel size units, e.g. nm) with voxel ``i`` spanning
``[i, i + 1) * size``: a label occupying voxels ``lo..hi`` along an axis has a
LOD 0 mesh from ``lo * size`` to ``(hi + 1) * size``.

Work is block-wise on Dask (threads): each block of ``block_shape`` voxels is
read from the input (zarr, HDF5, TIFF memory map), written as whole
precomputed chunks, and meshed at each level of detail with one voxel of
overlap on its lower faces: each block's mesh is the fragment of one cell of
the multi-resolution octree, and the fragments meet without gaps
(``volumes.multires_mesh``). Skeletons are made per block (one voxel of
overlap on the upper faces) and joined into one skeleton per id. The whole
volume is never in memory; only the per-id voxel counts are.

Everything is written into a temporary folder next to ``OUT_DIR`` and renamed
into place at the end: a failed run leaves nothing behind. cloud-volume,
zmesh, kimimaro and dask belong to the ``fusionnet-tf[volumes]`` extra and are
imported inside the functions.
"""

import json
from pathlib import Path

import numpy as np

from fusionnet_tf.volumes.multires_mesh import (DEFAULT_LODS, lod_factors, mesh_block_lods,
                                                 write_mesh_info, write_segment)

MARKER = "fusionnet-precomputed.json"
COMMAND = "export-precomputed"
EXTRA_HINT = "install the volumes extra: pip install 'fusionnet-tf[volumes]'"
CHUNK_XYZ = (64, 64, 16)  # precomputed chunk (x, y, z); blocks are whole chunks
DEFAULT_BLOCK = (32, 512, 512)  # (z, y, x) voxels per Dask task
IMAGE_DTYPES = ("uint8", "uint16", "uint32", "float32")


def is_precomputed_output(path):
    """True if folder ``path`` is an earlier ``export-precomputed`` output (may be replaced)."""
    try:
        return json.loads((Path(path) / MARKER).read_text()).get("command") == COMMAND
    except (OSError, ValueError, AttributeError):
        return False


def label_dtype(dtype, name):
    """The precomputed id type for labels of ``dtype``: ``"uint32"`` or ``"uint64"``.

    Raises:
        ValueError: ``dtype`` is not an integer type (float or bool labels).
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "ui":
        raise ValueError(f"{name} has dtype {dtype}; a segmentation must hold integer ids "
                         f"(uint8..uint64), not {'booleans' if dtype.kind == 'b' else 'floats'}")
    return "uint32" if dtype.itemsize <= 4 and dtype.kind == "u" else "uint64"


def image_dtype(dtype, name):
    """The precomputed data type for an image of ``dtype`` (float64 -> float32, ...)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "uint8"
    if dtype.kind == "f":
        return "float32"
    if dtype.kind == "u" and dtype.name in IMAGE_DTYPES:
        return dtype.name
    if dtype.kind in "ui":
        return "float32" if dtype.itemsize > 2 else "uint16" if dtype.itemsize == 2 else "uint8"
    raise ValueError(f"{name} has dtype {dtype}; expected an integer or float image")


def block_grid_zyx(shape, block_shape):
    """Half-open ``((z0, z1), (y0, y1), (x0, x1))`` blocks tiling ``shape`` (last ones smaller)."""
    import itertools

    ranges = [[(start, min(start + step, size)) for start in range(0, size, step)]
              for size, step in zip(shape, block_shape)]
    return list(itertools.product(*ranges))


def check_block_shape(block_shape):
    """Raise ValueError unless ``block_shape`` ``(z, y, x)`` is made of whole chunks."""
    chunk_zyx = CHUNK_XYZ[::-1]
    if len(block_shape) != 3 or any(int(b) < 1 or int(b) % c for b, c in zip(block_shape,
                                                                                chunk_zyx)):
        raise ValueError(f"`block_shape` must be 3 positive multiples of the chunk "
                         f"{chunk_zyx} (z, y, x); received block_shape={tuple(block_shape)}")


def import_volume_packages(mesh=False, skeleton=False):
    """Import cloud-volume (and zmesh / kimimaro); ImportError naming the extra if missing."""
    try:
        import cloudvolume  # noqa: F401
        import dask  # noqa: F401

        if mesh:
            import zmesh  # noqa: F401
        if skeleton:
            import kimimaro  # noqa: F401
    except ModuleNotFoundError as exc:
        raise ImportError(f"precomputed export needs {exc.name}; {EXTRA_HINT}") from exc


# ------------------------------------------------------------------ layer info

def layer_info(layer_type, data_type, shape_zyx, voxel_size_zyx, mesh=False, skeleton=False):
    """The precomputed ``info`` dict of a one-scale layer.

    Args:
        layer_type: ``"image"`` or ``"segmentation"``.
        data_type: numpy type name (``"uint8"``, ``"float32"``, ``"uint64"``...).
        shape_zyx: volume shape ``(Z, Y, X)``.
        voxel_size_zyx: ``(z, y, x)`` voxel size (nm).
        mesh, skeleton: name the ``mesh`` / ``skeletons`` sub-folders.
    """
    from cloudvolume import CloudVolume

    segmentation = layer_type == "segmentation"
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type=layer_type, data_type=data_type,
        encoding="compressed_segmentation" if segmentation else "raw",
        resolution=[plain_number(v) for v in voxel_size_zyx[::-1]], voxel_offset=[0, 0, 0],
        volume_size=[int(s) for s in shape_zyx[::-1]], chunk_size=list(CHUNK_XYZ),
        mesh="mesh" if mesh else None, skeletons="skeletons" if skeleton else None)
    return info


def plain_number(value):
    """``6.0`` -> ``6`` (so the scale's folder is ``6_6_30``), ``4.5`` stays ``4.5``."""
    value = float(value)
    return int(value) if value.is_integer() else value


def open_layer(folder, info=None):
    """A ``CloudVolume`` on the local ``folder`` (uncompressed files, quiet, one process)."""
    from cloudvolume import CloudVolume

    return CloudVolume(Path(folder).absolute().as_uri(), info=info, progress=False,
                       compress=False, parallel=1, fill_missing=False)


# ------------------------------------------------------------------ per block

def write_block(layer_dir, source, block, data_type, count_ids=False):
    """Copy one ``(z, y, x)`` block of ``source`` into the precomputed layer at ``layer_dir``.

    Args:
        layer_dir: folder of a layer whose ``info`` exists.
        source: ``(Z, Y, X)`` array-like (zarr, h5py, memmap...).
        block: ``((z0, z1), (y0, y1), (x0, x1))``, whole chunks.
        data_type: the layer's numpy type name.
        count_ids: also return ``{id: voxels}`` of the block (segmentations).

    Returns:
        ``{id: voxel count}`` with ``count_ids`` (id 0 left out), else ``{}``.

    Raises:
        ValueError: negative ids in a segmentation.
    """
    (z0, z1), (y0, y1), (x0, x1) = block
    data = np.asarray(source[z0:z1, y0:y1, x0:x1])
    counts = {}
    if count_ids:
        if data.dtype.kind == "i" and data.size and data.min() < 0:
            raise ValueError(f"segmentation holds negative ids (e.g. {int(data.min())}) in "
                             f"block z {z0}-{z1}, y {y0}-{y1}, x {x0}-{x1}; ids must be >= 0")
        ids, voxels = np.unique(data, return_counts=True)
        counts = {int(i): int(n) for i, n in zip(ids, voxels) if i != 0}
    layer = open_layer(layer_dir)
    layer[x0:x1, y0:y1, z0:z1] = np.ascontiguousarray(data.astype(data_type, copy=False).T)
    return counts


def read_with_border(source, block, shape):
    """Read ``block`` plus one voxel past its upper faces, zero-padded at the volume's faces.

    Returns:
        ``(labels, origin)``: the ``(Z, Y, X)`` array and the volume coordinate
        of its first voxel (``-1`` along an axis padded at the lower face).
    """
    lows = [lo for lo, _ in block]
    highs = [min(hi + 1, size) for (_, hi), size in zip(block, shape)]
    data = np.asarray(source[tuple(slice(lo, hi) for lo, hi in zip(lows, highs))])
    pad = [(1 if lo == 0 else 0, 1 if hi == size else 0)
           for lo, hi, size in zip(lows, highs, shape)]
    data = np.pad(data, pad)
    origin = [lo - before for lo, (before, _) in zip(lows, pad)]
    return data, origin


def skeletonize_block(source, block, shape, voxel_size_zyx, keep_ids, dust_threshold):
    """kimimaro skeletons of the ids in one block, in physical units of the volume.

    Returns:
        ``{id: osteoid.Skeleton}``; vertices offset to the block's position and
        to voxel centres (voxel ``i`` at ``(i + 0.5) * size``).
    """
    import kimimaro

    labels, origin = read_with_border(source, block, shape)
    resolution = np.array(voxel_size_zyx[::-1], dtype=np.float64)
    keep = [i for i in np.unique(labels) if int(i) in keep_ids]
    if not keep:
        return {}
    skeletons = kimimaro.skeletonize(np.asfortranarray(labels.T), anisotropy=tuple(resolution),
                                     object_ids=keep, dust_threshold=dust_threshold,
                                     progress=False, parallel=1, fix_borders=True)
    offset = (np.array(origin[::-1], dtype=np.float64) + 0.5) * resolution
    for skeleton in skeletons.values():
        skeleton.vertices = (skeleton.vertices + offset).astype(np.float32)
    return {int(label): skeleton for label, skeleton in skeletons.items()}


# ------------------------------------------------------------------ whole export

def run_tasks(tasks, workers):
    """Compute Dask delayed ``tasks`` on ``workers`` threads; list of results in order."""
    import dask

    return list(dask.compute(*tasks, scheduler="threads", num_workers=max(1, workers)))


def write_layer(layer_dir, source, info, blocks, workers, count_ids=False):
    """Create the layer at ``layer_dir`` and copy ``source`` into it block by block.

    Returns:
        ``{id: voxels}`` summed over blocks with ``count_ids``, else ``{}``.
    """
    import dask

    open_layer(layer_dir, info=info).commit_info()
    data_type = info["data_type"]
    tasks = [dask.delayed(write_block)(layer_dir, source, block, data_type, count_ids)
             for block in blocks]
    totals = {}
    for counts in run_tasks(tasks, workers):
        for label, voxels in counts.items():
            totals[label] = totals.get(label, 0) + voxels
    return totals


def write_meshes(layer_dir, source, blocks, shape, block_shape, voxel_size_zyx, keep_ids,
                 workers, lods=DEFAULT_LODS):
    """Mesh ``keep_ids`` block-wise into ``layer_dir/mesh`` (multi-resolution format).

    Two Dask passes: every block meshes its ids at each LOD and writes the
    quantized pieces into a scratch folder next to the layer; then every id's
    pieces become its ``<id>`` fragment file and ``<id>.index`` manifest
    (``volumes.multires_mesh``). The scratch folder is removed at the end.

    Returns:
        ``{id: [fragments per LOD]}``.

    Raises:
        ValueError: a LOD's sampling factor does not divide ``block_shape``.
    """
    import shutil

    import dask

    factors = lod_factors(shape, voxel_size_zyx, lods)
    for factor in factors:
        if any(b % f for b, f in zip(block_shape, factor)):
            raise ValueError(f"block shape {tuple(block_shape)} (z, y, x) is not divisible by "
                             f"the LOD sampling factors {factor}; use fewer --mesh-lods")
    mesh_dir = Path(layer_dir) / "mesh"
    write_mesh_info(mesh_dir, voxel_size_zyx)
    pieces_dir = Path(layer_dir).parent / "mesh-pieces"
    pieces_dir.mkdir()
    tasks = [dask.delayed(mesh_block_lods)(source, block, shape, block_shape, factors, keep_ids,
                                           pieces_dir)
             for block in blocks]
    meshed = set()
    for triangles in run_tasks(tasks, workers):
        meshed |= set(triangles)
    labels = sorted(int(p.name) for p in pieces_dir.iterdir())
    tasks = [dask.delayed(write_segment)(pieces_dir, label, mesh_dir, block_shape, factors)
             for label in labels]
    fragments = dict(zip(labels, run_tasks(tasks, workers)))
    shutil.rmtree(pieces_dir)
    return fragments


def write_skeletons(layer_dir, source, blocks, shape, voxel_size_zyx, keep_ids, workers,
                    dust_threshold):
    """Skeletonize ``keep_ids`` block-wise with kimimaro into ``layer_dir/skeletons``.

    The pieces of one id from different blocks are merged into one skeleton
    (shared vertices joined). Returns ``{id: number of vertices}``.
    """
    import dask
    from cloudvolume import Skeleton

    tasks = [dask.delayed(skeletonize_block)(source, block, shape, voxel_size_zyx, keep_ids,
                                             dust_threshold)
             for block in blocks]
    pieces = {}
    for skeletons in run_tasks(tasks, workers):
        for label, skeleton in skeletons.items():
            pieces.setdefault(label, []).append(skeleton)
    layer = open_layer(layer_dir)
    layer.skeleton.meta.commit_info()
    merged = {}
    for label, parts in pieces.items():
        skeleton = Skeleton.simple_merge(parts).consolidate() if len(parts) > 1 else parts[0]
        skeleton.id = label
        merged[label] = skeleton
    if merged:
        layer.skeleton.upload(list(merged.values()))
    return {label: len(skeleton.vertices) for label, skeleton in merged.items()}


def export_precomputed(labels, out_dir, image=None, voxel_size=(1.0, 1.0, 1.0), mesh=False,
                       skeleton=False, min_voxels=100, block_shape=DEFAULT_BLOCK, workers=1,
                       mesh_lods=DEFAULT_LODS, labels_name="LABELS", image_name="--image",
                       settings=None):
    """Write ``labels`` (and ``image``) as Neuroglancer precomputed layers into ``out_dir``.

    Args:
        labels: ``(Z, Y, X)`` integer array-like (zarr, h5py, memmap, ndarray).
        out_dir: output folder; checked by the caller (``io.outputs.check_output_path``
            with :func:`is_precomputed_output`); replaced at the end.
        image: optional ``(Z, Y, X)`` array-like of the same shape (raw EM or
            probabilities).
        voxel_size: ``(z, y, x)`` positive floats (nm).
        mesh: write multi-resolution meshes (``volumes.multires_mesh``) of every id
            with at least ``min_voxels`` voxels.
        skeleton: write kimimaro skeletons of the same ids.
        min_voxels: int >= 1, smallest id (in voxels) that gets a mesh / skeleton.
        block_shape: ``(z, y, x)`` voxels per Dask task, whole chunks
            (``CHUNK_XYZ`` reversed).
        workers: Dask threads.
        mesh_lods: levels of detail per mesh (1..5; LOD ``k`` meshes every
            ``2**k``-th voxel in-plane).
        labels_name, image_name: how messages name the inputs.
        settings: JSON-serialisable dict recorded in the marker file.

    Returns:
        summary dict: ``shape``, ``voxel_size``, ``ids``, ``meshes``,
        ``skeletons``, ``layers``.

    Raises:
        ValueError: float labels, an image of another shape, bad block shape,
            bad ``min_voxels``, negative ids.
    """
    from fusionnet_tf.io.outputs import staged_folder

    shape = tuple(int(s) for s in labels.shape)
    seg_type = label_dtype(labels.dtype, labels_name)
    if image is not None:
        if tuple(image.shape) != shape:
            raise ValueError(f"{image_name} has shape {tuple(image.shape)} but {labels_name} has "
                             f"shape {shape}; they must be the same volume")
        img_type = image_dtype(image.dtype, image_name)
    check_block_shape(block_shape)
    if int(min_voxels) < 1:
        raise ValueError(f"`min_voxels` must be >= 1; received min_voxels={min_voxels}")
    import_volume_packages(mesh, skeleton)
    out_dir = Path(out_dir)
    blocks = block_grid_zyx(shape, block_shape)
    with staged_folder(out_dir, "tmp.") as tmp:
        layers = ["segmentation"]
        if image is not None:
            write_layer(tmp / "image", image, layer_info("image", img_type, shape, voxel_size),
                        blocks, workers)
            layers.insert(0, "image")
        seg_dir = tmp / "segmentation"
        info = layer_info("segmentation", seg_type, shape, voxel_size, mesh, skeleton)
        counts = write_layer(seg_dir, labels, info, blocks, workers, count_ids=True)
        keep = {label for label, voxels in counts.items() if voxels >= int(min_voxels)}
        meshes = (write_meshes(seg_dir, labels, blocks, shape, block_shape, voxel_size, keep,
                               workers, mesh_lods) if mesh else {})
        # ids were chosen by their whole size; a block may hold a sliver of one (dust 0)
        skeletons = (write_skeletons(seg_dir, labels, blocks, shape, voxel_size, keep, workers,
                                     dust_threshold=0) if skeleton else {})
        summary = {"shape": list(shape), "voxel_size": list(map(float, voxel_size)),
                   "ids": len(counts), "meshes": len(meshes), "skeletons": len(skeletons),
                   "layers": layers}
        (tmp / MARKER).write_text(json.dumps({"command": COMMAND, "settings": settings or {},
                                              "summary": summary}, indent=1))
    return summary
