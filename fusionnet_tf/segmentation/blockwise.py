"""Block-wise segmentation of volumes too large for memory (``segment-volume``).

``segment_volume(input, output, ...)`` reads a ``(Z, Y, X)`` membrane map
lazily (zarr v2/v3 or HDF5, as ``fusionnet_tf.volumes.open_volume``), or
``(C, Z, Y, X)`` affinities with their offsets (``data.affinity_io``), and
writes a uint64 zarr label volume whose ids are consistent across blocks. It
runs in passes, locally or on Dask (the executors of
``fusionnet_tf.volumes.executors``), and every pass is resumable:

0. *check*: per-block minima and maxima; a map outside [0, 1], with NaN or of
   an integer type other than uint8 is refused before anything is written.
1. *watershed*: each block is segmented together with a halo (``segment_array``
   on the block plus ``halo`` voxels on each side, clipped to the volume; each
   section on its own in ``2d`` mode and thick-section ``3d`` mode). Ids that
   occur inside the block are renumbered 1..k ("inner" ids), ids seen only in
   the halo k+1.. . The inner labels are written as one uint32 chunk of a work
   array and, for each face shared with a neighbouring block, the labels of
   the *face slab* (``w`` voxels on either side of the face, ``w =
   min(MATCH_WIDTH, halo, both block sizes)``) are saved. Done-marker per
   block, after the data.
2. *merge*: on each face the two blocks have both labelled the same slab (each
   its own half exactly, the other half from its halo), so their segments can
   be matched by overlap: inner segments ``a`` of one block and ``b`` of the
   other are joined when, in each half of the slab, their overlap is more than
   ``MATCH_FRACTION`` of ``a``'s or of ``b``'s voxels there (``match_slabs``).
   Connected components of all joins give the global segments, numbered 1..K
   in block order (then local id order). Thick-section ``3d`` mode then runs a
   *link* pass (see below). The mapping is written atomically; its presence
   marks the pass done.
3. *relabel*: each block's local ids are mapped to global ids and written as
   one uint64 chunk of the output, then marked done. When every block is done
   the work folder is removed.

Affinities are segmented like ``3d`` mode: each block plus a halo in z, y and
x (an int halo ``h`` is ``max(2, ceil(h / anisotropy))`` slices along z) by
``segment_affinities`` (agglomeration or mutex watershed, the in-memory
function), faces matched along all three axes. Measured on degraded SNEMI3D
ground-truth affinities (15 x 512 x 512, 256 px blocks, shipped snemi3d
parameters; BENCHMARKS.md "Block-wise segmentation"): see there for the
adapted Rand error against in-memory segmentation at each halo. The settings
record ``input_kind`` (``"membrane"`` or ``"affinities"``) so an output is
never resumed from the other kind of input.

In ``2d`` mode with blocks spanning whole slices there are no faces to merge
and the result is the in-memory ``segment(..., mode="2d")`` partition exactly.
``3d`` mode with thick sections (``anisotropy >= ANISOTROPIC``, e.g. ISBI)
segments sections on their own and links them by overlap; block-wise runs
sum the footprints and overlaps of the per-section segments over blocks in a
link pass (after the face merge), so the links are exactly those of
``link_sections`` on the whole volume. Blocks that cut slices agree with
in-memory segmentation up to a small adapted Rand error that shrinks with the
halo, as does ``3d`` mode on near-isotropic data (a 3D watershed per block
with a z halo; tested on synthetic data only). Measured with the shipped
model's maps of ISBI slices 20-24 and its tuned parameters: on an 8 x 1024 x
1024 mirror-tiled volume with 256-512 px blocks and the default halo 64,
adapted Rand error 0 (identical partitions) in 2d and in 3d, no seam splits;
on the 5 x 512 x 512 slices with 128 px blocks (2d), 0.018 at halo 16, 0.007
at halo 32 and 0 at halo 64. Keep the halo at least about a cell diameter
(``tests/test_segment_volume.py``, ``benchmarks/bench_segment_volume.py``).

Layout of ``OUTPUT`` (a zarr array at the store root, chunks = blocks)::

    OUTPUT/.fusionnet-done/<block>.json          relabel pass markers
    OUTPUT/.fusionnet-segment/labels.zarr        pass 1 local ids (+ markers)
    OUTPUT/.fusionnet-segment/faces/<block>.npz  pass 1 face slabs
    OUTPUT/.fusionnet-segment/mapping.npy        pass 2 local -> global ids
"""

import dataclasses
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np

from fusionnet_tf.checks import check_choice

from fusionnet_tf.data.readers import close_stack
from fusionnet_tf.io_utils import atomic_path
from fusionnet_tf.segmentation.params import ANISOTROPIC, MODES, SegmentParams
from fusionnet_tf.segmentation.segmenter import (graph_components, link_segments, segment_array,
                                                 stack_slices)
from fusionnet_tf.volumes import storage
from fusionnet_tf.volumes.geometry import block_grid, check_block_shape
from fusionnet_tf.volumes.executors import (BlockFailures, blocks_line, check_block_hook,
                                            count_block, executor_context, is_distributed,
                                            run_tasks, speed_line, worker_name)

