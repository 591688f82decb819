"""Passes 2 and 3 of ``segment_volume``: match blocks across faces, number, relabel.

Pass 2 (*merge*): on each face the two blocks have both labelled the same
slab, so their segments are matched by overlap (``match_slabs``); connected
components of all joins give the global ids (``global_mapping``). Runs of
segmentation kind ``"linked"`` then link sections (``link_pass``). Pass 3
(*relabel*): each block's local ids are mapped to global ids and written to
the output (``relabel_task``).
"""

import numpy as np

from fusionnet_tf.io.outputs import atomic_path
from fusionnet_tf.segmentation.blockwise.geometry import face_key
from fusionnet_tf.segmentation.blockwise.store import write_block
from fusionnet_tf.segmentation.segmenter import graph_components, link_segments
from fusionnet_tf.volumes import storage
from fusionnet_tf.volumes.executors import run_tasks, worker_name

# two blocks' segments on a face are joined when they overlap by more than this
# fraction of either segment's voxels in the face slab
MATCH_FRACTION = 0.5


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
        slab_a = faces[face_key(axis, 1)]
    with np.load(job.faces_file(block_b)) as faces:
        slab_b = faces[face_key(axis, -1)]
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


# ------------------------------------------------------------------ pass 2b (linked)

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


def link_pass(job, blocks, counts, new_ids, segments, executor, progress):
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
