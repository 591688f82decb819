"""Neuroglancer multi-resolution meshes (``neuroglancer_multilod_draco``), block by block.

The format (Neuroglancer ``src/datasource/precomputed/meshes.md``): a mesh
folder with an ``info`` JSON and, per segment id, a binary manifest
``<id>.index`` and a fragment data file ``<id>``: one Draco-encoded mesh per
octree node, LOD 0 first, nodes in x-y-z Z-curve order within each LOD.

How the blocks map onto the octree here:

* "Stored model" coordinates are voxels of the full-resolution volume
  (``x, y, z``); the info's ``transform`` scales them by the voxel size, so
  Neuroglancer shows the meshes in nm.
* The LOD 0 grid cells are the blocks of the export (``chunk_shape`` = block
  shape), shifted by half a voxel (``grid_origin = -0.5``): block ``b`` along
  an axis covers voxels ``[b B, (b + 1) B)`` and is meshed with marching cubes
  (zmesh) together with the one voxel before its lower face, so its triangles
  lie between the voxel centres ``b B - 0.5`` and ``(b + 1) B - 0.5``: exactly
  its cell. Each block's mesh is therefore the LOD 0 fragment of its cell, and
  the fragments of neighbouring blocks meet without gaps.
* LOD ``k`` meshes the block again after taking every ``f``-th voxel (``f``
  the LOD's cumulative factor per axis, from the OME-Zarr pyramid rule: y and
  x halve at every level, z once the in-plane voxels have grown to half of
  it), with one coarse voxel before the lower face. Its triangles lie in the
  block's cell shifted by ``-(f - 1) / 2`` voxels: that shift is the LOD's
  ``vertex_offsets`` entry. A node of LOD ``k`` spans ``2**k`` cells per axis
  and its fragment is the union of its blocks' LOD ``k`` meshes, so no
  triangle crosses the node's 2 x 2 x 2 partition, as the format requires.
* At the volume's upper faces the closing surface lies up to half a (coarse)
  voxel past the last cell; those triangles go into the next cell (each
  triangle belongs to the cell holding its centroid; marching-cubes triangles
  never cross a cell face).
* Every ancestor of a fragment exists at each coarser LOD (with an empty,
  0-byte fragment where the coarse mesh of that node vanished), so
  Neuroglancer's octree reaches every fine fragment.

Vertex positions are quantized per fragment to ``VERTEX_BITS`` bits across the
node's box: ``q = round((u - node_lower) / node_size * (2**bits - 1))``; the
Draco encoder is called with quantization origin 0 and range
``2**bits - 1`` so the integers pass through unchanged (Neuroglancer reads
Draco's quantized integers, not its dequantized values). Marching-cubes
vertices sit on a half-voxel lattice, so vertices on a node's partition planes
quantize to exactly ``2**(bits - 1)``.

Block tasks write their pieces (already quantized, per id, LOD and cell) into
a scratch folder; one task per id then concatenates the pieces of each node,
encodes them and writes the manifest and data file. Nothing holds more than
one block or one id's mesh in memory. zmesh and DracoPy come with the
``fusionnet-tf[volumes]`` extra (DracoPy through cloud-volume) and are
imported inside the functions.
"""

import json
from pathlib import Path

import numpy as np

VERTEX_BITS = 16
MAX_QUANTIZED = (1 << VERTEX_BITS) - 1
DRACO_COMPRESSION = 1  # Draco's speed/size trade-off (0..10); 1 costs about a marching cubes
DEFAULT_LODS = 3


# ------------------------------------------------------------------ geometry

def lod_factors(shape_zyx, voxel_size_zyx, lods):
    """Cumulative per-axis sampling factors of each LOD, ``(z, y, x)`` ints, LOD 0 first.

    Follows the OME-Zarr pyramid rule (``io.ome_zarr.pyramid_factors``): y and
    x double at every LOD, z once its voxel size is less than twice the
    in-plane one; an axis of extent 1 stays 1.

    Raises:
        ValueError: ``lods`` is not an integer in 1..5.
    """
    from fusionnet_tf.io.ome_zarr import pyramid_factors

    if isinstance(lods, bool) or int(lods) != lods or not 1 <= lods <= 5:
        raise ValueError(f"`mesh_lods` must be an integer from 1 to 5; received {lods!r}")
    factors = [(1, 1, 1)]
    for step in pyramid_factors(shape_zyx, voxel_size_zyx, levels=int(lods)):
        factors.append(tuple(a * b for a, b in zip(factors[-1], step)))
    return factors