WORK_DIR = ".fusionnet-segment"
SEGMENT_ATTRS_KEY = "fusionnet_segment_volume"
# two blocks' segments on a face are joined when they overlap by more than this
# fraction of either segment's voxels in the face slab
MATCH_FRACTION = 0.5
# face slabs are this many voxels deep on each side of the face, where both blocks' labels
# have most context; on ISBI maps depths 1, 2 and 8 gave the same result, and thin slabs
# keep the face files small
MATCH_WIDTH = 2
DEFAULT_HALO = 64
# what the input holds (recorded in the output's settings; stores of earlier versions,
# which do not record it, were segmented from membrane maps)
MEMBRANE, AFFINITIES = "membrane", "affinities"
INPUT_KINDS = (MEMBRANE, AFFINITIES)
# default blocks: membrane maps slice by slice; affinities in 3D (their z halo is
# halo / anisotropy slices on each side, so thin blocks would mostly read halo)
DEFAULT_BLOCK = {MEMBRANE: (1, 1024, 1024), AFFINITIES: (16, 512, 512)}
# z halo in 3d mode: the in-plane halo over the anisotropy, at least this many slices
MIN_HALO_Z = 2


@dataclasses.dataclass(frozen=True)
class SegmentJob:
    """What every block task of a ``segment_volume`` run shares (picklable).

    Attributes:
        input_spec: str, ``volume.zarr[:/key]`` or ``volume.h5:/key``.
        output_path: str, the output zarr store.
        params: ``SegmentParams`` (membrane maps) or ``AffinityParams``.
        mode: ``"2d"`` or ``"3d"`` (always ``"3d"`` for affinities).
        halo: ``(z, y, x)`` voxels read around each block.
        volume_shape, block_shape: ``(Z, Y, X)`` tuples.
        input_kind: ``"membrane"`` ((Z, Y, X) map) or ``"affinities"``
            ((C, Z, Y, X) with ``offsets``).
        offsets: tuple of C ``(dz, dy, dx)`` for affinities, else None.
    """

    input_spec: str
    output_path: str
    params: object
    mode: str
    halo: tuple
    volume_shape: tuple
    block_shape: tuple
    input_kind: str = MEMBRANE
    offsets: tuple = None

    @property
    def work(self):
        """The work folder inside the output store."""
        return Path(self.output_path) / WORK_DIR

    @property
    def local_labels(self):
        """The pass-1 zarr array of per-block local ids."""
        return self.work / "labels.zarr"

    @property
    def mapping(self):
        """The pass-2 mapping file (local ids of all blocks -> global ids)."""
        return self.work / "mapping.npy"

    @property
    def kind(self):
        """How blocks are segmented: see ``segmentation_kind``."""
        if self.input_kind == AFFINITIES:
            return "3d"
        return segmentation_kind(self.mode, self.params)

    @property
    def mapping_2d(self):
        """Linked mode: the mapping of local ids to per-section global ids."""
        return self.work / "mapping2d.npy"

    def faces_file(self, block):
        """The pass-1 face slabs of ``block``."""
        return self.work / "faces" / f"{block.name}.npz"


# ------------------------------------------------------------------ geometry

def segmentation_kind(mode, params):
    """``"2d"``, ``"linked"`` or ``"3d"``: how ``segment(mode=mode)`` treats a volume.

    ``"linked"`` is 3d mode with thick sections (``params.anisotropy >=
    ANISOTROPIC``): ``segment`` then segments each section on its own and links
    segments of neighbouring sections by overlap (``link_sections``), which
    block-wise runs do exactly, as a pass of their own.
    """
    if mode == "2d":
        return "2d"
    return "linked" if params.anisotropy >= ANISOTROPIC else "3d"


def resolve_halo(halo, kind, anisotropy):
    """``(z, y, x)`` halo from an int (in-plane) or a 3-tuple.

    An int ``h`` gives ``(max(MIN_HALO_Z, ceil(h / anisotropy)), h, h)`` for
    ``kind="3d"`` (see ``segmentation_kind``). Sections are segmented on their
    own otherwise, so the z halo is 0 for ``"2d"`` and ``"linked"``.

    Raises:
        ValueError: negative values, an in-plane halo < 1, or a z halo < 1 for
            ``"3d"`` (blocks could not be matched across their faces).
    """
    if isinstance(halo, (int, np.integer)) and not isinstance(halo, bool):
        h = int(halo)
        hz = max(MIN_HALO_Z, math.ceil(h / anisotropy)) if kind == "3d" else 0
        values = (hz, h, h)
    else:
        try:
            values = tuple(int(v) for v in halo)
        except (TypeError, ValueError):
            values = ()
        if len(values) != 3 or values != tuple(halo):
            raise ValueError(f"`halo` must be an int or three ints (Z, Y, X); received "
                             f"halo={halo!r}")
    if min(values[1:]) < 1 or values[0] < 0 or (kind == "3d" and values[0] < 1):
        raise ValueError(f"`halo` must be >= 1 voxel in-plane (and along z in 3d mode) so that "
                         f"blocks can be matched across their faces; received halo={halo!r}")
    return values if kind == "3d" else (0,) + values[1:]


def extended_region(block, halo, volume_shape):
    """The block grown by ``halo`` on each side, clipped to the volume: 3 ``(start, stop)``."""
    ranges = (block.z, block.y, block.x)
    return tuple((max(0, start - h), min(size, stop + h))
                 for (start, stop), h, size in zip(ranges, halo, volume_shape))


