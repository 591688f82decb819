"""``segment_volume``: check the input and options, run the passes, resume, report.

The passes are in ``blocks`` (1, watershed), ``stitch`` (2, merge and link;
3, relabel); the input-specific steps in ``membrane`` and ``affinities``.
"""

import shutil
import time
from pathlib import Path

import numpy as np

from fusionnet_tf.checks import check_choice
from fusionnet_tf.io.outputs import atomic_path, check_not_input
from fusionnet_tf.segmentation.blockwise.affinities import (check_affinity_volume,
                                                            open_affinity_input)
from fusionnet_tf.segmentation.blockwise.blocks import watershed_task
from fusionnet_tf.segmentation.blockwise.geometry import (DEFAULT_HALO, neighbour_pairs,
                                                          resolve_halo)
from fusionnet_tf.segmentation.blockwise.graph import (agglomerate_pass, edges_pass,
                                                       fragment_pass)
from fusionnet_tf.segmentation.blockwise.job import (AFFINITIES, DEFAULT_BLOCK, SegmentJob,
                                                     input_kind_of, segmentation_kind)
from fusionnet_tf.segmentation.blockwise.membrane import (check_membrane_volume,
                                                          open_membrane_input)
from fusionnet_tf.segmentation.blockwise.store import (check_same_input_kind, create_label_array,
                                                       read_attrs, segment_settings, write_attrs)
from fusionnet_tf.segmentation.blockwise.stitch import (global_mapping, link_pass, match_task,
                                                        relabel_task)
from fusionnet_tf.segmentation.params import MODES, SegmentParams
from fusionnet_tf.volumes import storage
from fusionnet_tf.volumes.executors import (BlockFailures, blocks_line, check_block_hook,
                                            count_block, executor_context, is_distributed,
                                            run_tasks, speed_line)
from fusionnet_tf.volumes.geometry import block_grid, check_block_shape


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
            with a 3D affinity model). Affinities are segmented in 3D as
            in-memory ``fusionnet segment`` (``segment_affinities``): the mutex
            watershed block by block; agglomeration as one graph of the
            volume's fragments, built by blocks (``graph``).
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
        (affinities: ``params.method``, else None), ``output``, ``executor``;
        with global agglomeration (when pass 2 ran in this call) also
        ``fragments`` (F), ``edges`` (of the volume's graph),
        ``blocks_graphed`` and ``graph_cpu_seconds`` (the edges pass).

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
    kind = segmentation_kind(input_kind, mode, params)
    if kind == AFFINITIES:
        mode = "3d"  # the mode recorded for affinities, which are segmented in 3D
    block_shape = check_block_shape(DEFAULT_BLOCK[input_kind] if block_shape is None
                                    else block_shape)
    _check_workers(workers)
    distributed_run = is_distributed(workers, scheduler)
    check_block_hook(block_hook, distributed_run)

    shape, dtype, name, offsets = _open_input(input_spec, input_kind)
    halo = resolve_halo(halo, kind, params.anisotropy)
    job = SegmentJob(str(input_spec), str(output), params, mode, halo, shape, block_shape,
                     input_kind, offsets)
    check_not_input(output, input_spec, "OUTPUT", "INPUT")
    if not Path(output).absolute().parent.is_dir():
        raise FileNotFoundError(f"output folder does not exist: {Path(output).absolute().parent} "
                                f"(for {output})")
    blocks = block_grid(shape, block_shape)
    settings = segment_settings(name, dtype, shape, block_shape, halo, mode, params, input_kind,
                                offsets, job.global_graph)
    if not overwrite:
        check_same_input_kind(output, input_kind, name)
    array = storage.open_output_for_resume(output, shape, block_shape, settings, overwrite)

    with executor_context(workers, scheduler) as executor:
        start = time.perf_counter()
        if array is None:
            if kind == AFFINITIES:
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
                   method=params.method if kind == AFFINITIES else None,
                   output=str(output), executor=executor.name)
    return summary


def _open_input(input_spec, input_kind):
    """``(shape (Z, Y, X), dtype, name, offsets or None)`` of the input; refuses bad dtypes."""
    if input_kind == AFFINITIES:
        return open_affinity_input(input_spec)
    return open_membrane_input(input_spec)


def _run_passes(job, blocks, executor, progress, hook):
    """Passes 1-3 of ``segment_volume`` on an existing output; returns the summary counts.

    Raises:
        BlockFailures: after the first pass in which some blocks failed.
    """
    output = Path(job.output_path)
    todo = [b for b in blocks if not storage.is_done(output, b)]
    summary = {"blocks_total": len(blocks), "blocks_skipped": len(blocks) - len(todo),
               "blocks_segmented": 0, "faces": 0, "joins": 0, "blocks_per_worker": {},
               "watershed_cpu_seconds": 0.0}
    if not todo:  # finished earlier
        shutil.rmtree(job.work, ignore_errors=True)
        summary["segments"] = int(read_attrs(output).get("max_id", 0))
        return summary
    if not job.local_labels.exists():
        create_label_array(job.local_labels, job.volume_shape, job.block_shape, "uint32")
    counts = _watershed_pass(job, blocks, executor, progress, hook, summary)
    _merge_pass(job, blocks, counts, executor, progress, summary, hook)
    _relabel_pass(job, blocks, todo, counts, executor, progress, hook, summary)
    shutil.rmtree(job.work, ignore_errors=True)
    return summary