def mesh_info(voxel_size_zyx):
    """The mesh folder's ``info``: stored model = voxels ``(x, y, z)``, scaled to nm."""
    x, y, z = (float(v) for v in voxel_size_zyx[::-1])
    return {"@type": "neuroglancer_multilod_draco", "vertex_quantization_bits": VERTEX_BITS,
            "transform": [x, 0, 0, 0, 0, y, 0, 0, 0, 0, z, 0], "lod_scale_multiplier": 1.0}


def vertex_offsets_xyz(factors):
    """``(lods, 3)`` float: LOD ``k``'s grid shift ``-(f - 1) / 2`` voxels per axis (x, y, z)."""
    return np.array([[-(f - 1) / 2 for f in step[::-1]] for step in factors], np.float64)


def lod_scales(factors):
    """Neuroglancer's LOD resolution in voxels: the in-plane factor ``1, 2, 4, ...``."""
    return np.array([float(max(step)) for step in factors], np.float64)


def morton_order(positions):
    """Indices sorting ``(n, 3)`` cell positions ``(x, y, z)`` into Z-curve order (x fastest)."""
    positions = np.asarray(positions, np.uint64).reshape(-1, 3)
    codes = np.zeros(len(positions), np.uint64)
    for bit in range(21):
        for axis in range(3):
            codes |= ((positions[:, axis] >> np.uint64(bit)) & np.uint64(1)) << np.uint64(
                3 * bit + axis)
    return np.argsort(codes, kind="stable")


# ------------------------------------------------------------------ one block

def read_with_lower_border(source, block, shape, border):
    """Read ``block`` plus ``border`` voxels before its lower faces (zeros outside the volume).

    Args:
        source: ``(Z, Y, X)`` label array-like.
        block: ``((z0, z1), (y0, y1), (x0, x1))``.
        shape: volume shape ``(Z, Y, X)``.
        border: ``(z, y, x)`` voxels to prepend.

    Returns:
        ``(Z', Y', X')`` array starting at volume voxel ``lo - border`` per axis.
    """
    lows = [max(lo - b, 0) for (lo, _), b in zip(block, border)]
    data = np.asarray(source[tuple(slice(lo, hi) for lo, (_, hi) in zip(lows, block))])
    pad = [(b - (lo - low), 0) for (lo, _), low, b in zip(block, lows, border)]
    return np.pad(data, pad) if any(before for before, _ in pad) else data


def coarse_labels(padded, block, shape, border, factor):
    """Every ``factor``-th voxel of a block read with ``border``, with one coarse voxel each side.

    Returns:
        ``(labels, origin)``: the ``(z, y, x)`` coarse array, starting with the
        coarse voxel before the block (its fine index ``lo - factor``), plus a
        zero coarse voxel after the block where it ends at the volume's face;
        ``origin`` the fine ``(z, y, x)`` index of its first voxel.
    """
    slices = tuple(slice(b - f, None, f) for b, f in zip(border, factor))
    labels = padded[slices]
    after = [(0, 1 if hi == size else 0) for (_, hi), size in zip(block, shape)]
    if any(a for _, a in after):
        labels = np.pad(labels, after)
    origin = tuple(lo - f for (lo, _), f in zip(block, factor))
    return labels, origin


def split_by_cell(vertices, faces, cell_origin, cell_shape):
    """Group the triangles of one mesh by the grid cell holding their centroid.

    Args:
        vertices: ``(n, 3)`` float64 stored-model positions (voxels, x y z).
        faces: ``(m, 3)`` uint32.
        cell_origin: ``(3,)`` lower corner of cell ``(0, 0, 0)`` (x y z).
        cell_shape: ``(3,)`` cell size in voxels (x y z).

    Returns:
        ``{(cx, cy, cz): (vertices, faces)}``, each re-indexed to its own vertices.
    """
    first = np.maximum(np.floor((vertices.min(axis=0) - cell_origin) / cell_shape), 0)
    if (vertices.max(axis=0) <= cell_origin + (first + 1) * cell_shape).all():
        return {tuple(int(k) for k in first): (vertices, faces)}  # the usual case: one cell
    centroids = (vertices[faces[:, 0]] + vertices[faces[:, 1]] + vertices[faces[:, 2]]) / 3
    cells = np.maximum(np.floor((centroids - cell_origin) / cell_shape).astype(np.int64), 0)
    low = cells.min(axis=0)
    extent = cells.max(axis=0) - low + 1
    codes = np.ravel_multi_index(tuple((cells - low).T), tuple(extent))
    groups = {}
    for code in np.unique(codes):
        key = low + np.array(np.unravel_index(code, tuple(extent)))
        part = faces[codes == code]
        used = np.zeros(len(vertices), bool)
        used[part.reshape(-1)] = True
        new_index = np.cumsum(used) - 1
        groups[tuple(int(k) for k in key)] = (vertices[used], new_index[part].astype(np.uint32))
    return groups