def block_faces(block, job):
    """Faces of ``block`` that need matching: list of ``(axis, side, width)``.

    ``side`` is +1 for the face at the block's end along ``axis`` (shared
    with the next block), -1 for its start. ``width`` is the slab depth on
    each side of the face: ``min(MATCH_WIDTH, halo, this block's size, the
    neighbour's)``.
    Unless ``job.kind == "3d"`` z faces are not matched (sections are
    segmented on their own).
    """
    ranges = (block.z, block.y, block.x)
    faces = []
    for axis in ((0, 1, 2) if job.kind == "3d" else (1, 2)):
        start, stop = ranges[axis]
        size, step = job.volume_shape[axis], job.block_shape[axis]
        for side, neighbour in ((-1, (start - step, start)), (1, (stop, min(stop + step, size)))):
            if neighbour[0] < 0 or neighbour[0] >= size:
                continue
            width = min(MATCH_WIDTH, job.halo[axis], stop - start, neighbour[1] - neighbour[0])
            faces.append((axis, side, width))
    return faces


def face_slab(block, axis, side, width, region):
    """Selection of a face slab inside the extended region ``region`` (local coords)."""
    ranges = (block.z, block.y, block.x)
    selection = []
    for current, ((start, stop), (r0, _)) in enumerate(zip(ranges, region)):
        if current == axis:
            face = stop if side > 0 else start
            selection.append(slice(face - width - r0, face + width - r0))
        else:
            selection.append(slice(start - r0, stop - r0))
    return tuple(selection)


def _inner(block, region):
    return tuple(slice(start - r0, stop - r0)
                 for (start, stop), (r0, _) in zip((block.z, block.y, block.x), region))


def _face_key(axis, side):
    return f"{axis}{'+' if side > 0 else '-'}"


def neighbour_pairs(blocks, job):
    """``(a, b, axis)`` for every pair of blocks sharing a face to match (a before b)."""
    by_index = {block.index: number for number, block in enumerate(blocks)}
    pairs = []
    for number, block in enumerate(blocks):
        for axis, side, _ in block_faces(block, job):
            if side < 0:
                continue
            index = list(block.index)
            index[axis] += 1
            pairs.append((number, by_index[tuple(index)], axis))
    return pairs


# ------------------------------------------------------------------ pass 1

def segment_region(data, params, kind, offsets=None):
    """Labels 1..K of a (z, y, x) region: per section (ids unique over sections) or 3d.

    ``data`` is a (z, y, x) membrane map, or (C, z, y, x) affinities when
    ``offsets`` is given: those are segmented by ``segment_affinities``, the
    function of in-memory ``fusionnet segment`` (``params``: ``AffinityParams``).
    """
    if offsets is not None:
        from fusionnet_tf.segmentation.affinities import segment_affinities

        labels, _ = segment_affinities(data, offsets, params)
        return labels
    membrane = data
    if kind == "3d":
        labels, _ = segment_array(membrane, params, sampling=(params.anisotropy, 1.0, 1.0))
    else:
        labels, _ = stack_slices(membrane, params)
    return labels


def inner_first(labels, inner):
    """Renumber ``labels`` so ids inside ``inner`` are 1..k and halo-only ids k+1...

    Args:
        labels: int labels (>= 0) of the extended region.
        inner: selection of the block inside it.

    Returns:
        ``(local, k)``: uint32 labels of ``labels``' shape and k, the number of
        ids that occur inside the block (numbered in increasing old-id order).
    """
    table = np.zeros(int(labels.max()) + 1, np.int64)
    present = np.bincount(labels.ravel(), minlength=table.size) > 0
    in_block = np.bincount(labels[inner].ravel(), minlength=table.size) > 0
    halo_only = present & ~in_block
    count = int(in_block.sum())
    table[in_block] = np.arange(1, count + 1)
    table[halo_only] = np.arange(count + 1, count + 1 + int(halo_only.sum()))
    return table[labels].astype(np.uint32), count


def read_membrane_region(input_spec, region):
    """Read a region of the input as float32 membrane probability (uint8 = x/255)."""
    from fusionnet_tf.inference.writers import membrane_from_array

    volume, name = storage.open_volume(input_spec)
    try:
        raw = np.asarray(volume[tuple(slice(*r) for r in region)])
    finally:
        close_stack(volume)
    return membrane_from_array(raw, name)


def read_affinity_region(input_spec, region):
    """Read a region of an affinity file: (C, z, y, x) float32, every channel."""
    from fusionnet_tf.data.affinity_io import open_affinities

    affs, _, _ = open_affinities(input_spec)
    try:
        return np.asarray(affs[(slice(None),) + tuple(slice(*r) for r in region)], np.float32)
    finally:
        close_stack(affs)


def read_region(job, region):
    """The input of ``region`` (3 ``(start, stop)``): membrane map or affinities."""
    if job.input_kind == AFFINITIES:
        return read_affinity_region(job.input_spec, region)
    return read_membrane_region(job.input_spec, region)


def watershed_task(job, block, hook=None):
    """Pass 1 for one block: segment block + halo, save face slabs and inner labels, mark.

    Returns:
        dict: ``index``, ``worker``, ``count`` (inner ids), ``seconds``,
        ``cpu_seconds`` (CPU time of this process), ``skipped`` (already done).
    """
    start, cpu_start = time.perf_counter(), time.process_time()
    info = {"index": block.index, "worker": worker_name(), "voxels": block.size}
    if storage.is_done(job.local_labels, block):
        return {**info, "skipped": True, "count": read_count(job, block), "seconds": 0.0,
                "cpu_seconds": 0.0}
    region = extended_region(block, job.halo, job.volume_shape)
    labels = segment_region(read_region(job, region), job.params, job.kind, job.offsets)
    inner = _inner(block, region)
    local, count = inner_first(labels, inner)
    slabs = {_face_key(axis, side): local[face_slab(block, axis, side, width, region)]
             for axis, side, width in block_faces(block, job)}
    job.faces_file(block).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(job.faces_file(block)) as tmp:
        np.savez(tmp, count=np.int64(count), **slabs)
    write_block(job.local_labels, block, local[inner], hook, "watershed")
    seconds = time.perf_counter() - start
    storage.mark_done(job.local_labels, block, {"count": count, "worker": info["worker"],
                                                "seconds": round(seconds, 3)})
    return {**info, "skipped": False, "count": count, "seconds": seconds,
            "cpu_seconds": time.process_time() - cpu_start}