def _watershed_pass(job, blocks, executor, progress, hook, summary):
    """Pass 1 over all blocks (finished ones report their count); returns inner ids per block.

    Adds ``blocks_segmented``, ``watershed_cpu_seconds`` and
    ``blocks_per_worker`` to ``summary``.
    """
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
            count_block(summary["blocks_per_worker"], info["worker"])
    if failures:
        raise BlockFailures(summary, failures)
    return counts


def _merge_pass(job, blocks, counts, executor, progress, summary, hook=None):
    """Pass 2: match faces, number the global segments (and link sections), record them.

    With global agglomeration (``job.global_graph``) the matched fragments are
    numbered, their graph built by blocks and agglomerated (``graph``).
    Skipped when the mapping exists (an earlier run finished it). Sets
    ``faces``, ``joins`` and ``segments`` of ``summary`` (and ``fragments``,
    ``edges`` with global agglomeration).
    """
    output = Path(job.output_path)
    summary["faces"] = len(neighbour_pairs(blocks, job))
    if not job.mapping.is_file():
        if job.global_graph:
            new_ids, segments = _agglomerate_fragments(job, blocks, counts, executor, progress,
                                                       summary, hook)
        else:
            new_ids, segments = _match_faces(job, blocks, counts, executor, progress, summary)
        if job.kind == "linked":
            new_ids, segments, failures = link_pass(job, blocks, counts, new_ids, segments,
                                                    executor, progress)
            if failures:
                raise BlockFailures(summary, failures)
        with atomic_path(job.mapping) as tmp:
            np.save(tmp, new_ids)
        write_attrs(output, {"max_id": segments, "joins": summary["joins"]})
    stored = read_attrs(output)
    summary["segments"], summary["joins"] = int(stored["max_id"]), int(stored["joins"])


def _match_faces(job, blocks, counts, executor, progress, summary):
    """Join ids across faces by overlap (``match_task``); returns ``global_mapping``'s ids, K.

    Sets ``summary["joins"]``.
    """
    number = {b.index: n for n, b in enumerate(blocks)}
    items = [(job, blocks[a], blocks[b], axis, counts[a], counts[b])
             for a, b, axis in neighbour_pairs(blocks, job)]
    results, failures = run_tasks(executor, match_task, items, progress,
                                  "segment-volume: merge faces")
    if failures:
        raise BlockFailures(summary, failures)
    joins = [(number[item[1].index], number[item[2].index], ids_a, ids_b)
             for item, (ids_a, ids_b) in results]
    summary["joins"] = int(sum(ids_a.size for _, _, ids_a, _ in joins))
    new_ids, _, segments = global_mapping(counts, joins)
    return new_ids, segments


def _agglomerate_fragments(job, blocks, counts, executor, progress, summary, hook):
    """Global agglomeration (``graph``): fragment ids, edges pass, one agglomeration.

    Each step is resumable: the fragment ids and every block's edges are
    files. Sets ``joins``, ``fragments``, ``edges``, ``blocks_graphed`` and
    ``graph_cpu_seconds`` of ``summary``.

    Returns:
        ``(segment id of every local id uint64, K)``.
    """
    components = count = None
    if not job.fragments.is_file():
        components, count = _match_faces(job, blocks, counts, executor, progress, summary)
    fragment_ids, fragments, joins = fragment_pass(job, blocks, components, count,
                                                   summary["joins"])
    summary["joins"], summary["fragments"] = joins, fragments
    results, failures = edges_pass(job, blocks, counts, executor, progress, hook)
    done = [info for _, info in results if not info["skipped"]]
    summary["blocks_graphed"] = len(done)
    summary["graph_cpu_seconds"] = float(sum(info["cpu_seconds"] for info in done))
    if failures:
        raise BlockFailures(summary, failures)
    new_ids, segments, summary["edges"] = agglomerate_pass(job, blocks, fragment_ids, fragments)
    return new_ids, segments


def _relabel_pass(job, blocks, todo, counts, executor, progress, hook, summary):
    """Pass 3 over the blocks ``todo``: local ids -> global ids in the output."""
    number = {b.index: n for n, b in enumerate(blocks)}
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    task = relabel_task if hook is None else (
        lambda job_, block, s, c: relabel_task(job_, block, s, c, hook))
    items = [(job, b, int(starts[number[b.index]]), counts[number[b.index]]) for b in todo]
    _, failures = run_tasks(executor, task, items, progress, "segment-volume: relabel")
    if failures:
        raise BlockFailures(summary, failures)


def format_summary(summary):
    """One line for the CLI: blocks, faces, segments, speed."""
    speed = speed_line(summary["voxels"], summary["seconds"], summary["voxels_per_s"])
    return (f"{blocks_line(summary, 'blocks_segmented', 'segmented')}, {_what(summary)}, "
            f"halo {tuple(summary['halo'])}: {summary['faces']} faces, {summary['joins']} joins, "
            f"{summary['segments']:,} segments; {speed} -> {summary['output']}")


def _what(summary):
    """What was segmented, for ``format_summary``: the affinity method or the mode."""
    if summary.get("input_kind") == AFFINITIES:
        return f"affinities ({summary['method']})"
    return f"{summary['mode']} mode"