def quantize(vertices, node_lower, node_shape):
    """Positions ``(n, 3)`` (voxels) -> uint16 ``round((u - lower) / shape * (2**bits - 1))``.

    Rounds halves up (``floor(x + 0.5)``), so a vertex on a node's midplane
    becomes ``2**(bits - 1)``; clipped to ``[0, 2**bits - 1]``.
    """
    scaled = (vertices - node_lower) / node_shape * MAX_QUANTIZED
    return np.clip(np.floor(scaled + 0.5), 0, MAX_QUANTIZED).astype(np.uint16)


def mesh_block_lods(source, block, shape, block_shape, factors, keep_ids, pieces_dir):
    """Mesh the ids of ``keep_ids`` in one block at every LOD; write quantized pieces.

    Args:
        source: ``(Z, Y, X)`` label array-like.
        block: ``((z0, z1), (y0, y1), (x0, x1))``, its lower corner a multiple
            of ``block_shape``.
        shape: volume shape ``(Z, Y, X)``.
        block_shape: ``(z, y, x)`` of the full blocks (the LOD 0 cell).
        factors: :func:`lod_factors`; each must divide ``block_shape``.
        keep_ids: set of ids to mesh.
        pieces_dir: folder; writes ``<id>/<z0>_<y0>_<x0>.npz`` with arrays
            ``v_<lod>_<cx>_<cy>_<cz>`` (uint16 ``(n, 3)``, quantized in the
            LOD's node) and ``f_...`` (uint32 ``(m, 3)``).

    Returns:
        ``{id: number of LOD 0 triangles}`` for the ids meshed here.
    """
    import zmesh

    border = tuple(max(step[axis] for step in factors) for axis in range(3))
    padded = read_with_lower_border(source, block, shape, border)
    cell_xyz = np.array(block_shape[::-1], np.float64)
    offsets = vertex_offsets_xyz(factors)
    pieces, triangles = {}, {}
    for lod, factor in enumerate(factors):
        labels, origin = coarse_labels(padded, block, shape, border, factor)
        present = [int(i) for i in np.unique(labels) if int(i) in keep_ids]
        if not present:
            continue
        mesher = zmesh.Mesher(tuple(float(f) for f in factor[::-1]))  # voxels of LOD 0
        mesher.mesh(np.asfortranarray(labels.T), close=False)
        origin_xyz = np.array(origin[::-1], np.float64)
        cell_origin = -0.5 + offsets[lod]
        node_shape = cell_xyz * (1 << lod)
        for label in present:
            mesh = mesher.get(label, normals=False, voxel_centered=True)
            if len(mesh.faces) == 0:
                continue
            vertices = mesh.vertices.astype(np.float64) + origin_xyz
            faces = np.asarray(mesh.faces, np.uint32)
            if lod == 0:
                triangles[label] = len(faces)
            for cell, (part_v, part_f) in split_by_cell(vertices, faces, cell_origin,
                                                        cell_xyz).items():
                node = np.array(cell) >> lod
                lower = cell_origin + node * node_shape
                key = f"{lod}_{cell[0]}_{cell[1]}_{cell[2]}"
                entry = pieces.setdefault(label, {})
                entry[f"v_{key}"] = quantize(part_v, lower, node_shape)
                entry[f"f_{key}"] = part_f
        mesher.clear()
    (z0, _), (y0, _), (x0, _) = block
    for label, arrays in pieces.items():
        folder = Path(pieces_dir) / str(label)
        folder.mkdir(exist_ok=True)
        np.savez(folder / f"{z0}_{y0}_{x0}.npz", **arrays)
    return triangles


# ------------------------------------------------------------------ one id