def write_block(path, block, data, hook=None, pass_name=None):
    """``storage.write_block``, after ``hook(pass_name, block)`` (fault injection in tests).

    The hook runs as part of the data write, so a fault it raises stands for a
    kill while the data is written: the done-marker must not exist yet.
    """
    if hook is not None:
        hook(pass_name, block)
    storage.write_block(path, block, data)


def read_count(job, block):
    """The number of inner ids of a block finished in pass 1 (from its done-marker)."""
    return int(json.loads(storage.done_marker(job.local_labels, block).read_text())["count"])


# ------------------------------------------------------------------ pass 2

def match_task(job, block_a, block_b, axis, count_a, count_b):
    """Pairs of inner ids of ``block_a`` / ``block_b`` that are one segment across their face.

    Both blocks labelled the same face slab (their own side and their halo on
    the other side). Inner ids ``a`` and ``b`` are joined when, in each half of
    the slab, their overlap exceeds ``MATCH_FRACTION`` of ``a``'s or of ``b``'s
    voxels in that half (``match_slabs``).

    Returns:
        ``(a_ids, b_ids)``: int64 arrays of local ids (1-based) to join.
    """
    with np.load(job.faces_file(block_a)) as faces:
        slab_a = faces[_face_key(axis, 1)]
    with np.load(job.faces_file(block_b)) as faces:
        slab_b = faces[_face_key(axis, -1)]
    return match_slabs(slab_a, slab_b, count_a, count_b, axis)


def match_slabs(slab_a, slab_b, count_a, count_b, axis, fraction=MATCH_FRACTION):
    """Overlap matching of two labellings of one face slab (see ``match_task``).

    The slab is split at the face into block A's half (first along
    ``axis``) and block B's half, and a pair must pass in both halves:
    each half holds one block's inner labels (exact) and the other block's
    halo labels, so a pair is joined only when both blocks see the segment
    cross the face. (A halo view alone can be wrong: a sliver of a cell cut
    off by the halo's outer edge may be merged into its neighbour there.)

    Args:
        slab_a, slab_b: int labels (> 0) of the same shape; ids up to
            ``count_a`` / ``count_b`` are inner ids of their block.
        count_a, count_b: ints.
        axis: int, the axis across the face.
        fraction: float in (0, 1).

    Returns:
        ``(a_ids, b_ids)`` int64 arrays.
    """
    if slab_a.shape != slab_b.shape:
        raise ValueError(f"face slabs differ in shape: {slab_a.shape} vs {slab_b.shape}")
    if slab_a.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    span = int(slab_b.max()) + 1
    half = slab_a.shape[axis] // 2
    halves = [(np.take(slab_a, range(0, half), axis), np.take(slab_b, range(0, half), axis)),
              (np.take(slab_a, range(half, 2 * half), axis),
               np.take(slab_b, range(half, 2 * half), axis))]
    keys = None
    for part_a, part_b in halves:
        passed = _overlapping_pairs(part_a.ravel().astype(np.int64),
                                    part_b.ravel().astype(np.int64), span, fraction)
        keys = passed if keys is None else np.intersect1d(keys, passed)
    pair_a, pair_b = keys // span, keys % span
    inner = (pair_a <= count_a) & (pair_b <= count_b)
    return pair_a[inner], pair_b[inner]


