"""Global agglomeration of affinity fragments: one graph of the whole volume, built by blocks.

Affinity agglomeration is not local: merging two fragments changes the
statistics of every face of the merged node, so a merge outside a block's
crop can decide one inside it. Block-wise runs of ``method="agglomeration"``
(``job.agglomerates_globally``) therefore agglomerate the whole volume at
once, on a graph whose nodes are fragments (small), as waterz / lsd style
pipelines do:

1. *fragments* (pass 1, ``blocks.watershed_task``): each block plus halo is
   cut into the fragments of in-memory agglomeration
   (``affinities.fragments``); the block keeps its inner ones and records
   where each fragment's seed starts.
2. *fragment ids* (``fragment_pass``): fragments cut by a block face are
   joined across it by overlap (``stitch.match_slabs``, as segments are in
   the other kinds), and the joined fragments are numbered 1..F in raster
   order of their seeds, the order in-memory ``fragments`` numbers them in,
   so that both agglomerate the same graph with the same tie-breaking. An
   offset per block would be simpler but would leave every fragment cut by
   a face as two nodes, joined only if the face inside the fragment passes
   the threshold, and merged in another order. Written atomically
   (``fragments.npz``).
3. *edges* (``edges_task``): per block, the region adjacency graph
   (``affinities.affinity_graph``: pair counts, sums and histograms of ``1 -
   affinity``) of the voxel pairs whose first voxel lies in the block, i.e.
   the pairs inside the block and those across its faces to the next blocks
   (each face is read by the block before it, one voxel layer deep: counted
   once), and the voxels of each fragment in the block. One file per block,
   written atomically; its presence marks the block done.
4. *agglomerate* (``agglomerate_pass``): the blocks' graphs and sizes are
   summed into the graph of the volume (``agglomeration.sum_graphs``) and
   agglomerated by ``affinities.agglomerate_affinity_graph``, the function of
   in-memory segmentation; segments are numbered as in-memory
   (``relabel_consecutive`` of the merged ids). The caller writes the local
   -> segment mapping atomically, and pass 3 relabels the blocks.

When the fragments of the blocks' crops agree with those of the whole volume
(the halo is at least the reach of the watershed, which on SNEMI3D
affinities 32-64 px is), the result is the in-memory segmentation exactly,
with the quantile statistic (integer histograms); with the mean, up to
float64 rounding of the summed totals.
"""

import time

import numpy as np

from fusionnet_tf.io.outputs import atomic_path
from fusionnet_tf.segmentation.affinities import (affinity_face_pairs_along, affinity_graph,
                                                  agglomerate_affinity_graph)
from fusionnet_tf.segmentation.agglomeration import sum_graphs
from fusionnet_tf.segmentation.blockwise.affinities import read_affinity_region
from fusionnet_tf.segmentation.watershed import relabel_consecutive
from fusionnet_tf.volumes import storage
from fusionnet_tf.volumes.executors import run_tasks, worker_name

# ------------------------------------------------------------------ fragment ids