def load_pieces(folder):
    """``{(lod, cell): [(vertices, faces), ...]}`` from an id's piece files."""
    pieces = {}
    for path in sorted(Path(folder).glob("*.npz")):
        with np.load(path) as arrays:
            for name in arrays.files:
                if not name.startswith("v_"):
                    continue
                lod, cx, cy, cz = (int(v) for v in name[2:].split("_"))
                pieces.setdefault((lod, (cx, cy, cz)), []).append(
                    (arrays[name], arrays["f_" + name[2:]]))
    return pieces


def lod_nodes(cells_by_lod, lods):
    """Nodes of each LOD: every cell's ancestor at that LOD (from this and all finer LODs)."""
    nodes, below = [], set()
    for lod in range(lods):
        below |= cells_by_lod.get(lod, set())
        nodes.append(sorted({tuple(c >> lod for c in cell) for cell in below}))
    return nodes


def encode_fragment(parts):
    """Draco bytes of the union of ``parts`` (quantized vertices, faces); ``b""`` if empty."""
    import DracoPy

    parts = [(v, f) for v, f in parts if len(f)]
    if not parts:
        return b""
    vertices, faces, count = [], [], 0
    for part_v, part_f in parts:
        vertices.append(part_v)
        faces.append(part_f.astype(np.uint32) + count)
        count += len(part_v)
    return DracoPy.encode(np.concatenate(vertices).astype(np.float32), np.concatenate(faces),
                          quantization_bits=VERTEX_BITS, quantization_range=MAX_QUANTIZED,
                          quantization_origin=(0.0, 0.0, 0.0),
                          compression_level=DRACO_COMPRESSION)


def manifest_bytes(chunk_shape, grid_origin, scales, offsets, positions, sizes):
    """The binary ``<id>.index`` manifest (all little-endian).

    Args:
        chunk_shape, grid_origin: ``(3,)`` x y z, stored model units.
        scales: ``(lods,)`` LOD scales.
        offsets: ``(lods, 3)`` vertex offsets.
        positions: per LOD an ``(n, 3)`` array of node positions (Z-curve order).
        sizes: per LOD ``(n,)`` fragment byte sizes.
    """
    parts = [np.asarray(chunk_shape, "<f4"), np.asarray(grid_origin, "<f4"),
             np.array([len(scales)], "<u4"), np.asarray(scales, "<f4"),
             np.asarray(offsets, "<f4").reshape(-1),
             np.array([len(p) for p in positions], "<u4")]
    for lod_positions, lod_sizes in zip(positions, sizes):
        parts.append(np.asarray(lod_positions, "<u4").reshape(-1, 3).T.reshape(-1))
        parts.append(np.asarray(lod_sizes, "<u4"))
    return b"".join(part.tobytes() for part in parts)


def write_segment(pieces_dir, label, mesh_dir, block_shape, factors):
    """Assemble one id: encode each node's fragment, write ``<id>`` and ``<id>.index``.

    Returns:
        ``[fragments per LOD]`` (empty fragments included).
    """
    pieces = load_pieces(Path(pieces_dir) / str(label))
    cells_by_lod = {}
    for lod, cell in pieces:
        cells_by_lod.setdefault(lod, set()).add(cell)
    lods = len(factors)
    data, positions, sizes = [], [], []
    for lod, nodes in enumerate(lod_nodes(cells_by_lod, lods)):
        nodes = np.array(nodes, np.int64).reshape(-1, 3)
        nodes = nodes[morton_order(nodes)]
        children = {}
        for (piece_lod, cell), parts in pieces.items():
            if piece_lod == lod:
                children.setdefault(tuple(c >> lod for c in cell), []).extend(parts)
        encoded = [encode_fragment(children.get(tuple(int(c) for c in node), []))
                   for node in nodes]
        data.extend(encoded)
        positions.append(nodes)
        sizes.append([len(b) for b in encoded])
    manifest = manifest_bytes(block_shape[::-1], (-0.5, -0.5, -0.5), lod_scales(factors),
                              vertex_offsets_xyz(factors), positions, sizes)
    (Path(mesh_dir) / str(label)).write_bytes(b"".join(data))
    (Path(mesh_dir) / f"{label}.index").write_bytes(manifest)
    return [len(p) for p in positions]


def write_mesh_info(mesh_dir, voxel_size_zyx):
    """Create ``mesh_dir`` with its ``info``."""
    mesh_dir = Path(mesh_dir)
    mesh_dir.mkdir()
    (mesh_dir / "info").write_text(json.dumps(mesh_info(voxel_size_zyx)))