def _overlapping_pairs(a, b, span, fraction):
    """Keys ``a * span + b`` of pairs overlapping by > ``fraction`` of either's voxels."""
    keys, overlap = np.unique(a * span + b, return_counts=True)
    size_a = np.bincount(a)[keys // span]
    size_b = np.bincount(b, minlength=span)[keys % span]
    return keys[(overlap > fraction * size_a) | (overlap > fraction * size_b)]


def global_mapping(counts, joins):
    """Global ids 1..K for all blocks' local ids, from the joins across faces.

    Args:
        counts: list of int, inner ids per block (block order).
        joins: list of ``(block_a, block_b, a_ids, b_ids)``.

    Returns:
        ``(new_ids, starts, K)``: uint64 array over all local ids (block ``n``'s
        id ``i`` is at ``starts[n] + i - 1``), int64 starts (len(counts)), and
        K. Components are numbered in order of their first local id.
    """
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    total = int(np.sum(counts))
    rows = [starts[a] + ids_a - 1 for a, _, ids_a, _ in joins]
    cols = [starts[b] + ids_b - 1 for _, b, _, ids_b in joins]
    rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    cols = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    new_ids, count = graph_components(total, rows, cols)
    return new_ids, starts, count


# ------------------------------------------------------------------ pass 2b (linked mode)

def _section_ids(job, block, start, count, first_section=False):
    """A block's labels in per-section global ids (``mapping_2d``); int64."""
    zarr = storage.import_zarr()
    z = (block.z[0], block.z[0] + 1) if first_section else block.z
    local = zarr.open_array(str(job.local_labels), mode="r")[
        slice(*z), slice(*block.y), slice(*block.x)]
    table = np.zeros(count + 1, np.int64)
    table[1:] = np.load(job.mapping_2d, mmap_mode="r")[start:start + count]
    return table[np.asarray(local)]


def link_task(job, block, start, count, below=None):
    """Linked mode: footprints and section-to-section overlaps of one block's segments.

    Args:
        job: ``SegmentJob``.
        block, start, count: the block, its first index in the mapping and
            its number of inner ids.
        below: ``(block, start, count)`` of the next block along z (whose
            first section lies under this block's last one), or None.

    Returns:
        ``(ids, sizes, upper, lower, overlap)`` int64 arrays: voxel counts of
        the per-section segments in the block, and overlap counts of pairs in
        neighbouring sections. Summed over blocks they are the counts
        ``link_sections`` takes from the whole volume.
    """
    labels = _section_ids(job, block, start, count)
    ids, sizes = np.unique(labels, return_counts=True)
    if below is not None:
        labels = np.concatenate([labels, _section_ids(job, *below, first_section=True)])
    span = int(labels.max()) + 1
    keys = [np.unique(upper * span + lower, return_counts=True)
            for upper, lower in zip(labels[:-1], labels[1:])]
    keys, overlap = (np.concatenate(parts) for parts in zip(*keys)) if keys else (
        np.zeros(0, np.int64), np.zeros(0, np.int64))
    return ids, sizes, keys // span, keys % span, overlap


def _link_pass(job, blocks, counts, new_ids, segments, executor, progress):
    """Linked mode: link per-section global ids across sections; returns (new_ids, K, failures)."""
    with atomic_path(job.mapping_2d) as tmp:
        np.save(tmp, new_ids)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    number = {block.index: n for n, block in enumerate(blocks)}
    items = []
    for n, block in enumerate(blocks):
        following = number.get((block.index[0] + 1,) + tuple(block.index[1:]))
        below = None if following is None else (blocks[following], int(starts[following]),
                                                 counts[following])
        items.append((job, block, int(starts[n]), counts[n], below))
    results, failures = run_tasks(executor, link_task, items, progress,
                             "segment-volume: link sections")
    if failures:
        return None, 0, failures
    sizes = np.zeros(segments + 1, np.int64)
    uppers, lowers, overlaps = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)], [
        np.zeros(0, np.int64)]
    for _, (ids, block_sizes, upper, lower, overlap) in results:
        sizes[ids] += block_sizes  # ids are unique within a block
        uppers.append(upper)
        lowers.append(lower)
        overlaps.append(overlap)
    final, linked = link_segments(segments, sizes, np.concatenate(uppers),
                                  np.concatenate(lowers), np.concatenate(overlaps),
                                  job.params.z_link_overlap)
    return final[new_ids], linked, []


# ------------------------------------------------------------------ pass 3

def relabel_task(job, block, start, count, hook=None):
    """Pass 3 for one block: local ids -> global ids, written to the output, then marked."""
    info = {"index": block.index, "worker": worker_name(), "voxels": block.size}
    if storage.is_done(job.output_path, block):
        return {**info, "skipped": True}
    zarr = storage.import_zarr()
    local = zarr.open_array(str(job.local_labels), mode="r")[
        slice(*block.z), slice(*block.y), slice(*block.x)]
    table = np.zeros(count + 1, np.uint64)
    table[1:] = np.load(job.mapping, mmap_mode="r")[start:start + count]
    write_block(job.output_path, block, table[np.asarray(local)], hook, "relabel")
    storage.mark_done(job.output_path, block, {"worker": info["worker"]})
    return {**info, "skipped": False}


# ------------------------------------------------------------------ checks and stores

def check_membrane_volume(input_spec, blocks, executor, progress=False):
    """Pass 0: refuse a map of another dtype, with NaN/inf or outside [0, 1].

    Uses the same rules as ``fusionnet_tf.inference.writers.membrane_from_array``
    (float in [0, 1], uint8 = probability x 255, bool), from per-block minima
    and maxima computed by the executor.

    Raises:
        ValueError: naming the input and the values found.
    """
    from fusionnet_tf.inference.writers import membrane_from_array
    from fusionnet_tf.volumes.blockwise import range_task

    volume, name = storage.open_volume(input_spec)
    dtype = np.dtype(volume.dtype)
    close_stack(volume)
    membrane_from_array(np.zeros(1, dtype), name)  # dtype rules
    if not np.issubdtype(dtype, np.floating):
        return
    results, failures = run_tasks(executor, range_task, [(input_spec, block) for block in blocks],
                                  progress, "segment-volume: check")
    if failures:
        raise failures[0][1]
    extremes = np.concatenate([result[1] for _, result in results]
                              + [result[2] for _, result in results])  # NaN anywhere in a block makes its min NaN
    extremes = extremes[~np.isfinite(extremes)][:1] if not np.isfinite(extremes).all() else \
        np.array([extremes.min(), extremes.max()])
    membrane_from_array(extremes.astype(dtype), name)


def affinity_range_task(input_spec, block):
    """Pass 0 task: ``(block, lowest, highest)`` affinity of ``block`` over all channels.

    NaN anywhere in the block makes both NaN.
    """
    from fusionnet_tf.data.affinity_io import open_affinities

    affs, _, _ = open_affinities(input_spec)
    try:
        data = np.asarray(affs[(slice(None), slice(*block.z), slice(*block.y),
                                slice(*block.x))])
    finally:
        close_stack(affs)
    if not np.isfinite(data).all():
        return block, np.nan, np.nan
    return block, float(data.min()), float(data.max())