def number_fragments(components, count, seed_keys):
    """Fragment ids 1..F of all blocks' local ids, in raster order of their seeds.

    Args:
        components: int (N,) component (joined fragment) 1..count of each of
            the N local ids of all blocks (``stitch.global_mapping``).
        count: int, the number of components.
        seed_keys: int64 (N,) flat volume index of each local id's seed's first
            voxel (``blocks.inner_seeds``); the pieces of one fragment agree.

    Returns:
        int64 (N,): the fragment id of each local id. Components are ordered by
        their smallest seed key (ties by component id).
    """
    components = np.asarray(components, np.int64)
    first = np.full(count + 1, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(first, components, np.asarray(seed_keys, np.int64))
    order = np.lexsort((np.arange(count), first[1:]))  # components 1..count by first seed
    rank = np.zeros(count + 1, np.int64)
    rank[order + 1] = np.arange(1, count + 1)
    return rank[components]


def read_seed_keys(job, blocks):
    """``seed_keys`` for ``number_fragments`` from the pass-1 face files, in block order."""
    keys = []
    for block in blocks:
        with np.load(job.faces_file(block)) as faces:
            keys.append(faces["seeds"][1:])
    return np.concatenate(keys) if keys else np.zeros(0, np.int64)


def fragment_pass(job, blocks, components, count, joins):
    """Number the joined fragments (``number_fragments``) and write them; resumable.

    Args:
        job: ``SegmentJob``.
        blocks: all blocks (block order).
        components, count: ``stitch.global_mapping`` of the face matches, or
            None when ``job.fragments`` exists (an earlier run wrote it).
        joins: int, the number of face joins (recorded with the ids).

    Returns:
        ``(fragment_ids int64 (N,), F, joins)``.
    """
    if not job.fragments.is_file():
        ids = number_fragments(components, count, read_seed_keys(job, blocks))
        with atomic_path(job.fragments) as tmp:
            np.savez(tmp, ids=ids, count=np.int64(count), joins=np.int64(joins))
    with np.load(job.fragments) as stored:
        return stored["ids"], int(stored["count"]), int(stored["joins"])


# ------------------------------------------------------------------ edges


def edge_region(block, volume_shape):
    """The block grown by one voxel at its end along each axis (clipped): 3 ``(start, stop)``.

    The extra layers are the first voxels of the next blocks: the pairs across
    the block's end faces.
    """
    return tuple((start, min(stop + 1, size))
                 for (start, stop), size in zip((block.z, block.y, block.x), volume_shape))


def read_fragments(job, region, starts, fragment_ids):
    """Fragment ids of the voxels of ``region`` (blocks finished in pass 1): int64.

    Args:
        job: ``SegmentJob``.
        region: 3 ``(start, stop)``.
        starts: dict block index -> index of the block's first local id in
            ``fragment_ids`` (for every block ``region`` touches).
        fragment_ids: int (N,) fragment id of every local id (``fragment_pass``).
    """
    bounds = [(start, stop) for start, stop in region]
    local = np.asarray(storage.import_zarr().open_array(str(job.local_labels), mode="r")[
        tuple(slice(*r) for r in bounds)]).astype(np.int64)
    result = np.zeros(local.shape, np.int64)
    pieces = [_split_at_blocks(start, stop, step)
              for (start, stop), step in zip(bounds, job.block_shape)]
    for part_z in pieces[0]:
        for part_y in pieces[1]:
            for part_x in pieces[2]:
                parts = (part_z, part_y, part_x)
                index = tuple(p[0] // step for p, step in zip(parts, job.block_shape))
                where = tuple(slice(p0 - r0, p1 - r0) for (p0, p1), (r0, _) in zip(parts, bounds))
                result[where] = fragment_ids[starts[index] + local[where] - 1]
    return result


def _split_at_blocks(start, stop, step):
    """``[start, stop)`` cut at multiples of ``step``: list of ``(start, stop)``."""
    cuts = list(range((start // step + 1) * step, stop, step))
    edges = [start] + cuts + [stop]
    return list(zip(edges[:-1], edges[1:]))


def block_graph(labels, affs, offsets, core_shape, span, params):
    """Graph of the pairs whose first voxel lies in the core (``edge_region`` arrays).

    Args:
        labels: (z, y, x) int fragment ids of the block grown by one voxel at
            its ends (``edge_region``).
        affs: (C, z, y, x) float32 affinities of the same region.
        offsets: the C offsets.
        core_shape: the block's shape (the region without the extra layers).
        span: int greater than every fragment id.
        params: ``AffinityParams``.

    Returns:
        dict as ``affinity_graph``: along each axis, the pairs inside the
        block and those from its last layer to the next block's first layer
        (pairs within the extra layers belong to the next blocks).
    """
    parts = []
    for axis in range(3):
        selection = [slice(0, n) for n in core_shape]
        selection[axis] = slice(None)
        selection = tuple(selection)
        parts.append(affinity_face_pairs_along(labels[selection],
                                               affs[(slice(None),) + selection], offsets, axis))
    low, high, value = (np.concatenate(arrays) for arrays in zip(*parts))
    return affinity_graph(low, high, value, span, params)


def edges_task(job, block, starts, hook=None):
    """The edges pass for one block: its graph and fragment sizes, written to its edges file.

    Args:
        job: ``SegmentJob``.
        block: the block.
        starts: dict block index -> first local id index (``read_fragments``).
        hook: optional ``hook("edges", block)`` before the file is written.

    Returns:
        dict: ``index``, ``worker``, ``skipped``, ``edges``, ``cpu_seconds``.
    """
    cpu_start = time.process_time()
    info = {"index": block.index, "worker": worker_name()}
    if job.edges_file(block).is_file():
        return {**info, "skipped": True, "edges": 0, "cpu_seconds": 0.0}
    with np.load(job.fragments) as stored:
        fragment_ids, count = stored["ids"], int(stored["count"])
    region = edge_region(block, job.volume_shape)
    labels = read_fragments(job, region, starts, fragment_ids)
    affs = read_affinity_region(job.input_spec, region)
    graph = block_graph(labels, affs, job.offsets, block.shape, count + 1, job.params)
    ids, sizes = np.unique(labels[tuple(slice(0, n) for n in block.shape)], return_counts=True)
    if hook is not None:
        hook("edges", block)
    job.edges_file(block).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(job.edges_file(block)) as tmp:
        np.savez(tmp, size_ids=ids, sizes=sizes, **graph)
    return {**info, "skipped": False, "edges": int(graph["u"].size),
            "cpu_seconds": time.process_time() - cpu_start}


def neighbour_starts(block, blocks, starts):
    """``{index: start}`` of ``block`` and of the blocks after it (for ``edges_task``)."""
    number = {b.index: n for n, b in enumerate(blocks)}
    result = {}
    for dz in (0, 1):
        for dy in (0, 1):
            for dx in (0, 1):
                index = (block.index[0] + dz, block.index[1] + dy, block.index[2] + dx)
                if index in number:
                    result[index] = int(starts[number[index]])
    return result


def edges_pass(job, blocks, counts, executor, progress, hook=None):
    """The edges pass over all blocks (finished ones are skipped).

    Returns:
        ``(results, failures)`` of ``run_tasks``.
    """
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    task = edges_task if hook is None else (
        lambda job_, block, starts_: edges_task(job_, block, starts_, hook))
    items = [(job, block, neighbour_starts(block, blocks, starts)) for block in blocks]
    return run_tasks(executor, task, items, progress, "segment-volume: fragment graph")


# ------------------------------------------------------------------ agglomerate


def volume_graph(job, blocks, count):
    """The blocks' graphs and sizes summed: ``(graph, sizes int64 (count + 1,))``."""
    graphs = []
    sizes = np.zeros(count + 1, np.int64)
    for block in blocks:
        with np.load(job.edges_file(block)) as stored:
            graphs.append({key: stored[key] for key in stored.files
                           if key not in ("size_ids", "sizes")})
            sizes[stored["size_ids"]] += stored["sizes"]  # ids are unique within a block
    return sum_graphs(graphs, count + 1), sizes


def agglomerate_pass(job, blocks, fragment_ids, count):
    """Agglomerate the volume's fragment graph; returns ``(segment ids uint64 (N,), K, edges)``.

    ``segment ids`` maps every local id of every block (as ``fragment_ids``)
    to its segment 1..K, numbered as in-memory ``segment_affinities``.
    """
    graph, sizes = volume_graph(job, blocks, count)
    merged = agglomerate_affinity_graph(graph, count, sizes, job.params)
    merged[0] = 0
    segments, total = relabel_consecutive(merged)
    return segments.astype(np.uint64)[fragment_ids], total, int(graph["u"].size)