def check_affinity_volume(input_spec, name, blocks, executor, progress=False):
    """Pass 0 for affinities: refuse NaN/inf or values outside [0, 1] (per-block extremes).

    Raises:
        ValueError: naming the input and the values found (the wording of
            ``data.affinity_io.check_affinities``).
    """
    results, failures = run_tasks(executor, affinity_range_task,
                                  [(input_spec, block) for block in blocks], progress,
                                  "segment-volume: check")
    if failures:
        raise failures[0][1]
    lows = np.array([result[1] for _, result in results], np.float64)
    highs = np.array([result[2] for _, result in results], np.float64)
    if not (np.isfinite(lows).all() and np.isfinite(highs).all()):
        raise ValueError(f"{name}: the affinities contain NaN or inf")
    if lows.min() < 0 or highs.max() > 1:
        raise ValueError(f"{name}: affinities must be in [0, 1]; received values in "
                         f"[{lows.min():g}, {highs.max():g}]")


def create_label_array(path, shape, chunks, dtype, attrs=None):
    """Create (replace) a zarr array of ``dtype`` filled with 0, with ``attrs``."""
    zarr = storage.import_zarr()
    storage.clear_done_markers(path)
    storage.prepare_levels(path, shape, chunks, dtype)
    array = zarr.open_array(str(path), mode="w", shape=tuple(shape), chunks=tuple(chunks),
                            dtype=dtype, fill_value=0, **storage.array_options(path))
    for key, value in (attrs or {}).items():
        array.attrs[key] = value
    return array


def _settings(name, dtype, shape, block_shape, halo, mode, params, input_kind=MEMBRANE,
              offsets=None):
    settings = {"command": "segment-volume", "input": name, "input_kind": input_kind,
                "dtype": str(dtype), "shape": list(shape), "block": list(block_shape),
                "halo": list(halo), "mode": mode, "params": params.to_dict()}
    if offsets is not None:
        settings["offsets"] = [list(offset) for offset in offsets]
    return settings


def check_same_input_kind(output, input_kind, name):
    """Refuse to resume an output segmented from the other kind of input.

    Outputs of versions that did not record ``input_kind`` were segmented
    from membrane maps.

    Raises:
        ValueError: one line naming both kinds.
    """
    recorded = storage.recorded_settings(output)
    if not recorded or recorded.get("command") != "segment-volume":
        return
    before = recorded.get("input_kind", MEMBRANE)
    if before != input_kind:
        raise ValueError(f"output {output} was started from a {before} input, but {name} holds "
                         f"{input_kind}; choose another output or pass --overwrite")


def input_kind_of(input_spec):
    """``"affinities"`` for an affinity file (by its metadata), else ``"membrane"``."""
    from fusionnet_tf.data.affinity_io import affinity_metadata

    return AFFINITIES if affinity_metadata(input_spec) is not None else MEMBRANE


def _check_params(params, input_kind, name):
    """``params`` for ``input_kind`` (None: the defaults); ValueError for the wrong class."""
    from fusionnet_tf.segmentation.affinity_params import AffinityParams

    expected = AffinityParams if input_kind == AFFINITIES else SegmentParams
    if params is None:
        if input_kind == AFFINITIES:
            return AffinityParams()
        from fusionnet_tf.segmentation.params import default_params

        return default_params()
    if not isinstance(params, expected):
        raise ValueError(f"`params` must be {expected.__name__} or None for {input_kind} input "
                         f"{name}; received {type(params).__name__}")
    return params


def _check_workers(workers):
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"`workers` must be an integer >= 0; received workers={workers!r}")


# ------------------------------------------------------------------ entry point

def segment_volume(input_spec, output, params=None, mode="2d", *, block_shape=None,
                   halo=DEFAULT_HALO, workers=0, scheduler=None, overwrite=False,
                   progress=True, block_hook=None):
    """Block-wise segmentation of a membrane map or affinities into a uint64 zarr.

    Args:
        input_spec: ``volume.zarr``, ``volume.zarr:/key`` or ``volume.h5:/key``
            holding either a ``(Z, Y, X)`` membrane map (float probability in
            [0, 1], 1 = membrane, or uint8 probability x 255, e.g.
            ``predict-volume``'s output), or ``(C, Z, Y, X)`` float32
            affinities in [0, 1] with ``"kind": "affinities"`` and
            ``"offsets"`` metadata (``data.affinity_io``; e.g. ``predict-volume``
            with a 3D affinity model). Affinities are segmented in 3D block by
            block with ``segment_affinities``, the function of in-memory
            ``fusionnet segment`` (agglomeration or mutex watershed).
        output: path of the output zarr store: uint64 ``(Z, Y, X)`` ids
            1..K, one chunk per block; an existing output of the same run is
            resumed.
        params: ``SegmentParams`` for membrane maps (None: ``default_params()``,
            tuned for the shipped model) or ``AffinityParams`` for affinities
            (None: ``AffinityParams()``).
        mode: ``"2d"`` (each slice on its own, as ``segment(mode="2d")``) or
            ``"3d"``; membrane maps only (affinities are always segmented in
            3D). Defaults to ``"2d"``.
        block_shape: ``(block_z, block_y, block_x)``. Defaults to
            ``(1, 1024, 1024)`` for membrane maps, ``(16, 512, 512)`` for
            affinities (``DEFAULT_BLOCK``).
        halo: voxels read around each block: an int (in-plane; along z
            ``max(2, ceil(halo / anisotropy))`` for affinities and in 3d mode
            with anisotropy below ``ANISOTROPIC``, else 0) or ``(z, y, x)``.
            Defaults to 64.
        workers: 0 runs in this process; N >= 1 starts a local Dask cluster
            of N single-threaded processes. Defaults to 0.
        scheduler: address of a running Dask scheduler; overrides ``workers``.
        overwrite: replace an existing output instead of resuming it.
        progress: progress bars over blocks on stderr. Defaults to True.
        block_hook: optional ``hook(pass_name, block)`` called just before a
            block's data is written (``"watershed"`` or ``"relabel"``;
            in-process only; for fault-injection tests).

    Returns:
        dict: ``blocks_total``, ``blocks_skipped`` (relabelled by an earlier
        run), ``blocks_segmented`` (pass 1 in this run), ``faces``, ``joins``,
        ``segments`` (K), ``voxels``, ``seconds``, ``voxels_per_s``,
        ``watershed_cpu_seconds`` (CPU time of pass 1 summed over workers),
        ``blocks_per_worker``, ``halo``, ``mode``, ``input_kind``, ``method``
        (affinities: ``params.method``, else None), ``output``, ``executor``.

    Raises:
        FileNotFoundError, KeyError, ValueError: bad input (missing, not 3D,
            integer but not uint8, NaN or values outside [0, 1]; affinities
            without offsets or with offsets not matching the channels), bad
            options, params of the other kind, an output that is the input or
            was started with other settings (or from the other kind of input).
        FileExistsError: the output exists and is not a zarr array.
        BlockFailures: some blocks raised (finished ones are kept; rerun to resume).

    Example:
    >>> summary = segment_volume("membranes.zarr", "neurons.zarr", workers=2)
    >>> summary["segments"]
    5231
    """
    input_kind = input_kind_of(input_spec)
    params = _check_params(params, input_kind, input_spec)
    check_choice("mode", mode, MODES)
    if input_kind == AFFINITIES:
        mode = "3d"
    block_shape = check_block_shape(DEFAULT_BLOCK[input_kind] if block_shape is None
                                    else block_shape)
    _check_workers(workers)
    distributed_run = is_distributed(workers, scheduler)
    check_block_hook(block_hook, distributed_run)

    shape, dtype, name, offsets = _open_input(input_spec, input_kind)
    job = SegmentJob(str(input_spec), str(output), params, mode, (0, 0, 0), shape, block_shape,
                     input_kind, offsets)
    halo = resolve_halo(halo, job.kind, params.anisotropy)
    job = dataclasses.replace(job, halo=halo)
    storage.check_not_input(output, input_spec)
    if not Path(output).absolute().parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {Path(output).absolute().parent} "
                                f"(for {output})")
    blocks = block_grid(shape, block_shape)
    settings = _settings(name, dtype, shape, block_shape, halo, mode, params, input_kind, offsets)
    if not overwrite:
        check_same_input_kind(output, input_kind, name)
    array = storage.open_output_for_resume(output, shape, block_shape, settings, overwrite)

    with executor_context(workers, scheduler) as executor:
        start = time.perf_counter()
        if array is None:
            if input_kind == AFFINITIES:
                check_affinity_volume(job.input_spec, name, blocks, executor, progress)
            else:
                check_membrane_volume(job.input_spec, blocks, executor, progress)
            shutil.rmtree(job.work, ignore_errors=True)
            create_label_array(output, shape, block_shape, "uint64",
                               {storage.ATTRS_KEY: settings})
        summary = _run_passes(job, blocks, executor, progress, block_hook)
        seconds = time.perf_counter() - start
    summary.update(seconds=seconds, voxels=int(np.prod(shape)),
                   voxels_per_s=float(np.prod(shape)) / seconds if seconds else 0.0,
                   halo=halo, mode=mode, input_kind=input_kind,
                   method=params.method if input_kind == AFFINITIES else None,
                   output=str(output), executor=executor.name)
    return summary


def _open_input(input_spec, input_kind):
    """``(shape (Z, Y, X), dtype, name, offsets or None)`` of the input; refuses bad dtypes."""
    if input_kind == AFFINITIES:
        from fusionnet_tf.data.affinity_io import open_affinities

        affs, offsets, name = open_affinities(input_spec)
        shape, dtype = tuple(int(n) for n in affs.shape[1:]), np.dtype(affs.dtype)
        close_stack(affs)
        return shape, dtype, name, tuple(offsets)
    from fusionnet_tf.inference.writers import membrane_from_array

    volume, name = storage.open_volume(input_spec)
    shape, dtype = tuple(int(n) for n in volume.shape), np.dtype(volume.dtype)
    close_stack(volume)
    membrane_from_array(np.zeros(1, dtype), name)  # integer maps fail before any work
    return shape, dtype, name, None


def _run_passes(job, blocks, executor, progress, hook):
    """Passes 1-3 of ``segment_volume`` on an existing output; returns the summary counts."""
    output = Path(job.output_path)
    todo = [b for b in blocks if not storage.is_done(output, b)]
    summary = {"blocks_total": len(blocks), "blocks_skipped": len(blocks) - len(todo),
               "blocks_segmented": 0, "faces": 0, "joins": 0, "blocks_per_worker": {},
               "watershed_cpu_seconds": 0.0}
    if not todo:  # finished earlier
        shutil.rmtree(job.work, ignore_errors=True)
        summary["segments"] = int(_read_attrs(output).get("max_id", 0))
        return summary
    if not job.local_labels.exists():
        create_label_array(job.local_labels, job.volume_shape, job.block_shape, "uint32")

    # pass 1: watershed per block
    task = watershed_task if hook is None else (
        lambda job_, block: watershed_task(job_, block, hook))
    results, failures = run_tasks(executor, task, [(job, b) for b in blocks], progress,
                             "segment-volume: watershed")
    counts = [0] * len(blocks)
    number = {b.index: n for n, b in enumerate(blocks)}
    for (_, block), info in results:
        counts[number[block.index]] = info["count"]
        if not info["skipped"]:
            summary["blocks_segmented"] += 1
            summary["watershed_cpu_seconds"] += info["cpu_seconds"]
            worker = info["worker"]
            count_block(summary["blocks_per_worker"], worker)
    if failures:
        raise BlockFailures(summary, failures)

    # pass 2: match faces, number the global segments
    pairs = neighbour_pairs(blocks, job)
    summary["faces"] = len(pairs)
    if not job.mapping.is_file():
        items = [(job, blocks[a], blocks[b], axis, counts[a], counts[b]) for a, b, axis in pairs]
        results, failures = run_tasks(executor, match_task, items, progress,
                                 "segment-volume: merge faces")
        if failures:
            raise BlockFailures(summary, failures)
        joins = [(number[item[1].index], number[item[2].index], ids_a, ids_b)
                 for item, (ids_a, ids_b) in results]
        summary["joins"] = int(sum(ids_a.size for _, _, ids_a, _ in joins))
        new_ids, _, segments = global_mapping(counts, joins)
        if job.kind == "linked":
            new_ids, segments, failures = _link_pass(job, blocks, counts, new_ids, segments,
                                                     executor, progress)
            if failures:
                raise BlockFailures(summary, failures)
        with atomic_path(job.mapping) as tmp:
            np.save(tmp, new_ids)
        _write_attrs(output, {"max_id": segments, "joins": summary["joins"]})
    stored = _read_attrs(output)
    summary["segments"], summary["joins"] = int(stored["max_id"]), int(stored["joins"])

    # pass 3: relabel to global ids
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    task = relabel_task if hook is None else (
        lambda job_, block, s, c: relabel_task(job_, block, s, c, hook))
    items = [(job, b, int(starts[number[b.index]]), counts[number[b.index]]) for b in todo]
    _, failures = run_tasks(executor, task, items, progress, "segment-volume: relabel")
    if failures:
        raise BlockFailures(summary, failures)
    shutil.rmtree(job.work, ignore_errors=True)
    return summary


def _read_attrs(output):
    array = storage.import_zarr().open_array(str(output), mode="r")
    return dict(array.attrs.get(SEGMENT_ATTRS_KEY) or {})


def _write_attrs(output, values):
    array = storage.import_zarr().open_array(str(output), mode="r+")
    array.attrs[SEGMENT_ATTRS_KEY] = values


def format_summary(summary):
    """One line for the CLI: blocks, faces, segments, speed."""
    speed = speed_line(summary["voxels"], summary["seconds"], summary["voxels_per_s"])
    return (f"{blocks_line(summary, 'blocks_segmented', 'segmented')}, {_what(summary)}, "
            f"halo {tuple(summary['halo'])}: {summary['faces']} faces, {summary['joins']} joins, "
            f"{summary['segments']:,} segments; {speed} -> {summary['output']}")


def _what(summary):
    if summary.get("input_kind") == AFFINITIES:
        return f"affinities ({summary['method']})"
    return f"{summary['mode']} mode"


# ------------------------------------------------------------------ diagnostics

def seam_splits(reference, labels, block_shape):
    """Segments split *only* along block faces: the seams block-wise work can cause.

    A pair of ids ``(u, v)`` of ``labels`` is a seam split when some two
    neighbouring voxels on either side of a block face have the same
    ``reference`` id but labels ``u`` and ``v``, and ``u`` and ``v`` never
    touch inside a block (no two neighbouring voxels of one block carry
    ``u`` and ``v``). If ``u`` and ``v`` also touch inside a block, the
    reference cell is split there anyway (a segmentation difference, counted
    by the adapted Rand error), not by the block border.

    Args:
        reference: (Z, Y, X) int labels, e.g. in-memory ``segment``.
        labels: (Z, Y, X) int labels of the same shape, e.g. ``segment_volume``.
        block_shape: ``(block_z, block_y, block_x)`` of ``labels``' blocks.

    Returns:
        sorted list of ``(u, v, voxel_pairs)`` with ``u < v``: the seam splits
        and how many neighbouring voxel pairs across faces show each.
    """
    reference, labels = np.asarray(reference), np.asarray(labels).astype(np.int64)
    across, inside = {}, set()
    for axis in range(3):
        first = [slice(None)] * 3
        second = [slice(None)] * 3
        first[axis], second[axis] = slice(None, -1), slice(1, None)
        u, v = labels[tuple(first)], labels[tuple(second)]
        same = reference[tuple(first)] == reference[tuple(second)]
        # the pair (i, i + 1) along ``axis`` straddles a face when i + 1 is a block start
        shape = [1, 1, 1]
        shape[axis] = labels.shape[axis] - 1
        on_face = ((np.arange(1, labels.shape[axis]) % block_shape[axis]) == 0).reshape(shape)
        differ = u != v
        low, high = np.minimum(u, v), np.maximum(u, v)
        inside.update(zip(low[differ & ~on_face].tolist(), high[differ & ~on_face].tolist()))
        split = differ & on_face & same
        for pair in zip(low[split].tolist(), high[split].tolist()):
            across[pair] = across.get(pair, 0) + 1
    return sorted((u, v, count) for (u, v), count in across.items() if (u, v) not in inside)
